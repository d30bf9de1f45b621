//! Logits processors and token choice, on one row of scores at a time, with transformers'
//! exact rules.

use rand::Rng;

/// transformers' repetition penalty: every distinct token of `sequence` has its score
/// divided by `penalty` when positive and multiplied by it when negative, once.
pub fn repetition_penalty(scores: &mut [f32], sequence: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut distinct = sequence.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for token in distinct {
        if let Some(score) = scores.get_mut(token as usize) {
            *score = if *score < 0.0 {
                *score * penalty
            } else {
                *score / penalty
            };
        }
    }
}

/// Forbids `tokens` (e.g. EOS before the minimum length).
pub fn suppress(scores: &mut [f32], tokens: &[u32]) {
    for &token in tokens {
        if let Some(score) = scores.get_mut(token as usize) {
            *score = f32::NEG_INFINITY;
        }
    }
}

/// Forbids every token that would complete an n-gram already in `tokens`.
pub fn no_repeat_ngram(scores: &mut [f32], tokens: &[u32], n: usize) {
    if n == 0 || tokens.len() + 1 < n {
        return;
    }
    let prefix = &tokens[tokens.len() + 1 - n..];
    for window in tokens.windows(n) {
        if &window[..n - 1] == prefix {
            suppress(scores, &window[n - 1..]);
        }
    }
}

pub fn temperature(scores: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        scores.iter_mut().for_each(|s| *s /= temperature);
    }
}

/// Keeps the `k` highest scores, and every score tied with the k-th.
pub fn top_k(scores: &mut [f32], k: usize) {
    if k == 0 || k >= scores.len() {
        return;
    }
    let mut sorted: Vec<f32> = scores.to_vec();
    let (_, &mut kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    scores
        .iter_mut()
        .filter(|s| **s < kth)
        .for_each(|s| *s = f32::NEG_INFINITY);
}

/// Nucleus filtering: drops the lowest-probability tokens whose cumulative probability stays
/// at or below `1 - p`, always keeping the `min_keep` most likely.
pub fn top_p(scores: &mut [f32], p: f32, min_keep: usize) {
    if p >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] > f32::NEG_INFINITY)
        .collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let probs = softmax(&order.iter().map(|&i| scores[i]).collect::<Vec<_>>());
    let removable = order.len().saturating_sub(min_keep);
    let mut cumulative = 0.0f32;
    for (&index, prob) in order.iter().zip(probs).take(removable) {
        cumulative += prob;
        if cumulative > 1.0 - p {
            break;
        }
        scores[index] = f32::NEG_INFINITY;
    }
}

pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The index of the highest score; the first of equals, as torch.argmax.
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &score) in scores.iter().enumerate() {
        if score > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws a token from the softmax of `scores`.
pub fn sample(scores: &[f32], rng: &mut impl Rng) -> u32 {
    draw(&softmax(scores), rng)
}

/// Draws a token with the probabilities `probs` (summing to 1).
pub fn draw(probs: &[f32], rng: &mut impl Rng) -> u32 {
    let mut target: f32 = rng.random();
    for (i, &p) in probs.iter().enumerate() {
        if target < p {
            return i as u32;
        }
        target -= p;
    }
    // Rounding left a sliver: the last token that can be drawn.
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut scores = [2.0, -2.0, 1.0];
        repetition_penalty(&mut scores, &[0, 1, 1], 2.0);
        assert_eq!(scores, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_keeps_ties() {
        let mut scores = [1.0, 3.0, 3.0, 0.5];
        top_k(&mut scores, 1);
        assert_eq!(scores, [f32::NEG_INFINITY, 3.0, 3.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let mut scores = [3.0, 2.0, 1.0, -0.1];
        top_p(&mut scores, 0.8, 1);
        assert!(scores[0].is_finite() && scores[1].is_finite());
        assert_eq!(scores[2], f32::NEG_INFINITY);
        assert_eq!(scores[3], f32::NEG_INFINITY);
    }

    #[test]
    fn no_repeat_ngram_bans_completions() {
        let mut scores = [0.0; 5];
        no_repeat_ngram(&mut scores, &[1, 2, 3, 1], 2);
        assert_eq!(scores[2], f32::NEG_INFINITY);
        assert_eq!(scores.iter().filter(|s| s.is_infinite()).count(), 1);
    }
}
