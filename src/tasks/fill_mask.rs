//! Masked-token prediction (`llmx fill-mask`), as transformers' fill-mask pipeline answers.

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::LoadOptions;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::generation::logits::softmax;
use crate::hub::{self, ModelRepo};
use crate::models::{self, MaskedLm, ModelConfig, Task};
use crate::tokenize::{Batch, Batching, Encoding, Side, TextEncoder};

pub const DEFAULT_MODEL: &str = "google-bert/bert-base-uncased";

/// One candidate for one mask, with the fields transformers names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub score: f32,
    /// The token id.
    pub token: u32,
    pub token_str: String,
    /// The input with this candidate in the mask's place.
    pub sequence: String,
}

/// Candidates for each mask of one input, in mask order.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub masks: Vec<Vec<Prediction>>,
    pub truncated: bool,
}

pub struct MaskFiller {
    model: MaskedLm,
    text: TextEncoder,
    mask_token: String,
    mask_id: u32,
    batching: Batching,
    device: Device,
}

impl MaskFiller {
    pub fn load(model: &str, options: &LoadOptions) -> Result<Self> {
        let repo = ModelRepo::open(model, &options.hub)?;
        let config = ModelConfig::load(&repo.required(hub::CONFIG)?, Task::FillMask)?;
        let encoder_config = models::encoder_config(&config)?;
        let text = super::encoder_text(&repo, &encoder_config, None)?;
        let mask_token =
            super::special_token(&repo, "mask_token")?.unwrap_or_else(|| "[MASK]".to_string());
        let (device, dtype) = options.placement(Precision::HalfSafe)?;
        let (text, model) = super::beside_weights(text, || {
            options.load_weights(&repo, (&device, dtype), |vb| {
                models::load_masked_lm(&config, &encoder_config, vb, options.quantization)
            })
        })?;
        let Some(mask_id) = text.tokenizer().token_to_id(&mask_token) else {
            return Err(Error::config(
                repo.required(hub::TOKENIZER)?,
                format!("the mask token {mask_token} is not in the vocabulary"),
            ));
        };
        Ok(MaskFiller {
            model,
            text,
            mask_token,
            mask_id,
            batching: Batching::default(),
            device,
        })
    }

    /// How inputs are grouped into forward passes.
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    pub fn mask_token(&self) -> &str {
        &self.mask_token
    }

    /// Token ids for `targets`, as transformers resolves them: a vocabulary entry as it is,
    /// else the first token of its tokenization; duplicates collapse. Returns the ids and a
    /// warning per replaced target.
    pub fn target_ids(&self, targets: &[String]) -> Result<(Vec<u32>, Vec<String>)> {
        let tokenizer = self.text.tokenizer();
        let mut ids = Vec::new();
        let mut warnings = Vec::new();
        for target in targets {
            let id = match tokenizer.token_to_id(target) {
                Some(id) => Some(id),
                None => {
                    let encoding = tokenizer
                        .encode(target.as_str(), false)
                        .map_err(|e| Error::Encode(e.to_string()))?;
                    let first = encoding.get_ids().first().copied();
                    if let Some(id) = first {
                        let replacement = tokenizer.id_to_token(id).unwrap_or_default();
                        warnings.push(format!(
                            "the target `{target}` is not in the vocabulary; using `{replacement}` instead"
                        ));
                    } else {
                        warnings.push(format!(
                            "the target `{target}` is empty after tokenization; skipped"
                        ));
                    }
                    first
                }
            };
            if let Some(id) = id.filter(|id| !ids.contains(id)) {
                ids.push(id);
            }
        }
        if ids.is_empty() && !targets.is_empty() {
            return Err(Error::Generation(
                "no --targets remain after tokenization".into(),
            ));
        }
        Ok((ids, warnings))
    }

    /// The `top_k` candidates for every mask of each text, restricted to `targets` (token ids)
    /// when given. A text with no mask fails alone.
    pub fn fill(
        &self,
        texts: &[&str],
        top_k: usize,
        targets: Option<&[u32]>,
    ) -> Result<Vec<Result<Filled>>> {
        self.fill_encoded(self.encode(texts), top_k, targets)
    }

    /// Tokenizes `texts` for [`MaskFiller::fill_encoded`]; a text with no mask token fails
    /// here.
    pub fn encode(&self, texts: &[&str]) -> Vec<Result<Encoding>> {
        self.text
            .encode_all(texts)
            .into_iter()
            .map(|encoding| {
                let encoding = encoding?;
                if !encoding.ids.contains(&self.mask_id) {
                    return Err(Error::Input(format!(
                        "the input has no mask token; this model's is {}",
                        self.mask_token
                    )));
                }
                Ok(encoding)
            })
            .collect()
    }

    /// Fills the masks of inputs tokenized by [`MaskFiller::encode`].
    pub fn fill_encoded(
        &self,
        encoded: Vec<Result<Encoding>>,
        top_k: usize,
        targets: Option<&[u32]>,
    ) -> Result<Vec<Result<Filled>>> {
        let filled = super::run_encoded(encoded, &self.batching, |group| {
            self.predict(group, top_k, targets)
        })?;
        Ok(filled
            .into_iter()
            .map(|input| {
                input.map(|(encoding, masks)| Filled {
                    masks,
                    truncated: encoding.truncated,
                })
            })
            .collect())
    }

    fn predict(
        &self,
        encodings: &[&Encoding],
        top_k: usize,
        targets: Option<&[u32]>,
    ) -> Result<Vec<Vec<Vec<Prediction>>>> {
        let batch = Batch::new(encodings, self.text.pad_id(), Side::Right, &self.device)?;
        let hidden = self.model.hidden(&batch)?;
        let (_, seq, width) = hidden.dims3()?;
        // Only the masked positions go through the vocabulary projection.
        let positions: Vec<u32> = encodings
            .iter()
            .enumerate()
            .flat_map(|(row, e)| {
                e.ids
                    .iter()
                    .enumerate()
                    .filter(|&(_, &id)| id == self.mask_id)
                    .map(move |(i, _)| (row * seq + i) as u32)
            })
            .collect();
        let index = Tensor::new(positions.as_slice(), &self.device)?;
        let rows = hidden
            .reshape((encodings.len() * seq, width))?
            .index_select(&index, 0)?;
        let logits: Vec<Vec<f32>> = self.model.logits(&rows)?.to_dtype(DType::F32)?.to_vec2()?;
        let mut logits = logits.into_iter();
        encodings
            .iter()
            .map(|encoding| {
                let masks: Vec<usize> = (0..encoding.ids.len())
                    .filter(|&i| encoding.ids[i] == self.mask_id)
                    .collect();
                masks
                    .iter()
                    .map(|&position| {
                        let probs = softmax(&logits.next().unwrap_or_default());
                        self.candidates(
                            encoding,
                            position,
                            masks.len() == 1,
                            &probs,
                            top_k,
                            targets,
                        )
                    })
                    .collect()
            })
            .collect()
    }

    fn candidates(
        &self,
        encoding: &Encoding,
        position: usize,
        single_mask: bool,
        probs: &[f32],
        top_k: usize,
        targets: Option<&[u32]>,
    ) -> Result<Vec<Prediction>> {
        let mut pool: Vec<u32> = match targets {
            Some(ids) => ids
                .iter()
                .copied()
                .filter(|&id| (id as usize) < probs.len())
                .collect(),
            None => (0..probs.len() as u32).collect(),
        };
        pool.sort_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        pool.truncate(top_k);
        let tokenizer = self.text.tokenizer();
        pool.into_iter()
            .map(|token| {
                let mut ids = encoding.ids.clone();
                ids[position] = token;
                ids.retain(|&id| id != self.text.pad_id());
                // transformers keeps special tokens in the sequence when there are several masks.
                let sequence = tokenizer
                    .decode(&ids, single_mask)
                    .map_err(|e| Error::Encode(e.to_string()))?;
                let token_str = tokenizer
                    .decode(&[token], false)
                    .map_err(|e| Error::Encode(e.to_string()))?;
                Ok(Prediction {
                    score: probs[token as usize],
                    token,
                    token_str,
                    sequence,
                })
            })
            .collect()
    }
}
