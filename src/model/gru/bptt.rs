//! Backpropagation through time for the fused GRU op: one batch block, last step first.
//!
//! Per step and row, [`cell_backward`] (the twin of the forward's `cell_forward`) turns the
//! gradient w.r.t. the new `h` into gradients w.r.t. the input part `a_x` and the recurrent
//! part `a_h` of the gates, and the direct path `z ⊙ dh` to `h_prev`; then come the biases
//! and the projections' layer norms. One `gemm` call per step carries the recurrent part
//! back to `h_prev` through `W_hh`, and one more at the end gives the block's share of
//! `W_hh`'s gradient.

use multiversion::multiversion;

use super::kernel::{BwdBlock, GruRecurrence, Saved};
use crate::model::fastmath::Real;
use crate::model::lstm::shared::{matmul, normalise_backward};

/// Backward through time for one batch block; returns this block's share of the parameter
/// gradients in `aux`'s layout (b_ih, b_hh, then γ_ih, γ_hh) and of the gradient of `W_hh`.
/// `#[multiversion]` compiles it a second time for AVX2+FMA, as the forward.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn backward_block<T: Real>(
    op: &GruRecurrence,
    job: BwdBlock<T>,
    s: &Saved<T>,
    grad_out: &[T],
    w_hh: &[T],
    aux: &[T],
) -> (Vec<T>, Vec<T>) {
    let (tl, h) = (op.time, op.hidden);
    let g3 = 3 * h;
    let rows = job.rows.clone();
    let nb = rows.len();
    let ln = op.ln_params(aux);
    // The gradient w.r.t. the state after the current step starts from the final state's.
    let mut dh = vec![T::zero(); nb * h];
    for i in 0..nb {
        let base = ((rows.start + i) * (tl + 1) + tl) * h;
        dh[i * h..(i + 1) * h].copy_from_slice(&grad_out[base..base + h]);
    }
    let mut d_params = vec![T::zero(); GruRecurrence::params_len(h, ln.is_some())];
    let mut d_hprev = vec![T::zero(); nb * h];
    for step in (0..tl).rev() {
        let t = op.time_at(step);
        for i in 0..nb {
            let b = rows.start + i;
            if !op.mask[b * tl + t] {
                continue; // padding: the state's gradient passes through unchanged
            }
            let bt = b * tl + t; // row in the saved buffers
            let lt = i * tl + t; // row in this block's output buffers
            let act = &s.act[bt * g3..(bt + 1) * g3];
            let hn = &s.hn[bt * h..(bt + 1) * h];
            let h_prev = &s.h_prev[bt * h..(bt + 1) * h];
            let gout = &grad_out[(b * (tl + 1) + t) * h..][..h];
            let d_x = &mut job.d_xproj[lt * g3..(lt + 1) * g3];
            let d_r = &mut job.d_rec[lt * g3..(lt + 1) * g3];
            cell_backward(act, hn, h_prev, gout, &mut dh[i * h..(i + 1) * h], d_x, d_r);
            let (d_b_ih, rest) = d_params.split_at_mut(g3);
            let (d_b_hh, d_gains) = rest.split_at_mut(g3);
            for j in 0..g3 {
                d_b_ih[j] += d_x[j];
                d_b_hh[j] += d_r[j];
            }
            if let Some(p) = ln {
                let hat = &s.hat[2 * bt * g3..2 * (bt + 1) * g3];
                let (x_hat, r_hat) = hat.split_at(g3);
                let (d_gain_ih, d_gain_hh) = d_gains.split_at_mut(g3);
                for j in 0..g3 {
                    d_gain_ih[j] += d_x[j] * x_hat[j];
                    d_x[j] *= p.gain_ih[j];
                    d_gain_hh[j] += d_r[j] * r_hat[j];
                    d_r[j] *= p.gain_hh[j];
                }
                normalise_backward(d_x, x_hat, s.rstd[2 * bt]);
                normalise_backward(d_r, r_hat, s.rstd[2 * bt + 1]);
            }
        }
        // d h_prev = z ⊙ dh (already in dh) + d_rec · W_hh, for the block's rows at step t.
        matmul(
            (nb, h, g3),
            &mut d_hprev,
            h,
            (&job.d_rec[t * g3..], tl * g3, 1),
            (w_hh, h, 1),
        );
        for i in 0..nb {
            if op.mask[(rows.start + i) * tl + t] {
                for (d, &p) in dh[i * h..(i + 1) * h]
                    .iter_mut()
                    .zip(&d_hprev[i * h..(i + 1) * h])
                {
                    *d += p;
                }
            }
        }
    }
    job.d_h0.copy_from_slice(&dh);
    // dW_hh = Σ_(b,t) d_recᵀ ⊗ h_prev over this block's rows and steps (zero at padding).
    let mut d_w_hh = vec![T::zero(); g3 * h];
    matmul(
        (g3, h, nb * tl),
        &mut d_w_hh,
        h,
        (job.d_rec, 1, g3),
        (&s.h_prev[rows.start * tl * h..rows.end * tl * h], h, 1),
    );
    (d_params, d_w_hh)
}

/// The twin of the forward's `cell_forward`, run backwards for one row. `act` holds the
/// step's activations `r, z, n`, `hn` the recurrent part of `n` before the reset, `h_prev`
/// the state before the step, `gout` the gradient flowing into this step's output. On entry
/// `dh` is the gradient w.r.t. the new state from later steps; on return `d_x` and `d_r`
/// hold the gradients w.r.t. the input part `a_x` and the recurrent part `a_h` (`[3H]`
/// each) and `dh` the direct part `z ⊙ dh'` of the gradient w.r.t. `h_prev`.
#[inline(always)]
fn cell_backward<T: Real>(
    act: &[T],
    hn: &[T],
    h_prev: &[T],
    gout: &[T],
    dh: &mut [T],
    d_x: &mut [T],
    d_r: &mut [T],
) {
    let len = dh.len();
    let one = T::one();
    let (g_r, rest) = act.split_at(len);
    let (g_z, g_n) = rest.split_at(len);
    let (dx_r, rest) = d_x.split_at_mut(len);
    let (dx_z, dx_n) = rest.split_at_mut(len);
    let (dr_r, rest) = d_r.split_at_mut(len);
    let (dr_z, dr_n) = rest.split_at_mut(len);
    for j in 0..len {
        let (r, z, n) = (g_r[j], g_z[j], g_n[j]);
        let d = dh[j] + gout[j];
        // h' = n + z·(h - n); σ' = σ(1 - σ), tanh' = 1 - tanh².
        let d_n = d * (one - z) * (one - n * n);
        let d_z = d * (h_prev[j] - n) * z * (one - z);
        // n = tanh(a_x,n + r·a_h,n)
        let d_reset = d_n * hn[j] * r * (one - r);
        dx_r[j] = d_reset;
        dr_r[j] = d_reset;
        dx_z[j] = d_z;
        dr_z[j] = d_z;
        dx_n[j] = d_n;
        dr_n[j] = d_n * r;
        dh[j] = d * z;
    }
}
