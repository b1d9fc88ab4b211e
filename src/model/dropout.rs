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
}
