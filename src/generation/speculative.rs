//! Speculative decoding: a cheap draft (the int8 copy of the model) proposes a few tokens
//! one at a time, and the model scores all of them in one pass. Greedy decoding keeps a
//! guess when it is the model's own choice; sampling keeps it with probability
//! min(1, p/q) and otherwise draws from what the model gives beyond the draft, max(0, p -
//! q) (speculative sampling, as transformers' assisted generation does), so tokens follow
//! the model's own distribution. The gain is that a batch-1 pass reads every weight once
//! however many tokens it checks.

use candle_core::{DType, Tensor};
use rand::Rng;

use super::{
    choose, greedy, logits, probabilities, rng, Flow, Generated, GenerationConfig, Row, RowLimits,
};
use crate::error::Result;

/// One prompt's model session that takes several tokens at once and can forget the newest:
/// what speculative decoding needs of the model and of its draft.
pub trait Rewind {
    /// Tokens seen so far, the prompt included.
    fn seen(&self) -> usize;

    /// Feeds `tokens` after those seen and returns the next-token logits after each of
    /// them, `(tokens, vocab)`.
    fn extend(&mut self, tokens: &[u32]) -> Result<Tensor>;

    /// Forgets every token seen after the first `len`.
    fn rewind(&mut self, len: usize) -> Result<()>;
}

/// A draft's guess, with the probabilities it was drawn from when sampling.
struct Guess {
    token: u32,
    probabilities: Option<Vec<f32>>,
}

/// Greedy or sampled generation for one row, checking up to `draft_tokens` tokens of
/// `draft` per pass of `model`. Both have seen `context`; `first_logits` `(1, vocab)` is
/// the model's answer to it. Processors and warpers apply to the draft's guesses as to the
/// model's choices, so that the guesses aim at what the model will pick. `on_token` sees
/// every new non-EOS token once it is kept.
///
/// The draft's length adapts as transformers' "heuristic" schedule does: one shorter after
/// a pass that rejected a guess (never below 1), two longer after one that kept them all
/// (never above `draft_tokens`), so that a draft that often misses costs few steps.
#[allow(clippy::too_many_arguments)]
pub fn generate_with_draft(
    model: &mut dyn Rewind,
    draft: &mut dyn Rewind,
    first_logits: Tensor,
    context: &[u32],
    limits: RowLimits,
    config: &GenerationConfig,
    draft_tokens: usize,
    mut on_token: impl FnMut(u32) -> Flow,
) -> Result<Generated> {
    let mut rng = rng(config);
    let mut row = Row::new(context, limits);
    let mut scores = first_logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let first = choose(&mut scores, &row, config, &mut rng);
    let mut done = row.push(first, config, &mut on_token);
    let mut length = draft_tokens;
    while !done {
        // The model has seen all but the last token of the sequence.
        let base = row.sequence.len();
        let room = row.limits.max_new - row.new_tokens().len();
        // Room for the guesses and the model's token after them.
        let guesses = propose(draft, &mut row, config, length.min(room - 1), &mut rng)?;
        let mut fed = Vec::with_capacity(guesses.len() + 1);
        fed.push(row.sequence[base - 1]);
        fed.extend(guesses.iter().map(|guess| guess.token));
        let checked: Vec<Vec<f32>> = model.extend(&fed)?.to_dtype(DType::F32)?.to_vec2()?;
        let mut accepted = 0;
        for (mut scores, guess) in checked
            .into_iter()
            .zip(guesses.iter().map(Some).chain([None]))
        {
            let token = match guess {
                Some(guess) => check(&mut scores, &row, config, guess, &mut rng),
                None => choose(&mut scores, &row, config, &mut rng),
            };
            done = row.push(token, config, &mut on_token);
            if done || guess.is_none_or(|guess| guess.token != token) {
                break;
            }
            accepted += 1;
        }
        // Forget the rejected guesses: the model keeps all but its own last token, and the
        // draft what it saw of the sequence.
        model.rewind(row.sequence.len() - 1)?;
        draft.rewind(draft.seen().min(base + accepted))?;
        length = if accepted < guesses.len() {
            length.saturating_sub(1).max(1)
        } else if accepted == length {
            (length + 2).min(draft_tokens)
        } else {
            length
        };
    }
    Ok(row.into_generated())
}

/// The model's token where the draft guessed `guess`: the guess itself if kept.
fn check(
    scores: &mut [f32],
    row: &Row,
    config: &GenerationConfig,
    guess: &Guess,
    rng: &mut impl Rng,
) -> u32 {
    let Some(drafted) = &guess.probabilities else {
        return greedy(scores, row, config);
    };
    let wanted = probabilities(scores, row, config);
    let token = guess.token as usize;
    if rng.random::<f32>() * drafted[token] < wanted[token] {
        return guess.token;
    }
    // Rejected, so the model wants the guess less than the draft did: draw from the
    // probability the model puts beyond the draft.
    let mut beyond: Vec<f32> = wanted
        .iter()
        .zip(drafted)
        .map(|(p, q)| (p - q).max(0.0))
        .collect();
    let total: f32 = beyond.iter().sum();
    if total <= 0.0 {
        // Only rounding separates the two: the model's own distribution.
        return logits::draw(&wanted, rng);
    }
    beyond.iter_mut().for_each(|p| *p /= total);
    logits::draw(&beyond, rng)
}

/// Up to `count` guesses of `draft` after `row`'s sequence, stopping after EOS. The draft
/// first sees what of the sequence it has not; the last guess is never fed to it.
fn propose(
    draft: &mut dyn Rewind,
    row: &mut Row,
    config: &GenerationConfig,
    count: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Guess>> {
    let base = row.sequence.len();
    let mut guesses = Vec::with_capacity(count);
    while guesses.len() < count {
        let unseen = &row.sequence[draft.seen()..];
        let logits = draft.extend(unseen)?;
        let mut scores: Vec<f32> = logits
            .get(unseen.len() - 1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        let guess = if config.samples() {
            let probabilities = probabilities(&mut scores, row, config);
            Guess {
                token: logits::draw(&probabilities, rng),
                probabilities: Some(probabilities),
            }
        } else {
            Guess {
                token: greedy(&mut scores, row, config),
                probabilities: None,
            }
        };
        // The guess stands in the sequence while the next is drafted, so that the
        // processors see it; the caller's sequence is restored below.
        row.sequence.push(guess.token);
        let eos = config.eos_token_ids.contains(&guess.token);
        guesses.push(guess);
        if eos {
            break;
        }
    }
    row.sequence.truncate(base);
    Ok(guesses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{generate, Decoder, FinishReason};

    const VOCAB: usize = 11;
    const EOS: u32 = 10;

    /// Next-token scores that depend on the whole sequence, like a model's; a draft
    /// (`wrong_one_in` > 0) pushes a token of its own about that often.
    fn scores(sequence: &[u32], wrong_one_in: u64) -> Vec<f32> {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for &token in sequence {
            hash = (hash ^ u64::from(token)).wrapping_mul(0x1000_0000_01b3);
        }
        let mut scores: Vec<f32> = (0..VOCAB as u64)
            .map(|v| ((hash >> (v * 5 % 59)) % 97) as f32 / 10.0 - 4.0)
            .collect();
        if wrong_one_in > 0 && hash.is_multiple_of(wrong_one_in) {
            scores[(hash % VOCAB as u64) as usize] += 20.0;
        }
        scores
    }

    /// One row's session; `wrong_one_in` > 0 makes it an imperfect draft.
    struct Mock {
        seen: Vec<u32>,
        wrong_one_in: u64,
        passes: usize,
    }

    impl Mock {
        fn logits(&self, from: usize) -> Tensor {
            let rows: Vec<f32> = (from..=self.seen.len())
                .skip(1)
                .flat_map(|end| scores(&self.seen[..end], self.wrong_one_in))
                .collect();
            let count = rows.len() / VOCAB;
            Tensor::from_vec(rows, (count, VOCAB), &candle_core::Device::Cpu).unwrap()
        }
    }

    impl Rewind for Mock {
        fn seen(&self) -> usize {
            self.seen.len()
        }

        fn extend(&mut self, tokens: &[u32]) -> Result<Tensor> {
            let from = self.seen.len();
            self.seen.extend_from_slice(tokens);
            self.passes += 1;
            Ok(self.logits(from))
        }

        fn rewind(&mut self, len: usize) -> Result<()> {
            assert!(len <= self.seen.len());
            self.seen.truncate(len);
            Ok(())
        }
    }

    impl Decoder for Mock {
        fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
            self.extend(tokens)
        }

        fn reorder(&mut self, _: &[u32]) -> Result<()> {
            unreachable!("one row")
        }
    }

    fn mock(context: &[u32], wrong_one_in: u64) -> Mock {
        Mock {
            seen: context.to_vec(),
            wrong_one_in,
            passes: 0,
        }
    }

    /// The model's next-token logits `(1, vocab)` after `context`.
    fn first_logits(context: &[u32]) -> Tensor {
        let all = mock(&[], 0).extend(context).unwrap();
        all.get(context.len() - 1).unwrap().unsqueeze(0).unwrap()
    }

    /// Drafted generation by fresh sessions that have seen `context`: the model, and a draft
    /// wrong one time in `wrong_one_in`. Returns both sessions with the result.
    fn run_drafted(
        context: &[u32],
        wrong_one_in: u64,
        limits: RowLimits,
        config: &GenerationConfig,
        draft_tokens: usize,
        on_token: impl FnMut(u32) -> Flow,
    ) -> (Generated, Mock, Mock) {
        let (mut model, mut draft) = (mock(context, 0), mock(context, wrong_one_in));
        let generated = generate_with_draft(
            &mut model,
            &mut draft,
            first_logits(context),
            context,
            limits,
            config,
            draft_tokens,
            on_token,
        )
        .unwrap();
        (generated, model, draft)
    }

    #[test]
    fn drafted_decoding_equals_plain_greedy_decoding() {
        let context = [3u32, 1, 4, 1, 5];
        let settings = [
            GenerationConfig::default(),
            GenerationConfig {
                repetition_penalty: 1.5,
                ..GenerationConfig::default()
            },
            GenerationConfig {
                no_repeat_ngram_size: 2,
                ..GenerationConfig::default()
            },
            GenerationConfig {
                eos_token_ids: vec![EOS],
                ..GenerationConfig::default()
            },
        ];
        let mut eos_seen = false;
        for config in &settings {
            for (max_new, min_new) in [(1, 0), (2, 0), (9, 0), (40, 0), (40, 30)] {
                let limits = RowLimits {
                    max_new,
                    min_new,
                    window_bound: false,
                };
                let mut plain_tokens = Vec::new();
                let plain = generate(
                    &mut mock(&context, 0),
                    first_logits(&context),
                    &[context.to_vec()],
                    &[limits],
                    config,
                    |_, token| {
                        plain_tokens.push(token);
                        Flow::Continue
                    },
                )
                .unwrap()
                .remove(0);
                eos_seen |= plain.finish == FinishReason::Eos;
                for draft_tokens in [0, 1, 3, 8] {
                    let mut tokens = Vec::new();
                    let (drafted, model, _) =
                        run_drafted(&context, 3, limits, config, draft_tokens, |token| {
                            tokens.push(token);
                            Flow::Continue
                        });
                    let case = format!("{config:?} {limits:?} draft {draft_tokens}");
                    assert_eq!(drafted, plain, "{case}");
                    assert_eq!(tokens, plain_tokens, "streamed, {case}");
                    // Each pass of the model made at least one token, and drafts saved some.
                    assert!(model.passes < plain.tokens.len().max(1), "{case}");
                    if draft_tokens > 1 && plain.tokens.len() > 8 {
                        assert!(model.passes * 3 < plain.tokens.len() * 2, "{case}");
                    }
                }
            }
        }
        assert!(eos_seen, "no case ended at EOS");
    }

    #[test]
    fn drafted_sampling_follows_the_models_distribution() {
        const RUNS: u64 = 20_000;
        const NEW: usize = 4;
        let context = [4u32, 2];
        let config = GenerationConfig {
            do_sample: true,
            temperature: 0.7,
            top_k: 6,
            repetition_penalty: 1.2,
            ..GenerationConfig::default()
        };
        let limits = RowLimits {
            max_new: NEW,
            min_new: 0,
            window_bound: false,
        };
        // Exact: each position's distribution under the model, over every path to it.
        let mut exact = vec![vec![0f64; VOCAB]; NEW];
        let mut paths = vec![(Row::new(&context, limits), 1f64)];
        for position in exact.iter_mut() {
            let mut next = Vec::new();
            for (row, chance) in paths {
                let mut scores = scores(&row.sequence, 0);
                let wanted = probabilities(&mut scores, &row, &config);
                for (token, &p) in wanted.iter().enumerate().filter(|(_, &p)| p > 0.0) {
                    position[token] += chance * f64::from(p);
                    let mut longer = Row::new(&context, limits);
                    longer.sequence = row.sequence.clone();
                    longer.sequence.push(token as u32);
                    next.push((longer, chance * f64::from(p)));
                }
            }
            paths = next;
        }
        let mut counts = vec![vec![0u64; VOCAB]; NEW];
        let mut kept = 0;
        for seed in 0..RUNS {
            let seeded = GenerationConfig {
                seed: Some(seed),
                ..config.clone()
            };
            let (drafted, model, _) =
                run_drafted(&context, 3, limits, &seeded, 3, |_| Flow::Continue);
            assert_eq!(drafted.tokens.len(), NEW);
            for (count, &token) in counts.iter_mut().zip(&drafted.tokens) {
                count[token as usize] += 1;
            }
            kept += NEW - 1 - model.passes;
        }
        for (position, (count, exact)) in counts.iter().zip(&exact).enumerate() {
            let distance: f64 = count
                .iter()
                .zip(exact)
                .map(|(&n, &p)| (n as f64 / RUNS as f64 - p).abs())
                .sum::<f64>()
                / 2.0;
            // Sampling noise alone gives ~0.006 at this many runs.
            assert!(
                distance < 0.025,
                "position {position}: total variation {distance}"
            );
        }
        // Guesses were kept and rejected both, or the test shows little.
        let guessed = (NEW - 1) as u64 * RUNS;
        assert!(
            (guessed / 10..guessed * 9 / 10).contains(&(kept as u64)),
            "{kept} of {guessed} kept"
        );
    }

    #[test]
    fn a_draft_that_misses_shrinks_to_one_guess() {
        let context = [1u32, 2, 3];
        let limits = RowLimits {
            max_new: 60,
            min_new: 0,
            window_bound: false,
        };
        let config = GenerationConfig::default();
        let (drafted, model, draft) =
            run_drafted(&context, 1, limits, &config, 8, |_| Flow::Continue);
        assert_eq!(drafted.tokens.len(), 60);
        // Eight guesses a pass would be ~8 draft steps per model pass; shrunk, ~1.
        assert!(
            draft.passes < model.passes * 2,
            "{} draft steps for {} passes",
            draft.passes,
            model.passes
        );
    }

    #[test]
    fn a_stop_ends_drafted_decoding_at_once() {
        let context = [2u32, 7];
        let limits = RowLimits {
            max_new: 30,
            min_new: 0,
            window_bound: false,
        };
        let mut seen = 0;
        let (drafted, _, _) =
            run_drafted(&context, 3, limits, &GenerationConfig::default(), 4, |_| {
                seen += 1;
                if seen == 6 {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            });
        assert_eq!(drafted.tokens.len(), 6);
        assert_eq!(drafted.finish, FinishReason::Stop);
    }
}
