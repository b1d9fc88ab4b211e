//! The forward recurrence of the fused LSTM op: one batch block through the whole sequence.
//!
//! Per step: one `gemm` call for the block's `h · W_hhᵀ`, then, row by row, the gates
//! (bias, optional layer norm), [`cell_forward`], and `h = o · tanh(c)`. What backward
//! needs is written into the block's share of the saved buffers as it goes.

use multiversion::multiversion;

use super::kernel::{FwdBlock, LstmRecurrence, LN_EPS};
use crate::model::fastmath::Real;

/// Runs the block `job` through all time steps of `op`, writing its outputs (hidden states,
/// final `h` and `c`) into `job.out` and, when `op` keeps them, what backward needs into
/// the block's saved buffers. `#[multiversion]` compiles it a second time for AVX2+FMA
/// (see [`crate::model::fastmath`]); everything it calls in its loops is `#[inline(always)]`
/// so that it is compiled for that target too.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn forward_block<T: Real>(
    op: &LstmRecurrence,
    job: FwdBlock<T>,
    xproj: &[T],
    w_hh: &[T],
    aux: &[T],
) {
    let (tl, h) = (op.time, op.hidden);
    let g4 = 4 * h;
    let rows = job.rows.clone();
    let nb = rows.len();
    let bh = op.batch * h;
    let mut hs = aux[rows.start * h..rows.end * h].to_vec();
    let mut cs = aux[bh + rows.start * h..bh + rows.end * h].to_vec();
    let mut rec = vec![T::zero(); nb * g4];
    let ln = op.ln_params(aux);
    let bias = op.bias(aux);
    let slots = op.saved_slots();
    for step in 0..tl {
        let t = op.time_at(step);
        // rec = h · W_hhᵀ for the whole block (in int8 where search asked for it).
        op.recurrent_product((nb, g4, h), &mut rec, &hs, w_hh);
        for i in 0..nb {
            let b = rows.start + i;
            let bt = i * slots + if op.keep_saved { t } else { 0 }; // row in saved buffers
            let hrow = &mut hs[i * h..(i + 1) * h];
            let crow = &mut cs[i * h..(i + 1) * h];
            job.h_prev[bt * h..(bt + 1) * h].copy_from_slice(hrow);
            job.c_prev[bt * h..(bt + 1) * h].copy_from_slice(crow);
            let out = &mut job.out[(i * (tl + 2) + t) * h..][..h];
            if !op.mask[b * tl + t] {
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
        job.out[base + (tl + 1) * h..base + (tl + 2) * h].copy_from_slice(&cs[i * h..(i + 1) * h]);
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
pub(crate) fn normalise<T: Real>(x: &[T], out: &mut [T]) -> T {
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
