//! Generation settings, layered as transformers layers them: its defaults, then the
//! checkpoint (generation_config.json, or the generation keys of config.json), then the task's
//! `task_specific_params`, then command-line flags. Each layer is an [`Overrides`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// transformers' `early_stopping`: `true`, `false` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EarlyStopping {
    /// Stop as soon as `num_beams` hypotheses are done.
    True,
    /// Stop when no better hypothesis is likely (the heuristic).
    #[default]
    False,
    /// Stop only when no better hypothesis is possible.
    Never,
}

impl std::str::FromStr for EarlyStopping {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "true" => Ok(Self::True),
            "false" => Ok(Self::False),
            "never" => Ok(Self::Never),
            _ => Err(format!("`{s}` is not one of true, false, never")),
        }
    }
}

impl<'de> Deserialize<'de> for EarlyStopping {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Self::True),
            Raw::Bool(false) => Ok(Self::False),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The resolved settings for one generation run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationConfig {
    /// Total length limit: prompt included for decoder-only models, the start token included
    /// for encoder-decoders. `max_new_tokens` wins when set.
    pub max_length: usize,
    pub max_new_tokens: Option<usize>,
    pub min_length: usize,
    pub min_new_tokens: Option<usize>,
    pub do_sample: bool,
    pub temperature: f32,
    /// 0 turns top-k filtering off.
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    pub no_repeat_ngram_size: usize,
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
    pub seed: Option<u64>,
}

impl Default for GenerationConfig {
    /// transformers' `GenerationConfig()` defaults.
    fn default() -> Self {
        GenerationConfig {
            max_length: 20,
            max_new_tokens: None,
            min_length: 0,
            min_new_tokens: None,
            do_sample: false,
            temperature: 1.0,
            top_k: 50,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            bos_token_id: None,
            decoder_start_token_id: None,
            seed: None,
        }
    }
}

/// A token id or a list of them, as `eos_token_id` may be written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

/// One layer of settings: whatever it names replaces what the layers below said.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Overrides {
    pub max_length: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub min_length: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram_size: Option<usize>,
    pub num_beams: Option<usize>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<EarlyStopping>,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
    #[serde(skip)]
    pub seed: Option<u64>,
}

impl GenerationConfig {
    /// Sets what `layer` names, as transformers' `GenerationConfig.update` does. Setting
    /// `max_length` leaves `max_new_tokens`, which still wins when set.
    pub fn apply(&mut self, layer: Overrides) {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(value) = layer.$field {
                    self.$field = value;
                }
            )*};
        }
        set!(
            max_length,
            min_length,
            do_sample,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            no_repeat_ngram_size,
            num_beams,
            length_penalty,
            early_stopping
        );
        macro_rules! set_optional {
            ($($field:ident),*) => {$(
                if layer.$field.is_some() {
                    self.$field = layer.$field;
                }
            )*};
        }
        set_optional!(
            max_new_tokens,
            min_new_tokens,
            pad_token_id,
            bos_token_id,
            decoder_start_token_id,
            seed
        );
        if let Some(eos) = layer.eos_token_id {
            self.eos_token_ids = eos.into_vec();
        }
    }

    /// The settings a transformers pipeline would use for this checkpoint: the pipeline's
    /// own defaults (`pipeline`), where the checkpoint leaves a setting at transformers'
    /// global default; else the checkpoint's value (generation_config.json, or the generation
    /// keys of config.json); then `task_specific_params[task]` over both.
    pub fn for_checkpoint(
        generation_config: Option<&Path>,
        config: &serde_json::Value,
        config_path: &Path,
        task: Option<&str>,
        pipeline: Overrides,
    ) -> Result<Self> {
        let invalid = |e: serde_json::Error| {
            Error::config(
                generation_config.unwrap_or(config_path),
                format!("invalid generation settings: {e}"),
            )
        };
        let checkpoint_layer = match generation_config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: path.to_path_buf(),
                    source,
                })?
            }
            None => config.clone(),
        };
        let mut checkpoint = GenerationConfig::default();
        checkpoint.apply(serde_json::from_value(checkpoint_layer).map_err(invalid)?);

        let pipeline_max_new_tokens = pipeline.max_new_tokens;
        let mut settings = GenerationConfig::default();
        settings.apply(pipeline);
        settings.adopt_checkpoint_values(&checkpoint);
        // A checkpoint's own max_length beats the pipeline's default max_new_tokens.
        let global = GenerationConfig::default();
        if pipeline_max_new_tokens.is_some()
            && settings.max_new_tokens == pipeline_max_new_tokens
            && settings.max_length != global.max_length
        {
            settings.max_new_tokens = None;
        }
        if let Some(params) = task.and_then(|task| config.get("task_specific_params")?.get(task)) {
            settings.apply(serde_json::from_value(params.clone()).map_err(invalid)?);
        }
        Ok(settings)
    }

    /// Takes each checkpoint value that differs from transformers' global default, unless
    /// this config already changed that setting (transformers' `use_model_defaults`).
    fn adopt_checkpoint_values(&mut self, checkpoint: &GenerationConfig) {
        let global = GenerationConfig::default();
        macro_rules! adopt {
            ($($field:ident),*) => {$(
                if self.$field == global.$field && checkpoint.$field != global.$field {
                    self.$field = checkpoint.$field.clone();
                }
            )*};
        }
        adopt!(
            max_length,
            max_new_tokens,
            min_length,
            min_new_tokens,
            do_sample,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            no_repeat_ngram_size,
            num_beams,
            length_penalty,
            early_stopping,
            eos_token_ids,
            pad_token_id,
            bos_token_id,
            decoder_start_token_id,
            seed
        );
        if self.temperature == 0.0 {
            self.do_sample = false;
        }
    }

    /// How many new tokens a row may get after a `prompt_len`-token prompt; always at least
    /// one, as transformers always takes one step.
    pub fn new_token_limit(&self, prompt_len: usize) -> usize {
        self.max_new_tokens
            .unwrap_or_else(|| self.max_length.saturating_sub(prompt_len))
            .max(1)
    }

    /// How many new tokens must come before EOS is allowed.
    pub fn new_token_minimum(&self, prompt_len: usize) -> usize {
        let from_min_length = self.min_length.saturating_sub(prompt_len);
        self.min_new_tokens.unwrap_or(0).max(from_min_length)
    }

    /// Sampling with temperature 0 is greedy.
    pub fn samples(&self) -> bool {
        self.do_sample && self.temperature > 0.0
    }

    /// Rejects settings that cannot run, naming the flag.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            return Err(format!(
                "--temperature must be 0 or more, not {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p must be in (0, 1], not {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "--repetition-penalty must be more than 0, not {}",
                self.repetition_penalty
            ));
        }
        if self.num_beams == 0 {
            return Err("--num-beams must be at least 1".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let mut config = GenerationConfig::default();
        config.apply(
            serde_json::from_str(r#"{"max_new_tokens": 5, "eos_token_id": [1, 2]}"#).unwrap(),
        );
        assert_eq!(config.new_token_limit(3), 5);
        assert_eq!(config.eos_token_ids, [1, 2]);
        // A later max_length does not displace max_new_tokens, as in transformers.
        config.apply(
            serde_json::from_str(r#"{"max_length": 10, "early_stopping": "never"}"#).unwrap(),
        );
        assert_eq!(config.new_token_limit(3), 5);
        assert_eq!(config.early_stopping, EarlyStopping::Never);
    }

    #[test]
    fn task_params_apply_over_the_checkpoint() {
        let config = serde_json::json!({
            "eos_token_id": 50256,
            "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}}
        });
        let pipeline = Overrides {
            max_new_tokens: Some(256),
            do_sample: Some(true),
            temperature: Some(0.7),
            ..Overrides::default()
        };
        let settings = GenerationConfig::for_checkpoint(
            None,
            &config,
            Path::new("config.json"),
            Some("text-generation"),
            pipeline,
        )
        .unwrap();
        // As transformers' text-generation pipeline gives for gpt2: the task's max_length is
        // set, but the pipeline's max_new_tokens still wins.
        assert!(settings.do_sample);
        assert_eq!(settings.max_length, 50);
        assert_eq!(settings.new_token_limit(5), 256);
        assert_eq!(settings.temperature, 0.7);
        assert_eq!(settings.eos_token_ids, [50256]);
    }

    #[test]
    fn a_checkpoint_max_length_beats_the_pipeline_default() {
        let config = serde_json::json!({"max_length": 448});
        let pipeline = Overrides {
            max_new_tokens: Some(256),
            ..Overrides::default()
        };
        let settings = GenerationConfig::for_checkpoint(
            None,
            &config,
            Path::new("config.json"),
            None,
            pipeline,
        )
        .unwrap();
        assert_eq!(settings.new_token_limit(8), 440);
    }

    #[test]
    fn limits_count_like_transformers() {
        let config = GenerationConfig {
            max_length: 10,
            min_length: 6,
            ..Default::default()
        };
        assert_eq!(config.new_token_limit(4), 6);
        assert_eq!(config.new_token_limit(12), 1);
        assert_eq!(config.new_token_minimum(4), 2);
    }
}
