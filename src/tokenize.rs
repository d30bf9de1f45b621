//! Text in, padded batches out: the one tokenization path every task shares.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

/// One tokenized input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// True when the input was longer than the model window and was cut to fit.
    pub truncated: bool,
}

/// Where padding goes: encoders pad on the right, decoder-only generation on the left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadSide {
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
    pub fn new(
        encodings: &[&Encoding],
        pad_id: u32,
        side: PadSide,
        device: &Device,
    ) -> Result<Self> {
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
            if side == PadSide::Left {
                pad(&mut ids, &mut types, &mut mask);
            }
            ids.extend_from_slice(&encoding.ids);
            types.extend_from_slice(&encoding.type_ids);
            mask.extend(std::iter::repeat_n(1, encoding.ids.len()));
            if side == PadSide::Right {
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

/// A tokenizer.json with the model's window and padding id.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    pad_id: u32,
    window: usize,
}

impl TextEncoder {
    /// Loads `tokenizer.json`; inputs longer than `window` tokens (special tokens included)
    /// are truncated on the right, as transformers does with `truncation=True`.
    pub fn load(path: &Path, window: usize, pad_id: Option<u32>) -> Result<Self> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|source| Error::Tokenizer {
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
                direction: TruncationDirection::Right,
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
}

fn convert(encoding: tokenizers::Encoding) -> Encoding {
    Encoding {
        truncated: !encoding.get_overflowing().is_empty(),
        ids: encoding.get_ids().to_vec(),
        type_ids: encoding.get_type_ids().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoding(ids: &[u32]) -> Encoding {
        Encoding {
            ids: ids.to_vec(),
            type_ids: vec![0; ids.len()],
            truncated: false,
        }
    }

    #[test]
    fn pads_on_the_requested_side() -> Result<()> {
        let (a, b) = (encoding(&[5, 6, 7]), encoding(&[8]));
        let right = Batch::new(&[&a, &b], 9, PadSide::Right, &Device::Cpu)?;
        assert_eq!(right.input_ids.to_vec2::<u32>()?, [[5, 6, 7], [8, 9, 9]]);
        assert_eq!(
            right.attention_mask.to_vec2::<u32>()?,
            [[1, 1, 1], [1, 0, 0]]
        );
        let left = Batch::new(&[&a, &b], 9, PadSide::Left, &Device::Cpu)?;
        assert_eq!(left.input_ids.to_vec2::<u32>()?, [[5, 6, 7], [9, 9, 8]]);
        assert_eq!(
            left.attention_mask.to_vec2::<u32>()?,
            [[1, 1, 1], [0, 0, 1]]
        );
        assert_eq!(left.lengths, [3, 1]);
        Ok(())
    }
}
