//! Extractive question answering (`llmx qa`), with transformers' question-answering pipeline
//! semantics: long contexts split into overlapping windows, spans scored as
//! p(start)·p(end) within a maximum length, answers widened to whole words and merged by text.

use candle_core::{DType, Device};
use serde::Serialize;
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

use super::LoadOptions;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::hub::{self, ModelRepo};
use crate::models::{self, ModelConfig, Task, TokenClassifier};
use crate::tokenize::{Batch, Encoding, Side};

pub const DEFAULT_MODEL: &str = "distilbert/distilbert-base-cased-distilled-squad";

/// What the logits of excluded tokens are set to, as transformers does.
const EXCLUDED: f32 = -10000.0;

/// Search settings; `None` takes transformers' defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QaSettings {
    /// Tokens per window (question, context and special tokens); default 384, never past
    /// the model's positions.
    pub max_seq_len: Option<usize>,
    /// Context tokens shared by neighbouring windows; default min(128, max_seq_len / 2).
    pub doc_stride: Option<usize>,
    pub max_answer_len: usize,
    pub top_k: usize,
    /// Also offer the empty answer, scored by the CLS position.
    pub handle_impossible_answer: bool,
}

impl Default for QaSettings {
    fn default() -> Self {
        QaSettings {
            max_seq_len: None,
            doc_stride: None,
            max_answer_len: 15,
            top_k: 1,
            handle_impossible_answer: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub answer: String,
    pub score: f64,
    /// Character offsets into the context.
    pub start: usize,
    pub end: usize,
}

pub struct QuestionAnswerer {
    model: TokenClassifier,
    tokenizer: tokenizers::Tokenizer,
    window: usize,
    pad_id: u32,
    cls_id: Option<u32>,
    device: Device,
}

/// A candidate span in one window.
struct Span {
    window: usize,
    start: usize,
    end: usize,
    score: f32,
}

impl QuestionAnswerer {
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let repo = ModelRepo::open(model, &options.hub)?;
        let config = ModelConfig::load(&repo.required(hub::CONFIG)?, Task::Qa)?;
        let encoder_config = models::encoder_config(&config)?;
        let window = match super::tokenizer_max_length(&repo)? {
            Some(limit) => limit.min(encoder_config.window()),
            None => encoder_config.window(),
        };
        let path = repo.required(hub::TOKENIZER)?;
        let mut tokenizer =
            crate::tokenize::read_tokenizer(&path).map_err(|source| Error::Tokenizer {
                path: path.clone(),
                source,
            })?;
        tokenizer.with_padding(None);
        let cls_id =
            super::special_token(&repo, "cls_token")?.and_then(|cls| tokenizer.token_to_id(&cls));
        let (device, dtype) = options.placement(Precision::HalfSafe)?;
        let model = options.load_weights(&repo, (&device, dtype), |vb| {
            models::load_token_head(
                &config,
                &encoder_config,
                vb,
                "qa_outputs",
                2,
                options.quantization,
            )
        })?;
        Ok(QuestionAnswerer {
            model,
            tokenizer,
            window,
            pad_id: encoder_config.pad_id,
            cls_id,
            device,
        })
    }

    /// The window length `settings` resolve to, and the stride.
    fn windowing(&self, settings: &QaSettings) -> Result<(usize, usize)> {
        let max_seq_len = settings.max_seq_len.unwrap_or(384).min(self.window);
        let stride = settings
            .doc_stride
            .unwrap_or_else(|| (max_seq_len / 2).min(128));
        if stride >= max_seq_len {
            return Err(Error::Input(format!(
                "--doc-stride {stride} must be smaller than --max-seq-len {max_seq_len}"
            )));
        }
        Ok((max_seq_len, stride))
    }

    /// The best answers to `question` in `context`, best first.
    pub fn answer(
        &self,
        question: &str,
        context: &str,
        settings: &QaSettings,
    ) -> Result<Vec<Answer>> {
        let (max_seq_len, stride) = self.windowing(settings)?;
        let windows = self.windows(question, context, max_seq_len, stride)?;
        let refs: Vec<&Encoding> = windows.iter().collect();
        let batch = Batch::new(&refs, self.pad_id, Side::Right, &self.device)?;
        let logits: Vec<Vec<Vec<f32>>> = self
            .model
            .forward(&batch)?
            .to_dtype(DType::F32)?
            .to_vec3()?;

        let candidates = settings.top_k * 2 + 10;
        let mut spans = Vec::new();
        let mut null_score = f32::INFINITY;
        for (index, (window, logits)) in windows.iter().zip(&logits).enumerate() {
            let allowed = self.allowed(window);
            let len = window.ids.len();
            if len == 0 {
                continue;
            }
            let masked = |column: usize| -> Vec<f32> {
                (0..len)
                    .map(|i| {
                        if allowed[i] {
                            logits[i][column]
                        } else {
                            EXCLUDED
                        }
                    })
                    .collect()
            };
            let mut starts = crate::generation::logits::softmax(&masked(0));
            let mut ends = crate::generation::logits::softmax(&masked(1));
            null_score = null_score.min(starts[0] * ends[0]);
            starts[0] = 0.0;
            ends[0] = 0.0;
            spans.extend(
                best_spans(
                    &starts,
                    &ends,
                    &allowed,
                    settings.max_answer_len,
                    candidates,
                )
                .into_iter()
                .map(|(start, end, score)| Span {
                    window: index,
                    start,
                    end,
                    score,
                }),
            );
        }

        let mut answers: Vec<Answer> = Vec::new();
        for span in spans {
            let (start, end) = char_span(&windows[span.window].raw, context, span.start, span.end);
            let text: String = context
                .chars()
                .skip(start)
                .take(end.saturating_sub(start))
                .collect();
            match answers
                .iter_mut()
                .find(|a| a.answer.to_lowercase() == text.to_lowercase())
            {
                Some(existing) => existing.score += f64::from(span.score),
                None => answers.push(Answer {
                    answer: text,
                    score: f64::from(span.score),
                    start,
                    end,
                }),
            }
        }
        if settings.handle_impossible_answer {
            answers.push(Answer {
                answer: String::new(),
                score: f64::from(null_score),
                start: 0,
                end: 0,
            });
        }
        answers.sort_by(|a, b| b.score.total_cmp(&a.score));
        answers.truncate(settings.top_k);
        Ok(answers)
    }

    /// The question followed by each overlapping window of the context.
    fn windows(
        &self,
        question: &str,
        context: &str,
        max_seq_len: usize,
        stride: usize,
    ) -> Result<Vec<Encoding>> {
        let mut tokenizer = self.tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_len,
                strategy: TruncationStrategy::OnlySecond,
                stride,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Input(format!("cannot split the context into windows: {e}")))?;
        let mut first = tokenizer.encode((question, context), true).map_err(|e| {
            Error::Input(format!("the question leaves no room for the context: {e}"))
        })?;
        let rest = std::mem::take(first.get_overflowing_mut());
        Ok(std::iter::once(first)
            .chain(rest)
            .map(|raw| Encoding {
                ids: raw.get_ids().to_vec(),
                type_ids: raw.get_type_ids().to_vec(),
                truncated: false,
                raw,
            })
            .collect())
    }

    /// Positions an answer may start or end at: context tokens and the CLS token.
    fn allowed(&self, window: &Encoding) -> Vec<bool> {
        window
            .raw
            .get_sequence_ids()
            .iter()
            .zip(&window.ids)
            .map(|(sequence, &id)| *sequence == Some(1) || Some(id) == self.cls_id)
            .collect()
    }
}

/// The `count` best spans (start ≤ end < start + max_len) by p(start)·p(end), then those
/// whose ends are allowed, as transformers' `decode_spans` picks them. Index 0 always
/// passes that filter there, and does here.
fn best_spans(
    starts: &[f32],
    ends: &[f32],
    allowed: &[bool],
    max_len: usize,
    count: usize,
) -> Vec<(usize, usize, f32)> {
    let len = starts.len();
    let mut scored: Vec<(usize, usize, f32)> = Vec::with_capacity(len * max_len.min(len));
    for (i, &p_start) in starts.iter().enumerate() {
        for (j, &p_end) in ends.iter().enumerate().take(i + max_len).skip(i) {
            scored.push((i, j, p_start * p_end));
        }
    }
    // Spans outside the band score 0 in transformers' matrix; they only matter when fewer
    // than `count` spans exist, and then they are filtered out as not allowed or scored 0.
    scored.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    scored.truncate(count);
    let ok = |index: usize| index == 0 || allowed[index];
    scored
        .into_iter()
        .filter(|&(s, e, _)| ok(s) && ok(e))
        .collect()
}

/// Character offsets of tokens `start..=end` of `window`, widened to whole words of the
/// context as transformers does (`token_to_word`, `word_to_chars`), else the tokens' own.
fn char_span(
    window: &tokenizers::Encoding,
    context: &str,
    start: usize,
    end: usize,
) -> (usize, usize) {
    let word_chars = |token: usize| -> Option<(usize, usize)> {
        let (_, word) = window.token_to_word(token)?;
        window.word_to_chars(word, 1)
    };
    let bytes = match (word_chars(start), word_chars(end)) {
        (Some((s, _)), Some((_, e))) => (s, e),
        _ => (window.get_offsets()[start].0, window.get_offsets()[end].1),
    };
    let to_char = |byte: usize| {
        context
            .char_indices()
            .take_while(|&(i, _)| i < byte)
            .count()
    };
    (to_char(bytes.0), to_char(bytes.1))
}
