//! Forced decoding: the score search would give a known output. Used to rescore n-best
//! lists with other models and to check that search reports what it found.

use candle_core::Device;

use super::ensemble::Ensemble;
use super::{add_attention, decode_step, Hypothesis, SearchConfig};
use crate::subword::{BOS_ID, EOS_ID, PAD_ID};

/// Scores `outputs[i]` (target subwords without BOS/EOS; `true` when the output ends
/// with EOS) as translations of `sources[i]`, with the penalties of `cfg`.
pub fn force_decode(
    ens: &Ensemble,
    sources: &[Vec<u32>],
    outputs: &[(Vec<u32>, bool)],
    cfg: &SearchConfig,
    device: &Device,
) -> anyhow::Result<Vec<Hypothesis>> {
    let vocab = ens.first().config().tgt_vocab_size;
    check_outputs(sources, outputs, vocab)?;
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let enc = ens.encode(sources, device)?;
    let mut state = ens.init(&enc)?;
    let steps: Vec<usize> = outputs
        .iter()
        .map(|(t, ended)| t.len() + usize::from(*ended))
        .collect();
    let mut log_prob = vec![0f32; sources.len()];
    let mut coverage: Vec<Vec<f32>> = sources.iter().map(|s| vec![0.0; s.len()]).collect();
    let mut attention: Vec<Vec<Vec<f32>>> = vec![Vec::new(); sources.len()];
    for t in 0..steps.iter().copied().max().unwrap_or(0) {
        let step = decode_step(ens, &enc, &state, &inputs_at(outputs, t), device)?;
        let weights = &step.weights;
        step.with_log_probs(|lp| {
            for (i, (tokens, _)) in outputs.iter().enumerate() {
                if t >= steps[i] {
                    continue;
                }
                let target = tokens.get(t).copied().unwrap_or(EOS_ID);
                log_prob[i] += lp[i * vocab + target as usize];
                add_attention(
                    &mut coverage[i],
                    &mut attention[i],
                    &weights[i],
                    cfg.keep_attention,
                );
            }
        })?;
        state = step.state;
    }
    Ok(outputs
        .iter()
        .enumerate()
        .map(|(i, (tokens, ended))| Hypothesis {
            tokens: tokens.clone(),
            log_prob: log_prob[i],
            score: cfg.score(log_prob[i], steps[i], &coverage[i]),
            ended: *ended,
            attention: cfg
                .keep_attention
                .then(|| std::mem::take(&mut attention[i])),
        })
        .collect())
}

/// As many outputs as sources, every token in the target vocabulary of `vocab` ids.
fn check_outputs(
    sources: &[Vec<u32>],
    outputs: &[(Vec<u32>, bool)],
    vocab: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        sources.len() == outputs.len(),
        "{} sources but {} outputs to score",
        sources.len(),
        outputs.len()
    );
    for (i, (tokens, _)) in outputs.iter().enumerate() {
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("output {i}: token id {bad} is outside the target vocabulary of {vocab}");
        }
    }
    Ok(())
}

/// The decoder's input at step `t` of each output: BOS, then the output's tokens (PAD
/// once an output has no more steps: its rows are computed but not read).
fn inputs_at(outputs: &[(Vec<u32>, bool)], t: usize) -> Vec<u32> {
    outputs
        .iter()
        .map(|(tokens, _)| match t {
            0 => BOS_ID,
            t => tokens.get(t - 1).copied().unwrap_or(PAD_ID),
        })
        .collect()
}
