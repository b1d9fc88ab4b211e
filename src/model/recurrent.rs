//! The recurrent layer of every stack (encoder, decoder, language model), by the config's
//! `cell`: the LSTM (Hochreiter & Schmidhuber 1997, [`super::lstm`]) or the GRU of Cho et
//! al. 2014 in PyTorch's and cuDNN's `linear_before_reset` form ([`super::gru`]). Both are
//! fused over the whole sequence with a hand-written backward on the CPU, take the same
//! mask, layer-norm and direction options, and step the same way in search.
//!
//! The state of a layer is an [`LstmState`] for both cells, so decoder states, beam
//! reordering and the language model's state need no second type: a GRU has no cell
//! state, and its `c` is its `h` (the same tensor; it is never read).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Cell, ModelConfig};
use super::gru::Gru;
use super::lstm::{Lstm, LstmState};

#[derive(Clone, Debug)]
pub enum RecurrentLayer {
    Lstm(Lstm),
    Gru(Gru),
}

impl RecurrentLayer {
    /// The layer's variables are under `vb`: `weight_ih`, `weight_hh` and `bias` (LSTM) or
    /// `bias_ih` and `bias_hh` (GRU), and the layer-norm gains.
    pub fn new(
        cell: Cell,
        input_size: usize,
        hidden_size: usize,
        layer_norm: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(match cell {
            Cell::Lstm => Self::Lstm(Lstm::new(input_size, hidden_size, layer_norm, vb)?),
            Cell::Gru => Self::Gru(Gru::new(input_size, hidden_size, layer_norm, vb)?),
        })
    }

    /// The `decoder_layers` layers of a decoder-side stack (`layers.{l}` under `vb`), layer
    /// `l` reading `input_size(l)` features, with whether each adds its input to its output.
    pub fn stack(
        cfg: &ModelConfig,
        input_size: impl Fn(usize) -> usize,
        vb: &VarBuilder,
    ) -> Result<(Vec<Self>, Vec<bool>)> {
        let layers = (0..cfg.decoder_layers)
            .map(|l| {
                let vb = vb.pp(format!("layers.{l}"));
                Self::new(cfg.cell, input_size(l), cfg.hidden_size, cfg.layer_norm, vb)
            })
            .collect::<Result<Vec<_>>>()?;
        let residual = (0..cfg.decoder_layers)
            .map(|l| cfg.has_residual(l))
            .collect();
        Ok((layers, residual))
    }

    /// The layer over `xs: [batch, time, input]` from a zero state: the hidden states
    /// `[batch, time, hidden]` (zero at padding) and the final state (see
    /// [`Lstm::forward`] for the mask and `reverse`).
    pub fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        reverse: bool,
    ) -> Result<(Tensor, LstmState)> {
        match self {
            Self::Lstm(l) => l.forward(xs, mask, reverse),
            Self::Gru(g) => {
                let (hs, h) = g.forward(xs, mask, reverse)?;
                Ok((hs, gru_state(h)))
            }
        }
    }

    /// Search computes this layer's products in int8 from now on ([`Lstm::quantize_int8`],
    /// [`Gru::quantize_int8`]).
    pub fn quantize_int8(&mut self) -> Result<()> {
        match self {
            Self::Lstm(l) => l.quantize_int8(),
            Self::Gru(g) => g.quantize_int8(),
        }
    }

    /// One decoding step, `x: [batch, input]`.
    pub fn step(&self, x: &Tensor, state: &LstmState) -> Result<LstmState> {
        match self {
            Self::Lstm(l) => l.step(x, state),
            Self::Gru(g) => Ok(gru_state(g.step(x, &state.h)?)),
        }
    }

    /// One step from the input's projection (a row of [`RecurrentLayer::input_projection`]).
    pub fn step_projected(&self, xproj: &Tensor, state: &LstmState) -> Result<LstmState> {
        match self {
            Self::Lstm(l) => l.step_projected(xproj, state),
            Self::Gru(g) => Ok(gru_state(g.step_projected(xproj, &state.h)?)),
        }
    }

    /// `x·W_ihᵀ` for `x: [rows, input]`: the part of a step that depends on the input only.
    pub fn input_projection(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Lstm(l) => l.input_projection(x),
            Self::Gru(g) => g.input_projection(x),
        }
    }
}

fn gru_state(h: Tensor) -> LstmState {
    LstmState { c: h.clone(), h }
}
