//! The fused GRU recurrence against the step-by-step candle-ops path, finite differences,
//! PyTorch's equations written out as plain loops, candle's stock GRU, and padding
//! invariance. Sizes are tiny so the suite stays fast.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Gru, Recurrence};
use crate::model::test_support::{
    assert_finite_differences, assert_fused_matches_stepwise, assert_gradients_ignore_thread_count,
    assert_gradients_match, assert_inference_matches_training, assert_pads_zero,
    assert_rows_match_alone, interior_padding_mask, mask_of, max_abs, max_abs_diff, random_vars,
    uniform, Harness,
};

const B: usize = 3;
const T: usize = 5;
const I: usize = 4;
const H: usize = 3;
/// Ragged lengths: rows end at different steps and one row is a single token.
const LENGTHS: [usize; B] = [5, 3, 1];

/// Every trainable value of one test case, kept as `Var`s so autograd reports their
/// gradients: the layer's parameters, the input and the initial state.
struct Case {
    vars: Vec<(String, Var)>,
    mask: Tensor,
    /// Fixed random weights of the scalar loss (outputs, final h).
    loss_weights: [Tensor; 2],
    layer_norm: bool,
}

impl Case {
    fn new(
        layer_norm: bool,
        dtype: DType,
        seed: u64,
        sizes: (usize, usize, usize, usize),
        lengths: &[usize],
    ) -> Self {
        let (b, t, i, h) = sizes;
        let mut shapes: Vec<(&str, Vec<usize>, f64, f64)> = vec![
            ("weight_ih", vec![3 * h, i], -0.6, 0.6),
            ("weight_hh", vec![3 * h, h], -0.6, 0.6),
            ("bias_ih", vec![3 * h], -0.5, 0.5),
            ("bias_hh", vec![3 * h], -0.5, 0.5),
            ("xs", vec![b, t, i], -1.0, 1.0),
            ("h0", vec![b, h], -0.5, 0.5),
        ];
        if layer_norm {
            shapes.extend([
                ("ln_ih_weight", vec![3 * h], 0.7, 1.3),
                ("ln_hh_weight", vec![3 * h], 0.7, 1.3),
            ]);
        }
        let (mut rng, vars) = random_vars(seed, shapes, dtype);
        let loss_weights = [
            uniform(&mut rng, &[b, t, h], -1.0, 1.0, dtype),
            uniform(&mut rng, &[b, h], -1.0, 1.0, dtype),
        ];
        Self {
            vars,
            mask: mask_of(lengths, t),
            loss_weights,
            layer_norm,
        }
    }

    fn small(layer_norm: bool, dtype: DType, seed: u64) -> Self {
        Self::new(layer_norm, dtype, seed, (B, T, I, H), &LENGTHS)
    }

    fn layer(&self, values: &HashMap<String, Tensor>) -> Result<Gru> {
        let xs = &values["xs"];
        let (_, _, i) = xs.dims3()?;
        let h = values["weight_hh"].dim(1)?;
        let vb = VarBuilder::from_tensors(values.clone(), xs.dtype(), &Device::Cpu);
        Gru::new(i, h, self.layer_norm, vb)
    }

    /// Runs the layer on `values` (the case's own, or perturbed copies).
    fn run(
        &self,
        values: &HashMap<String, Tensor>,
        reverse: bool,
        recurrence: Recurrence,
    ) -> Result<(Tensor, Tensor)> {
        let gru = self.layer(values)?;
        gru.forward_with(
            &values["xs"],
            &self.mask,
            reverse,
            Some(&values["h0"]),
            recurrence,
        )
    }
}

impl Harness for Case {
    fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    fn outputs(
        &self,
        values: &HashMap<String, Tensor>,
        reverse: bool,
        recurrence: Recurrence,
    ) -> Result<(Tensor, Vec<(&'static str, Tensor)>)> {
        let (hs, h) = self.run(values, reverse, recurrence)?;
        Ok((hs, vec![("h", h)]))
    }

    fn loss(
        &self,
        values: &HashMap<String, Tensor>,
        reverse: bool,
        recurrence: Recurrence,
    ) -> Result<Tensor> {
        let (hs, h) = self.run(values, reverse, recurrence)?;
        let [w_out, w_h] = &self.loss_weights;
        (hs * w_out)?.sum_all()? + (h * w_h)?.sum_all()?
    }
}

#[test]
fn fused_forward_matches_step_by_step() -> Result<()> {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for layer_norm in [false, true] {
            for reverse in [false, true] {
                let case = Case::small(layer_norm, dtype, 1);
                let values = case.tensors();
                let (hs_f, h_f) = case.run(&values, reverse, Recurrence::Auto)?;
                let (hs_r, h_r) = case.run(&values, reverse, Recurrence::StepByStep)?;
                let what = format!("{dtype:?} layer_norm={layer_norm} reverse={reverse}");
                assert_eq!(hs_f.dims(), [B, T, H], "{what}");
                assert_eq!(h_f.dims(), [B, H], "{what}");
                // Part of the contract: callers may hand them to ops that need dense tensors.
                for t in [&hs_f, &h_f] {
                    assert!(t.is_contiguous(), "{what}: output is a strided view");
                }
                assert!(
                    max_abs(&hs_r) > 0.05,
                    "{what}: reference outputs are trivial"
                );
                let diff = max_abs_diff(&hs_f, &hs_r);
                assert!(diff < tol, "{what}: outputs differ by {diff}");
                let diff = max_abs_diff(&h_f, &h_r);
                assert!(diff < tol, "{what}: final h differs by {diff}");
                assert_pads_zero(&hs_f, &LENGTHS, &what)?;
                assert_pads_zero(&hs_r, &LENGTHS, &what)?;
            }
        }
    }
    Ok(())
}

#[test]
fn fused_gradients_match_autograd_through_candle_ops() -> Result<()> {
    for dtype in [DType::F64, DType::F32] {
        let tol = if dtype == DType::F32 { 2e-5 } else { 1e-11 };
        for layer_norm in [false, true] {
            for reverse in [false, true] {
                let case = Case::small(layer_norm, dtype, 2);
                let fused = case.gradients(reverse, Recurrence::Auto)?;
                let reference = case.gradients(reverse, Recurrence::StepByStep)?;
                assert_eq!(fused.len(), case.vars.len());
                let what = format!("{dtype:?} layer_norm={layer_norm} reverse={reverse}");
                assert_gradients_match(&fused, &reference, tol, true, &what);
            }
        }
    }
    Ok(())
}

/// Central differences in f64 on every element of every input and parameter.
#[test]
fn fused_gradients_match_finite_differences() -> Result<()> {
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            let case = Case::small(layer_norm, DType::F64, 3);
            let what = format!("layer_norm={layer_norm} reverse={reverse}");
            let every = |len: usize| (0..len).collect();
            assert_finite_differences(&case, reverse, every, true, &what)?;
        }
    }
    Ok(())
}

/// Each sentence of a padded batch gets exactly the outputs and final state it gets alone.
#[test]
fn padded_batch_equals_each_sentence_alone() -> Result<()> {
    let (b, t, i, h) = (4, 7, 5, 6);
    let lengths = [7, 2, 5, 4];
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            for recurrence in [Recurrence::Auto, Recurrence::StepByStep] {
                let case = Case::new(layer_norm, DType::F32, 5, (b, t, i, h), &lengths);
                let values = case.tensors();
                let gru = case.layer(&values)?;
                let what = format!("layer_norm={layer_norm} reverse={reverse} {recurrence:?}");
                assert_rows_match_alone(&values["xs"], &case.mask, &lengths, &what, |xs, mask| {
                    let (hs, h) = gru.forward_with(xs, mask, reverse, None, recurrence)?;
                    Ok((hs, vec![("h", h)]))
                })?;
            }
        }
    }
    Ok(())
}

/// A tiny fixed layer in plain `Vec`s, independent of candle.
struct Plain {
    w_ih: Vec<Vec<f64>>,
    w_hh: Vec<Vec<f64>>,
    b_ih: Vec<f64>,
    b_hh: Vec<f64>,
    /// `(γ_ih, γ_hh)` with layer norm.
    ln: Option<(Vec<f64>, Vec<f64>)>,
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// `w · v` for a row-major matrix.
fn mat_vec(w: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    w.iter()
        .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect()
}

/// `γ ⊙ (v - mean) / sqrt(var + 1e-5)` (biased variance, as PyTorch's LayerNorm).
fn layer_norm(v: &[f64], gain: &[f64]) -> Vec<f64> {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    v.iter()
        .zip(gain)
        .map(|(x, g)| g * (x - mean) / (var + 1e-5).sqrt())
        .collect()
}

impl Plain {
    /// One step of PyTorch's `nn.GRU` cell, gate order r, z, n.
    fn step(&self, x: &[f64], h: &[f64]) -> Vec<f64> {
        let hid = h.len();
        let mut gx = mat_vec(&self.w_ih, x);
        let mut gh = mat_vec(&self.w_hh, h);
        if let Some((g_ih, g_hh)) = &self.ln {
            gx = layer_norm(&gx, g_ih);
            gh = layer_norm(&gh, g_hh);
        }
        let gx: Vec<f64> = gx.iter().zip(&self.b_ih).map(|(a, b)| a + b).collect();
        let gh: Vec<f64> = gh.iter().zip(&self.b_hh).map(|(a, b)| a + b).collect();
        (0..hid)
            .map(|j| {
                let r = sigmoid(gx[j] + gh[j]);
                let z = sigmoid(gx[hid + j] + gh[hid + j]);
                let n = (gx[2 * hid + j] + r * gh[2 * hid + j]).tanh();
                (1.0 - z) * n + z * h[j]
            })
            .collect()
    }

    /// A whole padded batch: `xs[b][t]`, real tokens `0..lengths[b]`, state carried over
    /// padding, outputs zero there.
    fn run(
        &self,
        xs: &[Vec<Vec<f64>>],
        lengths: &[usize],
        h0: &[Vec<f64>],
        reverse: bool,
    ) -> (Vec<Vec<Vec<f64>>>, Vec<Vec<f64>>) {
        let hid = h0[0].len();
        let mut hs = Vec::new();
        let mut finals = Vec::new();
        for ((seq, &len), h_init) in xs.iter().zip(lengths).zip(h0) {
            let mut out = vec![vec![0.0; hid]; seq.len()];
            let mut h = h_init.clone();
            let order: Vec<usize> = if reverse {
                (0..len).rev().collect()
            } else {
                (0..len).collect()
            };
            for t in order {
                h = self.step(&seq[t], &h);
                out[t] = h.clone();
            }
            hs.push(out);
            finals.push(h);
        }
        (hs, finals)
    }
}

/// A fixed, hand-written example (H = 2, I = 3) against PyTorch's equations computed in
/// plain f64 loops: both implementations, with and without layer norm, both directions,
/// with padding and a non-zero initial state.
#[test]
fn matches_pytorch_equations_on_a_fixed_example() -> Result<()> {
    let w_ih = vec![
        vec![0.5, -0.3, 0.8],
        vec![-0.2, 0.4, 0.1],
        vec![0.7, 0.6, -0.5],
        vec![-0.9, 0.2, 0.3],
        vec![0.3, -0.8, 0.6],
        vec![0.1, 0.5, -0.7],
    ];
    let w_hh = vec![
        vec![0.4, -0.6],
        vec![0.2, 0.9],
        vec![-0.5, 0.3],
        vec![0.8, -0.1],
        vec![-0.7, 0.5],
        vec![0.6, 0.4],
    ];
    let b_ih = vec![0.1, -0.2, 0.3, -0.4, 0.5, -0.6];
    let b_hh = vec![-0.3, 0.2, 0.1, 0.4, -0.5, 0.7];
    let g_ih = vec![1.1, 0.9, 1.2, 0.8, 1.0, 1.3];
    let g_hh = vec![0.7, 1.4, 0.9, 1.1, 1.2, 0.6];
    let xs = vec![
        vec![
            vec![1.0, -0.5, 0.25],
            vec![0.3, 0.8, -1.0],
            vec![-0.6, 0.1, 0.9],
        ],
        vec![
            vec![-0.2, 0.7, 0.4],
            vec![0.9, -0.9, 0.5],
            vec![0.0, 0.0, 0.0],
        ],
    ];
    let lengths = [3, 2];
    let h0 = vec![vec![0.2, -0.4], vec![-0.1, 0.3]];
    let tensor = |v: Vec<f64>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu);
    let flat2 = |m: &[Vec<f64>]| m.concat();
    for layer_norm in [false, true] {
        let plain = Plain {
            w_ih: w_ih.clone(),
            w_hh: w_hh.clone(),
            b_ih: b_ih.clone(),
            b_hh: b_hh.clone(),
            ln: layer_norm.then(|| (g_ih.clone(), g_hh.clone())),
        };
        let mut values = HashMap::from([
            ("weight_ih".to_string(), tensor(flat2(&w_ih), &[6, 3])?),
            ("weight_hh".to_string(), tensor(flat2(&w_hh), &[6, 2])?),
            ("bias_ih".to_string(), tensor(b_ih.clone(), &[6])?),
            ("bias_hh".to_string(), tensor(b_hh.clone(), &[6])?),
        ]);
        if layer_norm {
            values.insert("ln_ih_weight".into(), tensor(g_ih.clone(), &[6])?);
            values.insert("ln_hh_weight".into(), tensor(g_hh.clone(), &[6])?);
        }
        let vb = VarBuilder::from_tensors(values, DType::F64, &Device::Cpu);
        let gru = Gru::new(3, 2, layer_norm, vb)?;
        let xs_t = tensor(
            xs.iter().map(|s| s.concat()).collect::<Vec<_>>().concat(),
            &[2, 3, 3],
        )?;
        let h0_t = tensor(h0.concat(), &[2, 2])?;
        let mask = mask_of(&lengths, 3);
        for reverse in [false, true] {
            let (want_hs, want_h) = plain.run(&xs, &lengths, &h0, reverse);
            let want_hs = tensor(
                want_hs
                    .iter()
                    .map(|s| s.concat())
                    .collect::<Vec<_>>()
                    .concat(),
                &[2, 3, 2],
            )?;
            let want_h = tensor(want_h.concat(), &[2, 2])?;
            assert!(max_abs(&want_hs) > 0.1, "trivial expected outputs");
            for recurrence in [Recurrence::Auto, Recurrence::StepByStep] {
                let (hs, h) = gru.forward_with(&xs_t, &mask, reverse, Some(&h0_t), recurrence)?;
                let what = format!("layer_norm={layer_norm} reverse={reverse} {recurrence:?}");
                let diff = max_abs_diff(&hs, &want_hs);
                assert!(diff < 1e-12, "{what}: outputs differ by {diff}");
                let diff = max_abs_diff(&h, &want_h);
                assert!(diff < 1e-12, "{what}: final h differs by {diff}");
            }
        }
    }
    Ok(())
}

/// `candle_nn`'s stock GRU (the same PyTorch equations), fed the same random weights.
#[test]
fn fused_forward_matches_candle_stock_gru() -> Result<()> {
    use candle_nn::rnn::{GRUConfig, RNN};
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (b, t, i, h) = (2, 6, 5, 4);
    let mut ours = HashMap::new();
    let mut stock = HashMap::new();
    for (name, shape) in [
        ("weight_ih", vec![3 * h, i]),
        ("weight_hh", vec![3 * h, h]),
        ("bias_ih", vec![3 * h]),
        ("bias_hh", vec![3 * h]),
    ] {
        let w = uniform(&mut rng, &shape, -0.5, 0.5, DType::F32);
        stock.insert(format!("{name}_l0"), w.clone());
        ours.insert(name.to_string(), w);
    }
    let stock_vb = VarBuilder::from_tensors(stock, DType::F32, &Device::Cpu);
    let stock = candle_nn::rnn::gru(i, h, GRUConfig::default(), stock_vb)?;
    let ours = Gru::new(
        i,
        h,
        false,
        VarBuilder::from_tensors(ours, DType::F32, &Device::Cpu),
    )?;
    let xs = uniform(&mut rng, &[b, t, i], -1.0, 1.0, DType::F32);
    let mask = Tensor::ones((b, t), DType::F32, &Device::Cpu)?;
    let (hs, last) = ours.forward(&xs, &mask, false)?;
    let states = stock.seq(&xs)?;
    // candle's GRU concatenates the states along dim 1: [b, t·h].
    let stock_hs = stock.states_to_tensor(&states)?.reshape((b, t, h))?;
    assert!(max_abs(&stock_hs) > 0.05);
    assert!(max_abs_diff(&hs, &stock_hs) < 1e-5);
    let stock_last = states.last().expect("a state per step");
    assert!(max_abs_diff(&last, stock_last.h()) < 1e-5);
    Ok(())
}

/// The decoding step API walks the same recurrence as the whole-sequence forward, through
/// `step`, `step_with(StepByStep)` and `step_projected(input_projection(x))` alike.
#[test]
fn step_equals_one_step_of_forward() -> Result<()> {
    for layer_norm in [false, true] {
        let case = Case::new(layer_norm, DType::F32, 6, (2, 4, I, H), &[4, 4]);
        let values = case.tensors();
        let gru = case.layer(&values)?;
        let xs = &values["xs"];
        let h0 = &values["h0"];
        let (hs, last) = gru.forward_with(xs, &case.mask, false, Some(h0), Recurrence::Auto)?;
        let (mut h_a, mut h_b, mut h_c) = (h0.clone(), h0.clone(), h0.clone());
        for t in 0..4 {
            let x = xs.narrow(1, t, 1)?.squeeze(1)?;
            h_a = gru.step(&x, &h_a)?;
            h_b = gru.step_with(&x, &h_b, Recurrence::StepByStep)?;
            h_c = gru.step_projected(&gru.input_projection(&x)?, &h_c)?;
            let want = hs.narrow(1, t, 1)?.squeeze(1)?;
            for (api, h) in [
                ("step", &h_a),
                ("step_with", &h_b),
                ("step_projected", &h_c),
            ] {
                assert_eq!(h.dims(), [2, H]);
                let diff = max_abs_diff(h, &want);
                assert!(
                    diff < 1e-5,
                    "layer_norm={layer_norm} {api} step {t}: {diff}"
                );
            }
        }
        assert!(max_abs_diff(&h_a, &last) < 1e-5);
    }
    Ok(())
}

/// The fused one-step path against the candle-ops cell, values and gradients (f64).
#[test]
fn fused_step_matches_candle_ops_cell() -> Result<()> {
    for layer_norm in [false, true] {
        let case = Case::small(layer_norm, DType::F64, 8);
        let values = case.tensors();
        let gru = case.layer(&values)?;
        let x = values["xs"].narrow(1, 2, 1)?.squeeze(1)?;
        let [_, w_h] = &case.loss_weights;
        let mut results = Vec::new();
        for recurrence in [Recurrence::Auto, Recurrence::StepByStep] {
            let next = gru.step_with(&x, &values["h0"], recurrence)?;
            let grads = (&next * w_h)?.sum_all()?.backward()?;
            let grad_list: Vec<(String, Tensor)> = case
                .vars
                .iter()
                .filter_map(|(name, var)| {
                    grads
                        .get(var.as_tensor())
                        .map(|g| (name.clone(), g.clone()))
                })
                .collect();
            results.push((next, grad_list));
        }
        let ((fused, gf), (reference, gr)) = (&results[0], &results[1]);
        assert!(
            max_abs_diff(fused, reference) < 1e-12,
            "layer_norm={layer_norm}: h"
        );
        assert_eq!(gf.len(), case.vars.len(), "every input gets a gradient");
        assert_eq!(gf.len(), gr.len());
        assert_gradients_match(gf, gr, 1e-11, true, &format!("layer_norm={layer_norm}"));
    }
    Ok(())
}

/// Run with more threads than rows and with one thread so that both the single-block and
/// the one-row-per-block paths are checked whatever the machine's core count.
#[test]
fn gradients_do_not_depend_on_the_thread_count() -> Result<()> {
    assert_gradients_ignore_thread_count(&Case::small(true, DType::F64, 9))
}

/// Padding in the middle of a row (not only at its end) carries the state over it, in the
/// fused op as in the step-by-step path, values and gradients.
#[test]
fn interior_padding_carries_the_state() -> Result<()> {
    let mut case = Case::small(true, DType::F64, 10);
    case.mask = interior_padding_mask()?;
    for reverse in [false, true] {
        assert_fused_matches_stepwise(&case, reverse)?;
    }
    Ok(())
}

/// Without any tensor that needs a gradient the fused op keeps no intermediates; its
/// results must not change.
#[test]
fn inference_path_matches_training_path() -> Result<()> {
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            let case = Case::small(layer_norm, DType::F32, 11);
            let what = format!("layer_norm={layer_norm} reverse={reverse}");
            assert_inference_matches_training(&case, reverse, &what)?;
        }
    }
    Ok(())
}

/// A batch of empty sequences: no outputs, the initial state unchanged, in both paths.
#[test]
fn empty_sequence_keeps_the_initial_state() -> Result<()> {
    let case = Case::small(true, DType::F32, 12);
    let values = case.tensors();
    let gru = case.layer(&values)?;
    let xs = values["xs"].narrow(1, 0, 0)?;
    let mask = Tensor::ones((B, 0), DType::F32, &Device::Cpu)?;
    let h0 = &values["h0"];
    for recurrence in [Recurrence::Auto, Recurrence::StepByStep] {
        let (hs, h) = gru.forward_with(&xs, &mask, false, Some(h0), recurrence)?;
        assert_eq!(hs.dims(), [B, 0, H], "{recurrence:?}");
        assert_eq!(max_abs_diff(&h, h0), 0.0, "{recurrence:?}");
    }
    Ok(())
}

#[test]
fn bad_shapes_are_clear_errors() -> Result<()> {
    let case = Case::small(false, DType::F32, 7);
    let values = case.tensors();
    let gru = case.layer(&values)?;
    let xs = &values["xs"];
    let wrong_input = Tensor::zeros((B, T, I + 1), DType::F32, &Device::Cpu)?;
    let err = gru
        .forward(&wrong_input, &case.mask, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5 features") && err.contains("expects 4"),
        "{err}"
    );
    let wrong_mask = Tensor::ones((B, T + 1), DType::F32, &Device::Cpu)?;
    let err = gru.forward(xs, &wrong_mask, false).unwrap_err().to_string();
    assert!(err.contains("mask has shape"), "{err}");
    let bad_init = Tensor::zeros((B, H + 1), DType::F32, &Device::Cpu)?;
    let err = gru
        .forward_with(xs, &case.mask, false, Some(&bad_init), Recurrence::Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("initial h"), "{err}");
    Ok(())
}

/// Parameter names and shapes are PyTorch's (plus the layer-norm gains), so that saved
/// weights load, and the initialisation is uniform ±1/sqrt(H) with gains 1.
#[test]
fn parameter_names_shapes_and_init() -> Result<()> {
    let (i, h) = (7, 16);
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let gru = Gru::new(i, h, true, vb)?;
    assert_eq!(
        (gru.input_size(), gru.hidden_size(), gru.layer_norm()),
        (i, h, true)
    );
    let data = varmap.data().lock().expect("varmap");
    let mut names: Vec<(&str, Vec<usize>)> = data
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_tensor().dims().to_vec()))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ("bias_hh", vec![3 * h]),
            ("bias_ih", vec![3 * h]),
            ("ln_hh_weight", vec![3 * h]),
            ("ln_ih_weight", vec![3 * h]),
            ("weight_hh", vec![3 * h, h]),
            ("weight_ih", vec![3 * h, i]),
        ]
    );
    let bound = 1.0 / (h as f64).sqrt();
    for name in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
        let m = max_abs(data[name].as_tensor());
        assert!(m <= bound && m > 0.5 * bound, "{name}: max |w| = {m}");
    }
    for name in ["ln_ih_weight", "ln_hh_weight"] {
        let t = data[name].as_tensor();
        assert_eq!(max_abs_diff(t, &t.ones_like()?), 0.0, "{name}");
    }
    Ok(())
}

/// After `quantize_int8` (search's `--int8`), the layer's outputs are the f32 ones up to
/// the quantization error, and differ from them (the int8 products are the ones computed);
/// the tolerance is argued in the LSTM's twin of this test (measured here: 0.023–0.031).
#[test]
fn int8_products_stay_close_to_f32() -> Result<()> {
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            let case = Case::new(layer_norm, DType::F32, 9, (3, 6, 40, 24), &[6, 4, 1]);
            let values = case.tensors();
            let mut gru = case.layer(&values)?;
            let run = |gru: &Gru| {
                let xs = &values["xs"];
                gru.forward_with(
                    xs,
                    &case.mask,
                    reverse,
                    Some(&values["h0"]),
                    Recurrence::Auto,
                )
            };
            let (hs, _) = run(&gru)?;
            gru.quantize_int8()?;
            let (hs8, _) = run(&gru)?;
            let what = format!("layer_norm={layer_norm} reverse={reverse}");
            let diff = max_abs_diff(&hs, &hs8);
            assert!(diff > 0.0 && diff < 0.1, "{what}: outputs differ by {diff}");
            assert_pads_zero(&hs8, &[6, 4, 1], &what)?;
        }
    }
    Ok(())
}
