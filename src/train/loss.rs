//! Label-smoothed cross-entropy (Szegedy et al.; as in GNMT and fairseq).

use candle_core::{Result, Tensor, D};

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
        let vocab = logits.dim(D::Minus1)?;
        let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let nll = log_probs
            .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?
            .neg()?;
        let per_token = if self.smoothing > 0.0 {
            let eps_other = self.smoothing / (vocab as f64 - 1.0).max(1.0);
            // -Σ_v q_v log p_v with q = eps_other everywhere plus (1 - smoothing - eps_other)
            // on the target.
            let smooth = log_probs.sum(D::Minus1)?.neg()?;
            (nll.affine(1.0 - self.smoothing - eps_other, 0.0)? + smooth.affine(eps_other, 0.0)?)?
        } else {
            nll
        };
        let mask = mask.to_dtype(per_token.dtype())?;
        let tokens = mask
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        let total = (per_token * mask)?.sum_all()?;
        Ok((total, tokens.round() as usize))
    }
}
