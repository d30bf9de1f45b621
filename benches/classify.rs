//! Classification throughput on a committed fixture: a few hundred varied lines, batched as
//! the CLI batches them. The baseline for later speed work.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::hub::HubOptions;
use llmx::tasks::classify::Classifier;
use llmx::tasks::LoadOptions;

const WORDS: &[&str] = &[
    "the", "movie", "was", "great", "terrible", "my", "dog", "is", "cute", "and", "I", "hate",
    "love", "this", "café", "in", "Zürich", "really", "not", "bad", "at", "all", "!", "?",
];

/// `count` lines of 3 to 60 words, deterministically varied.
fn lines(count: usize) -> Vec<String> {
    let mut state = 0x2545_f491_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as usize
    };
    (0..count)
        .map(|_| {
            let words = 3 + next() % 58;
            (0..words)
                .map(|_| WORDS[next() % WORDS.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn bench_classify(c: &mut Criterion) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/distilbert-cls2");
    let options = LoadOptions {
        hub: HubOptions {
            offline: true,
            ..HubOptions::from_env()
        },
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::F32,
        quantization: llmx::models::Quantization::None,
        weight_cache: None,
    };
    let classifier = Classifier::load(fixture.to_str().unwrap_or_default(), &options)
        .expect("the fixture loads");
    let lines = lines(300);
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(lines.len() as u64));
    for batch_size in [1, 32] {
        group.bench_function(format!("300 lines, batch {batch_size}"), |b| {
            b.iter_batched(
                || lines.iter().map(String::as_str).collect::<Vec<_>>(),
                |texts| {
                    for chunk in texts.chunks(batch_size) {
                        classifier.classify(chunk).expect("classify runs");
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_classify);
criterion_main!(benches);
