//! `x·Wᵀ` in int8 with i32 accumulation, for search on the CPU (opt-in: `rnmt translate
//! --int8`), as Marian's intgemm and CTranslate2's int8 models do. W is `[outputs, inputs]`:
//! the output layer's `[words, hidden]`, an LSTM's `W_ih [4·hidden, input]` and `W_hh
//! [4·hidden, hidden]`.
//!
//! * The weight is quantized once, each output's row to integers in [-127, 127] with a
//!   scale of its own: `w ≈ s_j · q_j`.
//! * At every step each row of `x` is quantized to integers in [-63, 63] with a scale of
//!   its own, `x ≈ a_r · p_r`, and shifted by 64 into unsigned bytes `u = p + 64`: the
//!   CPU's byte products multiply unsigned by signed bytes. AVX2's `vpmaddubsw` adds
//!   neighbouring pairs into an i16 *with saturation*; seven bits keep every pair sum within
//!   i16 (2 · 127 · 127 = 32,258 < 32,767), so nothing saturates. The shift is undone with
//!   `64 · Σ_i q_ji`, made with the weight.
//! * `out[r, j] = a_r · s_j · (Σ_i u_ri q_ji − 64 · Σ_i q_ji)`.
//!
//! The weight is packed for the vector units (the layout of oneDNN's and intgemm's int8
//! kernels): blocks of 16 outputs, and within a block, for every group of 4 columns, the 16
//! outputs' 4 bytes side by side — 64 bytes, one 512-bit vector. Four bytes of a row of `x`,
//! broadcast, meet a block in one instruction and add into 16 sums, one per output, so no
//! vector is ever summed across its lanes.
//!
//! Written by hand: the gemm crate has no integer kernels, and candle's CPU matmul is float
//! only. The kernel is chosen at run time: AVX-512 VNNI's `vpdpbusd` where the CPU has it
//! (64 byte products added four at a time into 16 i32 in one instruction), else AVX2's
//! `vpmaddubsw` + `vpmaddwd`, else the scalar twin. Every kernel computes the same integers
//! exactly and scales them alike, so they agree bit for bit (tested), and a translation
//! does not depend on the machine it ran on — which is why VNNI, which could take eight-bit
//! activations, is given seven too.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Columns per group: the bytes one i32 lane sums.
const GROUP: usize = 4;

/// Outputs per block: the i32 lanes of a 512-bit vector.
const LANES: usize = 16;

/// Bytes of one group of one block: `LANES · GROUP`, one 512-bit vector.
const BLOCK_BYTES: usize = LANES * GROUP;

/// Blocks per rayon task (64 outputs); outputs are padded with zeros to a whole task, so that
/// every task runs the kernels' one shape. At 256 columns a task's weight is 16 KB and
/// stays in L1 while every row of `x` meets it.
const TASK_BLOCKS: usize = 4;

/// Products below this many multiply-adds run on the calling thread: a few microseconds
/// of work (a step's `h·W_hhᵀ` for one sentence), less than handing it to rayon costs.
const PARALLEL_MIN_PRODUCTS: usize = 1 << 22;

/// Rows of `x` a kernel call takes at most.
const MAX_ROWS: usize = 4;

/// Quantized activations are in [-ACT_MAX, ACT_MAX] (seven bits, see the module notes),
/// stored shifted by ACT_SHIFT.
const ACT_MAX: f32 = 63.0;
const ACT_SHIFT: i32 = 64;

/// 1.5 · 2²³: adding and subtracting it rounds an f32 below 2²² to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// Quantized weights are in [-WEIGHT_MAX, WEIGHT_MAX].
const WEIGHT_MAX: f32 = 127.0;

/// The longest row a kernel takes: its i32 sums hold `inputs` products of at most
/// 127 · 127 each (and AVX2's i16 pair sums).
pub const MAX_INPUTS: usize = 65_536;

/// A weight `[outputs, inputs]` quantized row by row and packed for the kernels
/// (see the module notes).
#[derive(Clone, Debug)]
pub struct Int8Matrix {
    outputs: usize,
    inputs: usize,
    /// Groups of [`GROUP`] columns: `inputs` rounded up, zero-padded.
    groups: usize,
    /// `[blocks, groups, LANES, GROUP]`, with blocks of [`LANES`] outputs, `outputs` rounded up
    /// to whole tasks and zero-padded.
    packed: Vec<i8>,
    /// One per output: `w_j ≈ scales[j] · q_j`.
    scales: Vec<f32>,
    /// One per output: `64 · Σ_i q_ji`, the shift of the activations undone.
    shift_sums: Vec<i32>,
}

impl Int8Matrix {
    /// Quantizes `weight` (`[outputs, inputs]`, row-major). A row of zeros gets scale 0.
    pub fn quantize(weight: &[f32], outputs: usize, inputs: usize) -> Self {
        assert_eq!(
            weight.len(),
            outputs * inputs,
            "weight is [outputs, inputs]"
        );
        let mut packed = Self::zeros(outputs, inputs);
        let mut row = vec![0i8; inputs];
        for (j, w) in weight.chunks_exact(inputs).enumerate() {
            let scale = quantize_row(w, &mut row);
            packed.set_row(j, &row, scale);
        }
        packed
    }

    /// Quantizes a `[outputs, inputs]` weight tensor (any float dtype) on the CPU: the one
    /// way search's layers make their int8 copies, with the checks a user's model needs.
    pub fn from_tensor(weight: &Tensor) -> candle_core::Result<Self> {
        if !weight.device().is_cpu() {
            candle_core::bail!("int8 search runs on the CPU only");
        }
        let (outputs, inputs) = weight.dims2()?;
        if inputs > MAX_INPUTS {
            candle_core::bail!("int8 search: {inputs} inputs exceed {MAX_INPUTS}");
        }
        let w = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Self::quantize(&w, outputs, inputs))
    }

    /// [`Self::product`] on a tensor `x: [.., inputs]` → `[.., outputs]` in `x`'s dtype
    /// and on its device.
    pub fn product_tensor(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if dims.pop() != Some(self.inputs) {
            candle_core::bail!(
                "int8 product: x is {:?}, expected [.., {}]",
                x.dims(),
                self.inputs
            );
        }
        let rows = dims.iter().product();
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; rows * self.outputs];
        self.product(&xs, rows, &mut out);
        dims.push(self.outputs);
        Tensor::from_vec(out, dims, x.device())?.to_dtype(x.dtype())
    }

    /// A weight of zeros, its rows to be set with [`Self::set_row`].
    fn zeros(outputs: usize, inputs: usize) -> Self {
        assert!(
            inputs > 0 && inputs <= MAX_INPUTS,
            "inputs size {inputs} is not in 1..={MAX_INPUTS}"
        );
        let groups = inputs.div_ceil(GROUP);
        let blocks = outputs.div_ceil(LANES * TASK_BLOCKS) * TASK_BLOCKS;
        Self {
            outputs,
            inputs,
            groups,
            packed: vec![0; blocks * groups * BLOCK_BYTES],
            scales: vec![0.0; outputs],
            shift_sums: vec![0; outputs],
        }
    }

    /// Where column `i` of output `j` is in `packed`.
    fn index(&self, j: usize, i: usize) -> usize {
        ((j / LANES * self.groups + i / GROUP) * LANES + j % LANES) * GROUP + i % GROUP
    }

    fn set_row(&mut self, j: usize, q: &[i8], scale: f32) {
        for (i, &v) in q.iter().enumerate() {
            let at = self.index(j, i);
            self.packed[at] = v;
        }
        self.scales[j] = scale;
        self.shift_sums[j] = ACT_SHIFT * q.iter().map(|&v| v as i32).sum::<i32>();
    }

    fn row(&self, j: usize) -> Vec<i8> {
        (0..self.inputs)
            .map(|i| self.packed[self.index(j, i)])
            .collect()
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The rows `ids`, in that order (a lexical shortlist's output layer).
    pub fn select(&self, ids: &[u32]) -> Self {
        let mut picked = Self::zeros(ids.len(), self.inputs);
        for (k, &id) in ids.iter().enumerate() {
            let j = id as usize;
            assert!(j < self.outputs, "output {j} of {}", self.outputs);
            picked.set_row(k, &self.row(j), self.scales[j]);
        }
        picked
    }

    /// `out[r, j] ≈ Σ_i x[r, i] · w[j, i]` for `x: [rows, inputs]`, `out: [rows, outputs]`
    /// (row-major), with the kernel the CPU has.
    pub fn product(&self, x: &[f32], rows: usize, out: &mut [f32]) {
        self.product_with(x, rows, out, Kernel::detect());
    }

    /// [`Self::product`] with a given kernel, one of [`Kernel::available`] (the benchmarks
    /// and tests compare them).
    pub fn product_with(&self, x: &[f32], rows: usize, out: &mut [f32], kernel: Kernel) {
        assert_eq!(x.len(), rows * self.inputs, "x is [rows, inputs]");
        assert_eq!(out.len(), rows * self.outputs, "out is [rows, outputs]");
        // The SIMD kernels are `unsafe` on a CPU without their instructions.
        assert!(
            Kernel::available().contains(&kernel),
            "this CPU has no {} instructions",
            kernel.name()
        );
        if rows == 0 || self.outputs == 0 {
            return;
        }
        let (u, act_scales) = quantize_activations(x, rows, self.inputs, self.groups);
        let out_ptr = SharedOut(out.as_mut_ptr());
        let outputs = self.outputs;
        let task_bytes = TASK_BLOCKS * self.groups * BLOCK_BYTES;
        let row_bytes = self.groups * GROUP;
        let task = |(task, weight): (usize, &[i8])| {
            let first = task * TASK_BLOCKS * LANES;
            let last = (first + TASK_BLOCKS * LANES).min(outputs);
            let mut sums = [[0i32; TASK_BLOCKS * LANES]; MAX_ROWS];
            let mut r = 0;
            while r < rows {
                let n = (rows - r).min(MAX_ROWS);
                let x = &u[r * row_bytes..(r + n) * row_bytes];
                kernel.tile(x, n, self.groups, weight, &mut sums);
                let shift_sums = &self.shift_sums[first..last];
                let scales = &self.scales[first..last];
                for (q, sums) in sums.iter().enumerate().take(n) {
                    let a = act_scales[r + q];
                    // SAFETY: each task writes the columns of its own outputs only, so the
                    // slices of different tasks are disjoint, and `out` holds
                    // `rows · outputs` values (asserted).
                    let out = unsafe { out_ptr.slice((r + q) * outputs + first, last - first) };
                    for (((o, &sum), &shift), &s) in
                        out.iter_mut().zip(sums).zip(shift_sums).zip(scales)
                    {
                        *o = (sum - shift) as f32 * (a * s);
                    }
                }
                r += n;
            }
        };
        if rows * self.outputs * self.inputs < PARALLEL_MIN_PRODUCTS {
            self.packed
                .chunks_exact(task_bytes)
                .enumerate()
                .for_each(task);
        } else {
            let tasks = self.packed.par_chunks_exact(task_bytes).enumerate();
            tasks.for_each(task);
        }
    }
}

/// The integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Kernel {
    /// The fastest kernel the CPU has.
    pub fn detect() -> Self {
        Self::available()[0]
    }

    /// Every kernel the CPU can run, fastest first; the scalar one is always last. Found
    /// once per process: every product checks its kernel against it.
    pub fn available() -> &'static [Self] {
        static AVAILABLE: OnceLock<Vec<Kernel>> = OnceLock::new();
        AVAILABLE.get_or_init(|| {
            let mut kernels = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512vnni") {
                    kernels.push(Kernel::Avx512Vnni);
                }
                if has!("avx2") {
                    kernels.push(Kernel::Avx2);
                }
            }
            kernels.push(Kernel::Scalar);
            kernels
        })
    }

    /// The kernel's name, as the benchmarks print it.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "avx512-vnni",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            Kernel::Scalar => "scalar",
        }
    }

    /// `sums[q][l] = Σ_i x[q, i] · w[l, i]` for the `n ≤ MAX_ROWS` rows of `x` (`[n, groups
    /// · GROUP]` bytes) and the task's `TASK_BLOCKS · LANES` outputs of `weight` (`[TASK_BLOCKS,
    /// groups, LANES, GROUP]`).
    fn tile(
        self,
        x: &[u8],
        n: usize,
        groups: usize,
        weight: &[i8],
        sums: &mut [[i32; TASK_BLOCKS * LANES]; MAX_ROWS],
    ) {
        assert!(
            (1..=MAX_ROWS).contains(&n)
                && x.len() == n * groups * GROUP
                && weight.len() == TASK_BLOCKS * groups * BLOCK_BYTES
        );
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx512Vnni` is only chosen where the CPU has AVX-512 F and
            // VNNI; the sizes are asserted above.
            Kernel::Avx512Vnni => unsafe { x86::vnni_tile(x, n, groups, weight, sums) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` is only chosen where the CPU has AVX2; the sizes are
            // asserted above.
            Kernel::Avx2 => unsafe { x86::avx2_tile(x, n, groups, weight, sums) },
            Kernel::Scalar => scalar_tile(x, n, groups, weight, sums),
        }
    }
}

/// A pointer into the output that rayon tasks writing disjoint elements share.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the tasks write disjoint elements (see `Int8Matrix::product_with`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// # Safety
    /// `start..start + len` must be in bounds and written by one task only.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
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

/// Each row of `x` (`[rows, inputs]`) as unsigned bytes `p + 64` with `p` in [-63, 63],
/// padded to `groups · GROUP` (with `64`: it meets zero weights), and its scale.
fn quantize_activations(
    x: &[f32],
    rows: usize,
    inputs: usize,
    groups: usize,
) -> (Vec<u8>, Vec<f32>) {
    let stride = groups * GROUP;
    let mut u = vec![ACT_SHIFT as u8; rows * stride];
    let mut scales = vec![0f32; rows];
    for (r, row) in x.chunks_exact(inputs).enumerate() {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if max > 0.0 { ACT_MAX / max } else { 0.0 };
        scales[r] = max / ACT_MAX;
        for (o, &v) in u[r * stride..r * stride + inputs].iter_mut().zip(row) {
            // Round to nearest (ties to even) with two plain adds, which vectorise: `round`
            // is a libm call per value on baseline x86-64 (3 % of int8 search). Exact for
            // |v · inv| ≤ 63 < 2²².
            let q = (v * inv + ROUND) - ROUND;
            *o = (q.clamp(-ACT_MAX, ACT_MAX) as i32 + ACT_SHIFT) as u8;
        }
    }
    (u, scales)
}

/// The scalar twin of the SIMD kernels: the same integers.
fn scalar_tile(
    x: &[u8],
    n: usize,
    groups: usize,
    weight: &[i8],
    sums: &mut [[i32; TASK_BLOCKS * LANES]; MAX_ROWS],
) {
    for (q, sums) in sums.iter_mut().enumerate().take(n) {
        let row = &x[q * groups * GROUP..(q + 1) * groups * GROUP];
        for (b, sums) in sums.chunks_exact_mut(LANES).enumerate() {
            sums.fill(0);
            for (g, bytes) in row.chunks_exact(GROUP).enumerate() {
                let block = &weight[(b * groups + g) * BLOCK_BYTES..][..BLOCK_BYTES];
                for (sum, w) in sums.iter_mut().zip(block.chunks_exact(GROUP)) {
                    *sum += bytes
                        .iter()
                        .zip(w)
                        .map(|(&a, &b)| a as i32 * b as i32)
                        .sum::<i32>();
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BLOCK_BYTES, GROUP, LANES, MAX_ROWS, TASK_BLOCKS};

    /// Four bytes of `x` at `at` as one i32, to be broadcast.
    ///
    /// # Safety
    /// `at + 4 ≤ x.len()`.
    #[inline(always)]
    unsafe fn four_bytes(x: &[u8], at: usize) -> i32 {
        debug_assert!(at + GROUP <= x.len());
        unsafe { (x.as_ptr().add(at) as *const i32).read_unaligned() }
    }

    /// [`super::scalar_tile`] with VNNI: all four blocks of the task against up to four
    /// rows, sixteen accumulators of sixteen i32 each; per group of columns, four weight
    /// loads and four broadcasts feed sixteen `vpdpbusd`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; the sizes are those [`super::Kernel::tile`] asserts.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn vnni_tile(
        x: &[u8],
        n: usize,
        groups: usize,
        weight: &[i8],
        sums: &mut [[i32; TASK_BLOCKS * LANES]; MAX_ROWS],
    ) {
        unsafe {
            match n {
                4 => vnni::<4>(x, groups, weight, sums),
                3 => vnni::<3>(x, groups, weight, sums),
                2 => vnni::<2>(x, groups, weight, sums),
                _ => vnni::<1>(x, groups, weight, sums),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn vnni<const N: usize>(
        x: &[u8],
        groups: usize,
        weight: &[i8],
        sums: &mut [[i32; TASK_BLOCKS * LANES]; MAX_ROWS],
    ) {
        let stride = groups * GROUP;
        let mut acc = [[_mm512_setzero_si512(); TASK_BLOCKS]; N];
        for g in 0..groups {
            // SAFETY: block b's group g lies within `weight`, and bytes g·4..g·4+4 of each
            // row within `x` (the sizes the caller guarantees).
            unsafe {
                let mut w = [_mm512_setzero_si512(); TASK_BLOCKS];
                for (b, w) in w.iter_mut().enumerate() {
                    let at = (b * groups + g) * BLOCK_BYTES;
                    *w = _mm512_loadu_si512(weight.as_ptr().add(at) as *const __m512i);
                }
                for (q, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32(four_bytes(x, q * stride + g * GROUP));
                    for (acc, &w) in acc.iter_mut().zip(&w) {
                        // u8 × i8, four products summed into each output's i32 lane and
                        // added to it, exactly.
                        *acc = _mm512_dpbusd_epi32(*acc, xv, w);
                    }
                }
            }
        }
        for (q, acc) in acc.iter().enumerate() {
            for (b, &acc) in acc.iter().enumerate() {
                // SAFETY: sixteen i32 into sums[q][b·16..b·16+16].
                unsafe {
                    _mm512_storeu_si512(sums[q][b * LANES..].as_mut_ptr() as *mut __m512i, acc)
                };
            }
        }
    }

    /// [`super::scalar_tile`] with AVX2: one block at a time (two 256-bit halves of eight
    /// outputs) against up to four rows, eight accumulators; `vpmaddubsw` sums byte pairs
    /// into i16 (never saturating, see the module notes), `vpmaddwd` by ones sums those
    /// pairs into each output's i32 lane.
    ///
    /// # Safety
    /// The CPU has AVX2; the sizes are those [`super::Kernel::tile`] asserts.
    #[target_feature(enable = "avx2")]
    pub unsafe fn avx2_tile(
        x: &[u8],
        n: usize,
        groups: usize,
        weight: &[i8],
        sums: &mut [[i32; TASK_BLOCKS * LANES]; MAX_ROWS],
    ) {
        unsafe {
            match n {
                4 => avx2::<4>(x, groups, weight, sums),
                3 => avx2::<3>(x, groups, weight, sums),
                2 => avx2::<2>(x, groups, weight, sums),
                _ => avx2::<1>(x, groups, weight, sums),
            }
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn avx2<const N: usize>(
        x: &[u8],
        groups: usize,
        weight: &[i8],
        sums: &mut [[i32; TASK_BLOCKS * LANES]; MAX_ROWS],
    ) {
        let stride = groups * GROUP;
        let ones = _mm256_set1_epi16(1);
        for b in 0..TASK_BLOCKS {
            let mut acc = [[_mm256_setzero_si256(); 2]; N];
            for g in 0..groups {
                // SAFETY: as in `vnni`.
                unsafe {
                    let at = (b * groups + g) * BLOCK_BYTES;
                    let w0 = _mm256_loadu_si256(weight.as_ptr().add(at) as *const __m256i);
                    let w1 = _mm256_loadu_si256(weight.as_ptr().add(at + 32) as *const __m256i);
                    for (q, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm256_set1_epi32(four_bytes(x, q * stride + g * GROUP));
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w0), ones);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w1), ones);
                        acc[0] = _mm256_add_epi32(acc[0], p0);
                        acc[1] = _mm256_add_epi32(acc[1], p1);
                    }
                }
            }
            for (q, acc) in acc.iter().enumerate() {
                for (h, &acc) in acc.iter().enumerate() {
                    // SAFETY: eight i32 into sums[q][b·16 + h·8..][..8].
                    unsafe {
                        _mm256_storeu_si256(
                            sums[q][b * LANES + h * 8..].as_mut_ptr() as *mut __m256i,
                            acc,
                        )
                    };
                }
            }
        }
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
        // Ragged task ends (output counts that are not whole tasks), input sizes with
        // padding and without, row counts around the kernels' blocks of four; the largest
        // products (2,100 × 64 at 41 rows) run on rayon's threads, the others on the caller's.
        for (outputs, inputs) in [(601, 29), (517, 64), (203, 160), (2100, 64)] {
            let w = Int8Matrix::quantize(&random(&mut rng, outputs * inputs, 0.5), outputs, inputs);
            for rows in [1, 3, 5, 16, 41] {
                let x = random(&mut rng, rows * inputs, 3.0);
                let mut scalar = vec![0f32; rows * outputs];
                w.product_with(&x, rows, &mut scalar, Kernel::Scalar);
                assert_eq!(
                    rows * outputs * inputs >= PARALLEL_MIN_PRODUCTS,
                    (outputs, rows) == (2100, 41)
                );
                for &kernel in Kernel::available() {
                    let mut simd = vec![0f32; rows * outputs];
                    w.product_with(&x, rows, &mut simd, kernel);
                    assert_eq!(
                        scalar.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        simd.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{outputs} × {inputs}, {rows} rows, {kernel:?}"
                    );
                }
            }
        }
    }

    /// Every kernel's result is the plain integer dot product of the quantized rows (so the
    /// packing loses nothing), including at the extremes where AVX2's i16 pair sums are
    /// largest (all activations at +63 against all weights at ±127).
    #[test]
    fn the_packed_sums_are_the_plain_integer_dot_products() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (outputs, inputs, rows) = (70, 37, 6);
        let mut weight = random(&mut rng, outputs * inputs, 0.5);
        weight[..inputs].fill(0.5);
        weight[inputs..2 * inputs].fill(-0.5);
        let mut x = random(&mut rng, rows * inputs, 2.0);
        x[..inputs].fill(1.5);
        let w = Int8Matrix::quantize(&weight, outputs, inputs);
        let (u, act_scales) = quantize_activations(&x, rows, inputs, inputs.div_ceil(GROUP));
        let stride = inputs.div_ceil(GROUP) * GROUP;
        let mut expected = vec![0f32; rows * outputs];
        let mut q = vec![0i8; inputs];
        for j in 0..outputs {
            let s = quantize_row(&weight[j * inputs..(j + 1) * inputs], &mut q);
            let shift: i32 = ACT_SHIFT * q.iter().map(|&v| v as i32).sum::<i32>();
            for r in 0..rows {
                let dot: i32 = u[r * stride..r * stride + inputs]
                    .iter()
                    .zip(&q)
                    .map(|(&a, &b)| a as i32 * b as i32)
                    .sum();
                expected[r * outputs + j] = (dot - shift) as f32 * (act_scales[r] * s);
            }
        }
        // The extreme rows quantize without error: 1.5 · 0.5 per column.
        assert!(
            (expected[0] - 0.75 * inputs as f32).abs() < 1e-4,
            "{}",
            expected[0]
        );
        assert!(
            (expected[1] + 0.75 * inputs as f32).abs() < 1e-4,
            "{}",
            expected[1]
        );
        for &kernel in Kernel::available() {
            let mut out = vec![0f32; rows * outputs];
            w.product_with(&x, rows, &mut out, kernel);
            assert_eq!(out, expected, "{kernel:?}");
        }
    }

    /// The int8 product is within the error quantization allows of the f32 one: per
    /// product, half a step of each factor's scale.
    #[test]
    fn the_product_is_within_the_quantization_error_of_f32() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (outputs, inputs, rows) = (300, 48, 7);
        let weight = random(&mut rng, outputs * inputs, 0.5);
        let x = random(&mut rng, rows * inputs, 2.0);
        let w = Int8Matrix::quantize(&weight, outputs, inputs);
        let mut out = vec![0f32; rows * outputs];
        w.product(&x, rows, &mut out);
        for r in 0..rows {
            let xr = &x[r * inputs..(r + 1) * inputs];
            let x_max = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
            for j in 0..outputs {
                let wj = &weight[j * inputs..(j + 1) * inputs];
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
                let got = out[r * outputs + j] as f64;
                assert!(
                    (got - exact).abs() <= bound,
                    "row {r}, output {j}: {got} vs {exact} (bound {bound})"
                );
            }
        }
    }

    /// Selected rows score as the same rows of the whole weight, and zero rows (of the
    /// weight or of x) give zeros.
    #[test]
    fn selected_words_and_zero_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (outputs, inputs, rows) = (90, 40, 3);
        let mut weight = random(&mut rng, outputs * inputs, 0.5);
        weight[17 * inputs..18 * inputs].fill(0.0);
        let mut x = random(&mut rng, rows * inputs, 1.0);
        x[inputs..2 * inputs].fill(0.0);
        let w = Int8Matrix::quantize(&weight, outputs, inputs);
        let mut all = vec![0f32; rows * outputs];
        w.product(&x, rows, &mut all);
        let ids = [17u32, 3, 89, 3];
        let picked = w.select(&ids);
        assert_eq!((picked.outputs(), picked.inputs()), (4, inputs));
        let mut some = vec![0f32; rows * ids.len()];
        picked.product(&x, rows, &mut some);
        for r in 0..rows {
            for (k, &id) in ids.iter().enumerate() {
                assert_eq!(some[r * ids.len() + k], all[r * outputs + id as usize]);
            }
            assert_eq!(all[r * outputs + 17], 0.0);
        }
        assert!(all[outputs..2 * outputs].iter().all(|&v| v == 0.0));
    }
}
