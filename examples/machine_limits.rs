//! What this machine can do at best, for the README's performance section: f32 GEMM
//! throughput through candle on the shapes our models use, and memory bandwidth.
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

fn main() -> candle_core::Result<()> {
    let device = Device::Cpu;
    println!("threads: {}", candle_core::utils::get_num_threads());
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
    let threads = candle_core::utils::get_num_threads();
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
