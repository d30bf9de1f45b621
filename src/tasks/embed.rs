//! Sentence embeddings (`llmx embed`), pooled and normalised as the checkpoint's
//! sentence-transformers files say (modules.json, 1_Pooling/config.json, Normalize,
//! sentence_bert_config.json), else as the caller asks.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::Deserialize;

use super::LoadOptions;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::hub::{self, ModelRepo};
use crate::models::{self, Encoder, ModelConfig, Task};
use crate::tokenize::{Batch, Batching, Encoding, Side, TextEncoder};

pub const DEFAULT_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// How token vectors become one vector; several modes are concatenated in this order, as
/// sentence-transformers does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooling {
    /// The first token.
    Cls,
    /// The elementwise maximum over real tokens.
    Max,
    /// The mean over real tokens.
    Mean,
    /// The sum over real tokens divided by the square root of their count.
    #[value(name = "mean-sqrt-len")]
    MeanSqrtLen,
}

/// Caller choices; each one given replaces what the checkpoint's files say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbedChoices {
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
}

/// The sentence-transformers description of a checkpoint, where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SentenceTransformer {
    pooling: Vec<Pooling>,
    normalize: bool,
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl SentenceTransformer {
    fn read(repo: &ModelRepo) -> Result<Option<Self>> {
        let Some(modules_path) = repo.optional("modules.json")? else {
            return Ok(None);
        };
        let modules: Vec<Module> = read_json(&modules_path)?;
        let mut pooling = Vec::new();
        let mut normalize = false;
        for module in &modules {
            match module.kind.rsplit('.').next().unwrap_or_default() {
                "Pooling" => {
                    let path = repo.required(&format!("{}/config.json", module.path))?;
                    let config: PoolingConfig = read_json(&path)?;
                    if config.pooling_mode_weightedmean_tokens || config.pooling_mode_lasttoken {
                        return Err(Error::config(
                            path,
                            "weighted-mean and last-token pooling are not supported; use --pooling",
                        ));
                    }
                    let modes = [
                        (config.pooling_mode_cls_token, Pooling::Cls),
                        (config.pooling_mode_max_tokens, Pooling::Max),
                        (config.pooling_mode_mean_tokens, Pooling::Mean),
                        (
                            config.pooling_mode_mean_sqrt_len_tokens,
                            Pooling::MeanSqrtLen,
                        ),
                    ];
                    pooling = modes
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|&(_, mode)| mode)
                        .collect();
                }
                "Normalize" => normalize = true,
                _ => {}
            }
        }
        #[derive(Deserialize)]
        struct BertConfig {
            max_seq_length: Option<usize>,
        }
        let max_seq_length = match repo.optional("sentence_bert_config.json")? {
            Some(path) => read_json::<BertConfig>(&path)?.max_seq_length,
            None => None,
        };
        Ok(Some(SentenceTransformer {
            pooling,
            normalize,
            max_seq_length,
        }))
    }
}

/// One input's embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    pub vector: Vec<f32>,
    pub truncated: bool,
}

pub struct Embedder {
    encoder: Encoder,
    text: TextEncoder,
    pooling: Vec<Pooling>,
    normalize: bool,
    batching: Batching,
    device: Device,
}

impl Embedder {
    pub fn load(model: &str, options: &LoadOptions, choices: &EmbedChoices) -> Result<Self> {
        let repo = ModelRepo::open(model, &options.hub)?;
        let config = ModelConfig::load(&repo.required(hub::CONFIG)?, Task::Embed)?;
        let encoder_config = models::encoder_config(&config)?;
        let described = SentenceTransformer::read(&repo)?;
        let pooling = match (choices.pooling, &described) {
            (Some(mode), _) => vec![mode],
            (None, Some(st)) if !st.pooling.is_empty() => st.pooling.clone(),
            _ => vec![Pooling::Mean],
        };
        let normalize = choices
            .normalize
            .unwrap_or_else(|| described.as_ref().is_some_and(|st| st.normalize));
        let max_seq_length = described.as_ref().and_then(|st| st.max_seq_length);
        let text = super::encoder_text(&repo, &encoder_config, max_seq_length)?;
        let (device, dtype) = options.placement(Precision::HalfSafe)?;
        let (text, encoder) = super::beside_weights(text, || {
            options.load_weights(&repo, (&device, dtype), |vb| {
                models::load_encoder(&config, &encoder_config, vb, options.quantization)
            })
        })?;
        Ok(Embedder {
            encoder,
            text,
            pooling,
            normalize,
            batching: Batching::default(),
            device,
        })
    }

    /// How inputs are grouped into forward passes.
    pub fn with_batching(mut self, batching: Batching) -> Self {
        self.batching = batching;
        self
    }

    pub fn pooling(&self) -> &[Pooling] {
        &self.pooling
    }

    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Embeds `texts` in length-bucketed padded batches; a text that cannot be tokenized
    /// fails alone.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Result<Embedding>>> {
        self.embed_encoded(self.encode(texts))
    }

    /// Tokenizes `texts` for [`Embedder::embed_encoded`].
    pub fn encode(&self, texts: &[&str]) -> Vec<Result<Encoding>> {
        self.text.encode_all(texts)
    }

    /// Embeds inputs tokenized by [`Embedder::encode`].
    pub fn embed_encoded(&self, encoded: Vec<Result<Encoding>>) -> Result<Vec<Result<Embedding>>> {
        Ok(
            super::run_encoded(encoded, &self.batching, |group| self.vectors(group))?
                .into_iter()
                .map(|input| {
                    input.map(|(encoding, vector)| Embedding {
                        vector,
                        truncated: encoding.truncated,
                    })
                })
                .collect(),
        )
    }

    fn vectors(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>> {
        let batch = Batch::new(encodings, self.text.pad_id(), Side::Right, &self.device)?;
        let hidden = self.encoder.forward(&batch)?.to_dtype(DType::F32)?;
        let mask = batch.attention_mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let pooled = self
            .pooling
            .iter()
            .map(|mode| match mode {
                Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
                Pooling::Max => {
                    // Padding is pushed far below any real value first.
                    let padded = ((mask.ones_like()? - &mask)? * -1e9)?;
                    hidden.broadcast_add(&padded)?.max(1)
                }
                Pooling::Mean => hidden.broadcast_mul(&mask)?.sum(1)?.broadcast_div(&counts),
                Pooling::MeanSqrtLen => hidden
                    .broadcast_mul(&mask)?
                    .sum(1)?
                    .broadcast_div(&counts.sqrt()?),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut vectors = Tensor::cat(&pooled, 1)?;
        if self.normalize {
            let norms = vectors
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::INFINITY)?;
            vectors = vectors.broadcast_div(&norms)?;
        }
        Ok(vectors.to_vec2()?)
    }
}
