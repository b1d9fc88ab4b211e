//! chrF (Popović, 2015) and chrF++ (Popović, 2017) exactly as sacreBLEU 2.x computes them.
//!
//! Character n-grams (n = 1..6) are taken after removing all whitespace; chrF++ adds word
//! unigrams and bigrams after splitting one punctuation mark off each word's end (or start).
//! With several references each segment keeps the statistics of the reference with the best
//! sentence-level F-score. The corpus score averages precision and recall over the orders that
//! have both hypothesis and reference n-grams ("effective order") and combines them into F-β.

use rayon::prelude::*;

use super::ngram::{self, push_ngrams, runs, MAX_ORDERS};
use super::{check_lengths, is_py_space, py_lower, py_split, Metric, MetricError};

/// chrF options; `default()` is sacreBLEU's chrF (char order 6, word order 0, β = 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ChrfConfig {
    pub char_order: usize,
    /// 0 for chrF, 2 for chrF++.
    pub word_order: usize,
    pub beta: u32,
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams.
    pub whitespace: bool,
    /// chrF++.py / NLTK-style epsilon smoothing instead of effective-order averaging.
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfConfig {
    /// chrF++: chrF plus word unigrams and bigrams.
    pub fn chrf_plus_plus() -> Self {
        ChrfConfig {
            word_order: 2,
            ..Self::default()
        }
    }

    fn order(&self) -> usize {
        self.char_order + self.word_order
    }

    pub fn validate(&self) -> Result<(), MetricError> {
        if self.char_order == 0 || self.order() > MAX_ORDERS {
            return Err(MetricError::InvalidConfig(format!(
                "chrF needs 1 <= char order and char order + word order <= {MAX_ORDERS}, got {} + {}",
                self.char_order, self.word_order
            )));
        }
        Ok(())
    }

    /// sacreBLEU's name: `chrF2`, `chrF2++`.
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChrfScore {
    /// 0–100.
    pub score: f64,
    pub nrefs: usize,
    pub config: ChrfConfig,
}

impl ChrfScore {
    pub fn name(&self) -> String {
        self.config.name()
    }

    /// e.g. `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:rnmt-0.1.0`.
    pub fn signature(&self) -> String {
        signature(&self.config, self.nrefs, &[], false)
    }
}

fn signature(cfg: &ChrfConfig, nrefs: usize, extra: &[(&str, String)], short: bool) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let own = [
        (
            "case",
            "c",
            if cfg.lowercase { "lc" } else { "mixed" }.to_string(),
        ),
        ("eff", "e", yes_no(!cfg.eps_smoothing)),
        ("nc", "nc", cfg.char_order.to_string()),
        ("nw", "nw", cfg.word_order.to_string()),
        ("space", "s", yes_no(cfg.whitespace)),
    ];
    super::format_signature(nrefs, extra, &own, short)
}

/// The chrF / chrF++ scorer.
#[derive(Debug, Clone, Default)]
pub struct Chrf {
    config: ChrfConfig,
}

#[derive(Default)]
struct Scratch {
    lower: String,
    units: Vec<u64>,
    prefix: Vec<u64>,
    bag: Vec<u64>,
    hyp_runs: Vec<(u64, u32)>,
    ref_runs: Vec<(u64, u32)>,
    stats: Vec<u64>,
}

/// Python's `string.punctuation`, which chrF++ splits off word edges.
fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

impl Chrf {
    pub fn new(config: ChrfConfig) -> Self {
        Chrf { config }
    }

    pub fn config(&self) -> &ChrfConfig {
        &self.config
    }

    fn width(&self) -> usize {
        3 * self.config.order()
    }

    /// Corpus chrF of `hyps` against reference streams `refs` (`refs[k][i]`).
    pub fn corpus_score<S: AsRef<str> + Sync, R: AsRef<str> + Sync>(
        &self,
        hyps: &[S],
        refs: &[Vec<R>],
    ) -> Result<ChrfScore, MetricError> {
        let (hyps, refs) = super::borrow_streams(hyps, refs);
        let totals = self.corpus_stats(&hyps, &refs)?;
        Ok(ChrfScore {
            score: self.f_score(&totals),
            nrefs: refs.len(),
            config: self.config,
        })
    }

    /// chrF of one segment against its references.
    pub fn sentence_score(&self, hyp: &str, refs: &[&str]) -> Result<ChrfScore, MetricError> {
        self.config.validate()?;
        if refs.is_empty() {
            return Err(MetricError::NoReferences);
        }
        let mut seg = vec![0u64; self.width()];
        self.segment_into(hyp, refs.iter().copied(), &mut Scratch::default(), &mut seg);
        Ok(ChrfScore {
            score: self.f_score(&seg),
            nrefs: refs.len(),
            config: self.config,
        })
    }

    /// F-β from `[hyp, ref, match]` triples per order, with sacreBLEU's operation order so
    /// that near-ties between references resolve the same way.
    pub fn f_score(&self, stats: &[u64]) -> f64 {
        let eps = 1e-16;
        let factor = (self.config.beta * self.config.beta) as f64;
        let mut score = 0.0;
        let (mut avg_prec, mut avg_rec) = (0.0f64, 0.0f64);
        let mut effective_order = 0usize;
        for t in stats.chunks_exact(3) {
            let (n_hyp, n_ref, n_match) = (t[0] as f64, t[1] as f64, t[2] as f64);
            let prec = if t[0] > 0 { n_match / n_hyp } else { eps };
            let rec = if t[1] > 0 { n_match / n_ref } else { eps };
            let denom = factor * prec + rec;
            score += if denom > 0.0 {
                (1.0 + factor) * prec * rec / denom
            } else {
                eps
            };
            if t[0] > 0 && t[1] > 0 {
                avg_prec += prec;
                avg_rec += rec;
                effective_order += 1;
            }
        }
        if self.config.eps_smoothing {
            return 100.0 * score / self.config.order() as f64;
        }
        if effective_order == 0 {
            return 0.0;
        }
        avg_prec /= effective_order as f64;
        avg_rec /= effective_order as f64;
        if avg_prec + avg_rec != 0.0 {
            let mut s = (1.0 + factor) * avg_prec * avg_rec;
            s /= (factor * avg_prec) + avg_rec;
            100.0 * s
        } else {
            0.0
        }
    }

    fn segment_into<'r>(
        &self,
        hyp: &str,
        refs: impl Iterator<Item = &'r str>,
        s: &mut Scratch,
        out: &mut [u64],
    ) {
        let order = self.config.order();
        self.bag_of(hyp, s);
        runs(&s.bag, &mut s.hyp_runs);
        let mut best = -1.0f64;
        s.stats.resize(3 * order, 0);
        for r in refs {
            self.bag_of(r, s);
            runs(&s.bag, &mut s.ref_runs);
            let mut hyp_n = [0u64; MAX_ORDERS];
            let mut ref_n = [0u64; MAX_ORDERS];
            let mut matches = [0u64; MAX_ORDERS];
            ngram::for_each_pair(&s.hyp_runs, &s.ref_runs, |tag, h, r| {
                hyp_n[tag] += h as u64;
                ref_n[tag] += r as u64;
                matches[tag] += h.min(r) as u64;
            });
            for i in 0..order {
                // sacreBLEU counts no hypothesis n-grams for an order the reference lacks.
                s.stats[3 * i] = if ref_n[i] > 0 { hyp_n[i] } else { 0 };
                s.stats[3 * i + 1] = ref_n[i];
                s.stats[3 * i + 2] = matches[i];
            }
            let f = self.f_score(&s.stats);
            if f > best {
                best = f;
                out.copy_from_slice(&s.stats);
            }
        }
    }

    /// Fills `s.bag` with the sorted keys of the segment's character and word n-grams.
    fn bag_of(&self, line: &str, s: &mut Scratch) {
        let cfg = &self.config;
        let line = if cfg.lowercase {
            s.lower = py_lower(line);
            &s.lower
        } else {
            line
        };
        s.bag.clear();
        s.units.clear();
        if cfg.whitespace {
            s.units.extend(line.chars().map(ngram::hash_char));
        } else {
            s.units.extend(
                line.chars()
                    .filter(|&c| !is_py_space(c))
                    .map(ngram::hash_char),
            );
        }
        push_ngrams(&s.units, cfg.char_order, 0, &mut s.prefix, &mut s.bag);
        if cfg.word_order > 0 {
            s.units.clear();
            let units = &mut s.units;
            let mut push = |w: &str| units.push(ngram::hash_bytes(w.as_bytes()));
            py_split(line, |w| {
                let mut chars = w.chars();
                let first = chars.next().expect("split fields are non-empty");
                let last = chars.next_back();
                match last {
                    // A one-character word stays whole.
                    None => push(w),
                    Some(l) if is_punct(l) => {
                        push(&w[..w.len() - l.len_utf8()]);
                        push(&w[w.len() - l.len_utf8()..]);
                    }
                    Some(_) if is_punct(first) => {
                        push(&w[..first.len_utf8()]);
                        push(&w[first.len_utf8()..]);
                    }
                    Some(_) => push(w),
                }
            });
            push_ngrams(
                &s.units,
                cfg.word_order,
                cfg.char_order,
                &mut s.prefix,
                &mut s.bag,
            );
        }
        s.bag.sort_unstable();
    }
}

impl Metric for Chrf {
    fn name(&self) -> String {
        self.config.name()
    }

    fn stats_width(&self) -> usize {
        self.width()
    }

    fn segment_stats(&self, hyps: &[&str], refs: &[Vec<&str>]) -> Result<Vec<u64>, MetricError> {
        self.config.validate()?;
        check_lengths(hyps.len(), refs, |r| r.len())?;
        let w = self.width();
        let mut stats = vec![0u64; hyps.len() * w];
        stats
            .par_chunks_mut(w)
            .with_min_len(256)
            .enumerate()
            .for_each_init(Scratch::default, |scratch, (i, out)| {
                self.segment_into(hyps[i], refs.iter().map(|r| r[i]), scratch, out);
            });
        Ok(stats)
    }

    fn corpus_stats(&self, hyps: &[&str], refs: &[Vec<&str>]) -> Result<Vec<u64>, MetricError> {
        self.config.validate()?;
        check_lengths(hyps.len(), refs, |r| r.len())?;
        let w = self.width();
        let totals = (0..hyps.len())
            .into_par_iter()
            .with_min_len(256)
            .fold(
                || (Scratch::default(), vec![0u64; w], vec![0u64; w]),
                |(mut scratch, mut seg, mut acc), i| {
                    self.segment_into(hyps[i], refs.iter().map(|r| r[i]), &mut scratch, &mut seg);
                    acc.iter_mut().zip(&seg).for_each(|(a, s)| *a += s);
                    (scratch, seg, acc)
                },
            )
            .map(|(_, _, acc)| acc)
            .reduce(
                || vec![0u64; w],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        Ok(totals)
    }

    fn score_from_stats(&self, stats: &[u64]) -> f64 {
        self.f_score(stats)
    }

    fn signature_with(&self, nrefs: usize, extra: &[(&str, String)], short: bool) -> String {
        signature(&self.config, nrefs, extra, short)
    }
}
