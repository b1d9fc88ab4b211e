//! Label-smoothed cross-entropy (Szegedy et al.; as in GNMT and fairseq).
//!
//! On the CPU in f32 the softmax, the loss and its gradient are one fused pass per row
//! (a CustomOp): the composite version walks the `[tokens, vocab]` logits about a dozen
//! times forward and backward, which made the loss cost as much as the whole encoder.
//! Other devices and dtypes use the composite version, which the fused one must match.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Mutex;

use multiversion::multiversion;

use crate::model::fastmath::{lanes_fold, softmax_exp as exp};

/// The target keeps probability `1 - smoothing`; the rest is spread evenly over the
/// other `vocab - 1` tokens. `smoothing = 0` is plain cross-entropy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LabelSmoothedLoss {
    pub smoothing: f64,
}

impl LabelSmoothedLoss {
    pub fn new(smoothing: f64) -> Self {
        Self { smoothing }
    }

    /// `logits [batch, len, vocab]`, `targets u32 [batch, len]`, `mask [batch, len]`
    /// (1 for real tokens) → (the sum of per-token losses over real tokens as a scalar
    /// tensor, the number of real tokens). Divide by the count (or a total over
    /// accumulated batches) to normalise per target token.
    pub fn forward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
    ) -> Result<(Tensor, usize)> {
        let weights: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let tokens = weights.iter().map(|&w| w as f64).sum::<f64>().round() as usize;
        let total = if logits.device().is_cpu() && logits.dtype() == DType::F32 {
            let vocab = logits.dim(D::Minus1)?;
            let targets: Vec<u32> = targets.flatten_all()?.to_vec1()?;
            if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
                candle_core::bail!("target id {bad} is outside the vocabulary of {vocab}");
            }
            logits.contiguous()?.apply_op1(FusedLoss {
                targets,
                weights,
                coefficients: Coefficients::new(self.smoothing, vocab),
                row_stats: Mutex::new(Vec::new()),
            })?
        } else {
            self.composite(logits, targets, mask)?
        };
        Ok((total, tokens))
    }

    fn composite(&self, logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let c = Coefficients::new(self.smoothing, logits.dim(D::Minus1)?);
        let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let nll = log_probs
            .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?
            .neg()?;
        let smooth = log_probs.sum(D::Minus1)?.neg()?;
        let per_token = (nll.affine(c.target, 0.0)? + smooth.affine(c.every, 0.0)?)?;
        (per_token * mask.to_dtype(logits.dtype())?)?.sum_all()
    }
}

/// The smoothed target distribution as `q = every + target · onehot`: `every` on each
/// token, `target` more on the reference (so it gets `1 - smoothing` in all).
#[derive(Clone, Copy, Debug)]
struct Coefficients {
    every: f64,
    target: f64,
}

impl Coefficients {
    fn new(smoothing: f64, vocab: usize) -> Self {
        let every = smoothing / (vocab as f64 - 1.0).max(1.0);
        Self {
            every,
            target: 1.0 - smoothing - every,
        }
    }
}

/// Scalar `Σ_rows w · (logsumexp(x) - target · x_t - every · Σ x)`, which equals
/// `-Σ q log softmax(x)` because `q` sums to 1.
struct FusedLoss {
    targets: Vec<u32>,
    weights: Vec<f32>,
    coefficients: Coefficients,
    /// (max, Σ exp(x - max)) per row, kept from the forward pass for the backward.
    row_stats: Mutex<Vec<(f32, f32)>>,
}

/// Rows per rayon task: enough work to pay for the hand-off.
const ROWS_PER_TASK: usize = 16;

#[multiversion(targets("x86_64+avx2+fma"))]
fn row_stats(row: &[f32]) -> (f32, f32, f64) {
    let max = lanes_fold(row, f32::NEG_INFINITY, f32::max)
        .into_iter()
        .fold(f32::NEG_INFINITY, f32::max);
    let sum_exp = lanes_fold(row, 0.0, |a, x| a + exp(x - max)).iter().sum();
    let sum = lanes_fold(row, 0.0, |a, x| a + x)
        .iter()
        .map(|&x| x as f64)
        .sum();
    (max, sum_exp, sum)
}

/// `g = s · (softmax(row) - every)` from the row's max and `1 / Σ exp(x - max)`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn grad_row(g: &mut [f32], row: &[f32], max: f32, norm: f32, s: f32, every: f32) {
    for (g, &x) in g.iter_mut().zip(row) {
        *g = s * (exp(x - max) * norm - every);
    }
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("label-smoothed loss needs contiguous logits"),
    }
}

impl CustomOp1 for FusedLoss {
    fn name(&self) -> &'static str {
        "label-smoothed-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = contiguous_f32(storage, layout)?;
        let vocab = layout.dims().last().copied().unwrap_or(1);
        let c = self.coefficients;
        let (losses, stats): (Vec<f64>, Vec<(f32, f32)>) = logits
            .par_chunks(vocab)
            .with_min_len(ROWS_PER_TASK)
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .map(|(row, (&t, &w))| {
                if w == 0.0 {
                    return (0.0, (0.0, 1.0));
                }
                let (max, sum_exp, sum) = row_stats(row);
                let lse = max as f64 + (sum_exp as f64).ln();
                let loss = w as f64 * (lse - c.target * row[t as usize] as f64 - c.every * sum);
                (loss, (max, sum_exp))
            })
            .unzip();
        let total: f64 = losses.iter().sum();
        *self.row_stats.lock().expect("row statistics lock") = stats;
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let scale = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let stats = self.row_stats.lock().expect("row statistics lock").clone();
        let grad = arg.apply_op1_no_bwd(&FusedLossGrad {
            loss: self,
            stats,
            scale,
        })?;
        Ok(Some(grad))
    }
}

/// `scale · w · (softmax(x) - q)` per row.
struct FusedLossGrad<'a> {
    loss: &'a FusedLoss,
    stats: Vec<(f32, f32)>,
    scale: f32,
}

impl CustomOp1 for FusedLossGrad<'_> {
    fn name(&self) -> &'static str {
        "label-smoothed-cross-entropy-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = contiguous_f32(storage, layout)?;
        let vocab = layout.dims().last().copied().unwrap_or(1);
        let c = self.loss.coefficients;
        let mut grad = vec![0f32; logits.len()];
        grad.par_chunks_mut(vocab)
            .with_min_len(ROWS_PER_TASK)
            .zip(logits.par_chunks(vocab))
            .zip(
                self.loss
                    .targets
                    .par_iter()
                    .zip(self.loss.weights.par_iter()),
            )
            .enumerate()
            .for_each(|(i, ((g, row), (&t, &w)))| {
                if w == 0.0 {
                    return;
                }
                let (max, sum_exp) = match self.stats.get(i) {
                    Some(&stats) => stats,
                    None => {
                        let (max, sum_exp, _) = row_stats(row);
                        (max, sum_exp)
                    }
                };
                let s = self.scale * w;
                let every = c.every as f32;
                let norm = 1.0 / sum_exp;
                grad_row(g, row, max, norm, s, every);
                g[t as usize] -= s * c.target as f32;
            });
        Ok((CpuStorage::F32(grad), layout.shape().clone()))
    }
}
