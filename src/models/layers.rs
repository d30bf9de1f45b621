//! Small building blocks shared by the architectures.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

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
        match self {
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
            Activation::Silu => xs.silu(),
            Activation::Tanh => xs.tanh(),
        }
    }
}

pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    candle_nn::linear(in_dim, out_dim, vb)
}

/// Several projections of the same input fused into one matrix, so that one GEMM
/// replaces several (query, key and value).
pub fn fused_linear(in_dim: usize, out_dims: &[usize], vbs: &[VarBuilder]) -> Result<Linear> {
    let mut weights = Vec::with_capacity(vbs.len());
    let mut biases = Vec::with_capacity(vbs.len());
    for (&out_dim, vb) in out_dims.iter().zip(vbs) {
        weights.push(vb.get((out_dim, in_dim), "weight")?);
        biases.push(vb.get(out_dim, "bias")?);
    }
    Ok(Linear::new(
        Tensor::cat(&weights, 0)?,
        Some(Tensor::cat(&biases, 0)?),
    ))
}

/// A LayerNorm stored as `weight`/`bias`, or as `gamma`/`beta` in older BERT checkpoints
/// (transformers renames those on load).
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
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
