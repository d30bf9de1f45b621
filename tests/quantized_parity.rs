//! `--quantize q8` against transformers' f32 outputs. Q8_0 rounds every weight and every
//! activation entering a product to 8 bits, so outputs move a little. The bound is stated on
//! real weights: the all-MiniLM-L6-v2 embeddings keep cosine >= 0.995 to transformers' for
//! each text (measured: 0.9973 at worst). The tiny random fixtures are no guide here: with
//! 32-wide layers one 8-bit block spans a whole row, and their classification
//! probabilities move by up to 0.14.
//!
//! The test also checks that the output differs from f32, so the mode is really on.

use std::path::{Path, PathBuf};

use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::hub::HubOptions;
use llmx::models::Quantization;
use llmx::tasks::embed::{EmbedChoices, Embedder};
use llmx::tasks::LoadOptions;
use serde::Deserialize;

const MIN_COSINE: f32 = 0.995;

fn options(quantization: Quantization) -> LoadOptions {
    LoadOptions {
        hub: HubOptions {
            offline: true,
            ..HubOptions::from_env()
        },
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::Auto,
        quantization,
        // Packing at every load: tests/cli.rs shows the cache gives the same bytes.
        weight_cache: None,
    }
}

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[derive(Deserialize)]
struct EmbedCase {
    text: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct EmbedExpected {
    cases: Vec<EmbedCase>,
}

#[test]
fn q8_minilm_embeddings_stay_close_to_transformers() {
    let dir = repo_path("target/test-models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "run scripts/fetch_test_models.sh before cargo test"
    );
    let expected: EmbedExpected = serde_json::from_str(
        &std::fs::read_to_string(repo_path("tests/fixtures/minilm-expected.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<&str> = expected.cases.iter().map(|c| c.text.as_str()).collect();
    let load =
        |q| Embedder::load(dir.to_str().unwrap(), &options(q), &EmbedChoices::default()).unwrap();
    let quantized = load(Quantization::Q8).embed(&texts).unwrap();
    let plain = load(Quantization::None).embed(&texts).unwrap();
    let mut worst = 1.0f32;
    for ((case, q8), f32) in expected.cases.iter().zip(quantized).zip(plain) {
        let (q8, f32) = (q8.unwrap().vector, f32.unwrap().vector);
        let similarity = cosine(&q8, &case.embedding);
        assert!(
            similarity >= MIN_COSINE,
            "{:?}: q8 cosine {similarity}",
            case.text
        );
        assert!(q8 != f32, "{:?}: q8 gave the f32 embedding", case.text);
        worst = worst.min(similarity);
    }
    eprintln!("q8 MiniLM: lowest cosine to transformers {worst:.5}");
}
