//! fill-mask, token classification and question answering against transformers'
//! pipelines on tests/fixtures/*-mlm, *-ner and *-qa (scripts/fixtures_encoder_tasks.py).

use std::path::{Path, PathBuf};

use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::hub::HubOptions;
use llmx::tasks::fill_mask::{MaskFiller, Prediction};
use llmx::tasks::LoadOptions;
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
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

fn close(got: f64, want: &Value, context: &str) {
    let want = want.as_f64().unwrap();
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{context}: {got} vs {want}"
    );
}

fn assert_predictions(got: &[Prediction], want: &Value, context: &str) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{context}: count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            g.token,
            w["token"].as_u64().unwrap() as u32,
            "{context}: token"
        );
        assert_eq!(
            g.token_str,
            w["token_str"].as_str().unwrap(),
            "{context}: token_str"
        );
        assert_eq!(
            g.sequence,
            w["sequence"].as_str().unwrap(),
            "{context}: sequence"
        );
        close(f64::from(g.score), &w["score"], context);
    }
}

/// One mask gives a flat list, several a list per mask, as the pipeline returns them.
fn assert_filled(masks: &[Vec<Prediction>], want: &Value, context: &str) {
    if masks.len() == 1 {
        return assert_predictions(&masks[0], want, context);
    }
    let want = want.as_array().unwrap();
    assert_eq!(masks.len(), want.len(), "{context}: masks");
    for (got, want) in masks.iter().zip(want) {
        assert_predictions(got, want, context);
    }
}

fn check_fill_mask(name: &str) {
    let expected = expected(name);
    let filler = MaskFiller::load(fixture(name).to_str().unwrap(), &options()).unwrap();
    assert_eq!(
        filler.mask_token(),
        expected["mask_token"].as_str().unwrap()
    );
    for case in expected["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        for (top_k, want) in case["outputs"].as_object().unwrap() {
            let top_k: usize = top_k.parse().unwrap();
            let filled = filler
                .fill(&[text], top_k, None)
                .unwrap()
                .remove(0)
                .unwrap();
            assert_filled(
                &filled.masks,
                want,
                &format!("{name} {text:?} top_k {top_k}"),
            );
        }
    }
    for case in expected["targets"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let targets: Vec<String> = case["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let (mut ids, _) = filler.target_ids(&targets).unwrap();
        let mut want_ids: Vec<u32> = case["target_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let resolved = ids.clone();
        ids.sort();
        want_ids.sort();
        assert_eq!(ids, want_ids, "{name} targets {targets:?}");
        let top_k = case.get("top_k").and_then(Value::as_u64).unwrap_or(5) as usize;
        let filled = filler
            .fill(&[text], top_k, Some(&resolved))
            .unwrap()
            .remove(0)
            .unwrap();
        assert_filled(
            &filled.masks,
            &case["output"],
            &format!("{name} targets {targets:?}"),
        );
    }
    let no_mask = filler.fill(&["no mask here"], 5, None).unwrap().remove(0);
    let message = no_mask.unwrap_err().to_string();
    assert!(message.contains(filler.mask_token()), "{message}");
}

#[test]
fn bert_fill_mask() {
    check_fill_mask("bert-mlm");
}

#[test]
fn distilbert_fill_mask() {
    check_fill_mask("distilbert-mlm");
}

#[test]
fn roberta_fill_mask() {
    check_fill_mask("roberta-mlm");
}

fn check_ner(name: &str) {
    use llmx::tasks::ner::{Aggregation, TokenTagger};
    let expected = expected(name);
    let tagger = TokenTagger::load(fixture(name).to_str().unwrap(), &options()).unwrap();
    let strategies = [
        ("none", Aggregation::None),
        ("simple", Aggregation::Simple),
        ("first", Aggregation::First),
        ("average", Aggregation::Average),
        ("max", Aggregation::Max),
    ];
    let mut cases: Vec<&Value> = expected["cases"].as_array().unwrap().iter().collect();
    cases.push(&expected["long"]);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        for (key, strategy) in strategies {
            let Some(want) = case["outputs"].get(key) else {
                continue;
            };
            let context = format!("{name} {key} {text:?}");
            let got = tagger.tag(&[text], strategy).unwrap().remove(0).unwrap();
            let want = want.as_array().unwrap();
            let got_json: Vec<Value> = got
                .entities
                .iter()
                .map(|e| serde_json::to_value(e).unwrap())
                .collect();
            assert_eq!(
                got_json.len(),
                want.len(),
                "{context}: {got_json:?}\nvs {want:?}"
            );
            for (g, w) in got_json.iter().zip(want) {
                for field in ["entity", "entity_group", "word", "start", "end", "index"] {
                    assert_eq!(
                        g.get(field),
                        w.get(field),
                        "{context}: {field} of {g} vs {w}"
                    );
                }
                close(g["score"].as_f64().unwrap(), &w["score"], &context);
            }
        }
    }
}

#[test]
fn bert_ner() {
    check_ner("bert-ner");
}

#[test]
fn distilbert_ner() {
    check_ner("distilbert-ner");
}

#[test]
fn roberta_ner() {
    check_ner("roberta-ner");
}

fn check_qa(name: &str) {
    use llmx::tasks::qa::{QaSettings, QuestionAnswerer};
    let expected = expected(name);
    let answerer = QuestionAnswerer::load(fixture(name).to_str().unwrap(), &options()).unwrap();
    let settings: Vec<QaSettings> = expected["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let get = |key: &str| s.get(key).and_then(Value::as_u64).map(|v| v as usize);
            QaSettings {
                max_seq_len: get("max_seq_len"),
                doc_stride: get("doc_stride"),
                max_answer_len: get("max_answer_len").unwrap_or(15),
                top_k: get("top_k").unwrap_or(1),
                handle_impossible_answer: s
                    .get("handle_impossible_answer")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            }
        })
        .collect();
    for case in expected["cases"].as_array().unwrap() {
        let question = case["question"].as_str().unwrap();
        let context = case["context"].as_str().unwrap();
        for (setting, want) in settings.iter().zip(case["outputs"].as_array().unwrap()) {
            let label = format!("{name} {question:?} {setting:?}");
            let got = answerer.answer(question, context, setting).unwrap();
            let want: Vec<&Value> = match want {
                Value::Array(many) => many.iter().collect(),
                one => vec![one],
            };
            assert_eq!(got.len(), want.len(), "{label}: {got:?} vs {want:?}");
            for (g, w) in got.iter().zip(want) {
                assert_eq!(g.answer, w["answer"].as_str().unwrap(), "{label}");
                assert_eq!(g.start as u64, w["start"].as_u64().unwrap(), "{label}");
                assert_eq!(g.end as u64, w["end"].as_u64().unwrap(), "{label}");
                close(g.score, &w["score"], &label);
            }
        }
    }
}

#[test]
fn bert_qa() {
    check_qa("bert-qa");
}

#[test]
fn distilbert_qa() {
    check_qa("distilbert-qa");
}

#[test]
fn roberta_qa() {
    check_qa("roberta-qa");
}
