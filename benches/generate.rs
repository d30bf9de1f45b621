//! GPT-2 decoding speed at batch 1 on the real gpt2 (124M) shape, with random weights made
//! here: tokens per second for an 8-token prompt and 64 greedy new tokens, decoded plainly
//! and speculatively with the int8 copy as draft (how many guesses the model keeps depends
//! on the weights, so the second figure is for these random ones).

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llmx::generation::{self, Flow, GenerationConfig, RowLimits};
use llmx::models::gpt2::{Gpt2, Gpt2Config, Gpt2Session};
use llmx::models::Quantization;

const NEW_TOKENS: usize = 64;

fn bench_generate(c: &mut Criterion) {
    let device = Device::Cpu;
    let config = Gpt2Config::default();
    let weights = VarMap::new();
    let vb = VarBuilder::from_varmap(&weights, DType::F32, &device);
    let model = Gpt2::load(vb.clone().into(), &config, Quantization::None)
        .expect("a gpt2-sized model builds");
    // The same variables again, quantized.
    let draft = Gpt2::load(vb.into(), &config, Quantization::Q8).expect("the int8 copy builds");
    let prompt: Vec<u32> = vec![15496, 11, 616, 3290, 318, 13779, 290, 340];
    let settings = GenerationConfig {
        max_new_tokens: Some(NEW_TOKENS),
        // No EOS, so every run makes all its tokens.
        eos_token_ids: Vec::new(),
        ..GenerationConfig::default()
    };
    let limits = [RowLimits {
        max_new: NEW_TOKENS,
        min_new: 0,
        window_bound: false,
    }];

    let mut group = c.benchmark_group("gpt2-124M");
    group.sample_size(10);
    group.throughput(Throughput::Elements(NEW_TOKENS as u64));
    group.bench_function("greedy, batch 1, 8-token prompt, 64 new tokens", |b| {
        // Inside the thread pool, as the command-line tool runs.
        b.iter(|| {
            rayon::scope(|_| {
                let (mut session, logits) =
                    Gpt2Session::start(&model, &[&prompt], NEW_TOKENS, 50256, DType::F32, &device)
                        .expect("prefill runs");
                let context = [prompt.clone()];
                generation::generate(
                    &mut session,
                    logits,
                    &context,
                    &limits,
                    &settings,
                    |_, _| Flow::Continue,
                )
                .expect("decoding runs")
            })
        })
    });
    group.bench_function(
        "greedy, batch 1, 8-token prompt, 64 new tokens, int8 draft of 4",
        |b| {
            b.iter(|| {
                rayon::scope(|_| {
                    let start = |model| {
                        Gpt2Session::start(
                            model,
                            &[&prompt],
                            NEW_TOKENS,
                            50256,
                            DType::F32,
                            &device,
                        )
                        .expect("prefill runs")
                    };
                    let (mut session, logits) = start(&model);
                    let (mut draft_session, _) = start(&draft);
                    generation::generate_with_draft(
                        &mut session,
                        &mut draft_session,
                        logits,
                        &prompt,
                        limits[0],
                        &settings,
                        4,
                        |_| Flow::Continue,
                    )
                    .expect("decoding runs")
                })
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench_generate);
criterion_main!(benches);
