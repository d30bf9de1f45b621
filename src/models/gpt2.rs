//! GPT-2 (GPT2LMHeadModel: gpt2, distilgpt2, gpt2-medium/large/xl).
//!
//! candle-transformers has no GPT-2. Its Conv1D layers store weights `[in, out]`, so they are
//! multiplied as stored rather than transposed into `Linear`s: no copy, the mmap stays.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm};

use super::Weights;
use serde::Deserialize;

use super::attention::{attention, split_heads};
use super::kv_cache::KvCache;
use super::layers::{self, Activation, Linear, Quantization, WordEmbeddings};

/// config.json of `model_type` gpt2, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: Option<usize>,
    pub activation_function: Activation,
    pub layer_norm_epsilon: f64,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl Default for Gpt2Config {
    fn default() -> Self {
        Gpt2Config {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: Activation::GeluTanh,
            layer_norm_epsilon: 1e-5,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
        }
    }
}

impl Gpt2Config {
    fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// GPT-2's Conv1D: a linear layer with its weight stored `[in, out]`.
fn conv1d(in_dim: usize, out_dim: usize, vb: Weights, q: Quantization) -> Result<Linear> {
    layers::linear_in_out(in_dim, out_dim, vb, q)
}

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    activation: Activation,
    mlp_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Block {
    fn load(vb: Weights, cfg: &Gpt2Config, index: usize, q: Quantization) -> Result<Self> {
        let (embd, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let inner = cfg.n_inner.unwrap_or(4 * embd);
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (cfg.head_dim() as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (index + 1) as f64;
        }
        Ok(Block {
            ln_1: layers::layer_norm(embd, eps, vb.pp("ln_1"))?,
            c_attn: conv1d(embd, 3 * embd, vb.pp("attn.c_attn"), q)?,
            attn_proj: conv1d(embd, embd, vb.pp("attn.c_proj"), q)?,
            ln_2: layers::layer_norm(embd, eps, vb.pp("ln_2"))?,
            c_fc: conv1d(embd, inner, vb.pp("mlp.c_fc"), q)?,
            activation: cfg.activation_function,
            mlp_proj: conv1d(inner, embd, vb.pp("mlp.c_proj"), q)?,
            heads: cfg.n_head,
            head_dim: cfg.head_dim(),
            scale,
        })
    }

    fn attention(
        &self,
        xs: &Tensor,
        bias: &Tensor,
        cache: &KvCache,
        layer: usize,
    ) -> Result<Tensor> {
        let [query, keys, values] =
            split_heads(&self.c_attn.forward(xs)?, self.heads, self.head_dim)?;
        let (keys, values) = cache.append(layer, &keys, &values)?;
        let context = attention(&query, &keys, &values, bias, self.scale)?;
        self.attn_proj.forward(&context)
    }

    fn forward(&self, xs: &Tensor, bias: &Tensor, cache: &KvCache, layer: usize) -> Result<Tensor> {
        let xs = (xs + self.attention(&self.ln_1.forward(xs)?, bias, cache, layer)?)?;
        let inner = self
            .activation
            .forward(&self.c_fc.forward(&self.ln_2.forward(&xs)?)?)?;
        xs + self.mlp_proj.forward(&inner)?
    }
}

pub struct Gpt2 {
    /// `wte` and the head (tied to it, or a separate `lm_head.weight`).
    words: WordEmbeddings,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    config: Gpt2Config,
}

impl Gpt2 {
    pub fn load(vb: Weights, config: &Gpt2Config, q: Quantization) -> Result<Self> {
        if config.n_head == 0 || !config.n_embd.is_multiple_of(config.n_head) {
            candle_core::bail!(
                "n_embd {} is not divisible by {} heads",
                config.n_embd,
                config.n_head
            );
        }
        // GPT2LMHeadModel nests the body under `transformer`; a bare GPT2Model does not.
        let body = if vb.contains_tensor("transformer.wte.weight") {
            vb.pp("transformer")
        } else {
            vb.clone()
        };
        let vocab = (config.vocab_size, config.n_embd);
        let table = body.path("wte.weight");
        let head = vb
            .contains_tensor("lm_head.weight")
            .then_some("lm_head.weight");
        // First, while little else is loaded: packing holds the table twice for a moment.
        let words = WordEmbeddings::load(&vb, &table, head, vocab, q)?;
        Ok(Gpt2 {
            wpe: layers::embedding(config.n_positions, config.n_embd, body.pp("wpe"))?,
            blocks: (0..config.n_layer)
                .map(|i| Block::load(body.pp("h").pp(i), config, i, q))
                .collect::<Result<_>>()?,
            ln_f: layers::layer_norm(config.n_embd, config.layer_norm_epsilon, body.pp("ln_f"))?,
            words,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// An empty cache for `batch` rows of up to `capacity` positions.
    pub fn new_cache(
        &self,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<KvCache> {
        let cfg = &self.config;
        KvCache::new(
            cfg.n_layer,
            batch,
            cfg.n_head,
            cfg.head_dim(),
            capacity,
            dtype,
            device,
        )
    }

    /// Runs `input_ids` `(batch, new)` after what `cache` holds and returns the final hidden
    /// states `(batch, new, embd)`. `position_ids` is `(batch, new)`; `mask` is
    /// `(batch, cached + new)` with 1 = attend, covering cached and new positions.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let new = input_ids.dim(1)?;
        let mut xs = (self.words.embed(input_ids)? + self.wpe.forward(position_ids)?)?;
        let bias = causal_bias(mask, cache.len(), new, xs.dtype())?;
        for (layer, block) in self.blocks.iter().enumerate() {
            xs = block.forward(&xs, &bias, cache, layer)?;
        }
        cache.advance(new);
        self.ln_f.forward(&xs)
    }

    /// Vocabulary logits for hidden states `(batch, seq, embd)` → `(batch, seq, vocab)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.words.logits(hidden)
    }
}

/// The additive bias `(batch, 1, new, past + new)`: padding from `mask` (1 = attend), and no
/// query may see a later position.
fn causal_bias(mask: &Tensor, past: usize, new: usize, dtype: DType) -> Result<Tensor> {
    let padding = layers::attention_bias(mask, dtype)?;
    if new == 1 {
        return Ok(padding);
    }
    let total = past + new;
    let lowest = layers::lowest(dtype) as f32;
    let causal: Vec<f32> = (0..new)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { lowest } else { 0.0 }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, new, total), mask.device())?.to_dtype(dtype)?;
    padding.broadcast_minimum(&causal)
}

/// GPT-2 mid-generation: a left-padded batch of prompts, its cache and its mask.
pub struct Gpt2Session<'a> {
    model: &'a Gpt2,
    cache: KvCache,
    /// `(rows, cached)`, 1 = attend; grows by one column per step.
    mask: Tensor,
    /// The position id of each row's next token.
    positions: Vec<u32>,
}

impl<'a> Gpt2Session<'a> {
    /// Runs the prompts (each non-empty and within the window) and returns the session with
    /// the next-token logits `(rows, vocab)`. The cache holds the prompts plus `max_new`.
    pub fn start(
        model: &'a Gpt2,
        prompts: &[&[u32]],
        max_new: usize,
        pad_id: u32,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Tensor)> {
        let rows = prompts.len();
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if width == 0 {
            candle_core::bail!("cannot generate from an empty prompt");
        }
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        let mut positions = Vec::with_capacity(rows * width);
        for prompt in prompts {
            let padding = width - prompt.len();
            ids.extend(std::iter::repeat_n(pad_id, padding).chain(prompt.iter().copied()));
            mask.extend(
                std::iter::repeat_n(0u32, padding).chain(std::iter::repeat_n(1, prompt.len())),
            );
            // As transformers: real tokens count from 0; padding sits at position 1.
            positions.extend(std::iter::repeat_n(1u32, padding).chain(0..prompt.len() as u32));
        }
        let ids = Tensor::from_vec(ids, (rows, width), device)?;
        let positions_t = Tensor::from_vec(positions, (rows, width), device)?;
        let mask = Tensor::from_vec(mask, (rows, width), device)?;
        let mut cache = model.new_cache(rows, width + max_new, dtype, device)?;
        let hidden = model.forward(&ids, &positions_t, &mask, &mut cache)?;
        let logits = model.logits(&hidden.narrow(1, width - 1, 1)?)?.squeeze(1)?;
        let session = Gpt2Session {
            model,
            cache,
            mask,
            positions: prompts.iter().map(|p| p.len() as u32).collect(),
        };
        Ok((session, logits))
    }
}

impl Gpt2Session<'_> {
    /// Runs `ids` `(rows, new)` at `positions` after the cache, every new position attended,
    /// and returns the final hidden states `(rows, new, embd)`.
    fn feed(&mut self, ids: &[u32], positions: &[u32], new: usize) -> Result<Tensor> {
        let rows = ids.len() / new;
        let device = self.mask.device().clone();
        let ids = Tensor::from_slice(ids, (rows, new), &device)?;
        let positions = Tensor::from_slice(positions, (rows, new), &device)?;
        self.mask = Tensor::cat(
            &[&self.mask, &Tensor::ones((rows, new), DType::U32, &device)?],
            1,
        )?;
        self.model
            .forward(&ids, &positions, &self.mask, &mut self.cache)
    }
}

impl crate::generation::Decoder for Gpt2Session<'_> {
    fn step(&mut self, tokens: &[u32]) -> crate::Result<Tensor> {
        let positions = self.positions.clone();
        let hidden = self.feed(tokens, &positions, 1)?;
        // Finished rows keep stepping with padding; keep their positions inside the table.
        let last = self.model.config.n_positions.saturating_sub(1) as u32;
        self.positions
            .iter_mut()
            .for_each(|p| *p = (*p + 1).min(last));
        Ok(self.model.logits(&hidden)?.squeeze(1)?)
    }

    fn reorder(&mut self, rows: &[u32]) -> crate::Result<()> {
        self.cache.reorder(rows)?;
        let index = Tensor::new(rows, self.mask.device())?;
        self.mask = self.mask.index_select(&index, 0)?;
        self.positions = rows
            .iter()
            .map(|&row| self.positions[row as usize])
            .collect();
        Ok(())
    }
}

/// One prompt's session takes several tokens at once and forgets rejected ones: what
/// speculative decoding needs of the model and of its draft.
impl crate::generation::Rewind for Gpt2Session<'_> {
    fn seen(&self) -> usize {
        self.cache.len()
    }

    fn extend(&mut self, tokens: &[u32]) -> crate::Result<Tensor> {
        let rows = self.positions.len();
        if rows != 1 {
            return Err(crate::Error::Generation(format!(
                "only a one-prompt session takes several tokens at once, not {rows}"
            )));
        }
        let new = tokens.len();
        let first = self.positions[0];
        let positions: Vec<u32> = (first..first + new as u32).collect();
        let hidden = self.feed(tokens, &positions, new)?;
        self.positions[0] += new as u32;
        Ok(self.model.logits(&hidden)?.squeeze(0)?)
    }

    fn rewind(&mut self, len: usize) -> crate::Result<()> {
        // One prompt has no padding: a position is its index, and every column attends.
        let len = len.min(self.cache.len());
        self.cache.truncate(len);
        self.mask = self.mask.narrow(1, 0, len)?;
        self.positions.iter_mut().for_each(|p| *p = len as u32);
        Ok(())
    }
}
