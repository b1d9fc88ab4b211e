//! Batched beam search.
//!
//! Every live hypothesis of every unfinished sentence is one row of the decoder batch.
//! Each step scores `2k` candidates per sentence (the `2k` best tokens of each of its
//! rows, merged), so that `k` non-EOS continuations survive even when EOS ranks high.
//! An EOS candidate among the top `k` ends a hypothesis. A sentence is done when none of
//! its live hypotheses can still beat its `nbest`-th finished one (an exact bound,
//! [`penalty::score_bound`]), when `k` hypotheses have ended and no live one is ahead
//! of them, or at the length bound; it then leaves the batch.

use candle_core::Device;
use rayon::prelude::*;

use super::ensemble::Ensemble;
use super::{penalty, rows_tensor, top_k, with_host_f32, Hypothesis, SearchConfig};
use crate::subword::{BOS_ID, EOS_ID};

/// A hypothesis still being extended.
#[derive(Clone)]
struct Live {
    tokens: Vec<u32>,
    log_prob: f32,
    /// The GNMT score of the hypothesis as it stands.
    score: f32,
    /// Summed attention per source subword (EOS excluded: it is not a word to cover).
    coverage: Vec<f32>,
    attention: Vec<Vec<f32>>,
}

struct Sentence {
    src_len: usize,
    max_len: usize,
    live: Vec<Live>,
    finished: Vec<Hypothesis>,
}

struct Candidate {
    score: f32,
    log_prob: f32,
    /// Index into the sentence's live hypotheses.
    parent: usize,
    token: u32,
}

impl Sentence {
    fn finish(&mut self, h: Live, score: f32, ended: bool, keep_attention: bool) {
        self.finished.push(Hypothesis {
            tokens: h.tokens,
            log_prob: h.log_prob,
            score,
            ended,
            attention: keep_attention.then_some(h.attention),
        });
    }

    fn is_done(&self, cfg: &SearchConfig) -> bool {
        let Some(best_live) = self.live.iter().map(|h| h.score).max_by(f32::total_cmp) else {
            return true;
        };
        if self.finished.len() < cfg.nbest {
            return false;
        }
        let mut scores: Vec<f32> = self.finished.iter().map(|h| h.score).collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        // Exact: no live hypothesis can still enter the n-best list.
        let nth = scores[cfg.nbest - 1];
        if self
            .live
            .iter()
            .all(|h| penalty::score_bound(h.log_prob, self.max_len, cfg.alpha) <= nth)
        {
            return true;
        }
        // With penalties the bound is loose; stop once `beam` hypotheses have ended and
        // none of the live ones is ahead of them now. (Without penalties the exact test
        // above already covers this case.)
        self.finished.len() >= cfg.beam && best_live <= scores[cfg.beam - 1]
    }

    fn into_nbest(mut self, nbest: usize) -> Vec<Hypothesis> {
        self.finished.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.log_prob.total_cmp(&a.log_prob))
        });
        self.finished.truncate(nbest);
        self.finished
    }
}

/// Beam search over `sources` (subword ids without EOS) as one batch; `nbest`
/// hypotheses per sentence, best first.
pub fn beam_search(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Vec<Hypothesis>>> {
    cfg.validate()?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let k = cfg.beam;
    let enc0 = ens.encode_for_search(sources, device)?;

    let mut sentences: Vec<Sentence> = sources
        .iter()
        .map(|s| Sentence {
            src_len: s.len(),
            max_len: cfg.max_len(s.len()),
            live: vec![Live {
                tokens: Vec::new(),
                log_prob: 0.0,
                score: 0.0,
                coverage: vec![0.0; s.len()],
                attention: Vec::new(),
            }],
            finished: Vec::new(),
        })
        .collect();
    for s in sentences.iter_mut().filter(|s| s.max_len == 0) {
        let h = s.live.pop().expect("the initial hypothesis");
        let score = cfg.score(0.0, 0, &h.coverage);
        s.finish(h, score, false, cfg.keep_attention);
    }

    // Row r of the decoder batch is hypothesis `row_hyp[r]` of sentence `row_sentence[r]`.
    let row_map = |sentences: &[Sentence]| -> Vec<u32> {
        sentences
            .iter()
            .enumerate()
            .flat_map(|(i, s)| std::iter::repeat_n(i as u32, s.live.len()))
            .collect()
    };
    let mut row_sentence = row_map(&sentences);
    let mut enc = enc0.select(&rows_tensor(&row_sentence, device)?)?;
    let mut state = ens.init(&enc)?;

    while !row_sentence.is_empty() {
        let prev: Vec<u32> = sentences
            .iter()
            .flat_map(|s| s.live.iter())
            .map(|h| h.tokens.last().copied().unwrap_or(BOS_ID))
            .collect();
        let (log_probs, next, weights) = ens.step(&enc, &state, &rows_tensor(&prev, device)?)?;
        let weights = weights
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let vocab = log_probs.dims()[1];

        // Parents (rows of this step) of the rows of the next step.
        let mut parents: Vec<u32> = Vec::with_capacity(row_sentence.len());
        with_host_f32(&log_probs, |lp| {
            // The row scans are independent: run them on all threads before the
            // (sequential, cheap) bookkeeping per sentence.
            let row_tops: Vec<Vec<(u32, f32)>> =
                lp.par_chunks(vocab).map(|row| top_k(row, 2 * k)).collect();
            let mut row = 0;
            for s in sentences.iter_mut().filter(|s| !s.live.is_empty()) {
                let first_row = row;
                row += s.live.len();
                let steps = s.live[0].tokens.len() + 1;
                let lp_norm = penalty::length_penalty(steps, cfg.alpha);
                let mut coverages = Vec::with_capacity(s.live.len());
                let mut candidates = Vec::with_capacity(2 * k * s.live.len());
                for (j, h) in s.live.iter().enumerate() {
                    let r = first_row + j;
                    let cov: Vec<f32> = h
                        .coverage
                        .iter()
                        .zip(&weights[r])
                        .map(|(c, w)| c + w)
                        .collect();
                    let cp = penalty::coverage_penalty(&cov, cfg.beta);
                    for &(column, l) in &row_tops[r] {
                        let log_prob = h.log_prob + l;
                        candidates.push(Candidate {
                            score: log_prob / lp_norm + cp,
                            log_prob,
                            parent: j,
                            token: enc.target_id(column),
                        });
                    }
                    coverages.push(cov);
                }
                candidates.sort_by(|a, b| {
                    b.score
                        .total_cmp(&a.score)
                        .then(b.log_prob.total_cmp(&a.log_prob))
                        .then(a.parent.cmp(&b.parent))
                        .then(a.token.cmp(&b.token))
                });
                candidates.truncate(2 * k);

                let extend = |c: &Candidate, token: Option<u32>| {
                    let h = &s.live[c.parent];
                    let mut tokens = h.tokens.clone();
                    tokens.extend(token);
                    let mut attention = Vec::new();
                    if cfg.keep_attention {
                        attention = h.attention.clone();
                        attention.push(weights[first_row + c.parent][..s.src_len + 1].to_vec());
                    }
                    Live {
                        tokens,
                        log_prob: c.log_prob,
                        score: c.score,
                        coverage: coverages[c.parent].clone(),
                        attention,
                    }
                };
                let mut live = Vec::with_capacity(k);
                let mut ended = Vec::new();
                for (pos, c) in candidates.iter().enumerate() {
                    if c.token == EOS_ID {
                        if pos < k {
                            ended.push((extend(c, None), c.score));
                        }
                    } else if live.len() < k {
                        live.push((extend(c, Some(c.token)), c.score));
                        parents.push((first_row + c.parent) as u32);
                    }
                }
                for (h, score) in ended {
                    s.finish(h, score, true, cfg.keep_attention);
                }
                if steps >= s.max_len {
                    // The length bound: what is still live ends here, unended.
                    parents.truncate(parents.len() - live.len());
                    for (h, score) in live.drain(..) {
                        s.finish(h, score, false, cfg.keep_attention);
                    }
                }
                s.live = live.into_iter().map(|(h, _)| h).collect();
                if s.is_done(cfg) {
                    parents.truncate(parents.len() - s.live.len());
                    s.live.clear();
                }
            }
        })?;

        let new_rows = row_map(&sentences);
        if new_rows.is_empty() {
            break;
        }
        state = next.select(&rows_tensor(&parents, device)?)?;
        if new_rows != row_sentence {
            enc = enc0.select(&rows_tensor(&new_rows, device)?)?;
        }
        row_sentence = new_rows;
    }
    Ok(sentences
        .into_iter()
        .map(|s| s.into_nbest(cfg.nbest))
        .collect())
}
