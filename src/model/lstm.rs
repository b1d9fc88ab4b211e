//! One LSTM layer over a whole (padded) sequence.
//!
//! Gate order is PyTorch's (input, forget, cell, output) so weights are interchangeable
//! with `torch.nn.LSTM` (`weight_ih`, `weight_hh`, one combined `bias`).
//!
//! This first version runs the recurrence with ordinary candle ops step by step; it is
//! the reference that the fused implementation must match.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// The recurrent state of one layer for a batch: `h` and `c` are `[batch, hidden]`.
#[derive(Clone, Debug)]
pub struct LstmState {
    pub h: Tensor,
    pub c: Tensor,
}

impl LstmState {
    pub fn zeros(
        batch: usize,
        hidden: usize,
        dtype: DType,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let h = Tensor::zeros((batch, hidden), dtype, device)?;
        Ok(Self { c: h.clone(), h })
    }
}

#[derive(Clone, Debug)]
pub struct Lstm {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias: Tensor,
    hidden_size: usize,
}

impl Lstm {
    /// `layer_norm` asks for the layer-normalised cell of RNMT+ (not in this version yet).
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        layer_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        if layer_norm {
            candle_core::bail!("layer-normalised LSTM cells are not supported yet");
        }
        let bound = 1.0 / (hidden_size as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight_ih = vb.get_with_hints((4 * hidden_size, input_size), "weight_ih", init)?;
        let weight_hh = vb.get_with_hints((4 * hidden_size, hidden_size), "weight_hh", init)?;
        let bias = vb.get_with_hints(4 * hidden_size, "bias", init)?;
        Ok(Self {
            weight_ih,
            weight_hh,
            bias,
            hidden_size,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Runs the layer over `xs: [batch, time, input]` from a zero state.
    ///
    /// `mask: [batch, time]` (f32, 1 for real tokens, 0 for padding) keeps the state
    /// unchanged over padding, so the final state of each sentence is the one after its
    /// last real token and, with `reverse`, the backward pass starts at that token.
    /// Returns the hidden states `[batch, time, hidden]` (zero at padded positions) and
    /// the final state.
    pub fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        reverse: bool,
    ) -> Result<(Tensor, LstmState)> {
        let (batch, time, _) = xs.dims3()?;
        // The input projection of every step in one matmul.
        let xproj = xs
            .broadcast_matmul(&self.weight_ih.t()?)?
            .broadcast_add(&self.bias)?;
        let mut state = LstmState::zeros(batch, self.hidden_size, xs.dtype(), xs.device())?;
        let mut outputs = vec![None; time];
        let steps: Vec<usize> = if reverse {
            (0..time).rev().collect()
        } else {
            (0..time).collect()
        };
        for t in steps {
            let m = mask.narrow(1, t, 1)?; // [batch, 1]
            let next = self.cell(&xproj.narrow(1, t, 1)?.squeeze(1)?, &state)?;
            let h = masked_update(&next.h, &state.h, &m)?;
            let c = masked_update(&next.c, &state.c, &m)?;
            outputs[t] = Some(next.h.broadcast_mul(&m)?);
            state = LstmState { h, c };
        }
        let outputs: Vec<Tensor> = outputs
            .into_iter()
            .map(|o| o.expect("every step ran"))
            .collect();
        Ok((Tensor::stack(&outputs, 1)?, state))
    }

    /// One step for decoding: `x: [batch, input]`.
    pub fn step(&self, x: &Tensor, state: &LstmState) -> Result<LstmState> {
        let xproj = self.input_projection(x)?;
        self.cell(&xproj, state)
    }

    fn input_projection(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight_ih.t()?)?.broadcast_add(&self.bias)
    }

    /// The cell given the input projection `xproj: [batch, 4*hidden]`.
    fn cell(&self, xproj: &Tensor, state: &LstmState) -> Result<LstmState> {
        let gates = (xproj + state.h.matmul(&self.weight_hh.t()?)?)?;
        let chunks = gates.chunk(4, D::Minus1)?;
        let i = candle_nn::ops::sigmoid(&chunks[0])?;
        let f = candle_nn::ops::sigmoid(&chunks[1])?;
        let g = chunks[2].tanh()?;
        let o = candle_nn::ops::sigmoid(&chunks[3])?;
        let c = ((f * &state.c)? + (i * g)?)?;
        let h = (o * c.tanh()?)?;
        Ok(LstmState { h, c })
    }
}

/// `m * new + (1 - m) * old` with `m: [batch, 1]`.
fn masked_update(new: &Tensor, old: &Tensor, m: &Tensor) -> Result<Tensor> {
    let keep = m.affine(-1.0, 1.0)?;
    new.broadcast_mul(m)? + old.broadcast_mul(&keep)?
}
