//! Batched beam search.
//!
//! Every live hypothesis of every unfinished sentence is one row of the decoder batch.
//! Each step scores `2k` candidates per sentence (the `2k` best tokens of each of its
//! rows, merged), so that `k` non-EOS continuations survive even when EOS ranks high.
//! An EOS candidate among the top `k` ends a hypothesis. A sentence is done when none of
//! its live hypotheses can still beat its `nbest`-th finished one (an exact bound,
//! [`penalty::score_bound`]), when `k` hypotheses have ended and no live one is ahead
//! of them, or at the length bound; it then leaves the batch.
//!
//! A target prefix (interactive translation, auto-completion: OpenNMT-py's and Marian's
//! forced prefix) is scored but not searched: while a sentence's output is shorter than
//! its prefix, its one live hypothesis is extended by the prefix's next token, whatever
//! the model ranks first; the beam opens after it.

use candle_core::Device;
use rayon::prelude::*;

use super::ensemble::{Ensemble, EnsembleEncoding};
use super::{decode_step, penalty, rows_tensor, top_k, Hypothesis, SearchConfig, Step};
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

/// The search for one source sentence: its live hypotheses are consecutive rows of the
/// decoder batch.
struct Sentence {
    src_len: usize,
    max_len: usize,
    /// Target subwords every output starts with.
    prefix: Vec<u32>,
    live: Vec<Live>,
    finished: Vec<Hypothesis>,
}

/// A possible extension of a live hypothesis by one token.
struct Candidate {
    score: f32,
    log_prob: f32,
    /// Index into the sentence's live hypotheses.
    parent: usize,
    token: u32,
}

/// This step's view of one sentence's rows of the decoder batch.
struct SentenceRows<'a> {
    /// The sentence's first row in the batch.
    first: usize,
    /// Per row (= per live hypothesis): its `2k` best columns and their log-probabilities.
    tops: &'a [Vec<(u32, f32)>],
    /// Per row: the attention weights over the source positions.
    weights: &'a [Vec<f32>],
    /// While the prefix is forced: the log-probability of its next token in the
    /// sentence's one row.
    forced: Option<f32>,
}

impl Sentence {
    /// The search before the first step: one empty hypothesis, or, when the length
    /// bound allows no output at all, that empty output finished. The bound never cuts
    /// the prefix.
    fn new(src_len: usize, prefix: &[u32], cfg: &SearchConfig) -> Self {
        let mut s = Self {
            src_len,
            max_len: cfg.max_len(src_len).max(prefix.len()),
            prefix: prefix.to_vec(),
            live: vec![Live {
                tokens: Vec::new(),
                log_prob: 0.0,
                score: 0.0,
                coverage: vec![0.0; src_len],
                attention: Vec::new(),
            }],
            finished: Vec::new(),
        };
        if s.max_len == 0 {
            let mut h = s.live.pop().expect("the initial hypothesis");
            h.score = cfg.score(0.0, 0, &h.coverage);
            s.finish(h, false, cfg.keep_attention);
        }
        s
    }

    fn finish(&mut self, h: Live, ended: bool, keep_attention: bool) {
        self.finished.push(Hypothesis {
            tokens: h.tokens,
            log_prob: h.log_prob,
            score: h.score,
            ended,
            attention: keep_attention.then_some(h.attention),
        });
    }

    /// One step of this sentence: replaces the live hypotheses by their best
    /// continuations, finishes those that ended (or hit the length bound), and empties
    /// the beam once the search is over. Returns the batch row each new live hypothesis
    /// continues, in order.
    fn advance(
        &mut self,
        rows: &SentenceRows,
        enc: &EnsembleEncoding,
        cfg: &SearchConfig,
    ) -> Vec<u32> {
        let steps = self.live[0].tokens.len() + 1;
        let (mut live, mut parents, ended) = match (self.forced_token(), rows.forced) {
            (Some(token), Some(log_prob)) => self.force(token, log_prob, steps, rows, cfg),
            _ => {
                let (candidates, coverages) = self.score_candidates(steps, rows, enc, cfg);
                let candidates = best_candidates(candidates, 2 * cfg.beam);
                self.select(&candidates, &coverages, rows, cfg)
            }
        };
        for h in ended {
            self.finish(h, true, cfg.keep_attention);
        }
        if steps >= self.max_len {
            // The length bound: what is still live ends here, unended.
            for h in live.drain(..) {
                self.finish(h, false, cfg.keep_attention);
            }
            parents.clear();
        }
        self.live = live;
        if self.is_done(cfg) {
            self.live.clear();
            parents.clear();
        }
        parents.iter().map(|&p| (rows.first + p) as u32).collect()
    }

    /// The prefix token the next step must produce (`None`: the prefix is done). While
    /// it is forced, a sentence has one live hypothesis.
    fn forced_token(&self) -> Option<u32> {
        self.prefix.get(self.live.first()?.tokens.len()).copied()
    }

    /// A forced step: the one live hypothesis extended by `token`, scored as any
    /// candidate is (`log_prob` is the model's for `token` in that row).
    fn force(
        &self,
        token: u32,
        log_prob: f32,
        steps: usize,
        rows: &SentenceRows,
        cfg: &SearchConfig,
    ) -> (Vec<Live>, Vec<usize>, Vec<Live>) {
        let h = &self.live[0];
        let weights = &rows.weights[0];
        let coverage: Vec<f32> = h.coverage.iter().zip(weights).map(|(c, w)| c + w).collect();
        let penalties = penalty::Penalties {
            length: penalty::length_penalty(steps, cfg.alpha),
            coverage: penalty::coverage_penalty(&coverage, cfg.beta),
        };
        let log_prob = h.log_prob + log_prob;
        let c = Candidate {
            score: penalties.score(log_prob),
            log_prob,
            parent: 0,
            token,
        };
        let live = self.extend(&c, Some(token), &coverage, weights, cfg);
        (vec![live], vec![0], Vec::new())
    }

    /// Every live hypothesis' top tokens as scored candidates, with each hypothesis'
    /// coverage after this step. All hypotheses have `steps` scored steps after it, so
    /// the length penalty is computed once; the coverage penalty once per hypothesis.
    fn score_candidates(
        &self,
        steps: usize,
        rows: &SentenceRows,
        enc: &EnsembleEncoding,
        cfg: &SearchConfig,
    ) -> (Vec<Candidate>, Vec<Vec<f32>>) {
        let length = penalty::length_penalty(steps, cfg.alpha);
        let mut coverages = Vec::with_capacity(self.live.len());
        let mut candidates = Vec::with_capacity(2 * cfg.beam * self.live.len());
        let per_row = rows.tops.iter().zip(rows.weights);
        for (parent, (h, (top, weights))) in self.live.iter().zip(per_row).enumerate() {
            let coverage: Vec<f32> = h.coverage.iter().zip(weights).map(|(c, w)| c + w).collect();
            let penalties = penalty::Penalties {
                length,
                coverage: penalty::coverage_penalty(&coverage, cfg.beta),
            };
            candidates.extend(top.iter().map(|&(column, l)| {
                let log_prob = h.log_prob + l;
                Candidate {
                    score: penalties.score(log_prob),
                    log_prob,
                    parent,
                    token: enc.target_id(column),
                }
            }));
            coverages.push(coverage);
        }
        (candidates, coverages)
    }

    /// Splits the ranked candidates into the new live hypotheses (the `k` best non-EOS
    /// ones, with their parents' indices) and the hypotheses that end now (EOS among
    /// the top `k`: an EOS ranked lower would not have survived a beam of `k`).
    fn select(
        &self,
        candidates: &[Candidate],
        coverages: &[Vec<f32>],
        rows: &SentenceRows,
        cfg: &SearchConfig,
    ) -> (Vec<Live>, Vec<usize>, Vec<Live>) {
        let k = cfg.beam;
        let mut live = Vec::with_capacity(k);
        let mut parents = Vec::with_capacity(k);
        let mut ended = Vec::new();
        for (pos, c) in candidates.iter().enumerate() {
            let attention = &rows.weights[c.parent];
            if c.token == EOS_ID {
                if pos < k {
                    ended.push(self.extend(c, None, &coverages[c.parent], attention, cfg));
                }
            } else if live.len() < k {
                live.push(self.extend(c, Some(c.token), &coverages[c.parent], attention, cfg));
                parents.push(c.parent);
            }
        }
        (live, parents, ended)
    }

    /// The candidate as a hypothesis: its parent's tokens followed by `token` (`None`
    /// for EOS, which is scored but not part of the output).
    fn extend(
        &self,
        c: &Candidate,
        token: Option<u32>,
        coverage: &[f32],
        attention: &[f32],
        cfg: &SearchConfig,
    ) -> Live {
        let parent = &self.live[c.parent];
        let mut tokens = parent.tokens.clone();
        tokens.extend(token);
        let mut rows = Vec::new();
        if cfg.keep_attention {
            rows = parent.attention.clone();
            rows.push(attention[..self.src_len + 1].to_vec());
        }
        Live {
            tokens,
            log_prob: c.log_prob,
            score: c.score,
            coverage: coverage.to_vec(),
            attention: rows,
        }
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

/// The `n` best candidates, best first. Ties in score go to the higher log-probability,
/// then to the earlier parent and the lower token, so that the order never depends on
/// how the sort treats equal elements.
fn best_candidates(mut candidates: Vec<Candidate>, n: usize) -> Vec<Candidate> {
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.log_prob.total_cmp(&a.log_prob))
            .then(a.parent.cmp(&b.parent))
            .then(a.token.cmp(&b.token))
    });
    candidates.truncate(n);
    candidates
}

/// Row r of the decoder batch is a live hypothesis of sentence `rows[r]`: the sentence
/// of each row, in batch order.
fn row_sentences(sentences: &[Sentence]) -> Vec<u32> {
    sentences
        .iter()
        .enumerate()
        .flat_map(|(i, s)| std::iter::repeat_n(i as u32, s.live.len()))
        .collect()
}

/// The token each row feeds the decoder next: its hypothesis' last (BOS at first).
fn last_tokens(sentences: &[Sentence]) -> Vec<u32> {
    sentences
        .iter()
        .flat_map(|s| s.live.iter())
        .map(|h| h.tokens.last().copied().unwrap_or(BOS_ID))
        .collect()
}

/// Advances every unfinished sentence by `step`. Returns the parent row (a row of this
/// step) of every row of the next step.
fn advance_all(
    sentences: &mut [Sentence],
    step: &Step,
    enc: &EnsembleEncoding,
    cfg: &SearchConfig,
) -> candle_core::Result<Vec<u32>> {
    let mut parents: Vec<u32> = Vec::with_capacity(step.weights.len());
    let columns = step.columns();
    step.with_log_probs(|lp| {
        // The row scans are independent: run them on all threads before the
        // (sequential, cheap) bookkeeping per sentence.
        let tops: Vec<Vec<(u32, f32)>> = lp
            .par_chunks(step.columns())
            .map(|row| top_k(row, 2 * cfg.beam))
            .collect();
        let mut first = 0;
        for s in sentences.iter_mut().filter(|s| !s.live.is_empty()) {
            let end = first + s.live.len();
            // A forced token the step does not score (outside the vocabulary) can
            // never be produced: log-probability -inf.
            let forced = s.forced_token().map(|token| {
                enc.column_of(token)
                    .filter(|&c| (c as usize) < columns)
                    .map_or(f32::NEG_INFINITY, |c| lp[first * columns + c as usize])
            });
            let rows = SentenceRows {
                first,
                tops: &tops[first..end],
                weights: &step.weights[first..end],
                forced,
            };
            parents.extend(s.advance(&rows, enc, cfg));
            first = end;
        }
    })?;
    Ok(parents)
}

/// Beam search over `sources` (subword ids without EOS) as one batch; `nbest`
/// hypotheses per sentence, best first.
pub fn beam_search(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Vec<Hypothesis>>> {
    beam_search_with_prefixes(ens, sources, &[], cfg, device)
}

/// [`beam_search`] with every output of sentence `i` starting with the target subwords
/// `prefixes[i]` (no prefix where `prefixes` is shorter than `sources`). Each
/// hypothesis' tokens, log-probability and score include the prefix's.
pub fn beam_search_with_prefixes(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    prefixes: &[Vec<u32>],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Vec<Hypothesis>>> {
    cfg.validate()?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    // One encoding row per sentence; each step's batch repeats a sentence's row once
    // per live hypothesis.
    let forced: Vec<u32> = prefixes.iter().flatten().copied().collect();
    let per_sentence = ens.encode_for_search(sources, &forced, device)?;
    let mut sentences: Vec<Sentence> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| Sentence::new(s.len(), prefixes.get(i).map_or(&[], Vec::as_slice), cfg))
        .collect();
    let mut rows = row_sentences(&sentences);
    let mut enc = per_sentence.select(&rows_tensor(&rows, device)?)?;
    let mut state = ens.init(&enc)?;
    while !rows.is_empty() {
        let step = decode_step(ens, &enc, &state, &last_tokens(&sentences), device)?;
        let parents = advance_all(&mut sentences, &step, &enc, cfg)?;
        let next_rows = row_sentences(&sentences);
        if next_rows.is_empty() {
            break;
        }
        state = step.state.select(&rows_tensor(&parents, device)?)?;
        // The encoding only changes when a sentence left or its beam changed width.
        if next_rows != rows {
            enc = per_sentence.select(&rows_tensor(&next_rows, device)?)?;
        }
        rows = next_rows;
    }
    Ok(sentences
        .into_iter()
        .map(|s| s.into_nbest(cfg.nbest))
        .collect())
}
