//! Stream a greedy continuation of one prompt from a GPT-2-family checkpoint:
//! `cargo run --release --example generate -- MODEL PROMPT [DRAFT_TOKENS]`
//!
//! One prompt in f32 on a CPU with the int8 kernels (AVX512-VNNI or AVX2) decodes
//! speculatively with an int8 draft of up to DRAFT_TOKENS tokens (default 4; 0 decodes
//! plainly); the output is the same.

use std::io::Write;

use llmx::generation::Overrides;
use llmx::tasks::{generate::TextGenerator, LoadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: generate MODEL PROMPT [DRAFT_TOKENS]";
    let model = args.next().ok_or(usage)?;
    let prompt = args.next().ok_or(usage)?;
    let mut generator = TextGenerator::load(&model, &LoadOptions::default())?;
    if let Some(tokens) = args.next() {
        generator.set_draft_tokens(tokens.parse()?);
    }
    let mut settings = generator.defaults().clone();
    settings.apply(Overrides {
        do_sample: Some(false),
        max_new_tokens: Some(40),
        ..Overrides::default()
    });

    print!("{prompt}");
    // Inside rayon's pool, so that each step's parallel work starts at once (see lib.rs).
    let completion = rayon::scope(|_| {
        generator.generate(&[&prompt], &settings, &[], |_, piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        })
    })?
    .remove(0)?;
    println!(
        "\n[{} tokens, {:?}]",
        completion.tokens.len(),
        completion.finish
    );
    Ok(())
}
