//! Beam search with transformers' (4.57) semantics: 2×beams candidates per step, finished
//! hypotheses scored by `sum log p / generated_len ^ length_penalty`, and `early_stopping`
//! true / false (heuristic) / never deciding when an input is done. Scores are kept in f32 and
//! penalised with -1e9 exactly as transformers does, so ties and rounding agree.

use candle_core::{DType, Tensor};
use rand::Rng;
use rayon::prelude::*;

use super::{
    logits, process, rng, warp, Decoder, EarlyStopping, FinishReason, Generated, GenerationConfig,
    RowLimits,
};
use crate::error::Result;
use crate::models::fast_math;

/// transformers' stand-in for "impossible".
const PENALTY: f32 = -1.0e9;

#[derive(Debug, Clone)]
struct Beam {
    tokens: Vec<u32>,
    score: f32,
}

#[derive(Debug, Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    score: f32,
    finished: bool,
}

struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
    /// The token ends the sequence (EOS or the length limit).
    stops: bool,
}

/// One input's beams and finished hypotheses.
struct Search {
    context: Vec<u32>,
    limits: RowLimits,
    running: Vec<Beam>,
    finished: Vec<Hypothesis>,
    /// False once no running beam can beat the finished ones.
    improvable: bool,
    done: bool,
}

impl Search {
    fn new(context: &[u32], limits: RowLimits, beams: usize) -> Self {
        Search {
            context: context.to_vec(),
            limits,
            // Only the first beam is live at the start, so the first step expands it alone.
            running: (0..beams)
                .map(|i| Beam {
                    tokens: Vec::new(),
                    score: if i == 0 { 0.0 } else { PENALTY },
                })
                .collect(),
            finished: (0..beams)
                .map(|_| Hypothesis {
                    tokens: Vec::new(),
                    score: PENALTY,
                    finished: false,
                })
                .collect(),
            improvable: true,
            done: false,
        }
    }

    fn all_finished(&self) -> bool {
        self.finished.iter().all(|h| h.finished)
    }
}

/// Runs beam search for every input. `decoder` holds `beams` rows per input (input `i` at rows
/// `i*beams..`), all at the state after `contexts[i]`; `first_logits` are their next-token
/// logits. Returns each input's best hypothesis.
pub fn beam_search(
    decoder: &mut dyn Decoder,
    first_logits: Tensor,
    contexts: &[Vec<u32>],
    limits: &[RowLimits],
    config: &GenerationConfig,
) -> Result<Vec<Generated>> {
    let beams = config.num_beams.max(1);
    let keep = 2.max(1 + config.eos_token_ids.len()) * beams;
    let mut rng = rng(config);
    let mut searches: Vec<Search> = contexts
        .iter()
        .zip(limits)
        .map(|(context, &limits)| Search::new(context, limits, beams))
        .collect();
    let mut logits = first_logits;
    let mut generated = 0usize;
    loop {
        let mut scores: Vec<f32> = logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let per_input = scores.len() / searches.len().max(1);
        // Inputs are scored apart, in parallel: each turns its beams' logits into
        // candidate scores and (unless sampling) picks the best `keep` of them.
        let picked: Vec<Vec<usize>> = searches
            .par_iter()
            .zip(scores.par_chunks_mut(per_input.max(1)))
            .map(|(search, scores)| {
                if search.done {
                    return Vec::new();
                }
                score_beams(search, scores, generated, config);
                if config.samples() {
                    Vec::new()
                } else {
                    top_indices(scores, keep)
                }
            })
            .collect();
        let mut next_tokens = Vec::with_capacity(searches.len() * beams);
        let mut next_rows = Vec::with_capacity(searches.len() * beams);
        let mut any_continuation = false;
        let inputs = searches
            .iter_mut()
            .zip(picked)
            .zip(scores.chunks(per_input.max(1)));
        for (index, ((search, picked), scores)) in inputs.enumerate() {
            let base = (index * beams) as u32;
            if search.done {
                // Frozen: keep the rows in place and feed anything.
                next_rows.extend((0..beams as u32).map(|b| base + b));
                next_tokens.extend(std::iter::repeat_n(config.pad_token_id.unwrap_or(0), beams));
                continue;
            }
            // Draws stay serial, input after input, so a seed repeats its samples.
            let picked = if config.samples() {
                draw_without_replacement(scores, keep, &mut rng)
            } else {
                picked
            };
            let candidates = candidates(search, scores, &picked, generated, config);
            any_continuation |= candidates.iter().any(|c| !c.stops);
            update_finished(search, &candidates, generated + 1, beams, config);
            let chosen = next_running(search, &candidates, beams);
            next_rows.extend(chosen.iter().map(|c| base + c.beam as u32));
            next_tokens.extend(chosen.iter().map(|c| c.token));
        }
        generated += 1;
        for search in searches.iter_mut().filter(|s| !s.done) {
            check_improvable(search, generated, config);
            let full = config.early_stopping == EarlyStopping::True && search.all_finished();
            let at_limit = generated >= search.limits.max_new;
            search.done = !search.improvable || full || at_limit;
        }
        if !any_continuation || searches.iter().all(|s| s.done) {
            break;
        }
        decoder.reorder(&next_rows)?;
        logits = decoder.step(&next_tokens)?;
    }
    Ok(searches
        .into_iter()
        .map(|search| {
            let best = search
                .finished
                .into_iter()
                .next()
                .filter(|h| h.finished)
                .map(|h| h.tokens)
                .or_else(|| search.running.into_iter().next().map(|b| b.tokens))
                .unwrap_or_default();
            let finish = match best.last() {
                Some(token) if config.eos_token_ids.contains(token) => FinishReason::Eos,
                _ => FinishReason::Length,
            };
            Generated {
                tokens: best,
                finish,
            }
        })
        .collect())
}

/// Turns one input's logits, beams x vocabulary, into candidate scores in place: each
/// beam's log-probabilities, processed (and warped when sampling), plus the beam's score.
fn score_beams(search: &Search, scores: &mut [f32], generated: usize, config: &GenerationConfig) {
    let vocab = scores.len() / search.running.len();
    let mut sequence = Vec::with_capacity(search.context.len() + generated + 1);
    for (beam, row) in search.running.iter().zip(scores.chunks_exact_mut(vocab)) {
        fast_math::with_simd(
            #[inline(always)]
            || fast_math::log_softmax_in_place(row),
        );
        sequence.clear();
        sequence.extend_from_slice(&search.context);
        sequence.extend_from_slice(&beam.tokens);
        process(row, &sequence, generated, search.limits.min_new, config);
        if config.samples() {
            warp(row, config, 2);
        }
        row.iter_mut().for_each(|score| *score += beam.score);
    }
}

/// The `picked` entries of one input's candidate scores (beams x vocabulary), in order.
fn candidates(
    search: &Search,
    scores: &[f32],
    picked: &[usize],
    generated: usize,
    config: &GenerationConfig,
) -> Vec<Candidate> {
    let vocab = scores.len() / search.running.len();
    picked
        .iter()
        .map(|&flat| {
            let token = (flat % vocab) as u32;
            Candidate {
                score: scores[flat],
                beam: flat / vocab,
                token,
                stops: config.eos_token_ids.contains(&token)
                    || generated + 1 >= search.limits.max_new,
            }
        })
        .collect()
}

/// Adds the candidates that just finished among the top `beams` to the finished hypotheses,
/// keeping the best `beams`.
fn update_finished(
    search: &mut Search,
    candidates: &[Candidate],
    length: usize,
    beams: usize,
    config: &GenerationConfig,
) {
    let length_norm = (length as f32).powf(config.length_penalty);
    let full = config.early_stopping == EarlyStopping::True && search.all_finished();
    let mut merged: Vec<Hypothesis> = std::mem::take(&mut search.finished);
    for (rank, candidate) in candidates.iter().enumerate() {
        let just_finished = candidate.stops && rank < beams;
        let mut score = candidate.score / length_norm;
        if full {
            score += PENALTY;
        }
        if !search.improvable {
            score += PENALTY;
        }
        if !just_finished {
            score += PENALTY;
        }
        let beam = &search.running[candidate.beam];
        let mut tokens = Vec::with_capacity(beam.tokens.len() + 1);
        tokens.extend_from_slice(&beam.tokens);
        tokens.push(candidate.token);
        merged.push(Hypothesis {
            tokens,
            score,
            finished: just_finished,
        });
    }
    // A stable sort: ties keep the earlier entry, as topk does in practice.
    merged.sort_by(|a, b| b.score.total_cmp(&a.score));
    merged.truncate(beams);
    search.finished = merged;
}

/// The best `beams` candidates that do not stop become the running beams.
fn next_running<'c>(
    search: &mut Search,
    candidates: &'c [Candidate],
    beams: usize,
) -> Vec<&'c Candidate> {
    let mut order: Vec<(f32, &Candidate)> = candidates
        .iter()
        .map(|c| (if c.stops { c.score + PENALTY } else { c.score }, c))
        .collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    order.truncate(beams);
    search.running = order
        .iter()
        .map(|&(score, candidate)| {
            let mut tokens = search.running[candidate.beam].tokens.clone();
            tokens.push(candidate.token);
            Beam { tokens, score }
        })
        .collect();
    order.into_iter().map(|(_, c)| c).collect()
}

/// transformers' early-stop heuristic: can the best running beam still beat the worst
/// finished hypothesis?
fn check_improvable(search: &mut Search, generated: usize, config: &GenerationConfig) {
    let length = if config.early_stopping == EarlyStopping::Never && config.length_penalty > 0.0 {
        search.limits.max_new
    } else {
        generated
    };
    let best_possible = search.running[0].score / (length as f32).powf(config.length_penalty);
    let worst_finished = if search.all_finished() {
        search
            .finished
            .iter()
            .map(|h| h.score)
            .fold(f32::INFINITY, f32::min)
    } else {
        PENALTY
    };
    search.improvable &= best_possible > worst_finished;
}

/// Indices of the `k` largest scores, best first; equal scores keep index order.
///
/// One pass that holds the best `k` so far: over beams x vocabulary (128k scores for 4
/// beams of T5) nearly every score loses to the k-th best at one comparison, where
/// selecting over an index array had cost 5% of a beam search's time.
fn top_indices(scores: &[f32], k: usize) -> Vec<usize> {
    let mut top: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for (index, &score) in scores.iter().enumerate() {
        // A later index loses ties, so it must beat the k-th outright.
        if top.len() == k && score.total_cmp(&scores[top[k - 1]]).is_le() {
            continue;
        }
        let at = top.partition_point(|&kept| scores[kept].total_cmp(&score).is_ge());
        top.insert(at, index);
        top.truncate(k);
    }
    top
}

/// `k` distinct indices drawn in proportion to softmax(scores), in draw order.
fn draw_without_replacement(scores: &[f32], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut remaining = scores.to_vec();
    let mut drawn = Vec::with_capacity(k);
    for _ in 0..k.min(scores.len()) {
        let index = logits::sample(&remaining, rng) as usize;
        remaining[index] = f32::NEG_INFINITY;
        drawn.push(index);
    }
    drawn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_indices_are_sorted_and_stable() {
        assert_eq!(top_indices(&[0.1, 0.5, 0.5, 0.9, -1.0], 3), [3, 1, 2]);
        assert!(top_indices(&[1.0], 0).is_empty());
        assert_eq!(top_indices(&[1.0, 2.0], 5), [1, 0]);
        // Against sorting every index, on scores with many ties and infinities.
        let mut state = 12345u32;
        let scores: Vec<f32> = (0..2000)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                match state >> 28 {
                    0 => f32::NEG_INFINITY,
                    1 => f32::INFINITY,
                    bits => (bits % 7) as f32 - 3.0 + (state % 3) as f32 * 0.25,
                }
            })
            .collect();
        let mut sorted: Vec<usize> = (0..scores.len()).collect();
        sorted.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        for k in [1, 2, 8, 100, 2000] {
            assert_eq!(top_indices(&scores, k), sorted[..k], "k = {k}");
        }
    }
}
