//! Classification throughput on a real-size DistilBERT (distilbert-base shape, random
//! weights made here) over varied lines: plain padding (consecutive batches of 32, padded
//! to their longest line) against length bucketing (a window sorted by length, batches cut
//! under a token budget). On the CPU in f32 the encoder runs packed rows, so neither pays
//! for padding inside its layers any more; the two differ in how the batches are made up.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::hub::HubOptions;
use llmx::models::{self, ModelConfig, Quantization, Task};
use llmx::tasks::classify::Classifier;
use llmx::tasks::LoadOptions;
use llmx::tokenize::Batching;

const LINES: usize = 96;
const BATCH: usize = 32;

/// A distilbert-base-sized classifier folder with random weights and the fixture tokenizer.
fn checkpoint(dir: &Path) {
    let config = serde_json::json!({
        "architectures": ["DistilBertForSequenceClassification"],
        "model_type": "distilbert",
        "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
        "vocab_size": 30522, "max_position_embeddings": 512,
        "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/distilbert-cls2");
    std::fs::copy(fixture.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let parsed = ModelConfig::load(&dir.join("config.json"), Task::Classify).unwrap();
    let encoder = models::encoder_config(&parsed).unwrap();
    let weights = VarMap::new();
    let vb = VarBuilder::from_varmap(&weights, DType::F32, &Device::Cpu);
    models::load_sequence_classifier(&parsed, &encoder, 2, vb.into(), Quantization::None).unwrap();
    weights.save(dir.join("model.safetensors")).unwrap();
}

/// Lines of 2 to 80 words, deterministically varied (most short, some long, as real text).
fn lines() -> Vec<String> {
    let words = [
        "the", "movie", "was", "great", "my", "dog", "is", "cute", "not", "bad", "café", "really",
    ];
    let mut state = 0x9e37_79b9_u32;
    (0..LINES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let length = if state.is_multiple_of(5) {
                30 + state % 50
            } else {
                2 + state % 20
            };
            (0..length)
                .map(|i| words[(state as usize + i as usize) % words.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn bench_batching(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    checkpoint(dir.path());
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
    let unlimited = Batching {
        max_inputs: BATCH,
        max_tokens: usize::MAX,
    };
    let classifier = Classifier::load(dir.path().to_str().unwrap(), &options).unwrap();
    let lines = lines();
    let texts: Vec<&str> = lines.iter().map(String::as_str).collect();

    let mut group = c.benchmark_group("distilbert-base classify");
    group.sample_size(10);
    group.throughput(Throughput::Elements(LINES as u64));
    let plain = classifier.with_batching(unlimited);
    group.bench_function(
        format!("{LINES} varied lines, plain padding, batch {BATCH}"),
        |b| {
            b.iter(|| {
                for chunk in texts.chunks(BATCH) {
                    plain.classify(chunk).unwrap();
                }
            })
        },
    );
    let bucketed = plain.with_batching(Batching {
        max_inputs: BATCH,
        max_tokens: 8192,
    });
    group.bench_function(
        format!("{LINES} varied lines, bucketed, 8192 tokens"),
        |b| b.iter(|| bucketed.classify(&texts).unwrap()),
    );
    group.finish();
}

criterion_group!(benches, bench_batching);
criterion_main!(benches);
