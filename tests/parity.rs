//! Parity with transformers on the committed fixtures (tests/fixtures, made by
//! scripts/make_fixtures.py): token ids exactly, scores within 1e-4, label order as the
//! pipeline sorts it, and a padded batch equal to single inputs.

use std::path::{Path, PathBuf};

use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::hub::HubOptions;
use llmx::tasks::classify::{Classification, Classifier};
use llmx::tasks::LoadOptions;
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct LabelScore {
    label: String,
    score: f32,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
    scores: Vec<f32>,
    pipeline: Vec<LabelScore>,
}

#[derive(Deserialize)]
struct Truncated {
    text: String,
    input_ids: Vec<u32>,
    pipeline: Vec<LabelScore>,
}

#[derive(Deserialize)]
struct Expected {
    texts: Vec<String>,
    cases: Vec<Case>,
    batched_pipeline: Vec<Vec<LabelScore>>,
    truncated: Truncated,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> Classifier {
    let options = LoadOptions {
        hub: HubOptions {
            offline: true,
            ..HubOptions::from_env()
        },
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::F32,
        quantization: llmx::models::Quantization::None,
        // Packing at every load: tests/cli.rs shows the cache gives the same bytes.
        weight_cache: None,
    };
    Classifier::load(fixture(name).to_str().unwrap(), &options).unwrap()
}

fn classify(classifier: &Classifier, texts: &[&str]) -> Vec<Classification> {
    classifier
        .classify(texts)
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Same labels in the same order, scores within the tolerance.
fn assert_matches(context: &str, got: &Classification, want: &[LabelScore]) {
    let got_labels: Vec<&str> = got.labels.iter().map(|l| l.label.as_str()).collect();
    let want_labels: Vec<&str> = want.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(got_labels, want_labels, "{context}: label order");
    for (g, w) in got.labels.iter().zip(want) {
        assert!(
            (g.score - w.score).abs() <= TOLERANCE,
            "{context}: {} scored {} but transformers gives {}",
            g.label,
            g.score,
            w.score
        );
    }
}

fn check_fixture(name: &str) {
    let expected = expected(name);
    let classifier = load(name);
    let tokenizer = llmx::tokenize::TextEncoder::load(
        &fixture(name).join("tokenizer.json"),
        classifier.window(),
        None,
        llmx::tokenize::Side::Right,
    )
    .unwrap();

    for case in &expected.cases {
        let context = format!("{name} {:?}", case.text);
        assert_eq!(
            tokenizer.encode(&case.text).unwrap().ids,
            case.input_ids,
            "{context}: ids"
        );
        let single = &classify(&classifier, &[&case.text])[0];
        assert_matches(&context, single, &case.pipeline);
        // Scores per label id, independent of the sort.
        for (id, &want) in case.scores.iter().enumerate() {
            let label = &classifier.labels()[id];
            let got = single
                .labels
                .iter()
                .find(|l| &l.label == label)
                .unwrap()
                .score;
            assert!(
                (got - want).abs() <= TOLERANCE,
                "{context}: label {id}: {got} vs {want}"
            );
        }
    }

    let texts: Vec<&str> = expected.texts.iter().map(String::as_str).collect();
    let batched = classify(&classifier, &texts);
    for ((text, got), want) in texts.iter().zip(&batched).zip(&expected.batched_pipeline) {
        assert_matches(&format!("{name} batched {text:?}"), got, want);
        let single = &classify(&classifier, &[text])[0];
        for (b, s) in got.labels.iter().zip(&single.labels) {
            assert_eq!(
                b.label, s.label,
                "{name} {text:?}: batch order equals single"
            );
            assert!(
                // Relative past 1: regression heads give raw, unbounded scores.
                (b.score - s.score).abs() <= 1e-5 * s.score.abs().max(1.0),
                "{name} {text:?}: batch {} != single {}",
                b.score,
                s.score
            );
        }
    }

    let long = &expected.truncated;
    let encoded = tokenizer.encode(&long.text).unwrap();
    assert!(encoded.truncated, "{name}: the long text is truncated");
    assert_eq!(encoded.ids, long.input_ids, "{name}: truncated ids");
    let got = &classify(&classifier, &[&long.text])[0];
    assert!(got.truncated);
    assert_matches(&format!("{name} truncated"), got, &long.pipeline);
}

#[test]
fn bert_three_labels() {
    check_fixture("bert-cls3");
}

#[test]
fn distilbert_two_labels() {
    check_fixture("distilbert-cls2");
}

#[test]
fn roberta_three_labels() {
    check_fixture("roberta-cls3");
}

#[test]
fn bert_multi_label_uses_sigmoid() {
    check_fixture("bert-multilabel");
}

#[test]
fn bert_single_label_uses_sigmoid() {
    check_fixture("bert-onelabel");
}

#[test]
fn distilbert_regression_is_raw() {
    check_fixture("distilbert-regression");
}
