//! The GRU recurrence over a whole sequence as one candle `CustomOp3`, with a hand-written
//! backward through time: the GRU twin of the LSTM's op (`lstm/kernel.rs`, whose reasons
//! for fusing, packing `aux` and splitting the batch apply unchanged). The candle-op
//! plumbing both share is [`crate::model::fused`].
//!
//! * inputs: `xproj [B,T,3H]` (the input projection of every step, computed outside by one
//!   ordinary matmul, not yet normalised), `w_hh [3H,H]` and `aux`, a flat vector holding
//!   the initial state, the biases and the layer-norm gains (`h0 [B,H]`, `b_ih [3H]`,
//!   `b_hh [3H]`, then with layer norm `γ_ih [3H]`, `γ_hh [3H]`).
//! * output `[B, T+1, H]`: rows `0..T` are the hidden states (zero at padding), row `T` the
//!   final `h`. Gradients flowing into any of them are honoured.
//!
//! The batch is split into one contiguous block per rayon thread and each block runs the
//! whole sequence, and its whole backward, on its own (one fork/join per call). Each step's
//! recurrent matmul is a single-threaded `gemm` call; each block's share of the `W_hh`
//! gradient is one matmul over all its steps. Without gradients nothing is kept for
//! backward. The work on one block is in `recurrence.rs` (forward) and `bptt.rs` (backward).

use std::ops::Range;

use candle_core::Result;

use super::bptt::backward_block;
use super::recurrence::forward_block;
use crate::model::fastmath::Real;
use crate::model::fused::{
    batch_blocks, map_blocks, sum_block_shares, take, FusedRecurrence, Recurrent,
};

/// What backward needs from forward, laid out `[B, T, ·]` like the op's inputs so that the
/// rows of one batch block are contiguous. Positions are indexed by time, not by processing
/// order, so a reversed layer uses the same layout.
pub(super) struct Saved<T> {
    /// Gate activations `r, z, n`: `[B,T,3H]`.
    pub(super) act: Vec<T>,
    /// State before each step: `[B,T,H]`.
    pub(super) h_prev: Vec<T>,
    /// The recurrent part of the new gate before the reset, `a_h,n = (LN of) h·W_hnᵀ + b_hn`:
    /// `[B,T,H]` (the reset gate's gradient is `dn · a_h,n`).
    pub(super) hn: Vec<T>,
    /// Layer norm only: the normalised input and recurrent projections `[B,T,2,3H]` and
    /// their reciprocal standard deviations `[B,T,2]`.
    pub(super) hat: Vec<T>,
    pub(super) rstd: Vec<T>,
}

/// Marks [`Recurrent`] as the GRU's.
pub(crate) enum GruCell {}

/// The fused GRU recurrence of one layer over one batch.
pub(crate) type GruRecurrence = Recurrent<GruCell>;

/// Layer-norm gains inside `aux` (after the state and the biases).
#[derive(Clone, Copy)]
pub(super) struct LnParams<'a, T> {
    pub(super) gain_ih: &'a [T],
    pub(super) gain_hh: &'a [T],
}

impl GruRecurrence {
    /// Length of the `aux` input for these sizes.
    pub(crate) fn aux_len(batch: usize, hidden: usize, layer_norm: bool) -> usize {
        batch * hidden + Self::params_len(hidden, layer_norm)
    }

    /// Length of the parameter part of `aux` (biases, then layer-norm gains).
    pub(super) fn params_len(hidden: usize, layer_norm: bool) -> usize {
        if layer_norm {
            12 * hidden
        } else {
            6 * hidden
        }
    }

    pub(super) fn biases<'a, T>(&self, aux: &'a [T]) -> (&'a [T], &'a [T]) {
        let (at, g3) = (self.batch * self.hidden, 3 * self.hidden);
        (&aux[at..at + g3], &aux[at + g3..at + 2 * g3])
    }

    pub(super) fn ln_params<'a, T>(&self, aux: &'a [T]) -> Option<LnParams<'a, T>> {
        let (at, g3) = (self.batch * self.hidden + 6 * self.hidden, 3 * self.hidden);
        self.layer_norm.then(|| LnParams {
            gain_ih: &aux[at..at + g3],
            gain_hh: &aux[at + g3..at + 2 * g3],
        })
    }

    fn run_forward<T: Real>(&self, xproj: &[T], w_hh: &[T], aux: &[T]) -> Vec<T> {
        let (b, t, h) = (self.batch, self.time, self.hidden);
        let ln = self.layer_norm;
        let zeros = |n: usize| vec![T::zero(); n];
        let slots = self.saved_slots();
        let mut out = zeros(b * (t + 1) * h);
        let mut s = Saved {
            act: zeros(b * slots * 3 * h),
            h_prev: zeros(b * slots * h),
            hn: zeros(b * slots * h),
            hat: zeros(if ln { b * slots * 6 * h } else { 0 }),
            rstd: zeros(if ln { b * slots * 2 } else { 0 }),
        };
        let jobs = s.split_blocks(&mut out, batch_blocks(b), (t, slots, h));
        map_blocks(jobs, |job| forward_block(self, job, xproj, w_hh, aux));
        if self.keep_saved {
            self.saved.put(s, Self::WHAT);
        }
        out
    }

    fn run_backward<T: Real>(
        &self,
        s: &Saved<T>,
        grad_out: &[T],
        w_hh: &[T],
        aux: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (b, t, h) = (self.batch, self.time, self.hidden);
        let g3 = 3 * h;
        let ln = self.layer_norm;
        // The input and recurrent parts get different gradients (the reset gate multiplies
        // the recurrent part of `n`), so both are kept, with or without layer norm.
        let mut d_xproj = vec![T::zero(); b * t * g3];
        let mut d_rec = vec![T::zero(); b * t * g3];
        let mut d_h0 = vec![T::zero(); b * h];
        let (mut rest_x, mut rest_r) = (&mut d_xproj[..], &mut d_rec[..]);
        let mut rest_h0 = &mut d_h0[..];
        let jobs: Vec<BwdBlock<T>> = batch_blocks(b)
            .into_iter()
            .map(|rows| {
                let n = rows.len();
                BwdBlock {
                    d_xproj: take(&mut rest_x, n * t * g3),
                    d_rec: take(&mut rest_r, n * t * g3),
                    d_h0: take(&mut rest_h0, n * h),
                    rows,
                }
            })
            .collect();
        let parts = map_blocks(jobs, |job| {
            backward_block(self, job, s, grad_out, w_hh, aux)
        });
        let (d_params, d_w_hh) = sum_block_shares(&parts, Self::params_len(h, ln), g3 * h);
        let mut d_aux = d_h0;
        d_aux.extend_from_slice(&d_params);
        (d_xproj, d_w_hh, d_aux)
    }
}

pub(super) struct FwdBlock<'a, T> {
    pub(super) rows: Range<usize>,
    pub(super) out: &'a mut [T],
    pub(super) act: &'a mut [T],
    pub(super) h_prev: &'a mut [T],
    pub(super) hn: &'a mut [T],
    pub(super) hat: &'a mut [T],
    pub(super) rstd: &'a mut [T],
}

pub(super) struct BwdBlock<'a, T> {
    pub(super) rows: Range<usize>,
    pub(super) d_xproj: &'a mut [T],
    pub(super) d_rec: &'a mut [T],
    pub(super) d_h0: &'a mut [T],
}

impl<T> Saved<T> {
    /// Cuts `out` (`t + 1` rows of `h` per sequence) and every saved buffer (`slots` time
    /// positions per sequence) into the consecutive batch blocks `blocks`.
    fn split_blocks<'a>(
        &'a mut self,
        out: &'a mut [T],
        blocks: Vec<Range<usize>>,
        (t, slots, h): (usize, usize, usize),
    ) -> Vec<FwdBlock<'a, T>> {
        let mut out = out;
        let (mut act, mut h_prev, mut hn) =
            (&mut self.act[..], &mut self.h_prev[..], &mut self.hn[..]);
        let (mut hat, mut rstd) = (&mut self.hat[..], &mut self.rstd[..]);
        blocks
            .into_iter()
            .map(|rows| {
                let n = rows.len();
                FwdBlock {
                    out: take(&mut out, n * (t + 1) * h),
                    act: take(&mut act, n * slots * 3 * h),
                    h_prev: take(&mut h_prev, n * slots * h),
                    hn: take(&mut hn, n * slots * h),
                    hat: take(&mut hat, n * slots * 6 * h),
                    rstd: take(&mut rstd, n * slots * 2),
                    rows,
                }
            })
            .collect()
    }
}

impl FusedRecurrence for GruRecurrence {
    const WHAT: &'static str = "gru recurrence";
    const NAME: &'static str = "gru-recurrence";
    const GATES: usize = 3;
    const STATE_ROWS: usize = 1;

    fn sizes(&self) -> (usize, usize, usize) {
        (self.batch, self.time, self.hidden)
    }

    fn aux_size(&self) -> usize {
        Self::aux_len(self.batch, self.hidden, self.layer_norm)
    }

    fn forward<T: Real>(&self, xproj: &[T], w_hh: &[T], aux: &[T]) -> Vec<T> {
        self.run_forward(xproj, w_hh, aux)
    }

    fn backward<T: Real>(
        &self,
        grad_out: &[T],
        w_hh: &[T],
        aux: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        self.saved.with(Self::WHAT, |s: &Saved<T>| {
            self.run_backward(s, grad_out, w_hh, aux)
        })
    }
}
