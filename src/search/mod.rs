//! Search: turning a source sentence into target subwords with a trained model (or an
//! ensemble of them).
//!
//! * [`beam_search`]: batched beam search — all (sentence, hypothesis) rows of a batch
//!   advance in one decoder step; the encoder runs once per sentence; a sentence whose
//!   search is over leaves the batch. Hypotheses are ranked by the GNMT score
//!   ([`penalty`]), n-best lists come out sorted. [`beam_search_with_prefixes`] forces
//!   the start of each output.
//! * [`greedy_search`]: beam 1 without the bookkeeping of candidates.
//! * [`force_decode`]: scores given outputs exactly as search scores them.
//! * [`alignment`]: hard alignments from attention.
//! * [`shortlist`]: search over a per-batch subset of the target vocabulary (opt-in).

pub mod alignment;
mod beam;
pub mod ensemble;
mod greedy;
pub mod penalty;
mod rescore;
pub mod shortlist;

use anyhow::ensure;
use candle_core::{DType, Device, Tensor};
use multiversion::multiversion;

use ensemble::{EnsembleEncoding, EnsembleState};

pub use beam::{beam_search, beam_search_with_prefixes};
pub use ensemble::Ensemble;
pub use greedy::greedy_search;
pub use rescore::force_decode;
pub use shortlist::{Shortlist, ShortlistSize};

use crate::model::ModelConfig;

/// How to search. `max_len_a`/`max_len_b` bound the output at `⌈a·|src|⌉ + b` subwords,
/// where `|src|` counts the source subwords plus EOS.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchConfig {
    pub beam: usize,
    /// Length normalisation strength (0: raw log-probability).
    pub alpha: f32,
    /// Coverage penalty strength (0: none).
    pub beta: f32,
    /// Hypotheses returned per sentence, best first; at most `beam`.
    pub nbest: usize,
    pub max_len_a: f32,
    pub max_len_b: usize,
    /// Keep each hypothesis' attention weights (for alignments and plots).
    pub keep_attention: bool,
}

/// The widest beam [`SearchConfig::validate`] accepts: eight times the widest beam
/// that helps; each step scores `beam × vocabulary` logits per sentence (at 64, a batch
/// of 32 with 32,000 subwords is 65 M floats, 260 MB).
pub const MAX_BEAM: usize = 64;

impl SearchConfig {
    /// Beam 5 with the model's α, β and length bound.
    pub fn for_model(cfg: &ModelConfig) -> Self {
        Self {
            beam: 5,
            alpha: cfg.decode_alpha,
            beta: cfg.decode_beta,
            nbest: 1,
            max_len_a: cfg.max_decode_len_a,
            max_len_b: cfg.max_decode_len_b,
            keep_attention: false,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(self.beam >= 1, "beam size must be at least 1");
        ensure!(
            self.beam <= MAX_BEAM,
            "beam size {} is over {MAX_BEAM}: BLEU stops improving by beam 10 or so (and \
             drops with wider beams, Koehn & Knowles 2017), while memory and time grow with \
             the beam (beam 10000 took 5.7 GB and gave no output in three minutes)",
            self.beam
        );
        ensure!(
            (1..=self.beam).contains(&self.nbest),
            "n-best size {} must be between 1 and the beam size {}",
            self.nbest,
            self.beam
        );
        for (name, v) in [("alpha", self.alpha), ("beta", self.beta)] {
            ensure!(
                v.is_finite() && v >= 0.0,
                "{name} = {v} must be a finite number >= 0"
            );
        }
        ensure!(
            self.max_len_a.is_finite() && self.max_len_a >= 0.0,
            "max_len_a = {} must be a finite number >= 0",
            self.max_len_a
        );
        Ok(())
    }

    /// The output bound for a source of `src_subwords` subwords (EOS not counted): the
    /// one length bound of search, greedy decoding and the trainer's validation.
    /// Saturating: `f32 as usize` already clamps a product too large for `usize` (and
    /// NaN, which [`Self::validate`] rules out, to 0), and the sums saturate too, so a
    /// huge `a` or `b` means "no bound" instead of wrapping round to a small one.
    pub fn max_len(&self, src_subwords: usize) -> usize {
        let scaled = (self.max_len_a * src_subwords.saturating_add(1) as f32).ceil() as usize;
        scaled.saturating_add(self.max_len_b)
    }

    fn score(&self, log_prob: f32, len: usize, coverage: &[f32]) -> f32 {
        penalty::gnmt_score(log_prob, len, coverage, self.alpha, self.beta)
    }
}

/// One output of search.
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// Target subwords, without BOS/EOS.
    pub tokens: Vec<u32>,
    /// `log P(Y|X)`: the sum over the scored steps (the tokens, then EOS if `ended`).
    pub log_prob: f32,
    /// The GNMT score `log P / lp + cp` that ranks hypotheses.
    pub score: f32,
    /// Whether the model ended the output (false: cut at the length bound).
    pub ended: bool,
    /// With `keep_attention`: one row per scored step, each over the source subwords
    /// followed by the source EOS.
    pub attention: Option<Vec<Vec<f32>>>,
}

impl Hypothesis {
    /// `|Y|` of the length penalty: the scored steps.
    pub fn steps(&self) -> usize {
        self.tokens.len() + usize::from(self.ended)
    }
}

/// Translates `sources` (subword ids without EOS) as one batch: greedy when `beam == 1`
/// and one hypothesis is wanted, beam search otherwise. Returns `nbest` hypotheses per
/// sentence, best first.
pub fn search(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Vec<Hypothesis>>> {
    if cfg.beam == 1 && cfg.nbest == 1 {
        cfg.validate()?;
        Ok(greedy_search(ens, sources, cfg, device)?
            .into_iter()
            .map(|h| vec![h])
            .collect())
    } else {
        beam_search(ens, sources, cfg, device)
    }
}

/// [`search`] with each output of sentence `i` starting with `prefixes[i]` (target
/// subwords; see [`beam_search_with_prefixes`]). Without any prefix it is [`search`];
/// with one it is always beam search (greedy search has no forced steps).
pub fn search_with_prefixes(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    prefixes: &[Vec<u32>],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Vec<Hypothesis>>> {
    if prefixes.iter().all(Vec::is_empty) {
        search(ens, sources, cfg, device)
    } else {
        beam_search_with_prefixes(ens, sources, prefixes, cfg, device)
    }
}

/// One decoder step of the ensemble, as greedy search, beam search and forced decoding
/// all read it.
struct Step {
    /// `[rows, columns]`: over the target vocabulary, or over the columns of the
    /// encoding's shortlist (see [`EnsembleEncoding::target_id`]).
    log_probs: Tensor,
    /// The decoder state after the step, row for row.
    state: EnsembleState,
    /// Per row, the attention weights over the source positions (subwords, EOS, then
    /// padding), on the host: every search adds them to its coverage.
    weights: Vec<Vec<f32>>,
}

impl Step {
    /// Columns per row of [`Self::log_probs`].
    fn columns(&self) -> usize {
        self.log_probs.dims()[1]
    }

    /// Runs `f` on the row-major log-probabilities (borrowed on the CPU, see
    /// [`crate::device::with_host_f32`]).
    fn with_log_probs<R>(&self, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
        crate::device::with_host_f32(&self.log_probs, f)
    }
}

/// Advances every row of `state` by one step, row `r` reading the token `prev[r]`.
fn decode_step(
    ens: &Ensemble,
    enc: &EnsembleEncoding,
    state: &EnsembleState,
    prev: &[u32],
    device: &Device,
) -> candle_core::Result<Step> {
    let (log_probs, state, weights) = ens.step(enc, state, &rows_tensor(prev, device)?)?;
    let weights = weights.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(Step {
        log_probs,
        state,
        weights,
    })
}

/// Adds one step's attention `weights` (over the source subwords, the source EOS, then
/// padding) to a hypothesis' `coverage` (one entry per source subword: EOS is not a
/// word to cover) and, with `keep_attention`, keeps the row (subwords and EOS).
fn add_attention(
    coverage: &mut [f32],
    attention: &mut Vec<Vec<f32>>,
    weights: &[f32],
    keep_attention: bool,
) {
    for (c, w) in coverage.iter_mut().zip(weights) {
        *c += w;
    }
    if keep_attention {
        attention.push(weights[..coverage.len() + 1].to_vec());
    }
}

/// The `k` largest entries of `row` as (index, value), largest first; ties keep the
/// lower index first, NaN never enters.
///
/// Once `k` entries are held, a value enters only if it beats the k-th, which over a
/// vocabulary row is rare: so the row is read in chunks, and a chunk none of whose values
/// beats the k-th (a comparison the compiler vectorises) is skipped whole. The entries
/// that are looked at go through exactly the test of the plain loop, so the result is the
/// same (tested against it). With int8 search the plain loop's one compare-and-branch per
/// value was 14 % of beam-5 decoding.
#[multiversion(targets("x86_64+avx2+fma"))]
fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    const CHUNK: usize = 32;
    if k == 0 {
        return Vec::new();
    }
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (c, chunk) in row.chunks(CHUNK).enumerate() {
        if best.len() == k {
            let kth = best[k - 1].1;
            // NaN compares false, as it must: it never enters.
            if !chunk.iter().fold(false, |any, &v| any | (v > kth)) {
                continue;
            }
        }
        for (j, &v) in chunk.iter().enumerate() {
            if v.is_nan() || (best.len() == k && v <= best[k - 1].1) {
                continue;
            }
            let pos = best.partition_point(|&(_, b)| b >= v);
            best.insert(pos, ((c * CHUNK + j) as u32, v));
            best.truncate(k);
        }
    }
    best
}

/// Index of the largest entry (the first of ties); NaN never wins.
fn argmax(row: &[f32]) -> (u32, f32) {
    let mut best = (0u32, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > best.1 {
            best = (i as u32, v);
        }
    }
    best
}

fn rows_tensor(rows: &[u32], device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(rows, rows.len(), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunked `top_k` against the plain loop it replaced, on rows with ties, NaN,
    /// infinities and lengths around the chunk size.
    #[test]
    fn top_k_equals_the_plain_loop() {
        fn plain(row: &[f32], k: usize) -> Vec<(u32, f32)> {
            let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
            for (i, &v) in row.iter().enumerate() {
                if v.is_nan() || (best.len() == k && v <= best[k - 1].1) {
                    continue;
                }
                let pos = best.partition_point(|&(_, b)| b >= v);
                best.insert(pos, (i as u32, v));
                best.truncate(k);
            }
            best
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for len in [0, 1, 31, 32, 33, 100, 8000] {
            for k in [1, 2, 10, 64] {
                let row: Vec<f32> = (0..len)
                    .map(|i| match rng.random_range(0..20) {
                        0 => f32::NAN,
                        1 => f32::NEG_INFINITY,
                        2 => f32::INFINITY,
                        // Few distinct values: many ties.
                        3..=9 => -(rng.random_range(0..6) as f32),
                        _ => -(i as f32 % 97.0) - rng.random_range(0.0..1.0f32),
                    })
                    .collect();
                let (a, b) = (top_k(&row, k), plain(&row, k));
                let bits =
                    |v: &[(u32, f32)]| v.iter().map(|&(i, x)| (i, x.to_bits())).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "len {len}, k {k}");
            }
        }
    }

    #[test]
    fn top_k_is_sorted_stable_and_skips_nan() {
        let row = [0.1, 0.5, f32::NAN, 0.5, -1.0, 0.9];
        assert_eq!(top_k(&row, 3), vec![(5, 0.9), (1, 0.5), (3, 0.5)]);
        assert_eq!(top_k(&row, 10).len(), 5);
        assert_eq!(argmax(&row), (5, 0.9));
        assert_eq!(argmax(&[0.2, 0.2]), (0, 0.2));
    }

    #[test]
    fn config_checks_nbest_and_penalties() {
        let mut cfg = SearchConfig::for_model(&ModelConfig::default());
        cfg.validate().unwrap();
        cfg.nbest = 6;
        assert!(cfg.validate().unwrap_err().to_string().contains("n-best"));
        cfg.nbest = 1;
        cfg.alpha = -1.0;
        assert!(cfg.validate().unwrap_err().to_string().contains("alpha"));
        cfg.alpha = 0.0;
        cfg.max_len_a = 1.5;
        cfg.max_len_b = 10;
        assert_eq!(cfg.max_len(5), 19);
    }

    #[test]
    fn huge_length_bounds_saturate() {
        // `--max-len-a 1e30 --max-len-b 18446744073709551615`: no wrap, no panic.
        let mut cfg = SearchConfig::for_model(&ModelConfig::default());
        cfg.max_len_a = 1e30;
        cfg.max_len_b = usize::MAX;
        cfg.validate().unwrap();
        assert_eq!(cfg.max_len(0), usize::MAX);
        assert_eq!(cfg.max_len(7), usize::MAX);
        assert_eq!(cfg.max_len(usize::MAX), usize::MAX);
        cfg.max_len_b = 0;
        assert_eq!(cfg.max_len(3), usize::MAX);
        cfg.max_len_a = 0.0;
        cfg.max_len_b = usize::MAX;
        assert_eq!(cfg.max_len(3), usize::MAX);
        cfg.max_len_a = 1.5;
        cfg.max_len_b = usize::MAX - 1;
        assert_eq!(cfg.max_len(1), usize::MAX);
        // Search's stopping bound stays a number for such a length.
        assert!(penalty::score_bound(-1.0, usize::MAX, 0.6) <= 0.0);
    }
}
