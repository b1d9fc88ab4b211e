//! The GNMT scoring function (Wu et al. 2016, section 7):
//! `s(Y, X) = log P(Y|X) / lp(Y) + cp(X; Y)` with
//! `lp(Y) = (5 + |Y|)^α / 6^α` and `cp = β · Σᵢ log(min(Σⱼ aᵢⱼ, 1))`.
//!
//! Raw log-probabilities favour short outputs (every token can only lower them); the
//! length penalty divides that bias away and the coverage penalty favours outputs whose
//! attention has visited every source position.

/// `lp(Y)` for an output of `len` scored steps (subwords plus the final EOS).
pub fn length_penalty(len: usize, alpha: f32) -> f32 {
    if alpha == 0.0 {
        return 1.0;
    }
    ((5.0 + len as f32) / 6.0).powf(alpha)
}

/// Attention that underflowed to zero would make the penalty −∞ and swamp every other
/// term; a floor keeps such hypotheses comparable (merely very bad).
const MIN_COVERAGE: f32 = 1e-20;

/// `cp` for the summed attention of each source position (`coverage[i] = Σⱼ aᵢⱼ`).
pub fn coverage_penalty(coverage: &[f32], beta: f32) -> f32 {
    if beta == 0.0 {
        return 0.0;
    }
    beta * coverage
        .iter()
        .map(|&c| c.clamp(MIN_COVERAGE, 1.0).ln())
        .sum::<f32>()
}

/// The two penalties of one hypothesis: what its score adds to the log-probability.
/// Beam search computes `length` once per step (every hypothesis of a sentence has the
/// same length) and `coverage` once per hypothesis, then scores all the hypothesis'
/// candidate tokens with them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Penalties {
    /// `lp(Y)`, see [`length_penalty`].
    pub length: f32,
    /// `cp(X; Y)`, see [`coverage_penalty`].
    pub coverage: f32,
}

impl Penalties {
    pub fn new(len: usize, coverage: &[f32], alpha: f32, beta: f32) -> Self {
        Self {
            length: length_penalty(len, alpha),
            coverage: coverage_penalty(coverage, beta),
        }
    }

    /// `log P / lp + cp`: the one place the GNMT score is computed.
    pub fn score(self, log_prob: f32) -> f32 {
        log_prob / self.length + self.coverage
    }
}

/// The GNMT score of a hypothesis.
pub fn gnmt_score(log_prob: f32, len: usize, coverage: &[f32], alpha: f32, beta: f32) -> f32 {
    Penalties::new(len, coverage, alpha, beta).score(log_prob)
}

/// The highest score any extension of a live hypothesis could still reach, for outputs
/// of at most `max_len` steps: its log-probability can only fall (so dividing it by the
/// largest length penalty is the most favourable case) and `cp ≤ 0`.
pub fn score_bound(log_prob: f32, max_len: usize, alpha: f32) -> f32 {
    log_prob.min(0.0) / length_penalty(max_len, alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_paper() {
        assert_eq!(length_penalty(7, 0.0), 1.0);
        assert_eq!(length_penalty(1, 0.6), 1.0);
        let lp = length_penalty(7, 0.6);
        assert!((lp - 2f32.powf(0.6)).abs() < 1e-6, "{lp}");
        assert_eq!(coverage_penalty(&[0.1, 2.0], 0.0), 0.0);
        let cp = coverage_penalty(&[0.5, 2.0, 1.0], 0.2);
        assert!((cp - 0.2 * 0.5f32.ln()).abs() < 1e-6, "{cp}");
        assert!(coverage_penalty(&[0.0], 1.0).is_finite());
        let s = gnmt_score(-4.0, 7, &[0.5], 0.6, 0.2);
        assert!((s - (-4.0 / lp + 0.2 * 0.5f32.ln())).abs() < 1e-6);
    }

    #[test]
    fn bound_is_never_exceeded_by_extensions() {
        let (alpha, beta, max_len) = (0.6, 0.2, 12);
        let bound = score_bound(-3.0, max_len, alpha);
        for len in 3..=max_len {
            for extra in [0.0, -0.5, -2.0] {
                let s = gnmt_score(-3.0 + extra, len, &[0.7, 1.3], alpha, beta);
                assert!(s <= bound, "len {len}: {s} > {bound}");
            }
        }
    }
}
