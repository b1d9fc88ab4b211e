//! The LSTM recurrence over a whole sequence as one candle `CustomOp3`, with a hand-written
//! backward through time.
//!
//! Autograd through per-step candle ops records ~20 small nodes per step; their backward is
//! what made candle's LSTM 3x slower than PyTorch's. Here autograd sees a single node:
//!
//! * inputs: `xproj [B,T,4H]` (the input projection of every step, computed outside by one
//!   ordinary matmul, not yet normalised), `w_hh [4H,H]` and `aux`, a flat vector holding
//!   the initial state, the bias and the layer-norm parameters (`h0 [B,H]`, `c0 [B,H]`,
//!   `bias [4H]`, then with layer norm `γ_ih [4H]`, `γ_hh [4H]`, `γ_cell [H]`, `β_cell [H]`).
//!   Packing them keeps the op at three inputs while every one of them still gets its
//!   gradient. The bias is added in here because candle's backward of a broadcast add (a
//!   strided sum over batch and time) cost more than the whole gate computation; the layer
//!   norm of the input part likewise: as a dozen candle ops over `[B,T,4H]` it cost as much
//!   as the recurrence.
//! * output `[B, T+2, H]`: rows `0..T` are the hidden states (zero at padding), row `T` the
//!   final `h`, row `T+1` the final `c`. Gradients flowing into any of them are honoured.
//!
//! Batch rows never interact in the recurrence, so the batch is split into one contiguous
//! block per rayon thread and each block runs the whole sequence, and its whole backward,
//! on its own: one fork/join per call instead of one per step (rayon spin-waits badly on a
//! shared 2-core machine). Each step's recurrent matmul is a single-threaded `gemm` call
//! into preallocated buffers; each block's share of the `W_hh` gradient is one matmul over
//! all its steps. Without gradients (inference) nothing is kept for backward.
//!
//! This file is the recurrence's side of the op: its sizes, the saved state, and the split
//! into batch blocks; the candle-op plumbing it shares with the GRU (dtype dispatch, size
//! checks, batch blocks and threads) is [`crate::model::fused`]. The work on one block is in
//! `recurrence.rs` (forward) and `bptt.rs` (backward through time), each compiled for SSE2
//! and AVX2+FMA by `#[multiversion]`.

use std::ops::Range;

use candle_core::Result;

use super::bptt::backward_block;
use super::recurrence::forward_block;
use crate::model::fastmath::Real;
use crate::model::fused::{
    batch_blocks, map_blocks, sum_block_shares, take, FusedRecurrence, Recurrent,
};

/// Added to the variance in every layer norm (PyTorch's default).
pub const LN_EPS: f64 = 1e-5;

/// What backward needs from forward, laid out `[B, T, ·]` like the op's inputs so that the
/// rows of one batch block are contiguous. Positions are indexed by time, not by processing
/// order, so a reversed layer uses the same layout.
pub(super) struct Saved<T> {
    /// Gate activations `i, f, g, o`: `[B,T,4H]`.
    pub(super) act: Vec<T>,
    /// State before each step: `[B,T,H]` each.
    pub(super) h_prev: Vec<T>,
    pub(super) c_prev: Vec<T>,
    /// `tanh` of the (normalised) new cell: `[B,T,H]`.
    pub(super) tanh_c: Vec<T>,
    /// Layer norm only: the normalised input and recurrent projections `[B,T,2,4H]` and
    /// their reciprocal standard deviations `[B,T,2]`; the normalised cell `[B,T,H]` and its
    /// reciprocal standard deviation `[B,T]`.
    pub(super) gates_hat: Vec<T>,
    pub(super) gates_rstd: Vec<T>,
    pub(super) c_hat: Vec<T>,
    pub(super) c_rstd: Vec<T>,
}

/// Marks [`Recurrent`] as the LSTM's.
pub(crate) enum LstmCell {}

/// The fused LSTM recurrence of one layer over one batch.
pub(crate) type LstmRecurrence = Recurrent<LstmCell>;

/// Layer-norm parameters inside `aux` (after the state and the bias).
#[derive(Clone, Copy)]
pub(super) struct LnParams<'a, T> {
    pub(super) gain_ih: &'a [T],
    pub(super) gain_hh: &'a [T],
    pub(super) gain_cell: &'a [T],
    pub(super) bias_cell: &'a [T],
}

impl LstmRecurrence {
    /// Length of the `aux` input for these sizes.
    pub(crate) fn aux_len(batch: usize, hidden: usize, layer_norm: bool) -> usize {
        2 * batch * hidden + Self::params_len(hidden, layer_norm)
    }

    /// Length of the parameter part of `aux` (bias, then layer-norm parameters).
    pub(super) fn params_len(hidden: usize, layer_norm: bool) -> usize {
        if layer_norm {
            14 * hidden
        } else {
            4 * hidden
        }
    }

    pub(super) fn bias<'a, T>(&self, aux: &'a [T]) -> &'a [T] {
        let at = 2 * self.batch * self.hidden;
        &aux[at..at + 4 * self.hidden]
    }

    pub(super) fn ln_params<'a, T>(&self, aux: &'a [T]) -> Option<LnParams<'a, T>> {
        let h = self.hidden;
        let at = 2 * self.batch * h + 4 * h;
        self.layer_norm.then(|| LnParams {
            gain_ih: &aux[at..at + 4 * h],
            gain_hh: &aux[at + 4 * h..at + 8 * h],
            gain_cell: &aux[at + 8 * h..at + 9 * h],
            bias_cell: &aux[at + 9 * h..at + 10 * h],
        })
    }

    /// Contiguous batch blocks, one per rayon thread.
    fn blocks(&self) -> Vec<Range<usize>> {
        batch_blocks(self.batch)
    }

    fn run_forward<T: Real>(&self, xproj: &[T], w_hh: &[T], aux: &[T]) -> Vec<T> {
        let (b, t, h) = (self.batch, self.time, self.hidden);
        let ln = self.layer_norm;
        let zeros = |n: usize| vec![T::zero(); n];
        let slots = self.saved_slots();
        let mut out = zeros(b * (t + 2) * h);
        let mut s = Saved {
            act: zeros(b * slots * 4 * h),
            h_prev: zeros(b * slots * h),
            c_prev: zeros(b * slots * h),
            tanh_c: zeros(b * slots * h),
            gates_hat: zeros(if ln { b * slots * 8 * h } else { 0 }),
            gates_rstd: zeros(if ln { b * slots * 2 } else { 0 }),
            c_hat: zeros(if ln { b * slots * h } else { 0 }),
            c_rstd: zeros(if ln { b * slots } else { 0 }),
        };
        let jobs = s.split_blocks(&mut out, self.blocks(), (t, slots, h));
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
        let g4 = 4 * h;
        let ln = self.layer_norm;
        let mut d_xproj = vec![T::zero(); b * t * g4];
        // With layer norm the recurrent matmul's gradient differs from the gates' one.
        let mut d_rec = vec![T::zero(); if ln { b * t * g4 } else { 0 }];
        let mut d_h0 = vec![T::zero(); b * h];
        let mut d_c0 = vec![T::zero(); b * h];
        let (mut rest_x, mut rest_r) = (&mut d_xproj[..], &mut d_rec[..]);
        let (mut rest_h0, mut rest_c0) = (&mut d_h0[..], &mut d_c0[..]);
        let jobs: Vec<BwdBlock<T>> = self
            .blocks()
            .into_iter()
            .map(|rows| {
                let n = rows.len();
                BwdBlock {
                    d_xproj: take(&mut rest_x, n * t * g4),
                    d_rec: take(&mut rest_r, n * t * g4),
                    d_h0: take(&mut rest_h0, n * h),
                    d_c0: take(&mut rest_c0, n * h),
                    rows,
                }
            })
            .collect();
        let parts = map_blocks(jobs, |job| {
            backward_block(self, job, s, grad_out, w_hh, aux)
        });
        let (d_params, d_w_hh) = sum_block_shares(&parts, Self::params_len(h, ln), g4 * h);
        let mut d_aux = d_h0;
        d_aux.extend_from_slice(&d_c0);
        d_aux.extend_from_slice(&d_params);
        (d_xproj, d_w_hh, d_aux)
    }
}

pub(super) struct FwdBlock<'a, T> {
    pub(super) rows: Range<usize>,
    pub(super) out: &'a mut [T],
    pub(super) act: &'a mut [T],
    pub(super) h_prev: &'a mut [T],
    pub(super) c_prev: &'a mut [T],
    pub(super) tanh_c: &'a mut [T],
    pub(super) gates_hat: &'a mut [T],
    pub(super) gates_rstd: &'a mut [T],
    pub(super) c_hat: &'a mut [T],
    pub(super) c_rstd: &'a mut [T],
}

pub(super) struct BwdBlock<'a, T> {
    pub(super) rows: Range<usize>,
    pub(super) d_xproj: &'a mut [T],
    pub(super) d_rec: &'a mut [T],
    pub(super) d_h0: &'a mut [T],
    pub(super) d_c0: &'a mut [T],
}

impl<T> Saved<T> {
    /// Cuts `out` (`t + 2` rows of `h` per sequence) and every saved buffer (`slots` time
    /// positions per sequence) into the consecutive batch blocks `blocks`.
    fn split_blocks<'a>(
        &'a mut self,
        out: &'a mut [T],
        blocks: Vec<Range<usize>>,
        (t, slots, h): (usize, usize, usize),
    ) -> Vec<FwdBlock<'a, T>> {
        let mut out = out;
        let mut act = &mut self.act[..];
        let (mut h_prev, mut c_prev) = (&mut self.h_prev[..], &mut self.c_prev[..]);
        let mut tanh_c = &mut self.tanh_c[..];
        let (mut gates_hat, mut gates_rstd) = (&mut self.gates_hat[..], &mut self.gates_rstd[..]);
        let (mut c_hat, mut c_rstd) = (&mut self.c_hat[..], &mut self.c_rstd[..]);
        blocks
            .into_iter()
            .map(|rows| {
                let n = rows.len();
                FwdBlock {
                    out: take(&mut out, n * (t + 2) * h),
                    act: take(&mut act, n * slots * 4 * h),
                    h_prev: take(&mut h_prev, n * slots * h),
                    c_prev: take(&mut c_prev, n * slots * h),
                    tanh_c: take(&mut tanh_c, n * slots * h),
                    gates_hat: take(&mut gates_hat, n * slots * 8 * h),
                    gates_rstd: take(&mut gates_rstd, n * slots * 2),
                    c_hat: take(&mut c_hat, n * slots * h),
                    c_rstd: take(&mut c_rstd, n * slots),
                    rows,
                }
            })
            .collect()
    }
}

impl FusedRecurrence for LstmRecurrence {
    const WHAT: &'static str = "lstm recurrence";
    const NAME: &'static str = "lstm-recurrence";
    const GATES: usize = 4;
    const STATE_ROWS: usize = 2;

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
