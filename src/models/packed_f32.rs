//! Products of f32 rows with f32 weights packed at load, on AVX-512 or AVX2 + FMA, for any
//! number of rows.
//!
//! A GEMM library packs the weight matrix into panels on every call. That is cheap next to
//! the arithmetic when thousands of rows meet the weights (an encoder), but a decoding step
//! has 1 to 64 rows, and there the repacking cost as much as the product itself. Here the
//! weights are packed once, when the model loads, in panels of 16 outputs with the 16
//! weights of each input side by side, so that a register tile of up to `TILE_ROWS` rows
//! by 64 outputs reads one vector of weights per 16 outputs per input and broadcasts each
//! input value: 24 independent multiply-adds per 10 loads.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::fast_math::{panel_masks, tiled_product, Avx2TileEdge, SharedOut, PANEL};
use super::weight_cache::{Plain, Slab, WeightCache};

/// Input rows per register tile. On AVX-512, 6 x 4 panels are 24 sums, beside 4 weight
/// vectors and a broadcast input in the 32 vector registers; on AVX2 a panel is two
/// vectors, and 6 x 1 panel are 12 sums beside 2 weight vectors and a broadcast in 16.
const TILE_ROWS: usize = 6;
/// Panels per register tile on AVX-512.
const TILE_PANELS: usize = 4;
/// Bytes of input rows per parallel task: they stay in L2 (2 MB a core here) while the
/// task's panels pass by (measured: 1 MB outran 128-512 KB on encoder shapes).
const TASK_BYTES: usize = 1 << 20;

/// Whether this CPU runs the kernels here.
pub fn supported() -> bool {
    has_avx512() || (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// The weights of one panel for one input: a whole, aligned cache line.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Lanes([f32; PANEL]);

// SAFETY: 16 f32 in one 64-byte line: no padding, any bits.
unsafe impl Plain for Lanes {}

/// The layout's name in the weight cache.
pub const KIND: &str = "f32";

/// An f32 weight `(out_dim, in_dim)` laid out in panels of 16 outputs for the kernel.
#[derive(Debug, Clone)]
pub struct PackedF32 {
    out_dim: usize,
    in_dim: usize,
    /// Per panel, per input, the panel's 16 weights (zero past `out_dim`).
    lanes: Slab<Lanes>,
}

impl PackedF32 {
    /// From a weight stored `(out_dim, in_dim)`, row-major.
    pub fn new(weight: &[f32], out_dim: usize, in_dim: usize) -> Self {
        assert_eq!(weight.len(), out_dim * in_dim);
        Self::from_weights(out_dim, in_dim, |output, input| {
            weight[output * in_dim + input]
        })
    }

    /// From a weight stored `(in_dim, out_dim)` (GPT-2's Conv1D).
    pub fn from_in_out(weight: &[f32], in_dim: usize, out_dim: usize) -> Self {
        assert_eq!(weight.len(), out_dim * in_dim);
        Self::from_weights(out_dim, in_dim, |output, input| {
            weight[input * out_dim + output]
        })
    }

    /// Packs the weights `weight(output, input)`. Lanes are made in parallel and written
    /// in place, so no thread first fills the whole buffer; a lane reads 16 outputs of one
    /// input, and its neighbours the next inputs of the same outputs, which are in cache.
    fn from_weights(
        out_dim: usize,
        in_dim: usize,
        weight: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        let lanes = (0..out_dim.div_ceil(PANEL) * in_dim)
            .into_par_iter()
            .with_min_len(4096)
            .map(|index| {
                let (first, input) = (index / in_dim * PANEL, index % in_dim);
                Lanes(std::array::from_fn(|c| {
                    if first + c < out_dim {
                        weight(first + c, input)
                    } else {
                        0.0
                    }
                }))
            })
            .collect::<Vec<_>>();
        PackedF32 {
            out_dim,
            in_dim,
            lanes: lanes.into(),
        }
    }

    /// The weight `name` as an earlier load packed it into `cache`, if it is there.
    pub fn from_cache(
        cache: &WeightCache,
        name: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Option<Self> {
        let found = cache.find(name, KIND, out_dim, in_dim)?;
        Some(PackedF32 {
            out_dim,
            in_dim,
            lanes: found.slab(0, out_dim.div_ceil(PANEL) * in_dim)?,
        })
    }

    /// Adds the packed weight to the `cache` being written, as `name`.
    pub fn keep_in(&self, cache: &WeightCache, name: &str) {
        cache.keep(
            name,
            KIND,
            self.out_dim,
            self.in_dim,
            &[self.lanes.as_bytes()],
        );
    }

    /// The weights of output `output` (a row of the `(out_dim, in_dim)` weight), appended
    /// to `row`: a tied embedding table is read from here rather than stored twice.
    pub fn extend_with_output(&self, output: usize, row: &mut Vec<f32>) {
        assert!(output < self.out_dim);
        let panel = &self.lanes[output / PANEL * self.in_dim..][..self.in_dim];
        row.extend(panel.iter().map(|lane| lane.0[output % PANEL]));
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// `x` `(rows, in_dim)` times the weight transposed, plus `bias` on every row:
    /// `(rows, out_dim)`. Callers check `supported()` first.
    pub fn product(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert!(supported());
        self.product_on(has_avx512(), x, rows, bias)
    }

    /// `product` on the AVX-512 kernels or the AVX2 ones; the CPU has the features.
    fn product_on(&self, avx512: bool, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.in_dim);
        assert!(bias.is_none_or(|b| b.len() == self.out_dim));
        let tile =
            |row: usize, tile_rows: usize, panel: usize, tile_panels: usize, out: &SharedOut| {
                let first_out = panel * PANEL;
                let width = (tile_panels * PANEL).min(self.out_dim - first_out);
                let args = TileArgs {
                    x: x[row * self.in_dim..].as_ptr(),
                    weights: self.lanes[panel * self.in_dim..].as_ptr().cast(),
                    in_dim: self.in_dim,
                    bias: bias.map_or(std::ptr::null(), |bias| bias[first_out..].as_ptr()),
                    out: out.at(row * self.out_dim + first_out),
                    out_stride: self.out_dim,
                    width,
                };
                // SAFETY: the CPU has the kernel's features (checked above); the tile's rows
                // and panels lie inside `x`, `self.lanes` and `out`, and no other tile
                // writes these outputs.
                unsafe {
                    if avx512 {
                        avx512_tile(tile_rows, tile_panels, &args)
                    } else {
                        avx2_tile(tile_rows, tile_panels, &args)
                    }
                }
            };
        let task_rows =
            (TASK_BYTES / (4 * self.in_dim).max(1) / TILE_ROWS * TILE_ROWS).max(TILE_ROWS);
        // AVX2 has half the registers of half the width: one or two rows still need
        // several panels for enough independent sums to hide the multiply-add latency.
        let group = |task_rows: usize| match (avx512, task_rows) {
            (true, _) => TILE_PANELS,
            (false, 1) => 4,
            (false, 2) => 2,
            (false, _) => 1,
        };
        tiled_product(rows, self.out_dim, task_rows, TILE_ROWS, group, tile)
    }
}

struct TileArgs {
    /// The tile's first input row; rows `in_dim` apart.
    x: *const f32,
    /// The first panel's first input; panels `in_dim · PANEL` apart.
    weights: *const f32,
    in_dim: usize,
    /// The bias of the tile's first output, or null for none.
    bias: *const f32,
    /// The tile's first output; rows `out_stride` apart, the first `width` columns real.
    out: *mut f32,
    out_stride: usize,
    width: usize,
}

unsafe fn avx512_tile(rows: usize, panels: usize, args: &TileArgs) {
    match (rows, panels) {
        (1, 4) => avx512_kernel::<1, 4>(args),
        (2, 4) => avx512_kernel::<2, 4>(args),
        (3, 4) => avx512_kernel::<3, 4>(args),
        (4, 4) => avx512_kernel::<4, 4>(args),
        (5, 4) => avx512_kernel::<5, 4>(args),
        (6, 4) => avx512_kernel::<6, 4>(args),
        (1, 1) => avx512_kernel::<1, 1>(args),
        (2, 1) => avx512_kernel::<2, 1>(args),
        (3, 1) => avx512_kernel::<3, 1>(args),
        (4, 1) => avx512_kernel::<4, 1>(args),
        (5, 1) => avx512_kernel::<5, 1>(args),
        (6, 1) => avx512_kernel::<6, 1>(args),
        _ => unreachable!("no kernel for {rows} rows x {panels} panels"),
    }
}

unsafe fn avx2_tile(rows: usize, panels: usize, args: &TileArgs) {
    match (rows, panels) {
        (1, 4) => avx2_kernel::<1, 8>(args),
        (2, 2) => avx2_kernel::<2, 4>(args),
        (1, 1) => avx2_kernel::<1, 2>(args),
        (2, 1) => avx2_kernel::<2, 2>(args),
        (3, 1) => avx2_kernel::<3, 2>(args),
        (4, 1) => avx2_kernel::<4, 2>(args),
        (5, 1) => avx2_kernel::<5, 2>(args),
        (6, 1) => avx2_kernel::<6, 2>(args),
        _ => unreachable!("no kernel for {rows} rows x {panels} panels"),
    }
}

/// `R` input rows times `P` panels of 16 outputs, all inputs.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_kernel<const R: usize, const P: usize>(args: &TileArgs) {
    let panel_stride = args.in_dim * PANEL;
    let masks: [__mmask16; P] = panel_masks(args.width);
    let mut sums = [[_mm512_setzero_ps(); P]; R];
    if !args.bias.is_null() {
        let bias: [__m512; P] =
            std::array::from_fn(|p| _mm512_maskz_loadu_ps(masks[p], args.bias.add(p * PANEL)));
        sums = [bias; R];
    }
    for k in 0..args.in_dim {
        let mut weights = [_mm512_setzero_ps(); P];
        for (p, w) in weights.iter_mut().enumerate() {
            *w = _mm512_load_ps(args.weights.add(p * panel_stride + k * PANEL));
        }
        for (r, row) in sums.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*args.x.add(r * args.in_dim + k));
            for (sum, &w) in row.iter_mut().zip(&weights) {
                *sum = _mm512_fmadd_ps(x, w, *sum);
            }
        }
    }
    for (p, &mask) in masks.iter().enumerate() {
        for (r, sums) in sums.iter().enumerate() {
            _mm512_mask_storeu_ps(args.out.add(r * args.out_stride + p * PANEL), mask, sums[p]);
        }
    }
}

/// `R` input rows times `V` vectors of 8 outputs (`V / 2` panels), all inputs.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_kernel<const R: usize, const V: usize>(args: &TileArgs) {
    const LANES: usize = 8;
    let panel_stride = args.in_dim * PANEL;
    // The panel's two halves are 8 lanes apart; vector `v` holds outputs `8 v..8 v + 8`.
    let weight_at = |v: usize, k: usize| {
        args.weights
            .add(v / 2 * panel_stride + k * PANEL + v % 2 * LANES)
    };
    let edge = Avx2TileEdge::<V>::new(args.width);
    let mut sums: [[__m256; V]; R] = edge.start(args.bias);
    for k in 0..args.in_dim {
        let mut weights = [_mm256_setzero_ps(); V];
        for (v, w) in weights.iter_mut().enumerate() {
            *w = _mm256_load_ps(weight_at(v, k));
        }
        for (r, row) in sums.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*args.x.add(r * args.in_dim + k));
            for (sum, &w) in row.iter_mut().zip(&weights) {
                *sum = _mm256_fmadd_ps(x, w, *sum);
            }
        }
    }
    edge.store(&sums, args.out, args.out_stride);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(count: usize, seed: usize) -> Vec<f32> {
        (0..count)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Against the product computed one output at a time in f64: every tile height,
    /// partial panels, several tasks, an empty inner dimension, with and without a bias.
    #[test]
    fn packed_product_matches_the_plain_product() {
        if !supported() {
            eprintln!("skipped: this CPU has neither AVX-512 nor AVX2 + FMA");
            return;
        }
        // Each kernel family this CPU runs.
        let families = [true, false]
            .into_iter()
            .filter(|&avx512| !avx512 || has_avx512());
        for (rows, in_dim, out_dim) in [
            (1, 64, 16),
            (1, 7, 100),
            (2, 96, 130),
            (3, 33, 37),
            (5, 32, 70),
            (6, 16, 64),
            (13, 256, 100),
            (100, 40, 200),
            (4, 0, 20),
        ] {
            let weight = values(out_dim * in_dim, 1);
            let x = values(rows * in_dim, 2);
            let bias = values(out_dim, 3);
            let packed = PackedF32::new(&weight, out_dim, in_dim);
            assert!(packed.product(&[], 0, None).is_empty());
            // The same weight stored (in, out) packs to the same panels.
            let transposed: Vec<f32> = (0..in_dim * out_dim)
                .map(|i| weight[(i % out_dim) * in_dim + i / out_dim])
                .collect();
            let from_in_out = PackedF32::from_in_out(&transposed, in_dim, out_dim);
            assert!(packed
                .lanes
                .iter()
                .zip(from_in_out.lanes.iter())
                .all(|(a, b)| a.0 == b.0));
            let mut unpacked = Vec::new();
            (0..out_dim).for_each(|o| packed.extend_with_output(o, &mut unpacked));
            assert_eq!(unpacked, weight);
            for (avx512, with_bias) in families.clone().flat_map(|f| [(f, false), (f, true)]) {
                let got = packed.product_on(avx512, &x, rows, with_bias.then_some(&bias[..]));
                assert_eq!(got.len(), rows * out_dim);
                for r in 0..rows {
                    for c in 0..out_dim {
                        let dot: f64 = (0..in_dim)
                            .map(|k| x[r * in_dim + k] as f64 * weight[c * in_dim + k] as f64)
                            .sum();
                        let expected = dot + if with_bias { bias[c] as f64 } else { 0.0 };
                        let g = got[r * out_dim + c] as f64;
                        assert!(
                            (g - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                            "{rows}x{in_dim}x{out_dim} (avx512: {avx512}) row {r} col {c}: {g} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}
