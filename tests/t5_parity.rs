//! T5 parity with transformers on tests/fixtures/t5-v1_0 (t5-small-like: ReLU, tied head,
//! config keys omitted as t5-small omits them, task_specific_params) and t5-v1_1 (gated GELU,
//! separate head), made by scripts/fixtures_t5.py: tokenizer ids, encoder states of a padded
//! batch, decoder logits cached and uncached, greedy and beam token ids exactly (early
//! stopping true / false / never, length penalty, no-repeat n-grams, min length), a beam
//! batch equal to single inputs, and translate / summarize / text2text as the pipelines give.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::generation::{EarlyStopping, GenerationConfig, Overrides};
use llmx::hub::HubOptions;
use llmx::tasks::text2text::{Seq2Seq, Seq2SeqTask};
use llmx::tasks::LoadOptions;
use llmx::tokenize::{Batch, Side};
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("expected.json")).unwrap())
        .unwrap()
}

fn load(name: &str) -> Seq2Seq {
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
    Seq2Seq::load(fixture(name).to_str().unwrap(), &options).unwrap()
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], context: &str) {
    assert_eq!(got.len(), want.len(), "{context}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= TOLERANCE, "{context}: {g} vs {w}");
    }
}

/// The settings a case names, over plain transformers defaults (as `model.generate` is called).
fn settings(model: &Seq2Seq, case: &Value) -> GenerationConfig {
    let (mut settings, _) = model.settings_for(&Seq2SeqTask::Text2Text).unwrap();
    let base = GenerationConfig::default();
    settings.max_new_tokens = None;
    settings.num_beams = base.num_beams;
    settings.length_penalty = base.length_penalty;
    settings.early_stopping = base.early_stopping;
    let get = |key: &str| case.get(key).filter(|v| !v.is_null());
    let early_stopping = get("early_stopping").map(|v| match v {
        Value::Bool(true) => EarlyStopping::True,
        Value::Bool(false) => EarlyStopping::False,
        _ => EarlyStopping::Never,
    });
    settings.apply(Overrides {
        do_sample: Some(false),
        max_new_tokens: get("max_new_tokens")
            .and_then(Value::as_u64)
            .map(|v| v as usize),
        num_beams: get("num_beams").and_then(Value::as_u64).map(|v| v as usize),
        length_penalty: get("length_penalty")
            .and_then(Value::as_f64)
            .map(|v| v as f32),
        no_repeat_ngram_size: get("no_repeat_ngram_size")
            .and_then(Value::as_u64)
            .map(|v| v as usize),
        min_length: get("min_length")
            .and_then(Value::as_u64)
            .map(|v| v as usize),
        early_stopping,
        ..Overrides::default()
    });
    settings
}

/// Generated ids with transformers' leading decoder start token.
fn sequence(model: &Seq2Seq, texts: &[&str], settings: &GenerationConfig) -> Vec<Vec<u32>> {
    model
        .generate(texts, settings, "")
        .unwrap()
        .into_iter()
        .map(|output| {
            let mut ids = vec![settings.decoder_start_token_id.unwrap_or(0)];
            ids.extend(output.unwrap().tokens);
            ids
        })
        .collect()
}

/// A row of transformers' padded batch output up to its EOS (id 1): shorter rows are filled
/// with `pad_token_id or eos_token_id`, which is 1 for T5 since its pad id 0 is falsy.
fn until_eos(mut sequence: Vec<u32>) -> Vec<u32> {
    if let Some(eos) = sequence.iter().skip(1).position(|&id| id == 1) {
        sequence.truncate(eos + 2);
    }
    sequence
}

fn check(name: &str) {
    let expected = expected(name);
    let model = load(name);
    let text = model.text_encoder();

    for case in expected["tokenizer_cases"].as_array().unwrap() {
        let input = case["text"].as_str().unwrap();
        assert_eq!(
            text.encode(input).unwrap().ids,
            ids(&case["ids"]),
            "{name} tokenizer {input:?}"
        );
    }
    for case in expected["decode_cases"].as_array().unwrap() {
        assert_eq!(
            text.decode(&ids(&case["ids"])).unwrap(),
            case["text"].as_str().unwrap(),
            "{name} decode"
        );
    }

    // Encoder states: each text alone, and the same rows of a padded batch.
    let encoder = &expected["encoder"];
    let texts: Vec<&str> = encoder["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let encodings: Vec<_> = texts.iter().map(|t| text.encode(t).unwrap()).collect();
    let refs: Vec<_> = encodings.iter().collect();
    let batch = Batch::new(&refs, text.pad_id(), Side::Right, &Device::Cpu).unwrap();
    let padded: Vec<Vec<Vec<f32>>> = model
        .model()
        .encode(&batch.input_ids, &batch.attention_mask)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec3()
        .unwrap();
    for (row, want) in encoder["last_hidden_head"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let want = floats(want);
        assert_close(
            &padded[row][0][..want.len()],
            &want,
            &format!("{name} encoder row {row} in a padded batch"),
        );
    }

    for case in expected["decoder_logits"].as_array().unwrap() {
        let input = case["text"].as_str().unwrap();
        let decoder_ids = ids(&case["decoder_input_ids"]);
        let whole: Vec<Vec<f32>> = model
            .decoder_logits(input, &decoder_ids, false)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        let stepped: Vec<Vec<f32>> = model
            .decoder_logits(input, &decoder_ids, true)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (position, want) in case["logits_head"].as_array().unwrap().iter().enumerate() {
            let want = floats(want);
            let context = format!("{name} decoder logits {input:?} position {position}");
            assert_close(&whole[position][..want.len()], &want, &context);
            assert_close(
                &stepped[position],
                &whole[position],
                &format!("{context}: cached == uncached"),
            );
        }
    }

    for key in ["greedy", "beam"] {
        for case in expected[key].as_array().unwrap() {
            let input = case["text"].as_str().unwrap();
            let settings = settings(&model, case);
            let got = sequence(&model, &[input], &settings).remove(0);
            assert_eq!(got, ids(&case["sequence"]), "{name} {key} {input:?} {case}");
        }
    }

    let batched = &expected["batched_beam"];
    let texts: Vec<&str> = batched["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let settings = settings(&model, batched);
    let got = sequence(&model, &texts, &settings);
    for ((input, got), want) in texts
        .iter()
        .zip(&got)
        .zip(batched["sequences"].as_array().unwrap())
    {
        let want = until_eos(ids(want));
        assert_eq!(got, &want, "{name} batched beam {input:?}");
        assert_eq!(
            sequence(&model, &[input], &settings)[0],
            want,
            "{name} single beam {input:?}"
        );
    }

    // Inputs of very different lengths go through the encoder in separate groups, in
    // another order; each must still get what it gets alone.
    let long = texts.join(" ");
    let mixed = [texts[0], long.as_str(), "Hello.", texts[2]];
    for (input, got) in mixed.iter().zip(sequence(&model, &mixed, &settings)) {
        assert_eq!(
            got,
            sequence(&model, &[input], &settings)[0],
            "{name} {input:?} in a batch of mixed lengths"
        );
    }

    let tasks = [
        ("translate", None),
        ("summarize", Some(Seq2SeqTask::Summarize)),
        ("text2text", Some(Seq2SeqTask::Text2Text)),
    ];
    for (key, task) in tasks {
        let Some(cases) = expected.get(key).and_then(Value::as_array) else {
            continue;
        };
        for case in cases {
            let task = task.clone().unwrap_or_else(|| {
                let pair = case["pair"].as_str().unwrap();
                let (from, to) = pair.split_once("_to_").unwrap();
                Seq2SeqTask::Translate {
                    from: from.to_string(),
                    to: to.to_string(),
                }
            });
            let (settings, prefix) = model.settings_for(&task).unwrap();
            let input = case["text"].as_str().unwrap();
            let output = model
                .generate(&[input], &settings, &prefix)
                .unwrap()
                .remove(0)
                .unwrap();
            assert_eq!(
                output.text,
                case["output"].as_str().unwrap(),
                "{name} {key} {input:?}"
            );
            if let Some(sequence) = case.get("sequence") {
                let mut got = vec![settings.decoder_start_token_id.unwrap_or(0)];
                got.extend(&output.tokens);
                assert_eq!(got, ids(sequence), "{name} {key} ids {input:?}");
            }
        }
    }
}

#[test]
fn t5_v1_0_matches_transformers() {
    check("t5-v1_0");
}

#[test]
fn t5_v1_1_matches_transformers() {
    check("t5-v1_1");
}

#[test]
fn a_missing_translation_pair_lists_the_pairs() {
    let model = load("t5-v1_0");
    let task = Seq2SeqTask::Translate {
        from: "en".into(),
        to: "xx".into(),
    };
    let message = model.settings_for(&task).unwrap_err().to_string();
    assert!(message.contains("en → de"), "{message}");
}
