//! GPT-2 parity with transformers on tests/fixtures/gpt2-tiny (made by
//! scripts/fixtures_gpt2.py with the real GPT-2 vocabulary): tokenizer ids, logits, greedy
//! token ids exactly (with and without repetition penalty, EOS and min_new_tokens), batched ==
//! single, cached == uncached, and the sampling distribution after transformers' processors.
//! One prompt decodes speculatively (an int8 draft checked by the model) where the CPU has
//! the int8 kernels; the greedy cases run with drafts of several lengths and none, and a
//! seeded single prompt samples through the draft (its distribution: generation's unit
//! tests).

use std::path::{Path, PathBuf};

use llmx::device::{DTypeChoice, DeviceChoice};
use llmx::generation::{logits, Decoder, FinishReason, GenerationConfig, Overrides, TokenIds};
use llmx::hub::HubOptions;
use llmx::tasks::generate::{Completion, TextGenerator, DEFAULT_DRAFT_TOKENS};
use llmx::tasks::LoadOptions;
use serde::Deserialize;

const LOGIT_TOLERANCE: f32 = 1e-4;

/// Draft lengths for speculative decoding: none (plain decoding), one, the default, long.
const DRAFTS: [usize; 4] = [0, 1, DEFAULT_DRAFT_TOKENS, 9];

#[derive(Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[derive(Deserialize)]
struct Forward {
    input_ids: Vec<u32>,
    last_logits_head: Vec<f32>,
    last_logits_top: Vec<(u32, f32)>,
    logsumexp: f32,
}

#[derive(Deserialize)]
struct Greedy {
    prompt: String,
    input_ids: Vec<u32>,
    max_new_tokens: usize,
    repetition_penalty: Option<f32>,
    new_ids: Vec<u32>,
    completion: String,
}

#[derive(Deserialize)]
struct Eos {
    prompt: String,
    eos_token_id: u32,
    min_new_tokens: Option<usize>,
    max_new_tokens: usize,
    new_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Batched {
    prompts: Vec<String>,
    max_new_tokens: usize,
    new_ids: Vec<Vec<u32>>,
}

#[derive(Deserialize)]
struct Sampling {
    input_ids: Vec<u32>,
    repetition_penalty: f32,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    kept: Vec<(u32, f32)>,
}

#[derive(Deserialize)]
struct Expected {
    tokenizer_cases: Vec<TokenizerCase>,
    forward: Vec<Forward>,
    greedy: Vec<Greedy>,
    eos: Vec<Eos>,
    batched_greedy: Batched,
    sampling_distribution: Vec<Sampling>,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-tiny")
}

fn expected() -> Expected {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("expected.json")).unwrap())
        .unwrap()
}

fn load() -> TextGenerator {
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
    TextGenerator::load(fixture().to_str().unwrap(), &options).unwrap()
}

fn greedy(generator: &TextGenerator, layer: Overrides) -> GenerationConfig {
    let mut settings = generator.defaults().clone();
    settings.apply(Overrides {
        do_sample: Some(false),
        ..layer
    });
    settings
}

fn run(
    generator: &TextGenerator,
    prompts: &[&str],
    settings: &GenerationConfig,
) -> Vec<Completion> {
    generator
        .generate(prompts, settings, &[], |_, _| {})
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

/// Next-token logits for `ids` from one full (uncached) forward pass.
fn uncached_logits(generator: &TextGenerator, ids: &[u32]) -> Vec<f32> {
    let (_, logits) = generator.start(&[ids], 1).unwrap();
    logits.squeeze(0).unwrap().to_vec1().unwrap()
}

#[test]
fn tokenizer_matches_transformers() {
    let generator = load();
    let text = generator.text_encoder();
    for case in expected().tokenizer_cases {
        assert_eq!(
            text.encode(&case.text).unwrap().ids,
            case.ids,
            "{:?}",
            case.text
        );
        // transformers' decode() keeps special tokens by default.
        let decoded = text.tokenizer().decode(&case.ids, false).unwrap();
        assert_eq!(decoded, case.decoded, "{:?}", case.text);
    }
}

#[test]
fn last_position_logits_match() {
    let generator = load();
    for case in expected().forward {
        let logits = uncached_logits(&generator, &case.input_ids);
        for (got, want) in logits.iter().zip(&case.last_logits_head) {
            assert!((got - want).abs() < LOGIT_TOLERANCE, "{got} vs {want}");
        }
        for &(id, want) in &case.last_logits_top {
            let got = logits[id as usize];
            assert!(
                (got - want).abs() < LOGIT_TOLERANCE,
                "token {id}: {got} vs {want}"
            );
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
        assert!((lse - case.logsumexp).abs() < LOGIT_TOLERANCE);
    }
}

#[test]
fn cached_decoding_equals_uncached() {
    let generator = load();
    let case = &expected().greedy[0];
    let (mut session, _) = generator
        .start(&[&case.input_ids], case.new_ids.len())
        .unwrap();
    let mut seen = case.input_ids.clone();
    for &token in &case.new_ids[..8] {
        let cached: Vec<f32> = session
            .step(&[token])
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        seen.push(token);
        let uncached = uncached_logits(&generator, &seen);
        let worst = cached
            .iter()
            .zip(&uncached)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            worst < LOGIT_TOLERANCE,
            "step {}: max difference {worst}",
            seen.len()
        );
    }
}

#[test]
fn greedy_continuations_are_token_identical() {
    let mut generator = load();
    for (case, draft_tokens) in expected()
        .greedy
        .iter()
        .flat_map(|case| DRAFTS.map(|d| (case, d)))
    {
        generator.set_draft_tokens(draft_tokens);
        let settings = greedy(
            &generator,
            Overrides {
                max_new_tokens: Some(case.max_new_tokens),
                repetition_penalty: case.repetition_penalty,
                ..Overrides::default()
            },
        );
        let completion = &run(&generator, &[&case.prompt], &settings)[0];
        let context = format!(
            "{:?} penalty {:?} draft {draft_tokens}",
            case.prompt, case.repetition_penalty
        );
        assert_eq!(completion.tokens, case.new_ids, "{context}");
        assert_eq!(completion.text, case.completion, "{context}");
        assert_eq!(completion.finish, FinishReason::Length);
    }
}

#[test]
fn eos_ends_generation_unless_min_new_tokens_forbids_it() {
    let mut generator = load();
    for (case, draft_tokens) in expected()
        .eos
        .iter()
        .flat_map(|case| DRAFTS.map(|d| (case, d)))
    {
        generator.set_draft_tokens(draft_tokens);
        let settings = greedy(
            &generator,
            Overrides {
                max_new_tokens: Some(case.max_new_tokens),
                min_new_tokens: case.min_new_tokens,
                eos_token_id: Some(TokenIds::One(case.eos_token_id)),
                ..Overrides::default()
            },
        );
        let completion = &run(&generator, &[&case.prompt], &settings)[0];
        assert_eq!(
            completion.tokens, case.new_ids,
            "min_new_tokens {:?} draft {draft_tokens}",
            case.min_new_tokens
        );
        assert_eq!(completion.finish, FinishReason::Eos);
    }
}

#[test]
fn a_left_padded_batch_equals_single_prompts() {
    let generator = load();
    let case = expected().batched_greedy;
    let settings = greedy(
        &generator,
        Overrides {
            max_new_tokens: Some(case.max_new_tokens),
            ..Overrides::default()
        },
    );
    let prompts: Vec<&str> = case.prompts.iter().map(String::as_str).collect();
    let batched = run(&generator, &prompts, &settings);
    for ((prompt, got), want) in prompts.iter().zip(&batched).zip(&case.new_ids) {
        assert_eq!(&got.tokens, want, "batched {prompt:?}");
        assert_eq!(
            run(&generator, &[prompt], &settings)[0].tokens,
            *want,
            "single {prompt:?}"
        );
    }
}

#[test]
fn sampling_distribution_matches_transformers_processors() {
    let generator = load();
    for case in expected().sampling_distribution {
        let mut scores = uncached_logits(&generator, &case.input_ids);
        logits::repetition_penalty(&mut scores, &case.input_ids, case.repetition_penalty);
        logits::temperature(&mut scores, case.temperature);
        logits::top_k(&mut scores, case.top_k);
        logits::top_p(&mut scores, case.top_p, 1);
        let probs = logits::softmax(&scores);
        let kept: Vec<(u32, f32)> = probs
            .iter()
            .enumerate()
            .filter(|(_, &p)| p > 0.0)
            .map(|(id, &p)| (id as u32, p))
            .collect();
        let ids: Vec<u32> = kept.iter().map(|k| k.0).collect();
        let want_ids: Vec<u32> = case.kept.iter().map(|k| k.0).collect();
        assert_eq!(ids, want_ids);
        for ((_, got), (_, want)) in kept.iter().zip(&case.kept) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
    }
}

#[test]
fn a_seed_repeats_sampling_exactly() {
    let generator = load();
    let sampled = |seed| {
        let mut settings = generator.defaults().clone();
        settings.apply(Overrides {
            do_sample: Some(true),
            max_new_tokens: Some(16),
            seed: Some(seed),
            ..Overrides::default()
        });
        run(&generator, &["Hello, my dog is cute and"], &settings)[0]
            .tokens
            .clone()
    };
    assert_eq!(sampled(7), sampled(7));
    assert_ne!(
        sampled(7),
        sampled(8),
        "different seeds should differ on 16 tokens"
    );
}

#[test]
fn streamed_text_is_the_decoded_completion() {
    let generator = load();
    let settings = greedy(
        &generator,
        Overrides {
            max_new_tokens: Some(20),
            ..Overrides::default()
        },
    );
    let prompts = ["def fibonacci(n):", "Hello, my dog is cute and"];
    let mut pieces = vec![String::new(); prompts.len()];
    let completions = generator
        .generate(&prompts, &settings, &[], |row, piece| {
            pieces[row].push_str(piece)
        })
        .unwrap();
    for (completion, streamed) in completions.into_iter().zip(pieces) {
        let completion = completion.unwrap();
        assert_eq!(streamed, completion.text);
        assert_eq!(
            generator.text_encoder().decode(&completion.tokens).unwrap(),
            completion.text
        );
    }
}

#[test]
fn stop_strings_cut_the_completion() {
    let generator = load();
    let case = &expected().greedy[0];
    let settings = greedy(
        &generator,
        Overrides {
            max_new_tokens: Some(20),
            ..Overrides::default()
        },
    );
    // Stop at a word the plain continuation reaches midway.
    let stop = case
        .completion
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    let cut = case.completion.find(&stop).unwrap();
    let mut streamed = String::new();
    let completion = generator
        .generate(
            &[&case.prompt],
            &settings,
            std::slice::from_ref(&stop),
            |_, p| streamed.push_str(p),
        )
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(completion.finish, FinishReason::Stop);
    assert_eq!(completion.text, case.completion[..cut]);
    assert_eq!(
        streamed, completion.text,
        "the stop string is never streamed"
    );
    assert!(completion.tokens.len() < 20);
}

#[test]
fn the_model_window_ends_generation_without_error() {
    let generator = load();
    let window = generator.window();
    let settings = greedy(
        &generator,
        Overrides {
            max_new_tokens: Some(20),
            ..Overrides::default()
        },
    );
    let near = "word ".repeat(window - 4);
    let beyond = "word ".repeat(window * 3);
    let completions = run(&generator, &[&near, &beyond, "Hi"], &settings);
    let near_len = generator.text_encoder().encode(&near).unwrap().ids.len();
    assert_eq!(completions[0].tokens.len(), window - near_len);
    assert!(completions[0].hit_window);
    assert_eq!(completions[0].finish, FinishReason::Length);
    assert!(completions[1].prompt_truncated);
    assert!(!completions[1].tokens.is_empty());
    assert_eq!(
        completions[2].tokens.len(),
        20,
        "a short prompt in the same batch is unaffected"
    );
    // Alone, greedy prompts decode speculatively: the draft must stop at the window too.
    for (prompt, batched) in [&near, &beyond].into_iter().zip(&completions) {
        let alone = &run(&generator, &[prompt], &settings)[0];
        assert_eq!(alone.tokens, batched.tokens);
        assert_eq!(alone.hit_window, batched.hit_window);
    }
}
