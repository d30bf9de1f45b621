//! What this machine can do at best, for the README's performance section: the f32
//! multiply-add peak, f32 GEMM throughput through candle on the shapes our models use, and
//! memory bandwidth.
//!
//! Run: cargo run --release --example machine_limits

use std::time::Instant;

use candle_core::{Device, Tensor};

fn best_seconds(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for chunk in values.chunks_exact(16) {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum()
}

/// Multiply-adds per second of one core on 12 independent 256-bit accumulators (enough to
/// cover the FMA latency on every x86 core): the ceiling of any f32 kernel here.
#[cfg(target_arch = "x86_64")]
fn fma_flops(iterations: usize) -> Option<f64> {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma")]
    fn run(iterations: usize) -> f32 {
        let (mut x, y) = (_mm256_set1_ps(0.999), _mm256_set1_ps(1e-4));
        let mut sums = [_mm256_setzero_ps(); 12];
        for _ in 0..iterations {
            // Opaque to the optimizer, so that the loop is not folded away (now and then:
            // its round trip through memory is latency).
            x = std::hint::black_box(x);
            for _ in 0..8 {
                for sum in &mut sums {
                    *sum = _mm256_fmadd_ps(*sum, x, y);
                }
            }
        }
        let mut total = [0f32; 8];
        // SAFETY: `total` holds the 8 lanes stored.
        unsafe {
            _mm256_storeu_ps(
                total.as_mut_ptr(),
                sums.iter().fold(x, |a, &b| _mm256_add_ps(a, b)),
            )
        };
        total[0]
    }
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return None;
    }
    // SAFETY: the CPU has the features (checked above).
    let seconds = best_seconds(3, || {
        std::hint::black_box(unsafe { run(iterations) });
    });
    Some((iterations * 8 * 12 * 16) as f64 / seconds)
}

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    let threads = candle_core::utils::get_num_threads();
    println!("threads: {threads}");
    #[cfg(target_arch = "x86_64")]
    {
        let per_core: Vec<Option<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| fma_flops(10_000_000)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("fma"))
                .collect()
        });
        if let Some(total) = per_core.iter().copied().sum::<Option<f64>>() {
            println!(
                "f32 FMA peak (AVX2, all cores at once): {:.1} GFLOP/s",
                total / 1e9
            );
        }
    }
    // (rows, inner, outputs): a batch of tokens times a weight matrix, weights stored
    // (outputs, inner) as in safetensors and used transposed.
    for (m, k, n) in [
        (1, 768, 3072),
        (16, 768, 3072),
        (64, 768, 768),
        (64, 768, 3072),
        (512, 768, 768),
        (512, 768, 3072),
        (512, 3072, 768),
        (2048, 768, 3072),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &device)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &device)?;
        let wt = w.t()?;
        let seconds = best_seconds(10, || {
            x.matmul(&wt).expect("matmul runs");
        });
        let gflops = 2.0 * (m * k * n) as f64 / seconds / 1e9;
        let gbs = (n * k * 4) as f64 / seconds / 1e9;
        println!("gemm {m:>5} x {k:>4} x {n:>4}: {gflops:6.1} GFLOP/s  (weights streamed at {gbs:5.1} GB/s)");
    }

    // Memory bandwidth: sum a buffer far larger than any cache, on every core, in 16
    // independent lanes so the loop is load-bound rather than add-latency-bound.
    let big = vec![1f32; 512 << 20]; // 2 GiB
    let seconds = best_seconds(5, || {
        let chunk = big.len().div_ceil(threads);
        let total: f32 = std::thread::scope(|s| {
            let handles: Vec<_> = big
                .chunks(chunk)
                .map(|part| s.spawn(move || lane_sum(part)))
                .collect();
            handles.into_iter().map(|h| h.join().expect("sum")).sum()
        });
        std::hint::black_box(total);
    });
    println!(
        "memory read: {:.1} GB/s ({} threads)",
        (big.len() * 4) as f64 / seconds / 1e9,
        threads
    );
    Ok(())
}
