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
    let fused = query.dim(2)? <= FUSED_MAX_QUERIES
        && matches!(query.device(), Device::Cpu)
        && [query, keys, values, bias]
            .iter()
            .all(|t| t.dtype() == DType::F32);
    if fused {
        fused_cpu(query, keys, values, bias, scale as f32)
    } else {
        with_candle_ops(query, keys, values, bias, scale)
    }
}

fn with_candle_ops(
    query: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (batch, heads, q_len, head_dim) = query.dims4()?;
    let dtype = query.dtype();
    let scores =
        (query.contiguous()?.matmul(&keys.contiguous()?.t()?)? * scale)?.broadcast_add(bias)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
    probs
        .matmul(&values.contiguous()?)?
        .transpose(1, 2)?
        .reshape((batch, q_len, heads * head_dim))
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
        || vec![0f32; k_len],
        |scores, (row, out_row)| {
            fast_math::with_simd(
                #[inline(always)]
                || {
                    let (b, i) = (row / q_len, row % q_len);
                    for h in 0..heads {
                        let q_row = &q.data[q.at(b, h, i)..][..head_dim];
                        let bias_row = bias.at(b, h, i);
                        let mut max = f32::NEG_INFINITY;
                        for (j, score) in scores.iter_mut().enumerate() {
                            let k_row = &k.data[k.at(b, h, j)..][..head_dim];
                            *score = fast_math::dot(q_row, k_row) * scale
                                + bias.data[bias_row + j * bias.strides[3]];
                            max = max.max(*score);
                        }
                        for score in scores.iter_mut() {
                            *score = fast_math::exp(*score - max);
                        }
                        let sum: f32 = scores.iter().sum();
                        let out_head = &mut out_row[h * head_dim..][..head_dim];
                        out_head.fill(0.0);
                        for (j, &p) in scores.iter().enumerate() {
                            let v_row = &v.data[v.at(b, h, j)..][..head_dim];
                            axpy(p / sum, v_row, out_head);
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
    fn fused_matches_candle_ops_with_strided_cache_views_and_masks() -> Result<()> {
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
            let fused = attention(&query, &keys, &values, &bias, 0.25)?;
            let reference = with_candle_ops(&query, &keys, &values, &bias, 0.25)?;
            let gap = (fused - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                gap < 1e-5,
                "fused attention is {gap} away from candle's ops"
            );
        }
        Ok(())
    }
}
