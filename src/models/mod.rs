//! Model architectures and the one registry that maps a checkpoint's config.json to them.
//!
//! The registry is consulted before any weights are read, so a checkpoint that cannot do the
//! requested task is rejected with a pointer to the command that can.

mod attention;
mod bert;
mod distilbert;
mod encoder;
pub(crate) mod fast_math;
pub mod gpt2;
mod heads;
#[cfg(target_arch = "x86_64")]
mod int8;
pub mod kv_cache;
mod layers;
#[cfg(target_arch = "x86_64")]
mod packed_f32;
pub mod t5;
mod weight_cache;
mod weights;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use encoder::{Encoder, EncoderConfig, Positions};
pub use heads::{MaskedLm, SequenceClassifier, TokenClassifier};
pub use layers::{fast_int8, packed_layout, Quantization};
pub use weight_cache::WeightCache;
pub use weights::{mmap_weights, Weights};

use crate::error::{Error, Result};

/// The command-line tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Classify,
    Generate,
    Text2Text,
    Embed,
    FillMask,
    Ner,
    Qa,
}

impl Task {
    pub fn command(self) -> &'static str {
        match self {
            Task::Classify => "classify",
            Task::Generate => "generate",
            Task::Text2Text => "text2text",
            Task::Embed => "embed",
            Task::FillMask => "fill-mask",
            Task::Ner => "ner",
            Task::Qa => "qa",
        }
    }

    /// The task a transformers class name implies, by its conventional suffix.
    fn from_architecture(architecture: &str) -> Option<Task> {
        const SUFFIXES: [(&str, Task); 8] = [
            ("ForSequenceClassification", Task::Classify),
            ("ForTokenClassification", Task::Ner),
            ("ForQuestionAnswering", Task::Qa),
            ("ForMaskedLM", Task::FillMask),
            ("ForConditionalGeneration", Task::Text2Text),
            ("ForCausalLM", Task::Generate),
            ("LMHeadModel", Task::Generate),
            ("Model", Task::Embed),
        ];
        SUFFIXES
            .iter()
            .find(|(suffix, _)| architecture.ends_with(suffix))
            .map(|&(_, task)| task)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.command())
    }
}

/// Architecture families: one implementation each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    Roberta,
    DistilBert,
    Gpt2,
    T5,
}

struct Entry {
    architecture: &'static str,
    family: Family,
    task: Task,
}

const REGISTRY: &[Entry] = &[
    Entry {
        architecture: "BertForSequenceClassification",
        family: Family::Bert,
        task: Task::Classify,
    },
    Entry {
        architecture: "DistilBertForSequenceClassification",
        family: Family::DistilBert,
        task: Task::Classify,
    },
    Entry {
        architecture: "RobertaForSequenceClassification",
        family: Family::Roberta,
        task: Task::Classify,
    },
    Entry {
        architecture: "BertForMaskedLM",
        family: Family::Bert,
        task: Task::FillMask,
    },
    Entry {
        architecture: "BertForTokenClassification",
        family: Family::Bert,
        task: Task::Ner,
    },
    Entry {
        architecture: "BertForQuestionAnswering",
        family: Family::Bert,
        task: Task::Qa,
    },
    Entry {
        architecture: "DistilBertForMaskedLM",
        family: Family::DistilBert,
        task: Task::FillMask,
    },
    Entry {
        architecture: "DistilBertForTokenClassification",
        family: Family::DistilBert,
        task: Task::Ner,
    },
    Entry {
        architecture: "DistilBertForQuestionAnswering",
        family: Family::DistilBert,
        task: Task::Qa,
    },
    Entry {
        architecture: "RobertaForMaskedLM",
        family: Family::Roberta,
        task: Task::FillMask,
    },
    Entry {
        architecture: "RobertaForTokenClassification",
        family: Family::Roberta,
        task: Task::Ner,
    },
    Entry {
        architecture: "RobertaForQuestionAnswering",
        family: Family::Roberta,
        task: Task::Qa,
    },
    Entry {
        architecture: "GPT2LMHeadModel",
        family: Family::Gpt2,
        task: Task::Generate,
    },
    Entry {
        architecture: "T5ForConditionalGeneration",
        family: Family::T5,
        task: Task::Text2Text,
    },
];

/// A parsed config.json and what the registry says about it.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub path: PathBuf,
    pub architecture: String,
    pub family: Family,
    pub task: Task,
    pub json: serde_json::Value,
}

impl ModelConfig {
    /// Reads config.json and finds a registered architecture for `task`.
    pub fn load(path: &Path, task: Task) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let architectures: Vec<String> = json
            .get("architectures")
            .and_then(|value| serde_json::from_value(value.clone()).ok())
            .unwrap_or_default();
        let model_type = json.get("model_type").and_then(|v| v.as_str());
        // Like transformers' AutoModel, any checkpoint of an encoder family has its encoder.
        if let (Task::Embed, Some(family)) = (task, model_type.and_then(encoder_family)) {
            return Ok(ModelConfig {
                path: path.to_path_buf(),
                architecture: architectures.first().cloned().unwrap_or_default(),
                family,
                task,
                json,
            });
        }
        if let Some(entry) = REGISTRY
            .iter()
            .find(|e| e.task == task && architectures.iter().any(|a| a == e.architecture))
        {
            return Ok(ModelConfig {
                path: path.to_path_buf(),
                architecture: entry.architecture.to_string(),
                family: entry.family,
                task,
                json,
            });
        }
        let architecture = architectures
            .first()
            .cloned()
            .or_else(|| model_type.map(|t| format!("model of type `{t}`")))
            .unwrap_or_else(|| "model with no `architectures` or `model_type`".to_string());
        Err(mismatch(&architecture, &architectures, task))
    }

    /// Deserializes the architecture-specific fields, with transformers' defaults.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.json.clone())
            .map_err(|e| Error::config(&self.path, format!("malformed config: {e}")))
    }
}

/// The encoder shape of a BERT-family checkpoint.
pub fn encoder_config(config: &ModelConfig) -> Result<EncoderConfig> {
    match config.family {
        Family::Bert | Family::Roberta => bert::encoder_config(config),
        Family::DistilBert => distilbert::encoder_config(config),
        Family::Gpt2 | Family::T5 => Err(Error::config(&config.path, "not a BERT-family encoder")),
    }
}

/// The bare encoder of a BERT-family checkpoint, whether its weights sit under the family's
/// prefix (a checkpoint with a head) or at the top (a base model).
pub fn load_encoder(
    config: &ModelConfig,
    encoder_config: &EncoderConfig,
    vb: Weights,
    quantization: Quantization,
) -> Result<Encoder> {
    let (prefix, weights) = match config.family {
        Family::Bert => ("bert", &bert::WEIGHTS),
        Family::Roberta => ("roberta", &bert::WEIGHTS),
        Family::DistilBert => ("distilbert", &distilbert::WEIGHTS),
        Family::Gpt2 | Family::T5 => {
            return Err(Error::config(&config.path, "not a BERT-family encoder"))
        }
    };
    let probe = format!("{prefix}.{}.word_embeddings.weight", weights.embeddings);
    let vb = if vb.contains_tensor(&probe) {
        vb.pp(prefix)
    } else {
        vb
    };
    encoder::Encoder::load(vb, encoder_config, weights, quantization).map_err(Error::WeightLayout)
}

/// An encoder with a masked-LM head (`*ForMaskedLM`).
pub fn load_masked_lm(
    config: &ModelConfig,
    encoder_config: &EncoderConfig,
    vb: Weights,
    quantization: Quantization,
) -> Result<MaskedLm> {
    let (names, activation) = match config.family {
        Family::Bert => (&bert::BERT_MLM, encoder_config.activation),
        // RobertaLMHead applies the exact GELU whatever hidden_act says.
        Family::Roberta => (&bert::ROBERTA_MLM, layers::Activation::Gelu),
        Family::DistilBert => (&distilbert::MLM, encoder_config.activation),
        Family::Gpt2 | Family::T5 => return Err(Error::config(&config.path, "no masked-LM head")),
    };
    let encoder = load_encoder(config, encoder_config, vb.clone(), quantization)?;
    MaskedLm::new(
        encoder,
        vb,
        names,
        encoder_config,
        activation,
        encoder_config.layer_norm_eps,
        quantization,
    )
    .map_err(Error::WeightLayout)
}

/// An encoder with a per-token projection named `head` (`classifier` for token
/// classification, `qa_outputs` for question answering) of `outputs` values.
pub fn load_token_head(
    config: &ModelConfig,
    encoder_config: &EncoderConfig,
    vb: Weights,
    head: &str,
    outputs: usize,
    quantization: Quantization,
) -> Result<TokenClassifier> {
    let encoder = load_encoder(config, encoder_config, vb.clone(), quantization)?;
    TokenClassifier::new(
        encoder,
        vb.pp(head),
        encoder_config.hidden_size,
        outputs,
        quantization,
    )
    .map_err(Error::WeightLayout)
}

/// Builds a sequence classifier for a registered `*ForSequenceClassification` checkpoint.
pub fn load_sequence_classifier(
    config: &ModelConfig,
    encoder_config: &EncoderConfig,
    num_labels: usize,
    vb: Weights,
    quantization: Quantization,
) -> Result<SequenceClassifier> {
    let (prefix, weights, head) = match config.family {
        Family::Bert => ("bert", &bert::WEIGHTS, &bert::BERT_CLASSIFIER),
        Family::Roberta => ("roberta", &bert::WEIGHTS, &bert::ROBERTA_CLASSIFIER),
        Family::DistilBert => ("distilbert", &distilbert::WEIGHTS, &distilbert::CLASSIFIER),
        Family::Gpt2 | Family::T5 => {
            return Err(Error::config(
                &config.path,
                "no sequence-classification head",
            ))
        }
    };
    let build = || {
        let encoder = encoder::Encoder::load(vb.pp(prefix), encoder_config, weights, quantization)?;
        SequenceClassifier::new(
            encoder,
            vb.clone(),
            head,
            encoder_config.hidden_size,
            num_labels,
            quantization,
        )
    };
    build().map_err(Error::WeightLayout)
}

/// The error for a checkpoint the registry has no entry for under `task`.
fn mismatch(architecture: &str, architectures: &[String], task: Task) -> Error {
    let registered = architectures
        .iter()
        .find_map(|a| REGISTRY.iter().find(|e| e.architecture == a))
        .map(|e| e.task);
    let other_task = registered.or_else(|| {
        architectures
            .iter()
            .find_map(|a| Task::from_architecture(a))
    });
    match other_task {
        Some(other) if other != task => Error::WrongTask {
            architecture: architecture.to_string(),
            wanted: task.command(),
            suggestion: if registered.is_some() {
                format!("; try `llmx {other}`")
            } else {
                format!(" (it is a {other} model, which llmx does not support yet)")
            },
        },
        _ => Error::UnsupportedArchitecture {
            architecture: architecture.to_string(),
            supported: supported_for(task),
        },
    }
}

/// The BERT-family encoders by `model_type`.
fn encoder_family(model_type: &str) -> Option<Family> {
    match model_type {
        "bert" => Some(Family::Bert),
        "roberta" => Some(Family::Roberta),
        "distilbert" => Some(Family::DistilBert),
        _ => None,
    }
}

fn supported_for(task: Task) -> String {
    if task == Task::Embed {
        return "for `llmx embed`: BERT, RoBERTa and DistilBERT checkpoints (model_type bert, \
                roberta, distilbert), with or without a task head"
            .to_string();
    }
    let names: Vec<&str> = REGISTRY
        .iter()
        .filter(|e| e.task == task)
        .map(|e| e.architecture)
        .collect();
    format!("for `llmx {task}`: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(json: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json).unwrap();
        file
    }

    #[test]
    fn finds_registered_classifiers() {
        let file = config_with(r#"{"architectures":["RobertaForSequenceClassification"]}"#);
        let config = ModelConfig::load(file.path(), Task::Classify).unwrap();
        assert_eq!(config.family, Family::Roberta);
    }

    #[test]
    fn a_generator_is_pointed_elsewhere() {
        let file = config_with(r#"{"architectures":["T5ForConditionalGeneration"]}"#);
        let err = ModelConfig::load(file.path(), Task::Classify).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("T5ForConditionalGeneration"), "{message}");
        assert!(message.contains("text2text"), "{message}");
    }

    #[test]
    fn a_base_model_has_no_classification_head() {
        let file = config_with(r#"{"architectures":["BertModel"],"model_type":"bert"}"#);
        let err = ModelConfig::load(file.path(), Task::Classify).unwrap_err();
        assert!(matches!(err, Error::WrongTask { .. }), "{err}");
    }

    #[test]
    fn an_unknown_architecture_lists_what_is_supported() {
        let file = config_with(r#"{"architectures":["MambaForSequenceClassification"]}"#);
        let message = ModelConfig::load(file.path(), Task::Classify)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("DistilBertForSequenceClassification"),
            "{message}"
        );
    }

    #[test]
    fn malformed_json_is_reported_with_its_path() {
        let file = config_with("{not json");
        let err = ModelConfig::load(file.path(), Task::Classify).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
    }
}
