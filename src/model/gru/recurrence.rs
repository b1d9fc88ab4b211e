//! The forward recurrence of the fused GRU op: one batch block through the whole sequence.
//!
//! Per step: one `gemm` call for the block's `h · W_hhᵀ`, then, row by row, the input and
//! recurrent parts `a_x`, `a_h` (optional layer norm, biases) and [`cell_forward`]. What
//! backward needs is written into the block's share of the saved buffers as it goes.

use multiversion::multiversion;

use super::kernel::{FwdBlock, GruRecurrence};
use crate::model::fastmath::Real;
use crate::model::lstm::shared::normalise_row;

/// Runs the block `job` through all time steps of `op`, writing its outputs (hidden states
/// and the final `h`) into `job.out` and, when `op` keeps them, what backward needs into the
/// block's saved buffers. `#[multiversion]` compiles it a second time for AVX2+FMA (see
/// [`crate::model::fastmath`]); everything it calls in its loops is `#[inline(always)]`.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(super) fn forward_block<T: Real>(
    op: &GruRecurrence,
    job: FwdBlock<T>,
    xproj: &[T],
    w_hh: &[T],
    aux: &[T],
) {
    let (tl, h) = (op.time, op.hidden);
    let g3 = 3 * h;
    let rows = job.rows.clone();
    let nb = rows.len();
    let mut hs = aux[rows.start * h..rows.end * h].to_vec();
    let mut rec = vec![T::zero(); nb * g3];
    let mut a_x = vec![T::zero(); g3];
    let ln = op.ln_params(aux);
    let (b_ih, b_hh) = op.biases(aux);
    let slots = op.saved_slots();
    for step in 0..tl {
        let t = op.time_at(step);
        // rec = h · W_hhᵀ for the whole block (in int8 where search asked for it).
        op.recurrent_product((nb, g3, h), &mut rec, &hs, w_hh);
        for i in 0..nb {
            let b = rows.start + i;
            let bt = i * slots + if op.keep_saved { t } else { 0 }; // row in saved buffers
            let hrow = &mut hs[i * h..(i + 1) * h];
            job.h_prev[bt * h..(bt + 1) * h].copy_from_slice(hrow);
            if !op.mask[b * tl + t] {
                continue; // state carried over, output stays zero
            }
            let xp = &xproj[(b * tl + t) * g3..][..g3];
            // The recurrent part becomes a_h in place.
            let a_h = &mut rec[i * g3..(i + 1) * g3];
            match ln {
                None => {
                    for (((ax, &x), ah), (&bi, &bh)) in a_x
                        .iter_mut()
                        .zip(xp)
                        .zip(a_h.iter_mut())
                        .zip(b_ih.iter().zip(b_hh))
                    {
                        *ax = x + bi;
                        *ah += bh;
                    }
                }
                Some(p) => {
                    let hat = &mut job.hat[2 * bt * g3..2 * (bt + 1) * g3];
                    let (x_hat, r_hat) = hat.split_at_mut(g3);
                    job.rstd[2 * bt] = normalise_row(xp, x_hat);
                    job.rstd[2 * bt + 1] = normalise_row(a_h, r_hat);
                    for j in 0..g3 {
                        a_x[j] = p.gain_ih[j] * x_hat[j] + b_ih[j];
                        a_h[j] = p.gain_hh[j] * r_hat[j] + b_hh[j];
                    }
                }
            }
            let act = &mut job.act[bt * g3..(bt + 1) * g3];
            let hn = &mut job.hn[bt * h..(bt + 1) * h];
            cell_forward(&a_x, a_h, act, hn, hrow);
            job.out[(i * (tl + 1) + t) * h..][..h].copy_from_slice(hrow);
        }
    }
    for i in 0..nb {
        let base = (i * (tl + 1) + tl) * h;
        job.out[base..base + h].copy_from_slice(&hs[i * h..(i + 1) * h]);
    }
}

/// One row of the cell: the gates from `a_x` and `a_h` (each `[3H]`, biases included) into
/// `act` (`r, z, n`), the recurrent part of `n` into `hn`, and `h ← (1 − z)·n + z·h`.
#[inline(always)]
fn cell_forward<T: Real>(a_x: &[T], a_h: &[T], act: &mut [T], hn: &mut [T], h: &mut [T]) {
    let len = h.len();
    let (x_r, rest) = a_x.split_at(len);
    let (x_z, x_n) = rest.split_at(len);
    let (h_r, rest) = a_h.split_at(len);
    let (h_z, h_n) = rest.split_at(len);
    let (g_r, rest) = act.split_at_mut(len);
    let (g_z, g_n) = rest.split_at_mut(len);
    for j in 0..len {
        let r = (x_r[j] + h_r[j]).sigmoid();
        let z = (x_z[j] + h_z[j]).sigmoid();
        let n = (x_n[j] + r * h_n[j]).tanh_();
        g_r[j] = r;
        g_z[j] = z;
        g_n[j] = n;
        hn[j] = h_n[j];
        h[j] = n + z * (h[j] - n);
    }
}
