//! Token classification (`llmx ner`) with transformers' aggregation strategies.

use candle_core::{DType, Device};
use serde::Serialize;
use tokenizers::{DecoderWrapper, ModelWrapper};

use super::{HeadConfig, LoadOptions};
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::generation::logits::softmax;
use crate::hub::{self, ModelRepo};
use crate::models::{self, ModelConfig, Task, TokenClassifier};
use crate::tokenize::{Batch, Batching, Encoding, Side, TextEncoder};

pub const DEFAULT_MODEL: &str = "dslim/bert-base-NER";

/// transformers' `aggregation_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Aggregation {
    /// Every token on its own.
    None,
    /// Tokens grouped by their B-/I- tags.
    #[default]
    Simple,
    /// Words take their first token's label.
    First,
    /// Words take the label of their mean token probabilities.
    Average,
    /// Words take the label of their most confident token.
    Max,
}

/// A token (strategy `none`) or a group of tokens, with character offsets into the text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// The label (`none`) or the group's label without its B-/I- prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity_group: Option<String>,
    pub score: f32,
    /// The token's position among the input ids (`none` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub word: String,
    pub start: usize,
    pub end: usize,
}

/// Entities of one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Tagged {
    pub entities: Vec<Entity>,
    pub truncated: bool,
}

/// A token before aggregation.
struct Token {
    index: usize,
    word: String,
    scores: Vec<f32>,
    start: usize,
    end: usize,
    is_subword: bool,
}

/// A labelled token or word before grouping.
struct Labelled {
    label: String,
    score: f32,
    index: usize,
    word: String,
    start: usize,
    end: usize,
}

pub struct TokenTagger {
    model: TokenClassifier,
    text: TextEncoder,
    labels: Vec<String>,
    unk_id: Option<u32>,
    batching: Batching,
    device: Device,
}

impl TokenTagger {
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let repo = ModelRepo::open(model, &options.hub)?;
        let config = ModelConfig::load(&repo.required(hub::CONFIG)?, Task::Ner)?;
        let encoder_config = models::encoder_config(&config)?;
        let labels = config.parse::<HeadConfig>()?.labels(&config)?;
        let text = super::encoder_text(&repo, &encoder_config, None)?;
        let unk_token = super::special_token(&repo, "unk_token")?;
        let (device, dtype) = options.placement(Precision::HalfSafe)?;
        let (text, model) = super::beside_weights(text, || {
            options.load_weights(&repo, (&device, dtype), |vb| {
                models::load_token_head(
                    &config,
                    &encoder_config,
                    vb,
                    "classifier",
                    labels.len(),
                    options.quantization,
                )
            })
        })?;
        let unk_id = unk_token.and_then(|unk| text.tokenizer().token_to_id(&unk));
        Ok(TokenTagger {
            model,
            text,
            labels,
            unk_id,
            batching: Batching::default(),
            device,
        })
    }

    /// How inputs are grouped into forward passes.
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    /// Tags each text as one padded batch.
    pub fn tag(&self, texts: &[&str], aggregation: Aggregation) -> Result<Vec<Result<Tagged>>> {
        self.tag_encoded(texts, self.encode(texts), aggregation)
    }

    /// Tokenizes `texts` for [`TokenTagger::tag_encoded`].
    pub fn encode(&self, texts: &[&str]) -> Vec<Result<Encoding>> {
        self.text.encode_all(texts)
    }

    /// Tags `texts`, already tokenized by [`TokenTagger::encode`].
    pub fn tag_encoded(
        &self,
        texts: &[&str],
        encoded: Vec<Result<Encoding>>,
        aggregation: Aggregation,
    ) -> Result<Vec<Result<Tagged>>> {
        super::run_encoded(encoded, &self.batching, |group| self.scores(group))?
            .into_iter()
            .zip(texts)
            .map(|(input, text)| {
                let (encoding, scores) = match input {
                    Ok(input) => input,
                    Err(e) => return Ok(Err(e)),
                };
                Ok(Ok(Tagged {
                    entities: self.entities(text, &encoding, scores, aggregation)?,
                    truncated: encoding.truncated,
                }))
            })
            .collect()
    }

    /// Per input: per token, the label probabilities.
    fn scores(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<Vec<f32>>>> {
        let batch = Batch::new(encodings, self.text.pad_id(), Side::Right, &self.device)?;
        let logits: Vec<Vec<Vec<f32>>> = self
            .model
            .forward(&batch)?
            .to_dtype(DType::F32)?
            .to_vec3()?;
        Ok(logits
            .into_iter()
            .zip(encodings)
            .map(|(rows, encoding)| {
                rows.iter()
                    .take(encoding.ids.len())
                    .map(|row| softmax(row))
                    .collect()
            })
            .collect())
    }

    fn entities(
        &self,
        text: &str,
        encoding: &Encoding,
        scores: Vec<Vec<f32>>,
        aggregation: Aggregation,
    ) -> Result<Vec<Entity>> {
        let tokens = self.tokens(text, encoding, scores);
        let labelled: Vec<Labelled> = match aggregation {
            Aggregation::None | Aggregation::Simple => {
                tokens.into_iter().map(|t| self.label_token(t)).collect()
            }
            _ => self.words(tokens, aggregation)?,
        };
        let entities = if aggregation == Aggregation::None {
            labelled
                .into_iter()
                .map(|l| Entity {
                    entity: Some(l.label),
                    entity_group: None,
                    score: l.score,
                    index: Some(l.index),
                    word: l.word,
                    start: l.start,
                    end: l.end,
                })
                .collect()
        } else {
            self.group(labelled)?
        };
        Ok(entities
            .into_iter()
            .filter(|e| e.entity.as_deref().or(e.entity_group.as_deref()) != Some("O"))
            .collect())
    }

    /// The non-special tokens with their words, character offsets and whether each
    /// continues the previous word, decided as transformers decides it.
    fn tokens(&self, text: &str, encoding: &Encoding, scores: Vec<Vec<f32>>) -> Vec<Token> {
        let raw = &encoding.raw;
        let chars = CharIndex::new(text);
        let tokenizer = self.text.tokenizer();
        let word_aware = match tokenizer.get_model() {
            ModelWrapper::WordPiece(wordpiece) => !wordpiece.continuing_subword_prefix.is_empty(),
            ModelWrapper::BPE(bpe) => bpe
                .continuing_subword_prefix
                .as_deref()
                .is_some_and(|p| !p.is_empty()),
            _ => false,
        };
        let mut tokens = Vec::new();
        for (index, scores) in scores.into_iter().enumerate() {
            if raw.get_special_tokens_mask().get(index) != Some(&0) {
                continue;
            }
            let (start, end) = raw.get_offsets()[index];
            let (start, end) = (chars.char_at(start), chars.char_at(end));
            let reference: String = text.chars().skip(start).take(end - start).collect();
            let mut word = raw.get_tokens()[index].clone();
            let mut is_subword = if word_aware {
                word.chars().count() != reference.chars().count()
            } else {
                start > 0 && !text.chars().skip(start - 1).take(2).any(|c| c == ' ')
            };
            if Some(raw.get_ids()[index]) == self.unk_id {
                word = reference;
                is_subword = false;
            }
            tokens.push(Token {
                index,
                word,
                scores,
                start,
                end,
                is_subword,
            });
        }
        tokens
    }

    fn label_token(&self, token: Token) -> Labelled {
        let best = argmax(&token.scores);
        Labelled {
            label: self.label(best),
            score: token.scores[best],
            index: token.index,
            word: token.word,
            start: token.start,
            end: token.end,
        }
    }

    fn label(&self, id: usize) -> String {
        self.labels
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("LABEL_{id}"))
    }

    /// Word-level labels for `first`, `average` and `max`.
    fn words(&self, tokens: Vec<Token>, aggregation: Aggregation) -> Result<Vec<Labelled>> {
        let mut words: Vec<Vec<Token>> = Vec::new();
        for token in tokens {
            match words.last_mut() {
                Some(word) if token.is_subword => word.push(token),
                _ => words.push(vec![token]),
            }
        }
        words
            .into_iter()
            .map(|word| {
                let scores: Vec<f32> = match aggregation {
                    Aggregation::Max => word
                        .iter()
                        .fold(None::<&Token>, |best, t| match best {
                            Some(b) if max(&b.scores) >= max(&t.scores) => Some(b),
                            _ => Some(t),
                        })
                        .map(|t| t.scores.clone())
                        .unwrap_or_default(),
                    Aggregation::Average => (0..word[0].scores.len())
                        .map(|label| {
                            word.iter().map(|t| t.scores[label]).sum::<f32>() / word.len() as f32
                        })
                        .collect(),
                    _ => word[0].scores.clone(),
                };
                let best = argmax(&scores);
                let pieces: Vec<String> = word.iter().map(|t| t.word.clone()).collect();
                Ok(Labelled {
                    label: self.label(best),
                    score: scores[best],
                    index: word[0].index,
                    word: self.tokens_to_string(pieces)?,
                    start: word[0].start,
                    end: word[word.len() - 1].end,
                })
            })
            .collect()
    }

    /// transformers' `group_entities`: consecutive items with the same tag join unless the
    /// later one begins a new entity (`B-`).
    fn group(&self, labelled: Vec<Labelled>) -> Result<Vec<Entity>> {
        let mut groups: Vec<Vec<Labelled>> = Vec::new();
        for item in labelled {
            match groups.last_mut() {
                Some(group) => {
                    let (bi, tag) = split_tag(&item.label);
                    let (_, last_tag) = split_tag(&group[group.len() - 1].label);
                    if tag == last_tag && bi != "B" {
                        group.push(item);
                    } else {
                        groups.push(vec![item]);
                    }
                }
                None => groups.push(vec![item]),
            }
        }
        groups
            .into_iter()
            .map(|group| {
                let label = &group[0].label;
                let name = label
                    .split_once('-')
                    .map_or(label.as_str(), |(_, name)| name);
                let score = group.iter().map(|l| l.score).sum::<f32>() / group.len() as f32;
                Ok(Entity {
                    entity: None,
                    entity_group: Some(name.to_string()),
                    score,
                    index: None,
                    word: self.tokens_to_string(group.iter().map(|l| l.word.clone()).collect())?,
                    start: group[0].start,
                    end: group[group.len() - 1].end,
                })
            })
            .collect()
    }

    /// transformers' `convert_tokens_to_string`: the tokenizer's decoder over token strings.
    fn tokens_to_string(&self, tokens: Vec<String>) -> Result<String> {
        match self.text.tokenizer().get_decoder() {
            Some(decoder) => decoder_decode(decoder, tokens),
            None => Ok(tokens.join(" ")),
        }
        .map_err(|e| Error::Encode(e.to_string()))
    }
}

fn decoder_decode(decoder: &DecoderWrapper, tokens: Vec<String>) -> tokenizers::Result<String> {
    tokenizers::Decoder::decode(decoder, tokens)
}

/// `B-PER` → ("B", "PER"); `I-PER` → ("I", "PER"); anything else is an inside tag of itself.
fn split_tag(label: &str) -> (&str, &str) {
    match label.split_once('-') {
        Some(("B", tag)) => ("B", tag),
        Some(("I", tag)) => ("I", tag),
        _ => ("I", label),
    }
}

fn argmax(values: &[f32]) -> usize {
    crate::generation::logits::argmax(values) as usize
}

fn max(values: &[f32]) -> f32 {
    values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Byte offsets to character offsets, as Python strings count.
struct CharIndex {
    starts: Vec<usize>,
}

impl CharIndex {
    fn new(text: &str) -> Self {
        CharIndex {
            starts: text
                .char_indices()
                .map(|(i, _)| i)
                .chain([text.len()])
                .collect(),
        }
    }

    fn char_at(&self, byte: usize) -> usize {
        self.starts.partition_point(|&start| start < byte)
    }
}
