//! Backpropagation through time for the fused LSTM op: one batch block, last step first.
//!
//! Per step and row, the chain rule runs back through what the forward did:
//! `h = o · tanh(c')` (with layer norm `c'` = LN of the cell), then [`cell_backward`] (the
//! twin of the forward's `cell_forward`: gates and `c = f·c_prev + i·g`), then the bias and
//! the gates' layer norms. Then one `gemm` call per step carries the block's gradient back
//! to `h_prev` through `W_hh`, and one more at the end gives the block's share of `W_hh`'s
//! gradient.

use multiversion::multiversion;

use super::kernel::{BwdBlock, LstmRecurrence, Saved};
use super::matmul::matmul;
use crate::model::fastmath::Real;

/// Backward through time for one batch block; returns this block's share of the
/// parameter gradients in `aux`'s layout (bias, then γ_ih, γ_hh, γ_cell, β_cell) and of
/// the gradient of `W_hh`. Each block takes its own share of `W_hh`'s gradient (one
/// matmul over all its steps) so the whole backward stays a single fork/join.
/// `#[multiversion]` compiles it a second time for AVX2+FMA, as the forward.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn backward_block<T: Real>(
    op: &LstmRecurrence,
    job: BwdBlock<T>,
    s: &Saved<T>,
    grad_out: &[T],
    w_hh: &[T],
    aux: &[T],
) -> (Vec<T>, Vec<T>) {
    let (tl, h) = (op.time, op.hidden);
    let g4 = 4 * h;
    let rows = job.rows.clone();
    let nb = rows.len();
    let ln = op.ln_params(aux);
    let one = T::one();
    // Gradients w.r.t. the state after the current step start from the final state's.
    let mut dh = vec![T::zero(); nb * h];
    let mut dc = vec![T::zero(); nb * h];
    for i in 0..nb {
        let base = (rows.start + i) * (tl + 2) * h;
        dh[i * h..(i + 1) * h].copy_from_slice(&grad_out[base + tl * h..base + (tl + 1) * h]);
        dc[i * h..(i + 1) * h].copy_from_slice(&grad_out[base + (tl + 1) * h..base + (tl + 2) * h]);
    }
    // This block's share of the gradients of bias, γ_hh, γ_cell, β_cell (aux's layout).
    let mut d_params = vec![T::zero(); LstmRecurrence::params_len(h, ln.is_some())];
    let mut d_pre = vec![T::zero(); h]; // gradient w.r.t. the (normalised) cell before tanh
    let mut d_hprev = vec![T::zero(); nb * h];
    for step in (0..tl).rev() {
        let t = op.time_at(step);
        for i in 0..nb {
            let b = rows.start + i;
            if !op.mask[b * tl + t] {
                continue; // padding: state gradients pass through unchanged
            }
            let bt = b * tl + t; // row in the saved buffers
            let lt = i * tl + t; // row in this block's output buffers
            let act = &s.act[bt * g4..(bt + 1) * g4];
            let go = &act[3 * h..];
            let tanh_c = &s.tanh_c[bt * h..(bt + 1) * h];
            let c_prev = &s.c_prev[bt * h..(bt + 1) * h];
            let gout = &grad_out[(b * (tl + 2) + t) * h..][..h];
            let dhrow = &dh[i * h..(i + 1) * h];
            let d_gates = &mut job.d_xproj[lt * g4..(lt + 1) * g4];
            // h = o · tanh(c'): the output gate's activation gets dh · tanh(c'), the cell
            // (before tanh) dh · o · (1 - tanh²). dh also collects the gradient flowing into
            // this step's output row.
            let d_o = &mut d_gates[3 * h..];
            for j in 0..h {
                let dh_total = dhrow[j] + gout[j];
                let (o, tc) = (go[j], tanh_c[j]);
                d_o[j] = dh_total * tc;
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
            // The new cell's gradient: what the next step carried back, plus the path
            // through this step's h.
            let dcrow = &mut dc[i * h..(i + 1) * h];
            for (d_c, &d_h_path) in dcrow.iter_mut().zip(&d_pre) {
                *d_c += d_h_path;
            }
            cell_backward(act, c_prev, d_gates, dcrow);
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
            if op.mask[(rows.start + i) * tl + t] {
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

/// The twin of the forward's `cell_forward` (gate activations, `c = f·c_prev + i·g`), run
/// backwards for one row. `act` holds the step's activations `i, f, g, o`, `c_prev` the
/// cell before the step. On entry the output-gate part of `d_gates` holds the gradient
/// w.r.t. the activation `o`, and `dc` the gradient w.r.t. the new cell `c`; on return
/// `d_gates` holds the gradients w.r.t. all four gate pre-activations and `dc` the one
/// w.r.t. `c_prev`, ready for the step before.
#[inline(always)]
fn cell_backward<T: Real>(act: &[T], c_prev: &[T], d_gates: &mut [T], dc: &mut [T]) {
    let h = dc.len();
    let one = T::one();
    let (gi, rest) = act.split_at(h);
    let (gf, rest) = rest.split_at(h);
    let (gg, go) = rest.split_at(h);
    let (d_i, rest) = d_gates.split_at_mut(h);
    let (d_f, rest) = rest.split_at_mut(h);
    let (d_g, d_o) = rest.split_at_mut(h);
    for j in 0..h {
        let d_c = dc[j];
        let (i, f, g, o) = (gi[j], gf[j], gg[j], go[j]);
        // σ' = σ(1 - σ), tanh' = 1 - tanh².
        d_i[j] = d_c * g * i * (one - i);
        d_f[j] = d_c * c_prev[j] * f * (one - f);
        d_g[j] = d_c * i * (one - g * g);
        d_o[j] = d_o[j] * o * (one - o);
        dc[j] = d_c * f;
    }
}

/// Given `d` = gradient w.r.t. the normalised values `n` (gain already applied), turns it
/// into the gradient w.r.t. the input: `rstd · (d - mean(d) - n · mean(d·n))`.
#[inline(always)]
pub(crate) fn normalise_backward<T: Real>(d: &mut [T], n_hat: &[T], rstd: T) {
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
