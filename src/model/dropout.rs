//! Reproducible dropout.
//!
//! candle's CPU random generator cannot be seeded, so masks are drawn on the host from
//! the trainer's `ChaCha8Rng` and uploaded: the same seed gives the same training run.

use candle_core::{Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Dropout with probability `p`, active only when a generator is given (training).
pub struct Dropout<'a> {
    p: f32,
    rng: Option<&'a mut ChaCha8Rng>,
}

impl<'a> Dropout<'a> {
    pub fn new(p: f32, rng: Option<&'a mut ChaCha8Rng>) -> Self {
        Self { p, rng }
    }

    /// Inference: the identity.
    pub fn inactive() -> Self {
        Self { p: 0.0, rng: None }
    }

    /// Zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
    pub fn apply(&mut self, xs: &Tensor) -> Result<Tensor> {
        let rng = match &mut self.rng {
            Some(rng) if self.p > 0.0 => rng,
            _ => return Ok(xs.clone()),
        };
        let keep = 1.0 - self.p;
        let scale = 1.0 / keep;
        let mask: Vec<f32> = (0..xs.elem_count())
            .map(|_| {
                if rng.random::<f32>() < keep {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }

    /// Word dropout (Gal & Ghahramani 2016; Sennrich et al. 2016 drop whole source and
    /// target words): zeroes each position's whole vector of `xs: [batch, len, dim]` with
    /// probability `p` and scales the rest by `1 / (1 - p)`. Draws nothing when `p` is 0, so
    /// runs without it keep their masks.
    pub fn drop_words(&mut self, xs: &Tensor, p: f32) -> Result<Tensor> {
        let rng = match &mut self.rng {
            Some(rng) if p > 0.0 => rng,
            _ => return Ok(xs.clone()),
        };
        let (batch, len, _) = xs.dims3()?;
        let keep = 1.0 - p;
        let mask: Vec<f32> = (0..batch * len)
            .map(|_| {
                if rng.random::<f32>() < keep {
                    1.0 / keep
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (batch, len, 1), xs.device())?.to_dtype(xs.dtype())?;
        xs.broadcast_mul(&mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::SeedableRng;

    #[test]
    fn word_dropout_zeroes_whole_positions_at_its_rate_and_keeps_the_mean() -> Result<()> {
        let (batch, len, dim) = (40, 50, 3);
        let xs = Tensor::ones((batch, len, dim), candle_core::DType::F32, &Device::Cpu)?;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let out = Dropout::new(0.5, Some(&mut rng))
            .drop_words(&xs, 0.25)?
            .to_vec3::<f32>()?;
        let mut dropped = 0;
        for position in out.iter().flatten() {
            // A position is dropped or kept whole, never in part.
            assert!(position.iter().all(|&v| v == position[0]), "{position:?}");
            if position[0] == 0.0 {
                dropped += 1;
            } else {
                assert!((position[0] - 1.0 / 0.75).abs() < 1e-6);
            }
        }
        let rate = dropped as f64 / (batch * len) as f64;
        assert!((rate - 0.25).abs() < 0.03, "dropped {rate}");
        // Inactive at inference and at p = 0, where it draws nothing from the generator.
        let same = Dropout::inactive().drop_words(&xs, 0.25)?;
        assert_eq!(same.to_vec3::<f32>()?, xs.to_vec3::<f32>()?);
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
        Dropout::new(0.1, Some(&mut a)).drop_words(&xs, 0.0)?;
        assert_eq!(a.random::<u64>(), b.random::<u64>());
        Ok(())
    }
}
