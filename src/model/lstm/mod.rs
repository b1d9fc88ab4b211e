//! One LSTM layer over a whole (padded) sequence.
//!
//! Gate order is PyTorch's (input, forget, cell, output) so weights are interchangeable
//! with `torch.nn.LSTM` (`weight_ih`, `weight_hh`, one combined `bias`).
//!
//! On the CPU in f32/f64 the recurrence runs as one fused op with a hand-written backward
//! through time: autograd sees one node per layer call. `kernel.rs` is the op (its inputs,
//! saved state, batch blocks and threads), `recurrence.rs` the forward through time,
//! `bptt.rs` the backward through time, `matmul.rs` the `gemm` call both use. Elsewhere (other
//! devices and dtypes, and as the reference the tests compare against,
//! [`Recurrence::StepByStep`]) it runs step by step with ordinary candle ops.
//!
//! API: [`Lstm::forward`] (zero initial state), [`Lstm::forward_with`] (initial state,
//! choice of implementation), [`Lstm::step`] / [`Lstm::step_with`] (one decoding step; on
//! the CPU the fused op with `T = 1`). Gradients flow into the inputs, all parameters, the
//! initial state, and from the hidden states as well as from the final `h` and `c`.
//!
//! # Layer normalisation (Ba et al. 2016, as used by RNMT+)
//! With `layer_norm` the cell computes
//! ```text
//! gates = LN(x·W_ihᵀ; γ_ih) + LN(h·W_hhᵀ; γ_hh) + bias      (each LN over all 4H units)
//! c'    = f ⊙ c + i ⊙ g
//! h'    = o ⊙ tanh(LN(c'; γ_cell) + β_cell)
//! ```
//! where `LN(z; γ) = γ ⊙ (z - mean z) / sqrt(var z + 1e-5)`. The input and recurrent parts
//! are normalised separately, as in the paper; their own shifts would only duplicate `bias`,
//! so they have none. The carried cell state `c'` is the un-normalised one. Parameter
//! names: `ln_ih_weight [4H]`, `ln_hh_weight [4H]`, `ln_cell_weight [H]` (gains, init 1),
//! `ln_cell_bias [H]` (init 0).

mod bptt;
mod kernel;
mod matmul;
mod recurrence;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::fused;
use kernel::{LstmRecurrence, LN_EPS};

/// Pieces of the fused op that the GRU layer ([`crate::model::gru`]) shares: the `gemm`
/// call, row-wise layer norm and its backward (the op's plumbing is [`crate::model::fused`]).
pub(crate) mod shared {
    pub(crate) use super::bptt::normalise_backward;
    pub(crate) use super::matmul::{matmul, matmul_on_threads};
    pub(crate) use super::recurrence::normalise as normalise_row;
}

/// The product the fused ops use (`dst = lhs·rhs` on slices with strides, through gemm), for
/// the benchmarks.
pub mod product {
    pub use super::matmul::matmul_on_threads;
}

/// The recurrent state of one layer for a batch: `h` and `c` are `[batch, hidden]`.
#[derive(Clone, Debug)]
pub struct LstmState {
    pub h: Tensor,
    pub c: Tensor,
}

impl LstmState {
    pub fn zeros(batch: usize, hidden: usize, dtype: DType, device: &Device) -> Result<Self> {
        let h = Tensor::zeros((batch, hidden), dtype, device)?;
        Ok(Self { c: h.clone(), h })
    }

    /// Rows `rows` (u32 indices) of the state: reorders/expands/shrinks the batch.
    /// A GRU's state holds its `h` as `c` too (see `model::recurrent`): selected once.
    pub fn select(&self, rows: &Tensor) -> Result<Self> {
        let h = self.h.index_select(rows, 0)?;
        let c = if self.c.id() == self.h.id() {
            h.clone()
        } else {
            self.c.index_select(rows, 0)?
        };
        Ok(Self { h, c })
    }
}

/// Gains and shifts of the layer-normalised cell.
#[derive(Clone, Debug)]
struct LayerNormParams {
    ih: Tensor,
    hh: Tensor,
    cell_weight: Tensor,
    cell_bias: Tensor,
}

#[derive(Clone, Debug)]
pub struct Lstm {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor,
    layer_norm: Option<LayerNormParams>,
    input_size: usize,
    hidden_size: usize,
    /// Search with `--int8`: `W_ih` and `W_hh` quantized ([`Lstm::quantize_int8`]).
    int8: Option<Arc<fused::Int8Products>>,
}

/// Which implementation of the recurrence [`Lstm::forward_with`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recurrence {
    /// The fused op on CPU for f32/f64, the step-by-step path otherwise.
    Auto,
    /// Ordinary candle ops step by step (any device, any float dtype).
    StepByStep,
}

impl Lstm {
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        layer_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let bound = 1.0 / (hidden_size as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight_ih = vb.get_with_hints((4 * hidden_size, input_size), "weight_ih", init)?;
        let weight_hh = vb.get_with_hints((4 * hidden_size, hidden_size), "weight_hh", init)?;
        let bias = vb.get_with_hints(4 * hidden_size, "bias", init)?;
        let layer_norm = if layer_norm {
            let ones = Init::Const(1.0);
            Some(LayerNormParams {
                ih: vb.get_with_hints(4 * hidden_size, "ln_ih_weight", ones)?,
                hh: vb.get_with_hints(4 * hidden_size, "ln_hh_weight", ones)?,
                cell_weight: vb.get_with_hints(hidden_size, "ln_cell_weight", ones)?,
                cell_bias: vb.get_with_hints(hidden_size, "ln_cell_bias", Init::Const(0.0))?,
            })
        } else {
            None
        };
        Ok(Self {
            weight_ih,
            weight_hh,
            bias,
            layer_norm,
            input_size,
            hidden_size,
            int8: None,
        })
    }

    /// Search computes `x·W_ihᵀ` and `h·W_hhᵀ` in int8 from now on
    /// ([`fused::Int8Products`]); the CPU only, and the weights must not change afterwards.
    pub fn quantize_int8(&mut self) -> Result<()> {
        let products = fused::Int8Products::quantize(&self.weight_ih, &self.weight_hh)?;
        self.int8 = Some(Arc::new(products));
        Ok(())
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn input_size(&self) -> usize {
        self.input_size
    }

    pub fn layer_norm(&self) -> bool {
        self.layer_norm.is_some()
    }

    /// Runs the layer over `xs: [batch, time, input]` from a zero state.
    ///
    /// `mask: [batch, time]` (1 for real tokens, 0 for padding) keeps the state unchanged
    /// over padding, so the final state of each sentence is the one after its last real
    /// token and, with `reverse`, the backward pass starts at that token.
    /// Returns the hidden states `[batch, time, hidden]` (zero at padded positions) and
    /// the final state, all contiguous; gradients flow through both.
    pub fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        reverse: bool,
    ) -> Result<(Tensor, LstmState)> {
        self.forward_with(xs, mask, reverse, None, Recurrence::Auto)
    }

    /// [`Lstm::forward`] from a given initial state (e.g. a decoder started from the
    /// encoder's final state) and with a choice of implementation.
    pub fn forward_with(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        reverse: bool,
        init: Option<&LstmState>,
        recurrence: Recurrence,
    ) -> Result<(Tensor, LstmState)> {
        let (batch, time, input) = xs.dims3()?;
        if input != self.input_size {
            candle_core::bail!(
                "lstm: input has {input} features per step, the layer expects {}",
                self.input_size
            );
        }
        if mask.dims() != [batch, time] {
            candle_core::bail!(
                "lstm: mask has shape {:?}, expected [batch {batch}, time {time}]",
                mask.dims()
            );
        }
        let init = match init {
            Some(s) => s.clone(),
            None => LstmState::zeros(batch, self.hidden_size, xs.dtype(), xs.device())?,
        };
        for (name, t) in [("h", &init.h), ("c", &init.c)] {
            if t.dims() != [batch, self.hidden_size] {
                candle_core::bail!(
                    "lstm: initial {name} has shape {:?}, expected [{batch}, {}]",
                    t.dims(),
                    self.hidden_size
                );
            }
        }
        let xproj = fused::input_product(self.int8.as_deref(), xs, &self.weight_ih)?;
        self.forward_projected(&xproj, mask, reverse, &init, recurrence)
    }

    /// The recurrence over input projections `xproj = xs·W_ihᵀ: [batch, time, 4·hidden]`
    /// (no bias: it is added here).
    fn forward_projected(
        &self,
        xproj: &Tensor,
        mask: &Tensor,
        reverse: bool,
        init: &LstmState,
        recurrence: Recurrence,
    ) -> Result<(Tensor, LstmState)> {
        if fused::runs_fused(xproj, recurrence)? {
            self.fused_recurrence(xproj, mask, reverse, init)
        } else {
            let xproj = self.finish_input_projection(xproj)?;
            self.stepwise_recurrence(&xproj, mask, reverse, init.clone())
        }
    }

    /// One step for decoding: `x: [batch, input]`.
    pub fn step(&self, x: &Tensor, state: &LstmState) -> Result<LstmState> {
        self.step_with(x, state, Recurrence::Auto)
    }

    /// [`Lstm::step`] with a choice of implementation. On the CPU the fused op is a
    /// one-step sequence: a few large kernels instead of ~15 small candle ops (and one
    /// autograd node when a decoder with input feeding trains step by step).
    pub fn step_with(
        &self,
        x: &Tensor,
        state: &LstmState,
        recurrence: Recurrence,
    ) -> Result<LstmState> {
        let mask = one_step_mask(x)?; // also checks that `x` is [batch, input]
        if recurrence == Recurrence::StepByStep {
            let xproj = self.finish_input_projection(&xs_times_w_ih(x, &self.weight_ih)?)?;
            return self.cell(&xproj, state);
        }
        let (_, next) =
            self.forward_with(&x.unsqueeze(1)?, &mask, false, Some(state), recurrence)?;
        Ok(next)
    }

    /// [`Lstm::step`] from the input's projection `x·W_ihᵀ: [batch, 4·hidden]`, e.g. a row
    /// of [`Lstm::input_projection`] of every embedding.
    pub fn step_projected(&self, xproj: &Tensor, state: &LstmState) -> Result<LstmState> {
        let mask = one_step_mask(xproj)?;
        let (_, next) =
            self.forward_projected(&xproj.unsqueeze(1)?, &mask, false, state, Recurrence::Auto)?;
        Ok(next)
    }

    /// `x·W_ihᵀ` for `x: [rows, input]`: the part of a step that depends on the input only.
    pub fn input_projection(&self, x: &Tensor) -> Result<Tensor> {
        xs_times_w_ih(x, &self.weight_ih)
    }

    /// Layer norm (if asked) and bias on `x·W_ihᵀ`, for the step-by-step path: the fused op
    /// does both itself.
    fn finish_input_projection(&self, proj: &Tensor) -> Result<Tensor> {
        let gain = self.layer_norm.as_ref().map(|ln| &ln.ih);
        normalised_plus_bias(proj, gain, &self.bias)
    }

    fn fused_recurrence(
        &self,
        xproj: &Tensor,
        mask: &Tensor,
        reverse: bool,
        init: &LstmState,
    ) -> Result<(Tensor, LstmState)> {
        let (batch, time, _) = xproj.dims3()?;
        let mask = fused::mask_flags(mask)?;
        let mut aux = vec![
            init.h.flatten_all()?,
            init.c.flatten_all()?,
            self.bias.clone(),
        ];
        if let Some(ln) = &self.layer_norm {
            aux.extend([
                ln.ih.clone(),
                ln.hh.clone(),
                ln.cell_weight.clone(),
                ln.cell_bias.clone(),
            ]);
        }
        let out = fused::apply(xproj, &self.weight_hh, &aux, |needs_grad| {
            let sizes = (batch, time, self.hidden_size);
            let ln = self.layer_norm.is_some();
            let int8_hh = fused::Int8Products::recurrent(self.int8.as_deref(), needs_grad);
            LstmRecurrence::new(sizes, reverse, ln, mask, needs_grad).with_int8_hh(int8_hh)
        })?;
        let state = LstmState {
            h: fused::output_row(&out, time)?,
            c: fused::output_row(&out, time + 1)?,
        };
        Ok((out.narrow(1, 0, time)?.contiguous()?, state))
    }

    /// The recurrence with ordinary candle ops, one step at a time.
    fn stepwise_recurrence(
        &self,
        xproj: &Tensor,
        mask: &Tensor,
        reverse: bool,
        mut state: LstmState,
    ) -> Result<(Tensor, LstmState)> {
        let (_, time, _) = xproj.dims3()?;
        let mask = mask.to_dtype(xproj.dtype())?;
        let mut outputs = vec![None; time];
        for t in step_order(time, reverse) {
            let m = mask.narrow(1, t, 1)?; // [batch, 1]
            let next = self.cell(&xproj.narrow(1, t, 1)?.squeeze(1)?, &state)?;
            let h = masked_update(&next.h, &state.h, &m)?;
            let c = masked_update(&next.c, &state.c, &m)?;
            outputs[t] = Some(next.h.broadcast_mul(&m)?);
            state = LstmState { h, c };
        }
        Ok((stack_steps(outputs, xproj, self.hidden_size)?, state))
    }

    /// The cell given the input projection `xproj: [batch, 4*hidden]`.
    fn cell(&self, xproj: &Tensor, state: &LstmState) -> Result<LstmState> {
        let gain = self.layer_norm.as_ref().map(|ln| &ln.hh);
        let rec = recurrent_projection(&state.h, &self.weight_hh, gain)?;
        let gates = (xproj + rec)?;
        let chunks = gates.chunk(4, D::Minus1)?;
        let i = candle_nn::ops::sigmoid(&chunks[0])?;
        let f = candle_nn::ops::sigmoid(&chunks[1])?;
        let g = chunks[2].tanh()?;
        let o = candle_nn::ops::sigmoid(&chunks[3])?;
        let c = ((f * &state.c)? + (i * g)?)?;
        let c_out = match &self.layer_norm {
            Some(ln) => normalise(&c)?
                .broadcast_mul(&ln.cell_weight)?
                .broadcast_add(&ln.cell_bias)?,
            None => c.clone(),
        };
        let h = (o * c_out.tanh()?)?;
        Ok(LstmState { h, c })
    }
}

/// `x·W_ihᵀ` for every position at once, `x: [.., input]`. One 2-D matmul: `broadcast_matmul`
/// would broadcast W_ih over the batch, and its backward would then build a [batch, 4H, I]
/// gradient and sum it.
pub(crate) fn xs_times_w_ih(x: &Tensor, weight_ih: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let input = dims.pop().unwrap_or(0);
    dims.push(weight_ih.dim(0)?);
    let rows = x.reshape(((), input))?;
    let bf16 = super::bf16_matmul::bf16_products()
        && rows.device().is_cpu()
        && rows.dtype() == candle_core::DType::F32
        && weight_ih.dtype() == candle_core::DType::F32;
    match bf16 {
        true => super::bf16_matmul::xs_times_w_t(&rows.contiguous()?, &weight_ih.contiguous()?)?,
        false => rows.matmul(&weight_ih.t()?)?,
    }
    .reshape(dims)
}

/// `(z - mean) / sqrt(var + eps)` over the last dimension, with differentiable candle ops.
pub(crate) fn normalise(z: &Tensor) -> Result<Tensor> {
    let centred = z.broadcast_sub(&z.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + LN_EPS)?.sqrt()?)
}

/// `LN(proj; gain)` (plain `proj` without a gain) plus `bias`, over the last dimension.
pub(crate) fn normalised_plus_bias(
    proj: &Tensor,
    gain: Option<&Tensor>,
    bias: &Tensor,
) -> Result<Tensor> {
    let proj = match gain {
        Some(gain) => normalise(proj)?.broadcast_mul(gain)?,
        None => proj.clone(),
    };
    proj.broadcast_add(bias)
}

/// `h·W_hhᵀ` for `h: [batch, hidden]`, layer-normalised with `gain` if given.
pub(crate) fn recurrent_projection(
    h: &Tensor,
    weight_hh: &Tensor,
    gain: Option<&Tensor>,
) -> Result<Tensor> {
    let rec = h.matmul(&weight_hh.t()?)?;
    match gain {
        Some(gain) => normalise(&rec)?.broadcast_mul(gain),
        None => Ok(rec),
    }
}

/// The time positions `0..time` in processing order (last first with `reverse`).
pub(crate) fn step_order(time: usize, reverse: bool) -> Vec<usize> {
    if reverse {
        (0..time).rev().collect()
    } else {
        (0..time).collect()
    }
}

/// The step-by-step path's outputs, one `[batch, hidden]` per position, stacked to
/// `[batch, time, hidden]`; `[batch, 0, hidden]` like `xproj`'s when there are none.
pub(crate) fn stack_steps(
    outputs: Vec<Option<Tensor>>,
    xproj: &Tensor,
    hidden: usize,
) -> Result<Tensor> {
    let outputs: Vec<Tensor> = outputs.into_iter().flatten().collect();
    if outputs.is_empty() {
        Tensor::zeros((xproj.dim(0)?, 0, hidden), xproj.dtype(), xproj.device())
    } else {
        Tensor::stack(&outputs, 1)
    }
}

/// The mask of one decoding step for `x: [batch, features]` (an error for any other rank):
/// every row a real token, `[batch, 1]`.
pub(crate) fn one_step_mask(x: &Tensor) -> Result<Tensor> {
    let (batch, _) = x.dims2()?;
    Tensor::ones((batch, 1), DType::F32, x.device())
}

/// `m * new + (1 - m) * old` with `m: [batch, 1]`.
pub(crate) fn masked_update(new: &Tensor, old: &Tensor, m: &Tensor) -> Result<Tensor> {
    let keep = m.affine(-1.0, 1.0)?;
    new.broadcast_mul(m)? + old.broadcast_mul(&keep)?
}
