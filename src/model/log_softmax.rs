//! The output layer's last step in search: `log_softmax(logits + bias)` over the
//! vocabulary, fused and in place on CPU.
//!
//! candle's composite `log_softmax` makes five passes over `[rows, vocab]` and allocates
//! a fresh tensor for each (max, subtract, exp, sum, log/subtract), and libm's `expf`
//! cannot be vectorised: together they took about a quarter of a beam-5 decoding step.
//! Here each row is read three times while it sits in cache and nothing is allocated.

use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Tensor, D};
use rayon::prelude::*;

use multiversion::multiversion;

use super::fastmath::{lanes_fold, softmax_exp as exp};

/// `log_softmax(logits + bias, last dim)`. `logits: [rows, vocab]` is consumed (on CPU
/// the result is written into its storage); `bias: [vocab]`.
pub fn biased_log_softmax(logits: Tensor, bias: &Tensor) -> Result<Tensor> {
    let fused = logits.device().is_cpu()
        && logits.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && logits.rank() == 2
        && logits.is_contiguous();
    if !fused {
        return candle_nn::ops::log_softmax(&logits.broadcast_add(bias)?, D::Minus1);
    }
    let bias = bias.contiguous()?;
    logits.inplace_op2(&bias, &BiasedLogSoftmax)?;
    Ok(logits)
}

struct BiasedLogSoftmax;

/// Rows per rayon task: a row of an 8k vocabulary is ~25 µs of work.
const ROWS_PER_TASK: usize = 8;

impl InplaceOp2 for BiasedLogSoftmax {
    fn name(&self) -> &'static str {
        "biased-log-softmax"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        bias: &CpuStorage,
        bias_l: &Layout,
    ) -> Result<()> {
        let (Some((d0, d1)), Some((b0, b1))) =
            (dst_l.contiguous_offsets(), bias_l.contiguous_offsets())
        else {
            candle_core::bail!("biased-log-softmax needs contiguous tensors");
        };
        let bias = &bias.as_slice::<f32>()?[b0..b1];
        let vocab = bias.len();
        let CpuStorage::F32(data) = dst else {
            candle_core::bail!("biased-log-softmax needs f32 logits");
        };
        data[d0..d1]
            .par_chunks_mut(vocab)
            .with_min_len(ROWS_PER_TASK)
            .for_each(|row| log_softmax_row(row, bias));
        Ok(())
    }
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn log_softmax_row(row: &mut [f32], bias: &[f32]) {
    for (x, b) in row.iter_mut().zip(bias) {
        *x += b;
    }
    let max = lanes_fold(row, f32::NEG_INFINITY, f32::max)
        .into_iter()
        .fold(f32::NEG_INFINITY, f32::max);
    let sum_exp: f32 = lanes_fold(row, 0.0, |a, x| a + exp(x - max)).iter().sum();
    let lse = max + sum_exp.ln();
    for x in row.iter_mut() {
        *x -= lse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candles_log_softmax() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::randn(0f32, 3.0, (37, 1001), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 1001, &dev)?;
        let want = candle_nn::ops::log_softmax(&logits.broadcast_add(&bias)?, D::Minus1)?;
        let got = biased_log_softmax(logits.copy()?, &bias)?;
        let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 2e-5, "max difference {diff}");
        // Not contiguous: the composite path gives the same.
        let t = logits.t()?.contiguous()?.t()?;
        let diff = (biased_log_softmax(t, &bias)? - biased_log_softmax(logits.copy()?, &bias)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 2e-5, "strided: max difference {diff}");
        Ok(())
    }
}
