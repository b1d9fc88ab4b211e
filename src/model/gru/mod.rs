//! One GRU layer over a whole (padded) sequence.
//!
//! The GRU of Cho et al. (2014) exactly as `torch.nn.GRU` computes it: gate order reset,
//! update, new (`r, z, n`), and the reset gate applied to the recurrent matmul's result
//! ("linear before reset", as in cuDNN), so weights are interchangeable with PyTorch's
//! (`weight_ih [3H,I]`, `weight_hh [3H,H]`, `bias_ih [3H]`, `bias_hh [3H]`):
//! ```text
//! r  = σ(x·W_irᵀ + b_ir + h·W_hrᵀ + b_hr)
//! z  = σ(x·W_izᵀ + b_iz + h·W_hzᵀ + b_hz)
//! n  = tanh(x·W_inᵀ + b_in + r ⊙ (h·W_hnᵀ + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//! There are two biases, not one as in the LSTM, because `b_hn` sits inside `r ⊙ (…)` and
//! cannot be merged into `b_in`.
//!
//! On the CPU in f32/f64 the recurrence runs as one fused op with a hand-written backward
//! through time: autograd sees one node per layer call. `kernel.rs` is the op (its inputs,
//! saved state, batch blocks and threads), `recurrence.rs` the forward through time,
//! `bptt.rs` the backward through time; the `gemm` call, the batch split and the row-wise
//! layer norm are the LSTM's ([`crate::model::lstm`]). Elsewhere (other devices and dtypes,
//! and as the reference the tests compare against, [`Recurrence::StepByStep`]) it runs step
//! by step with ordinary candle ops.
//!
//! API, the same shape as [`crate::model::lstm::Lstm`]'s: [`Gru::forward`] (zero initial
//! state), [`Gru::forward_with`] (initial state, choice of implementation), [`Gru::step`] /
//! [`Gru::step_with`] (one decoding step; on the CPU the fused op with `T = 1`),
//! [`Gru::input_projection`] / [`Gru::step_projected`]. The state is just `h: [batch,
//! hidden]`. Gradients flow into the inputs, all parameters, the initial state, and from the
//! hidden states as well as from the final `h`.
//!
//! # Layer normalisation (Ba et al. 2016, as RNMT+ uses it for its LSTMs)
//! With `layer_norm` the input and recurrent projections are normalised separately, each
//! over all 3H units, before the biases are added:
//! ```text
//! a_x = LN(x·W_ihᵀ; γ_ih) + b_ih        a_h = LN(h·W_hhᵀ; γ_hh) + b_hh
//! r   = σ(a_x,r + a_h,r)
//! z   = σ(a_x,z + a_h,z)
//! n   = tanh(a_x,n + r ⊙ a_h,n)
//! h'  = (1 − z) ⊙ n + z ⊙ h
//! ```
//! where `LN(v; γ) = γ ⊙ (v - mean v) / sqrt(var v + 1e-5)`. Their own shifts would only
//! duplicate the biases, so they have none, and a GRU has no cell to normalise. Parameter
//! names: `ln_ih_weight [3H]`, `ln_hh_weight [3H]` (gains, init 1).

mod bptt;
mod kernel;
mod recurrence;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use candle_core::{Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

pub use super::lstm::Recurrence;

use super::fused;
use super::lstm::{
    masked_update, normalised_plus_bias, one_step_mask, recurrent_projection, stack_steps,
    step_order, xs_times_w_ih,
};
use kernel::GruRecurrence;

/// Gains of the layer-normalised projections.
#[derive(Clone, Debug)]
struct LayerNormParams {
    ih: Tensor,
    hh: Tensor,
}

#[derive(Clone, Debug)]
pub struct Gru {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    layer_norm: Option<LayerNormParams>,
    input_size: usize,
    hidden_size: usize,
    /// Search with `--int8`: `W_ih` and `W_hh` quantized ([`Gru::quantize_int8`]).
    int8: Option<Arc<fused::Int8Products>>,
}

impl Gru {
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
        let g3 = 3 * hidden_size;
        let weight_ih = vb.get_with_hints((g3, input_size), "weight_ih", init)?;
        let weight_hh = vb.get_with_hints((g3, hidden_size), "weight_hh", init)?;
        let bias_ih = vb.get_with_hints(g3, "bias_ih", init)?;
        let bias_hh = vb.get_with_hints(g3, "bias_hh", init)?;
        let layer_norm = if layer_norm {
            let ones = Init::Const(1.0);
            Some(LayerNormParams {
                ih: vb.get_with_hints(g3, "ln_ih_weight", ones)?,
                hh: vb.get_with_hints(g3, "ln_hh_weight", ones)?,
            })
        } else {
            None
        };
        Ok(Self {
            weight_ih,
            weight_hh,
            bias_ih,
            bias_hh,
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
    /// the final `h: [batch, hidden]`, both contiguous; gradients flow through both.
    pub fn forward(&self, xs: &Tensor, mask: &Tensor, reverse: bool) -> Result<(Tensor, Tensor)> {
        self.forward_with(xs, mask, reverse, None, Recurrence::Auto)
    }

    /// [`Gru::forward`] from a given initial state `h: [batch, hidden]` (e.g. a decoder
    /// started from the encoder's final state) and with a choice of implementation.
    pub fn forward_with(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        reverse: bool,
        init: Option<&Tensor>,
        recurrence: Recurrence,
    ) -> Result<(Tensor, Tensor)> {
        let (batch, time, input) = xs.dims3()?;
        if input != self.input_size {
            candle_core::bail!(
                "gru: input has {input} features per step, the layer expects {}",
                self.input_size
            );
        }
        if mask.dims() != [batch, time] {
            candle_core::bail!(
                "gru: mask has shape {:?}, expected [batch {batch}, time {time}]",
                mask.dims()
            );
        }
        let init = match init {
            Some(h) => h.clone(),
            None => Tensor::zeros((batch, self.hidden_size), xs.dtype(), xs.device())?,
        };
        if init.dims() != [batch, self.hidden_size] {
            candle_core::bail!(
                "gru: initial h has shape {:?}, expected [{batch}, {}]",
                init.dims(),
                self.hidden_size
            );
        }
        let xproj = fused::input_product(self.int8.as_deref(), xs, &self.weight_ih)?;
        self.forward_projected(&xproj, mask, reverse, &init, recurrence)
    }

    /// The recurrence over input projections `xproj = xs·W_ihᵀ: [batch, time, 3·hidden]`
    /// (no layer norm, no bias: both are applied here).
    fn forward_projected(
        &self,
        xproj: &Tensor,
        mask: &Tensor,
        reverse: bool,
        init: &Tensor,
        recurrence: Recurrence,
    ) -> Result<(Tensor, Tensor)> {
        if fused::runs_fused(xproj, recurrence)? {
            self.fused_recurrence(xproj, mask, reverse, init)
        } else {
            let xproj = self.finish_input_projection(xproj)?;
            self.stepwise_recurrence(&xproj, mask, reverse, init.clone())
        }
    }

    /// One step for decoding: `x: [batch, input]`, `h: [batch, hidden]`; returns the new `h`.
    pub fn step(&self, x: &Tensor, h: &Tensor) -> Result<Tensor> {
        self.step_with(x, h, Recurrence::Auto)
    }

    /// [`Gru::step`] with a choice of implementation. On the CPU the fused op is a one-step
    /// sequence: a few large kernels instead of a dozen small candle ops (and one autograd
    /// node when a decoder trains step by step).
    pub fn step_with(&self, x: &Tensor, h: &Tensor, recurrence: Recurrence) -> Result<Tensor> {
        let mask = one_step_mask(x)?; // also checks that `x` is [batch, input]
        if recurrence == Recurrence::StepByStep {
            let xproj = self.finish_input_projection(&xs_times_w_ih(x, &self.weight_ih)?)?;
            return self.cell(&xproj, h);
        }
        let (_, next) = self.forward_with(&x.unsqueeze(1)?, &mask, false, Some(h), recurrence)?;
        Ok(next)
    }

    /// [`Gru::step`] from the input's projection `x·W_ihᵀ: [batch, 3·hidden]`, e.g. a row
    /// of [`Gru::input_projection`] of every embedding.
    pub fn step_projected(&self, xproj: &Tensor, h: &Tensor) -> Result<Tensor> {
        let mask = one_step_mask(xproj)?;
        let (_, next) =
            self.forward_projected(&xproj.unsqueeze(1)?, &mask, false, h, Recurrence::Auto)?;
        Ok(next)
    }

    /// `x·W_ihᵀ` for `x: [rows, input]`: the part of a step that depends on the input only.
    pub fn input_projection(&self, x: &Tensor) -> Result<Tensor> {
        xs_times_w_ih(x, &self.weight_ih)
    }

    /// Layer norm (if asked) and `b_ih` on `x·W_ihᵀ`, for the step-by-step path: the fused
    /// op does both itself.
    fn finish_input_projection(&self, proj: &Tensor) -> Result<Tensor> {
        let gain = self.layer_norm.as_ref().map(|ln| &ln.ih);
        normalised_plus_bias(proj, gain, &self.bias_ih)
    }

    fn fused_recurrence(
        &self,
        xproj: &Tensor,
        mask: &Tensor,
        reverse: bool,
        init: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (batch, time, _) = xproj.dims3()?;
        let mask = fused::mask_flags(mask)?;
        let mut aux = vec![
            init.flatten_all()?,
            self.bias_ih.clone(),
            self.bias_hh.clone(),
        ];
        if let Some(ln) = &self.layer_norm {
            aux.extend([ln.ih.clone(), ln.hh.clone()]);
        }
        let out = fused::apply(xproj, &self.weight_hh, &aux, |needs_grad| {
            let sizes = (batch, time, self.hidden_size);
            let ln = self.layer_norm.is_some();
            let int8_hh = fused::Int8Products::recurrent(self.int8.as_deref(), needs_grad);
            GruRecurrence::new(sizes, reverse, ln, mask, needs_grad).with_int8_hh(int8_hh)
        })?;
        let last = fused::output_row(&out, time)?;
        Ok((out.narrow(1, 0, time)?.contiguous()?, last))
    }

    /// The recurrence with ordinary candle ops, one step at a time.
    fn stepwise_recurrence(
        &self,
        xproj: &Tensor,
        mask: &Tensor,
        reverse: bool,
        mut h: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (_, time, _) = xproj.dims3()?;
        let mask = mask.to_dtype(xproj.dtype())?;
        let mut outputs = vec![None; time];
        for t in step_order(time, reverse) {
            let m = mask.narrow(1, t, 1)?; // [batch, 1]
            let next = self.cell(&xproj.narrow(1, t, 1)?.squeeze(1)?, &h)?;
            outputs[t] = Some(next.broadcast_mul(&m)?);
            h = masked_update(&next, &h, &m)?;
        }
        Ok((stack_steps(outputs, xproj, self.hidden_size)?, h))
    }

    /// The cell given the finished input part `a_x = LN(x·W_ihᵀ) + b_ih: [batch, 3*hidden]`.
    fn cell(&self, a_x: &Tensor, h: &Tensor) -> Result<Tensor> {
        let gain = self.layer_norm.as_ref().map(|ln| &ln.hh);
        let a_h = recurrent_projection(h, &self.weight_hh, gain)?.broadcast_add(&self.bias_hh)?;
        let x = a_x.chunk(3, D::Minus1)?;
        let r_h = a_h.chunk(3, D::Minus1)?;
        let r = candle_nn::ops::sigmoid(&(&x[0] + &r_h[0])?)?;
        let z = candle_nn::ops::sigmoid(&(&x[1] + &r_h[1])?)?;
        let n = (&x[2] + (r * &r_h[2])?)?.tanh()?;
        // (1 - z)·n + z·h
        &n + (z * (h - &n)?)?
    }
}
