//! Scaled dot-product attention, shared by every architecture.
//!
//! Decoding steps (a few query positions) on the CPU in f32 run as one fused pass per
//! (row, position): scores, softmax and the weighted sum of values stay in cache, and one
//! parallel dispatch covers all heads. With candle's batched matmul each head is its own
//! tiny GEMM with its own thread hand-off, which costs more than the arithmetic there.
//! Longer queries (prompts, encoders) have GEMM-sized heads and take candle's ops, as do
//! other devices and dtypes.

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
    if cpu_f32 && query.dim(2)? <= FUSED_MAX_QUERIES {
        return fused_cpu(query, keys, values, bias, scale as f32);
    }
    with_gemms(query, keys, values, bias, scale, cpu_f32)
}

/// Per-head GEMMs around the softmax, which is one vectorized pass (scale, bias, softmax)
/// on the CPU in f32 (`fast_softmax`) and candle's ops elsewhere.
fn with_gemms(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
    scale: f64,
    fast_softmax: bool,
) -> Result<Tensor> {
    let (batch, heads, q_len, head_dim) = query.dims4()?;
    let scores = query.contiguous()?.matmul(&keys.contiguous()?.t()?)?;
    let probs = if fast_softmax {
        biased_softmax_cpu(&scores, bias, scale as f32)?
    } else {
        let scores = (scores * scale)?.broadcast_add(bias)?;
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(query.dtype())?
    };
    probs
        .matmul(&values.contiguous()?)?
        .transpose(1, 2)?
        .reshape((batch, q_len, heads * head_dim))
}

/// `softmax(scale · scores + bias)` over the last dimension of contiguous CPU f32
/// `scores` `(batch, heads, q_len, k_len)`, in one vectorized pass.
fn biased_softmax_cpu(scores: &Tensor, bias: &Tensor, scale: f32) -> Result<Tensor> {
    let (batch, heads, q_len, k_len) = scores.dims4()?;
    let bias = bias.broadcast_as((batch, heads, q_len, k_len))?;
    let (s_storage, s_layout) = scores.storage_and_layout();
    let (b_storage, b_layout) = bias.storage_and_layout();
    let (s, bias) = (view(&s_storage, s_layout)?, view(&b_storage, b_layout)?);
    let mut probs = vec![0f32; batch * heads * q_len * k_len];
    probs
        .par_chunks_mut(k_len)
        .enumerate()
        .for_each(|(row, probs)| {
            let (b, h, i) = (row / (heads * q_len), row / q_len % heads, row % q_len);
            let scores = &s.data[s.at(b, h, i)..][..k_len];
            let bias_row = &bias.data[bias.at(b, h, i)..];
            fast_math::with_simd(
                #[inline(always)]
                || fast_math::biased_softmax(scores, scale, bias_row, bias.strides[3], probs),
            )
        });
    drop((s_storage, b_storage));
    Tensor::from_vec(probs, (batch, heads, q_len, k_len), scores.device())
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
) -> Result<Tensor> {
    let (batch, heads, q_len, head_dim) = query.dims4()?;
    let k_len = keys.dim(2)?;
    let bias = bias.broadcast_as((batch, heads, q_len, k_len))?;
    // The head dimension must be contiguous; the others may stride anywhere.
    let unit_last = |t: &Tensor| -> Result<Tensor> {
        if t.stride()[3] == 1 {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    let (query, keys, values) = (unit_last(query)?, unit_last(keys)?, unit_last(values)?);
    let (q_storage, q_layout) = query.storage_and_layout();
    let (k_storage, k_layout) = keys.storage_and_layout();
    let (v_storage, v_layout) = values.storage_and_layout();
    let (b_storage, b_layout) = bias.storage_and_layout();
    let (q, k, v, bias) = (
        view(&q_storage, q_layout)?,
        view(&k_storage, k_layout)?,
        view(&v_storage, v_layout)?,
        view(&b_storage, b_layout)?,
    );

    let width = heads * head_dim;
    let mut out = vec![0f32; batch * q_len * width];
    // One task per (batch row, query position): it writes one contiguous output row.
    out.par_chunks_mut(width).enumerate().for_each_init(
        || (vec![0f32; k_len], vec![0f32; k_len]),
        |(raw, probs), (row, out_row)| {
            fast_math::with_simd(
                #[inline(always)]
                || {
                    let (b, i) = (row / q_len, row % q_len);
                    for h in 0..heads {
                        let q_row = &q.data[q.at(b, h, i)..][..head_dim];
                        for (j, score) in raw.iter_mut().enumerate() {
                            let k_row = &k.data[k.at(b, h, j)..][..head_dim];
                            *score = fast_math::dot(q_row, k_row);
                        }
                        let bias_row = &bias.data[bias.at(b, h, i)..];
                        fast_math::biased_softmax(raw, scale, bias_row, bias.strides[3], probs);
                        let out_head = &mut out_row[h * head_dim..][..head_dim];
                        out_head.fill(0.0);
                        for (j, &p) in probs.iter().enumerate() {
                            let v_row = &v.data[v.at(b, h, j)..][..head_dim];
                            axpy(p, v_row, out_head);
                        }
                    }
                },
            )
        },
    );
    drop((q_storage, k_storage, v_storage, b_storage));
    Tensor::from_vec(out, (batch, q_len, width), query.device())
}

/// `y += alpha · x`.
#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
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
        for bias in [padding.clone(), padding.broadcast_add(&position)?] {
            let reference = with_gemms(&query, &keys, &values, &bias, 0.25, false)?;
            let fused = attention(&query, &keys, &values, &bias, 0.25)?;
            let fast_softmax = with_gemms(&query, &keys, &values, &bias, 0.25, true)?;
            for (path, got) in [("fused", fused), ("GEMM + fast softmax", fast_softmax)] {
                let gap = (got - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    gap < 1e-5,
                    "{path} attention is {gap} away from candle's ops"
                );
            }
        }
        Ok(())
    }
}
