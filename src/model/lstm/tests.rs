//! The fused recurrence against the step-by-step candle-ops path, finite differences,
//! candle's stock LSTM, and padding invariance. Sizes are tiny so the suite stays fast.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{Lstm, LstmState, Recurrence};
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
    /// Fixed random weights of the scalar loss (outputs, final h, final c).
    loss_weights: [Tensor; 3],
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
            ("weight_ih", vec![4 * h, i], -0.6, 0.6),
            ("weight_hh", vec![4 * h, h], -0.6, 0.6),
            ("bias", vec![4 * h], -0.5, 0.5),
            ("xs", vec![b, t, i], -1.0, 1.0),
            ("h0", vec![b, h], -0.5, 0.5),
            ("c0", vec![b, h], -0.5, 0.5),
        ];
        if layer_norm {
            shapes.extend([
                ("ln_ih_weight", vec![4 * h], 0.7, 1.3),
                ("ln_hh_weight", vec![4 * h], 0.7, 1.3),
                ("ln_cell_weight", vec![h], 0.7, 1.3),
                ("ln_cell_bias", vec![h], -0.3, 0.3),
            ]);
        }
        let (mut rng, vars) = random_vars(seed, shapes, dtype);
        let mask = mask_of(lengths, t);
        let loss_weights = [
            uniform(&mut rng, &[b, t, h], -1.0, 1.0, dtype),
            uniform(&mut rng, &[b, h], -1.0, 1.0, dtype),
            uniform(&mut rng, &[b, h], -1.0, 1.0, dtype),
        ];
        Self {
            vars,
            mask,
            loss_weights,
            layer_norm,
        }
    }

    fn small(layer_norm: bool, dtype: DType, seed: u64) -> Self {
        Self::new(layer_norm, dtype, seed, (B, T, I, H), &LENGTHS)
    }

    fn get(&self, name: &str) -> Tensor {
        self.tensors()[name].clone()
    }

    /// Runs the layer on `values` (the case's own, or perturbed copies).
    fn run(
        &self,
        values: &HashMap<String, Tensor>,
        reverse: bool,
        recurrence: Recurrence,
    ) -> Result<(Tensor, LstmState)> {
        let xs = &values["xs"];
        let (_, _, i) = xs.dims3()?;
        let h = values["weight_hh"].dim(1)?;
        let vb = VarBuilder::from_tensors(values.clone(), xs.dtype(), &Device::Cpu);
        let lstm = Lstm::new(i, h, self.layer_norm, vb)?;
        let init = LstmState {
            h: values["h0"].clone(),
            c: values["c0"].clone(),
        };
        lstm.forward_with(xs, &self.mask, reverse, Some(&init), recurrence)
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
        let (hs, state) = self.run(values, reverse, recurrence)?;
        Ok((hs, vec![("h", state.h), ("c", state.c)]))
    }

    fn loss(
        &self,
        values: &HashMap<String, Tensor>,
        reverse: bool,
        recurrence: Recurrence,
    ) -> Result<Tensor> {
        let (hs, state) = self.run(values, reverse, recurrence)?;
        let [w_out, w_h, w_c] = &self.loss_weights;
        (hs * w_out)?.sum_all()? + (state.h * w_h)?.sum_all()? + (state.c * w_c)?.sum_all()?
    }
}

#[test]
fn fused_forward_matches_step_by_step() -> Result<()> {
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            let case = Case::small(layer_norm, DType::F32, 1);
            let values = case.tensors();
            let (hs_f, st_f) = case.run(&values, reverse, Recurrence::Auto)?;
            let (hs_r, st_r) = case.run(&values, reverse, Recurrence::StepByStep)?;
            let what = format!("layer_norm={layer_norm} reverse={reverse}");
            // Part of the contract: callers may hand them to ops that need dense tensors.
            for t in [&hs_f, &st_f.h, &st_f.c] {
                assert!(t.is_contiguous(), "{what}: output is a strided view");
            }
            assert!(
                max_abs(&hs_r) > 0.05,
                "{what}: reference outputs are trivial"
            );
            assert!(max_abs_diff(&hs_f, &hs_r) < 1e-5, "{what}: outputs differ");
            assert!(
                max_abs_diff(&st_f.h, &st_r.h) < 1e-5,
                "{what}: final h differs"
            );
            assert!(
                max_abs_diff(&st_f.c, &st_r.c) < 1e-5,
                "{what}: final c differs"
            );
            // Padding positions are exactly zero.
            assert_pads_zero(&hs_f, &LENGTHS, &what)?;
        }
    }
    Ok(())
}

#[test]
fn fused_gradients_match_autograd_through_candle_ops() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let tol = if dtype == DType::F32 { 2e-5 } else { 1e-11 };
        for layer_norm in [false, true] {
            for reverse in [false, true] {
                let case = Case::small(layer_norm, dtype, 2);
                let fused = case.gradients(reverse, Recurrence::Auto)?;
                let reference = case.gradients(reverse, Recurrence::StepByStep)?;
                let what = format!("{dtype:?} layer_norm={layer_norm} reverse={reverse}");
                assert_gradients_match(&fused, &reference, tol, true, &what);
            }
        }
    }
    Ok(())
}

/// Central differences in f64 on a spread of elements of every input.
#[test]
fn fused_gradients_match_finite_differences() -> Result<()> {
    // Up to 7 elements spread over the tensor, always including the last one.
    let picks = |len: usize| {
        (0..7)
            .map(|k| (k * len / 7 + k) % len)
            .chain([len - 1])
            .collect()
    };
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            let case = Case::small(layer_norm, DType::F64, 3);
            let what = format!("layer_norm={layer_norm} reverse={reverse}");
            assert_finite_differences(&case, reverse, picks, false, &what)?;
        }
    }
    Ok(())
}

/// `candle_nn`'s stock LSTM, fed the same random weights (its two biases summed into ours).
#[test]
fn fused_forward_matches_candle_stock_lstm() -> Result<()> {
    use candle_nn::rnn::{LSTMConfig, RNN};
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (b, t, i, h) = (2, 6, 5, 4);
    let mut stock_weights = HashMap::new();
    for (name, shape) in [
        ("weight_ih_l0", vec![4 * h, i]),
        ("weight_hh_l0", vec![4 * h, h]),
        ("bias_ih_l0", vec![4 * h]),
        ("bias_hh_l0", vec![4 * h]),
    ] {
        stock_weights.insert(
            name.to_string(),
            uniform(&mut rng, &shape, -0.5, 0.5, DType::F32),
        );
    }
    let stock_vb = VarBuilder::from_tensors(stock_weights.clone(), DType::F32, &Device::Cpu);
    let stock = candle_nn::rnn::lstm(i, h, LSTMConfig::default(), stock_vb)?;
    let ours_weights = HashMap::from([
        (
            "weight_ih".to_string(),
            stock_weights["weight_ih_l0"].clone(),
        ),
        (
            "weight_hh".to_string(),
            stock_weights["weight_hh_l0"].clone(),
        ),
        (
            "bias".to_string(),
            (&stock_weights["bias_ih_l0"] + &stock_weights["bias_hh_l0"])?,
        ),
    ]);
    let ours = Lstm::new(
        i,
        h,
        false,
        VarBuilder::from_tensors(ours_weights, DType::F32, &Device::Cpu),
    )?;
    let xs = uniform(&mut rng, &[b, t, i], -1.0, 1.0, DType::F32);
    let mask = Tensor::ones((b, t), DType::F32, &Device::Cpu)?;
    let (hs, state) = ours.forward(&xs, &mask, false)?;
    let states = stock.seq(&xs)?;
    let stock_hs = stock.states_to_tensor(&states)?;
    assert!(max_abs(&stock_hs) > 0.05);
    assert!(max_abs_diff(&hs, &stock_hs) < 1e-5);
    let last = states.last().expect("a state per step");
    assert!(max_abs_diff(&state.h, last.h()) < 1e-5);
    assert!(max_abs_diff(&state.c, last.c()) < 1e-5);
    Ok(())
}

/// Each sentence of a padded batch gets exactly the outputs and final state it gets alone.
#[test]
fn padded_batch_equals_each_sentence_alone() -> Result<()> {
    let (b, t, i, h) = (4, 7, 5, 6);
    let lengths = [7, 2, 5, 4];
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            let case = Case::new(layer_norm, DType::F32, 5, (b, t, i, h), &lengths);
            let mut values = case.tensors();
            values.insert("h0".into(), values["h0"].zeros_like()?);
            values.insert("c0".into(), values["c0"].zeros_like()?);
            let vb = VarBuilder::from_tensors(values.clone(), DType::F32, &Device::Cpu);
            let lstm = Lstm::new(i, h, layer_norm, vb)?;
            let what = format!("layer_norm={layer_norm} reverse={reverse}");
            assert_rows_match_alone(&values["xs"], &case.mask, &lengths, &what, |xs, mask| {
                let (hs, state) = lstm.forward(xs, mask, reverse)?;
                Ok((hs, vec![("h", state.h), ("c", state.c)]))
            })?;
        }
    }
    Ok(())
}

/// The decoding step API walks the same recurrence as the whole-sequence forward.
#[test]
fn step_by_step_decoding_matches_forward() -> Result<()> {
    for layer_norm in [false, true] {
        let case = Case::new(layer_norm, DType::F32, 6, (2, 4, I, H), &[4, 4]);
        let values = case.tensors();
        let vb = VarBuilder::from_tensors(values.clone(), DType::F32, &Device::Cpu);
        let lstm = Lstm::new(I, H, layer_norm, vb)?;
        let xs = &values["xs"];
        let (hs, _) = lstm.forward(xs, &case.mask, false)?;
        let mut state = LstmState::zeros(2, H, DType::F32, &Device::Cpu)?;
        for t in 0..4 {
            state = lstm.step(&xs.narrow(1, t, 1)?.squeeze(1)?, &state)?;
            let diff = max_abs_diff(&state.h, &hs.narrow(1, t, 1)?.squeeze(1)?);
            assert!(diff < 1e-5, "layer_norm={layer_norm} step {t}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn bad_shapes_are_clear_errors() -> Result<()> {
    let case = Case::small(false, DType::F32, 7);
    let vb = VarBuilder::from_tensors(case.tensors(), DType::F32, &Device::Cpu);
    let lstm = Lstm::new(I, H, false, vb)?;
    let xs = case.get("xs");
    let wrong_input = Tensor::zeros((B, T, I + 1), DType::F32, &Device::Cpu)?;
    let err = lstm
        .forward(&wrong_input, &case.mask, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5 features") && err.contains("expects 4"),
        "{err}"
    );
    let wrong_mask = Tensor::ones((B, T + 1), DType::F32, &Device::Cpu)?;
    let err = lstm
        .forward(&xs, &wrong_mask, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("mask has shape"), "{err}");
    let bad_init = LstmState::zeros(B, H + 1, DType::F32, &Device::Cpu)?;
    let err = lstm
        .forward_with(&xs, &case.mask, false, Some(&bad_init), Recurrence::Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("initial h"), "{err}");
    Ok(())
}

/// The fused one-step path used for decoding against the candle-ops cell, values and
/// gradients (f64), with and without layer norm.
#[test]
fn fused_step_matches_candle_ops_cell() -> Result<()> {
    for layer_norm in [false, true] {
        let case = Case::small(layer_norm, DType::F64, 8);
        let values = case.tensors();
        let vb = VarBuilder::from_tensors(values.clone(), DType::F64, &Device::Cpu);
        let lstm = Lstm::new(I, H, layer_norm, vb)?;
        let x = values["xs"].narrow(1, 2, 1)?.squeeze(1)?;
        let state = LstmState {
            h: values["h0"].clone(),
            c: values["c0"].clone(),
        };
        let [_, w_h, w_c] = &case.loss_weights;
        let mut results = Vec::new();
        for recurrence in [Recurrence::Auto, Recurrence::StepByStep] {
            let next = lstm.step_with(&x, &state, recurrence)?;
            let loss = ((&next.h * w_h)?.sum_all()? + (&next.c * w_c)?.sum_all()?)?;
            let grads = loss.backward()?;
            let mut grad_list = Vec::new();
            for (name, var) in &case.vars {
                // The step sees only one position of `xs`; the gradient of xs is checked
                // through the narrowed tensor's parent all the same.
                if let Some(g) = grads.get(var.as_tensor()) {
                    grad_list.push((name.clone(), g.clone()));
                }
            }
            results.push((next, grad_list));
        }
        let ((fused, gf), (reference, gr)) = (&results[0], &results[1]);
        assert!(
            max_abs_diff(&fused.h, &reference.h) < 1e-12,
            "layer_norm={layer_norm}: h"
        );
        assert!(
            max_abs_diff(&fused.c, &reference.c) < 1e-12,
            "layer_norm={layer_norm}: c"
        );
        assert_eq!(gf.len(), case.vars.len(), "every input gets a gradient");
        assert_eq!(gf.len(), gr.len());
        assert_gradients_match(gf, gr, 1e-11, false, &format!("layer_norm={layer_norm}"));
    }
    Ok(())
}

/// The batch is split into one block per rayon thread; run with more threads than rows and
/// with one thread so that both the single-block and the one-row-per-block paths are checked
/// whatever the machine's core count.
#[test]
fn gradients_do_not_depend_on_the_thread_count() -> Result<()> {
    assert_gradients_ignore_thread_count(&Case::small(true, DType::F64, 9))
}

/// Padding in the middle of a row (not only at its end) carries the state over it, in the
/// fused op as in the step-by-step path, values and gradients.
#[test]
fn interior_padding_carries_the_state() -> Result<()> {
    let mut case = Case::small(false, DType::F64, 10);
    case.mask = interior_padding_mask()?;
    for reverse in [false, true] {
        assert_fused_matches_stepwise(&case, reverse)?;
    }
    Ok(())
}

/// Without any tensor that needs a gradient (weights loaded for translation) the fused op
/// keeps no intermediates; its results must not change.
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

/// After `quantize_int8` (search's `--int8`), the layer's outputs are the f32 ones up to
/// the quantization error, with and without layer norm, forward and reversed, over padding
/// — and do differ from them, so the int8 products are really the ones computed.
#[test]
fn int8_products_stay_close_to_f32() -> Result<()> {
    let (b, t, i, h) = (3, 6, 40, 24);
    for layer_norm in [false, true] {
        for reverse in [false, true] {
            let case = Case::new(layer_norm, DType::F32, 9, (b, t, i, h), &[6, 4, 1]);
            let values = case.tensors();
            let vb = VarBuilder::from_tensors(values.clone(), DType::F32, &Device::Cpu);
            let mut lstm = Lstm::new(i, h, layer_norm, vb)?;
            let init = LstmState {
                h: values["h0"].clone(),
                c: values["c0"].clone(),
            };
            let xs = &values["xs"];
            let run = |lstm: &Lstm| {
                lstm.forward_with(xs, &case.mask, reverse, Some(&init), Recurrence::Auto)
            };
            let (hs, state) = run(&lstm)?;
            lstm.quantize_int8()?;
            let (hs8, state8) = run(&lstm)?;
            let what = format!("layer_norm={layer_norm} reverse={reverse}");
            // One gate sums 40 + 24 products of weights up to 0.6 and inputs up to 1; a
            // product's error is at most |x|·δw + |w|·δx with δw = 0.6/254 and δx = 1/126,
            // so a gate's is at most ~0.45 and typically √64 · 0.004 ≈ 0.03. Six steps of
            // that, through layer norm's division by the gates' spread, measured
            // 0.014–0.059 on the outputs and 0.017–0.076 on the final cell; a wrong product
            // moves them by O(1). So: different, and within 0.1 (0.15 for the cell).
            let diff = max_abs_diff(&hs, &hs8);
            assert!(diff > 0.0 && diff < 0.1, "{what}: outputs differ by {diff}");
            let diff = max_abs_diff(&state.c, &state8.c);
            assert!(diff < 0.15, "{what}: final cells differ by {diff}");
            assert_pads_zero(&hs8, &[6, 4, 1], &what)?;
        }
    }
    Ok(())
}
