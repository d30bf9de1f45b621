//! Small building blocks shared by the architectures.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm};

use super::Weights;
use rayon::prelude::*;
use serde::Deserialize;

use super::fast_math;
use super::weight_cache::{bytes_of, Slab, WeightCache};
#[cfg(target_arch = "x86_64")]
use super::{int8, packed_f32};

/// Activation functions by their transformers names (`hidden_act`, `activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// The exact, erf-based GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
    #[serde(rename = "tanh")]
    Tanh,
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let fast = match self {
            Activation::Gelu => fast_math::map_f32(xs, fast_math::gelu_erf)?,
            Activation::GeluTanh => fast_math::map_f32(xs, fast_math::gelu_tanh)?,
            _ => None,
        };
        if let Some(ys) = fast {
            return Ok(ys);
        }
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
            Activation::Tanh => xs.tanh(),
        }
    }
}

/// How the weights of linear layers are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    /// As stored in the checkpoint (converted to the run's dtype).
    #[default]
    None,
    /// 8-bit integers in blocks of 32 with one f16 scale each (ggml's Q8_0), made at load
    /// time; activations are quantized the same way inside each product.
    Q8,
}

/// `y = x Wᵀ + b` over the last dimension of `x`, on the kernel that suits the weights.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    /// `(out, in)`, contiguous.
    Dense(Tensor),
    /// f32 laid out for the packed kernels (CPUs with AVX-512, or AVX2 and FMA).
    #[cfg(target_arch = "x86_64")]
    PackedF32(packed_f32::PackedF32),
    /// Rows past `out_dim` are zero padding.
    Quantized { matmul: QMatMul, out_dim: usize },
    /// Q8_0 as well, laid out for the int8 kernels (CPUs with AVX512-VNNI, or AVX2).
    #[cfg(target_arch = "x86_64")]
    PackedQ8(int8::PackedQ8),
}

/// Up to this many rows, products skip the GEMM's repacking of the weights
/// (`fast_math::skinny_matmul`).
const SKINNY_MAX_ROWS: usize = 16;

impl Linear {
    /// From a weight stored `(out, in)`, as `nn.Linear` stores it.
    pub fn new(weight: Tensor, bias: Option<Tensor>, quantization: Quantization) -> Result<Self> {
        let weight = LinearWeight::new(weight, quantization)?;
        Ok(Linear { weight, bias })
    }

    /// The rows of the `(out, in)` weight for the outputs `ids`, shaped `ids` + `(in,)`, when
    /// the weight is held packed in f32; `None` otherwise.
    fn packed_rows(&self, ids: &Tensor) -> Result<Option<Tensor>> {
        #[cfg(target_arch = "x86_64")]
        if let LinearWeight::PackedF32(weight) = &self.weight {
            let mut dims = ids.dims().to_vec();
            let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
            let mut rows = Vec::new();
            for &id in &ids {
                if id as usize >= weight.out_dim() {
                    candle_core::bail!(
                        "token id {id} is outside the vocabulary of {}",
                        weight.out_dim()
                    );
                }
                weight.extend_with_output(id as usize, &mut rows);
            }
            dims.push(weight.in_dim());
            return Ok(Some(Tensor::from_vec(
                rows,
                dims,
                &candle_core::Device::Cpu,
            )?));
        }
        Ok(None)
    }
}

impl LinearWeight {
    fn new(weight: Tensor, quantization: Quantization) -> Result<Self> {
        match quantization {
            Quantization::None => unquantized(weight),
            Quantization::Q8 => quantized(weight),
        }
    }

    /// From `(in, out)`: transposed once at load, so that every kernel reads one output's
    /// weights contiguously.
    fn from_in_out(weight: Tensor, quantization: Quantization) -> Result<Self> {
        let (in_dim, out_dim) = weight.dims2()?;
        if quantization == Quantization::Q8 && in_dim % Q8_0_BLOCK == 0 {
            // Blocks read down the columns: no transposed f32 copy on the way.
            let columns = |values: &[f32]| q8_0_column_blocks(values, in_dim, out_dim);
            if let Some(blocks) = fast_math::with_f32_slice(&weight, columns)? {
                return quantized_from_blocks(blocks, out_dim, in_dim, weight.device());
            }
        }
        #[cfg(target_arch = "x86_64")]
        if quantization == Quantization::None && packs_f32(&weight) {
            let packed =
                |values: &[f32]| packed_f32::PackedF32::from_in_out(values, in_dim, out_dim);
            if let Some(packed) = fast_math::with_f32_slice(&weight, packed)? {
                return Ok(LinearWeight::PackedF32(packed));
            }
        }
        let transposed = match fast_math::with_f32_slice(&weight, |values| {
            fast_math::transpose(values, in_dim, out_dim)
        })? {
            Some(values) => Tensor::from_vec(values, (out_dim, in_dim), weight.device())?,
            None => weight.t()?.contiguous()?,
        };
        LinearWeight::new(transposed, quantization)
    }

    /// The weight `name` `(out_dim, in_dim)` as an earlier load packed it into `cache`.
    fn from_cache(cache: &WeightCache, name: &str, out_dim: usize, in_dim: usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        match cache.kind(name)? {
            packed_f32::KIND => {
                let packed = packed_f32::PackedF32::from_cache(cache, name, out_dim, in_dim)?;
                return Some(LinearWeight::PackedF32(packed));
            }
            int8::KIND => {
                let packed = int8::PackedQ8::from_cache(cache, name, out_dim, in_dim)?;
                return Some(LinearWeight::PackedQ8(packed));
            }
            _ => {}
        }
        let _ = (cache, name, out_dim, in_dim);
        None
    }

    /// Adds a packed weight to the `cache` being written; the others are not kept.
    fn keep_in(&self, cache: &WeightCache, name: &str) {
        match self {
            #[cfg(target_arch = "x86_64")]
            LinearWeight::PackedF32(weight) => weight.keep_in(cache, name),
            #[cfg(target_arch = "x86_64")]
            LinearWeight::PackedQ8(weight) => weight.keep_in(cache, name),
            _ => {}
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn is_packed_f32(&self) -> bool {
        matches!(self, LinearWeight::PackedF32(_))
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn is_packed_f32(&self) -> bool {
        false
    }
}

/// The layout of packed linear weights (`models::WeightCache`'s files are per layout) for
/// a model on `device` in `dtype`; `None` where nothing is packed.
pub fn packed_layout(
    quantization: Quantization,
    dtype: DType,
    device: &candle_core::Device,
) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if device.is_cpu() && dtype == DType::F32 && packed_f32::supported() {
        return match quantization {
            Quantization::None => Some(packed_f32::KIND),
            // Layers that Q8_0 cannot take (inputs not whole blocks) are packed in f32.
            Quantization::Q8 if int8::supported() => Some(int8::KIND),
            Quantization::Q8 => None,
        };
    }
    let _ = (quantization, dtype, device);
    None
}

/// Whether q8 linear layers with inputs of every size in `in_dims` run on the int8 kernels,
/// for a model on `device` in `dtype` (inputs that are not whole Q8_0 blocks stay in f32).
pub fn fast_int8(in_dims: &[usize], dtype: DType, device: &candle_core::Device) -> bool {
    let blocks = in_dims.iter().all(|dim| dim.is_multiple_of(Q8_0_BLOCK));
    #[cfg(target_arch = "x86_64")]
    return blocks && packed_layout(Quantization::Q8, dtype, device) == Some(int8::KIND);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (blocks, dtype, device);
        false
    }
}

/// The weight `(out_dim, in_dim)` of a linear layer stored as the tensors `names` (several
/// when fused): read from the packed cache if an earlier load kept it there, else made by
/// `make` and kept for the next load.
fn cached_weight(
    vb: &Weights,
    names: &[String],
    out_dim: usize,
    in_dim: usize,
    make: impl FnOnce() -> Result<LinearWeight>,
) -> Result<LinearWeight> {
    let Some(cache) = vb.cache() else {
        return make();
    };
    let name = names.join("+");
    if let Some(weight) = LinearWeight::from_cache(cache, &name, out_dim, in_dim) {
        return Ok(weight);
    }
    let weight = make()?;
    weight.keep_in(cache, &name);
    Ok(weight)
}

/// Whether f32 weights go to the packed kernels: on CPUs that have them.
#[cfg(target_arch = "x86_64")]
fn packs_f32(weight: &Tensor) -> bool {
    weight.device().is_cpu() && weight.dtype() == DType::F32 && packed_f32::supported()
}

/// An `(out, in)` weight kept at its precision: packed for the f32 kernels where they run.
fn unquantized(weight: Tensor) -> Result<LinearWeight> {
    #[cfg(target_arch = "x86_64")]
    if packs_f32(&weight) {
        let (out_dim, in_dim) = weight.dims2()?;
        let packed = |values: &[f32]| packed_f32::PackedF32::new(values, out_dim, in_dim);
        if let Some(packed) = fast_math::with_f32_slice(&weight, packed)? {
            return Ok(LinearWeight::PackedF32(packed));
        }
    }
    Ok(LinearWeight::Dense(weight.contiguous()?))
}

/// Word embeddings and the output head over the same vocabulary. When the two are tied and
/// the head holds its weights packed in f32, lookups read the head's copy: the table is
/// stored once.
#[derive(Debug, Clone)]
pub struct WordEmbeddings {
    /// `None` when lookups go to `head`.
    table: Option<Table>,
    head: Linear,
    dtype: DType,
}

impl WordEmbeddings {
    /// The table stored as `table` and the head as `head` (`None`: tied to the table), both
    /// `(vocab, hidden)`. A head in the packed cache is read from there, and a tied one in
    /// f32 then needs nothing else from the checkpoint.
    pub fn load(
        vb: &Weights,
        table: &str,
        head: Option<&str>,
        (vocab, hidden): (usize, usize),
        quantization: Quantization,
    ) -> Result<Self> {
        let mut read = None;
        let name = vb.path(head.unwrap_or(table));
        let weight = cached_weight(vb, &[name], vocab, hidden, || {
            let read_table = vb.get((vocab, hidden), table)?;
            let head = match head {
                Some(head) => vb.get((vocab, hidden), head)?,
                None => read_table.clone(),
            };
            read = Some(read_table);
            LinearWeight::new(head, quantization)
        })?;
        // A tied head packed in f32 serves lookups too: no table then.
        let table = if head.is_none() && weight.is_packed_f32() {
            None
        } else {
            Some(Table::load(vb, table, (vocab, hidden), read)?)
        };
        Ok(WordEmbeddings {
            table,
            head: Linear { weight, bias: None },
            dtype: vb.dtype(),
        })
    }

    /// `(ids.., hidden)` embeddings of token `ids`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        match &self.table {
            Some(table) => table.forward(ids),
            None => self.head.packed_rows(ids)?.ok_or_else(|| {
                candle_core::Error::Msg("tied embeddings need the packed head".into())
            }),
        }
    }

    /// Logits over the vocabulary for hidden states `(.., hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.head.forward(hidden)
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// An embedding table that lookups read rows from.
#[derive(Debug, Clone)]
enum Table {
    Tensor(Embedding),
    /// f32 rows `(vocab, hidden)` mapped from the packed weight cache: loading copies
    /// nothing (GPT-2's table is 154 MB), and only the rows looked up are ever read.
    Mapped {
        rows: Slab<f32>,
        vocab: usize,
        hidden: usize,
    },
}

impl Table {
    /// The layout's name in the weight cache.
    const KIND: &'static str = "rows";

    /// The table `name`, from the cache when an earlier load kept it there, else `read` (or
    /// the checkpoint) and kept for the next load. Mapped rows serve f32 on the CPU only.
    fn load(
        vb: &Weights,
        name: &str,
        (vocab, hidden): (usize, usize),
        read: Option<Tensor>,
    ) -> Result<Self> {
        // Not the tensor's own name: a tied head is kept under that one.
        let path = format!("{} as rows", vb.path(name));
        let cache = vb
            .cache()
            .filter(|_| vb.dtype() == DType::F32 && vb.device().is_cpu());
        if let Some(cache) = cache {
            let found = cache.find(&path, Self::KIND, vocab, hidden);
            if let Some(rows) = found.and_then(|found| found.slab(0, vocab * hidden)) {
                return Ok(Table::Mapped {
                    rows,
                    vocab,
                    hidden,
                });
            }
        }
        let table = match read {
            Some(table) => table,
            None => vb.get((vocab, hidden), name)?,
        };
        if let Some(cache) = cache {
            fast_math::with_f32_slice(&table, |values| {
                cache.keep(&path, Self::KIND, vocab, hidden, &[bytes_of(values)]);
            })?;
        }
        Ok(Table::Tensor(Embedding::new(table, hidden)))
    }

    /// `(ids.., hidden)`: the rows of token `ids`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (rows, vocab, hidden) = match self {
            Table::Tensor(table) => return table.forward(ids),
            Table::Mapped {
                rows,
                vocab,
                hidden,
            } => (rows, *vocab, *hidden),
        };
        let mut dims = ids.dims().to_vec();
        let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let mut values = Vec::with_capacity(ids.len() * hidden);
        for id in ids {
            if id as usize >= vocab {
                candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
            }
            values.extend_from_slice(&rows[id as usize * hidden..][..hidden]);
        }
        dims.push(hidden);
        Tensor::from_vec(values, dims, &candle_core::Device::Cpu)
    }
}

/// Q8_0 needs rows that are whole blocks of 32; other shapes keep their precision.
fn quantized(weight: Tensor) -> Result<LinearWeight> {
    let (out_dim, in_dim) = weight.dims2()?;
    if in_dim % Q8_0_BLOCK != 0 {
        return unquantized(weight);
    }
    let weight = weight.to_dtype(DType::F32)?;
    let blocks = match fast_math::with_f32_slice(&weight, q8_0_blocks)? {
        Some(blocks) => blocks,
        None => q8_0_blocks(&weight.flatten_all()?.to_vec1()?),
    };
    quantized_from_blocks(blocks, out_dim, in_dim, weight.device())
}

/// The quantized weight for Q8_0 `blocks` of `out_dim` rows: packed for `int8` on CPUs
/// that run it, else candle's, padded with zero rows (all-zero bytes are a block of zeros)
/// to whole tiles.
fn quantized_from_blocks(
    mut blocks: Vec<u8>,
    out_dim: usize,
    in_dim: usize,
    device: &candle_core::Device,
) -> Result<LinearWeight> {
    #[cfg(target_arch = "x86_64")]
    if device.is_cpu() && int8::supported() {
        let packed = int8::PackedQ8::from_q8_0_blocks(&blocks, out_dim, in_dim);
        return Ok(LinearWeight::PackedQ8(packed));
    }
    let rows = out_dim.next_multiple_of(Q8_0_ROW_TILE);
    blocks.resize(rows * in_dim / Q8_0_BLOCK * Q8_0_BYTES, 0);
    let quantized = qtensor_from_ggml(GgmlDType::Q8_0, &blocks, vec![rows, in_dim], device)?;
    Ok(LinearWeight::Quantized {
        matmul: QMatMul::from_qtensor(quantized)?,
        out_dim,
    })
}
/// candle's AVX512-VNNI kernel for Q8_0 takes weights in whole tiles of 16 rows (else it
/// falls back to a 256-bit one at half the speed), so quantized weights are padded to that.
const Q8_0_ROW_TILE: usize = 16;
pub(super) const Q8_0_BLOCK: usize = 32;
/// An f16 scale and 32 signed bytes.
pub(super) const Q8_0_BYTES: usize = 2 + Q8_0_BLOCK;

/// ggml's Q8_0 encoding of `values`: per block of 32, the scale `d = max|x| / 127` as f16
/// and each value as `round(x / d)`, the rule of candle's `QTensor::quantize`, but spread
/// over all cores (loading GPT-2 spent a second here on one).
fn q8_0_blocks(values: &[f32]) -> Vec<u8> {
    // Blocks per parallel task.
    const TASK: usize = 1024;
    let mut bytes = vec![0u8; values.len() / Q8_0_BLOCK * Q8_0_BYTES];
    bytes
        .par_chunks_mut(TASK * Q8_0_BYTES)
        .zip(values.par_chunks(TASK * Q8_0_BLOCK))
        .for_each(|(bytes, values)| {
            fast_math::with_simd(
                #[inline(always)]
                || {
                    let blocks = bytes
                        .chunks_exact_mut(Q8_0_BYTES)
                        .zip(values.chunks_exact(Q8_0_BLOCK));
                    for (block, values) in blocks {
                        encode_q8_0(values, block);
                    }
                },
            )
        });
    bytes
}

/// The Q8_0 blocks of the transpose of `values` `(in_dim, out_dim)`, as `q8_0_blocks`
/// would make them from the transposed matrix, without writing that matrix: tiles of
/// 32 x 16 values are turned in a buffer. `in_dim` is a multiple of 32.
fn q8_0_column_blocks(values: &[f32], in_dim: usize, out_dim: usize) -> Vec<u8> {
    const COLUMNS: usize = 16;
    let row_bytes = in_dim / Q8_0_BLOCK * Q8_0_BYTES;
    let mut bytes = vec![0u8; out_dim * row_bytes];
    bytes
        .par_chunks_mut(COLUMNS * row_bytes)
        .enumerate()
        .for_each(|(task, bytes)| {
            let first = task * COLUMNS;
            let width = bytes.len() / row_bytes;
            let mut tile = [[0f32; Q8_0_BLOCK]; COLUMNS];
            fast_math::with_simd(
                #[inline(always)]
                || {
                    for b in 0..in_dim / Q8_0_BLOCK {
                        for r in 0..Q8_0_BLOCK {
                            let source = &values[(b * Q8_0_BLOCK + r) * out_dim + first..];
                            for (column, &value) in tile.iter_mut().zip(&source[..width]) {
                                column[r] = value;
                            }
                        }
                        for (c, column) in tile.iter().enumerate().take(width) {
                            let at = c * row_bytes + b * Q8_0_BYTES;
                            encode_q8_0(column, &mut bytes[at..at + Q8_0_BYTES]);
                        }
                    }
                },
            )
        });
    bytes
}

/// One Q8_0 block: 32 values into an f16 scale and 32 signed bytes.
#[inline(always)]
fn encode_q8_0(values: &[f32], block: &mut [u8]) {
    let mut quants = [0i8; Q8_0_BLOCK];
    let scale = quantize_q8_0(values, &mut quants);
    block[..2].copy_from_slice(&scale.to_le_bytes());
    for (byte, q) in block[2..].iter_mut().zip(quants) {
        *byte = q as u8;
    }
}

/// Q8_0 of 32 values: writes `round(x / d)` to `quants` and returns the scale
/// `d = max|x| / 127`, as candle's `QTensor::quantize` does.
#[inline(always)]
pub(super) fn quantize_q8_0(values: &[f32], quants: &mut [i8]) -> half::f16 {
    let scale = max_abs(values) / 127.0;
    let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
    for (q, x) in quants.iter_mut().zip(values) {
        let r = round_half_away(x * inverse);
        // NaN -> 0 like `as`; the checked cast does not vectorize.
        let r = if r.is_nan() {
            0.0
        } else {
            r.clamp(-128.0, 127.0)
        };
        // SAFETY: `r` is finite and within i32's range.
        *q = unsafe { r.to_int_unchecked::<i32>() } as i8;
    }
    half::f16::from_f32(scale)
}

/// The largest magnitude in a Q8_0 block, as lane-wise maxima that vectorize.
#[inline(always)]
fn max_abs(block: &[f32]) -> f32 {
    let (low, high) = block.split_at(Q8_0_BLOCK / 2);
    let mut lanes = [0f32; Q8_0_BLOCK / 2];
    for ((lane, a), b) in lanes.iter_mut().zip(low).zip(high) {
        *lane = a.abs().max(b.abs());
    }
    fast_math::reduce_lanes(lanes, f32::max)
}

/// `f32::round` (halves away from zero, like ggml's `roundf`) in operations that vectorize:
/// `x - trunc(x)` is exact.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let whole = x.trunc();
    if (x - whole).abs() >= 0.5 {
        whole + 1f32.copysign(x)
    } else {
        whole
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // One product over every row, whatever the leading dimensions.
        let mut out_dims = xs.dims().to_vec();
        let in_dim = out_dims.pop().unwrap_or(1);
        let rows = xs.reshape(((), in_dim))?;
        let plus_bias = |ys: Tensor| match &self.bias {
            Some(bias) => ys.broadcast_add(bias),
            None => Ok(ys),
        };
        let ys = match &self.weight {
            LinearWeight::Dense(weight) => match cpu_product(&rows, weight, self.bias.as_ref())? {
                Some(ys) => ys,
                None => plus_bias(rows.matmul(&weight.t()?)?)?,
            },
            #[cfg(target_arch = "x86_64")]
            LinearWeight::PackedF32(weight) => {
                let product =
                    |x: &[f32], n: usize, bias: Option<&[f32]>| weight.product(x, n, bias);
                packed_product(&rows, weight.out_dim(), self.bias.as_ref(), product)?
            }
            #[cfg(target_arch = "x86_64")]
            LinearWeight::PackedQ8(weight) => {
                let product =
                    |x: &[f32], n: usize, bias: Option<&[f32]>| weight.product(x, n, bias);
                packed_product(&rows, weight.out_dim(), self.bias.as_ref(), product)?
            }
            LinearWeight::Quantized { matmul, out_dim } => {
                let ys = matmul.forward(&rows)?;
                plus_bias(if ys.dim(1)? == *out_dim {
                    ys
                } else {
                    ys.narrow(1, 0, *out_dim)?
                })?
            }
        };
        out_dims.push(ys.dim(1)?);
        ys.reshape(out_dims)
    }
}

/// `rows` `(n, in)` times a packed weight of `out_dim` outputs, plus `bias`, by the
/// weight's `product`, in f32 (other dtypes are converted there and back).
#[cfg(target_arch = "x86_64")]
fn packed_product(
    rows: &Tensor,
    out_dim: usize,
    bias: Option<&Tensor>,
    product: impl FnOnce(&[f32], usize, Option<&[f32]>) -> Vec<f32>,
) -> Result<Tensor> {
    let dtype = rows.dtype();
    let rows = rows.to_dtype(DType::F32)?;
    let bias = bias
        .map(|b| b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let n = rows.dim(0)?;
    let ys = fast_math::with_f32_slice(&rows, |x| product(x, n, bias.as_deref()))?
        .ok_or_else(|| candle_core::Error::Msg("packed weights need CPU input".into()))?;
    Tensor::from_vec(ys, (n, out_dim), rows.device())?.to_dtype(dtype)
}

/// `rows` `(n, in)` times `weight` `(out, in)` transposed, plus `bias`, on the CPU in f32:
/// the skinny kernel for a few rows, else one GEMM call that starts from the bias rows,
/// so that adding it costs no pass of its own. `None` for other devices and dtypes.
fn cpu_product(rows: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !f32_cpu(rows) || !f32_cpu(weight) || bias.is_some_and(|b| !f32_cpu(b)) {
        return Ok(None);
    }
    let ((n, in_dim), out_dim) = (rows.dims2()?, weight.dim(0)?);
    let bias = bias
        .map(|b| b.flatten_all()?.to_vec1::<f32>())
        .transpose()?;
    let product = fast_math::with_f32_slice(rows, |x| {
        fast_math::with_f32_slice(weight, |w| {
            if n <= SKINNY_MAX_ROWS {
                let mut ys = fast_math::skinny_matmul(x, n, w, out_dim);
                if let Some(bias) = &bias {
                    for row in ys.chunks_exact_mut(out_dim) {
                        row.iter_mut().zip(bias).for_each(|(y, b)| *y += b);
                    }
                }
                ys
            } else {
                gemm_product(x, n, in_dim, w, out_dim, bias.as_deref())
            }
        })
    })?
    .transpose()?
    .flatten();
    product
        .map(|ys| Tensor::from_vec(ys, (n, out_dim), rows.device()))
        .transpose()
}

/// `x` `(n, in)` times `w` `(out, in)` transposed, plus `bias` on every row, by one gemm
/// call on all cores.
fn gemm_product(
    x: &[f32],
    n: usize,
    in_dim: usize,
    w: &[f32],
    out_dim: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(x.len() == n * in_dim && w.len() == out_dim * in_dim);
    let mut ys = match bias {
        Some(bias) => bias.repeat(n),
        None => vec![0f32; n * out_dim],
    };
    assert_eq!(ys.len(), n * out_dim);
    // SAFETY: `x` is n x in_dim and `ys` n x out_dim, row-major; `w` is out_dim x in_dim
    // row-major, read as its in_dim x out_dim transpose. The lengths are checked above.
    unsafe {
        gemm::gemm(
            n,
            out_dim,
            in_dim,
            ys.as_mut_ptr(),
            1,
            out_dim as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            in_dim as isize,
            w.as_ptr(),
            in_dim as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    };
    ys
}

/// A linear layer stored as `weight` `(out, in)` and `bias`.
pub fn linear(
    in_dim: usize,
    out_dim: usize,
    vb: Weights,
    quantization: Quantization,
) -> Result<Linear> {
    let bias = Some(vb.get(out_dim, "bias")?);
    Ok(Linear {
        weight: stored_out_in(in_dim, out_dim, &vb, quantization)?,
        bias,
    })
}

/// The weight of a linear layer stored `(out, in)` as `weight`.
fn stored_out_in(
    in_dim: usize,
    out_dim: usize,
    vb: &Weights,
    quantization: Quantization,
) -> Result<LinearWeight> {
    cached_weight(vb, &[vb.path("weight")], out_dim, in_dim, || {
        LinearWeight::new(vb.get((out_dim, in_dim), "weight")?, quantization)
    })
}

/// A linear layer stored with its weight `(in, out)` (GPT-2's Conv1D) and a bias.
pub fn linear_in_out(
    in_dim: usize,
    out_dim: usize,
    vb: Weights,
    quantization: Quantization,
) -> Result<Linear> {
    let bias = Some(vb.get(out_dim, "bias")?);
    let weight = cached_weight(&vb, &[vb.path("weight")], out_dim, in_dim, || {
        LinearWeight::from_in_out(vb.get((in_dim, out_dim), "weight")?, quantization)
    })?;
    Ok(Linear { weight, bias })
}

/// A linear layer with no bias (T5).
pub fn linear_no_bias(
    in_dim: usize,
    out_dim: usize,
    vb: Weights,
    quantization: Quantization,
) -> Result<Linear> {
    Ok(Linear {
        weight: stored_out_in(in_dim, out_dim, &vb, quantization)?,
        bias: None,
    })
}

/// Several projections of the same input fused into one matrix, so that one GEMM
/// replaces several (query, key and value), each with a bias or (T5) none.
pub fn fused_linear(
    in_dim: usize,
    out_dims: &[usize],
    vbs: &[Weights],
    with_bias: bool,
    quantization: Quantization,
) -> Result<Linear> {
    let bias = if with_bias {
        let biases = (out_dims.iter().zip(vbs))
            .map(|(&out_dim, vb)| vb.get(out_dim, "bias"))
            .collect::<Result<Vec<_>>>()?;
        Some(Tensor::cat(&biases, 0)?)
    } else {
        None
    };
    let Some(first) = vbs.first() else {
        candle_core::bail!("a fused linear layer needs at least one projection");
    };
    let names: Vec<String> = vbs.iter().map(|vb| vb.path("weight")).collect();
    let weight = cached_weight(first, &names, out_dims.iter().sum(), in_dim, || {
        let weights = (out_dims.iter().zip(vbs))
            .map(|(&out_dim, vb)| vb.get((out_dim, in_dim), "weight"))
            .collect::<Result<Vec<_>>>()?;
        LinearWeight::new(Tensor::cat(&weights, 0)?, quantization)
    })?;
    Ok(Linear { weight, bias })
}

/// An embedding table of `count` vectors of `hidden` values, stored as `weight`.
pub fn embedding(count: usize, hidden: usize, vb: Weights) -> Result<Embedding> {
    Ok(Embedding::new(vb.get((count, hidden), "weight")?, hidden))
}

/// A LayerNorm stored as `weight`/`bias`, or as `gamma`/`beta` in older BERT checkpoints
/// (transformers renames those on load).
pub fn layer_norm(size: usize, eps: f64, vb: Weights) -> Result<LayerNorm> {
    let (weight, bias) = if vb.contains_tensor("weight") || !vb.contains_tensor("gamma") {
        ("weight", "bias")
    } else {
        ("gamma", "beta")
    };
    Ok(LayerNorm::new(
        vb.get(size, weight)?,
        vb.get(size, bias)?,
        eps,
    ))
}

/// The lowest finite value of a float dtype: what transformers adds to masked scores.
pub fn lowest(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.389_531_389_251_535_5e38,
        DType::F64 => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}

/// The additive attention bias for a `(batch, seq)` mask with 1 = attend: 0 where attended,
/// the dtype's lowest value where masked (as transformers does), shaped `(batch, 1, 1, seq)`.
pub fn attention_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let lowest = lowest(dtype);
    let (batch, seq) = mask.dims2()?;
    // mask * (-lowest) + lowest: 1 -> 0, 0 -> lowest.
    mask.to_dtype(dtype)?
        .affine(-lowest, lowest)?
        .reshape((batch, 1, 1, seq))
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;
    use candle_core::Device;
    use candle_nn::VarBuilder;

    use super::*;

    #[test]
    fn q8_0_blocks_decode_like_candles_own_quantization() -> Result<()> {
        let device = Device::Cpu;
        let weight = (Tensor::randn(0f32, 1.0, (48, 96), &device)? * 0.05)?;
        let ours = qtensor_from_ggml(
            GgmlDType::Q8_0,
            &q8_0_blocks(&weight.flatten_all()?.to_vec1::<f32>()?),
            vec![48, 96],
            &device,
        )?
        .dequantize(&device)?;
        let candles = QTensor::quantize(&weight, GgmlDType::Q8_0)?.dequantize(&device)?;
        let gap = (ours - candles)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(gap, 0.0, "our Q8_0 blocks decode differently from candle's");
        Ok(())
    }

    #[test]
    fn column_blocks_equal_the_blocks_of_the_transpose() {
        // 40 outputs: two full tasks of 16 columns and a partial one.
        let (in_dim, out_dim) = (64, 40);
        let values: Vec<f32> = (0..in_dim * out_dim)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let transposed = fast_math::transpose(&values, in_dim, out_dim);
        assert_eq!(
            q8_0_column_blocks(&values, in_dim, out_dim),
            q8_0_blocks(&transposed)
        );
    }

    #[test]
    fn round_half_away_matches_f32_round() {
        let mut x = -140.0f32;
        while x <= 140.0 {
            for v in [x, x + 1e-4, x - 1e-4] {
                assert_eq!(round_half_away(v), v.round(), "{v}");
            }
            x += 0.125;
        }
    }

    #[test]
    fn linear_gives_the_same_product_on_every_kernel() -> Result<()> {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.1, (40, 64), &device)?;
        let bias = Tensor::randn(0f32, 0.1, 40, &device)?;
        let f32_weights = Linear::new(weight.clone(), Some(bias.clone()), Quantization::None)?;
        // The kernels of CPUs without the packed ones: few rows take the skinny kernel, many
        // the GEMM.
        let dense = Linear {
            weight: LinearWeight::Dense(weight.clone()),
            bias: Some(bias.clone()),
        };
        let quantized = Linear::new(weight.clone(), Some(bias.clone()), Quantization::Q8)?;
        for rows in [1, 3, 16, 17, 40] {
            let xs = Tensor::randn(0f32, 1.0, (rows, 64), &device)?;
            let want = xs.matmul(&weight.t()?)?.broadcast_add(&bias)?;
            let gap =
                |ys: Tensor| -> Result<f32> { (ys - &want)?.abs()?.max_all()?.to_scalar::<f32>() };
            assert!(gap(f32_weights.forward(&xs)?)? < 1e-5, "f32, {rows} rows");
            assert!(gap(dense.forward(&xs)?)? < 1e-5, "dense f32, {rows} rows");
            assert!(gap(quantized.forward(&xs)?)? < 0.05, "q8, {rows} rows");
        }
        Ok(())
    }

    /// Tied or not, packed head or quantized: lookups give the table's rows, the head its
    /// product, and an id past the vocabulary an error.
    #[test]
    fn word_embeddings_look_up_the_table_and_multiply_by_it() -> Result<()> {
        let device = Device::Cpu;
        let table = Tensor::randn(0f32, 1.0, (40, 64), &device)?;
        let ids = Tensor::new(&[[3u32, 0, 39], [7, 7, 1]], &device)?;
        let hidden = Tensor::randn(0f32, 1.0, (2, 64), &device)?;
        let want_rows = Embedding::new(table.clone(), 64)
            .forward(&ids)?
            .to_vec3::<f32>()?;
        let want_logits = hidden.matmul(&table.t()?)?;
        let largest = want_logits.abs()?.max_all()?.to_scalar::<f32>()?;
        for quantization in [Quantization::None, Quantization::Q8] {
            for head in [None, Some("head")] {
                let tensors = ["table", "head"].map(|name| (name.to_string(), table.clone()));
                let vb = VarBuilder::from_tensors(tensors.into(), DType::F32, &device);
                let words =
                    WordEmbeddings::load(&vb.into(), "table", head, (40, 64), quantization)?;
                assert_eq!(words.embed(&ids)?.to_vec3::<f32>()?, want_rows);
                let gap = (words.logits(&hidden)? - &want_logits)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                // Q8_0 rounds weights and inputs to 8 bits: a few percent of the largest logit.
                let bound = match quantization {
                    Quantization::None => 1e-4,
                    Quantization::Q8 => 0.03 * largest,
                };
                assert!(gap < bound, "{quantization:?}: {gap}");
                assert!(words.embed(&Tensor::new(&[40u32], &device)?).is_err());
                let no_ids = Tensor::zeros((1, 0), DType::U32, &device)?;
                assert_eq!(words.embed(&no_ids)?.dims(), &[1, 0, 64]);
            }
        }
        Ok(())
    }

    /// A load that finds the weight cache reads nothing from the checkpoint: the head and
    /// the table (where lookups need one) come back from the file the first load wrote.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn word_embeddings_come_back_from_the_weight_cache() -> Result<()> {
        if !(packed_f32::supported() && int8::supported()) {
            eprintln!("skipped: this CPU has no packed kernels");
            return Ok(());
        }
        let device = Device::Cpu;
        let dir = tempfile::tempdir()?;
        let checkpoint = dir.path().join("model.safetensors");
        std::fs::write(&checkpoint, b"weights")?;
        let table = Tensor::randn(0f32, 1.0, (40, 64), &device)?;
        let ids = Tensor::new(&[[3u32, 0, 39], [7, 7, 1]], &device)?;
        let hidden = Tensor::randn(0f32, 1.0, (2, 64), &device)?;
        for quantization in [Quantization::None, Quantization::Q8] {
            for head in [None, Some("head")] {
                let layout = format!("{quantization:?} {head:?}");
                let open = || {
                    WeightCache::open(
                        &dir.path().join("cache"),
                        std::slice::from_ref(&checkpoint),
                        &layout,
                    )
                    .expect("the cache folder can be written")
                };
                let tensors = ["table", "head"].map(|name| (name.to_string(), table.clone()));
                let first = open();
                assert!(!first.was_found());
                let vb: Weights =
                    VarBuilder::from_tensors(tensors.into(), DType::F32, &device).into();
                let vb = vb.with_cache(first);
                let written = WordEmbeddings::load(&vb, "table", head, (40, 64), quantization)?;
                vb.finish();
                let found = open();
                assert!(found.was_found(), "{layout}");
                let empty: Weights =
                    VarBuilder::from_tensors(Default::default(), DType::F32, &device).into();
                let mapped = WordEmbeddings::load(
                    &empty.with_cache(found),
                    "table",
                    head,
                    (40, 64),
                    quantization,
                )?;
                assert_eq!(
                    mapped.embed(&ids)?.to_vec3::<f32>()?,
                    written.embed(&ids)?.to_vec3::<f32>()?
                );
                assert_eq!(
                    mapped.logits(&hidden)?.to_vec2::<f32>()?,
                    written.logits(&hidden)?.to_vec2::<f32>()?
                );
            }
        }
        Ok(())
    }
}
