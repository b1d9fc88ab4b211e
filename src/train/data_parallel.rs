//! Synchronous data parallelism: the trainer's side of [`crate::dist`].
//!
//! The contract: N ranks train the same model as one process. Every rank builds the
//! same global batch (the token-budget batch one process would build for that step),
//! takes its shard of it ([`balanced_shards`]: contiguous sentences, balanced target
//! tokens), computes the gradient of its shard's summed loss divided by the *global*
//! token count, and the gradients are summed over the ranks: the sum is the gradient of
//! the global batch's mean loss, up to float summation order. Every rank then applies the
//! same clipped Adam update to the same weights. Rank 0 alone validates, logs and writes
//! checkpoints; after each validation it sends its training state (best score, plateau
//! schedule, early stopping) to the others.
//!
//! The gradients travel in one flat buffer per step; of the source embedding only the
//! rows the global batch looks up ([`LookedUpRows`]: every other row's gradient is zero on
//! every rank, and stays zero in the sum).
//!
//! What differs from one process: the order of float additions (each rank sums its own
//! sentences, the all-reduce adds the shards), and dropout masks, which a rank draws for
//! its shard from its own stream ([`dropout_rng`]): with dropout the run is an equally
//! valid sample, not the same numbers.
//!
//! Batch workers (`batch_workers`, the trainer's threads) keep the same contract inside a
//! process: a rank's shard (or one process's whole batch) is split over its workers the
//! same way, each worker's part's gradient is computed on threads of its own and the
//! parts are added in worker order; worker `w` of rank `r` of `W` workers per rank draws
//! its dropout masks from stream `r·W + w`.

use std::collections::HashMap;

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::EncodedPair;
use crate::dist::{balanced_shards, Collective};
use crate::io::hex;
use crate::train::checkpoint::TrainState;
use crate::train::config::TrainConfig;

/// This rank's part of the global batch `global` (pair indices in batch order).
pub fn shard<'a>(pairs: &[EncodedPair], global: &'a [usize], comm: &dyn Collective) -> &'a [usize] {
    let tokens: Vec<usize> = global.iter().map(|&i| pairs[i].tgt_len()).collect();
    let ranges = balanced_shards(&tokens, comm.size());
    &global[ranges[comm.rank()].clone()]
}

/// Target tokens of a batch: what its mean loss divides by.
pub fn target_tokens(pairs: &[EncodedPair], indices: &[usize]) -> usize {
    indices.iter().map(|&i| pairs[i].tgt_len()).sum()
}

/// Rank `rank`'s dropout stream for the update after `step`: a function of the seed,
/// step and rank only, so a resumed data-parallel run draws the masks an uninterrupted
/// one would (with the same number of ranks). Each step starts 2^36 words into its own
/// window of the rank's stream (a step uses far fewer: one word per 32 bits of mask).
pub fn dropout_rng(seed: u64, step: u64, rank: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(rank as u64 + 1);
    rng.set_word_pos(u128::from(step) << 36);
    rng
}

/// Rows of one embedding matrix (`vars[var]`, `[vocab, dim]`) that a step's global batch
/// looks up, sorted. An embedding's gradient is zero in every row its lookups miss, on
/// every rank, so only these rows travel: for the source embedding of a 1,024-token batch
/// about a tenth of its rows, and the exchange shrinks by about a quarter of the model
/// (config A). The sum is the dense sum's: untouched rows stay exactly 0.
pub struct LookedUpRows {
    pub var: usize,
    pub rows: Vec<u32>,
}

impl LookedUpRows {
    /// The source-embedding rows of the pairs `global`: their ids, EOS (appended to every
    /// source) and the other special tokens (PAD fills the padded batch).
    pub fn source(var: usize, vocab: usize, pairs: &[EncodedPair], global: &[usize]) -> Self {
        let mut seen = vec![false; vocab];
        for special in seen.iter_mut().take(crate::subword::SPECIAL_TOKENS.len()) {
            *special = true;
        }
        for &i in global {
            for &id in &pairs[i].src {
                if let Some(seen) = seen.get_mut(id as usize) {
                    *seen = true;
                }
            }
        }
        let rows = (0..vocab as u32).filter(|&id| seen[id as usize]).collect();
        Self { var, rows }
    }
}

/// The gradients of `vars`, in order, into one contiguous buffer: one all-reduce per
/// step instead of one message per tensor. A variable without a gradient contributes
/// zeros (another rank's shard may reach it); of `sparse`'s variable only its rows go in.
pub fn flatten_grads(
    grads: &GradStore,
    vars: &[Var],
    sparse: Option<&LookedUpRows>,
    buf: &mut Vec<f32>,
) -> Result<()> {
    buf.clear();
    for (v, var) in vars.iter().enumerate() {
        let rows = sparse.filter(|s| s.var == v).map(|s| &s.rows[..]);
        let n = match rows {
            Some(rows) => rows.len() * row_len(var),
            None => var.elem_count(),
        };
        let Some(g) = grads.get(var.as_tensor()) else {
            buf.extend(std::iter::repeat_n(0f32, n));
            continue;
        };
        crate::device::with_host_f32(g, |g| match rows {
            Some(rows) => {
                let d = row_len(var);
                for &r in rows {
                    buf.extend_from_slice(&g[r as usize * d..(r as usize + 1) * d]);
                }
            }
            None => buf.extend_from_slice(g),
        })?;
    }
    Ok(())
}

/// Puts the summed gradients of `buf` (laid out as [`flatten_grads`] wrote them, with the
/// same `sparse`) into `grads`, replacing this rank's own.
pub fn replace_grads(
    grads: &mut GradStore,
    vars: &[Var],
    sparse: Option<&LookedUpRows>,
    buf: &[f32],
) -> Result<()> {
    let mut offset = 0;
    for (v, var) in vars.iter().enumerate() {
        let g = match sparse.filter(|s| s.var == v) {
            Some(s) => {
                let d = row_len(var);
                let mut dense = vec![0f32; var.elem_count()];
                for (k, &r) in s.rows.iter().enumerate() {
                    let r = r as usize;
                    dense[r * d..(r + 1) * d].copy_from_slice(&buf[offset + k * d..][..d]);
                }
                offset += s.rows.len() * d;
                Tensor::from_vec(dense, var.shape(), var.device())?
            }
            None => {
                let n = var.elem_count();
                offset += n;
                Tensor::from_slice(&buf[offset - n..offset], var.shape(), var.device())?
            }
        };
        grads.insert(var.as_tensor(), g);
    }
    debug_assert_eq!(offset, buf.len());
    Ok(())
}

/// Elements per row of a matrix variable (its last dimension).
fn row_len(var: &Var) -> usize {
    var.dims().last().copied().unwrap_or(1)
}

/// Overwrites every rank's `vars` with rank 0's.
pub fn broadcast_vars(comm: &dyn Collective, vars: &[Var]) -> Result<()> {
    let mut buf = Vec::new();
    for var in vars {
        buf.extend(var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    comm.broadcast_f32(&mut buf)?;
    if !comm.is_root() {
        let mut offset = 0;
        for var in vars {
            let n = var.elem_count();
            var.set(&Tensor::from_slice(
                &buf[offset..offset + n],
                var.shape(),
                var.device(),
            )?)?;
            offset += n;
        }
    }
    Ok(())
}

/// Rank 0's tensors on every rank; `tensors` has the same names and shapes on all
/// ranks (the optimizer's moments of the same model).
pub fn broadcast_tensors(
    comm: &dyn Collective,
    tensors: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut buf = Vec::new();
    for name in &names {
        buf.extend(tensors[*name].flatten_all()?.to_vec1::<f32>()?);
    }
    comm.broadcast_f32(&mut buf)?;
    let mut out = HashMap::new();
    let mut offset = 0;
    for name in names {
        let t = &tensors[name];
        let n = t.elem_count();
        let shared = Tensor::from_slice(&buf[offset..offset + n], t.shape(), &Device::Cpu)?;
        out.insert(name.clone(), shared);
        offset += n;
    }
    Ok(out)
}

/// What rank 0 sends the others at start-up and after each validation.
#[derive(Serialize, Deserialize)]
pub struct RootState {
    pub state: TrainState,
    /// Step of rank 0's last checkpoint: whether a final one is still due.
    pub last_checkpoint: Option<u64>,
    /// Early stopping's verdict.
    pub stop: bool,
}

/// Sends rank 0's `RootState` to every rank; returns what rank 0 sent.
pub fn broadcast_root_state(comm: &dyn Collective, mine: RootState) -> Result<RootState> {
    let mut bytes = if comm.is_root() {
        serde_json::to_vec(&mine)?
    } else {
        Vec::new()
    };
    comm.broadcast_bytes(&mut bytes)?;
    if comm.is_root() {
        return Ok(mine);
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// Checks at start-up that every rank runs the same config, the same data and the same
/// vocabularies: a rank that did not would train on other batches or other subwords,
/// and the summed gradients would be nonsense. Every rank learns which ranks differ and
/// in what, so every rank's error says so.
pub fn check_ranks_agree(
    comm: &dyn Collective,
    cfg: &TrainConfig,
    pairs: &[&[EncodedPair]],
    vocabulary: &str,
) -> Result<()> {
    // The device and thread count may differ per rank (one GPU each).
    let mut shared = cfg.clone();
    shared.device = String::new();
    shared.threads = 0;
    let config = hex(&Sha256::digest(toml::to_string(&shared)?.as_bytes()));
    let mut h = Sha256::new();
    for set in pairs {
        h.update((set.len() as u64).to_le_bytes());
        for p in *set {
            h.update((p.src.len() as u64).to_le_bytes());
            p.src.iter().for_each(|id| h.update(id.to_le_bytes()));
            h.update((p.tgt.len() as u64).to_le_bytes());
            p.tgt.iter().for_each(|id| h.update(id.to_le_bytes()));
        }
    }
    let data = hex(&h.finalize());
    let mine = [config, data, vocabulary.to_string()];
    let mut root_bytes = mine.join("\n").into_bytes();
    comm.broadcast_bytes(&mut root_bytes)?;
    let root = String::from_utf8(root_bytes)?;
    let root: Vec<&str> = root.split('\n').collect();
    const WHAT: [&str; 3] = [
        "config (apart from device and threads)",
        "training data",
        "vocabularies (tokenizer files)",
    ];
    // Per rank, a bit per part that differs from rank 0's.
    let mut flags = vec![0f64; comm.size()];
    flags[comm.rank()] = (0..3)
        .filter(|&i| root.get(i) != Some(&mine[i].as_str()))
        .map(|i| f64::from(1u32 << i))
        .sum();
    comm.all_reduce_sum_f64(&mut flags)?;
    let differing: Vec<String> = flags
        .iter()
        .enumerate()
        .filter(|(_, &f)| f != 0.0)
        .map(|(rank, &f)| {
            let parts: Vec<&str> = (0..3)
                .filter(|i| (f as u32) & (1 << i) != 0)
                .map(|i| WHAT[i])
                .collect();
            format!("rank {rank}'s {}", parts.join(" and "))
        })
        .collect();
    if !differing.is_empty() {
        bail!(
            "rank {} of {}: the ranks do not train the same run: {} differ from rank 0's. \
             Start every rank with the same config, --set overrides and prepared data",
            comm.rank(),
            comm.size(),
            differing.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::SingleProcess;
    use candle_core::DType;

    #[test]
    fn gradients_survive_the_round_trip_through_one_buffer() -> Result<()> {
        let a = Var::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
        let b = Var::new(&[5f32, 6., 7.], &Device::Cpu)?;
        let unused = Var::zeros(4, DType::F32, &Device::Cpu)?;
        let loss = (a.as_tensor().sqr()?.sum_all()? + (b.as_tensor() * 3.0)?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let vars = [a.clone(), b.clone(), unused.clone()];
        let mut buf = Vec::new();
        flatten_grads(&grads, &vars, None, &mut buf)?;
        assert_eq!(buf, [2., 4., 6., 8., 3., 3., 3., 0., 0., 0., 0.]);
        let doubled: Vec<f32> = buf.iter().map(|x| 2.0 * x).collect();
        replace_grads(&mut grads, &vars, None, &doubled)?;
        let ga = grads.get(a.as_tensor()).unwrap().to_vec2::<f32>()?;
        assert_eq!(ga, [[4., 8.], [12., 16.]]);
        let gu = grads.get(unused.as_tensor()).unwrap().to_vec1::<f32>()?;
        assert_eq!(gu, [0.; 4]);
        Ok(())
    }

    #[test]
    fn the_looked_up_rows_carry_the_whole_embedding_gradient() -> Result<()> {
        let rows: Vec<f32> = (0..7).flat_map(|r| [r as f32, 1.0]).collect();
        let emb = Var::from_tensor(&Tensor::from_vec(rows, (7, 2), &Device::Cpu)?)?;
        let other = Var::new(&[1f32, 2.], &Device::Cpu)?;
        // Pair 0 looks up rows 5, 5 and 4; pair 1 (row 6) is not in the batch.
        let pairs = [
            EncodedPair {
                src: vec![5, 5, 4],
                tgt: vec![4],
            },
            EncodedPair {
                src: vec![6],
                tgt: vec![4],
            },
        ];
        let ids = Tensor::new(&[5u32, 5, 4], &Device::Cpu)?;
        let looked_up = emb.as_tensor().index_select(&ids, 0)?;
        let weights = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu)?;
        let loss = ((looked_up * weights)?.sum_all()? + other.as_tensor().sqr()?.sum_all()?)?;
        let mut grads = loss.backward()?;
        let dense = grads.get(emb.as_tensor()).unwrap().to_vec2::<f32>()?;
        assert_eq!(dense[5], [4., 6.]);
        assert_eq!(dense[6], [0., 0.]);

        let sparse = LookedUpRows::source(0, 7, &pairs, &[0]);
        assert_eq!(sparse.rows, [0, 1, 2, 3, 4, 5]); // the special tokens 0–3 always
        let vars = [emb.clone(), other.clone()];
        let mut buf = Vec::new();
        flatten_grads(&grads, &vars, Some(&sparse), &mut buf)?;
        assert_eq!(buf.len(), 6 * 2 + 2);
        assert_eq!(&buf[8..], [5., 6., 4., 6., 2., 4.]);
        replace_grads(&mut grads, &vars, Some(&sparse), &buf)?;
        assert_eq!(grads.get(emb.as_tensor()).unwrap().to_vec2::<f32>()?, dense);
        let g = grads.get(other.as_tensor()).unwrap().to_vec1::<f32>()?;
        assert_eq!(g, [2., 4.]);
        Ok(())
    }

    #[test]
    fn a_single_process_agrees_with_itself_and_keeps_its_shard_whole() -> Result<()> {
        let pairs: Vec<EncodedPair> = (0..5)
            .map(|n| EncodedPair {
                src: vec![4; n + 1],
                tgt: vec![5; n + 2],
            })
            .collect();
        let global = [4, 0, 2];
        assert_eq!(shard(&pairs, &global, &SingleProcess), &global);
        assert_eq!(target_tokens(&pairs, &global), 7 + 3 + 5);
        check_ranks_agree(&SingleProcess, &TrainConfig::default(), &[&pairs], "v")?;
        Ok(())
    }

    #[test]
    fn dropout_streams_differ_by_rank_and_step_and_repeat() {
        use rand::Rng;
        let draw = |step, rank| dropout_rng(7, step, rank).random::<u64>();
        assert_eq!(draw(3, 1), draw(3, 1));
        assert_ne!(draw(3, 1), draw(3, 0));
        assert_ne!(draw(3, 1), draw(4, 1));
    }
}
