//! Label-smoothed cross-entropy (Szegedy et al.; as in GNMT and fairseq).
//!
//! On the CPU in f32 the softmax, the loss and its gradient are one fused pass per row
//! (a CustomOp): the composite version walks the `[tokens, vocab]` logits about a dozen
//! times forward and backward, which made the loss cost as much as the whole encoder.
//! Other devices and dtypes use the composite version, which the fused one must match.
//!
//! Training goes one step further ([`OutputLoss`]): the output layer and the loss are one
//! op, so the `[tokens, vocab]` logits never enter candle's autograd, which accumulates
//! every gradient edge as a fresh tensor of zeros plus an add: three such passes over the
//! step's largest tensor, and its allocations, were an eighth of a training step.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

use multiversion::multiversion;

use crate::model::bf16_matmul;
use crate::model::fastmath::{lanes_fold, softmax_exp as exp, LANES};
use crate::model::lstm::shared::matmul_on_threads;
use crate::model::OutputLayer;

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

/// `row = exp(row - max)` in place; returns the sum.
#[multiversion(targets("x86_64+avx2+fma"))]
fn exp_in_place(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (a, x) in acc.iter_mut().zip(chunk.iter_mut()) {
            *x = exp(*x - max);
            *a += *x;
        }
    }
    for (a, x) in acc.iter_mut().zip(chunks.into_remainder()) {
        *x = exp(*x - max);
        *a += *x;
    }
    acc.iter().sum()
}

/// `row = s · (row · norm - every)` in place: from `exp(x - max)` and
/// `norm = 1 / Σ exp(x - max)`, the smoothed loss's gradient `s · (softmax(x) - every)`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn grad_row_in_place(row: &mut [f32], norm: f32, s: f32, every: f32) {
    for x in row.iter_mut() {
        *x = s * (*x * norm - every);
    }
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn add_row(row: &mut [f32], bias: &[f32]) {
    for (x, &b) in row.iter_mut().zip(bias) {
        *x += b;
    }
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

/// One batch's loss from [`OutputLoss::forward`].
pub struct BatchLoss {
    /// The label-smoothed loss summed over the real target tokens: a scalar to
    /// differentiate.
    pub sum: Tensor,
    /// The plain negative log-likelihood summed over the same tokens (for perplexity).
    pub nll: f64,
    /// The number of real target tokens.
    pub tokens: usize,
}

/// The output layer (`x·Wᵀ + b`) followed by the label-smoothed loss, for training.
///
/// On the CPU in f32 both are one op ([`FusedOutputLoss`]) with a hand-written backward:
/// the logits are computed for the real tokens only (padding rows are skipped), into a
/// buffer kept from step to step, and the backward pass turns them into their gradient in
/// place and runs the three products of the layer's backward with gemm. The plain
/// negative log-likelihood comes out of the same pass. Elsewhere it is the output layer's
/// own forward and [`LabelSmoothedLoss`], which the fused op is tested against.
pub struct OutputLoss {
    smoothing: f64,
    /// The last batch's logits, then their gradient: `[real tokens, vocab]`, the step's
    /// largest buffer, allocated once.
    scratch: Arc<Mutex<Vec<f32>>>,
}

impl OutputLoss {
    pub fn new(smoothing: f64) -> Self {
        Self {
            smoothing,
            scratch: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// `features [batch, len, hidden]` (the output layer's input), `targets u32 [batch,
    /// len]`, `mask [batch, len]` (1 for real tokens).
    pub fn forward(
        &self,
        features: &Tensor,
        output: &OutputLayer,
        targets: &Tensor,
        mask: &Tensor,
    ) -> Result<BatchLoss> {
        let scalar = |t: &Tensor| -> Result<f64> { t.to_dtype(DType::F64)?.to_scalar::<f64>() };
        let (weight, bias) = (output.weight(), output.bias());
        let fused = features.device().is_cpu()
            && features.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && bias.dtype() == DType::F32;
        if !fused {
            let logits = output.logits(features)?;
            let (sum, tokens) =
                LabelSmoothedLoss::new(self.smoothing).forward(&logits, targets, mask)?;
            let nll = match self.smoothing {
                0.0 => scalar(&sum)?,
                _ => scalar(
                    &LabelSmoothedLoss::new(0.0)
                        .forward(&logits.detach(), targets, mask)?
                        .0,
                )?,
            };
            return Ok(BatchLoss { sum, nll, tokens });
        }
        let hidden = features.dim(D::Minus1)?;
        let x = features.contiguous()?.reshape(((), hidden))?;
        let weights: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let targets: Vec<u32> = targets.flatten_all()?.to_vec1()?;
        let vocab = weight.dim(0)?;
        if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("target id {bad} is outside the vocabulary of {vocab}");
        }
        if targets.len() != x.dim(0)? || weights.len() != targets.len() {
            candle_core::bail!(
                "{} feature rows for {} targets and {} mask entries",
                x.dim(0)?,
                targets.len(),
                weights.len()
            );
        }
        let tokens = weights.iter().map(|&w| w as f64).sum::<f64>().round() as usize;
        let nll = Arc::new(Mutex::new(0.0));
        let op = FusedOutputLoss {
            // The fused op's three products in bf16 on AMX inside a training step that asks
            // for it (`precision = "bf16"`, [`bf16_matmul::with_bf16_products`]).
            bf16: bf16_matmul::bf16_products(),
            targets,
            weights,
            coefficients: Coefficients::new(self.smoothing, vocab),
            scratch: Arc::clone(&self.scratch),
            saved: Mutex::new(None),
            nll: Arc::clone(&nll),
        };
        let sum = x.apply_op3(weight, bias, op)?;
        let nll = *nll.lock().expect("nll lock");
        Ok(BatchLoss { sum, nll, tokens })
    }
}

/// `Σ_rows w · loss(x·Wᵀ + b)` over `x [rows, hidden]`, `W [vocab, hidden]`, `b [vocab]`.
struct FusedOutputLoss {
    bf16: bool,
    targets: Vec<u32>,
    weights: Vec<f32>,
    coefficients: Coefficients,
    scratch: Arc<Mutex<Vec<f32>>>,
    /// From the forward pass for the backward.
    saved: Mutex<Option<Saved>>,
    /// Σ w · (logsumexp(x) - x_t), written by the forward pass.
    nll: Arc<Mutex<f64>>,
}

struct Saved {
    /// The rows of `x` with a non-zero weight (real tokens), in order.
    rows: Vec<usize>,
    /// Those rows of `x`, packed `[rows, hidden]`.
    x: Vec<f32>,
    /// Σ exp(logit - max) per packed row (the buffer holds the `exp(logit - max)`).
    sums: Vec<f32>,
    /// All rows of `x`, hidden size, vocabulary.
    dims: (usize, usize, usize),
}

fn threads() -> usize {
    rayon::current_num_threads()
}

impl FusedOutputLoss {
    /// `dst = lhs · rhs` (see [`matmul_on_threads`]), in bf16 on AMX when asked for.
    fn product(
        &self,
        dims: (usize, usize, usize),
        dst: &mut [f32],
        dst_rs: usize,
        lhs: (&[f32], usize, usize),
        rhs: (&[f32], usize, usize),
    ) {
        match self.bf16 {
            true => bf16_matmul::matmul_bf16(dims, dst, dst_rs, lhs, rhs),
            false => matmul_on_threads(threads(), dims, dst, dst_rs, lhs, rhs),
        }
    }
}

impl CustomOp3 for FusedOutputLoss {
    fn name(&self) -> &'static str {
        "output-layer-label-smoothed-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, b) = (
            contiguous_f32(s1, l1)?,
            contiguous_f32(s2, l2)?,
            contiguous_f32(s3, l3)?,
        );
        let (n, h) = l1.shape().dims2()?;
        let (v, w_h) = l2.shape().dims2()?;
        if w_h != h || b.len() != v || n != self.targets.len() {
            candle_core::bail!(
                "output loss: x [{n}, {h}], weight [{v}, {w_h}], bias [{}], {} targets",
                b.len(),
                self.targets.len()
            );
        }
        let rows: Vec<usize> = (0..n).filter(|&i| self.weights[i] != 0.0).collect();
        let mut packed = Vec::with_capacity(rows.len() * h);
        for &i in &rows {
            packed.extend_from_slice(&x[i * h..(i + 1) * h]);
        }
        let mut logits = self.scratch.lock().expect("logits lock");
        // Every element is overwritten by the product: only a grown buffer is filled.
        logits.resize(rows.len() * v, 0.0);
        self.product(
            (rows.len(), v, h),
            &mut logits,
            v,
            (&packed, h, 1),
            (w, 1, h),
        );
        let c = self.coefficients;
        // Each row keeps `exp(logit - max)`, which is all the backward pass needs.
        let per_row: Vec<(f64, f64, f32)> = logits
            .par_chunks_mut(v.max(1))
            .with_min_len(ROWS_PER_TASK)
            .zip(rows.par_iter())
            .map(|(row, &i)| {
                add_row(row, b);
                let max = lanes_fold(row, f32::NEG_INFINITY, f32::max)
                    .into_iter()
                    .fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = lanes_fold(row, 0.0, |a, x| a + x)
                    .iter()
                    .map(|&x| x as f64)
                    .sum();
                let target = row[self.targets[i] as usize] as f64;
                let sum_exp = exp_in_place(row, max);
                let lse = max as f64 + (sum_exp as f64).ln();
                let w = self.weights[i] as f64;
                let loss = w * (lse - c.target * target - c.every * sum);
                (loss, w * (lse - target), sum_exp)
            })
            .collect();
        let total: f64 = per_row.iter().map(|r| r.0).sum();
        *self.nll.lock().expect("nll lock") = per_row.iter().map(|r| r.1).sum();
        *self.saved.lock().expect("saved lock") = Some(Saved {
            rows,
            x: packed,
            sums: per_row.into_iter().map(|r| r.2).collect(),
            dims: (n, h, v),
        });
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let scale = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let Some(saved) = self.saved.lock().expect("saved lock").take() else {
            candle_core::bail!("output loss: backward without a forward pass");
        };
        let (n, h, v) = saved.dims;
        let r = saved.rows.len();
        let c = self.coefficients;
        let mut g = self.scratch.lock().expect("logits lock");
        // The logits become `s · (softmax - q)` row by row, and the bias gradient (their
        // column sums) is summed while each row is in cache: one part of the rows per
        // thread, each with its own sum.
        let part = r.div_ceil(threads().max(1)).max(1);
        let db = g
            .par_chunks_mut(part * v.max(1))
            .zip(saved.rows.par_chunks(part).zip(saved.sums.par_chunks(part)))
            .map(|(block, (rows, sums))| {
                let mut db = vec![0f32; v];
                for ((row, &i), &sum_exp) in block.chunks_mut(v).zip(rows).zip(sums) {
                    let s = scale * self.weights[i];
                    grad_row_in_place(row, 1.0 / sum_exp, s, c.every as f32);
                    row[self.targets[i] as usize] -= s * c.target as f32;
                    add_row(&mut db, row);
                }
                db
            })
            .reduce_with(|mut a, b| {
                add_row(&mut a, &b);
                a
            })
            .unwrap_or_else(|| vec![0f32; v]);
        let (storage, layout) = weight.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("output loss: the weight is not on the CPU");
        };
        let w = contiguous_f32(cpu, layout)?;
        // dx = G·W, dW = Gᵀ·x.
        let mut dx_packed = vec![0f32; r * h];
        self.product((r, h, v), &mut dx_packed, h, (&g, v, 1), (w, h, 1));
        drop(storage);
        let mut dx = vec![0f32; n * h];
        for (k, &i) in saved.rows.iter().enumerate() {
            dx[i * h..(i + 1) * h].copy_from_slice(&dx_packed[k * h..(k + 1) * h]);
        }
        let mut dw = vec![0f32; v * h];
        self.product((v, h, r), &mut dw, h, (&g, 1, v), (&saved.x, h, 1));
        let device = weight.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, h), device)?),
            Some(Tensor::from_vec(dw, (v, h), device)?),
            Some(Tensor::from_vec(db, v, device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use candle_core::{Device, Var};
    use candle_nn::{embedding, VarBuilder, VarMap};

    /// The fused output layer and loss against the output layer's own forward and the
    /// composite loss in f64, through candle's autograd: the loss, the NLL, and the
    /// gradients of the features, the weight and the bias, with padding rows (skipped by
    /// the fused op) and batches of more rows than one rayon task takes.
    #[test]
    fn fused_output_loss_matches_the_composite_in_f64() {
        let dev = Device::Cpu;
        let (batch, len, hidden, vocab) = (3, 17, 8, 301);
        let cfg = ModelConfig {
            tgt_vocab_size: vocab,
            embedding_size: hidden,
            hidden_size: hidden,
            tie_target_embeddings: false,
            ..ModelConfig::default()
        };
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let emb = embedding(vocab, hidden, vb.pp("emb")).unwrap();
        let layer = OutputLayer::new(&cfg, &emb, vb.pp("output")).unwrap();
        let (weight, bias) = {
            let data = varmap.data().lock().unwrap();
            data["output.bias"]
                .set(&Tensor::randn(0f32, 0.5, vocab, &dev).unwrap())
                .unwrap();
            // A random weight (the layer starts at zero), so that the features' gradient
            // `G·W` is not zero and is checked.
            data["output.weight"]
                .set(&Tensor::randn(0f32, 0.5, (vocab, hidden), &dev).unwrap())
                .unwrap();
            (data["output.weight"].clone(), data["output.bias"].clone())
        };
        let features =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (batch, len, hidden), &dev).unwrap())
                .unwrap();
        let targets: Vec<u32> = (0..batch * len).map(|i| (i * 37 % vocab) as u32).collect();
        // The second sentence ends in five pads, the third in twelve.
        let mask: Vec<f32> = (0..batch * len)
            .map(|i| match (i / len, i % len) {
                (1, t) if t >= len - 5 => 0.0,
                (2, t) if t >= len - 12 => 0.0,
                _ => 1.0,
            })
            .collect();
        let targets = Tensor::from_vec(targets, (batch, len), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (batch, len), &dev).unwrap();
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| -> f64 {
            (f64_of(a) - f64_of(b))
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        // With bf16 products (where the CPU has AMX) the reference takes the features and
        // the weight rounded to bf16 as the kernel does; the backward products also round
        // the logits' gradient, which bounds the gradients' error by 2⁻⁸ of their largest.
        let precisions: &[bool] = match crate::model::bf16_matmul::available() {
            true => &[false, true],
            false => &[false],
        };
        for (&bf16, smoothing) in precisions.iter().flat_map(|p| [(p, 0.0), (p, 0.1)]) {
            let fused = bf16_matmul::with_bf16_products(bf16, || {
                OutputLoss::new(smoothing).forward(features.as_tensor(), &layer, &targets, &mask)
            })
            .unwrap();
            assert_eq!(fused.tokens, batch * len - 5 - 12);
            let grads = fused.sum.backward().unwrap();

            let input = |t: &Tensor| match bf16 {
                true => f64_of(&t.to_dtype(DType::BF16).unwrap()),
                false => f64_of(t),
            };
            let x64 = Var::from_tensor(&input(features.as_tensor())).unwrap();
            let w64 = Var::from_tensor(&input(weight.as_tensor())).unwrap();
            let b64 = Var::from_tensor(&f64_of(bias.as_tensor())).unwrap();
            let logits = x64
                .as_tensor()
                .reshape((batch * len, hidden))
                .unwrap()
                .matmul(&w64.as_tensor().t().unwrap())
                .unwrap()
                .broadcast_add(b64.as_tensor())
                .unwrap()
                .reshape((batch, len, vocab))
                .unwrap();
            let (sum, _) = LabelSmoothedLoss::new(smoothing)
                .forward(&logits, &targets, &mask)
                .unwrap();
            let (nll, _) = LabelSmoothedLoss::new(0.0)
                .forward(&logits, &targets, &mask)
                .unwrap();
            let want = grads_of(&sum, [&x64, &w64, &b64]);
            let want_sum = sum.to_scalar::<f64>().unwrap();
            let got_sum = fused.sum.to_dtype(DType::F64).unwrap();
            let got_sum = got_sum.to_scalar::<f64>().unwrap();
            assert!(
                (got_sum - want_sum).abs() < 1e-5 * want_sum.abs(),
                "{smoothing}"
            );
            let want_nll = nll.to_scalar::<f64>().unwrap();
            assert!(
                (fused.nll - want_nll).abs() < 1e-5 * want_nll,
                "{smoothing}"
            );
            for (var, want, name) in [
                (&features, &want[0], "features"),
                (&weight, &want[1], "weight"),
                (&bias, &want[2], "bias"),
            ] {
                let got = grads.get(var.as_tensor()).expect(name);
                assert_eq!(got.dims(), want.dims(), "{name}");
                let diff = max_diff(got, want);
                let largest = f64_of(want).abs().unwrap().max_all().unwrap();
                let largest = largest.to_scalar::<f64>().unwrap();
                assert!(largest > 1e-3, "{name}: a gradient of zeros checks nothing");
                let tolerance = match bf16 {
                    true => largest / 256.0,
                    false => 1e-5,
                };
                assert!(
                    diff < tolerance,
                    "{name}, smoothing {smoothing}, bf16 {bf16}: {diff}"
                );
            }
        }
    }

    fn grads_of(sum: &Tensor, vars: [&Var; 3]) -> Vec<Tensor> {
        let grads = sum.backward().unwrap();
        vars.iter()
            .map(|v| grads.get(v.as_tensor()).unwrap().clone())
            .collect()
    }
}
