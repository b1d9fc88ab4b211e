//! Greedy decoding: beam 1 without candidate lists. Each row takes its most probable
//! token; a sentence that ends leaves the batch.

use candle_core::Device;

use super::ensemble::{Ensemble, EnsembleEncoding};
use super::{add_attention, argmax, decode_step, rows_tensor, Hypothesis, SearchConfig, Step};
use crate::subword::{BOS_ID, EOS_ID};

/// The output of one sentence so far; one row of the decoder batch.
struct Row {
    sentence: usize,
    tokens: Vec<u32>,
    log_prob: f32,
    /// Summed attention per source subword (EOS excluded), for the coverage penalty.
    coverage: Vec<f32>,
    attention: Vec<Vec<f32>>,
    max_len: usize,
}

/// Where each sentence's hypothesis lands once its row finishes.
type Outputs = Vec<Option<Hypothesis>>;

impl Row {
    fn new(sentence: usize, src_len: usize, cfg: &SearchConfig) -> Self {
        Self {
            sentence,
            tokens: Vec::new(),
            log_prob: 0.0,
            coverage: vec![0.0; src_len],
            attention: Vec::new(),
            max_len: cfg.max_len(src_len),
        }
    }

    /// The token the decoder reads next: the last one output (BOS at first).
    fn last_token(&self) -> u32 {
        self.tokens.last().copied().unwrap_or(BOS_ID)
    }

    /// Stores the row's hypothesis as its sentence's output.
    fn finish(self, ended: bool, cfg: &SearchConfig, out: &mut Outputs) {
        let steps = self.tokens.len() + usize::from(ended);
        out[self.sentence] = Some(Hypothesis {
            score: cfg.score(self.log_prob, steps, &self.coverage),
            tokens: self.tokens,
            log_prob: self.log_prob,
            ended,
            attention: cfg.keep_attention.then_some(self.attention),
        });
    }
}

/// Greedy decoding of `sources` (subword ids without EOS) as one batch. The beam, n-best
/// and penalty settings only affect the reported score.
pub fn greedy_search(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Hypothesis>> {
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Outputs = vec![None; sources.len()];
    let mut enc = ens.encode_for_search(sources, &[], device)?;
    let mut state = ens.init(&enc)?;
    let rows = (sources.iter().enumerate()).map(|(i, s)| Row::new(i, s.len(), cfg));
    // Rows with a zero length bound never reach the decoder.
    let (empty, mut rows): (Vec<Row>, Vec<Row>) = rows.partition(|r| r.max_len == 0);
    for r in empty {
        r.finish(false, cfg, &mut out);
    }
    if rows.len() < sources.len() && !rows.is_empty() {
        let keep: Vec<u32> = rows.iter().map(|r| r.sentence as u32).collect();
        let keep = rows_tensor(&keep, device)?;
        enc = enc.select(&keep)?;
        state = state.select(&keep)?;
    }

    while !rows.is_empty() {
        let prev: Vec<u32> = rows.iter().map(Row::last_token).collect();
        let step = decode_step(ens, &enc, &state, &prev, device)?;
        let kept = advance_rows(&mut rows, &step, &enc, cfg, &mut out)?;
        if rows.is_empty() {
            break;
        }
        // Shrink the batch only when a row left it.
        if kept.len() < prev.len() {
            let keep = rows_tensor(&kept, device)?;
            enc = enc.select(&keep)?;
            state = step.state.select(&keep)?;
        } else {
            state = step.state;
        }
    }
    Ok(out
        .into_iter()
        .map(|h| h.expect("every sentence finishes"))
        .collect())
}

/// Extends every row by its most probable token and finishes the rows that end (EOS)
/// or reach their length bound. Returns the indices (rows of this step) of the rows
/// that stay, which are left in `rows`.
fn advance_rows(
    rows: &mut Vec<Row>,
    step: &Step,
    enc: &EnsembleEncoding,
    cfg: &SearchConfig,
    out: &mut Outputs,
) -> candle_core::Result<Vec<u32>> {
    let best: Vec<(u32, f32)> = step.with_log_probs(|lp| {
        lp.chunks_exact(step.columns())
            .map(|row| {
                let (column, l) = argmax(row);
                (enc.target_id(column), l)
            })
            .collect()
    })?;
    let mut kept = Vec::with_capacity(rows.len());
    let mut kept_rows = Vec::with_capacity(rows.len());
    for (i, (mut r, (token, l))) in rows.drain(..).zip(best).enumerate() {
        r.log_prob += l;
        add_attention(
            &mut r.coverage,
            &mut r.attention,
            &step.weights[i],
            cfg.keep_attention,
        );
        if token == EOS_ID {
            r.finish(true, cfg, out);
            continue;
        }
        r.tokens.push(token);
        if r.tokens.len() >= r.max_len {
            r.finish(false, cfg, out);
            continue;
        }
        kept.push(i as u32);
        kept_rows.push(r);
    }
    *rows = kept_rows;
    Ok(kept)
}
