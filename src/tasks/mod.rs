//! One module per task. Each loads what it needs through the shared pieces (hub, registry,
//! tokenizer, device) and runs the same pipeline: tokenize → forward → decode.

pub mod classify;
pub mod embed;
pub mod fill_mask;
pub mod generate;
pub mod ner;
pub mod qa;
pub mod text2text;

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device};
use serde::Deserialize;

use crate::device::{self, DTypeChoice, DeviceChoice, Precision};
use crate::error::{Error, Result};
use crate::hub::{HubOptions, ModelRepo};
use crate::models::{self, ModelConfig, Quantization, WeightCache, Weights};
use crate::tokenize::{Batching, Encoding, Side, TextEncoder};

/// The config.json fields of a classification head: labels and problem type.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct HeadConfig {
    id2label: Option<BTreeMap<String, String>>,
    num_labels: Option<usize>,
    problem_type: Option<String>,
}

impl HeadConfig {
    /// Labels by id, as transformers names them (`LABEL_i` where id2label is silent).
    pub(crate) fn labels(&self, config: &ModelConfig) -> Result<Vec<String>> {
        let mut by_id = BTreeMap::new();
        for (id, label) in self.id2label.iter().flatten() {
            let id: usize = id.trim().parse().map_err(|_| {
                Error::config(&config.path, format!("id2label key `{id}` is not a number"))
            })?;
            by_id.insert(id, label.clone());
        }
        let count = by_id
            .keys()
            .next_back()
            .map(|&last| last + 1)
            .or(self.num_labels)
            .unwrap_or(2);
        Ok((0..count)
            .map(|id| by_id.remove(&id).unwrap_or_else(|| format!("LABEL_{id}")))
            .collect())
    }
}

/// How to find a model and where to run it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub hub: HubOptions,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub quantization: Quantization,
    /// Where packed weights are kept between runs (`models::WeightCache`); `None` packs
    /// them at every load.
    pub weight_cache: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            hub: HubOptions::from_env(),
            device: DeviceChoice::default(),
            dtype: DTypeChoice::default(),
            quantization: Quantization::default(),
            weight_cache: weight_cache_from_env(),
        }
    }
}

/// The packed weight cache's folder: `LLMX_WEIGHT_CACHE` (`off` for none), else
/// `$XDG_CACHE_HOME/llmx/packed`, else `~/.cache/llmx/packed`.
pub fn weight_cache_from_env() -> Option<PathBuf> {
    let set = |name| std::env::var_os(name).filter(|value| !value.is_empty());
    match set("LLMX_WEIGHT_CACHE") {
        Some(value) if value == "off" => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => set("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .map(|cache| cache.join("llmx").join("packed")),
    }
}

impl LoadOptions {
    fn placement(&self, precision: Precision) -> Result<(Device, DType)> {
        let device = device::select_device(self.device)?;
        let dtype = match (self.quantization, self.dtype) {
            (Quantization::None, choice) => device::select_dtype(choice, &device, precision),
            // The int8 kernels take and give f32.
            (Quantization::Q8, DTypeChoice::Auto | DTypeChoice::F32) => DType::F32,
            (Quantization::Q8, _) => {
                return Err(Error::Device(
                    "--quantize q8 computes in f32; drop --dtype or pass --dtype f32".into(),
                ))
            }
        };
        Ok((device, dtype))
    }

    /// Builds a model with `build` from the checkpoint's weights, through the packed weight
    /// cache when its layers are packed for the CPU kernels.
    fn load_weights<M>(
        &self,
        repo: &ModelRepo,
        (device, dtype): (&Device, DType),
        build: impl FnOnce(Weights<'static>) -> Result<M>,
    ) -> Result<M> {
        let files = repo.weights()?;
        let cache = self.weight_cache.as_deref().and_then(|dir| {
            let layout = models::packed_layout(self.quantization, dtype, device)?;
            WeightCache::open(dir, &files, layout)
        });
        let weights = models::mmap_weights(&files, dtype, device, cache)?;
        let model = build(weights.clone())?;
        weights.finish();
        Ok(model)
    }
}

/// The tokenizer of a BERT-family checkpoint, cutting inputs at the model window, the
/// tokenizer's own limit and `limit` (e.g. sentence-transformers' max_seq_length), whichever
/// is smallest. The file is found now (fetched, on the hub) and parsed by the returned
/// closure, for `beside_weights`.
fn encoder_text(
    repo: &crate::hub::ModelRepo,
    encoder_config: &crate::models::EncoderConfig,
    limit: Option<usize>,
) -> Result<impl FnOnce() -> Result<TextEncoder> + Send> {
    let window = [tokenizer_max_length(repo)?, limit]
        .into_iter()
        .flatten()
        .fold(encoder_config.window(), usize::min);
    let path = repo.required(crate::hub::TOKENIZER)?;
    let pad_id = encoder_config.pad_id;
    Ok(move || TextEncoder::load(&path, window, Some(pad_id), Side::Right))
}

/// Parses the tokenizer on a thread of its own while `load_weights` runs on this one.
/// Parsing tokenizer.json (vocabularies and merges of 30-50k entries) is serial work: ~80
/// ms of GPT-2's ~400 ms load. Its file is found before, so a missing tokenizer still fails
/// before any weights are fetched.
fn beside_weights<M>(
    parse_tokenizer: impl FnOnce() -> Result<TextEncoder> + Send,
    load_weights: impl FnOnce() -> Result<M>,
) -> Result<(TextEncoder, M)> {
    std::thread::scope(|scope| {
        let text = scope.spawn(parse_tokenizer);
        let model = load_weights();
        let text = text
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok((text, model?))
    })
}

/// Runs `forward` over the inputs that tokenized, in length-bucketed batches, and pairs
/// every input with its result; an input that failed to tokenize keeps its error.
fn run_encoded<T>(
    encoded: Vec<Result<Encoding>>,
    batching: &Batching,
    forward: impl FnMut(&[&Encoding]) -> Result<Vec<T>>,
) -> Result<Vec<Result<(Encoding, T)>>> {
    let ok: Vec<&Encoding> = encoded.iter().filter_map(|e| e.as_ref().ok()).collect();
    let mut results = batching.run(&ok, forward)?.into_iter();
    Ok(encoded
        .into_iter()
        .map(|encoding| {
            let encoding = encoding?;
            let result = results
                .next()
                .ok_or_else(|| Error::Encode("a batch returned too few results".into()))?;
            Ok((encoding, result))
        })
        .collect())
}

/// The tokenizer's own `model_max_length`, when tokenizer_config.json gives a real one
/// (transformers writes 1e30 for "no limit").
fn tokenizer_max_length(repo: &crate::hub::ModelRepo) -> Result<Option<usize>> {
    let Some(path) = repo.optional("tokenizer_config.json")? else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| crate::Error::Json {
            path: path.clone(),
            source,
        })?;
    Ok(json
        .get("model_max_length")
        .and_then(serde_json::Value::as_f64)
        .filter(|n| (1.0..1e9).contains(n))
        .map(|n| n as usize))
}

/// A special token's text (e.g. `mask_token`) from special_tokens_map.json or
/// tokenizer_config.json, where it is a string or an `{"content": ...}` object.
fn special_token(repo: &crate::hub::ModelRepo, name: &str) -> Result<Option<String>> {
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let Some(path) = repo.optional(file)? else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| crate::Error::Json {
                path: path.clone(),
                source,
            })?;
        let token = match json.get(name) {
            Some(serde_json::Value::String(token)) => Some(token.clone()),
            Some(value) => value
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            None => None,
        };
        if token.is_some() {
            return Ok(token);
        }
    }
    Ok(None)
}
