//! CPU f32 kernels written so the compiler vectorizes them (`with_simd` picks AVX-512 or
//! AVX2 at run time): exp, erf, tanh and GELU without libm calls (candle's GELU calls
//! `erff` per element, a fifth of an encoder's time), lane-split reductions, the row
//! softmax attention uses, a tiled transpose, and the few-row matrix product.
//!
//! Accuracy (checked in the tests below against f64): `exp` within 3e-7 relative (2-3 ulp),
//! `erf` within 4e-7 absolute (near 0, where it is 1 - erfc); GELU within 3e-7 · (1 + |x|).

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// e^x by range reduction to [-ln2/2, ln2/2] and a degree-6 polynomial. Below -87 it is 0
/// (never a subnormal: those make the products that consume softmax outputs crawl), and
/// above 88 it saturates at about 1.6e38.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·ln2 is subtracted without rounding error.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflow = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding 1.5·2^23: a plain add, where `round()` is a libm call.
    // The sum's low mantissa bits then hold n as an integer.
    const ROUNDER: f32 = 12_582_912.0;
    let shifted = x * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor terms up to r^6/720: the remainder is below 2e-8 on |r| <= ln2/2.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n through the exponent bits, in integer lanes (n is within [-126, 127]).
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    if underflow {
        0.0
    } else {
        p * scale
    }
}

/// erf(x), Abramowitz & Stegun 7.1.26 refined: `1 - t·exp(-x² + poly(t))` with
/// t = 1/(1 + x/2) (Numerical Recipes' erfc, fractional error below 1.2e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    let erfc = t * exp(-z * z + poly);
    (1.0 - erfc).copysign(x)
}

/// tanh(x) = 1 - 2 / (e^{2x} + 1), exact in the limits.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// The exact GELU, x·Φ(x).
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation (`gelu_new`).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)))
}

/// Runs `f` on the elements of a CPU f32 tensor, in row-major order; `None` for other
/// devices and dtypes, which the caller sends to candle's own ops.
pub fn with_f32_slice<R>(xs: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    if !matches!(xs.device(), Device::Cpu) || xs.dtype() != DType::F32 {
        return Ok(None);
    }
    let xs = xs.contiguous()?;
    let (storage, layout) = xs.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let values = &cpu.as_slice::<f32>()?[layout.start_offset()..][..xs.elem_count()];
    Ok(Some(f(values)))
}

/// Applies `f` to every element of a CPU f32 tensor in parallel; `None` for other devices
/// and dtypes.
pub fn map_f32<F: Fn(f32) -> f32 + Copy + Send + Sync>(
    xs: &Tensor,
    f: F,
) -> Result<Option<Tensor>> {
    let out = with_f32_slice(xs, |input| {
        let mut out = vec![0f32; input.len()];
        // Chunks big enough to amortize the hand-off, small enough to share between cores.
        const CHUNK: usize = 1 << 14;
        out.par_chunks_mut(CHUNK)
            .zip(input.par_chunks(CHUNK))
            .for_each(|(out, input)| map_slice(input, out, f));
        out
    })?;
    out.map(|out| Tensor::from_vec(out, xs.shape(), xs.device()))
        .transpose()
}

/// `out[i] = f(input[i])`, compiled for the widest vector unit the CPU has.
fn map_slice<F: Fn(f32) -> f32 + Copy>(input: &[f32], out: &mut [f32], f: F) {
    with_simd(
        #[inline(always)]
        || {
            for (y, &x) in out.iter_mut().zip(input) {
                *y = f(x);
            }
        },
    )
}

/// An output buffer that parallel tasks write in disjoint blocks through raw pointers.
pub struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements through it, and the buffer outlives them.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The buffer's whole capacity, for tasks that together write all of it before the
    /// caller sets its length.
    pub fn spare(buffer: &mut Vec<f32>) -> Self {
        SharedOut(buffer.as_mut_ptr())
    }

    /// The element at `offset`; writing it is the caller's promise that it lies inside the
    /// buffer and that no other task writes it.
    pub fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Outputs per panel of the packed kernels (`int8`, `packed_f32`): one 512-bit register
/// of f32 or i32.
pub const PANEL: usize = 16;

/// The `(rows, out_dim)` output of a packed product, computed by register tiles,
/// `tile(row, tile_rows, panel, tile_panels, out)`, on all cores; each tile must write
/// every output of its rows and panels (up to `out_dim`) through `out`. Tasks take up to
/// `task_rows` rows (which stay in cache while the task's panels pass by) and a run of
/// whole panels; inside a task, tiles take up to `tile_rows` rows and `group(task_rows)`
/// panels, or one at the end of a run, so every panel's weights meet all of the task's
/// rows while they are in cache.
pub fn tiled_product(
    rows: usize,
    out_dim: usize,
    task_rows: usize,
    tile_rows: usize,
    group: impl Fn(usize) -> usize + Sync,
    tile: impl Fn(usize, usize, usize, usize, &SharedOut) + Sync,
) -> Vec<f32> {
    let len = rows * out_dim;
    // Not zeroed, as the tiles write every output: zeroing a reused block had cost the
    // main thread a pass over it while the workers waited.
    let mut out = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let panels = out_dim.div_ceil(PANEL);
    let out_base = SharedOut::spare(&mut out);
    // As few row tasks as hold the rows, sharing them evenly in whole tiles.
    let row_tasks = rows.div_ceil(task_rows);
    let task_rows = rows.div_ceil(row_tasks).next_multiple_of(tile_rows);
    let row_tasks = rows.div_ceil(task_rows);
    // Enough tasks to share out, in a multiple of the threads where the panels allow, so
    // that no core idles while another finishes the last one.
    let threads = rayon::current_num_threads();
    let mut panel_tasks = (4 * threads).div_ceil(row_tasks).clamp(1, panels);
    while !(row_tasks * panel_tasks).is_multiple_of(threads) && panel_tasks < panels {
        panel_tasks += 1;
    }
    // Each task a run of whole tiles' worth of panels, where the tasks still come in a
    // multiple of the threads: the panels past the last whole tile run one at a time, with
    // a narrow tile that loads more per multiply-add.
    let whole = panels
        .div_ceil(panel_tasks)
        .next_multiple_of(group(task_rows));
    if (row_tasks * panels.div_ceil(whole)).is_multiple_of(threads) {
        panel_tasks = panels.div_ceil(whole);
    }
    let panels_per_task = panels.div_ceil(panel_tasks);
    (0..row_tasks * panel_tasks)
        .into_par_iter()
        .for_each(|task| {
            let (row_task, panel_task) = (task / panel_tasks, task % panel_tasks);
            let first_row = row_task * task_rows;
            let rows_here = task_rows.min(rows - first_row);
            let first_panel = panel_task * panels_per_task;
            let end_panel = panels.min(first_panel + panels_per_task);
            let group = group(rows_here);
            let mut panel = first_panel;
            while panel < end_panel {
                let panels_here = if end_panel - panel >= group { group } else { 1 };
                for offset in (0..rows_here).step_by(tile_rows) {
                    let tile_rows = tile_rows.min(rows_here - offset);
                    tile(first_row + offset, tile_rows, panel, panels_here, &out_base);
                }
                panel += panels_here;
            }
        });
    // SAFETY: the tasks cover every row and panel, and each tile wrote all its outputs.
    unsafe { out.set_len(len) };
    out
}

/// Lane masks for a register tile of `P` panels whose first `width` outputs are real:
/// loads and stores through them touch nothing past the last output.
pub fn panel_masks<const P: usize>(width: usize) -> [u16; P] {
    std::array::from_fn(|p| match width.saturating_sub(PANEL * p).min(PANEL) {
        PANEL => !0,
        lanes => (1u16 << lanes) - 1,
    })
}

/// The edges of an AVX2 register tile of `V` vectors of 8 outputs whose first `width` are
/// real: the bias loaded into the starting sums and the sums stored, touching nothing past
/// the last output, through masks only on a partial tile (AMD runs masked stores slowly).
#[cfg(target_arch = "x86_64")]
pub struct Avx2TileEdge<const V: usize> {
    masks: [std::arch::x86_64::__m256i; V],
    whole: bool,
}

#[cfg(target_arch = "x86_64")]
impl<const V: usize> Avx2TileEdge<V> {
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn new(width: usize) -> Self {
        use std::arch::x86_64::*;
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        Avx2TileEdge {
            masks: std::array::from_fn(|v| {
                let real = width.saturating_sub(v * 8).min(8) as i32;
                _mm256_cmpgt_epi32(_mm256_set1_epi32(real), lane)
            }),
            whole: width == V * 8,
        }
    }

    /// The starting sums of `R` rows: `bias` (`V · 8` outputs; null for none) on each.
    ///
    /// # Safety
    /// `bias` is null or points at the tile's real outputs' biases.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn start<const R: usize>(
        &self,
        bias: *const f32,
    ) -> [[std::arch::x86_64::__m256; V]; R] {
        use std::arch::x86_64::*;
        if bias.is_null() {
            return [[_mm256_setzero_ps(); V]; R];
        }
        [std::array::from_fn(|v| _mm256_maskload_ps(bias.add(v * 8), self.masks[v])); R]
    }

    /// Stores `R` rows of sums, the first at `out` and each `stride` after the last.
    ///
    /// # Safety
    /// The tile's real outputs lie inside the buffer `out` points into.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn store<const R: usize>(
        &self,
        sums: &[[std::arch::x86_64::__m256; V]; R],
        out: *mut f32,
        stride: usize,
    ) {
        use std::arch::x86_64::*;
        for (r, row) in sums.iter().enumerate() {
            for (v, &sum) in row.iter().enumerate() {
                let out = out.add(r * stride + v * 8);
                if self.whole {
                    _mm256_storeu_ps(out, sum);
                } else {
                    _mm256_maskstore_ps(out, self.masks[v], sum);
                }
            }
        }
    }
}

/// Runs `f` compiled for the widest vector unit the CPU has (AVX-512, else AVX2 + FMA),
/// chosen at run time, so the portable loops inside `f` vectorize to it. `f` must be
/// inlinable (a closure marked `#[inline(always)]`).
#[inline(always)]
pub fn with_simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function was compiled for.
            return unsafe { avx512(f) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// The largest element (NEG_INFINITY for none), in 16 independent lanes.
#[inline(always)]
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = if v > *lane { v } else { *lane };
        }
    }
    reduce_lanes(lanes, f32::max).max(tail)
}

/// The sum, in 16 independent lanes (a single running sum is one long dependency chain).
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    sum_of(values, |v| v)
}

/// The sum of `f` over `values`, in 16 independent lanes, as `sum`.
#[inline(always)]
fn sum_of(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    reduce_lanes(lanes, |x, y| x + y) + tail
}

/// `log_softmax` of one row in place, in torch's order: `x - max - ln Σ exp(x - max)`.
#[inline(always)]
pub fn log_softmax_in_place(row: &mut [f32]) {
    let max = max(row);
    let log_sum = sum_of(row, |x| exp(x - max)).ln();
    for x in row.iter_mut() {
        *x = *x - max - log_sum;
    }
}

/// `softmax(scale · scores + bias)` of one row into `out`, where `bias` is read at
/// `bias_stride` apart (1 unless broadcast along the keys).
#[inline(always)]
pub fn biased_softmax(
    scores: &[f32],
    scale: f32,
    bias: &[f32],
    bias_stride: usize,
    out: &mut [f32],
) {
    if bias_stride == 1 {
        for ((p, &s), &b) in out.iter_mut().zip(scores).zip(bias) {
            *p = s * scale + b;
        }
    } else {
        for (j, (p, &s)) in out.iter_mut().zip(scores).enumerate() {
            *p = s * scale + bias[j * bias_stride];
        }
    }
    softmax_in_place(out);
}

/// `softmax(scale · scores)` of one row into `out`: attention where no key is masked.
#[inline(always)]
pub fn scaled_softmax(scores: &[f32], scale: f32, out: &mut [f32]) {
    for (p, &s) in out.iter_mut().zip(scores) {
        *p = s * scale;
    }
    softmax_in_place(out);
}

#[inline(always)]
fn softmax_in_place(out: &mut [f32]) {
    let max = max(out);
    for p in out.iter_mut() {
        *p = exp(*p - max);
    }
    let inverse = 1.0 / sum(out);
    for p in out.iter_mut() {
        *p *= inverse;
    }
}

/// `out[c] = Σ_i weights[i] · rows[i * stride + c]`: the weighted sum of rows. Attention
/// takes its values this way, and its scores from keys stored dimension-major (row `d`
/// holds value `d` of every key; the weights are the query). Blocks of 64 columns keep
/// their sums in registers while every row adds its broadcast weight times the block: no
/// horizontal sums, no stores until the end.
#[inline(always)]
pub fn weighted_sum(weights: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    const LANES: usize = 16;
    const BLOCK: usize = 4 * LANES;
    let first = out.len() / BLOCK * BLOCK;
    let (blocks, tail) = out.split_at_mut(first);
    for (b, block) in blocks.chunks_exact_mut(BLOCK).enumerate() {
        let mut acc = [[0f32; LANES]; 4];
        for (i, &x) in weights.iter().enumerate() {
            let row = as_lanes(&rows[i * stride + b * BLOCK..][..BLOCK]);
            for (acc, row) in acc.iter_mut().zip(row) {
                for l in 0..LANES {
                    acc[l] += x * row[l];
                }
            }
        }
        for (out, acc) in block.chunks_exact_mut(LANES).zip(&acc) {
            out.copy_from_slice(acc);
        }
    }
    tail.fill(0.0);
    for (i, &x) in weights.iter().enumerate() {
        let row = &rows[i * stride + first..][..tail.len()];
        for (out, &value) in tail.iter_mut().zip(row) {
            *out += x * value;
        }
    }
}

/// A dot product in four independent 16-lane accumulators, so it stays in vector registers
/// and no add waits on the one before (a single accumulator is bound by the add latency),
/// summed as a tree.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let len = a.len().min(b.len());
    let vectors = len / LANES;
    let (a_vectors, b_vectors) = (&as_lanes(a)[..vectors], &as_lanes(b)[..vectors]);
    let mut acc = [[0f32; LANES]; 4];
    for quad in 0..vectors / 4 {
        for (k, acc) in acc.iter_mut().enumerate() {
            let (x, y) = (&a_vectors[4 * quad + k], &b_vectors[4 * quad + k]);
            for l in 0..LANES {
                acc[l] += x[l] * y[l];
            }
        }
    }
    for v in vectors / 4 * 4..vectors {
        let (x, y) = (&a_vectors[v], &b_vectors[v]);
        for l in 0..LANES {
            acc[0][l] += x[l] * y[l];
        }
    }
    let [mut sum, x, y, z] = acc;
    for l in 0..LANES {
        sum[l] = (sum[l] + x[l]) + (y[l] + z[l]);
    }
    let done = vectors * LANES;
    let tail: f32 = a[done..len]
        .iter()
        .zip(&b[done..len])
        .map(|(x, y)| x * y)
        .sum();
    reduce_lanes(sum, |x, y| x + y) + tail
}

/// Folds 16 lanes with `op` by halving: one vector operation per step, where a
/// left-to-right fold would wait on each scalar result. (Fixed trip counts, so that the
/// compiler unrolls them and keeps the lanes in a register.)
#[inline(always)]
pub fn reduce_lanes(lanes: [f32; 16], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut v = lanes;
    for i in 0..8 {
        v[i] = op(v[i], v[i + 8]);
    }
    for i in 0..4 {
        v[i] = op(v[i], v[i + 4]);
    }
    for i in 0..2 {
        v[i] = op(v[i], v[i + 2]);
    }
    op(v[0], v[1])
}

/// The transpose of a `(rows, cols)` row-major matrix on all cores. Square tiles go through
/// a buffer, so both sides move whole cache lines: writing an element at a time down a
/// column whose stride is a multiple of 4 KiB evicts every line it touches.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 16;
    if values.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0f32; values.len()];
    // Each task writes TILE whole rows of the output (TILE columns of the input).
    out.par_chunks_mut(TILE * rows)
        .enumerate()
        .for_each(|(task, out)| {
            let first_col = task * TILE;
            let width = out.len() / rows.max(1);
            let mut tile = [[0f32; TILE]; TILE];
            for first_row in (0..rows).step_by(TILE) {
                let height = TILE.min(rows - first_row);
                for (r, tile_row) in tile.iter_mut().enumerate().take(height) {
                    let source = &values[(first_row + r) * cols + first_col..][..width];
                    tile_row[..width].copy_from_slice(source);
                }
                for c in 0..width {
                    let target = &mut out[c * rows + first_row..][..height];
                    for (r, value) in target.iter_mut().enumerate() {
                        *value = tile[r][c];
                    }
                }
            }
        });
    out
}

/// `x Wᵀ` for a few rows `x` `(rows, in)` and `weight` `(out, in)`, both contiguous:
/// each weight row is read once, from memory, and dotted with every input row. GEMM
/// libraries repack the whole weight matrix first, which at a handful of rows costs more
/// than the product; decoding steps and classifier heads live here.
pub fn skinny_matmul(x: &[f32], rows: usize, weight: &[f32], out_dim: usize) -> Vec<f32> {
    if rows == 0 || out_dim == 0 {
        return Vec::new();
    }
    let in_dim = x.len() / rows;
    // Outputs per task, computed transposed so each task writes one contiguous slice.
    const TASK: usize = 64;
    let mut transposed = vec![0f32; out_dim * rows];
    transposed
        .par_chunks_mut(TASK * rows)
        .enumerate()
        .for_each(|(task, out)| {
            with_simd(
                #[inline(always)]
                || {
                    let first = task * TASK;
                    let weight_row = |o: usize| &weight[(first + o) * in_dim..][..in_dim];
                    let count = out.len() / rows;
                    let mut o = 0;
                    while o < count {
                        // Blocks of 4 outputs (the tail one at a time) by up to 4 rows.
                        let outputs = if count - o >= 4 { 4 } else { 1 };
                        // The next block's weights, which come from memory, arrive while
                        // this one computes.
                        let ahead = (o + 2 * outputs).min(count)..(o + 3 * outputs).min(count);
                        prefetch(
                            &weight[(first + ahead.start) * in_dim..(first + ahead.end) * in_dim],
                        );
                        let mut r = 0;
                        while r < rows {
                            let x_row = |i: usize| &x[(r + i) * in_dim..][..in_dim];
                            let block = if outputs == 4 { (rows - r).min(4) } else { 1 };
                            let mut put = |i: usize, j: usize, value: f32| {
                                out[(o + j) * rows + r + i] = value;
                            };
                            let put = &mut put;
                            match (block, outputs) {
                                (4, 4) => dot_block::<4, 4>(x_row, weight_row, o, put),
                                (3, 4) => dot_block::<3, 4>(x_row, weight_row, o, put),
                                (2, 4) => dot_block::<2, 4>(x_row, weight_row, o, put),
                                (1, 4) => dot_block::<1, 4>(x_row, weight_row, o, put),
                                (_, _) => dot_block::<1, 1>(x_row, weight_row, o, put),
                            }
                            r += block;
                        }
                        o += outputs;
                    }
                },
            )
        });
    transpose(&transposed, out_dim, rows)
}

/// Asks for `values` to be brought into cache ahead of use.
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: a prefetch is a hint; it never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// `values` as whole vectors of 16 lanes (a tail shorter than that is left out).
#[inline(always)]
fn as_lanes(values: &[f32]) -> &[[f32; 16]] {
    // SAFETY: `[f32; 16]` has f32's alignment and no padding, and the length is rounded
    // down to whole arrays inside `values`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len() / 16) }
}

/// The `R × O` dot products of input rows `x_row(0..R)` with weight rows
/// `weight_row(first..first + O)`, passed to `put(row, output, value)`. Every accumulator
/// is a vector register and each loaded vector serves several of them, so the loop is
/// bound by arithmetic rather than loads; a dot product at a time would load twice per
/// multiply-add.
#[inline(always)]
fn dot_block<'a, const R: usize, const O: usize>(
    x_row: impl Fn(usize) -> &'a [f32],
    weight_row: impl Fn(usize) -> &'a [f32],
    first: usize,
    put: &mut impl FnMut(usize, usize, f32),
) {
    const LANES: usize = 16;
    let xs: [&[f32]; R] = std::array::from_fn(&x_row);
    let ws: [&[f32]; O] = std::array::from_fn(|j| weight_row(first + j));
    let len = xs[0].len();
    let steps = len / LANES;
    // Exactly `steps` vectors each, so indexing below needs no bounds checks.
    let x_lanes: [&[[f32; LANES]]; R] = std::array::from_fn(|i| &as_lanes(xs[i])[..steps]);
    let w_lanes: [&[[f32; LANES]]; O] = std::array::from_fn(|j| &as_lanes(ws[j])[..steps]);
    let mut acc = [[[0f32; LANES]; O]; R];
    for step in 0..steps {
        for (acc, x) in acc.iter_mut().zip(&x_lanes) {
            for (acc, w) in acc.iter_mut().zip(&w_lanes) {
                let (x, w) = (&x[step], &w[step]);
                for l in 0..LANES {
                    acc[l] += x[l] * w[l];
                }
            }
        }
    }
    let whole = steps * LANES;
    for (i, (acc, x)) in acc.into_iter().zip(&xs).enumerate() {
        for (j, (acc, w)) in acc.into_iter().zip(&ws).enumerate() {
            let tail: f32 = x[whole..len]
                .iter()
                .zip(&w[whole..len])
                .map(|(a, b)| a * b)
                .sum();
            put(i, j, reduce_lanes(acc, |a, b| a + b) + tail);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> impl Iterator<Item = f32> {
        (-12_000..=12_000).map(|i| i as f32 * 1e-3)
    }

    #[test]
    fn log_softmax_matches_f64() {
        // 16-lane chunks and a tail, logits as wide as a vocabulary's.
        let mut row: Vec<f32> = (0..37)
            .map(|i| (i * 7919 % 61) as f32 * 0.7 - 20.0)
            .collect();
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let log_sum = row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
        let expected: Vec<f64> = row.iter().map(|&x| x as f64 - max - log_sum).collect();
        log_softmax_in_place(&mut row);
        for (got, want) in row.iter().zip(&expected) {
            assert!((*got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn transpose_moves_every_element() {
        let (rows, cols) = (70, 45);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t = transpose(&values, rows, cols);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(t[c * rows + r], values[r * cols + c]);
            }
        }
    }

    #[test]
    fn dot_matches_the_naive_sum_at_every_length() {
        for len in [0, 1, 15, 16, 32, 37, 64, 100, 130, 512] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - want).abs() < 1e-4, "length {len}");
        }
    }

    #[test]
    fn weighted_sum_covers_every_column() {
        let count = 24;
        for width in [0, 1, 63, 64, 65, 130] {
            // Rows with room past the last column, as views into a cache are.
            let stride = width + 3;
            let rows: Vec<f32> = (0..count * stride)
                .map(|i| (i as f32 * 0.29).sin())
                .collect();
            let weights: Vec<f32> = (0..count).map(|i| (i as f32 * 0.7).cos()).collect();
            let mut out = vec![f32::NAN; width];
            weighted_sum(&weights, &rows, stride, &mut out);
            for (c, &got) in out.iter().enumerate() {
                let want: f64 = (0..count)
                    .map(|i| f64::from(weights[i] * rows[i * stride + c]))
                    .sum();
                assert!(
                    (f64::from(got) - want).abs() < 1e-4,
                    "width {width}, column {c}"
                );
            }
        }
    }

    #[test]
    fn skinny_matmul_matches_the_naive_product() {
        // Sizes that are not multiples of the 16 lanes, the 4 x 4 blocks or the 64-output
        // tasks.
        for (rows, in_dim) in [(1, 37), (3, 37), (4, 64), (7, 37), (16, 53)] {
            check_skinny_matmul(rows, in_dim, 130);
        }
        assert!(skinny_matmul(&[], 0, &[1.0; 8], 2).is_empty());
    }

    fn check_skinny_matmul(rows: usize, in_dim: usize, out_dim: usize) {
        let x: Vec<f32> = (0..rows * in_dim)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let w: Vec<f32> = (0..out_dim * in_dim)
            .map(|i| (i as f32 * 0.11).cos())
            .collect();
        let got = skinny_matmul(&x, rows, &w, out_dim);
        for r in 0..rows {
            for o in 0..out_dim {
                let want: f32 = (0..in_dim)
                    .map(|i| x[r * in_dim + i] * w[o * in_dim + i])
                    .sum();
                let gap = (got[r * out_dim + o] - want).abs();
                assert!(
                    gap < 1e-4,
                    "row {r} output {o}: {} vs {want}",
                    got[r * out_dim + o]
                );
            }
        }
    }

    #[test]
    fn exp_is_within_3e7_relative() {
        for x in (-8_690..=8_800).map(|i| i as f32 * 1e-2) {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(-87.5), 0.0);
        assert!(exp(-86.9).is_normal());
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
    }

    #[test]
    fn erf_and_gelu_match_f64() {
        for x in grid() {
            let want = libm_erf(f64::from(x));
            let err = (f64::from(erf(x)) - want).abs();
            assert!(err < 4e-7, "erf({x}) is off by {err}");
            let gelu = 0.5 * f64::from(x) * (1.0 + libm_erf(f64::from(x) / 2f64.sqrt()));
            let tol = 3e-7 * (1.0 + f64::from(x).abs());
            assert!((f64::from(gelu_erf(x)) - gelu).abs() < tol, "gelu({x})");
            let inner = (2.0 / std::f64::consts::PI).sqrt()
                * (f64::from(x) + 0.044715 * f64::from(x).powi(3));
            let gelu_tanh_want = 0.5 * f64::from(x) * (1.0 + inner.tanh());
            assert!(
                (f64::from(gelu_tanh(x)) - gelu_tanh_want).abs() < tol,
                "gelu_tanh({x})"
            );
        }
    }

    /// erf in f64 by its Taylor series (|x| < 3) or continued fraction, as a reference.
    fn libm_erf(x: f64) -> f64 {
        let z = x.abs();
        let value = if z < 3.0 {
            let (mut term, mut sum, mut n) = (z, z, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -z * z / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc by Lentz's continued fraction.
            let mut f = 0.0;
            for k in (1..60).rev() {
                f = f64::from(k) / 2.0 / (z + f);
            }
            1.0 - (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f)
        };
        value.copysign(x)
    }
}
