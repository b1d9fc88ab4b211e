//! Adam / AdamW with one pass over each parameter, and global-norm gradient clipping.
//!
//! candle_nn's AdamW builds about ten full-size temporaries per parameter and step; on
//! this project's CPU target that cost 23 % of a training step. Here, on the CPU, the
//! moments live in host vectors and one fused loop reads the gradient once and updates
//! moments and weights in place (a candle in-place op on the variable's storage). On
//! other devices the same update runs as tensor ops, with the moments as device tensors.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{
    backprop::GradStore, bail, CpuStorage, DType, Device, InplaceOp2, Layout, Result, Storage,
    Tensor, Var,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Adam hyper-parameters. `weight_decay > 0` gives AdamW (decoupled decay).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter.
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

/// One trainable parameter: its name (the VarMap key), variable and moments.
struct Param {
    name: String,
    var: Var,
    moments: Moments,
}

pub struct Adam {
    params: Vec<Param>,
    pub hp: AdamParams,
    /// Number of updates taken so far (for bias correction).
    pub t: u64,
}

impl Adam {
    /// Builds the optimizer over named f32 variables. Sorting by name makes the order,
    /// and so the floating-point summation order of the gradient norm, independent of
    /// hash-map iteration.
    pub fn new(vars: Vec<(String, Var)>, hp: AdamParams) -> Result<Self> {
        Self::build(vars, hp, false)
    }

    /// Like [`Adam::new`], but with the moments as tensors and the update as tensor
    /// ops even on the CPU: the path every other device takes (the twin the fused CPU
    /// update is tested against).
    #[cfg(test)]
    fn with_tensor_moments(vars: Vec<(String, Var)>, hp: AdamParams) -> Result<Self> {
        Self::build(vars, hp, true)
    }

    fn build(mut vars: Vec<(String, Var)>, hp: AdamParams, tensor_moments: bool) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = vars
            .into_iter()
            .map(|(name, var)| {
                if var.dtype() != DType::F32 {
                    bail!(
                        "parameter {name}: Adam supports f32 only, got {:?}",
                        var.dtype()
                    );
                }
                let n = var.elem_count();
                let moments = match var.device() {
                    Device::Cpu if !tensor_moments => Moments::Host {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    },
                    dev => Moments::Device {
                        m: Tensor::zeros(var.shape(), DType::F32, dev)?,
                        v: Tensor::zeros(var.shape(), DType::F32, dev)?,
                    },
                };
                Ok(Param { name, var, moments })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { params, hp, t: 0 })
    }

    /// Applies one update with learning rate `lr`, the gradients multiplied by
    /// `grad_scale` (the clipping factor). Parameters without a gradient are left alone,
    /// as are their moments.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.hp.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.hp.beta2.powi(self.t as i32);
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            match &mut p.moments {
                Moments::Host { m, v } => {
                    let op = AdamUpdate {
                        moments: RefCell::new((m, v)),
                        lr: lr as f32,
                        beta1: self.hp.beta1 as f32,
                        beta2: self.hp.beta2 as f32,
                        eps: self.hp.eps as f32,
                        weight_decay: self.hp.weight_decay as f32,
                        bc1: bc1 as f32,
                        bc2_sqrt: bc2.sqrt() as f32,
                        grad_scale: grad_scale as f32,
                    };
                    p.var.as_tensor().inplace_op2(g, &op)?;
                }
                Moments::Device { m, v } => {
                    let g = (g * grad_scale)?;
                    *m = ((&*m * self.hp.beta1)? + (&g * (1.0 - self.hp.beta1))?)?;
                    *v = ((&*v * self.hp.beta2)? + (g.sqr()? * (1.0 - self.hp.beta2))?)?;
                    let mhat = (&*m / bc1)?;
                    let denom = ((&*v / bc2)?.sqrt()? + self.hp.eps)?;
                    let w = p.var.as_tensor();
                    let w = if self.hp.weight_decay > 0.0 {
                        (w * (1.0 - lr * self.hp.weight_decay))?
                    } else {
                        w.clone()
                    };
                    p.var.set(&(w - ((mhat / denom)? * lr)?)?)?;
                }
            }
        }
        Ok(())
    }

    /// The moments as named tensors (`NAME.m`, `NAME.v`) on the CPU, for checkpoints.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            let (m, v) = match &p.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, p.var.shape(), &Device::Cpu)?,
                    Tensor::from_slice(v, p.var.shape(), &Device::Cpu)?,
                ),
                Moments::Device { m, v } => {
                    (m.to_device(&Device::Cpu)?, v.to_device(&Device::Cpu)?)
                }
            };
            out.insert(format!("{}.m", p.name), m);
            out.insert(format!("{}.v", p.name), v);
        }
        Ok(out)
    }

    /// Restores moments written by [`Adam::state_tensors`]. Every parameter must be
    /// present with its exact shape; errors name the tensor and `source` (the file).
    pub fn load_state_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        t: u64,
        source: &str,
    ) -> anyhow::Result<()> {
        let known: std::collections::HashSet<String> = self
            .params
            .iter()
            .flat_map(|p| [format!("{}.m", p.name), format!("{}.v", p.name)])
            .collect();
        let mut extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(*k)).collect();
        extra.sort();
        if let Some(extra) = extra.first() {
            anyhow::bail!("{source}: unexpected optimizer tensor `{extra}` (model mismatch?)");
        }
        // Check everything before changing anything.
        let mut restored = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let get = |suffix: &str| -> anyhow::Result<Tensor> {
                let key = format!("{}.{suffix}", p.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    anyhow::anyhow!("{source}: optimizer tensor `{key}` is missing")
                })?;
                if t.dims() != p.var.dims() {
                    anyhow::bail!(
                        "{source}: optimizer tensor `{key}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        p.var.dims()
                    );
                }
                if t.dtype() != DType::F32 {
                    anyhow::bail!(
                        "{source}: optimizer tensor `{key}` is {:?}, expected f32",
                        t.dtype()
                    );
                }
                Ok(t.clone())
            };
            restored.push((get("m")?, get("v")?));
        }
        for (p, (m, v)) in self.params.iter_mut().zip(restored) {
            p.moments = match &p.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1()?,
                    v: v.flatten_all()?.to_vec1()?,
                },
                Moments::Device { .. } => Moments::Device {
                    m: m.to_device(p.var.device())?,
                    v: v.to_device(p.var.device())?,
                },
            };
        }
        self.t = t;
        Ok(())
    }
}

/// The fused CPU update. Holds mutable borrows of the moments; `inplace_op2` runs it
/// once, synchronously, so the RefCell is never contended.
struct AdamUpdate<'a> {
    moments: RefCell<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    bc1: f32,
    bc2_sqrt: f32,
    grad_scale: f32,
}

impl InplaceOp2 for AdamUpdate<'_> {
    fn name(&self) -> &'static str {
        "adam-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(w), CpuStorage::F32(g)) = (s1, s2) else {
            bail!("adam-update: f32 parameter and gradient expected");
        };
        let (Some((w0, w1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            bail!("adam-update: contiguous parameter and gradient expected");
        };
        let (w, g) = (&mut w[w0..w1], &g[g0..g1]);
        let mut moments = self.moments.borrow_mut();
        let (m, v) = &mut *moments;
        if w.len() != g.len() || m.len() != w.len() {
            bail!(
                "adam-update: size mismatch ({} weights, {} grads, {} moments)",
                w.len(),
                g.len(),
                m.len()
            );
        }
        // Adam's step: lr * mhat / (sqrt(vhat) + eps) with mhat = m / bc1 and
        // sqrt(vhat) = sqrt(v) / sqrt(bc2); computed per element without temporaries.
        let step = self.lr / self.bc1;
        let decay = 1.0 - self.lr * self.weight_decay;
        let (scale, beta1, beta2) = (self.grad_scale, self.beta1, self.beta2);
        let (bc2_sqrt, eps) = (self.bc2_sqrt, self.eps);
        // Element-wise, so splitting it over the threads changes no result.
        w.par_chunks_mut(PARALLEL_CHUNK)
            .zip(g.par_chunks(PARALLEL_CHUNK))
            .zip(m.par_chunks_mut(PARALLEL_CHUNK))
            .zip(v.par_chunks_mut(PARALLEL_CHUNK))
            .for_each(|(((w, g), m), v)| {
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    let g = g * scale;
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *w = *w * decay - step * *m / (v.sqrt() / bc2_sqrt + eps);
                }
            });
        Ok(())
    }
}

/// Elements per parallel task of the optimizer's passes over parameters.
const PARALLEL_CHUNK: usize = 1 << 15;

/// `Σ x²` in f64, chunk by chunk on all threads. The chunks are fixed and their sums added
/// in order, so the result does not depend on the number of threads; within a chunk,
/// eight running sums instead of one keep the additions from waiting on each other.
fn sum_of_squares(data: &[f32]) -> f64 {
    let chunks: Vec<f64> = data
        .par_chunks(PARALLEL_CHUNK)
        .map(|chunk| {
            let mut acc = [0f64; 8];
            let mut lanes = chunk.chunks_exact(8);
            for x in &mut lanes {
                for (a, &x) in acc.iter_mut().zip(x) {
                    *a += (x as f64) * (x as f64);
                }
            }
            let rest: f64 = lanes
                .remainder()
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum();
            acc.iter().sum::<f64>() + rest
        })
        .collect();
    chunks.iter().sum()
}

/// The global L2 norm of all gradients of `vars`, computed in f64 in one pass over each
/// gradient (on the CPU without copies).
pub fn global_grad_norm(grads: &GradStore, vars: &[Var]) -> Result<f64> {
    let mut sum = 0f64;
    for var in vars {
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        sum += match g.device() {
            Device::Cpu => {
                let (storage, layout) = g.storage_and_layout();
                match (&*storage, layout.contiguous_offsets()) {
                    (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) => {
                        sum_of_squares(&data[a..b])
                    }
                    _ => g
                        .to_dtype(DType::F64)?
                        .sqr()?
                        .sum_all()?
                        .to_scalar::<f64>()?,
                }
            }
            _ => g
                .to_dtype(DType::F32)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f32>()? as f64,
        };
    }
    Ok(sum.sqrt())
}

/// The factor that scales the gradients to a global norm of at most `max_norm`
/// (1 when `max_norm` is 0, i.e. clipping is off, or the norm is within bounds).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::{AdamW, Optimizer, ParamsAdamW};

    /// The one-pass update must agree with candle_nn's AdamW, the reference.
    #[test]
    fn matches_candle_nn_adamw() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..60)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 10.0)
            .collect();
        let target = Tensor::from_vec(
            (0..60).map(|i| (i % 5) as f32).collect::<Vec<_>>(),
            (6, 10),
            &dev,
        )?;
        for wd in [0.0, 0.01] {
            let a = Var::from_tensor(&Tensor::from_slice(&init, (6, 10), &dev)?)?;
            let b = Var::from_tensor(&Tensor::from_slice(&init, (6, 10), &dev)?)?;
            let hp = AdamParams {
                weight_decay: wd,
                ..Default::default()
            };
            let mut ours = Adam::new(vec![("w".into(), a.clone())], hp.clone())?;
            let mut reference = AdamW::new(
                vec![b.clone()],
                ParamsAdamW {
                    lr: 0.05,
                    beta1: hp.beta1,
                    beta2: hp.beta2,
                    eps: hp.eps,
                    weight_decay: wd,
                },
            )?;
            for _ in 0..20 {
                let loss_a = (a.as_tensor().sqr()? - &target)?.sqr()?.sum_all()?;
                ours.step(&loss_a.backward()?, 0.05, 1.0)?;
                let loss_b = (b.as_tensor().sqr()? - &target)?.sqr()?.sum_all()?;
                reference.backward_step(&loss_b)?;
            }
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.as_tensor().flatten_all()?.to_vec1()?,
                b.as_tensor().flatten_all()?.to_vec1()?,
            );
            let moved = a.iter().zip(&init).any(|(x, y)| (x - y).abs() > 0.1);
            assert!(moved, "parameters did not move");
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "ours {x} vs candle_nn {y} (wd {wd})");
            }
        }
        Ok(())
    }

    /// The tensor-op path (GPUs) and the fused CPU path agree, through a save/restore
    /// of the moments half-way.
    #[test]
    fn tensor_path_matches_fused_path() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let init: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let a = Var::from_tensor(&Tensor::from_slice(&init, (4, 6), &dev)?)?;
        let b = Var::from_tensor(&Tensor::from_slice(&init, (4, 6), &dev)?)?;
        let hp = AdamParams {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut fused = Adam::new(vec![("w".into(), a.clone())], hp.clone())?;
        let mut tensor = Adam::with_tensor_moments(vec![("w".into(), b.clone())], hp.clone())?;
        for step in 0..10 {
            if step == 5 {
                let saved = fused.state_tensors()?;
                let t = fused.t;
                fused = Adam::new(vec![("w".into(), a.clone())], hp.clone())?;
                fused.load_state_tensors(&saved, t, "test")?;
            }
            let la = (a.as_tensor().sqr()?.sin()? * 3.0)?.sum_all()?;
            fused.step(&la.backward()?, 0.02, 0.5)?;
            let lb = (b.as_tensor().sqr()?.sin()? * 3.0)?.sum_all()?;
            tensor.step(&lb.backward()?, 0.02, 0.5)?;
        }
        let (a, b): (Vec<f32>, Vec<f32>) = (
            a.as_tensor().flatten_all()?.to_vec1()?,
            b.as_tensor().flatten_all()?.to_vec1()?,
        );
        assert!(a.iter().zip(&init).any(|(x, y)| (x - y).abs() > 0.05));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "fused {x} vs tensor ops {y}");
        }
        Ok(())
    }

    #[test]
    fn restoring_moments_checks_names_and_shapes() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let w = Var::zeros((2, 3), DType::F32, &dev)?;
        let mut adam = Adam::new(vec![("enc.w".into(), w)], AdamParams::default())?;
        let mut saved = adam.state_tensors()?;
        assert_eq!(saved.len(), 2);
        adam.load_state_tensors(&saved, 7, "opt.safetensors")?;
        assert_eq!(adam.t, 7);

        saved.insert("enc.w.v".into(), Tensor::zeros((3, 2), DType::F32, &dev)?);
        let e = format!(
            "{:#}",
            adam.load_state_tensors(&saved, 7, "opt.safetensors")
                .unwrap_err()
        );
        assert!(
            e.contains("opt.safetensors") && e.contains("`enc.w.v`") && e.contains("[3, 2]"),
            "{e}"
        );
        saved.remove("enc.w.v");
        let e = format!(
            "{:#}",
            adam.load_state_tensors(&saved, 7, "opt.safetensors")
                .unwrap_err()
        );
        assert!(e.contains("`enc.w.v`") && e.contains("missing"), "{e}");
        saved.insert("dec.w.m".into(), Tensor::zeros((2, 3), DType::F32, &dev)?);
        let e = format!(
            "{:#}",
            adam.load_state_tensors(&saved, 7, "opt.safetensors")
                .unwrap_err()
        );
        assert!(e.contains("unexpected") && e.contains("`dec.w.m`"), "{e}");
        Ok(())
    }

    #[test]
    fn global_norm_and_clipping() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let a = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[[3f32]], &dev)?)?;
        // d/dx of sum(x * c) is c: gradients [3, 4] and [12] → norm 13.
        let loss = ((a.as_tensor() * &Tensor::new(&[3f32, 4.0], &dev)?)?.sum_all()?
            + (b.as_tensor() * 12.0)?.sum_all()?)?;
        let grads = loss.backward()?;
        let norm = global_grad_norm(&grads, &[a, b])?;
        assert!((norm - 13.0).abs() < 1e-9, "{norm}");
        assert!((clip_scale(norm, 6.5) - 0.5).abs() < 1e-6);
        assert_eq!(clip_scale(norm, 20.0), 1.0);
        assert_eq!(clip_scale(norm, 0.0), 1.0);
        Ok(())
    }
}
