//! Products of f32 rows with Q8_0 weights on AVX512-VNNI or AVX2, for any number of rows.
//!
//! The arithmetic is ggml's Q8_0 dot product, as candle's own kernels do it: each row of
//! the input is quantized in blocks of 32 (`round(x / d)` with an f16 scale `d`), and per
//! block the integer dot product with the weight block is scaled by both f16 scales and
//! summed in f32. What differs is the shape of the work. candle's CPU kernel takes one input
//! row at a time against all the weights, which suits decoding; prompts, encoders and beams
//! have many rows, and there it fell behind the f32 GEMM. Here a register tile of up to
//! `TILE_ROWS` input rows meets 32 outputs at once (64 for one or two rows), so every
//! weight byte loaded serves all of those rows: `vpdpbusd` does 64 multiply-adds per
//! instruction against 16 for an f32 FMA.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, so weights are stored offset by 128
//! (`q + 128`, in 0..=255) and each row block's sum is corrected by `-128 · Σ q_x`,
//! computed once when the row is quantized. AVX2 has no `vpdpbusd`; its kernel takes the
//! weights back to signed bytes and multiplies their magnitudes by the inputs carrying the
//! weights' signs (`vpmaddubsw`: pairs of products stay within 16 bits), as ggml does.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::fast_math::{panel_masks, tiled_product, Avx2TileEdge, SharedOut, PANEL};
use super::layers::{Q8_0_BLOCK, Q8_0_BYTES};
use super::weight_cache::{Plain, Slab, WeightCache};

/// Input values per block, as in Q8_0.
const BLOCK: usize = Q8_0_BLOCK;
/// Weight lines per (panel, block): each holds four consecutive inputs of the 16 outputs,
/// an output's four together (the order `vpdpbusd` reads).
const LINES: usize = BLOCK / 4;
/// Input rows per register tile. With two panels that is 12 f32 and 12 i32 sums, which
/// stay in the 32 vector registers beside the weights (measured: 6 x 2 outran 8 x 1).
const TILE_ROWS: usize = 6;
/// Input rows per register tile on AVX2: 4 x 2 vectors are 8 i32 sums beside the weights'
/// 2 signed and 2 magnitude vectors in 16 registers (f32 sums change once per block).
const AVX2_TILE_ROWS: usize = 4;
/// Input rows per parallel task: their quantized values stay in L2 across panels.
const TASK_ROWS: usize = 64;

/// Whether this CPU runs the kernels here.
pub fn supported() -> bool {
    has_vnni()
        || (is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
}

fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// 64 offset weight bytes: four inputs of a panel's 16 outputs, one aligned cache line
/// (a load that straddles two lines costs two).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The 16 f16 weight scales of a (panel, block).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Scales([u8; PANEL * 2]);

// SAFETY: byte arrays of their alignment's size: no padding, any bits.
unsafe impl Plain for Line {}
unsafe impl Plain for Scales {}

/// The layout's name in the weight cache.
pub const KIND: &str = "q8";

/// A Q8_0 weight `(out_dim, in_dim)` laid out in panels of 16 outputs for the kernel.
#[derive(Debug, Clone)]
pub struct PackedQ8 {
    out_dim: usize,
    in_dim: usize,
    /// Per panel, per block of inputs, `LINES` lines.
    lines: Slab<Line>,
    /// Per panel, per block of inputs.
    scales: Slab<Scales>,
}

impl PackedQ8 {
    /// From ggml Q8_0 `blocks` of an `(out_dim, in_dim)` weight, row by row (34 bytes per
    /// block: f16 scale, 32 signed bytes). `in_dim` is a multiple of 32. Outputs past
    /// `out_dim` in the last panel are zero weights.
    pub fn from_q8_0_blocks(blocks: &[u8], out_dim: usize, in_dim: usize) -> Self {
        let blocks_per_row = in_dim / BLOCK;
        assert!(
            in_dim.is_multiple_of(BLOCK) && blocks.len() == out_dim * blocks_per_row * Q8_0_BYTES
        );
        let panels = out_dim.div_ceil(PANEL);
        // The block of output `row`, or `None` past `out_dim` (scale 0, zero weights).
        let block = |row: usize, b: usize| {
            let at = (row * blocks_per_row + b) * Q8_0_BYTES;
            (row < out_dim).then(|| &blocks[at..at + Q8_0_BYTES])
        };
        // Made in parallel and written in place (no thread fills the buffers first).
        let lines = (0..panels * blocks_per_row * LINES)
            .into_par_iter()
            .with_min_len(4096)
            .map(|index| {
                let (panel_block, line) = (index / LINES, index % LINES);
                let (panel, b) = (panel_block / blocks_per_row, panel_block % blocks_per_row);
                let mut bytes = [128u8; 64];
                for (c, four) in bytes.chunks_exact_mut(4).enumerate() {
                    if let Some(block) = block(panel * PANEL + c, b) {
                        for (byte, &q) in four.iter_mut().zip(&block[2 + 4 * line..]) {
                            *byte = (q as i8 as i16 + 128) as u8;
                        }
                    }
                }
                Line(bytes)
            })
            .collect::<Vec<_>>();
        let scales = (0..panels * blocks_per_row)
            .into_par_iter()
            .with_min_len(1024)
            .map(|index| {
                let (panel, b) = (index / blocks_per_row, index % blocks_per_row);
                let mut bytes = [0u8; PANEL * 2];
                for (c, scale) in bytes.chunks_exact_mut(2).enumerate() {
                    if let Some(block) = block(panel * PANEL + c, b) {
                        scale.copy_from_slice(&block[..2]);
                    }
                }
                Scales(bytes)
            })
            .collect::<Vec<_>>();
        PackedQ8 {
            out_dim,
            in_dim,
            lines: lines.into(),
            scales: scales.into(),
        }
    }

    /// The weight `name` as an earlier load packed it into `cache`, if it is there.
    pub fn from_cache(
        cache: &WeightCache,
        name: &str,
        out_dim: usize,
        in_dim: usize,
    ) -> Option<Self> {
        if !in_dim.is_multiple_of(BLOCK) {
            return None;
        }
        let found = cache.find(name, KIND, out_dim, in_dim)?;
        let panel_blocks = out_dim.div_ceil(PANEL) * in_dim / BLOCK;
        Some(PackedQ8 {
            out_dim,
            in_dim,
            lines: found.slab(0, panel_blocks * LINES)?,
            scales: found.slab(1, panel_blocks)?,
        })
    }

    /// Adds the packed weight to the `cache` being written, as `name`.
    pub fn keep_in(&self, cache: &WeightCache, name: &str) {
        let arrays = [self.lines.as_bytes(), self.scales.as_bytes()];
        cache.keep(name, KIND, self.out_dim, self.in_dim, &arrays);
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x` `(rows, in_dim)` times the weight transposed, plus `bias` on every row:
    /// `(rows, out_dim)`. Callers check `supported()` first.
    pub fn product(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert!(supported());
        self.product_on(has_vnni(), x, rows, bias)
    }

    /// `product` on the AVX512-VNNI kernels or the AVX2 ones; the CPU has the features.
    fn product_on(&self, vnni: bool, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        assert_eq!(x.len(), rows * self.in_dim);
        assert!(bias.is_none_or(|b| b.len() == self.out_dim));
        let input = QuantizedRows::new(x, rows, self.in_dim);
        // Several panels at once: each input value loaded serves all of them, and few
        // rows still give enough independent sums that the multiply-adds do not wait on
        // each other.
        let group = |task_rows: usize| match (vnni, task_rows) {
            (true, ..=2) => 4,
            (true, _) => 2,
            (false, 1) => 2,
            (false, _) => 1,
        };
        let tile_rows = if vnni { TILE_ROWS } else { AVX2_TILE_ROWS };
        let tile = |row: usize, tile_rows: usize, panel: usize, panels: usize, out: &SharedOut| {
            let args = self.tile_args(&input, row, panel, panels, bias, out);
            // SAFETY: the CPU has the kernel's features (checked above); the tile's rows and
            // panels lie inside `input`, `self.lines`, `self.scales` and `out`, and no other
            // tile writes these outputs.
            unsafe {
                if vnni {
                    vnni_tile(tile_rows, panels, &args)
                } else {
                    avx2_tile(tile_rows, panels, &args)
                }
            }
        };
        tiled_product(rows, self.out_dim, TASK_ROWS, tile_rows, group, tile)
    }

    /// The arguments of the tile whose first row is `row`, over `panels` consecutive panels
    /// from `panel`.
    fn tile_args(
        &self,
        input: &QuantizedRows,
        row: usize,
        panel: usize,
        panels: usize,
        bias: Option<&[f32]>,
        out: &SharedOut,
    ) -> TileArgs {
        let blocks = self.in_dim / BLOCK;
        let first_out = panel * PANEL;
        TileArgs {
            quants: input.quants[row * self.in_dim..].as_ptr(),
            scales: input.scales[row * blocks..].as_ptr(),
            corrections: input.corrections[row * blocks..].as_ptr(),
            lines: self.lines[panel * blocks * LINES..].as_ptr().cast(),
            weight_scales: self.scales[panel * blocks..].as_ptr().cast(),
            blocks,
            bias: bias.map_or(std::ptr::null(), |bias| bias[first_out..].as_ptr()),
            out: out.at(row * self.out_dim + first_out),
            out_stride: self.out_dim,
            width: (panels * PANEL).min(self.out_dim - first_out),
        }
    }
}

unsafe fn vnni_tile(rows: usize, panels: usize, args: &TileArgs) {
    match (rows, panels) {
        (1, 4) => vnni_kernel::<1, 4>(args),
        (2, 4) => vnni_kernel::<2, 4>(args),
        (1, 2) => vnni_kernel::<1, 2>(args),
        (2, 2) => vnni_kernel::<2, 2>(args),
        (3, 2) => vnni_kernel::<3, 2>(args),
        (4, 2) => vnni_kernel::<4, 2>(args),
        (5, 2) => vnni_kernel::<5, 2>(args),
        (6, 2) => vnni_kernel::<6, 2>(args),
        (1, 1) => vnni_kernel::<1, 1>(args),
        (2, 1) => vnni_kernel::<2, 1>(args),
        (3, 1) => vnni_kernel::<3, 1>(args),
        (4, 1) => vnni_kernel::<4, 1>(args),
        (5, 1) => vnni_kernel::<5, 1>(args),
        (6, 1) => vnni_kernel::<6, 1>(args),
        _ => unreachable!("no kernel for {rows} rows x {panels} panels"),
    }
}

unsafe fn avx2_tile(rows: usize, panels: usize, args: &TileArgs) {
    match (rows, panels) {
        (1, 2) => avx2_kernel::<1, 4>(args),
        (1, 1) => avx2_kernel::<1, 2>(args),
        (2, 1) => avx2_kernel::<2, 2>(args),
        (3, 1) => avx2_kernel::<3, 2>(args),
        (4, 1) => avx2_kernel::<4, 2>(args),
        _ => unreachable!("no kernel for {rows} rows x {panels} panels"),
    }
}

/// Input rows quantized to Q8_0: signed bytes, f32 copies of the f16 scales, and the
/// `-128 · Σ q` correction of each block.
struct QuantizedRows {
    quants: Vec<i8>,
    scales: Vec<f32>,
    corrections: Vec<i32>,
}

impl QuantizedRows {
    fn new(x: &[f32], rows: usize, in_dim: usize) -> Self {
        let blocks = rows * in_dim / BLOCK;
        let mut quantized = QuantizedRows {
            quants: vec![0; rows * in_dim],
            scales: vec![0.0; blocks],
            corrections: vec![0; blocks],
        };
        // Blocks per parallel task.
        const TASK: usize = 256;
        quantized
            .quants
            .par_chunks_mut(TASK * BLOCK)
            .zip(quantized.scales.par_chunks_mut(TASK))
            .zip(quantized.corrections.par_chunks_mut(TASK))
            .zip(x.par_chunks(TASK * BLOCK))
            .for_each(|(((quants, scales), corrections), x)| {
                super::fast_math::with_simd(
                    #[inline(always)]
                    || {
                        let blocks = quants
                            .chunks_exact_mut(BLOCK)
                            .zip(scales)
                            .zip(corrections)
                            .zip(x.chunks_exact(BLOCK));
                        for (((quants, scale), correction), x) in blocks {
                            *scale = super::layers::quantize_q8_0(x, quants).to_f32();
                            *correction = -128 * quants.iter().map(|&q| i32::from(q)).sum::<i32>();
                        }
                    },
                )
            });
        quantized
    }
}

struct TileArgs {
    /// The tile's first input row; rows `in_dim` apart (= blocks · 32).
    quants: *const i8,
    scales: *const f32,
    corrections: *const i32,
    /// The first panel's first block's lines (panels `blocks · LINES` lines apart) and
    /// scales (`blocks` apart).
    lines: *const u8,
    weight_scales: *const u8,
    blocks: usize,
    /// The bias of the tile's first output, or null for none.
    bias: *const f32,
    /// The tile's first output; rows `out_stride` apart, the first `width` columns real.
    out: *mut f32,
    out_stride: usize,
    width: usize,
}

/// `R` input rows times `P` panels of 16 outputs, all blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_kernel<const R: usize, const P: usize>(args: &TileArgs) {
    let in_dim = args.blocks * BLOCK;
    let panel_bytes = args.blocks * LINES * 64;
    let masks: [__mmask16; P] = panel_masks(args.width);
    let mut sums = [[_mm512_setzero_ps(); P]; R];
    if !args.bias.is_null() {
        let bias: [__m512; P] =
            std::array::from_fn(|p| _mm512_maskz_loadu_ps(masks[p], args.bias.add(p * PANEL)));
        sums = [bias; R];
    }
    for b in 0..args.blocks {
        let lines = |p: usize| args.lines.add(p * panel_bytes + b * LINES * 64);
        let scales_of = |p: usize| args.weight_scales.add((p * args.blocks + b) * PANEL * 2);
        let mut dots = [[_mm512_setzero_si512(); P]; R];
        for (r, row) in dots.iter_mut().enumerate() {
            let correction = _mm512_set1_epi32(*args.corrections.add(r * args.blocks + b));
            *row = [correction; P];
        }
        for group in 0..BLOCK / 4 {
            let mut weights = [_mm512_setzero_si512(); P];
            for (p, w) in weights.iter_mut().enumerate() {
                *w = _mm512_load_si512(lines(p).add(group * 64).cast());
            }
            for (r, row) in dots.iter_mut().enumerate() {
                let x = args.quants.add(r * in_dim + b * BLOCK + group * 4);
                let x = _mm512_set1_epi32(x.cast::<i32>().read_unaligned());
                for (dot, &w) in row.iter_mut().zip(&weights) {
                    *dot = _mm512_dpbusd_epi32(*dot, w, x);
                }
            }
        }
        for p in 0..P {
            let weight_scales = _mm512_cvtph_ps(_mm256_load_si256(scales_of(p).cast()));
            for (r, (sums, dots)) in sums.iter_mut().zip(&dots).enumerate() {
                let scale = _mm512_mul_ps(
                    weight_scales,
                    _mm512_set1_ps(*args.scales.add(r * args.blocks + b)),
                );
                sums[p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[p]), scale, sums[p]);
            }
        }
    }
    for (p, &mask) in masks.iter().enumerate() {
        for (r, sums) in sums.iter().enumerate() {
            _mm512_mask_storeu_ps(args.out.add(r * args.out_stride + p * PANEL), mask, sums[p]);
        }
    }
}

/// `R` input rows times `V` vectors of 8 outputs (`V / 2` panels), all blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_kernel<const R: usize, const V: usize>(args: &TileArgs) {
    let in_dim = args.blocks * BLOCK;
    let panel_bytes = args.blocks * LINES * 64;
    // Vector `v` holds outputs `8 v..8 v + 8`: half `v % 2` of panel `v / 2`.
    let half = |v: usize| v / 2 * panel_bytes + v % 2 * 32;
    let edge = Avx2TileEdge::<V>::new(args.width);
    let mut sums: [[__m256; V]; R] = edge.start(args.bias);
    let offset = _mm256_set1_epi8(i8::MIN);
    let ones = _mm256_set1_epi16(1);
    for b in 0..args.blocks {
        let mut dots = [[_mm256_setzero_si256(); V]; R];
        for group in 0..LINES {
            let at = b * LINES * 64 + group * 64;
            let mut signed = [_mm256_setzero_si256(); V];
            let mut magnitude = [_mm256_setzero_si256(); V];
            for v in 0..V {
                let line = _mm256_load_si256(args.lines.add(half(v) + at).cast());
                signed[v] = _mm256_xor_si256(line, offset);
                magnitude[v] = _mm256_abs_epi8(signed[v]);
            }
            for (r, row) in dots.iter_mut().enumerate() {
                let x = args.quants.add(r * in_dim + b * BLOCK + group * 4);
                let x = _mm256_set1_epi32(x.cast::<i32>().read_unaligned());
                for v in 0..V {
                    let pairs = _mm256_maddubs_epi16(magnitude[v], _mm256_sign_epi8(x, signed[v]));
                    row[v] = _mm256_add_epi32(row[v], _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        for v in 0..V {
            let scales = args
                .weight_scales
                .add((v / 2 * args.blocks + b) * PANEL * 2 + v % 2 * 16);
            let weight_scales = _mm256_cvtph_ps(_mm_load_si128(scales.cast()));
            for (r, (sums, dots)) in sums.iter_mut().zip(&dots).enumerate() {
                let scale = _mm256_mul_ps(
                    weight_scales,
                    _mm256_set1_ps(*args.scales.add(r * args.blocks + b)),
                );
                sums[v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[v]), scale, sums[v]);
            }
        }
    }
    edge.store(&sums, args.out, args.out_stride);
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use super::*;

    /// Deterministic values in [-1, 1) with a few large ones, as activations have.
    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(2_654_435_761).rotate_left(13) ^ seed;
                let x = (h % 20_000) as f32 / 10_000.0 - 1.0;
                if h.is_multiple_of(97) {
                    8.0 * x
                } else {
                    x
                }
            })
            .collect()
    }

    /// The packed kernel against candle's own Q8_0 product of the same weight: every tile
    /// height, a partial last panel, several tasks, with and without a bias.
    #[test]
    fn packed_product_matches_candles_q8_0_matmul() -> candle_core::Result<()> {
        if !supported() {
            eprintln!("skipped: this CPU has neither AVX512-VNNI nor AVX2");
            return Ok(());
        }
        // Each kernel family this CPU runs.
        let families = [true, false]
            .into_iter()
            .filter(|&vnni| !vnni || has_vnni());
        for (rows, in_dim, out_dim) in [
            (1, 64, 16),
            (1, 64, 100),
            (2, 96, 130),
            (3, 96, 37),
            (4, 32, 70),
            (13, 256, 100),
            (70, 128, 50),
        ] {
            let weight =
                Tensor::from_vec(values(out_dim * in_dim, 7), (out_dim, in_dim), &Device::Cpu)?;
            let x = values(rows * in_dim, 11);
            let bias = values(out_dim, 5);
            let quantized = QTensor::quantize(&weight, GgmlDType::Q8_0)?;
            let blocks = quantized.data()?;
            let packed = PackedQ8::from_q8_0_blocks(&blocks, out_dim, in_dim);
            let expected = QMatMul::from_qtensor(quantized)?
                .forward(&Tensor::from_slice(&x, (rows, in_dim), &Device::Cpu)?)?
                .to_vec2::<f32>()?;
            assert!(packed.product(&[], 0, None).is_empty());
            for (vnni, with_bias) in families.clone().flat_map(|f| [(f, false), (f, true)]) {
                let got = packed.product_on(vnni, &x, rows, with_bias.then_some(&bias[..]));
                for (r, expected) in expected.iter().enumerate() {
                    for (c, &e) in expected.iter().enumerate() {
                        let e = if with_bias { e + bias[c] } else { e };
                        let g = got[r * out_dim + c];
                        assert!(
                            (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                            "{rows}x{in_dim}x{out_dim} (vnni: {vnni}) row {r} col {c}: {g} vs {e}"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
