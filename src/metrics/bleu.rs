//! BLEU (Papineni et al., 2002) exactly as sacreBLEU 2.x computes it.
//!
//! Per segment: tokenize (after optional lowercasing and right-stripping), count hypothesis
//! n-grams (n = 1..4), clip each by its largest count in any reference, and take as reference
//! length the reference length closest to the hypothesis length (the shorter on ties). The
//! corpus score combines the summed statistics with the brevity penalty and the chosen
//! smoothing.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;

use super::ngram::{self, max_merge, push_ngrams, runs};
use super::tokenize::{TokScratch, Tokenizer};
use super::{check_lengths, py_lower, py_rstrip, Metric, MetricError};

/// Maximum n-gram order, as sacreBLEU's default (its CLI offers no other).
pub const MAX_NGRAM_ORDER: usize = 4;
/// Per segment: `[sys_len, ref_len, correct_1..4, total_1..4]`, sacreBLEU's layout.
pub const STATS_WIDTH: usize = 2 + 2 * MAX_NGRAM_ORDER;

/// Smoothing of zero n-gram precisions (Chen & Cherry, 2014).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmoothMethod {
    /// No smoothing: a zero precision makes the score zero.
    None,
    /// Method 1: a zero count becomes `smooth_value` (default 0.1).
    Floor,
    /// Method 2: add `smooth_value` (default 1) to counts and totals of orders above 1.
    AddK,
    /// Method 3, mteval-v13a's: the k-th zero precision becomes 1 / (2^k · total).
    #[default]
    Exp,
}

impl SmoothMethod {
    fn name(&self) -> &'static str {
        match self {
            SmoothMethod::None => "none",
            SmoothMethod::Floor => "floor",
            SmoothMethod::AddK => "add-k",
            SmoothMethod::Exp => "exp",
        }
    }

    /// sacreBLEU's default smoothing value, for the methods that take one.
    pub fn default_value(&self) -> Option<f64> {
        match self {
            SmoothMethod::Floor => Some(0.1),
            SmoothMethod::AddK => Some(1.0),
            SmoothMethod::None | SmoothMethod::Exp => None,
        }
    }
}

impl fmt::Display for SmoothMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SmoothMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(SmoothMethod::None),
            "floor" => Ok(SmoothMethod::Floor),
            "add-k" => Ok(SmoothMethod::AddK),
            "exp" => Ok(SmoothMethod::Exp),
            other => Err(format!(
                "unknown smoothing method {other:?} (expected one of: exp, floor, add-k, none)"
            )),
        }
    }
}

/// BLEU options; `default()` is sacreBLEU's default (`13a`, mixed case, `exp`, `eff:no`).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BleuConfig {
    pub tokenize: Tokenizer,
    pub lowercase: bool,
    pub smooth_method: SmoothMethod,
    /// Value for `floor` / `add-k`; `None` takes the method's default.
    pub smooth_value: Option<f64>,
    /// Ignore n-gram orders with no hypothesis n-grams (sacreBLEU enables this for
    /// sentence-level BLEU).
    pub effective_order: bool,
}

/// A corpus (or sentence) BLEU score with everything sacreBLEU prints about it.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    /// 0–100.
    pub score: f64,
    /// Clipped n-gram matches per order (after add-k smoothing, as sacreBLEU reports them).
    pub counts: [f64; MAX_NGRAM_ORDER],
    /// Hypothesis n-grams per order (after add-k smoothing).
    pub totals: [f64; MAX_NGRAM_ORDER],
    /// Smoothed n-gram precisions, in percent.
    pub precisions: [f64; MAX_NGRAM_ORDER],
    /// Brevity penalty.
    pub bp: f64,
    pub sys_len: u64,
    pub ref_len: u64,
    /// Number of references per segment, for the signature.
    pub nrefs: usize,
    pub config: BleuConfig,
}

impl BleuScore {
    /// Hypothesis length over reference length (0 when there is no reference text).
    pub fn ratio(&self) -> f64 {
        if self.ref_len > 0 {
            self.sys_len as f64 / self.ref_len as f64
        } else {
            0.0
        }
    }

    /// sacreBLEU's signature, e.g. `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:rnmt-0.1.0`.
    pub fn signature(&self) -> String {
        signature(&self.config, self.nrefs, &[], false)
    }

    /// The part sacreBLEU prints after the score:
    /// `60.0/40.0/20.0/10.0 (BP = 1.000 ratio = 1.000 hyp_len = 10 ref_len = 10)`.
    pub fn verbose_score(&self) -> String {
        let prec: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "{} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            prec.join("/"),
            self.bp,
            self.ratio(),
            self.sys_len,
            self.ref_len
        )
    }
}

pub(crate) fn signature(
    cfg: &BleuConfig,
    nrefs: usize,
    extra: &[(&str, String)],
    short: bool,
) -> String {
    let smooth = match cfg.smooth_method.default_value() {
        Some(default) => format!(
            "{}[{:.2}]",
            cfg.smooth_method,
            cfg.smooth_value.unwrap_or(default)
        ),
        None => cfg.smooth_method.to_string(),
    };
    let case = if cfg.lowercase { "lc" } else { "mixed" };
    let eff = if cfg.effective_order { "yes" } else { "no" };
    let own = [
        ("case", "c", case.to_string()),
        ("eff", "e", eff.to_string()),
        ("tok", "tok", cfg.tokenize.to_string()),
        ("smooth", "s", smooth),
    ];
    super::format_signature(nrefs, extra, &own, short)
}

/// The BLEU scorer. Cheap to build; holds no corpus state.
#[derive(Debug, Clone, Default)]
pub struct Bleu {
    config: BleuConfig,
}

/// Per-thread buffers.
#[derive(Default)]
struct Scratch {
    tok: TokScratch,
    lower: String,
    units: Vec<u64>,
    prefix: Vec<u64>,
    bag: Vec<u64>,
    ref_runs: Vec<(u64, u32)>,
    one_ref: Vec<(u64, u32)>,
    merge: Vec<(u64, u32)>,
    hyp_runs: Vec<(u64, u32)>,
    ref_lens: Vec<usize>,
}

impl Bleu {
    pub fn new(config: BleuConfig) -> Self {
        Bleu { config }
    }

    pub fn config(&self) -> &BleuConfig {
        &self.config
    }

    /// Corpus BLEU of `hyps` against reference streams `refs` (`refs[k][i]` is the k-th
    /// reference of line `i`), identical to sacreBLEU's `BLEU(...).corpus_score`.
    pub fn corpus_score<S: AsRef<str> + Sync, R: AsRef<str> + Sync>(
        &self,
        hyps: &[S],
        refs: &[Vec<R>],
    ) -> Result<BleuScore, MetricError> {
        let (hyps, refs) = super::borrow_streams(hyps, refs);
        let totals = self.corpus_stats(&hyps, &refs)?;
        Ok(self.score_stats(&totals, refs.len()))
    }

    /// BLEU of a single segment (sacreBLEU's `sentence_score`); set `effective_order` in the
    /// config for sacreBLEU's sentence-level behaviour.
    pub fn sentence_score(&self, hyp: &str, refs: &[&str]) -> Result<BleuScore, MetricError> {
        if refs.is_empty() {
            return Err(MetricError::NoReferences);
        }
        let mut seg = [0u64; STATS_WIDTH];
        self.segment_into(hyp, refs.iter().copied(), &mut Scratch::default(), &mut seg);
        Ok(self.score_stats(&seg, refs.len()))
    }

    /// The final score from statistics summed over segments (sacreBLEU's `compute_bleu`).
    pub fn score_stats(&self, stats: &[u64], nrefs: usize) -> BleuScore {
        let cfg = &self.config;
        let (sys_len, ref_len) = (stats[0], stats[1]);
        let mut correct = [0f64; MAX_NGRAM_ORDER];
        let mut total = [0f64; MAX_NGRAM_ORDER];
        for n in 0..MAX_NGRAM_ORDER {
            correct[n] = stats[2 + n] as f64;
            total[n] = stats[2 + MAX_NGRAM_ORDER + n] as f64;
        }
        let smooth_value = cfg
            .smooth_value
            .or(cfg.smooth_method.default_value())
            .unwrap_or(0.0);

        let bp = if sys_len < ref_len {
            if sys_len > 0 {
                (1.0 - ref_len as f64 / sys_len as f64).exp()
            } else {
                0.0
            }
        } else {
            1.0
        };
        let mut precisions = [0f64; MAX_NGRAM_ORDER];
        let mut score = BleuScore {
            score: 0.0,
            counts: correct,
            totals: total,
            precisions,
            bp,
            sys_len,
            ref_len,
            nrefs,
            config: *cfg,
        };
        // No match at all is a zero score whatever the smoothing (sacreBLEU #141).
        if correct.iter().all(|&c| c == 0.0) {
            return score;
        }

        let mut smooth_mteval = 1.0f64;
        let mut eff_order = MAX_NGRAM_ORDER;
        for n in 0..MAX_NGRAM_ORDER {
            if cfg.smooth_method == SmoothMethod::AddK && n > 0 {
                correct[n] += smooth_value;
                total[n] += smooth_value;
            }
            if total[n] == 0.0 {
                break;
            }
            if cfg.effective_order {
                eff_order = n + 1;
            }
            if correct[n] == 0.0 {
                match cfg.smooth_method {
                    SmoothMethod::Exp => {
                        smooth_mteval *= 2.0;
                        precisions[n] = 100.0 / (smooth_mteval * total[n]);
                    }
                    SmoothMethod::Floor => precisions[n] = 100.0 * smooth_value / total[n],
                    SmoothMethod::AddK | SmoothMethod::None => {}
                }
            } else {
                precisions[n] = 100.0 * correct[n] / total[n];
            }
        }
        // sacreBLEU floors log(0) at -9999999999 rather than failing.
        let log_sum: f64 = precisions[..eff_order]
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        // exp(ln 100) is 100.00000000000004 in f64 (in sacreBLEU's Python too): a perfect
        // match must not score above 100. No printed digit changes.
        score.score = (bp * (log_sum / eff_order as f64).exp()).min(100.0);
        score.counts = correct;
        score.totals = total;
        score.precisions = precisions;
        score
    }

    /// One segment's statistics: tokenize, count n-grams, clip against the references.
    fn segment_into<'r>(
        &self,
        hyp: &str,
        refs: impl Iterator<Item = &'r str>,
        s: &mut Scratch,
        out: &mut [u64; STATS_WIDTH],
    ) {
        s.ref_lens.clear();
        s.ref_runs.clear();
        for (k, r) in refs.enumerate() {
            let len = self.bag_of(r, s);
            s.ref_lens.push(len);
            if k == 0 {
                runs(&s.bag, &mut s.ref_runs);
            } else {
                runs(&s.bag, &mut s.one_ref);
                max_merge(&mut s.ref_runs, &s.one_ref, &mut s.merge);
            }
        }
        let hyp_len = self.bag_of(hyp, s);
        runs(&s.bag, &mut s.hyp_runs);

        let mut correct = [0u64; MAX_NGRAM_ORDER];
        let mut total = [0u64; MAX_NGRAM_ORDER];
        ngram::for_each_pair(&s.hyp_runs, &s.ref_runs, |tag, h, r| {
            total[tag] += h as u64;
            correct[tag] += h.min(r) as u64;
        });
        out[0] = hyp_len as u64;
        out[1] = closest_ref_len(hyp_len, &s.ref_lens) as u64;
        out[2..2 + MAX_NGRAM_ORDER].copy_from_slice(&correct);
        out[2 + MAX_NGRAM_ORDER..].copy_from_slice(&total);
    }

    /// Fills `s.bag` with the sorted n-gram keys of `line`; returns its token count.
    fn bag_of(&self, line: &str, s: &mut Scratch) -> usize {
        let line = if self.config.lowercase {
            s.lower = py_lower(line);
            py_rstrip(&s.lower)
        } else {
            py_rstrip(line)
        };
        s.units.clear();
        let units = &mut s.units;
        self.config.tokenize.for_each_token(line, &mut s.tok, |t| {
            units.push(ngram::hash_bytes(t.as_bytes()))
        });
        s.bag.clear();
        push_ngrams(&s.units, MAX_NGRAM_ORDER, 0, &mut s.prefix, &mut s.bag);
        s.bag.sort_unstable();
        s.units.len()
    }
}

/// The reference length closest to the hypothesis length; the shorter one on ties.
fn closest_ref_len(hyp_len: usize, ref_lens: &[usize]) -> usize {
    let mut best: Option<(usize, usize)> = None;
    for &r in ref_lens {
        let diff = hyp_len.abs_diff(r);
        best = match best {
            Some((d, l)) if diff > d || (diff == d && r >= l) => Some((d, l)),
            _ => Some((diff, r)),
        };
    }
    best.map_or(0, |(_, l)| l)
}

impl Metric for Bleu {
    fn name(&self) -> String {
        "BLEU".to_string()
    }

    fn stats_width(&self) -> usize {
        STATS_WIDTH
    }

    fn segment_stats(&self, hyps: &[&str], refs: &[Vec<&str>]) -> Result<Vec<u64>, MetricError> {
        check_lengths(hyps.len(), refs, |r| r.len())?;
        let mut stats = vec![0u64; hyps.len() * STATS_WIDTH];
        stats
            .par_chunks_mut(STATS_WIDTH)
            .with_min_len(512)
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (i, out)| {
                let out: &mut [u64; STATS_WIDTH] =
                    out.try_into().expect("chunk has the stats width");
                self.segment_into(hyps[i], refs.iter().map(|r| r[i]), scratch, out);
            });
        Ok(stats)
    }

    fn corpus_stats(&self, hyps: &[&str], refs: &[Vec<&str>]) -> Result<Vec<u64>, MetricError> {
        check_lengths(hyps.len(), refs, |r| r.len())?;
        let totals = (0..hyps.len())
            .into_par_iter()
            .with_min_len(512)
            .fold(
                || (Scratch::default(), [0u64; STATS_WIDTH]),
                |(mut scratch, mut acc), i| {
                    let mut seg = [0u64; STATS_WIDTH];
                    self.segment_into(hyps[i], refs.iter().map(|r| r[i]), &mut scratch, &mut seg);
                    acc.iter_mut().zip(seg).for_each(|(a, s)| *a += s);
                    (scratch, acc)
                },
            )
            .map(|(_, acc)| acc)
            .reduce(
                || [0u64; STATS_WIDTH],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok(totals.to_vec())
    }

    fn score_from_stats(&self, stats: &[u64]) -> f64 {
        self.score_stats(stats, 0).score
    }

    fn verbose_from_stats(&self, stats: &[u64]) -> String {
        self.score_stats(stats, 0).verbose_score()
    }

    fn signature_with(&self, nrefs: usize, extra: &[(&str, String)], short: bool) -> String {
        signature(&self.config, nrefs, extra, short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/fuzz_targets/metrics.rs`): a one-token sentence equal to
    /// its reference scored 100.00000000000004.
    #[test]
    fn a_perfect_match_scores_at_most_100() {
        let chars = Bleu::new(BleuConfig {
            tokenize: Tokenizer::Char,
            ..BleuConfig::default()
        });
        let words = Bleu::new(BleuConfig::default());
        for (bleu, text) in [
            (&chars, "\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"),
            (&words, "x y z w v"),
            (&words, "Der Hund jagt die Katze ."),
        ] {
            let s = bleu.sentence_score(text, &[text]).unwrap();
            assert!(s.score <= 100.0 && s.score > 99.99, "{text:?}: {}", s.score);
        }
    }

    #[test]
    fn closest_reference_length_prefers_the_shorter_on_ties() {
        assert_eq!(closest_ref_len(5, &[7, 3]), 3);
        assert_eq!(closest_ref_len(5, &[3, 7]), 3);
        assert_eq!(closest_ref_len(5, &[9, 6, 4]), 4);
        assert_eq!(closest_ref_len(5, &[9]), 9);
    }
}
