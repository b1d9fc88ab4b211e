//! Greedy decoding: beam 1 without candidate lists. Each row takes its most probable
//! token; a sentence that ends leaves the batch.

use candle_core::{Device, Tensor};

use super::ensemble::Ensemble;
use super::{argmax, rows_tensor, with_host_f32, Hypothesis, SearchConfig};
use crate::subword::{BOS_ID, EOS_ID};

struct Row {
    sentence: usize,
    tokens: Vec<u32>,
    log_prob: f32,
    coverage: Vec<f32>,
    attention: Vec<Vec<f32>>,
    max_len: usize,
}

/// Greedy decoding of `sources` (subword ids without EOS) as one batch. The beam, n-best
/// and penalty settings only affect the reported score.
pub fn greedy_search(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Hypothesis>> {
    let mut out: Vec<Option<Hypothesis>> = vec![None; sources.len()];
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let mut enc = ens.encode_for_search(sources, device)?;
    let mut state = ens.init(&enc)?;
    let finish = |out: &mut Vec<Option<Hypothesis>>, r: Row, ended: bool| {
        let steps = r.tokens.len() + usize::from(ended);
        out[r.sentence] = Some(Hypothesis {
            score: cfg.score(r.log_prob, steps, &r.coverage),
            tokens: r.tokens,
            log_prob: r.log_prob,
            ended,
            attention: cfg.keep_attention.then_some(r.attention),
        });
    };
    let mut rows = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter().enumerate() {
        let row = Row {
            sentence: i,
            tokens: Vec::new(),
            log_prob: 0.0,
            coverage: vec![0.0; s.len()],
            attention: Vec::new(),
            max_len: cfg.max_len(s.len()),
        };
        rows.push(row);
    }
    // Rows with a zero length bound never reach the decoder.
    let (empty, mut rows): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|r| r.max_len == 0);
    for r in empty {
        finish(&mut out, r, false);
    }
    if rows.len() < sources.len() && !rows.is_empty() {
        let keep: Vec<u32> = rows.iter().map(|r| r.sentence as u32).collect();
        let keep = rows_tensor(&keep, device)?;
        enc = enc.select(&keep)?;
        state = state.select(&keep)?;
    }

    while !rows.is_empty() {
        let prev: Vec<u32> = rows
            .iter()
            .map(|r| r.tokens.last().copied().unwrap_or(BOS_ID))
            .collect();
        let prev = Tensor::from_vec(prev, rows.len(), device)?;
        let (log_probs, next, weights) = ens.step(&enc, &state, &prev)?;
        let weights = weights
            .to_dtype(candle_core::DType::F32)?
            .to_vec2::<f32>()?;
        let vocab = log_probs.dims()[1];
        let best: Vec<(u32, f32)> = with_host_f32(&log_probs, |lp| {
            lp.chunks_exact(vocab)
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
            let src_len = r.coverage.len();
            for (c, w) in r.coverage.iter_mut().zip(&weights[i]) {
                *c += w;
            }
            if cfg.keep_attention {
                r.attention.push(weights[i][..src_len + 1].to_vec());
            }
            if token == EOS_ID {
                finish(&mut out, r, true);
                continue;
            }
            r.tokens.push(token);
            if r.tokens.len() >= r.max_len {
                finish(&mut out, r, false);
                continue;
            }
            kept.push(i as u32);
            kept_rows.push(r);
        }
        rows = kept_rows;
        if rows.is_empty() {
            break;
        }
        if kept.len() < prev.dims()[0] {
            let keep = rows_tensor(&kept, device)?;
            enc = enc.select(&keep)?;
            state = next.select(&keep)?;
        } else {
            state = next;
        }
    }
    Ok(out
        .into_iter()
        .map(|h| h.expect("every sentence finishes"))
        .collect())
}
