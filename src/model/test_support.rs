//! What the LSTM and GRU test suites share: random cases kept as `Var`s, tensor
//! comparisons, gradients against a reference and against central differences, padded
//! batches against each sentence alone.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::lstm::Recurrence;

pub(crate) fn uniform(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    lo: f64,
    hi: f64,
    dtype: DType,
) -> Tensor {
    let n = shape.iter().product();
    let data: Vec<f64> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("random tensor")
}

/// `[lengths.len(), t]`, 1 at the first `lengths[b]` steps of row `b`, 0 after.
pub(crate) fn mask_of(lengths: &[usize], t: usize) -> Tensor {
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&len| (0..t).map(move |s| if s < len { 1.0 } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (lengths.len(), t), &Device::Cpu).expect("mask")
}

/// A seeded generator and the case's `Var`s drawn from it: `(name, shape, lo, hi)` each,
/// uniform in `lo..hi`. The generator is returned to draw more (the loss weights).
pub(crate) fn random_vars(
    seed: u64,
    shapes: Vec<(&str, Vec<usize>, f64, f64)>,
    dtype: DType,
) -> (ChaCha8Rng, Vec<(String, Var)>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vars = shapes
        .into_iter()
        .map(|(name, shape, lo, hi)| {
            let t = uniform(&mut rng, &shape, lo, hi, dtype);
            (name.to_string(), Var::from_tensor(&t).expect("var"))
        })
        .collect();
    (rng, vars)
}

/// A test case of one layer: every trainable value (the layer's parameters, the input and
/// the initial state) as a `Var` so that autograd reports its gradient, and a scalar loss.
pub(crate) trait Harness {
    fn vars(&self) -> &[(String, Var)];

    /// The layer run on `values`: its outputs `[B, T, H]` and its final state's tensors
    /// (`[B, H]` each) by name.
    #[allow(clippy::type_complexity)]
    fn outputs(
        &self,
        values: &HashMap<String, Tensor>,
        reverse: bool,
        recurrence: Recurrence,
    ) -> Result<(Tensor, Vec<(&'static str, Tensor)>)>;

    /// The scalar loss of the layer run on `values` (the case's own, or perturbed copies).
    fn loss(
        &self,
        values: &HashMap<String, Tensor>,
        reverse: bool,
        recurrence: Recurrence,
    ) -> Result<Tensor>;

    fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Gradient of the loss w.r.t. every var, in `vars` order.
    fn gradients(&self, reverse: bool, recurrence: Recurrence) -> Result<Vec<(String, Tensor)>> {
        let grads = self
            .loss(&self.tensors(), reverse, recurrence)?
            .backward()?;
        self.vars()
            .iter()
            .map(|(name, var)| {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"));
                Ok((name.clone(), g.clone()))
            })
            .collect()
    }
}

pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub(crate) fn max_abs(a: &Tensor) -> f64 {
    let zeros = a.zeros_like().unwrap();
    max_abs_diff(a, &zeros)
}

/// Outputs `hs: [B, T, H]` are exactly zero after each row's length.
pub(crate) fn assert_pads_zero(hs: &Tensor, lengths: &[usize], what: &str) -> Result<()> {
    let hs = hs.to_dtype(DType::F64)?.to_vec3::<f64>()?;
    for (b, &len) in lengths.iter().enumerate() {
        for (t, row) in hs[b].iter().enumerate().skip(len) {
            assert!(
                row.iter().all(|&v| v == 0.0),
                "{what}: pad ({b},{t}) not zero"
            );
        }
    }
    Ok(())
}

/// Each gradient of `fused` is within `tol · max(1, scale)` of `reference`'s, `scale` being
/// the reference's largest magnitude; with `nontrivial` that scale must exceed 1e-3.
pub(crate) fn assert_gradients_match(
    fused: &[(String, Tensor)],
    reference: &[(String, Tensor)],
    tol: f64,
    nontrivial: bool,
    what: &str,
) {
    for ((name, gf), (_, gr)) in fused.iter().zip(reference) {
        let scale = max_abs(gr);
        if nontrivial {
            assert!(
                scale > 1e-3,
                "{what} d{name}: reference gradient is trivial"
            );
        }
        let diff = max_abs_diff(gf, gr);
        assert!(
            diff < tol * scale.max(1.0),
            "{what} d{name}: differs by {diff} (scale {scale})"
        );
    }
}

/// Central differences in f64 (step 1e-6) of `case`'s fused loss against its `analytic`
/// gradients, at the elements `picks(len)` of every var; with `nontrivial` each gradient
/// must have an element above 1e-3.
pub(crate) fn assert_finite_differences(
    case: &impl Harness,
    reverse: bool,
    picks: impl Fn(usize) -> Vec<usize>,
    nontrivial: bool,
    what: &str,
) -> Result<()> {
    let eps = 1e-6;
    let analytic = case.gradients(reverse, Recurrence::Auto)?;
    let base = case.tensors();
    for (name, grad) in &analytic {
        let grad = grad.flatten_all()?.to_vec1::<f64>()?;
        let shape = base[name].dims().to_vec();
        let flat = base[name].flatten_all()?.to_vec1::<f64>()?;
        if nontrivial {
            assert!(
                grad.iter().any(|g| g.abs() > 1e-3),
                "{what} d{name}: trivial gradient"
            );
        }
        for idx in picks(flat.len()) {
            let at = |delta: f64| -> Result<f64> {
                let mut data = flat.clone();
                data[idx] += delta;
                let mut values = base.clone();
                values.insert(
                    name.clone(),
                    Tensor::from_vec(data, shape.as_slice(), &Device::Cpu)?,
                );
                case.loss(&values, reverse, Recurrence::Auto)?
                    .to_scalar::<f64>()
            };
            let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
            let diff = (numeric - grad[idx]).abs();
            assert!(
                diff < 1e-6 * (1.0 + numeric.abs()),
                "{what} d{name}[{idx}]: analytic {} numeric {numeric}",
                grad[idx]
            );
        }
    }
    Ok(())
}

/// The fused gradients computed on a rayon pool of `threads` threads.
pub(crate) fn gradients_on_threads(
    case: &(impl Harness + Sync),
    threads: usize,
    reverse: bool,
) -> Result<Vec<(String, Tensor)>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| case.gradients(reverse, Recurrence::Auto))
}

/// Each row of the padded batch `xs: [B, T, I]` (real tokens `0..lengths[b]`) gets, within
/// 1e-6, the outputs and final state that `run` gives it alone; those outputs must not be
/// trivial, and the batch's outputs are zero at padding. `run(xs, mask)` returns the
/// outputs and the final state's tensors (`[B, H]`) by name.
pub(crate) fn assert_rows_match_alone(
    xs: &Tensor,
    mask: &Tensor,
    lengths: &[usize],
    what: &str,
    run: impl Fn(&Tensor, &Tensor) -> Result<(Tensor, Vec<(&'static str, Tensor)>)>,
) -> Result<()> {
    let (hs, state) = run(xs, mask)?;
    assert_pads_zero(&hs, lengths, &format!("{what} batch"))?;
    for (row, &len) in lengths.iter().enumerate() {
        let x1 = xs.narrow(0, row, 1)?.narrow(1, 0, len)?;
        let mask = Tensor::ones((1, len), DType::F32, &Device::Cpu)?;
        let (hs1, state1) = run(&x1, &mask)?;
        let what = format!("{what} row {row}");
        assert!(max_abs(&hs1) > 0.05, "{what}: trivial outputs");
        let batched = hs.narrow(0, row, 1)?.narrow(1, 0, len)?;
        assert!(
            max_abs_diff(&batched, &hs1) < 1e-6,
            "{what}: outputs differ"
        );
        for ((part, s), (_, s1)) in state.iter().zip(&state1) {
            assert!(
                max_abs_diff(&s.narrow(0, row, 1)?, s1) < 1e-6,
                "{what}: final {part}"
            );
        }
    }
    Ok(())
}

/// The fused op and the step-by-step path agree on `case`: outputs and final state within
/// 1e-12, gradients within 1e-11 (relative to their scale where that exceeds 1).
pub(crate) fn assert_fused_matches_stepwise(case: &impl Harness, reverse: bool) -> Result<()> {
    let values = case.tensors();
    let (hs_f, st_f) = case.outputs(&values, reverse, Recurrence::Auto)?;
    let (hs_r, st_r) = case.outputs(&values, reverse, Recurrence::StepByStep)?;
    assert!(
        max_abs_diff(&hs_f, &hs_r) < 1e-12,
        "reverse={reverse}: outputs"
    );
    for ((part, f), (_, r)) in st_f.iter().zip(&st_r) {
        assert!(max_abs_diff(f, r) < 1e-12, "reverse={reverse}: {part}");
    }
    let fused = case.gradients(reverse, Recurrence::Auto)?;
    let reference = case.gradients(reverse, Recurrence::StepByStep)?;
    let what = format!("reverse={reverse}");
    assert_gradients_match(&fused, &reference, 1e-11, false, &what);
    Ok(())
}

/// A `[3, 5]` mask with padding in the middle of rows, not only at their ends.
pub(crate) fn interior_padding_mask() -> Result<Tensor> {
    Tensor::from_vec(
        vec![
            1f32, 0., 1., 1., 0., //
            0., 1., 0., 1., 1., //
            1., 1., 1., 0., 0.,
        ],
        (3, 5),
        &Device::Cpu,
    )
}

/// The fused gradients of `case` (reversed) on one thread and on more threads than rows
/// match the step-by-step path's within 1e-11.
pub(crate) fn assert_gradients_ignore_thread_count(case: &(impl Harness + Sync)) -> Result<()> {
    let reference = case.gradients(true, Recurrence::StepByStep)?;
    for threads in [1, 4] {
        let fused = gradients_on_threads(case, threads, true)?;
        let what = format!("{threads} threads");
        assert_gradients_match(&fused, &reference, 1e-11, false, &what);
    }
    Ok(())
}

/// The fused op gives exactly the same, non-trivial results whether or not any input tracks
/// a gradient (without one it keeps no intermediates).
pub(crate) fn assert_inference_matches_training(
    case: &impl Harness,
    reverse: bool,
    what: &str,
) -> Result<()> {
    let tracked = case.tensors();
    let detached: HashMap<String, Tensor> = tracked
        .iter()
        .map(|(n, t)| (n.clone(), t.detach()))
        .collect();
    assert!(!detached["weight_hh"].track_op());
    let (hs_t, st_t) = case.outputs(&tracked, reverse, Recurrence::Auto)?;
    let (hs_i, st_i) = case.outputs(&detached, reverse, Recurrence::Auto)?;
    assert!(max_abs(&hs_t) > 0.05, "{what}: trivial outputs");
    assert!(max_abs_diff(&hs_t, &hs_i) == 0.0, "{what}: outputs");
    for ((part, t), (_, i)) in st_t.iter().zip(&st_i) {
        assert!(max_abs_diff(t, i) == 0.0, "{what}: {part}");
    }
    Ok(())
}
