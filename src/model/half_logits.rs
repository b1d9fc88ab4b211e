//! The output layer's `x·Wᵀ` for a few rows at a time (one sentence's beam) against the
//! weight kept in f16, as the shipped models store it.
//!
//! At batch 1 and beam 5 a search step multiplies 5 rows by the `[vocab, hidden]` output
//! weight, 8,000 × 256: the time is reading the weight (8 MB in f32, from memory at every
//! step), not the arithmetic. In f16 it is half the bytes. Each weight row is widened to
//! f32 in the kernel, so when the f32 weight was itself read from f16 (checked when the
//! copy is made) every product is the f32 weight's and only the order of the sums differs
//! from gemm's. Written by hand because gemm's f16 path widens the whole weight into a
//! packed copy at every call, which is the cost this avoids.

use half::f16;
use half::slice::HalfFloatSliceExt;
use multiversion::multiversion;
use rayon::prelude::*;

use super::fastmath::LANES;

/// At most this many rows go through the kernel; above it gemm's blocking wins (at 160
/// rows, a batch of 32 at beam 5, gemm is compute-bound and the weight read is amortised).
pub const MAX_ROWS: usize = 16;

/// Vocabulary rows per rayon task.
const ROWS_PER_TASK: usize = 512;

/// `out[r, j] = Σ_i x[r, i] · weight[j, i]` for `x: [rows, hidden]`, `weight: [vocab,
/// hidden]` (row-major), `out: [rows, vocab]`.
pub fn logits(x: &[f32], rows: usize, weight: &[f16], vocab: usize, out: &mut [f32]) {
    assert!(
        rows > 0 && x.len().is_multiple_of(rows),
        "x holds whole rows"
    );
    let hidden = x.len() / rows;
    assert_eq!(weight.len(), vocab * hidden, "weight is [vocab, hidden]");
    assert_eq!(out.len(), rows * vocab, "out is [rows, vocab]");
    // Computed vocabulary-major (each task writes a contiguous block), then transposed.
    let mut by_word = vec![0f32; vocab * rows];
    by_word
        .par_chunks_mut(ROWS_PER_TASK * rows)
        .zip(weight.par_chunks(ROWS_PER_TASK * hidden))
        .for_each(|(out_t, w)| {
            #[cfg(target_arch = "x86_64")]
            if hidden.is_multiple_of(8)
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                // SAFETY: the features it is compiled for were detected just above.
                unsafe { x86::dots(x, rows, hidden, w, out_t) };
                return;
            }
            let mut row = vec![0f32; hidden];
            dots(x, rows, hidden, w, out_t, &mut row);
        });
    for (j, scores) in by_word.chunks_exact(rows).enumerate() {
        for (r, &s) in scores.iter().enumerate() {
            out[r * vocab + j] = s;
        }
    }
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn dots(x: &[f32], rows: usize, hidden: usize, w: &[f16], out_t: &mut [f32], row: &mut [f32]) {
    for (wj, scores) in w.chunks_exact(hidden).zip(out_t.chunks_exact_mut(rows)) {
        wj.convert_to_f32_slice(row);
        for (r, score) in scores.iter_mut().enumerate() {
            *score = dot(row, &x[r * hidden..(r + 1) * hidden]);
        }
    }
}

/// AVX2 + FMA + F16C: two weight rows widened to f32 at a time, each multiplied with up to
/// four rows of `x` in eight accumulators, so that every load of `x` feeds two FMAs.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// [`super::dots`] for `hidden` a multiple of 8.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dots(x: &[f32], rows: usize, hidden: usize, w: &[f16], out_t: &mut [f32]) {
        let words = w.len() / hidden;
        let mut pair = vec![0f32; 2 * hidden];
        let mut j = 0;
        while j < words {
            let two = (words - j).min(2);
            for t in 0..two {
                widen(
                    &w[(j + t) * hidden..(j + t + 1) * hidden],
                    &mut pair[t * hidden..],
                );
            }
            if two == 1 {
                pair[hidden..].fill(0.0);
            }
            let mut r = 0;
            while r < rows {
                let n = (rows - r).min(4);
                // A constant row count keeps the accumulators in registers.
                let sums = match n {
                    4 => by_two::<4>(x, r, hidden, &pair),
                    3 => by_two::<3>(x, r, hidden, &pair),
                    2 => by_two::<2>(x, r, hidden, &pair),
                    _ => by_two::<1>(x, r, hidden, &pair),
                };
                for (q, s) in sums.iter().enumerate().take(n) {
                    out_t[j * rows + r + q] = s[0];
                    if two == 2 {
                        out_t[(j + 1) * rows + r + q] = s[1];
                    }
                }
                r += n;
            }
            j += two;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(src: &[f16], dst: &mut [f32]) {
        for (i, chunk) in src.chunks_exact(8).enumerate() {
            let h = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(8 * i), _mm256_cvtph_ps(h));
        }
    }

    /// Rows `r .. r + N` (N ≤ 4) of `x` against the two widened weight rows of `pair`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn by_two<const N: usize>(
        x: &[f32],
        r: usize,
        hidden: usize,
        pair: &[f32],
    ) -> [[f32; 2]; 4] {
        assert!(x.len() >= (r + N) * hidden && pair.len() >= 2 * hidden);
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let (w0, w1) = (pair.as_ptr(), pair.as_ptr().add(hidden));
        let xs = x.as_ptr().add(r * hidden);
        let mut k = 0;
        while k < hidden {
            let a = _mm256_loadu_ps(w0.add(k));
            let b = _mm256_loadu_ps(w1.add(k));
            for (q, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xs.add(q * hidden + k));
                acc[0] = _mm256_fmadd_ps(xv, a, acc[0]);
                acc[1] = _mm256_fmadd_ps(xv, b, acc[1]);
            }
            k += 8;
        }
        let mut out = [[0f32; 2]; 4];
        for q in 0..N {
            out[q] = [hsum(acc[q][0]), hsum(acc[q][1])];
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

/// A dot product in [`LANES`] independent sums, so that it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (ca, cb) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for l in 0..LANES {
            lanes[l] += ca[l] * cb[l];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(p, q)| p * q).sum();
    lanes.iter().sum::<f32>() + tail
}

/// The f16 copy of an f32 weight when it is exact (every value an f16 widened, as when
/// read from an f16 file); `None` otherwise, so that an f32 model is never rounded. Slice
/// conversions use F16C where the CPU has it.
pub fn exact_f16(weight: &[f32]) -> Option<Vec<f16>> {
    let mut half = vec![f16::ZERO; weight.len()];
    half.convert_from_f32_slice(weight);
    let mut back = [0f32; 256];
    for (h, w) in half.chunks(back.len()).zip(weight.chunks(back.len())) {
        h.convert_to_f32_slice(&mut back[..h.len()]);
        if back[..h.len()]
            .iter()
            .zip(w)
            .any(|(b, v)| b.to_bits() != v.to_bits())
        {
            return None;
        }
    }
    Some(half)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn equals_the_f32_product_of_the_widened_weight() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // A vocabulary over several tasks with a ragged last one and an odd count (the AVX2
        // kernel takes words in pairs); a hidden size of whole vectors (the AVX2 kernel, where
        // the CPU has it) and one with a tail (the portable one).
        let vocab = 1203;
        for (hidden, rows) in [29, 32]
            .into_iter()
            .flat_map(|h| [(h, 1), (h, 5), (h, MAX_ROWS)])
        {
            let weight: Vec<f16> = (0..vocab * hidden)
                .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                .collect();
            let x: Vec<f32> = (0..rows * hidden)
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let mut out = vec![0f32; rows * vocab];
            logits(&x, rows, &weight, vocab, &mut out);
            for r in 0..rows {
                for j in 0..vocab {
                    let want: f64 = (0..hidden)
                        .map(|i| x[r * hidden + i] as f64 * weight[j * hidden + i].to_f64())
                        .sum();
                    // f32 sums of ≤ 32 products of magnitude ≤ 2: rounding well below 1e-5.
                    let got = out[r * vocab + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "row {r}, word {j}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_f16_copy_is_made_only_when_exact() {
        let widened: Vec<f32> = (0..1000)
            .map(|n| f16::from_f32(n as f32 * 0.37 - 5.0).to_f32())
            .collect();
        let copy = exact_f16(&widened).expect("every value is an f16");
        assert_eq!(copy.iter().map(|h| h.to_f32()).collect::<Vec<_>>(), widened);
        let mut f32_only = widened.clone();
        f32_only[777] = 0.1; // not an f16
        assert!(exact_f16(&f32_only).is_none());
    }
}
