//! The output layer's `x·Wᵀ` in int8 with i32 accumulation, for search on the CPU
//! (opt-in: `rnmt translate --int8`), as Marian's intgemm and CTranslate2's int8 models do.
//!
//! * The weight `[words, hidden]` is quantized once, each word's row to integers in
//!   [-127, 127] with a scale of its own: `w ≈ s_j · q_j`.
//! * At every step each row of `x` is quantized to integers in [-63, 63] with a scale of
//!   its own, `x ≈ a_r · p_r`, and shifted by 64 into unsigned bytes `u = p + 64` for
//!   AVX2's `vpmaddubsw`, which multiplies unsigned by signed bytes and adds neighbouring
//!   pairs into an i16 *with saturation*. Seven bits keep every pair sum within i16
//!   (2 · 127 · 127 = 32,258 < 32,767), so nothing saturates: every kernel computes the
//!   same integers exactly, and the AVX2 kernel equals its scalar twin bit for bit. The
//!   shift is undone with `64 · Σ_i q_ji`, made with the weight.
//! * `logit[r, j] = a_r · s_j · (Σ_i u_ri q_ji − 64 · Σ_i q_ji)`.
//!
//! Written by hand: the gemm crate has no integer kernels, and candle's CPU matmul is
//! float only. AVX-512 VNNI (`vpdpbusd`) would do the multiply and both additions in one
//! instruction; it is not used yet (none of the machines it could be tested on has it), so
//! every x86-64 CPU with AVX2 takes the AVX2 kernel and others the scalar one.

use rayon::prelude::*;

/// Weight rows are padded with zeros to a multiple of this many columns: one 256-bit
/// vector of bytes.
const BLOCK: usize = 32;

/// Quantized activations are in [-ACT_MAX, ACT_MAX] (seven bits, see the module notes),
/// stored shifted by ACT_SHIFT.
const ACT_MAX: f32 = 63.0;
const ACT_SHIFT: i32 = 64;

/// Quantized weights are in [-WEIGHT_MAX, WEIGHT_MAX].
const WEIGHT_MAX: f32 = 127.0;

/// Target words per rayon task.
const WORDS_PER_TASK: usize = 64;

/// The longest row a kernel takes: its i32 sums hold `hidden / 2` pair sums of at most
/// 32,258 each.
pub const MAX_HIDDEN: usize = 65_536;

/// An output-layer weight `[words, hidden]` quantized row by row.
#[derive(Clone, Debug)]
pub struct Int8Weight {
    words: usize,
    hidden: usize,
    /// `hidden` rounded up to a multiple of [`BLOCK`].
    stride: usize,
    /// `[words, stride]`, zero-padded.
    q: Vec<i8>,
    /// One per word: `w_j ≈ scales[j] · q_j`.
    scales: Vec<f32>,
    /// One per word: `64 · Σ_i q_ji`, the shift of the activations undone.
    shift_sums: Vec<i32>,
}

impl Int8Weight {
    /// Quantizes `weight` (`[words, hidden]`, row-major). A row of zeros gets scale 0.
    pub fn quantize(weight: &[f32], words: usize, hidden: usize) -> Self {
        assert_eq!(weight.len(), words * hidden, "weight is [words, hidden]");
        assert!(
            hidden > 0 && hidden <= MAX_HIDDEN,
            "hidden size {hidden} is not in 1..={MAX_HIDDEN}"
        );
        let stride = hidden.div_ceil(BLOCK) * BLOCK;
        let mut q = vec![0i8; words * stride];
        let mut scales = vec![0f32; words];
        let mut shift_sums = vec![0i32; words];
        for (j, row) in weight.chunks_exact(hidden).enumerate() {
            let out = &mut q[j * stride..j * stride + hidden];
            scales[j] = quantize_row(row, out);
            shift_sums[j] = ACT_SHIFT * out.iter().map(|&v| v as i32).sum::<i32>();
        }
        Self {
            words,
            hidden,
            stride,
            q,
            scales,
            shift_sums,
        }
    }

    pub fn words(&self) -> usize {
        self.words
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The rows of words `ids`, in that order (a lexical shortlist's layer).
    pub fn select(&self, ids: &[u32]) -> Self {
        let mut q = Vec::with_capacity(ids.len() * self.stride);
        let (mut scales, mut shift_sums) = (Vec::new(), Vec::new());
        for &id in ids {
            let j = id as usize;
            assert!(j < self.words, "word {j} of {}", self.words);
            q.extend_from_slice(&self.q[j * self.stride..(j + 1) * self.stride]);
            scales.push(self.scales[j]);
            shift_sums.push(self.shift_sums[j]);
        }
        Self {
            words: ids.len(),
            hidden: self.hidden,
            stride: self.stride,
            q,
            scales,
            shift_sums,
        }
    }

    /// `out[r, j] ≈ Σ_i x[r, i] · w[j, i]` for `x: [rows, hidden]`, `out: [rows, words]`
    /// (row-major), with the kernel the CPU has.
    pub fn logits(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.logits_with(x, rows, out, Kernel::detect());
    }

    fn logits_with(&self, x: &[f32], rows: usize, out: &mut [f32], kernel: Kernel) {
        assert_eq!(x.len(), rows * self.hidden, "x is [rows, hidden]");
        assert_eq!(out.len(), rows * self.words, "out is [rows, words]");
        if rows == 0 || self.words == 0 {
            return;
        }
        let (u, act_scales) = quantize_activations(x, rows, self.hidden, self.stride);
        let out_ptr = SharedOut(out.as_mut_ptr());
        let words = self.words;
        (0..words.div_ceil(WORDS_PER_TASK))
            .into_par_iter()
            .for_each(|task| {
                let first = task * WORDS_PER_TASK;
                let last = (first + WORDS_PER_TASK).min(words);
                // Rows outer, words inner: the task's words (16 KB at 256 columns) and four
                // rows of x stay in L1 while every pair of words meets those rows.
                let mut r = 0;
                while r < rows {
                    let n = (rows - r).min(4);
                    for j in (first..last).step_by(2) {
                        let pair = (last - j).min(2);
                        let sums = self.dots(kernel, &u, r, n, j, pair);
                        for (q, s) in sums.iter().enumerate().take(n) {
                            for (t, &sum) in s.iter().enumerate().take(pair) {
                                let word = j + t;
                                let v = (sum - self.shift_sums[word]) as f32
                                    * (act_scales[r + q] * self.scales[word]);
                                // SAFETY: each task writes the columns of its own words
                                // only, and `out` holds `rows · words` values (asserted).
                                unsafe { *out_ptr.at((r + q) * words + word) = v };
                            }
                        }
                    }
                    r += n;
                }
            });
    }

    /// `Σ_i u[r + q, i] · q[j + t, i]` for `q < n ≤ 4` rows and `t < pair ≤ 2` words.
    fn dots(
        &self,
        kernel: Kernel,
        u: &[u8],
        r: usize,
        n: usize,
        j: usize,
        pair: usize,
    ) -> [[i32; 2]; 4] {
        let s = self.stride;
        let x = &u[r * s..(r + n) * s];
        let w0 = &self.q[j * s..(j + 1) * s];
        // A lone last word is paired with itself; its second sum is not read.
        let w1 = &self.q[(j + pair - 1) * s..(j + pair) * s];
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` is only chosen where the CPU has AVX2.
            Kernel::Avx2 => unsafe { x86::dots(x, n, s, w0, w1) },
            Kernel::Scalar => scalar_dots(x, n, s, w0, w1),
        }
    }
}

/// The integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }
}

/// A pointer into the output that rayon tasks writing disjoint elements share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the tasks write disjoint elements (see `Int8Weight::logits_with`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `i` must be in bounds and written by one task only.
    unsafe fn at(self, i: usize) -> *mut f32 {
        unsafe { self.0.add(i) }
    }
}

/// `row ≈ scale · out` with `out` in [-127, 127], rounded to nearest; returns the scale (0
/// for a row of zeros). The one weight quantizer: search's and the int8 weights file's
/// (`rnmt average --dtype int8`), so that a model stored in int8 is searched with exactly
/// its stored integers.
pub fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(row.len(), out.len());
    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if max > 0.0 { WEIGHT_MAX / max } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v * inv).round().clamp(-WEIGHT_MAX, WEIGHT_MAX) as i8;
    }
    max / WEIGHT_MAX
}

/// Each row of `x` (`[rows, hidden]`) as unsigned bytes `p + 64` with `p` in [-63, 63],
/// zero-padded (`64`) to `stride`, and its scale.
fn quantize_activations(
    x: &[f32],
    rows: usize,
    hidden: usize,
    stride: usize,
) -> (Vec<u8>, Vec<f32>) {
    let mut u = vec![ACT_SHIFT as u8; rows * stride];
    let mut scales = vec![0f32; rows];
    for (r, row) in x.chunks_exact(hidden).enumerate() {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if max > 0.0 { ACT_MAX / max } else { 0.0 };
        scales[r] = max / ACT_MAX;
        for (o, &v) in u[r * stride..r * stride + hidden].iter_mut().zip(row) {
            *o = ((v * inv).round().clamp(-ACT_MAX, ACT_MAX) as i32 + ACT_SHIFT) as u8;
        }
    }
    (u, scales)
}

/// The scalar twin of the AVX2 kernel: the same integers.
fn scalar_dots(x: &[u8], n: usize, stride: usize, w0: &[i8], w1: &[i8]) -> [[i32; 2]; 4] {
    let mut out = [[0i32; 2]; 4];
    for (q, sums) in out.iter_mut().enumerate().take(n) {
        let row = &x[q * stride..(q + 1) * stride];
        for (sum, w) in sums.iter_mut().zip([w0, w1]) {
            *sum = row.iter().zip(w).map(|(&a, &b)| a as i32 * b as i32).sum();
        }
    }
    out
}

/// AVX2: two weight rows at a time against up to four rows of `x`, eight i32 accumulators,
/// so that every load of `x` feeds two multiplies.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// [`super::scalar_dots`] for `stride` a multiple of [`BLOCK`].
    #[target_feature(enable = "avx2")]
    pub unsafe fn dots(x: &[u8], n: usize, stride: usize, w0: &[i8], w1: &[i8]) -> [[i32; 2]; 4] {
        match n {
            4 => block::<4>(x, stride, w0, w1),
            3 => block::<3>(x, stride, w0, w1),
            2 => block::<2>(x, stride, w0, w1),
            _ => block::<1>(x, stride, w0, w1),
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn block<const N: usize>(
        x: &[u8],
        stride: usize,
        w0: &[i8],
        w1: &[i8],
    ) -> [[i32; 2]; 4] {
        assert!(
            stride.is_multiple_of(BLOCK)
                && x.len() >= N * stride
                && w0.len() >= stride
                && w1.len() >= stride
        );
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; N];
        let mut k = 0;
        while k < stride {
            // SAFETY: k + 32 ≤ stride, within each slice (asserted above).
            unsafe {
                let a = _mm256_loadu_si256(w0.as_ptr().add(k) as *const __m256i);
                let b = _mm256_loadu_si256(w1.as_ptr().add(k) as *const __m256i);
                for (q, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(x.as_ptr().add(q * stride + k) as *const __m256i);
                    // u8 × i8, neighbouring pairs summed into i16 (never saturating, see
                    // the module notes), then pairs of i16 summed into i32.
                    let pa = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, a), ones);
                    let pb = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, b), ones);
                    acc[0] = _mm256_add_epi32(acc[0], pa);
                    acc[1] = _mm256_add_epi32(acc[1], pb);
                }
            }
            k += BLOCK;
        }
        let mut out = [[0i32; 2]; 4];
        for q in 0..N {
            out[q] = [hsum(acc[q][0]), hsum(acc[q][1])];
        }
        out
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn hsum(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, n: usize, range: f32) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-range..range)).collect()
    }

    /// Every kernel the CPU has computes the scalar kernel's results bit for bit: the
    /// integers are exact (nothing saturates) and the scaling is shared.
    #[test]
    fn the_simd_kernel_equals_the_scalar_one_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Ragged task and pair ends (an odd word count over several tasks), a hidden size
        // with padding and one without, row counts around the kernel's blocks of four.
        for (words, hidden) in [(601, 29), (517, 64)] {
            let w = Int8Weight::quantize(&random(&mut rng, words * hidden, 0.5), words, hidden);
            for rows in [1, 3, 5, 16, 41] {
                let x = random(&mut rng, rows * hidden, 3.0);
                let mut scalar = vec![0f32; rows * words];
                w.logits_with(&x, rows, &mut scalar, Kernel::Scalar);
                let mut detected = vec![0f32; rows * words];
                w.logits_with(&x, rows, &mut detected, Kernel::detect());
                assert_eq!(
                    scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    detected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{words} × {hidden}, {rows} rows, {:?}",
                    Kernel::detect()
                );
            }
        }
    }

    /// The int8 product is within the error quantization allows of the f32 one: per
    /// product, half a step of each factor's scale.
    #[test]
    fn the_product_is_within_the_quantization_error_of_f32() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (words, hidden, rows) = (300, 48, 7);
        let weight = random(&mut rng, words * hidden, 0.5);
        let x = random(&mut rng, rows * hidden, 2.0);
        let w = Int8Weight::quantize(&weight, words, hidden);
        let mut out = vec![0f32; rows * words];
        w.logits(&x, rows, &mut out);
        for r in 0..rows {
            let xr = &x[r * hidden..(r + 1) * hidden];
            let x_max = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
            for j in 0..words {
                let wj = &weight[j * hidden..(j + 1) * hidden];
                let w_max = wj.iter().fold(0f32, |m, v| m.max(v.abs()));
                let exact: f64 = xr.iter().zip(wj).map(|(&a, &b)| a as f64 * b as f64).sum();
                // |x·w − x̃·w̃| ≤ Σ |x| δw + |w̃| δx with δw = w_max / 254, δx = x_max / 126.
                let bound: f64 = xr
                    .iter()
                    .zip(wj)
                    .map(|(&a, &b)| {
                        a.abs() as f64 * (w_max / 254.0) as f64
                            + (b.abs() + w_max / 254.0) as f64 * (x_max / 126.0) as f64
                    })
                    .sum::<f64>()
                    + 1e-5;
                let got = out[r * words + j] as f64;
                assert!(
                    (got - exact).abs() <= bound,
                    "row {r}, word {j}: {got} vs {exact} (bound {bound})"
                );
            }
        }
    }

    /// Selected rows score as the same rows of the whole weight, and zero rows (of the
    /// weight or of x) give zeros.
    #[test]
    fn selected_words_and_zero_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (words, hidden, rows) = (90, 40, 3);
        let mut weight = random(&mut rng, words * hidden, 0.5);
        weight[17 * hidden..18 * hidden].fill(0.0);
        let mut x = random(&mut rng, rows * hidden, 1.0);
        x[hidden..2 * hidden].fill(0.0);
        let w = Int8Weight::quantize(&weight, words, hidden);
        let mut all = vec![0f32; rows * words];
        w.logits(&x, rows, &mut all);
        let ids = [17u32, 3, 89, 3];
        let picked = w.select(&ids);
        assert_eq!((picked.words(), picked.hidden()), (4, hidden));
        let mut some = vec![0f32; rows * ids.len()];
        picked.logits(&x, rows, &mut some);
        for r in 0..rows {
            for (k, &id) in ids.iter().enumerate() {
                assert_eq!(some[r * ids.len() + k], all[r * words + id as usize]);
            }
            assert_eq!(all[r * words + 17], 0.0);
        }
        assert!(all[words..2 * words].iter().all(|&v| v == 0.0));
    }
}
