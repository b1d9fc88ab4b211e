//! Training batches: token-budget batching with length bucketing, seeded shuffling,
//! padding masks.
//!
//! A batch is built on the host from encoded pairs and turned into tensors on a device
//! at the last moment, so batching never depends on the device.

use candle_core::{Device, Result, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::subword::{BOS_ID, EOS_ID, PAD_ID};

/// One sentence pair as subword ids, without BOS/EOS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedPair {
    pub src: Vec<u32>,
    pub tgt: Vec<u32>,
}

impl EncodedPair {
    /// Source length as fed to the encoder (ids + EOS).
    pub fn src_len(&self) -> usize {
        self.src.len() + 1
    }
    /// Target length as fed to the decoder (BOS + ids, or ids + EOS).
    pub fn tgt_len(&self) -> usize {
        self.tgt.len() + 1
    }
}

/// A padded batch on the host. Row-major `[batch, len]` id matrices.
///
/// * `src`: source ids followed by EOS, padded with PAD.
/// * `tgt_in`: BOS followed by target ids (decoder input, teacher forcing).
/// * `tgt_out`: target ids followed by EOS (what the decoder must predict).
#[derive(Clone, Debug)]
pub struct Batch {
    /// Positions of the pairs in the corpus, in batch order.
    pub indices: Vec<usize>,
    pub src: Vec<u32>,
    pub src_lengths: Vec<usize>,
    pub src_max_len: usize,
    pub tgt_in: Vec<u32>,
    pub tgt_out: Vec<u32>,
    pub tgt_lengths: Vec<usize>,
    pub tgt_max_len: usize,
}

/// A batch as tensors on a device. Masks are f32 with 1 for real tokens, 0 for padding.
#[derive(Clone, Debug)]
pub struct BatchTensors {
    /// u32 `[batch, src_len]`
    pub src: Tensor,
    /// f32 `[batch, src_len]`
    pub src_mask: Tensor,
    /// u32 `[batch, tgt_len]`
    pub tgt_in: Tensor,
    /// u32 `[batch, tgt_len]`
    pub tgt_out: Tensor,
    /// f32 `[batch, tgt_len]`
    pub tgt_mask: Tensor,
}

impl Batch {
    /// Builds the padded batch of `pairs[i]` for `i` in `indices`.
    pub fn new(pairs: &[EncodedPair], indices: &[usize]) -> Self {
        let src_max_len = indices
            .iter()
            .map(|&i| pairs[i].src_len())
            .max()
            .unwrap_or(0);
        let tgt_max_len = indices
            .iter()
            .map(|&i| pairs[i].tgt_len())
            .max()
            .unwrap_or(0);
        let n = indices.len();
        let (src, src_lengths) = pad_with_eos(
            indices.iter().map(|&i| pairs[i].src.as_slice()),
            src_max_len,
        );
        let mut tgt_in = vec![PAD_ID; n * tgt_max_len];
        let mut tgt_out = vec![PAD_ID; n * tgt_max_len];
        let mut tgt_lengths = Vec::with_capacity(n);
        for (row, &i) in indices.iter().enumerate() {
            let pair = &pairs[i];
            let ti = &mut tgt_in[row * tgt_max_len..][..pair.tgt_len()];
            ti[0] = BOS_ID;
            ti[1..].copy_from_slice(&pair.tgt);
            let to = &mut tgt_out[row * tgt_max_len..][..pair.tgt_len()];
            to[..pair.tgt.len()].copy_from_slice(&pair.tgt);
            to[pair.tgt.len()] = EOS_ID;
            tgt_lengths.push(pair.tgt_len());
        }
        Self {
            indices: indices.to_vec(),
            src,
            src_lengths,
            src_max_len,
            tgt_in,
            tgt_out,
            tgt_lengths,
            tgt_max_len,
        }
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Real (non-padding) target tokens, including EOS: the loss normaliser.
    pub fn target_tokens(&self) -> usize {
        self.tgt_lengths.iter().sum()
    }

    pub fn to_tensors(&self, device: &Device) -> Result<BatchTensors> {
        let n = self.len();
        let (src, src_mask) =
            padded_tensors(&self.src, &self.src_lengths, self.src_max_len, device)?;
        Ok(BatchTensors {
            src,
            src_mask,
            tgt_in: Tensor::from_slice(&self.tgt_in, (n, self.tgt_max_len), device)?,
            tgt_out: Tensor::from_slice(&self.tgt_out, (n, self.tgt_max_len), device)?,
            tgt_mask: Tensor::from_vec(
                length_mask(&self.tgt_lengths, self.tgt_max_len),
                (n, self.tgt_max_len),
                device,
            )?,
        })
    }
}

/// The encoder's input for `sources` (subword ids without EOS), as training batches and
/// search both feed it: u32 ids `[rows, width]` (each row's ids, EOS, then PAD) and the
/// f32 mask (1 on the ids and EOS), `width` being the longest row plus EOS.
pub fn source_tensors(sources: &[Vec<u32>], device: &Device) -> Result<(Tensor, Tensor)> {
    let width = sources.iter().map(|s| s.len() + 1).max().unwrap_or(0);
    let (ids, lengths) = pad_with_eos(sources.iter().map(Vec::as_slice), width);
    padded_tensors(&ids, &lengths, width, device)
}

/// Row-major `[rows, width]`: each row's ids, then EOS, then PAD; with each row's length
/// counting the EOS. `width` must leave room for the longest row's EOS.
fn pad_with_eos<'a>(rows: impl Iterator<Item = &'a [u32]>, width: usize) -> (Vec<u32>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut lengths = Vec::new();
    for row in rows {
        let start = ids.len();
        ids.extend_from_slice(row);
        ids.push(EOS_ID);
        ids.resize(start + width, PAD_ID);
        lengths.push(row.len() + 1);
    }
    (ids, lengths)
}

/// The ids of [`pad_with_eos`] and their mask as tensors.
fn padded_tensors(
    ids: &[u32],
    lengths: &[usize],
    width: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let n = lengths.len();
    Ok((
        Tensor::from_slice(ids, (n, width), device)?,
        Tensor::from_vec(length_mask(lengths, width), (n, width), device)?,
    ))
}

/// f32 `[rows, width]`: 1 on the first `lengths[row]` positions of each row, 0 after.
fn length_mask(lengths: &[usize], width: usize) -> Vec<f32> {
    lengths
        .iter()
        .flat_map(|&l| (0..width).map(move |j| if j < l { 1.0 } else { 0.0 }))
        .collect()
}

/// Groups pairs into batches whose padded size (rows × longest side) stays within a
/// token budget.
///
/// Pairs are sorted by length inside large shuffled buckets, so a batch holds sentences
/// of similar length (little padding), while the order of batches is shuffled so the
/// model does not see lengths in order. Everything depends only on the seed and the
/// epoch, which makes an epoch reproducible and lets training resume mid-epoch from
/// (epoch, batch index) alone.
#[derive(Clone, Debug)]
pub struct TokenBatcher {
    /// Maximum of `rows × max(src_len, tgt_len)` per batch. A single pair longer than
    /// the budget still forms a batch of its own.
    pub max_tokens: usize,
    /// How many batches' worth of pairs are sorted together.
    pub bucket_batches: usize,
    pub seed: u64,
}

impl TokenBatcher {
    pub fn new(max_tokens: usize, seed: u64) -> Self {
        Self {
            max_tokens: max_tokens.max(1),
            bucket_batches: 100,
            seed,
        }
    }

    /// The batches of one epoch, as lists of pair indices. Every pair appears in exactly
    /// one batch.
    pub fn epoch(&self, pairs: &[EncodedPair], epoch: u64) -> Vec<Vec<usize>> {
        let mut rng =
            ChaCha8Rng::seed_from_u64(self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.shuffle(&mut rng);
        let width = |i: usize| pairs[i].src_len().max(pairs[i].tgt_len());
        let mean_width = (pairs
            .iter()
            .map(|p| p.src_len().max(p.tgt_len()))
            .sum::<usize>()
            / pairs.len().max(1))
        .max(1);
        let bucket_size = (self.max_tokens / mean_width).max(1) * self.bucket_batches;
        let mut batches = Vec::new();
        for bucket in order.chunks_mut(bucket_size) {
            // Stable sort keeps the shuffled order among equal lengths.
            bucket.sort_by_key(|&i| (width(i), pairs[i].src_len()));
            let mut current: Vec<usize> = Vec::new();
            let mut current_width = 0;
            for &i in bucket.iter() {
                let w = current_width.max(width(i));
                if !current.is_empty() && (current.len() + 1) * w > self.max_tokens {
                    batches.push(std::mem::take(&mut current));
                    current_width = 0;
                }
                current_width = current_width.max(width(i));
                current.push(i);
            }
            if !current.is_empty() {
                batches.push(current);
            }
        }
        batches.shuffle(&mut rng);
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<EncodedPair> {
        // Lengths vary from 1 to 40 so bucketing has something to do.
        (0..n)
            .map(|i| EncodedPair {
                src: (0..(i * 7 % 40 + 1) as u32).map(|x| x + 10).collect(),
                tgt: (0..(i * 13 % 35 + 1) as u32).map(|x| x + 10).collect(),
            })
            .collect()
    }

    #[test]
    fn every_pair_once_per_epoch_within_budget() {
        let pairs = pairs(1000);
        let batcher = TokenBatcher::new(300, 7);
        for epoch in 0..3 {
            let batches = batcher.epoch(&pairs, epoch);
            let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..pairs.len()).collect::<Vec<_>>());
            for b in &batches {
                let w = b
                    .iter()
                    .map(|&i| pairs[i].src_len().max(pairs[i].tgt_len()))
                    .max()
                    .unwrap();
                assert!(
                    b.len() == 1 || b.len() * w <= 300,
                    "batch of {} x {w} over budget",
                    b.len()
                );
            }
        }
    }

    #[test]
    fn deterministic_for_seed_and_different_across_epochs() {
        let pairs = pairs(500);
        let a = TokenBatcher::new(200, 1);
        let b = TokenBatcher::new(200, 1);
        assert_eq!(a.epoch(&pairs, 0), b.epoch(&pairs, 0));
        assert_ne!(a.epoch(&pairs, 0), a.epoch(&pairs, 1));
        assert_ne!(
            a.epoch(&pairs, 0),
            TokenBatcher::new(200, 2).epoch(&pairs, 0)
        );
    }

    #[test]
    fn padding_and_masks() {
        let pairs = vec![
            EncodedPair {
                src: vec![5, 6, 7],
                tgt: vec![8],
            },
            EncodedPair {
                src: vec![9],
                tgt: vec![10, 11, 12],
            },
        ];
        let batch = Batch::new(&pairs, &[0, 1]);
        assert_eq!(batch.src, vec![5, 6, 7, EOS_ID, 9, EOS_ID, PAD_ID, PAD_ID]);
        assert_eq!(
            batch.tgt_in,
            vec![BOS_ID, 8, PAD_ID, PAD_ID, BOS_ID, 10, 11, 12]
        );
        assert_eq!(
            batch.tgt_out,
            vec![8, EOS_ID, PAD_ID, PAD_ID, 10, 11, 12, EOS_ID]
        );
        assert_eq!(batch.target_tokens(), 6);
        let t = batch.to_tensors(&Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = t.src_mask.to_vec2().unwrap();
        assert_eq!(m, vec![vec![1.0, 1.0, 1.0, 1.0], vec![1.0, 1.0, 0.0, 0.0]]);
        let m: Vec<Vec<f32>> = t.tgt_mask.to_vec2().unwrap();
        assert_eq!(m, vec![vec![1.0, 1.0, 0.0, 0.0], vec![1.0, 1.0, 1.0, 1.0]]);
        // Search's source batch is the training batch's source side.
        let sources: Vec<Vec<u32>> = pairs.iter().map(|p| p.src.clone()).collect();
        let (src, src_mask) = source_tensors(&sources, &Device::Cpu).unwrap();
        let (a, b): (Vec<Vec<u32>>, Vec<Vec<u32>>) =
            (src.to_vec2().unwrap(), t.src.to_vec2().unwrap());
        assert_eq!(a, b);
        let (a, b): (Vec<Vec<f32>>, Vec<Vec<f32>>) =
            (src_mask.to_vec2().unwrap(), t.src_mask.to_vec2().unwrap());
        assert_eq!(a, b);
    }
}
