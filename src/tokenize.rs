//! Text in, padded batches out: the one tokenization path every task shares.

use std::path::Path;

use std::str::FromStr;

use candle_core::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// One tokenized input.
#[derive(Debug, Clone)]
pub struct Encoding {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// True when the input was longer than the model window and was cut to fit.
    pub truncated: bool,
    /// The tokenizer's own encoding (tokens, byte offsets, special-token mask), for tasks
    /// that map tokens back to the text.
    pub raw: tokenizers::Encoding,
}

/// Which end padding goes on, or truncation cuts from: encoders pad and truncate on the
/// right; decoder-only generation pads on the left and keeps a prompt's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Right,
    Left,
}

/// A padded batch on a device. Every model takes this one mask convention: 1 = attend.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(batch, seq)` u32 token ids.
    pub input_ids: Tensor,
    /// `(batch, seq)` u32 segment ids.
    pub token_type_ids: Tensor,
    /// `(batch, seq)` u32, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// Real (unpadded) length of each row.
    pub lengths: Vec<usize>,
}

impl Batch {
    pub fn new(encodings: &[&Encoding], pad_id: u32, side: Side, device: &Device) -> Result<Self> {
        let rows = encodings.len();
        let width = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * width);
        let mut types = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in encodings {
            let padding = width - encoding.ids.len();
            let pad = |ids: &mut Vec<u32>, types: &mut Vec<u32>, mask: &mut Vec<u32>| {
                ids.extend(std::iter::repeat_n(pad_id, padding));
                types.extend(std::iter::repeat_n(0, padding));
                mask.extend(std::iter::repeat_n(0, padding));
            };
            if side == Side::Left {
                pad(&mut ids, &mut types, &mut mask);
            }
            ids.extend_from_slice(&encoding.ids);
            types.extend_from_slice(&encoding.type_ids);
            mask.extend(std::iter::repeat_n(1, encoding.ids.len()));
            if side == Side::Right {
                pad(&mut ids, &mut types, &mut mask);
            }
        }
        let shape = (rows, width);
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, shape, device)?,
            token_type_ids: Tensor::from_vec(types, shape, device)?,
            attention_mask: Tensor::from_vec(mask, shape, device)?,
            lengths: encodings.iter().map(|e| e.ids.len()).collect(),
        })
    }
}

/// How many inputs go through the model together: at most `max_inputs`, and at most
/// `max_tokens` tokens counting padding (rows × longest row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_inputs: usize,
    pub max_tokens: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_inputs: 32,
            max_tokens: 8192,
        }
    }
}

impl Batching {
    /// Length-bucketed batches: inputs sorted by length (stable), then cut greedily under
    /// both limits, so similar lengths share a batch and little padding is computed.
    /// Returns groups of indices into `lengths`.
    pub fn buckets(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.sort_by_key(|&i| lengths[i]);
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        for index in order {
            // Sorted ascending, so the newcomer is the longest row.
            let rows = current.len() + 1;
            if !current.is_empty()
                && (rows > self.max_inputs || rows * lengths[index] > self.max_tokens)
            {
                groups.push(std::mem::take(&mut current));
            }
            current.push(index);
        }
        if !current.is_empty() {
            groups.push(current);
        }
        groups
    }

    /// Runs `run` over length-bucketed batches of `encodings` and returns its per-input
    /// results in input order.
    pub fn run<T>(
        &self,
        encodings: &[&Encoding],
        mut run: impl FnMut(&[&Encoding]) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let lengths: Vec<usize> = encodings.iter().map(|e| e.ids.len()).collect();
        let mut slots: Vec<Option<T>> = (0..encodings.len()).map(|_| None).collect();
        for group in self.buckets(&lengths) {
            let members: Vec<&Encoding> = group.iter().map(|&i| encodings[i]).collect();
            for (index, result) in group.into_iter().zip(run(&members)?) {
                slots[index] = Some(result);
            }
        }
        slots
            .into_iter()
            .map(|slot| {
                slot.ok_or_else(|| Error::Encode("a batch returned too few results".into()))
            })
            .collect()
    }
}

/// Groups of inputs, longest first, that each pad to at most `1 + max_padding` times
/// their real tokens: how one generation batch is split for its encoder pass, where
/// padding costs compute but the decoder still wants every row at once. Returns indices
/// into `lengths`.
pub fn low_padding_groups(lengths: &[usize], max_padding: f64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0;
    for index in order {
        let len = lengths[index];
        let fits = groups.last().is_some_and(|group| {
            // Sorted longest first, so the group's first member sets its width.
            let padded = (group.len() + 1) * lengths[group[0]];
            padded as f64 <= (1.0 + max_padding) * (real + len) as f64
        });
        if !fits {
            groups.push(Vec::new());
            real = 0;
        }
        if let Some(group) = groups.last_mut() {
            group.push(index);
        }
        real += len;
    }
    groups
}

/// A tokenizer.json with the model's window and padding id.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    pad_id: u32,
    window: usize,
}

/// Reads tokenizer.json as tokenizers does, except that a BPE model (GPT-2, RoBERTa:
/// vocabularies and merges of ~50k entries) is parsed straight into its builder:
/// tokenizers' own deserializer first copies a model through two generic JSON trees, which
/// doubled the time of GPT-2's (~150 ms, the longest part of a load from the weight
/// cache). The parts around the model are assembled as tokenizers' own deserializer does.
pub fn read_tokenizer(path: &Path) -> tokenizers::Result<Tokenizer> {
    use serde::Deserialize;
    use serde_json::value::RawValue;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::{
        AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PaddingParams,
        PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder,
    };

    #[derive(Deserialize)]
    struct File<'a> {
        version: Option<String>,
        truncation: Option<TruncationParams>,
        padding: Option<PaddingParams>,
        #[serde(default)]
        added_tokens: Vec<AddedToken>,
        normalizer: Option<NormalizerWrapper>,
        pre_tokenizer: Option<PreTokenizerWrapper>,
        post_processor: Option<PostProcessorWrapper>,
        decoder: Option<DecoderWrapper>,
        #[serde(borrow)]
        model: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    #[derive(Deserialize)]
    struct Bpe {
        dropout: Option<f32>,
        unk_token: Option<String>,
        continuing_subword_prefix: Option<String>,
        end_of_word_suffix: Option<String>,
        fuse_unk: Option<bool>,
        byte_fallback: Option<bool>,
        ignore_merges: Option<bool>,
        vocab: Vocab,
        merges: Vec<Merge>,
    }

    let json = std::fs::read_to_string(path)?;
    let file: File = serde_json::from_str(&json)?;
    // The model's type first: a WordPiece or Unigram vocabulary is not built only to fail.
    let kind = serde_json::from_str::<Kind>(file.model.get()).map(|model| model.kind);
    let bpe = match kind {
        Ok(Some(kind)) if kind == "BPE" && file.version.as_deref().is_none_or(|v| v == "1.0") => {
            serde_json::from_str::<Bpe>(file.model.get()).ok()
        }
        _ => None,
    };
    // Other models (and anything unexpected) take tokenizers' own path.
    let Some(bpe) = bpe else {
        return Tokenizer::from_str(&json);
    };
    let mut model = BPE::builder().vocab_and_merges(
        bpe.vocab,
        bpe.merges.into_iter().map(|m| m.0).collect::<Vec<_>>(),
    );
    if let Some(dropout) = bpe.dropout {
        model = model.dropout(dropout);
    }
    if let Some(unk) = bpe.unk_token {
        model = model.unk_token(unk);
    }
    if let Some(prefix) = bpe.continuing_subword_prefix {
        model = model.continuing_subword_prefix(prefix);
    }
    if let Some(suffix) = bpe.end_of_word_suffix {
        model = model.end_of_word_suffix(suffix);
    }
    if let Some(fuse_unk) = bpe.fuse_unk {
        model = model.fuse_unk(fuse_unk);
    }
    if let Some(byte_fallback) = bpe.byte_fallback {
        model = model.byte_fallback(byte_fallback);
    }
    if let Some(ignore_merges) = bpe.ignore_merges {
        model = model.ignore_merges(ignore_merges);
    }
    let mut tokenizer: Tokenizer = TokenizerBuilder::new()
        .with_model(ModelWrapper::BPE(model.build()?))
        .with_truncation(file.truncation)
        .with_padding(file.padding)
        .with_normalizer(file.normalizer)
        .with_pre_tokenizer(file.pre_tokenizer)
        .with_post_processor(file.post_processor)
        .with_decoder(file.decoder)
        .build()?
        .into();
    // Added tokens take the model's ids where it has them, as in tokenizers' own reader.
    tokenizer.add_tokens(&file.added_tokens);
    Ok(tokenizer)
}

/// One BPE merge: `["a", "b"]`, or `"a b"` in older files (exactly one space, as tokenizers
/// requires).
struct Merge((String, String));

impl<'de> serde::Deserialize<'de> for Merge {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Merge;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a merge: two strings, or one with a space between them")
            }

            fn visit_str<E: serde::de::Error>(self, merge: &str) -> std::result::Result<Merge, E> {
                match merge.split(' ').collect::<Vec<_>>()[..] {
                    [a, b] => Ok(Merge((a.to_string(), b.to_string()))),
                    _ => Err(E::custom(format!("the merge `{merge}` is not two tokens"))),
                }
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Merge, A::Error> {
                let mut next = || -> std::result::Result<String, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| serde::de::Error::custom("a merge has two tokens"))
                };
                let (a, b) = (next()?, next()?);
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::custom("a merge has two tokens"));
                }
                Ok(Merge((a, b)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl TextEncoder {
    /// Loads `tokenizer.json`; inputs longer than `window` tokens (special tokens included)
    /// are cut from the `truncate` side, as transformers does with `truncation=True`.
    pub fn load(path: &Path, window: usize, pad_id: Option<u32>, truncate: Side) -> Result<Self> {
        let mut tokenizer = read_tokenizer(path).map_err(|source| Error::Tokenizer {
            path: path.to_path_buf(),
            source,
        })?;
        let pad_id = pad_id
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
            .unwrap_or(0);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: window,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: match truncate {
                    Side::Right => TruncationDirection::Right,
                    Side::Left => TruncationDirection::Left,
                },
            }))
            .map_err(|source| Error::Tokenizer {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(TextEncoder {
            tokenizer,
            pad_id,
            window,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The most tokens one input may have.
    pub fn window(&self) -> usize {
        self.window
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes each text with special tokens; a text that fails costs only itself.
    pub fn encode_all(&self, texts: &[&str]) -> Vec<Result<Encoding>> {
        match self.tokenizer.encode_batch(texts.to_vec(), true) {
            Ok(encodings) => encodings.into_iter().map(|e| Ok(convert(e))).collect(),
            // Rare: find out which inputs failed.
            Err(_) => texts.iter().map(|text| self.encode(text)).collect(),
        }
    }

    pub fn encode(&self, text: &str) -> Result<Encoding> {
        self.tokenizer
            .encode(text, true)
            .map(convert)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    /// Text for `ids`, special tokens skipped, as transformers' `decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Encode(format!("cannot decode tokens: {e}")))
    }
}

/// Incremental detokenization: text is released only once it is whole, so a character that
/// byte-level BPE splits across tokens is never printed in halves.
#[derive(Debug, Default, Clone)]
pub struct DecodeStream {
    ids: Vec<u32>,
    /// Start of the tokens decoded together for context (leading spaces depend on it).
    prefix: usize,
    /// End of the tokens whose text has been released.
    read: usize,
}

impl DecodeStream {
    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, text: &TextEncoder, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let released = text.decode(&self.ids[self.prefix..self.read])?;
        let current = text.decode(&self.ids[self.prefix..])?;
        if current.len() <= released.len() || current.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(new) = current.get(released.len()..) else {
            return Ok(None);
        };
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(new.to_string()))
    }

    /// Whatever is still held back (an incomplete character at the very end).
    pub fn finish(&mut self, text: &TextEncoder) -> Result<Option<String>> {
        if self.read == self.ids.len() {
            return Ok(None);
        }
        let released = text.decode(&self.ids[self.prefix..self.read])?;
        let current = text.decode(&self.ids[self.prefix..])?;
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(current
            .get(released.len()..)
            .map(str::to_string)
            .filter(|s| !s.is_empty()))
    }
}

fn convert(mut encoding: tokenizers::Encoding) -> Encoding {
    let truncated = !encoding.get_overflowing().is_empty();
    // The cut-off remainder is not needed and can be large.
    encoding.get_overflowing_mut().clear();
    Encoding {
        truncated,
        ids: encoding.get_ids().to_vec(),
        type_ids: encoding.get_type_ids().to_vec(),
        raw: encoding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tokenizer as tokenizers' own reader makes: the same serialization and the
    /// same encodings, for every fixture's tokenizer.json (BPE, WordPiece, Unigram) and for
    /// BPE merges written the older way (`"a b"`).
    #[test]
    fn read_tokenizer_makes_what_tokenizers_makes() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut files: Vec<_> = std::fs::read_dir(&fixtures)
            .unwrap()
            .map(|entry| entry.unwrap().path().join("tokenizer.json"))
            .filter(|file| file.exists())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut gpt2: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join("gpt2-tiny/tokenizer.json")).unwrap(),
        )
        .unwrap();
        let merges = &mut gpt2["model"]["merges"];
        let joined: Vec<String> = (merges.as_array().unwrap().iter())
            .map(|pair| {
                format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                )
            })
            .collect();
        *merges = joined.into();
        let legacy = dir.path().join("tokenizer.json");
        std::fs::write(&legacy, gpt2.to_string()).unwrap();
        files.push(legacy.clone());
        assert!(files.len() > 10, "{files:?}");

        let texts = [
            "Hello, my dog is cute",
            "  spaces\tand\nlines, ünïcödé and emoji 🦀 <|endoftext|> [SEP] </s>",
            "",
        ];
        for file in &files {
            let ours = read_tokenizer(file).unwrap();
            let theirs = Tokenizer::from_file(file).unwrap();
            assert_eq!(
                ours.to_string(false).unwrap(),
                theirs.to_string(false).unwrap(),
                "{file:?}"
            );
            for text in texts {
                let (a, b) = (
                    ours.encode(text, true).unwrap(),
                    theirs.encode(text, true).unwrap(),
                );
                assert_eq!(
                    (a.get_ids(), a.get_offsets()),
                    (b.get_ids(), b.get_offsets()),
                    "{file:?}"
                );
            }
        }

        // A merge that is not two tokens is refused, as tokenizers refuses it.
        gpt2["model"]["merges"][0] = "a b c".into();
        std::fs::write(&legacy, gpt2.to_string()).unwrap();
        assert!(read_tokenizer(&legacy).is_err());
        assert!(Tokenizer::from_file(&legacy).is_err());
    }

    fn encoding(ids: &[u32]) -> Encoding {
        Encoding {
            ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
            truncated: false,
            raw: tokenizers::Encoding::default(),
        }
    }

    #[test]
    fn low_padding_groups_bound_the_padding_of_each_group() {
        let lengths = [14, 349, 59, 268, 88, 212];
        let groups = low_padding_groups(&lengths, 0.25);
        // 349+268 pad to 698 for 617 real tokens; adding 212 would pad 1047 for 829.
        assert_eq!(groups, [vec![1, 3], vec![5], vec![4, 2], vec![0]]);
        for group in &groups {
            let real: usize = group.iter().map(|&i| lengths[i]).sum();
            let padded = group.len() * lengths[group[0]];
            assert!(padded as f64 <= 1.25 * real as f64, "{group:?}");
        }
        assert!(low_padding_groups(&[], 0.25).is_empty());
        assert_eq!(low_padding_groups(&[5, 5, 5], 0.0), [vec![0, 1, 2]]);
    }

    #[test]
    fn buckets_group_similar_lengths_under_both_limits() {
        let batching = Batching {
            max_inputs: 2,
            max_tokens: 20,
        };
        let groups = batching.buckets(&[9, 3, 12, 4, 3]);
        assert_eq!(groups, [vec![1, 4], vec![3, 0], vec![2]]);
        let wide = Batching {
            max_inputs: 8,
            max_tokens: 24,
        };
        // 3,3,4 fit (3 rows x 4); adding 9 would need 4 x 9 = 36.
        assert_eq!(wide.buckets(&[9, 3, 12, 4, 3]), [vec![1, 4, 3], vec![0, 2]]);
    }

    #[test]
    fn pads_on_the_requested_side() -> Result<()> {
        let (a, b) = (encoding(&[5, 6, 7]), encoding(&[8]));
        let right = Batch::new(&[&a, &b], 9, Side::Right, &Device::Cpu)?;
        assert_eq!(right.input_ids.to_vec2::<u32>()?, [[5, 6, 7], [8, 9, 9]]);
        assert_eq!(
            right.attention_mask.to_vec2::<u32>()?,
            [[1, 1, 1], [1, 0, 0]]
        );
        let left = Batch::new(&[&a, &b], 9, Side::Left, &Device::Cpu)?;
        assert_eq!(left.input_ids.to_vec2::<u32>()?, [[5, 6, 7], [9, 9, 8]]);
        assert_eq!(
            left.attention_mask.to_vec2::<u32>()?,
            [[1, 1, 1], [0, 0, 1]]
        );
        assert_eq!(left.lengths, [3, 1]);
        Ok(())
    }
}
