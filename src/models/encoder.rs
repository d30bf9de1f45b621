//! The post-LayerNorm transformer encoder shared by BERT, RoBERTa and DistilBERT. They differ
//! only in weight names, position ids and token types, which the callers describe.
//!
//! Written here rather than taken from candle-transformers: its BERT and DistilBERT take
//! opposite mask conventions, and its BERT cannot do RoBERTa's position ids.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Embedding, LayerNorm};

use super::Weights;

use super::attention::{attention, packed_self_attention, split_heads, PackedRows};
use super::layers::{self, Activation, Linear, Quantization};
use crate::tokenize::Batch;

/// The shape of an encoder, whatever its config.json calls each field.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub activation: Activation,
    pub max_positions: usize,
    /// 0 when the model has no token-type embeddings.
    pub type_vocab_size: usize,
    /// The model reads token-type ids (BERT); RoBERTa has the table but always uses row 0.
    pub reads_token_types: bool,
    pub layer_norm_eps: f64,
    /// The padding token id, used to pad batches.
    pub pad_id: u32,
    pub positions: Positions,
}

/// How position ids are numbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, ... (BERT, DistilBERT).
    FromZero,
    /// Real tokens count up from `pad_id + 1` and padding sits at `pad_id` (RoBERTa).
    AfterPadding { pad_id: u32 },
}

impl EncoderConfig {
    /// The most tokens one input may have.
    pub fn window(&self) -> usize {
        match self.positions {
            Positions::FromZero => self.max_positions,
            Positions::AfterPadding { pad_id } => {
                self.max_positions.saturating_sub(pad_id as usize + 1)
            }
        }
    }
}

/// Where each weight lives, relative to the encoder's prefix.
pub struct WeightNames {
    pub embeddings: &'static str,
    pub embedding_norm: &'static str,
    pub layers: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_out: &'static str,
    pub attention_norm: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub ffn_norm: &'static str,
}

struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Option<Embedding>,
    reads_token_types: bool,
    norm: LayerNorm,
    numbering: Positions,
}

impl Embeddings {
    fn load(vb: Weights, cfg: &EncoderConfig, names: &WeightNames) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let token_types = (cfg.type_vocab_size > 0)
            .then(|| layers::embedding(cfg.type_vocab_size, hidden, vb.pp("token_type_embeddings")))
            .transpose()?;
        Ok(Embeddings {
            words: layers::embedding(cfg.vocab_size, hidden, vb.pp("word_embeddings"))?,
            positions: layers::embedding(cfg.max_positions, hidden, vb.pp("position_embeddings"))?,
            token_types,
            reads_token_types: cfg.reads_token_types,
            norm: layers::layer_norm(hidden, cfg.layer_norm_eps, vb.pp(names.embedding_norm))?,
            numbering: cfg.positions,
        })
    }

    fn forward(&self, batch: &Batch) -> Result<Tensor> {
        let ids = &batch.input_ids;
        let (rows, seq) = ids.dims2()?;
        let position_ids = match self.numbering {
            Positions::FromZero => Tensor::arange(0u32, seq as u32, ids.device())?
                .unsqueeze(0)?
                .broadcast_as((rows, seq))?
                .contiguous()?,
            Positions::AfterPadding { pad_id } => {
                // transformers counts non-pad tokens (by id, not by mask) from pad_id + 1.
                let real = ids.ne(pad_id)?.to_dtype(DType::F32)?;
                let counted = (real.cumsum(D::Minus1)? * &real)?;
                (counted + f64::from(pad_id))?.to_dtype(DType::U32)?
            }
        };
        let mut hidden = self
            .words
            .forward(ids)?
            .add(&self.positions.forward(&position_ids)?)?;
        if let Some(token_types) = &self.token_types {
            let ids = if self.reads_token_types {
                batch.token_type_ids.clone()
            } else {
                batch.token_type_ids.zeros_like()?
            };
            hidden = hidden.add(&token_types.forward(&ids)?)?;
        }
        self.norm.forward(&hidden)
    }
}

struct SelfAttention {
    qkv: Linear,
    out: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// Attention for every position, or for the first only (`first_only`); keys and values
    /// always cover every position.
    fn forward(&self, hidden: &Tensor, rows: &Rows, first_only: bool) -> Result<Tensor> {
        let qkv = self.qkv.forward(hidden)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let context = match rows {
            Rows::Padded { bias } => {
                let [mut query, keys, values] = split_heads(&qkv, self.num_heads, self.head_dim)?;
                if first_only {
                    query = query.narrow(2, 0, 1)?;
                }
                attention(&query, &keys, &values, bias, scale)?
            }
            Rows::Packed(packed) => packed_self_attention(
                &qkv,
                &packed.spans,
                self.num_heads,
                self.head_dim,
                scale as f32,
                first_only,
            )?,
        };
        self.out.forward(&context)
    }
}

struct Layer {
    attention: SelfAttention,
    attention_norm: LayerNorm,
    ffn_in: Linear,
    activation: Activation,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
}

impl Layer {
    fn load(
        vb: Weights,
        cfg: &EncoderConfig,
        names: &WeightNames,
        quantization: Quantization,
    ) -> Result<Self> {
        let (hidden, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let linear =
            |in_dim, out_dim, name| layers::linear(in_dim, out_dim, vb.pp(name), quantization);
        let qkv = layers::fused_linear(
            hidden,
            &[hidden; 3],
            &[vb.pp(names.query), vb.pp(names.key), vb.pp(names.value)],
            true,
            quantization,
        )?;
        Ok(Layer {
            attention: SelfAttention {
                qkv,
                out: linear(hidden, hidden, names.attention_out)?,
                num_heads: cfg.num_heads,
                head_dim: hidden / cfg.num_heads,
            },
            attention_norm: layers::layer_norm(hidden, eps, vb.pp(names.attention_norm))?,
            ffn_in: linear(hidden, cfg.intermediate_size, names.ffn_in)?,
            activation: cfg.activation,
            ffn_out: linear(cfg.intermediate_size, hidden, names.ffn_out)?,
            ffn_norm: layers::layer_norm(hidden, eps, vb.pp(names.ffn_norm))?,
        })
    }

    /// Hidden states laid out as `rows` says → the same, or the first position of each
    /// input only (`first_only`), which is all a first-token head reads.
    fn forward(&self, hidden: &Tensor, rows: &Rows, first_only: bool) -> Result<Tensor> {
        let attended = self.attention.forward(hidden, rows, first_only)?;
        let residual = if first_only {
            rows.first_positions(hidden)?
        } else {
            hidden.clone()
        };
        let hidden = self.attention_norm.forward(&(attended + residual)?)?;
        let inner = self.activation.forward(&self.ffn_in.forward(&hidden)?)?;
        self.ffn_norm
            .forward(&(self.ffn_out.forward(&inner)? + hidden)?)
    }
}

pub struct Encoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl Encoder {
    /// Loads from `vb` rooted at the encoder's prefix (e.g. `bert`, `distilbert`).
    pub fn load(
        vb: Weights,
        cfg: &EncoderConfig,
        names: &WeightNames,
        quantization: Quantization,
    ) -> Result<Self> {
        if cfg.num_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            candle_core::bail!(
                "hidden size {} is not divisible by {} attention heads",
                cfg.hidden_size,
                cfg.num_heads
            );
        }
        let layers_vb = vb.pp(names.layers);
        Ok(Encoder {
            embeddings: Embeddings::load(vb.pp(names.embeddings), cfg, names)?,
            layers: (0..cfg.num_layers)
                .map(|i| Layer::load(layers_vb.pp(i), cfg, names, quantization))
                .collect::<Result<_>>()?,
        })
    }

    /// The word embedding table `(vocab, hidden)`, which masked-LM heads are tied to.
    pub fn word_embeddings(&self) -> &Tensor {
        self.embeddings.words.embeddings()
    }

    /// The last hidden states, `(batch, seq, hidden)`.
    pub fn forward(&self, batch: &Batch) -> Result<Tensor> {
        self.run(batch, false)
    }

    /// The last hidden state of the first position, `(batch, 1, hidden)`. The last layer
    /// computes nothing else past its keys and values: an eighth less work for a
    /// six-layer classifier.
    pub fn forward_first_token(&self, batch: &Batch) -> Result<Tensor> {
        self.run(batch, true)
    }

    fn run(&self, batch: &Batch, first_only: bool) -> Result<Tensor> {
        let hidden = self.embeddings.forward(batch)?;
        let rows = Rows::for_batch(batch, &hidden)?;
        let mut hidden = rows.pack(hidden)?;
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(&hidden, &rows, first_only && index == last)?;
        }
        if first_only && self.layers.is_empty() {
            hidden = rows.first_positions(&hidden)?;
        }
        rows.unpack(hidden, batch, first_only)
    }
}

/// How the layers hold a batch's hidden states, and so which keys each query may see.
enum Rows {
    /// `(batch, seq, hidden)` with padding, which the additive attention `bias` masks.
    Padded { bias: Tensor },
    /// The real tokens back to back (CPU f32).
    Packed(PackedRows),
}

impl Rows {
    fn for_batch(batch: &Batch, hidden: &Tensor) -> Result<Rows> {
        Ok(match PackedRows::new(&batch.attention_mask, hidden)? {
            Some(packed) => Rows::Packed(packed),
            None => Rows::Padded {
                bias: layers::attention_bias(&batch.attention_mask, hidden.dtype())?,
            },
        })
    }

    /// The embeddings `(batch, seq, hidden)` as the layers hold them.
    fn pack(&self, hidden: Tensor) -> Result<Tensor> {
        match self {
            Rows::Padded { .. } => Ok(hidden),
            Rows::Packed(packed) => packed.pack(&hidden),
        }
    }

    /// The first position of every input.
    fn first_positions(&self, hidden: &Tensor) -> Result<Tensor> {
        match self {
            Rows::Padded { .. } => hidden.narrow(1, 0, 1),
            Rows::Packed(packed) => packed.first_positions(hidden),
        }
    }

    /// The layers' output as `(batch, seq, hidden)`, padding zeroed, or `(batch, 1, hidden)`
    /// for the first positions (`first_only`).
    fn unpack(&self, hidden: Tensor, batch: &Batch, first_only: bool) -> Result<Tensor> {
        let Rows::Packed(packed) = self else {
            return Ok(hidden);
        };
        let (rows, seq) = batch.attention_mask.dims2()?;
        if first_only {
            return hidden.reshape((rows, 1, hidden.dim(1)?));
        }
        packed.unpack(&hidden, (rows, seq))
    }
}
