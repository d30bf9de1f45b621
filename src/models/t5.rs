//! T5 encoder-decoders: T5 v1.0 (t5-small/base: ReLU, tied head scaled by d_model^-0.5) and
//! v1.1 / flan-t5 (gated GELU, separate head).
//!
//! Written here rather than taken from candle-transformers: its T5 encoder takes no padding
//! mask and its decoder hides a cache that grows by concatenation and cannot be reordered, so
//! neither padded batches nor beam search would work.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Embedding;

use super::Weights;
use serde::Deserialize;

use super::attention::{
    attention, keys_by_dimension, packed_biased_attention, split_heads, PackedRows,
};
use super::kv_cache::KvCache;
use super::layers::{self, Activation, Linear, Quantization, WordEmbeddings};

/// config.json of `model_type` t5, with transformers' defaults for what it omits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    pub tie_word_embeddings: bool,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: Option<u32>,
}

impl Default for T5Config {
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".to_string(),
            tie_word_embeddings: true,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: None,
        }
    }
}

impl T5Config {
    /// `relu`, `gated-gelu`, `gated-silu`, ...: transformers' `feed_forward_proj`. A gated
    /// `gelu` is the tanh approximation, as transformers maps it to `gelu_new`.
    fn feed_forward(&self) -> std::result::Result<(Activation, bool), String> {
        let (gated, name) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(name) => (true, name),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let name = if gated && name == "gelu" {
            "gelu_new"
        } else {
            name
        };
        let activation = serde_json::from_value(serde_json::Value::String(name.to_string()))
            .map_err(|_| {
                format!(
                    "feed_forward_proj `{}` is not supported",
                    self.feed_forward_proj
                )
            })?;
        Ok((activation, gated))
    }

    /// The token the decoder starts from (the padding token for T5).
    pub fn decoder_start(&self) -> u32 {
        self.decoder_start_token_id.unwrap_or(self.pad_token_id)
    }
}

/// Which way relative positions are bucketed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The encoder: keys before and after the query.
    Both,
    /// The decoder: keys up to the query only.
    Past,
}

/// T5's relative position bucket for `key - query`, computed in f32 as transformers does so
/// that bucket boundaries agree.
fn bucket(relative: i64, direction: Direction, num_buckets: usize, max_distance: usize) -> u32 {
    let (mut buckets, mut base) = (num_buckets as i64, 0i64);
    let distance = match direction {
        Direction::Both => {
            buckets /= 2;
            if relative > 0 {
                base = buckets;
            }
            relative.abs()
        }
        Direction::Past => (-relative).max(0),
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return (base + distance) as u32;
    }
    let ratio = (distance as f32 / max_exact as f32).ln();
    let span = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (ratio / span * (buckets - max_exact) as f32) as i64;
    (base + large.min(buckets - 1)) as u32
}

/// The learned relative position bias of a stack's first layer, shared by all its layers.
struct PositionBias {
    embedding: Embedding,
    direction: Direction,
    num_buckets: usize,
    max_distance: usize,
}

impl PositionBias {
    /// `(1, heads, queries, keys)` for queries at `offset..offset + queries`.
    fn forward(
        &self,
        queries: usize,
        keys: usize,
        offset: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..queries)
            .flat_map(|q| {
                (0..keys).map(move |k| {
                    let relative = k as i64 - (q + offset) as i64;
                    bucket(
                        relative,
                        self.direction,
                        self.num_buckets,
                        self.max_distance,
                    )
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (queries, keys), device)?;
        self.embedding
            .forward(&buckets)?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

struct Attention {
    q: Linear,
    /// Keys and values fused: one product over the input they are computed from.
    kv: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

impl Attention {
    fn load(vb: Weights, cfg: &T5Config, quantization: Quantization) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let linear = |in_dim, out_dim, name| {
            layers::linear_no_bias(in_dim, out_dim, vb.pp(name), quantization)
        };
        Ok(Attention {
            q: linear(cfg.d_model, inner, "q")?,
            kv: layers::fused_linear(
                cfg.d_model,
                &[inner; 2],
                &[vb.pp("k"), vb.pp("v")],
                false,
                quantization,
            )?,
            o: linear(inner, cfg.d_model, "o")?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// Keys and values `(batch, heads, seq, d_kv)` of `xs`, as views of one product.
    fn keys_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let [keys, values] = split_heads(&self.kv.forward(xs)?, self.heads, self.d_kv)?;
        Ok((keys, values))
    }

    /// Attention of `xs` over `keys`/`values` with an additive `bias`; T5 does not scale
    /// the scores.
    fn attend(&self, xs: &Tensor, keys: &Tensor, values: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.attend_in_groups(xs, &[(xs.dim(0)?, (keys, values), bias)])
    }

    /// Self-attention of packed rows `xs` (`PackedRows`): each input over its own keys,
    /// with T5's `position_bias` `(1, heads, seq, seq)`.
    fn attend_packed(
        &self,
        xs: &Tensor,
        rows: &PackedRows,
        position_bias: &Tensor,
    ) -> Result<Tensor> {
        let context = packed_biased_attention(
            &self.q.forward(xs)?,
            &self.kv.forward(xs)?,
            &rows.spans,
            (self.heads, self.d_kv),
            position_bias,
        )?;
        self.o.forward(&context)
    }

    /// Attention of consecutive blocks of rows of `xs`, each over its own keys, values and
    /// bias `(rows, (keys, values), bias)`: one product per projection for all rows.
    fn attend_in_groups(
        &self,
        xs: &Tensor,
        groups: &[(usize, (&Tensor, &Tensor), &Tensor)],
    ) -> Result<Tensor> {
        let [query] = split_heads(&self.q.forward(xs)?, self.heads, self.d_kv)?;
        let mut start = 0;
        let mut contexts = Vec::with_capacity(groups.len());
        for &(rows, (keys, values), bias) in groups {
            let query = query.narrow(0, start, rows)?;
            contexts.push(attention(&query, keys, values, bias, 1.0)?);
            start += rows;
        }
        self.o.forward(&Tensor::cat(&contexts, 0)?)
    }
}

/// T5's LayerNorm: RMS only, no mean and no bias, computed in f32.
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn load(vb: Weights, cfg: &T5Config) -> Result<Self> {
        Ok(RmsNorm {
            weight: vb.get(cfg.d_model, "weight")?,
            eps: cfg.layer_norm_epsilon as f32,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let normed = candle_nn::ops::rms_norm(
            &xs.to_dtype(DType::F32)?,
            &self.weight.to_dtype(DType::F32)?,
            self.eps,
        )?;
        normed.to_dtype(dtype)
    }
}

struct FeedForward {
    wi: Linear,
    /// The gate's second input projection (gated variants only).
    wi_gate: Option<Linear>,
    wo: Linear,
    activation: Activation,
    norm: RmsNorm,
}

impl FeedForward {
    fn load(vb: Weights, cfg: &T5Config, quantization: Quantization) -> Result<Self> {
        let (activation, gated) = cfg.feed_forward().map_err(candle_core::Error::msg)?;
        let dense = vb.pp("DenseReluDense");
        let linear = |in_dim, out_dim, name| {
            layers::linear_no_bias(in_dim, out_dim, dense.pp(name), quantization)
        };
        let (wi, wi_gate) = if gated {
            (
                linear(cfg.d_model, cfg.d_ff, "wi_0")?,
                Some(linear(cfg.d_model, cfg.d_ff, "wi_1")?),
            )
        } else {
            (linear(cfg.d_model, cfg.d_ff, "wi")?, None)
        };
        Ok(FeedForward {
            wi,
            wi_gate,
            wo: linear(cfg.d_ff, cfg.d_model, "wo")?,
            activation,
            norm: RmsNorm::load(vb.pp("layer_norm"), cfg)?,
        })
    }

    /// The residual block: `xs + FF(norm(xs))`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let normed = self.norm.forward(xs)?;
        let mut hidden = self.activation.forward(&self.wi.forward(&normed)?)?;
        if let Some(gate) = &self.wi_gate {
            hidden = (hidden * gate.forward(&normed)?)?;
        }
        xs + self.wo.forward(&hidden)?
    }
}

struct EncoderBlock {
    attention: Attention,
    attention_norm: RmsNorm,
    feed_forward: FeedForward,
}

struct DecoderBlock {
    self_attention: Attention,
    self_norm: RmsNorm,
    cross_attention: Attention,
    cross_norm: RmsNorm,
    feed_forward: FeedForward,
}

pub struct T5 {
    /// The shared embeddings and the head (tied to them in v1.0, `lm_head.weight` in v1.1).
    words: WordEmbeddings,
    encoder: Vec<EncoderBlock>,
    encoder_bias: PositionBias,
    encoder_norm: RmsNorm,
    decoder: Vec<DecoderBlock>,
    decoder_bias: PositionBias,
    decoder_norm: RmsNorm,
    /// v1.0's tied head sees the decoder output scaled by d_model^-0.5.
    head_scale: f64,
    config: T5Config,
}

impl T5 {
    pub fn load(vb: Weights, cfg: &T5Config, quantization: Quantization) -> Result<Self> {
        cfg.feed_forward().map_err(candle_core::Error::msg)?;
        // First, while little else is loaded: packing holds the table twice for a moment.
        let (head, head_scale) = if cfg.tie_word_embeddings {
            (None, (cfg.d_model as f64).powf(-0.5))
        } else {
            (Some("lm_head.weight"), 1.0)
        };
        let vocab = (cfg.vocab_size, cfg.d_model);
        let words = WordEmbeddings::load(&vb, "shared.weight", head, vocab, quantization)?;
        let bias = |stack: &str, direction| -> Result<PositionBias> {
            Ok(PositionBias {
                embedding: layers::embedding(
                    cfg.relative_attention_num_buckets,
                    cfg.num_heads,
                    vb.pp(stack)
                        .pp("block.0.layer.0.SelfAttention.relative_attention_bias"),
                )?,
                direction,
                num_buckets: cfg.relative_attention_num_buckets,
                max_distance: cfg.relative_attention_max_distance,
            })
        };
        let encoder = (0..cfg.num_layers)
            .map(|i| {
                let block = vb.pp("encoder.block").pp(i).pp("layer");
                Ok(EncoderBlock {
                    attention: Attention::load(block.pp("0.SelfAttention"), cfg, quantization)?,
                    attention_norm: RmsNorm::load(block.pp("0.layer_norm"), cfg)?,
                    feed_forward: FeedForward::load(block.pp("1"), cfg, quantization)?,
                })
            })
            .collect::<Result<_>>()?;
        let decoder = (0..cfg.num_decoder_layers.unwrap_or(cfg.num_layers))
            .map(|i| {
                let block = vb.pp("decoder.block").pp(i).pp("layer");
                Ok(DecoderBlock {
                    self_attention: Attention::load(
                        block.pp("0.SelfAttention"),
                        cfg,
                        quantization,
                    )?,
                    self_norm: RmsNorm::load(block.pp("0.layer_norm"), cfg)?,
                    cross_attention: Attention::load(
                        block.pp("1.EncDecAttention"),
                        cfg,
                        quantization,
                    )?,
                    cross_norm: RmsNorm::load(block.pp("1.layer_norm"), cfg)?,
                    feed_forward: FeedForward::load(block.pp("2"), cfg, quantization)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(T5 {
            encoder_bias: bias("encoder", Direction::Both)?,
            encoder_norm: RmsNorm::load(vb.pp("encoder.final_layer_norm"), cfg)?,
            decoder_bias: bias("decoder", Direction::Past)?,
            decoder_norm: RmsNorm::load(vb.pp("decoder.final_layer_norm"), cfg)?,
            words,
            encoder,
            decoder,
            head_scale,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// Encoder hidden states `(batch, seq, d_model)` for `input_ids` with `mask` (1 = attend).
    pub fn encode(&self, input_ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        let mut xs = self.words.embed(input_ids)?;
        let position_bias = self
            .encoder_bias
            .forward(seq, seq, 0, xs.device())?
            .to_dtype(xs.dtype())?;
        // On the CPU in f32 the layers hold the real tokens only (no linear layer computes
        // padding, whose outputs are zeros); elsewhere the mask joins the bias.
        let packed = PackedRows::new(mask, &xs)?;
        let bias = match &packed {
            Some(rows) => {
                xs = rows.pack(&xs)?;
                position_bias
            }
            None => position_bias.broadcast_add(&layers::attention_bias(mask, xs.dtype())?)?,
        };
        for block in &self.encoder {
            let normed = block.attention_norm.forward(&xs)?;
            let attended = match &packed {
                Some(rows) => block.attention.attend_packed(&normed, rows, &bias)?,
                None => {
                    let (keys, values) = block.attention.keys_values(&normed)?;
                    block.attention.attend(&normed, &keys, &values, &bias)?
                }
            };
            xs = (&xs + attended)?;
            xs = block.feed_forward.forward(&xs)?;
        }
        let xs = self.encoder_norm.forward(&xs)?;
        match &packed {
            Some(rows) => rows.unpack(&xs, (batch, seq)),
            None => Ok(xs),
        }
    }

    /// Per decoder layer: cross-attention keys and values of the encoder output, computed
    /// once per input.
    fn cross_keys_values(&self, encoded: &Tensor) -> Result<Vec<(Tensor, Tensor)>> {
        self.decoder
            .iter()
            .map(|block| {
                let (keys, values) = block.cross_attention.keys_values(encoded)?;
                // Every decoding step reads them: stored the way steps score fastest.
                Ok((keys_by_dimension(&keys)?, values))
            })
            .collect()
    }

    /// Decoder hidden states for `input_ids` `(rows, new)` after what `cache` holds.
    fn decode(
        &self,
        input_ids: &Tensor,
        cross: &[CrossGroup],
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let new = input_ids.dim(1)?;
        let past = cache.len();
        let mut xs = self.words.embed(input_ids)?;
        let dtype = xs.dtype();
        let mut bias = self
            .decoder_bias
            .forward(new, past + new, past, xs.device())?
            .to_dtype(dtype)?;
        if new > 1 {
            let lowest = layers::lowest(dtype) as f32;
            let future: Vec<f32> = (0..new)
                .flat_map(|i| (0..past + new).map(move |j| if j > past + i { lowest } else { 0.0 }))
                .collect();
            let future =
                Tensor::from_vec(future, (1, 1, new, past + new), xs.device())?.to_dtype(dtype)?;
            bias = bias.broadcast_add(&future)?;
        }
        for (layer, block) in self.decoder.iter().enumerate() {
            let normed = block.self_norm.forward(&xs)?;
            let (keys, values) = block.self_attention.keys_values(&normed)?;
            let (keys, values) = cache.append(layer, &keys, &values)?;
            xs = (&xs
                + block
                    .self_attention
                    .attend(&normed, &keys, &values, &bias)?)?;
            let normed = block.cross_norm.forward(&xs)?;
            let groups: Vec<_> = cross
                .iter()
                .map(|g| (g.rows, (&g.keys[layer], &g.values[layer]), &g.bias))
                .collect();
            xs = (&xs + block.cross_attention.attend_in_groups(&normed, &groups)?)?;
            xs = block.feed_forward.forward(&xs)?;
        }
        cache.advance(new);
        self.decoder_norm.forward(&xs)
    }

    /// Vocabulary logits `(rows, seq, vocab)` for decoder hidden states.
    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.words.logits(&(hidden * self.head_scale)?)
    }
}

/// T5 mid-generation: encoder outputs and cross-attention keys/values computed once, and a
/// self-attention cache that beam search can reorder.
pub struct T5Session<'a> {
    model: &'a T5,
    cross: Vec<CrossGroup>,
    cache: KvCache,
    device: Device,
}

/// What cross-attention reads for one encoder batch: its inputs' keys and values, padded
/// only to that batch's longest input.
struct CrossGroup {
    /// Decoder rows: the batch's inputs times rows per input.
    rows: usize,
    /// Per decoder layer, `(inputs, heads, seq, d_kv)`.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// `(inputs, 1, 1, seq)`: the padding mask.
    bias: Tensor,
}

impl<'a> T5Session<'a> {
    /// Encodes a right-padded batch; every input gets `rows_per_input` decoder rows (beams),
    /// each with room for `max_new` decoder positions (the start token included).
    pub fn start(
        model: &'a T5,
        input_ids: &Tensor,
        mask: &Tensor,
        rows_per_input: usize,
        max_new: usize,
    ) -> Result<Self> {
        let batches = [(input_ids.clone(), mask.clone())];
        Self::start_bucketed(model, &batches, rows_per_input, max_new)
    }

    /// Encodes inputs given as several right-padded `(input_ids, mask)` batches, so that
    /// inputs of similar length share one and little padding goes through the encoder or
    /// is read by cross-attention at every step. Inputs are numbered across the batches in
    /// turn; input `i` gets decoder rows `i · rows_per_input ..`, which share its
    /// cross-attention keys and values.
    pub fn start_bucketed(
        model: &'a T5,
        batches: &[(Tensor, Tensor)],
        rows_per_input: usize,
        max_new: usize,
    ) -> Result<Self> {
        let mut cross = Vec::with_capacity(batches.len());
        for (input_ids, mask) in batches {
            let encoded = model.encode(input_ids, mask)?;
            let (keys, values) = model.cross_keys_values(&encoded)?.into_iter().unzip();
            cross.push(CrossGroup {
                rows: input_ids.dim(0)? * rows_per_input,
                keys,
                values,
                bias: layers::attention_bias(mask, encoded.dtype())?,
            });
        }
        let device = batches
            .first()
            .map_or(&Device::Cpu, |(ids, _)| ids.device())
            .clone();
        let cfg = &model.config;
        let cache = KvCache::new(
            model.decoder.len(),
            cross.iter().map(|group| group.rows).sum(),
            cfg.num_heads,
            cfg.d_kv,
            max_new,
            model.words.dtype(),
            &device,
        )?;
        Ok(T5Session {
            model,
            cross,
            cache,
            device,
        })
    }

    /// Decoder logits `(rows, new, vocab)` for `tokens` `(rows, new)`, fed after the cache:
    /// for checking cached decoding against a single pass.
    pub fn forward(&mut self, tokens: &Tensor) -> Result<Tensor> {
        let hidden = self.model.decode(tokens, &self.cross, &mut self.cache)?;
        self.model.logits(&hidden)
    }
}

impl crate::generation::Decoder for T5Session<'_> {
    fn step(&mut self, tokens: &[u32]) -> crate::Result<Tensor> {
        let ids = Tensor::from_slice(tokens, (tokens.len(), 1), &self.device)?;
        Ok(self.forward(&ids)?.squeeze(1)?)
    }

    /// Beams are reordered within their input's group only, where the cross-attention keys
    /// and values are the same, so only the self-attention cache moves.
    fn reorder(&mut self, rows: &[u32]) -> crate::Result<()> {
        Ok(self.cache.reorder(rows)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_t5() {
        // Bidirectional, 32 buckets, max distance 128: exact below 8, log-spaced above.
        assert_eq!(bucket(0, Direction::Both, 32, 128), 0);
        assert_eq!(bucket(3, Direction::Both, 32, 128), 19);
        assert_eq!(bucket(-3, Direction::Both, 32, 128), 3);
        assert_eq!(bucket(-1000, Direction::Both, 32, 128), 15);
        assert_eq!(bucket(1000, Direction::Both, 32, 128), 31);
        // Decoder: only the past counts.
        assert_eq!(bucket(5, Direction::Past, 32, 128), 0);
        assert_eq!(bucket(-5, Direction::Past, 32, 128), 5);
        assert_eq!(bucket(-1000, Direction::Past, 32, 128), 31);
    }
}
