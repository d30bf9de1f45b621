//! Token generation shared by every decoder: greedy and sampling over any [`Decoder`].
//!
//! The loop works on host-side score rows so that every logits processor is one plain
//! function (see [`logits`]); the model only produces next-token logits.

mod beam;
mod config;
pub mod logits;
mod speculative;

use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use beam::beam_search;
pub use config::{EarlyStopping, GenerationConfig, Overrides, TokenIds};
pub use speculative::{generate_with_draft, Rewind};

use crate::error::Result;

/// A model mid-generation: it has seen the prompts and answers next-token logits.
pub trait Decoder {
    /// Feeds one token per row and returns the next-token logits, `(rows, vocab)`.
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor>;

    /// Makes row `i` continue what row `rows[i]` was (beam search).
    fn reorder(&mut self, rows: &[u32]) -> Result<()>;
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// The token limit or the model window was reached.
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
}

/// The new tokens of one row (EOS included when it ended the row, as transformers returns it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
}

/// Per-row bounds on the number of new tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowLimits {
    /// Most new tokens (the smaller of the settings and what the window leaves).
    pub max_new: usize,
    /// New tokens before EOS may be chosen.
    pub min_new: usize,
    /// True when `max_new` is set by the model window rather than the settings.
    pub window_bound: bool,
}

/// What the caller says after seeing a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// A stop string completed: finish this row.
    Stop,
}

struct Row {
    /// The context followed by the new tokens.
    sequence: Vec<u32>,
    context_len: usize,
    limits: RowLimits,
    finish: Option<FinishReason>,
}

impl Row {
    fn new(context: &[u32], limits: RowLimits) -> Self {
        Row {
            sequence: context.to_vec(),
            context_len: context.len(),
            limits,
            finish: None,
        }
    }

    fn new_tokens(&self) -> &[u32] {
        &self.sequence[self.context_len..]
    }

    /// Appends a chosen token, shows it to `on_token` unless it is EOS, and returns whether
    /// the row has finished.
    fn push(
        &mut self,
        token: u32,
        config: &GenerationConfig,
        on_token: &mut impl FnMut(u32) -> Flow,
    ) -> bool {
        self.sequence.push(token);
        self.finish = if config.eos_token_ids.contains(&token) {
            Some(FinishReason::Eos)
        } else if on_token(token) == Flow::Stop {
            Some(FinishReason::Stop)
        } else if self.new_tokens().len() >= self.limits.max_new {
            Some(FinishReason::Length)
        } else {
            None
        };
        self.finish.is_some()
    }

    fn process(&self, scores: &mut [f32], config: &GenerationConfig) {
        let generated = self.new_tokens().len();
        process(
            scores,
            &self.sequence,
            generated,
            self.limits.min_new,
            config,
        );
    }

    fn into_generated(mut self) -> Generated {
        Generated {
            tokens: self.sequence.split_off(self.context_len),
            finish: self.finish.unwrap_or(FinishReason::Length),
        }
    }
}

/// Greedy or sampled generation for every row of `decoder`, starting from the logits that
/// followed the prompts. `context` is what each row's decoder has seen (the prompt, or the
/// decoder start token), which the repetition penalty and n-gram blocking count;
/// `on_token(row, token)` sees every new non-EOS token as it is chosen.
pub fn generate(
    decoder: &mut dyn Decoder,
    first_logits: Tensor,
    context: &[Vec<u32>],
    limits: &[RowLimits],
    config: &GenerationConfig,
    mut on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<Vec<Generated>> {
    let mut rng = rng(config);
    let pad = config
        .pad_token_id
        .or_else(|| config.eos_token_ids.first().copied())
        .unwrap_or(0);
    let mut rows: Vec<Row> = context
        .iter()
        .zip(limits)
        .map(|(context, &limits)| Row::new(context, limits))
        .collect();
    let mut logits = first_logits;
    let mut next = vec![pad; rows.len()];
    loop {
        let scores: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        for (index, (row, mut scores)) in rows.iter_mut().zip(scores).enumerate() {
            if row.finish.is_some() {
                next[index] = pad;
                continue;
            }
            let token = choose(&mut scores, row, config, &mut rng);
            next[index] = token;
            row.push(token, config, &mut |token| on_token(index, token));
        }
        if rows.iter().all(|row| row.finish.is_some()) {
            break;
        }
        logits = decoder.step(&next)?;
    }
    Ok(rows.into_iter().map(Row::into_generated).collect())
}

/// Picks the next token of a row: processors, then argmax or warpers and a draw.
fn choose(scores: &mut [f32], row: &Row, config: &GenerationConfig, rng: &mut ChaCha8Rng) -> u32 {
    if !config.samples() {
        return greedy(scores, row, config);
    }
    logits::draw(&probabilities(scores, row, config), rng)
}

/// The sampling distribution of a row's next token: processors, warpers, softmax.
fn probabilities(scores: &mut [f32], row: &Row, config: &GenerationConfig) -> Vec<f32> {
    row.process(scores, config);
    warp(scores, config, 1);
    logits::softmax(scores)
}

/// The most likely next token of a row, after the processors.
fn greedy(scores: &mut [f32], row: &Row, config: &GenerationConfig) -> u32 {
    row.process(scores, config);
    logits::argmax(scores)
}

/// The logits processors, in transformers' order, for a row whose `sequence` (context and
/// new tokens) has `generated` new tokens so far.
fn process(
    scores: &mut [f32],
    sequence: &[u32],
    generated: usize,
    min_new: usize,
    config: &GenerationConfig,
) {
    logits::repetition_penalty(scores, sequence, config.repetition_penalty);
    logits::no_repeat_ngram(scores, sequence, config.no_repeat_ngram_size);
    if generated < min_new {
        logits::suppress(scores, &config.eos_token_ids);
    }
}

/// The sampling warpers, in transformers' order.
fn warp(scores: &mut [f32], config: &GenerationConfig, min_keep: usize) {
    logits::temperature(scores, config.temperature);
    if config.top_k > 0 {
        logits::top_k(scores, config.top_k.max(min_keep));
    }
    logits::top_p(scores, config.top_p, min_keep);
}

/// A seeded generator, or one seeded from the operating system.
fn rng(config: &GenerationConfig) -> ChaCha8Rng {
    match config.seed {
        Some(seed) => ChaCha8Rng::seed_from_u64(seed),
        None => ChaCha8Rng::from_os_rng(),
    }
}
