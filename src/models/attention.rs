//! Scaled dot-product attention, shared by every architecture.
//!
//! Decoding steps (a few query positions) on the CPU in f32 run as one fused pass per
//! (row, position, head): scores, softmax and the weighted sum of values stay in cache, and
//! one parallel dispatch covers all heads. With candle's batched matmul each head is its
//! own tiny GEMM with its own thread hand-off, which costs more than the arithmetic there.
//! Longer queries (prompts, encoders) run two GEMM calls per (row, head) on the strided
//! views, rows spread over cores; encoders on the CPU pass their inputs packed without
//! padding (`packed_self_attention`). Other devices and dtypes take candle's ops.

use std::ops::Range;

use candle_core::{DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use super::fast_math;

/// Above this many query positions, per-head GEMMs beat the fused loop. (Fusing encoder
/// attention over short inputs as well measured no faster on MiniLM.)
const FUSED_MAX_QUERIES: usize = 8;

/// `softmax(scale · q kᵀ + bias) v` for `query` `(batch, heads, q_len, head_dim)` and
/// `keys`/`values` `(batch, heads, k_len, head_dim)` (views into a cache are fine), with an
/// additive `bias` broadcastable to `(batch, heads, q_len, k_len)`. Softmax is taken in f32.
/// Returns `(batch, q_len, heads · head_dim)`, ready for the output projection.
///
/// `keys`, `values` and `bias` may instead have one row per group of consecutive query
/// rows (`batch / keys.dim(0)` of them: the beams of one input, which share an encoder
/// output), so that beams need no copies of the cross-attention keys and values.
///
/// Keys that stay fixed over many decoding steps (cross-attention) are best stored
/// dimension-major (`keys_by_dimension`): a step then scores all keys of a head with
/// vector multiply-adds, where key-major storage needs a horizontal sum per key.
pub fn attention(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let cpu_f32 = matches!(query.device(), Device::Cpu)
        && [query, keys, values, bias]
            .iter()
            .all(|t| t.dtype() == DType::F32);
    let (batch, shared) = (query.dim(0)?, keys.dim(0)?);
    if shared == 0 || batch % shared != 0 || values.dim(0)? != shared {
        candle_core::bail!("attention over {batch} query rows with {shared} rows of keys")
    }
    let group = batch / shared;
    let fast = cpu_f32 && query.elem_count() > 0 && keys.elem_count() > 0;
    if fast && query.dim(2)? <= FUSED_MAX_QUERIES {
        return fused_cpu(query, keys, values, bias, scale as f32, group);
    }
    // Elsewhere shared rows are repeated for each query row.
    let repeat = |t: &Tensor| -> Result<Tensor> {
        if group == 1 || t.dim(0)? == 1 {
            return Ok(t.clone());
        }
        let rows: Vec<u32> = (0..batch as u32).map(|r| r / group as u32).collect();
        t.contiguous()?
            .index_select(&Tensor::new(rows, t.device())?, 0)
    };
    let (keys, values, bias) = (repeat(keys)?, repeat(values)?, repeat(bias)?);
    if fast {
        return gemm_cpu(query, &keys, &values, &bias, scale as f32);
    }
    with_candle_ops(query, &keys, &values, &bias, scale)
}

/// The `N` parts of a fused projection `(batch, seq, N · heads · head_dim)` (query, keys
/// and values; or keys and values) as strided views `(batch, heads, seq, head_dim)`: no copies.
pub fn split_heads<const N: usize>(
    projection: &Tensor,
    heads: usize,
    head_dim: usize,
) -> Result<[Tensor; N]> {
    let (rows, seq, _) = projection.dims3()?;
    let parts = projection
        .reshape((rows, seq, N, heads, head_dim))?
        .permute((2, 0, 3, 1, 4))?;
    // Not `Tensor::get`: it reshapes, which copies a strided view.
    let parts: Vec<Tensor> = (0..N)
        .map(|i| parts.narrow(0, i, 1)?.squeeze(0))
        .collect::<Result<_>>()?;
    parts
        .try_into()
        .map_err(|_| candle_core::Error::Msg("split_heads made the wrong number of parts".into()))
}

/// `keys` `(batch, heads, k_len, head_dim)` as a view of dimension-major storage (stride 1
/// along `k_len`), the layout decoding steps score fastest; see `attention`.
pub fn keys_by_dimension(keys: &Tensor) -> Result<Tensor> {
    keys.transpose(2, 3)?.contiguous()?.transpose(2, 3)
}

/// Batched matmuls and softmax as candle ops: other devices and dtypes.
fn with_candle_ops(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (batch, heads, q_len, head_dim) = query.dims4()?;
    let scores = query.contiguous()?.matmul(&keys.contiguous()?.t()?)?;
    let scores = (scores * scale)?.broadcast_add(bias)?;
    candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
        .to_dtype(query.dtype())?
        .matmul(&values.contiguous()?)?
        .transpose(1, 2)?
        .reshape((batch, q_len, heads * head_dim))
}

/// Long queries on the CPU in f32: per (batch row, head), the scores and the weighted sum
/// of values are two GEMM calls made straight on the strided views, so no head is copied
/// or transposed, with one vectorized pass of scale, bias and softmax between them. Batch
/// (row, head) pairs spread over the cores, each running its GEMMs on one; candle's batched
/// matmul hands every such product to the thread pool on its own, which costs more than
/// the arithmetic at encoder sizes.
fn gemm_cpu(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    let (batch, heads, q_len, head_dim) = query.dims4()?;
    let k_len = keys.dim(2)?;
    if keys.dims4()? != (batch, heads, k_len, head_dim) || values.dims() != keys.dims() {
        candle_core::bail!("attention shapes disagree: {query:?} {keys:?} {values:?}")
    }
    let bias = bias.broadcast_as((batch, heads, q_len, k_len))?;
    let width = heads * head_dim;
    let out = with_views(query, keys, values, &bias, |q, k, v, bias| {
        let mut out = Vec::with_capacity(batch * q_len * width);
        let out_base = fast_math::SharedOut::spare(&mut out);
        // Too few (row, head) pairs to share out: let each GEMM use the cores instead.
        let parallelism = gemm_parallelism(batch * heads);
        (0..batch * heads)
            .into_par_iter()
            .for_each_init(Scratch::default, |scratch, task| {
                let (b, h) = (task / heads, task % heads);
                let head = Head {
                    q: q.data[q.at(b, h, 0)..].as_ptr(),
                    q_stride: q.strides[2],
                    k: k.data[k.at(b, h, 0)..].as_ptr(),
                    k_stride: k.strides[2],
                    k_dim_stride: k.strides[3],
                    v: v.data[v.at(b, h, 0)..].as_ptr(),
                    v_stride: v.strides[2],
                    out: out_base.at(b * q_len * width + h * head_dim),
                    out_stride: width,
                    q_len,
                    k_len,
                    head_dim,
                };
                let bias_row = |i: usize| (&bias.data[bias.at(b, h, i)..], bias.strides[3]);
                // SAFETY: query row i < q_len of head h starts at q.at(b, h, i) with head_dim
                // contiguous values (`unit_last`); key (j, d) at k.at(b, h, j) + d · k.strides[3]
                // and value row j at v.at(b, h, j): all inside their storage by the shapes
                // checked above. The head's output is rows b·q_len.. of `out` (q_len x
                // width), columns h·head_dim..+head_dim, and no other task writes there.
                unsafe { head.attend(scale, Some(&bias_row), scratch, parallelism) };
            });
        // SAFETY: the (row, head) tasks wrote every output.
        unsafe { out.set_len(batch * q_len * width) };
        out
    })?;
    Tensor::from_vec(out, (batch, q_len, width), query.device())
}

/// A batch's real tokens back to back, `(tokens, hidden)`, input `i` at rows `spans[i]`:
/// how an encoder's layers hold a padded batch on the CPU in f32, so that no linear layer
/// computes padding (a fifth to a third of the rows of length-bucketed batches) and
/// attention (`packed_self_attention`, `packed_biased_attention`) sees each input's own
/// keys only, as a padding mask would have it.
pub struct PackedRows {
    pub spans: Vec<Range<usize>>,
    /// Each input's first row, as an index tensor.
    firsts: Tensor,
    /// Where each real token sits in the padded `(batch · seq)` rows.
    real: Tensor,
}

impl PackedRows {
    /// The real tokens of a batch with `mask` `(batch, seq)`, or `None` where batches stay
    /// padded: off the CPU, in other dtypes than `hidden`'s f32, or with an empty input.
    pub fn new(mask: &Tensor, hidden: &Tensor) -> Result<Option<Self>> {
        let device = hidden.device();
        if !device.is_cpu() || hidden.dtype() != DType::F32 {
            return Ok(None);
        }
        let mask = mask.to_vec2::<u32>()?;
        let seq = mask.first().map_or(0, Vec::len);
        let (mut spans, mut real) = (Vec::with_capacity(mask.len()), Vec::new());
        for (row, row_mask) in mask.iter().enumerate() {
            let start = real.len();
            real.extend(
                (0..seq)
                    .filter(|&i| row_mask[i] != 0)
                    .map(|i| (row * seq + i) as u32),
            );
            spans.push(start..real.len());
        }
        if spans.iter().any(Range::is_empty) {
            return Ok(None);
        }
        let firsts: Vec<u32> = spans.iter().map(|s| s.start as u32).collect();
        Ok(Some(PackedRows {
            firsts: Tensor::new(firsts, device)?,
            real: Tensor::new(real, device)?,
            spans,
        }))
    }

    /// `(batch, seq, hidden)` states → their real rows `(tokens, hidden)`.
    pub fn pack(&self, hidden: &Tensor) -> Result<Tensor> {
        let (batch, seq, width) = hidden.dims3()?;
        hidden
            .reshape((batch * seq, width))?
            .index_select(&self.real, 0)
    }

    /// The first row of every input.
    pub fn first_positions(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden.index_select(&self.firsts, 0)
    }

    /// `(tokens, hidden)` back to `(batch, seq, hidden)`, zeros at the padding.
    pub fn unpack(&self, hidden: &Tensor, (batch, seq): (usize, usize)) -> Result<Tensor> {
        let width = hidden.dim(1)?;
        Tensor::zeros((batch * seq, width), hidden.dtype(), hidden.device())?
            .index_add(&self.real, hidden, 0)?
            .reshape((batch, seq, width))
    }
}

/// Self-attention over packed inputs (`PackedRows`): `qkv` `(tokens, 3 · heads · head_dim)`
/// is a fused query/key/value projection. Returns `(tokens, heads · head_dim)`, or with
/// `first_only` `(spans.len(), heads · head_dim)`: each input's first position only.
/// CPU f32 only.
pub fn packed_self_attention(
    qkv: &Tensor,
    spans: &[Range<usize>],
    heads: usize,
    head_dim: usize,
    scale: f32,
    first_only: bool,
) -> Result<Tensor> {
    let width = heads * head_dim;
    let (tokens, fused) = qkv.dims2()?;
    if fused != 3 * width {
        candle_core::bail!("packed attention over {qkv:?} with {heads} heads of {head_dim}")
    }
    with_f32_rows(qkv, |qkv| {
        let part = |i: usize| Part {
            data: &qkv[i * width..],
            stride: fused,
        };
        let shape = (tokens, heads, head_dim);
        packed_attention(
            [part(0), part(1), part(2)],
            spans,
            shape,
            scale,
            first_only,
            None,
        )
    })
}

/// T5's encoder self-attention over packed inputs (`PackedRows`): unscaled scores plus
/// `position_bias` `(1, heads, seq, seq)`, whose top-left corner serves every input (its
/// positions count from 0). `query` is `(tokens, heads · head_dim)` and `keys_values` the
/// fused `(tokens, 2 · heads · head_dim)`. Returns `(tokens, heads · head_dim)`. CPU f32.
pub fn packed_biased_attention(
    query: &Tensor,
    keys_values: &Tensor,
    spans: &[Range<usize>],
    (heads, head_dim): (usize, usize),
    position_bias: &Tensor,
) -> Result<Tensor> {
    let width = heads * head_dim;
    let tokens = query.dim(0)?;
    let (one, bias_heads, seq, keys) = position_bias.dims4()?;
    let longest = spans.iter().map(Range::len).max().unwrap_or(0);
    if query.dims() != [tokens, width]
        || keys_values.dims() != [tokens, 2 * width]
        || (one, bias_heads, keys) != (1, heads, seq)
        || longest > seq
    {
        candle_core::bail!(
            "packed attention over {query:?} and {keys_values:?} with bias {position_bias:?}"
        )
    }
    with_f32_rows(query, |query| {
        with_f32_rows(keys_values, |kv| {
            with_f32_rows(position_bias, |bias| {
                let part = |data, stride| Part { data, stride };
                let parts = [
                    part(query, width),
                    part(kv, 2 * width),
                    part(&kv[width..], 2 * width),
                ];
                let bias = PositionBias { data: bias, seq };
                let shape = (tokens, heads, head_dim);
                packed_attention(parts, spans, shape, 1.0, false, Some(bias))
            })
        })
    })
}

/// `f` on the values of a CPU f32 tensor, row-major.
fn with_f32_rows<R>(xs: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    fast_math::with_f32_slice(xs, f)?
        .ok_or_else(|| candle_core::Error::Msg("packed attention runs on CPU f32 only".into()))?
}

/// One part (query, keys or values) of packed projections: token `t`'s head `h` starts at
/// `data[t · stride + h · head_dim]`.
#[derive(Clone, Copy)]
struct Part<'a> {
    data: &'a [f32],
    stride: usize,
}

/// A `(heads, seq, seq)` additive bias that every input reads from its top-left corner.
#[derive(Clone, Copy)]
struct PositionBias<'a> {
    data: &'a [f32],
    seq: usize,
}

/// Attention of `tokens` packed rows, one task per (input, head).
fn packed_attention<'b>(
    [query, keys, values]: [Part; 3],
    spans: &[Range<usize>],
    (tokens, heads, head_dim): (usize, usize, usize),
    scale: f32,
    first_only: bool,
    bias: Option<PositionBias<'b>>,
) -> Result<Tensor> {
    let width = heads * head_dim;
    // The spans must cover the rows in order, each input at least one: every output row is
    // then written by exactly one task.
    let mut next = 0;
    let tiled = spans.iter().all(|span| {
        let follows = span.start == next && span.end > span.start;
        next = span.end;
        follows
    });
    // Every part holds `tokens` rows of `width` values, `stride` apart.
    let holds = |part: &Part| {
        part.stride >= width && part.data.len() + part.stride >= tokens * part.stride + width
    };
    let bias_holds = bias.is_none_or(|b| b.data.len() == heads * b.seq * b.seq);
    if !tiled || next != tokens || ![query, keys, values].iter().all(holds) || !bias_holds {
        candle_core::bail!("packed attention over {tokens} rows with spans {spans:?}")
    }
    let out_rows = if first_only { spans.len() } else { tokens };
    let mut out = Vec::with_capacity(out_rows * width);
    let out_base = fast_math::SharedOut::spare(&mut out);
    let parallelism = gemm_parallelism(spans.len() * heads);
    (0..spans.len() * heads)
        .into_par_iter()
        .for_each_init(Scratch::default, |scratch, task| {
            let (input, h) = (task / heads, task % heads);
            let span = &spans[input];
            let first_out = if first_only { input } else { span.start };
            let at = |part: Part| part.data[span.start * part.stride + h * head_dim..].as_ptr();
            let head = Head {
                q: at(query),
                q_stride: query.stride,
                k: at(keys),
                k_stride: keys.stride,
                k_dim_stride: 1,
                v: at(values),
                v_stride: values.stride,
                out: out_base.at(first_out * width + h * head_dim),
                out_stride: width,
                q_len: if first_only { 1 } else { span.len() },
                k_len: span.len(),
                head_dim,
            };
            let bias_row =
                bias.map(|b| move |i: usize| (&b.data[(h * b.seq + i) * b.seq..], 1usize));
            let bias_row = bias_row
                .as_ref()
                .map(|f| f as &dyn Fn(usize) -> (&'b [f32], usize));
            // SAFETY: the span's rows of every part lie inside its data (checked above),
            // each with the head's head_dim values at column h·head_dim; bias row i of head h
            // holds seq >= span.len() keys. The head writes head_dim columns of its own
            // output rows (the spans do not overlap), which no other task writes.
            unsafe { head.attend(scale, bias_row, scratch, parallelism) };
        });
    // SAFETY: the (input, head) tasks wrote every output: the spans tile the rows.
    unsafe { out.set_len(out_rows * width) };
    Tensor::from_vec(out, (out_rows, width), &Device::Cpu)
}

/// Each task's GEMMs on one core when there are tasks enough for every core.
fn gemm_parallelism(tasks: usize) -> gemm::Parallelism {
    if tasks >= rayon::current_num_threads() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// Scores and probabilities of one head, reused by a thread's tasks.
#[derive(Default)]
struct Scratch {
    scores: Vec<f32>,
    probs: Vec<f32>,
}

/// One head of one input, as raw row-major operands: query rows `q_stride` apart, key `j`
/// value `d` at `k + j · k_stride + d · k_dim_stride`, value rows `v_stride` apart, output
/// rows `out_stride` apart, each of `head_dim` values.
struct Head {
    q: *const f32,
    q_stride: usize,
    k: *const f32,
    k_stride: usize,
    k_dim_stride: usize,
    v: *const f32,
    v_stride: usize,
    out: *mut f32,
    out_stride: usize,
    q_len: usize,
    k_len: usize,
    head_dim: usize,
}

impl Head {
    /// Writes `softmax(scale · q kᵀ + bias) v`, where `bias(i)` is query row `i`'s bias
    /// and its stride along the keys, or no bias at all.
    ///
    /// # Safety
    /// Every operand the strides and lengths describe lies inside its buffer, and no other
    /// thread writes the output rows meanwhile.
    unsafe fn attend<'b>(
        &self,
        scale: f32,
        bias: Option<&dyn Fn(usize) -> (&'b [f32], usize)>,
        scratch: &mut Scratch,
        parallelism: gemm::Parallelism,
    ) {
        let (q_len, k_len, head_dim) = (self.q_len, self.k_len, self.head_dim);
        let Scratch { scores, probs } = scratch;
        // Every element is written by the GEMM (scores) or the softmax (probs) before use.
        scores.resize(q_len * k_len, 0.0);
        probs.resize(q_len * k_len, 0.0);
        // SAFETY (both products): the caller's promise; `scores` and `probs` are q_len x
        // k_len, row-major. The keys are read as the transposed head_dim x k_len matrix.
        unsafe {
            overwriting_product(
                (q_len, k_len, head_dim),
                (scores.as_mut_ptr(), k_len),
                (self.q, self.q_stride),
                (self.k, self.k_stride, self.k_dim_stride),
                parallelism,
            )
        };
        for (i, (scores, probs)) in scores
            .chunks_exact(k_len)
            .zip(probs.chunks_exact_mut(k_len))
            .enumerate()
        {
            fast_math::with_simd(
                #[inline(always)]
                || match bias {
                    Some(bias) => {
                        let (row, stride) = bias(i);
                        fast_math::biased_softmax(scores, scale, row, stride, probs)
                    }
                    None => fast_math::scaled_softmax(scores, scale, probs),
                },
            );
        }
        unsafe {
            overwriting_product(
                (q_len, head_dim, k_len),
                (self.out, self.out_stride),
                (probs.as_ptr(), k_len),
                (self.v, 1, self.v_stride),
                parallelism,
            )
        };
    }
}

/// `out = lhs · rhs` for `(m, n, k)`, through gemm: `out` `(m, n)` and `lhs` `(m, k)` have
/// unit column strides and the given row strides, `rhs` `(k, n)` its column and row
/// strides. The output is written, never read.
///
/// # Safety
/// Every element the shapes and strides describe lies inside its buffer, and no other
/// thread touches the output meanwhile.
unsafe fn overwriting_product(
    (m, n, k): (usize, usize, usize),
    (out, out_row): (*mut f32, usize),
    (lhs, lhs_row): (*const f32, usize),
    (rhs, rhs_column, rhs_row): (*const f32, usize, usize),
    parallelism: gemm::Parallelism,
) {
    let stride = |s: usize| s as isize;
    // SAFETY: the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out,
            1,
            stride(out_row),
            false,
            lhs,
            1,
            stride(lhs_row),
            rhs,
            stride(rhs_column),
            stride(rhs_row),
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Runs `f` on CPU f32 views of the attention operands: query and values with their head
/// dimension made contiguous, keys with that or their key dimension contiguous (the other
/// dimensions may stride anywhere).
fn with_views<R>(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
    f: impl FnOnce(View, View, View, View) -> R,
) -> Result<R> {
    let keys = if keys.stride()[2] == 1 {
        keys.clone()
    } else {
        unit_last(keys)?
    };
    let (query, keys, values) = (unit_last(query)?, keys, unit_last(values)?);
    let (q_storage, q_layout) = query.storage_and_layout();
    let (k_storage, k_layout) = keys.storage_and_layout();
    let (v_storage, v_layout) = values.storage_and_layout();
    let (b_storage, b_layout) = bias.storage_and_layout();
    Ok(f(
        view(&q_storage, q_layout)?,
        view(&k_storage, k_layout)?,
        view(&v_storage, v_layout)?,
        view(&b_storage, b_layout)?,
    ))
}

/// The tensor itself when its last dimension is contiguous, else a contiguous copy.
fn unit_last(t: &Tensor) -> Result<Tensor> {
    if t.stride()[3] == 1 {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// A tensor's f32 elements with its strides, on the CPU.
struct View<'a> {
    data: &'a [f32],
    strides: [usize; 4],
}

fn view<'a>(storage: &'a Storage, layout: &candle_core::Layout) -> Result<View<'a>> {
    let Storage::Cpu(cpu) = storage else {
        candle_core::bail!("fused attention runs on the CPU only")
    };
    let stride = layout.stride();
    Ok(View {
        data: &cpu.as_slice::<f32>()?[layout.start_offset()..],
        strides: [stride[0], stride[1], stride[2], stride[3]],
    })
}

impl View<'_> {
    fn at(&self, b: usize, h: usize, i: usize) -> usize {
        b * self.strides[0] + h * self.strides[1] + i * self.strides[2]
    }
}

fn fused_cpu(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
    scale: f32,
    group: usize,
) -> Result<Tensor> {
    let (batch, heads, q_len, head_dim) = query.dims4()?;
    let k_len = keys.dim(2)?;
    let bias = bias.broadcast_as((batch / group, heads, q_len, k_len))?;
    let width = heads * head_dim;
    let out = with_views(query, keys, values, &bias, |q, k, v, bias| {
        let by_dimension = k.strides[3] != 1;
        let mut out = vec![0f32; batch * q_len * width];
        // One task per (batch row, query position, head): a decoding step of one row still
        // shares its heads between the cores, and each task writes one contiguous block.
        out.par_chunks_mut(head_dim).enumerate().for_each_init(
            || (vec![0f32; k_len], vec![0f32; k_len]),
            |(raw, probs), (task, out_head)| {
                fast_math::with_simd(
                    #[inline(always)]
                    || {
                        let (row, h) = (task / heads, task % heads);
                        let (b, i) = (row / q_len, row % q_len);
                        // The row of keys, values and bias this query row reads.
                        let kb = b / group;
                        let q_row = &q.data[q.at(b, h, i)..][..head_dim];
                        if by_dimension {
                            let keys = &k.data[k.at(kb, h, 0)..];
                            fast_math::weighted_sum(q_row, keys, k.strides[3], raw);
                        } else {
                            for (j, score) in raw.iter_mut().enumerate() {
                                let k_row = &k.data[k.at(kb, h, j)..][..head_dim];
                                *score = fast_math::dot(q_row, k_row);
                            }
                        }
                        let bias_row = &bias.data[bias.at(kb, h, i)..];
                        fast_math::biased_softmax(raw, scale, bias_row, bias.strides[3], probs);
                        let values = &v.data[v.at(kb, h, 0)..];
                        fast_math::weighted_sum(probs, values, v.strides[2], out_head);
                    },
                )
            },
        );
        out
    })?;
    Tensor::from_vec(out, (batch, q_len, width), query.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_paths_match_candle_ops_with_strided_cache_views_and_masks() -> Result<()> {
        let device = Device::Cpu;
        let (batch, heads, q_len, k_len, head_dim) = (2, 3, 4, 6, 16);
        let query = Tensor::randn(0f32, 1.0, (batch, heads, q_len, head_dim), &device)?;
        // Keys and values as views of a larger preallocated cache.
        let cache = Tensor::randn(0f32, 1.0, (batch, heads, 10, head_dim), &device)?;
        let keys = cache.narrow(2, 0, k_len)?;
        let values = (cache.narrow(2, 2, k_len)? * 0.5)?;
        let mask = Tensor::new(
            &[[1f32, 1., 1., 1., 0., 0.], [1., 1., 1., 1., 1., 1.]],
            &device,
        )?;
        let padding = ((mask - 1.0)? * 1e30)?.reshape((batch, 1, 1, k_len))?;
        let position = Tensor::randn(0f32, 1.0, (1, heads, q_len, k_len), &device)?;
        let by_dimension = keys_by_dimension(&keys)?;
        assert_eq!(by_dimension.stride()[2], 1);
        for bias in [padding.clone(), padding.broadcast_add(&position)?] {
            let reference = with_candle_ops(&query, &keys, &values, &bias, 0.25)?;
            let fused = fused_cpu(&query, &keys, &values, &bias, 0.25, 1)?;
            let gemms = gemm_cpu(&query, &keys, &values, &bias, 0.25)?;
            let fused_by_dimension = fused_cpu(&query, &by_dimension, &values, &bias, 0.25, 1)?;
            let gemms_by_dimension = gemm_cpu(&query, &by_dimension, &values, &bias, 0.25)?;
            let lone_row = gemm_cpu(
                &query.narrow(0, 1, 1)?,
                &keys.narrow(0, 1, 1)?,
                &values.narrow(0, 1, 1)?,
                &bias.narrow(0, 1, 1)?,
                0.25,
            )?;
            let gap = (lone_row - reference.narrow(0, 1, 1)?)?.abs()?.max_all()?;
            assert!(gap.to_scalar::<f32>()? < 1e-5, "GEMM attention on one row");
            for (path, got) in [
                ("fused", fused),
                ("GEMMs", gemms),
                ("fused, keys by dimension", fused_by_dimension),
                ("GEMMs, keys by dimension", gemms_by_dimension),
            ] {
                let gap = (got - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    gap < 1e-5,
                    "{path} attention is {gap} away from candle's ops"
                );
            }
        }
        Ok(())
    }

    /// Packed inputs give each real position what a padded, masked batch gives it.
    #[test]
    fn packed_inputs_attend_as_a_padded_batch_does() -> Result<()> {
        let device = Device::Cpu;
        let (heads, head_dim, lengths) = (3, 16, [5usize, 1, 12]);
        let (inputs, seq, width) = (lengths.len(), 12, 3 * 16);
        let qkv = Tensor::randn(0f32, 1.0, (inputs, seq, 3 * width), &device)?;
        let mask: Vec<f32> = lengths
            .iter()
            .flat_map(|&n| (0..seq).map(move |i| if i < n { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (inputs, seq), &device)?;
        let bias = ((mask - 1.0)? * 1e30)?.reshape((inputs, 1, 1, seq))?;
        let [query, keys, values] = split_heads(&qkv, heads, head_dim)?;
        let padded = with_candle_ops(&query, &keys, &values, &bias, 0.3)?;
        let (mut spans, mut rows, mut tokens) = (Vec::new(), Vec::new(), 0);
        for (i, &n) in lengths.iter().enumerate() {
            spans.push(tokens..tokens + n);
            rows.push(qkv.get(i)?.narrow(0, 0, n)?);
            tokens += n;
        }
        let packed = Tensor::cat(&rows, 0)?;
        // Spans with a gap, an overlap, an empty input or rows left over would leave rows
        // unwritten or written twice.
        for bad in [
            vec![0..5, 6..18],
            vec![0..6, 5..18],
            vec![0..5, 5..5, 5..18],
            vec![0..5, 5..6, 6..17],
        ] {
            assert!(packed_self_attention(&packed, &bad, heads, head_dim, 0.3, false).is_err());
        }
        let all = packed_self_attention(&packed, &spans, heads, head_dim, 0.3, false)?;
        let firsts = packed_self_attention(&packed, &spans, heads, head_dim, 0.3, true)?;
        for (i, span) in spans.iter().enumerate() {
            let want = padded.get(i)?.narrow(0, 0, span.len())?;
            let gap = (all.narrow(0, span.start, span.len())? - &want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(gap < 1e-5, "input {i}: {gap}");
            let gap = (firsts.get(i)? - want.get(0)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(gap < 1e-5, "input {i}, first position: {gap}");
        }
        Ok(())
    }

    #[test]
    fn beams_may_share_the_keys_of_their_input() -> Result<()> {
        let device = Device::Cpu;
        let (inputs, beams, heads, k_len, head_dim) = (2, 3, 2, 5, 16);
        let keys = Tensor::randn(0f32, 1.0, (inputs, heads, k_len, head_dim), &device)?;
        let values = Tensor::randn(0f32, 1.0, (inputs, heads, k_len, head_dim), &device)?;
        let mask = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &device)?;
        let bias = ((mask - 1.0)? * 1e30)?.reshape((inputs, 1, 1, k_len))?;
        let rows = Tensor::new(&[0u32, 0, 0, 1, 1, 1], &device)?;
        let repeated = |t: &Tensor| t.index_select(&rows, 0);
        // One query position takes the fused loop; twelve take the GEMMs.
        for q_len in [1, 12] {
            let query =
                Tensor::randn(0f32, 1.0, (inputs * beams, heads, q_len, head_dim), &device)?;
            let want = with_candle_ops(
                &query,
                &repeated(&keys)?,
                &repeated(&values)?,
                &repeated(&bias)?,
                0.5,
            )?;
            for keys in [keys.clone(), keys_by_dimension(&keys)?] {
                let got = attention(&query, &keys, &values, &bias, 0.5)?;
                let gap = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(gap < 1e-5, "{q_len} query positions: {gap}");
            }
        }
        Ok(())
    }
}
