//! Speculative greedy decoding: a cheap draft (the int8 copy of the model) proposes a few
//! tokens one at a time, and the model scores all of them in one pass. Every token kept is
//! the model's own greedy choice, so the output is what plain greedy decoding gives; the
//! gain is that a batch-1 step reads every weight once however many tokens it checks.

use candle_core::{DType, Tensor};

use super::{greedy, Flow, Generated, GenerationConfig, Row, RowLimits};
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

/// Greedy generation for one row, checking up to `draft_tokens` tokens of `draft` per pass
/// of `model`. Both have seen `context`; `first_logits` `(1, vocab)` is the model's answer
/// to it. The processors (repetition penalty, n-gram blocking, minimum length) apply to the
/// draft's guesses as to the model's choices, so that the guesses aim at what the model
/// will pick. `on_token` sees every new non-EOS token once it is the model's choice.
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
    if config.samples() {
        return Err(crate::Error::Generation(
            "speculative decoding is greedy only; sampling needs plain decoding".into(),
        ));
    }
    let mut row = Row::new(context, limits);
    let mut scores = first_logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let first = greedy(&mut scores, &row, config);
    let mut done = row.push(first, config, &mut on_token);
    let mut length = draft_tokens;
    while !done {
        // The model has seen all but the last token of the sequence.
        let base = row.sequence.len();
        let room = row.limits.max_new - row.new_tokens().len();
        // Room for the guesses and the model's token after them.
        let guesses = propose(draft, &mut row, config, length.min(room - 1))?;
        let mut fed = Vec::with_capacity(guesses.len() + 1);
        fed.push(row.sequence[base - 1]);
        fed.extend_from_slice(&guesses);
        let checked: Vec<Vec<f32>> = model.extend(&fed)?.to_dtype(DType::F32)?.to_vec2()?;
        let mut accepted = 0;
        for (mut scores, guess) in checked
            .into_iter()
            .zip(guesses.iter().map(Some).chain([None]))
        {
            let token = greedy(&mut scores, &row, config);
            done = row.push(token, config, &mut on_token);
            if done || guess != Some(&token) {
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

/// Up to `count` greedy guesses of `draft` after `row`'s sequence, stopping after EOS. The
/// draft first sees what of the sequence it has not; the last guess is never fed to it.
fn propose(
    draft: &mut dyn Rewind,
    row: &mut Row,
    config: &GenerationConfig,
    count: usize,
) -> Result<Vec<u32>> {
    let base = row.sequence.len();
    let mut guesses = Vec::with_capacity(count);
    while guesses.len() < count {
        let unseen = &row.sequence[draft.seen()..];
        let logits = draft.extend(unseen)?;
        let mut scores: Vec<f32> = logits
            .get(unseen.len() - 1)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
        // The guess stands in the sequence while the next is drafted, so that the
        // processors see it; the caller's sequence is restored below.
        let guess = greedy(&mut scores, row, config);
        row.sequence.push(guess);
        guesses.push(guess);
        if config.eos_token_ids.contains(&guess) {
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

    #[test]
    fn drafted_decoding_equals_plain_greedy_decoding() {
        let context = [3u32, 1, 4, 1, 5];
        let first = || {
            mock(&[], 0)
                .extend(&context)
                .unwrap()
                .get(4)
                .unwrap()
                .unsqueeze(0)
        };
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
                    first().unwrap(),
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
                    let (mut model, mut draft) = (mock(&context, 0), mock(&context, 3));
                    let mut tokens = Vec::new();
                    let drafted = generate_with_draft(
                        &mut model,
                        &mut draft,
                        first().unwrap(),
                        &context,
                        limits,
                        config,
                        draft_tokens,
                        |token| {
                            tokens.push(token);
                            Flow::Continue
                        },
                    )
                    .unwrap();
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
    fn a_draft_that_misses_shrinks_to_one_guess() {
        let context = [1u32, 2, 3];
        let first = mock(&[], 0).extend(&context).unwrap().get(2).unwrap();
        let limits = RowLimits {
            max_new: 60,
            min_new: 0,
            window_bound: false,
        };
        let (mut model, mut draft) = (mock(&context, 0), mock(&context, 1));
        let drafted = generate_with_draft(
            &mut model,
            &mut draft,
            first.unsqueeze(0).unwrap(),
            &context,
            limits,
            &GenerationConfig::default(),
            8,
            |_| Flow::Continue,
        )
        .unwrap();
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
        let first = mock(&[], 0).extend(&context).unwrap().get(1).unwrap();
        let limits = RowLimits {
            max_new: 30,
            min_new: 0,
            window_bound: false,
        };
        let mut seen = 0;
        let drafted = generate_with_draft(
            &mut mock(&context, 0),
            &mut mock(&context, 3),
            first.unsqueeze(0).unwrap(),
            &context,
            limits,
            &GenerationConfig::default(),
            4,
            |_| {
                seen += 1;
                if seen == 6 {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            },
        )
        .unwrap();
        assert_eq!(drafted.tokens.len(), 6);
        assert_eq!(drafted.finish, FinishReason::Stop);
    }
}
