//! One module per task. Each loads what it needs through the shared pieces (hub, registry,
//! tokenizer, device) and runs the same pipeline: tokenize → forward → decode.

pub mod classify;
pub mod embed;
pub mod fill_mask;
pub mod generate;
pub mod text2text;

use candle_core::{DType, Device};

use crate::device::{self, DTypeChoice, DeviceChoice, Precision};
use crate::error::Result;
use crate::hub::HubOptions;

/// How to find a model and where to run it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub hub: HubOptions,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            hub: HubOptions::from_env(),
            device: DeviceChoice::default(),
            dtype: DTypeChoice::default(),
        }
    }
}

impl LoadOptions {
    fn placement(&self, precision: Precision) -> Result<(Device, DType)> {
        let device = device::select_device(self.device)?;
        let dtype = device::select_dtype(self.dtype, &device, precision);
        Ok((device, dtype))
    }
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
