//! T5 decoding speed on the real t5-small shape (random weights made here): tokens per
//! second for one 16-token input and 32 new tokens, greedy and with 4 beams.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llmx::generation::{self, Decoder, Flow, GenerationConfig, RowLimits};
use llmx::models::t5::{T5Config, T5Session, T5};
use llmx::models::Quantization;

const NEW_TOKENS: usize = 32;

fn bench_text2text(c: &mut Criterion) {
    let device = Device::Cpu;
    let config = T5Config::default();
    let weights = VarMap::new();
    let model = T5::load(
        VarBuilder::from_varmap(&weights, DType::F32, &device).into(),
        &config,
        Quantization::None,
    )
    .expect("t5-small builds");
    let input: Vec<u32> = (100..116).collect();
    let ids = Tensor::new(input.as_slice(), &device)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mask = ids.ones_like().unwrap();
    let limits = [RowLimits {
        max_new: NEW_TOKENS,
        min_new: 0,
        window_bound: false,
    }];
    let contexts = [vec![0u32]];

    let mut group = c.benchmark_group("t5-small");
    group.sample_size(10);
    group.throughput(Throughput::Elements(NEW_TOKENS as u64));
    for beams in [1, 4] {
        // No EOS, so every run makes all its tokens.
        let settings = GenerationConfig {
            num_beams: beams,
            eos_token_ids: Vec::new(),
            ..GenerationConfig::default()
        };
        group.bench_function(format!("{NEW_TOKENS} new tokens, {beams} beam(s)"), |b| {
            // Inside the thread pool, as the command-line tool runs.
            b.iter(|| {
                rayon::scope(|_| {
                    let mut session =
                        T5Session::start(&model, &ids, &mask, beams, NEW_TOKENS + 1).unwrap();
                    let first = session.step(&vec![0; beams]).unwrap();
                    if beams > 1 {
                        generation::beam_search(&mut session, first, &contexts, &limits, &settings)
                            .unwrap()
                    } else {
                        generation::generate(
                            &mut session,
                            first,
                            &contexts,
                            &limits,
                            &settings,
                            |_, _| Flow::Continue,
                        )
                        .unwrap()
                    }
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_text2text);
criterion_main!(benches);
