//! BERT and RoBERTa: the same encoder; RoBERTa numbers positions after the padding id and
//! puts a two-layer head on its first token instead of BERT's pooler.

use serde::Deserialize;

use super::encoder::{EncoderConfig, Positions, WeightNames};
use super::heads::{HeadNames, MlmNames};
use super::layers::Activation;
use super::{Family, ModelConfig};
use crate::error::{Error, Result};

/// config.json of `model_type` bert or roberta, with transformers' defaults.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct BertConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: Activation,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
    pad_token_id: Option<u32>,
    position_embedding_type: String,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: None,
            position_embedding_type: "absolute".to_string(),
        }
    }
}

pub(super) fn encoder_config(config: &ModelConfig) -> Result<EncoderConfig> {
    let raw: BertConfig = config.parse()?;
    if raw.position_embedding_type != "absolute" {
        return Err(Error::config(
            &config.path,
            format!(
                "position_embedding_type `{}` is not supported; llmx supports `absolute`",
                raw.position_embedding_type
            ),
        ));
    }
    let positions = match config.family {
        Family::Roberta => Positions::AfterPadding {
            pad_id: raw.pad_token_id.unwrap_or(1),
        },
        _ => Positions::FromZero,
    };
    Ok(EncoderConfig {
        vocab_size: raw.vocab_size,
        hidden_size: raw.hidden_size,
        num_layers: raw.num_hidden_layers,
        num_heads: raw.num_attention_heads,
        intermediate_size: raw.intermediate_size,
        activation: raw.hidden_act,
        max_positions: raw.max_position_embeddings,
        type_vocab_size: raw.type_vocab_size,
        reads_token_types: config.family == Family::Bert,
        layer_norm_eps: raw.layer_norm_eps,
        pad_id: raw.pad_token_id.unwrap_or(match config.family {
            Family::Roberta => 1,
            _ => 0,
        }),
        positions,
    })
}

pub(super) const WEIGHTS: WeightNames = WeightNames {
    embeddings: "embeddings",
    embedding_norm: "LayerNorm",
    layers: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    ffn_norm: "output.LayerNorm",
};

/// BertForSequenceClassification: pooler (dense + tanh on [CLS]), then the classifier.
pub(super) const BERT_CLASSIFIER: HeadNames = HeadNames {
    dense: "bert.pooler.dense",
    activation: Activation::Tanh,
    out: "classifier",
};

/// RobertaForSequenceClassification: dense + tanh + out_proj on <s>; no pooler.
pub(super) const ROBERTA_CLASSIFIER: HeadNames = HeadNames {
    dense: "classifier.dense",
    activation: Activation::Tanh,
    out: "classifier.out_proj",
};

/// BertForMaskedLM's head: `cls.predictions`.
pub(super) const BERT_MLM: MlmNames = MlmNames {
    dense: "cls.predictions.transform.dense",
    norm: "cls.predictions.transform.LayerNorm",
    bias: "cls.predictions.bias",
    decoder: "cls.predictions.decoder",
};

/// RobertaForMaskedLM's head: `lm_head`, whose activation is always the exact GELU.
pub(super) const ROBERTA_MLM: MlmNames = MlmNames {
    dense: "lm_head.dense",
    norm: "lm_head.layer_norm",
    bias: "lm_head.bias",
    decoder: "lm_head.decoder",
};
