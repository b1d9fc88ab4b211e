//! The additive (Bahdanau) score `e[b,t,s,h] = Σ_{a∈h} v[a] · tanh(q[b,t,a] + k[b,s,a])` for
//! every (query, key) pair, as one fused op on the CPU.
//!
//! Built from candle ops it materialises `[batch, steps, src, units]` several times
//! (broadcast sum, tanh, reshape) and its backward reduces that tensor over strided
//! dimensions; that made additive attention ~80× slower than dot attention. The fused op
//! keeps nothing but its inputs and recomputes the tanh in the backward pass. Other
//! devices use the composite version, which the unit tests check it against.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use multiversion::multiversion;
use rayon::prelude::*;

use super::fastmath::{self, Real};

/// `q: [batch, steps, units]`, `k: [batch, src, units]`, `v: [units]` → scores
/// `[batch, steps, src, heads]`; head `h` owns units `h·units/heads .. (h+1)·units/heads`.
pub fn additive_scores(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let fused = q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64);
    if fused {
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, AdditiveScore { heads })
    } else {
        composite(q, k, v, heads)
    }
}

fn composite(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, units) = q.dims3()?;
    let s = k.dim(1)?;
    let per_head = units / heads;
    let head_of: Vec<f32> = (0..units)
        .flat_map(|i| (0..heads).map(move |j| if i / per_head == j { 1.0 } else { 0.0 }))
        .collect();
    let head_of = Tensor::from_vec(head_of, (units, heads), q.device())?.to_dtype(q.dtype())?;
    let v_heads = head_of.broadcast_mul(&v.unsqueeze(1)?)?; // [units, heads]
    q.unsqueeze(2)?
        .broadcast_add(&k.unsqueeze(1)?)?
        .tanh()?
        .reshape((b * t * s, units))?
        .matmul(&v_heads)?
        .reshape((b, t, s, heads))
}

struct AdditiveScore {
    heads: usize,
}

#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    steps: usize,
    src: usize,
    units: usize,
    heads: usize,
}

impl Dims {
    fn new(q: &[usize], k: &[usize], v: &[usize], heads: usize) -> Result<Self> {
        match (q, k, v) {
            (&[b, t, a], &[kb, s, ka], &[va])
                if kb == b && ka == a && va == a && heads > 0 && a.is_multiple_of(heads) =>
            {
                Ok(Self {
                    batch: b,
                    steps: t,
                    src: s,
                    units: a,
                    heads,
                })
            }
            _ => candle_core::bail!(
                "additive score: shapes q {q:?}, k {k:?}, v {v:?} with {heads} heads do not fit"
            ),
        }
    }

    fn per_head(&self) -> usize {
        self.units / self.heads
    }
}

fn contiguous<'a, T: WithDType>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("additive score: inputs must be contiguous"),
    }
}

/// `Σ v[a] tanh(q[a] + k[a])` with independent lane accumulators over fixed-size
/// chunks, so it vectorises.
#[inline(always)]
fn dot_tanh<T: Real>(q: &[T], k: &[T], v: &[T]) -> T {
    const LANES: usize = fastmath::LANES;
    let mut acc = [T::zero(); LANES];
    let (qc, kc, vc) = (
        q.chunks_exact(LANES),
        k.chunks_exact(LANES),
        v.chunks_exact(LANES),
    );
    let tail = qc
        .remainder()
        .iter()
        .zip(kc.remainder())
        .zip(vc.remainder())
        .fold(T::zero(), |a, ((&q, &k), &v)| a + v * (q + k).tanh_());
    for ((q, k), v) in qc.zip(kc).zip(vc) {
        let q: &[T; LANES] = q.try_into().expect("chunk of LANES");
        let k: &[T; LANES] = k.try_into().expect("chunk of LANES");
        let v: &[T; LANES] = v.try_into().expect("chunk of LANES");
        for l in 0..LANES {
            acc[l] += v[l] * (q[l] + k[l]).tanh_();
        }
    }
    acc.into_iter().fold(tail, |a, b| a + b)
}

fn forward<T: Real>(q: &[T], k: &[T], v: &[T], d: Dims) -> Vec<T> {
    let mut out = vec![T::zero(); d.batch * d.steps * d.src * d.heads];
    out.par_chunks_mut(d.steps * d.src * d.heads)
        .enumerate()
        .for_each(|(b, out)| forward_row(b, out, q, k, v, d));
    out
}

/// The scores of batch row `b` into `out: [steps, src, heads]`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn forward_row<T: Real>(b: usize, out: &mut [T], q: &[T], k: &[T], v: &[T], d: Dims) {
    let (t, s, a, per) = (d.steps, d.src, d.units, d.per_head());
    for ti in 0..t {
        let q = &q[(b * t + ti) * a..][..a];
        for si in 0..s {
            let k = &k[(b * s + si) * a..][..a];
            for h in 0..d.heads {
                let r = h * per..(h + 1) * per;
                out[(ti * s + si) * d.heads + h] = dot_tanh(&q[r.clone()], &k[r.clone()], &v[r]);
            }
        }
    }
}

/// Gradients `(dq, dk, dv)` for the upstream gradient `g: [batch, steps, src, heads]`.
fn backward<T: Real>(q: &[T], k: &[T], v: &[T], g: &[T], d: Dims) -> Grads<T> {
    let (t, s, a) = (d.steps, d.src, d.units);
    let per_batch: Vec<Grads<T>> = (0..d.batch)
        .into_par_iter()
        .map(|b| backward_row(b, q, k, v, g, d))
        .collect();
    let mut dq = Vec::with_capacity(d.batch * t * a);
    let mut dk = Vec::with_capacity(d.batch * s * a);
    let mut dv = vec![T::zero(); a];
    for (q, k, v) in per_batch {
        dq.extend(q);
        dk.extend(k);
        for (acc, x) in dv.iter_mut().zip(v) {
            *acc += x;
        }
    }
    (dq, dk, dv)
}

impl CustomOp3 for AdditiveScore {
    fn name(&self) -> &'static str {
        "additive-score"
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
        let d = Dims::new(l1.dims(), l2.dims(), l3.dims(), self.heads)?;
        let shape = Shape::from((d.batch, d.steps, d.src, d.heads));
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(forward(
                contiguous::<f32>(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
                d,
            )),
            DType::F64 => CpuStorage::F64(forward(
                contiguous::<f64>(s1, l1)?,
                contiguous(s2, l2)?,
                contiguous(s3, l3)?,
                d,
            )),
            dtype => candle_core::bail!("additive score: unsupported dtype {dtype:?}"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = Dims::new(q.dims(), k.dims(), v.dims(), self.heads)?;
        fn host<T: WithDType>(x: &Tensor) -> Result<Vec<T>> {
            x.flatten_all()?.to_vec1()
        }
        let (dq, dk, dv) = match q.dtype() {
            DType::F32 => {
                let (dq, dk, dv) =
                    backward::<f32>(&host(q)?, &host(k)?, &host(v)?, &host(grad)?, d);
                (
                    Tensor::from_vec(dq, q.shape(), q.device())?,
                    Tensor::from_vec(dk, k.shape(), k.device())?,
                    Tensor::from_vec(dv, v.shape(), v.device())?,
                )
            }
            DType::F64 => {
                let (dq, dk, dv) =
                    backward::<f64>(&host(q)?, &host(k)?, &host(v)?, &host(grad)?, d);
                (
                    Tensor::from_vec(dq, q.shape(), q.device())?,
                    Tensor::from_vec(dk, k.shape(), k.device())?,
                    Tensor::from_vec(dv, v.shape(), v.device())?,
                )
            }
            dtype => candle_core::bail!("additive score: unsupported dtype {dtype:?}"),
        };
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `(dq, dk, dv)` of one batch row.
type Grads<T> = (Vec<T>, Vec<T>, Vec<T>);

/// The gradients of batch row `b`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn backward_row<T: Real>(b: usize, q: &[T], k: &[T], v: &[T], g: &[T], d: Dims) -> Grads<T> {
    let (t, s, a, per) = (d.steps, d.src, d.units, d.per_head());
    let mut dq = vec![T::zero(); t * a];
    let mut dk = vec![T::zero(); s * a];
    let mut dv = vec![T::zero(); a];
    for ti in 0..t {
        let q = &q[(b * t + ti) * a..][..a];
        for si in 0..s {
            let k = &k[(b * s + si) * a..][..a];
            for h in 0..d.heads {
                let gg = g[((b * t + ti) * s + si) * d.heads + h];
                if gg == T::zero() {
                    continue;
                }
                let r = h * per..(h + 1) * per;
                let dq = &mut dq[ti * a..][r.clone()];
                let dk = &mut dk[si * a..][r.clone()];
                let dv = &mut dv[r.clone()];
                let (q, k, v) = (&q[r.clone()], &k[r.clone()], &v[r]);
                for i in 0..per {
                    let th = (q[i] + k[i]).tanh_();
                    dv[i] += gg * th;
                    let dpre = gg * v[i] * (T::one() - th * th);
                    dq[i] += dpre;
                    dk[i] += dpre;
                }
            }
        }
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The fused op and the composite version agree in value and in all gradients.
    #[test]
    fn fused_matches_composite() {
        let dev = Device::Cpu;
        for (dtype, heads, tol) in [
            (DType::F64, 1, 1e-12),
            (DType::F64, 3, 1e-12),
            (DType::F32, 2, 1e-5),
        ] {
            // 12 units: not a multiple of the 8 lanes, so the tail loop runs too.
            let rand = |shape: &[usize]| {
                Var::from_tensor(
                    &Tensor::randn(0f64, 1.0, shape, &dev)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap()
            };
            let (q, k, v) = (rand(&[2, 3, 12]), rand(&[2, 5, 12]), rand(&[12]));
            let r = Tensor::randn(0f64, 1.0, (2, 3, 5, heads), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let run = |fused: bool| {
                let e = if fused {
                    additive_scores(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads).unwrap()
                } else {
                    composite(q.as_tensor(), k.as_tensor(), v.as_tensor(), heads).unwrap()
                };
                let grads = (&e * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g = |x: &Var| grads.get(x.as_tensor()).unwrap().clone();
                (e, g(&q), g(&k), g(&v))
            };
            let (a, b) = (run(true), run(false));
            assert_eq!(a.0.dims(), &[2, 3, 5, heads]);
            for (name, x, y) in [
                ("scores", &a.0, &b.0),
                ("dq", &a.1, &b.1),
                ("dk", &a.2, &b.2),
                ("dv", &a.3, &b.3),
            ] {
                let diff = max_diff(x, y);
                assert!(
                    diff < tol,
                    "{dtype:?} heads {heads}: {name} differs by {diff}"
                );
            }
        }
    }
}
