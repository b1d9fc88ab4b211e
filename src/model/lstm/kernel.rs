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

use std::ops::Range;
use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use gemm::Parallelism;
use rayon::prelude::*;

use crate::model::fastmath::{has_avx2_fma, Real};

/// Added to the variance in every layer norm (PyTorch's default).
pub const LN_EPS: f64 = 1e-5;

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`; each operand is (data, row stride, column stride),
/// `dst` is row-major with row stride `dst_rs`. Bounds are checked here so that the one
/// unsafe call below can trust them.
fn matmul<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    (lhs, lhs_rs, lhs_cs): (&[T], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[T], usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        last(m, n, dst_rs, 1) < dst.len(),
        "matmul: dst out of bounds"
    );
    if k > 0 {
        assert!(
            last(m, k, lhs_rs, lhs_cs) < lhs.len(),
            "matmul: lhs out of bounds"
        );
        assert!(
            last(k, n, rhs_rs, rhs_cs) < rhs.len(),
            "matmul: rhs out of bounds"
        );
    }
    // SAFETY: every index the call touches was bounds-checked above, and `dst` is borrowed
    // mutably so it cannot alias `lhs` or `rhs`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            // Single-threaded: parallelism comes from splitting the batch into blocks.
            Parallelism::None,
        )
    }
}

/// What backward needs from forward, laid out `[B, T, ·]` like the op's inputs so that the
/// rows of one batch block are contiguous. Positions are indexed by time, not by processing
/// order, so a reversed layer uses the same layout.
struct Saved<T> {
    /// Gate activations `i, f, g, o`: `[B,T,4H]`.
    act: Vec<T>,
    /// State before each step: `[B,T,H]` each.
    h_prev: Vec<T>,
    c_prev: Vec<T>,
    /// `tanh` of the (normalised) new cell: `[B,T,H]`.
    tanh_c: Vec<T>,
    /// Layer norm only: the normalised input and recurrent projections `[B,T,2,4H]` and
    /// their reciprocal standard deviations `[B,T,2]`; the normalised cell `[B,T,H]` and its
    /// reciprocal standard deviation `[B,T]`.
    gates_hat: Vec<T>,
    gates_rstd: Vec<T>,
    c_hat: Vec<T>,
    c_rstd: Vec<T>,
}

enum SavedAny {
    F32(Saved<f32>),
    F64(Saved<f64>),
}

trait Store: Real {
    fn wrap(saved: Saved<Self>) -> SavedAny;
    fn unwrap(saved: &SavedAny) -> Option<&Saved<Self>>;
}

impl Store for f32 {
    fn wrap(saved: Saved<Self>) -> SavedAny {
        SavedAny::F32(saved)
    }
    fn unwrap(saved: &SavedAny) -> Option<&Saved<Self>> {
        match saved {
            SavedAny::F32(s) => Some(s),
            SavedAny::F64(_) => None,
        }
    }
}

impl Store for f64 {
    fn wrap(saved: Saved<Self>) -> SavedAny {
        SavedAny::F64(saved)
    }
    fn unwrap(saved: &SavedAny) -> Option<&Saved<Self>> {
        match saved {
            SavedAny::F64(s) => Some(s),
            SavedAny::F32(_) => None,
        }
    }
}

/// The fused recurrence of one layer over one batch.
pub struct LstmRecurrence {
    batch: usize,
    time: usize,
    hidden: usize,
    reverse: bool,
    layer_norm: bool,
    /// `[B,T]`, true at real tokens. Padding leaves the state unchanged and outputs zero.
    mask: Vec<bool>,
    /// Forward keeps its intermediates only when a gradient may be asked for.
    keep_saved: bool,
    saved: Mutex<Option<SavedAny>>,
}

/// Layer-norm parameters inside `aux` (after the state and the bias).
#[derive(Clone, Copy)]
struct LnParams<'a, T> {
    gain_ih: &'a [T],
    gain_hh: &'a [T],
    gain_cell: &'a [T],
    bias_cell: &'a [T],
}

impl LstmRecurrence {
    pub fn new(
        (batch, time, hidden): (usize, usize, usize),
        reverse: bool,
        layer_norm: bool,
        mask: Vec<bool>,
        keep_saved: bool,
    ) -> Self {
        debug_assert_eq!(mask.len(), batch * time);
        Self {
            batch,
            time,
            hidden,
            reverse,
            layer_norm,
            mask,
            keep_saved,
            saved: Mutex::new(None),
        }
    }

    /// Length of the `aux` input for these sizes.
    pub fn aux_len(batch: usize, hidden: usize, layer_norm: bool) -> usize {
        2 * batch * hidden + Self::params_len(hidden, layer_norm)
    }

    /// Length of the parameter part of `aux` (bias, then layer-norm parameters).
    fn params_len(hidden: usize, layer_norm: bool) -> usize {
        if layer_norm {
            14 * hidden
        } else {
            4 * hidden
        }
    }

    /// Time positions the saved buffers hold per sequence: all of them when backward will
    /// need them, else one reused slot (inference skips storing what only backward reads).
    fn saved_slots(&self) -> usize {
        if self.keep_saved {
            self.time
        } else {
            1
        }
    }

    fn time_at(&self, step: usize) -> usize {
        if self.reverse {
            self.time - 1 - step
        } else {
            step
        }
    }

    fn bias<'a, T>(&self, aux: &'a [T]) -> &'a [T] {
        let at = 2 * self.batch * self.hidden;
        &aux[at..at + 4 * self.hidden]
    }

    fn ln_params<'a, T>(&self, aux: &'a [T]) -> Option<LnParams<'a, T>> {
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
        let n = rayon::current_num_threads().clamp(1, self.batch.max(1));
        let per = self.batch.div_ceil(n).max(1);
        (0..self.batch)
            .step_by(per)
            .map(|b| b..(b + per).min(self.batch))
            .collect()
    }

    fn check_sizes<T>(&self, xproj: &[T], w_hh: &[T], aux: &[T]) -> Result<()> {
        let (b, t, h) = (self.batch, self.time, self.hidden);
        if xproj.len() != b * t * 4 * h
            || w_hh.len() != 4 * h * h
            || aux.len() != Self::aux_len(b, h, self.layer_norm)
        {
            candle_core::bail!(
                "lstm recurrence: inputs of {}, {} and {} elements do not fit batch {b}, time {t}, hidden {h}",
                xproj.len(),
                w_hh.len(),
                aux.len()
            );
        }
        Ok(())
    }

    fn forward<T: Store>(&self, xproj: &[T], w_hh: &[T], aux: &[T]) -> Result<Vec<T>> {
        self.check_sizes(xproj, w_hh, aux)?;
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
        let run = |job: FwdBlock<T>| self.forward_block_dispatch(job, xproj, w_hh, aux);
        if jobs.len() == 1 {
            jobs.into_iter().for_each(run);
        } else {
            jobs.into_par_iter().for_each(run);
        }
        if self.keep_saved {
            *self.saved.lock().expect("lstm saved state poisoned") = Some(T::wrap(s));
        }
        Ok(out)
    }

    #[inline(always)]
    fn forward_block<T: Real>(&self, job: FwdBlock<T>, xproj: &[T], w_hh: &[T], aux: &[T]) {
        let (tl, h) = (self.time, self.hidden);
        let g4 = 4 * h;
        let rows = job.rows.clone();
        let nb = rows.len();
        let bh = self.batch * h;
        let mut hs = aux[rows.start * h..rows.end * h].to_vec();
        let mut cs = aux[bh + rows.start * h..bh + rows.end * h].to_vec();
        let mut rec = vec![T::zero(); nb * g4];
        let ln = self.ln_params(aux);
        let bias = self.bias(aux);
        let slots = self.saved_slots();
        for step in 0..tl {
            let t = self.time_at(step);
            // rec = h · W_hhᵀ for the whole block.
            matmul((nb, g4, h), &mut rec, g4, (&hs, h, 1), (w_hh, 1, h));
            for i in 0..nb {
                let b = rows.start + i;
                let bt = i * slots + if self.keep_saved { t } else { 0 }; // row in saved buffers
                let hrow = &mut hs[i * h..(i + 1) * h];
                let crow = &mut cs[i * h..(i + 1) * h];
                job.h_prev[bt * h..(bt + 1) * h].copy_from_slice(hrow);
                job.c_prev[bt * h..(bt + 1) * h].copy_from_slice(crow);
                let out = &mut job.out[(i * (tl + 2) + t) * h..][..h];
                if !self.mask[b * tl + t] {
                    continue; // state carried over, output stays zero
                }
                let act = &mut job.act[bt * g4..(bt + 1) * g4];
                let xp = &xproj[(b * tl + t) * g4..][..g4];
                let r = &rec[i * g4..(i + 1) * g4];
                match ln {
                    None => {
                        for (((a, &x), &r), &bias) in act.iter_mut().zip(xp).zip(r).zip(bias) {
                            *a = x + bias + r;
                        }
                    }
                    Some(p) => {
                        let hat = &mut job.gates_hat[2 * bt * g4..2 * (bt + 1) * g4];
                        let (x_hat, r_hat) = hat.split_at_mut(g4);
                        job.gates_rstd[2 * bt] = normalise(xp, x_hat);
                        job.gates_rstd[2 * bt + 1] = normalise(r, r_hat);
                        for (j, a) in act.iter_mut().enumerate() {
                            *a = bias[j] + p.gain_ih[j] * x_hat[j] + p.gain_hh[j] * r_hat[j];
                        }
                    }
                }
                let tanh_c = &mut job.tanh_c[bt * h..(bt + 1) * h];
                cell_forward(act, crow);
                if let Some(p) = ln {
                    let c_hat = &mut job.c_hat[bt * h..(bt + 1) * h];
                    job.c_rstd[bt] = normalise(crow, c_hat);
                    for (((tc, &n), &gain), &bias) in tanh_c
                        .iter_mut()
                        .zip(&*c_hat)
                        .zip(p.gain_cell)
                        .zip(p.bias_cell)
                    {
                        *tc = (gain * n + bias).tanh_();
                    }
                } else {
                    for (tc, &c) in tanh_c.iter_mut().zip(&*crow) {
                        *tc = c.tanh_();
                    }
                }
                for ((hv, &o), &tc) in hrow.iter_mut().zip(&act[3 * h..]).zip(&*tanh_c) {
                    *hv = o * tc;
                }
                out.copy_from_slice(hrow);
            }
        }
        for i in 0..nb {
            let base = i * (tl + 2) * h;
            job.out[base + tl * h..base + (tl + 1) * h].copy_from_slice(&hs[i * h..(i + 1) * h]);
            job.out[base + (tl + 1) * h..base + (tl + 2) * h]
                .copy_from_slice(&cs[i * h..(i + 1) * h]);
        }
    }

    /// Returns the gradients of `xproj`, `w_hh` and `aux` given that of the output.
    fn backward<T: Store>(
        &self,
        grad_out: &[T],
        w_hh: &[T],
        aux: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let guard = self.saved.lock().expect("lstm saved state poisoned");
        let Some(s) = guard.as_ref().and_then(T::unwrap) else {
            candle_core::bail!("lstm recurrence: backward without the forward's saved state")
        };
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
        let run = |job: BwdBlock<T>| self.backward_block_dispatch(job, s, grad_out, w_hh, aux);
        let parts: Vec<(Vec<T>, Vec<T>)> = if jobs.len() == 1 {
            jobs.into_iter().map(run).collect()
        } else {
            jobs.into_par_iter().map(run).collect()
        };
        let mut d_w_hh = vec![T::zero(); g4 * h];
        let mut d_params = vec![T::zero(); Self::params_len(h, ln)];
        for (part_params, part_w) in &parts {
            for (d, &p) in d_params.iter_mut().zip(part_params) {
                *d += p;
            }
            for (d, &p) in d_w_hh.iter_mut().zip(part_w) {
                *d += p;
            }
        }
        let mut d_aux = d_h0;
        d_aux.extend_from_slice(&d_c0);
        d_aux.extend_from_slice(&d_params);
        Ok((d_xproj, d_w_hh, d_aux))
    }

    /// Backward through time for one batch block; returns this block's share of the
    /// parameter gradients in `aux`'s layout (bias, then γ_ih, γ_hh, γ_cell, β_cell) and of
    /// the gradient of `W_hh`. Each block takes its own share of `W_hh`'s gradient (one
    /// matmul over all its steps) so the whole backward stays a single fork/join.
    #[inline(always)]
    fn backward_block<T: Real>(
        &self,
        job: BwdBlock<T>,
        s: &Saved<T>,
        grad_out: &[T],
        w_hh: &[T],
        aux: &[T],
    ) -> (Vec<T>, Vec<T>) {
        let (tl, h) = (self.time, self.hidden);
        let g4 = 4 * h;
        let rows = job.rows.clone();
        let nb = rows.len();
        let ln = self.ln_params(aux);
        let one = T::one();
        // Gradients w.r.t. the state after the current step start from the final state's.
        let mut dh = vec![T::zero(); nb * h];
        let mut dc = vec![T::zero(); nb * h];
        for i in 0..nb {
            let base = (rows.start + i) * (tl + 2) * h;
            dh[i * h..(i + 1) * h].copy_from_slice(&grad_out[base + tl * h..base + (tl + 1) * h]);
            dc[i * h..(i + 1) * h]
                .copy_from_slice(&grad_out[base + (tl + 1) * h..base + (tl + 2) * h]);
        }
        // This block's share of the gradients of bias, γ_hh, γ_cell, β_cell (aux's layout).
        let mut d_params = vec![T::zero(); Self::params_len(h, ln.is_some())];
        let mut d_pre = vec![T::zero(); h]; // gradient w.r.t. the (normalised) cell before tanh
        let mut d_hprev = vec![T::zero(); nb * h];
        for step in (0..tl).rev() {
            let t = self.time_at(step);
            for i in 0..nb {
                let b = rows.start + i;
                if !self.mask[b * tl + t] {
                    continue; // padding: state gradients pass through unchanged
                }
                let bt = b * tl + t; // row in the saved buffers
                let lt = i * tl + t; // row in this block's output buffers
                let act = &s.act[bt * g4..(bt + 1) * g4];
                let (gi, rest) = act.split_at(h);
                let (gf, rest) = rest.split_at(h);
                let (gg, go) = rest.split_at(h);
                let tanh_c = &s.tanh_c[bt * h..(bt + 1) * h];
                let c_prev = &s.c_prev[bt * h..(bt + 1) * h];
                let gout = &grad_out[(b * (tl + 2) + t) * h..][..h];
                let dhrow = &dh[i * h..(i + 1) * h];
                let d_gates = &mut job.d_xproj[lt * g4..(lt + 1) * g4];
                let (d_i, rest) = d_gates.split_at_mut(h);
                let (d_f, rest) = rest.split_at_mut(h);
                let (d_g, d_o) = rest.split_at_mut(h);
                for j in 0..h {
                    let dh_total = dhrow[j] + gout[j];
                    let (o, tc) = (go[j], tanh_c[j]);
                    d_o[j] = dh_total * tc * o * (one - o);
                    d_pre[j] = dh_total * o * (one - tc * tc);
                }
                if let Some(p) = ln {
                    let c_hat = &s.c_hat[bt * h..(bt + 1) * h];
                    let (_, d_cell) = d_params.split_at_mut(12 * h);
                    let (d_gain, d_bias) = d_cell.split_at_mut(h);
                    for j in 0..h {
                        d_gain[j] += d_pre[j] * c_hat[j];
                        d_bias[j] += d_pre[j];
                        d_pre[j] *= p.gain_cell[j];
                    }
                    normalise_backward(&mut d_pre, c_hat, s.c_rstd[bt]);
                }
                let dcrow = &mut dc[i * h..(i + 1) * h];
                for j in 0..h {
                    let d_c = dcrow[j] + d_pre[j];
                    let (ig, fg, gg) = (gi[j], gf[j], gg[j]);
                    d_i[j] = d_c * gg * ig * (one - ig);
                    d_f[j] = d_c * c_prev[j] * fg * (one - fg);
                    d_g[j] = d_c * ig * (one - gg * gg);
                    dcrow[j] = d_c * fg;
                }
                let d_gates = &job.d_xproj[lt * g4..(lt + 1) * g4];
                for (d_b, &d_a) in d_params[..g4].iter_mut().zip(d_gates) {
                    *d_b += d_a;
                }
                if let Some(p) = ln {
                    let hat = &s.gates_hat[2 * bt * g4..2 * (bt + 1) * g4];
                    let (x_hat, r_hat) = hat.split_at(g4);
                    let (d_gain_ih, rest) = d_params[g4..].split_at_mut(g4);
                    let d_gain_hh = &mut rest[..g4];
                    let d_r = &mut job.d_rec[lt * g4..(lt + 1) * g4];
                    let d_x = &mut job.d_xproj[lt * g4..(lt + 1) * g4];
                    for j in 0..g4 {
                        let d_a = d_x[j];
                        d_gain_hh[j] += d_a * r_hat[j];
                        d_r[j] = d_a * p.gain_hh[j];
                        d_gain_ih[j] += d_a * x_hat[j];
                        d_x[j] = d_a * p.gain_ih[j];
                    }
                    normalise_backward(d_r, r_hat, s.gates_rstd[2 * bt + 1]);
                    normalise_backward(d_x, x_hat, s.gates_rstd[2 * bt]);
                }
            }
            // d h_prev = d_rec · W_hh for the block's rows at this time step.
            let src: &[T] = if ln.is_some() { job.d_rec } else { job.d_xproj };
            matmul(
                (nb, h, g4),
                &mut d_hprev,
                h,
                (&src[t * g4..], tl * g4, 1),
                (w_hh, h, 1),
            );
            for i in 0..nb {
                if self.mask[(rows.start + i) * tl + t] {
                    dh[i * h..(i + 1) * h].copy_from_slice(&d_hprev[i * h..(i + 1) * h]);
                }
            }
        }
        job.d_h0.copy_from_slice(&dh);
        job.d_c0.copy_from_slice(&dc);
        // dW_hh = Σ_(b,t) d_recᵀ ⊗ h_prev over this block's rows and steps.
        let d_rec: &[T] = if ln.is_some() { job.d_rec } else { job.d_xproj };
        let mut d_w_hh = vec![T::zero(); g4 * h];
        matmul(
            (g4, h, nb * tl),
            &mut d_w_hh,
            h,
            (d_rec, 1, g4),
            (&s.h_prev[rows.start * tl * h..rows.end * tl * h], h, 1),
        );
        (d_params, d_w_hh)
    }
}

struct FwdBlock<'a, T> {
    rows: Range<usize>,
    out: &'a mut [T],
    act: &'a mut [T],
    h_prev: &'a mut [T],
    c_prev: &'a mut [T],
    tanh_c: &'a mut [T],
    gates_hat: &'a mut [T],
    gates_rstd: &'a mut [T],
    c_hat: &'a mut [T],
    c_rstd: &'a mut [T],
}

struct BwdBlock<'a, T> {
    rows: Range<usize>,
    d_xproj: &'a mut [T],
    d_rec: &'a mut [T],
    d_h0: &'a mut [T],
    d_c0: &'a mut [T],
}

/// Cuts the first `n` elements off `buf` (all that is left if `buf` is an unused, empty
/// layer-norm buffer) and returns them.
fn take<'a, T>(buf: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let n = n.min(buf.len());
    let (head, tail) = std::mem::take(buf).split_at_mut(n);
    *buf = tail;
    head
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

/// The block loops are written generically and vectorise, but the default x86-64 target only
/// allows SSE2: these entry points compile them again for AVX2+FMA, chosen at run time.
impl LstmRecurrence {
    fn forward_block_dispatch<T: Real>(&self, job: FwdBlock<T>, x: &[T], w: &[T], aux: &[T]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the features were detected at run time.
            return unsafe { self.forward_block_avx2(job, x, w, aux) };
        }
        self.forward_block(job, x, w, aux)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_block_avx2<T: Real>(&self, job: FwdBlock<T>, x: &[T], w: &[T], aux: &[T]) {
        self.forward_block(job, x, w, aux)
    }

    fn backward_block_dispatch<T: Real>(
        &self,
        job: BwdBlock<T>,
        s: &Saved<T>,
        g: &[T],
        w: &[T],
        aux: &[T],
    ) -> (Vec<T>, Vec<T>) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the features were detected at run time.
            return unsafe { self.backward_block_avx2(job, s, g, w, aux) };
        }
        self.backward_block(job, s, g, w, aux)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_block_avx2<T: Real>(
        &self,
        job: BwdBlock<T>,
        s: &Saved<T>,
        g: &[T],
        w: &[T],
        aux: &[T],
    ) -> (Vec<T>, Vec<T>) {
        self.backward_block(job, s, g, w, aux)
    }
}

/// Gate activations in place (`i, f, o` sigmoid, `g` tanh) and the new cell `c = f·c + i·g`
/// into `c`.
#[inline(always)]
fn cell_forward<T: Real>(act: &mut [T], c: &mut [T]) {
    let h = c.len();
    let (gi, rest) = act.split_at_mut(h);
    let (gf, rest) = rest.split_at_mut(h);
    let (gg, go) = rest.split_at_mut(h);
    for j in 0..h {
        let i = gi[j].sigmoid();
        let f = gf[j].sigmoid();
        let g = gg[j].tanh_();
        gi[j] = i;
        gf[j] = f;
        gg[j] = g;
        go[j] = go[j].sigmoid();
        c[j] = f * c[j] + i * g;
    }
}

/// `out = (x - mean) / sqrt(var + eps)`; returns `1 / sqrt(var + eps)`.
#[inline(always)]
fn normalise<T: Real>(x: &[T], out: &mut [T]) -> T {
    let n = T::from_f64(x.len() as f64);
    let mut sum = T::zero();
    for &v in x {
        sum += v;
    }
    let mean = sum / n;
    let mut sq = T::zero();
    for &v in x {
        sq += (v - mean) * (v - mean);
    }
    let rstd = T::one() / (sq / n + T::from_f64(LN_EPS)).sqrt_();
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - mean) * rstd;
    }
    rstd
}

/// Given `d` = gradient w.r.t. the normalised values `n` (gain already applied), turns it
/// into the gradient w.r.t. the input: `rstd · (d - mean(d) - n · mean(d·n))`.
#[inline(always)]
fn normalise_backward<T: Real>(d: &mut [T], n_hat: &[T], rstd: T) {
    let len = T::from_f64(d.len() as f64);
    let (mut sum, mut dot) = (T::zero(), T::zero());
    for (&dv, &n) in d.iter().zip(n_hat) {
        sum += dv;
        dot += dv * n;
    }
    let (mean, mean_dot) = (sum / len, dot / len);
    for (dv, &n) in d.iter_mut().zip(n_hat) {
        *dv = rstd * (*dv - mean - n * mean_dot);
    }
}

fn slice_of<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(s)?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("lstm recurrence: {what} must be contiguous"),
    }
}

impl LstmRecurrence {
    fn out_shape(&self) -> Shape {
        Shape::from((self.batch, self.time + 2, self.hidden))
    }

    fn fwd_typed<T: Store>(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        (s3, l3): (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let out = self.forward(
            slice_of::<T>(s1, l1, "xproj")?,
            slice_of::<T>(s2, l2, "weight_hh")?,
            slice_of::<T>(s3, l3, "aux")?,
        )?;
        Ok((T::to_cpu_storage_owned(out), self.out_shape()))
    }

    fn bwd_typed<T: Store>(
        &self,
        w_hh: &Tensor,
        aux: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = |x: &Tensor| x.flatten_all()?.to_vec1::<T>();
        let (d_x, d_w, d_aux) = self.backward(&flat(grad)?, &flat(w_hh)?, &flat(aux)?)?;
        let dev = grad.device();
        let (b, t, h) = (self.batch, self.time, self.hidden);
        Ok((
            Some(Tensor::from_vec(d_x, (b, t, 4 * h), dev)?),
            Some(Tensor::from_vec(d_w, (4 * h, h), dev)?),
            Some(Tensor::from_vec(d_aux, aux.dims(), dev)?),
        ))
    }
}

impl CustomOp3 for LstmRecurrence {
    fn name(&self) -> &'static str {
        "lstm-recurrence"
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
        let args = ((s1, l1), (s2, l2), (s3, l3));
        match (s1.dtype(), s2.dtype(), s3.dtype()) {
            (DType::F32, DType::F32, DType::F32) => self.fwd_typed::<f32>(args.0, args.1, args.2),
            (DType::F64, DType::F64, DType::F64) => self.fwd_typed::<f64>(args.0, args.1, args.2),
            (a, b, c) => candle_core::bail!(
                "lstm recurrence runs on f32 or f64 only, got {a:?}, {b:?}, {c:?}"
            ),
        }
    }

    fn bwd(
        &self,
        _xproj: &Tensor,
        w_hh: &Tensor,
        aux: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match grad_res.dtype() {
            DType::F32 => self.bwd_typed::<f32>(w_hh, aux, grad_res),
            DType::F64 => self.bwd_typed::<f64>(w_hh, aux, grad_res),
            d => candle_core::bail!("lstm recurrence runs on f32 or f64 only, got {d:?}"),
        }
    }
}
