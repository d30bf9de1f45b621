//! DistilBERT: BERT's encoder under other weight names, with no token types.

use serde::Deserialize;

use super::encoder::{EncoderConfig, Positions, WeightNames};
use super::heads::{HeadNames, MlmNames};
use super::layers::Activation;
use super::ModelConfig;
use crate::error::Result;

/// config.json of `model_type` distilbert, with transformers' defaults.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct DistilBertConfig {
    vocab_size: usize,
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    hidden_dim: usize,
    activation: Activation,
    max_position_embeddings: usize,
    pad_token_id: Option<u32>,
}

impl Default for DistilBertConfig {
    fn default() -> Self {
        DistilBertConfig {
            vocab_size: 30522,
            dim: 768,
            n_layers: 6,
            n_heads: 12,
            hidden_dim: 3072,
            activation: Activation::Gelu,
            max_position_embeddings: 512,
            pad_token_id: None,
        }
    }
}

pub(super) fn encoder_config(config: &ModelConfig) -> Result<EncoderConfig> {
    let raw: DistilBertConfig = config.parse()?;
    Ok(EncoderConfig {
        vocab_size: raw.vocab_size,
        hidden_size: raw.dim,
        num_layers: raw.n_layers,
        num_heads: raw.n_heads,
        intermediate_size: raw.hidden_dim,
        activation: raw.activation,
        max_positions: raw.max_position_embeddings,
        type_vocab_size: 0,
        reads_token_types: false,
        // Fixed in transformers' DistilBERT, not read from the config.
        layer_norm_eps: 1e-12,
        pad_id: raw.pad_token_id.unwrap_or(0),
        positions: Positions::FromZero,
    })
}

pub(super) const WEIGHTS: WeightNames = WeightNames {
    embeddings: "embeddings",
    embedding_norm: "LayerNorm",
    layers: "transformer.layer",
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    ffn_norm: "output_layer_norm",
};

/// DistilBertForSequenceClassification: pre_classifier + ReLU on [CLS], then the classifier.
pub(super) const CLASSIFIER: HeadNames = HeadNames {
    dense: "pre_classifier",
    activation: Activation::Relu,
    out: "classifier",
};

/// DistilBertForMaskedLM's head.
pub(super) const MLM: MlmNames = MlmNames {
    dense: "vocab_transform",
    norm: "vocab_layer_norm",
    bias: "vocab_projector.bias",
    decoder: "vocab_projector",
};
