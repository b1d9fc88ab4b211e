//! An exponential moving average of the weights (Polyak & Juditsky 1992; Marian's
//! `--exponential-smoothing`, OpenNMT-py's `average_decay`): after every update
//! `ema ← d·ema + (1 − d)·w`. Validation, checkpoints and `best/` use the average; the
//! optimizer keeps training the raw weights, which checkpoints store beside it
//! ([`TRAINING_WEIGHTS_FILE`]) so that a resumed run continues exactly.
//!
//! Early on the average would be dominated by the random initial weights, so the decay
//! is ramped up as TensorFlow's `ExponentialMovingAverage` does with `num_updates`:
//! `d_t = min(d, (1 + t) / (10 + t))` for update `t`.

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor, Var};
use rayon::prelude::*;

/// A checkpoint's raw (not averaged) weights, when the run keeps an average; the
/// checkpoint's `model.safetensors` then holds the average.
pub const TRAINING_WEIGHTS_FILE: &str = "training_weights.safetensors";

/// Elements per parallel task of the update.
const PARALLEL_CHUNK: usize = 1 << 15;

/// The average of one parameter: host memory on the CPU (updated in one pass straight
/// from the variable's storage), a tensor elsewhere.
enum Shadow {
    Host(Vec<f32>),
    Device(Tensor),
}

pub struct Ema {
    decay: f64,
    /// (name, variable, its average), sorted by name.
    params: Vec<(String, Var, Shadow)>,
}

impl Ema {
    /// Starts the average at the current values of `vars` (named as in the VarMap).
    pub fn new(decay: f64, mut vars: Vec<(String, Var)>) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            candle_core::bail!("ema decay {decay}: must be in [0, 1)");
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                let shadow = shadow_of(var.as_tensor())?;
                Ok((name, var, shadow))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, params })
    }

    /// The decay applied at update number `step` (1-based).
    pub fn decay_at(&self, step: u64) -> f64 {
        let t = step as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Folds the variables' current values into the average, after update `step`.
    pub fn update(&mut self, step: u64) -> Result<()> {
        let d = self.decay_at(step);
        for (_, var, shadow) in self.params.iter_mut() {
            match shadow {
                Shadow::Host(avg) => {
                    let (storage, layout) = var.as_tensor().storage_and_layout();
                    let (Storage::Cpu(CpuStorage::F32(w)), Some((a, b))) =
                        (&*storage, layout.contiguous_offsets())
                    else {
                        candle_core::bail!("ema: contiguous f32 weights expected on the CPU");
                    };
                    let (d, rest) = (d as f32, (1.0 - d) as f32);
                    avg.par_chunks_mut(PARALLEL_CHUNK)
                        .zip(w[a..b].par_chunks(PARALLEL_CHUNK))
                        .for_each(|(avg, w)| {
                            for (e, &w) in avg.iter_mut().zip(w) {
                                *e = d * *e + rest * w;
                            }
                        });
                }
                Shadow::Device(avg) => {
                    *avg = ((&*avg * d)? + (var.as_tensor() * (1.0 - d))?)?;
                }
            }
        }
        Ok(())
    }

    /// The average as named CPU tensors (the VarMap's names), to save as a model.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, var, shadow) in &self.params {
            out.insert(name.clone(), shadow.to_tensor(var, &Device::Cpu)?);
        }
        Ok(out)
    }

    /// Replaces the average with `tensors` (as [`Self::tensors`] wrote them). Every
    /// parameter must be there with its shape; errors name the tensor and `source`.
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>, source: &str) -> anyhow::Result<()> {
        let mut restored = Vec::with_capacity(self.params.len());
        for (name, var, _) in &self.params {
            let t = tensors
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("{source}: averaged weight `{name}` is missing"))?;
            if t.dims() != var.dims() {
                anyhow::bail!(
                    "{source}: averaged weight `{name}` has shape {:?}, the model needs {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            restored.push(shadow_of(
                &t.to_dtype(DType::F32)?.to_device(var.device())?,
            )?);
        }
        for ((_, _, shadow), new) in self.params.iter_mut().zip(restored) {
            *shadow = new;
        }
        Ok(())
    }

    /// Puts the average into the variables and returns their raw values by name, for
    /// [`Self::restore`] and for a checkpoint's [`TRAINING_WEIGHTS_FILE`]: validation and
    /// checkpoints see the averaged model.
    pub fn swap_in(&self) -> Result<HashMap<String, Tensor>> {
        let mut raw = HashMap::with_capacity(self.params.len());
        for (name, var, shadow) in &self.params {
            raw.insert(name.clone(), var.as_tensor().copy()?);
            var.set(&shadow.to_tensor(var, var.device())?)?;
        }
        Ok(raw)
    }

    /// Puts back the raw values [`Self::swap_in`] returned.
    pub fn restore(&self, raw: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var, _) in &self.params {
            match raw.get(name) {
                Some(w) => var.set(w)?,
                None => candle_core::bail!("ema: no raw value of `{name}` to restore"),
            }
        }
        Ok(())
    }
}

impl Shadow {
    /// The average of `var` as a tensor of its shape on `device`.
    fn to_tensor(&self, var: &Var, device: &Device) -> Result<Tensor> {
        match self {
            Shadow::Host(avg) => Tensor::from_slice(avg, var.shape(), device),
            Shadow::Device(avg) => avg.to_device(device),
        }
    }
}

fn shadow_of(t: &Tensor) -> Result<Shadow> {
    Ok(match t.device() {
        Device::Cpu => Shadow::Host(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?),
        _ => Shadow::Device(t.copy()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32]) -> Result<Var> {
        Var::from_tensor(&Tensor::from_slice(values, (values.len(),), &Device::Cpu)?)
    }

    #[test]
    fn the_decay_ramps_up_to_its_bound() -> Result<()> {
        let ema = Ema::new(0.999, vec![("w".into(), var(&[0.0])?)])?;
        assert!((ema.decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
        assert!((ema.decay_at(90) - 91.0 / 100.0).abs() < 1e-12);
        assert_eq!(ema.decay_at(1_000_000), 0.999);
        assert!(Ema::new(1.0, vec![]).is_err());
        assert!(Ema::new(-0.1, vec![]).is_err());
        Ok(())
    }

    /// The in-place CPU pass against the formula written out in f64, over several
    /// updates of weights that change between them, in a size that spans chunks.
    #[test]
    fn updates_follow_the_formula() -> Result<()> {
        let n = PARALLEL_CHUNK + 7;
        let start: Vec<f32> = (0..n)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 10.0)
            .collect();
        let w = var(&start)?;
        let mut ema = Ema::new(0.9, vec![("w".into(), w.clone())])?;
        let mut expected: Vec<f64> = start.iter().map(|&x| x as f64).collect();
        for step in 1..=30u64 {
            let now: Vec<f32> = (0..n)
                .map(|i| ((i as u64 * 7 + step * 13) % 23) as f32 - 11.0)
                .collect();
            w.set(&Tensor::from_slice(&now, (n,), &Device::Cpu)?)?;
            ema.update(step)?;
            let d = ema.decay_at(step);
            for (e, &x) in expected.iter_mut().zip(&now) {
                *e = d * *e + (1.0 - d) * x as f64;
            }
        }
        let got: Vec<f32> = ema.tensors()?["w"].to_vec1()?;
        for (g, e) in got.iter().zip(&expected) {
            assert!((*g as f64 - e).abs() < 1e-4, "{g} vs {e}");
        }
        // A constant weight is a fixed point.
        let c = var(&[3.5, -1.25])?;
        let mut ema = Ema::new(0.99, vec![("c".into(), c)])?;
        for step in 1..=50 {
            ema.update(step)?;
        }
        for (got, want) in ema.tensors()?["c"]
            .to_vec1::<f32>()?
            .iter()
            .zip([3.5, -1.25])
        {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn swap_in_and_restore_round_trip() -> Result<()> {
        let w = var(&[1.0, 2.0])?;
        let mut ema = Ema::new(0.5, vec![("w".into(), w.clone())])?;
        w.set(&Tensor::new(&[3.0f32, 6.0], &Device::Cpu)?)?;
        ema.update(1_000)?; // decay 0.5: (1+3)/2, (2+6)/2
        let raw = ema.swap_in()?;
        assert_eq!(w.as_tensor().to_vec1::<f32>()?, vec![2.0, 4.0]);
        ema.restore(&raw)?;
        assert_eq!(w.as_tensor().to_vec1::<f32>()?, vec![3.0, 6.0]);
        Ok(())
    }

    #[test]
    fn load_checks_names_and_shapes() -> anyhow::Result<()> {
        let w = var(&[1.0, 2.0])?;
        let mut ema = Ema::new(0.5, vec![("w".into(), w)])?;
        let mut saved = HashMap::new();
        saved.insert("w".to_string(), Tensor::new(&[7.0f32, 8.0], &Device::Cpu)?);
        ema.load(&saved, "f")?;
        assert_eq!(ema.tensors()?["w"].to_vec1::<f32>()?, vec![7.0, 8.0]);
        saved.insert("w".to_string(), Tensor::new(&[7.0f32], &Device::Cpu)?);
        let err = ema.load(&saved, "f").unwrap_err().to_string();
        assert!(err.contains("`w` has shape [1]"), "{err}");
        let err = ema.load(&HashMap::new(), "f").unwrap_err().to_string();
        assert!(err.contains("`w` is missing"), "{err}");
        Ok(())
    }
}
