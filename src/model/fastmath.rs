//! The float arithmetic every CPU kernel shares: the [`Real`] element trait (f32 for
//! training and translation, f64 for exact gradient checks), vectorisable `exp`, `tanh`
//! and `sigmoid` for f32, and lane-parallel reductions.
//!
//! libm's `expf`/`tanhf` are calls the compiler cannot vectorise; these are plain
//! arithmetic it can.
//!
//! # Run-time CPU dispatch
//! The default x86-64 target allows only SSE2, so loops built on this module vectorise 4
//! lanes wide. Every hot kernel (LSTM recurrence and its backward, additive attention score,
//! log-softmax, loss) is a free function marked `#[multiversion(targets("x86_64+avx2+fma"))]`:
//! compiled a second time for AVX2+FMA (8 lanes) and chosen at run time, so the binary still
//! runs on older CPUs. What it calls must be `#[inline(always)]` to be compiled for the
//! wider target too. Rust never contracts `a * b + c` into an FMA on its own, so both
//! versions give bit-identical results.

/// The float types the kernels run on: f32 with the fast functions below, f64 exactly (so
/// that finite-difference gradient checks can be tight).
///
/// The methods end in `_` (except `sigmoid`, which std lacks) so that they never resolve to
/// the inherent `f32::tanh`/`f64::sqrt`: in code written for a concrete type an inherent
/// method wins over a trait method of the same name, which would silently call libm.
pub trait Real:
    candle_core::WithDType
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + std::ops::MulAssign
{
    fn sigmoid(self) -> Self;
    fn tanh_(self) -> Self;
    fn sqrt_(self) -> Self;
    /// The slice as f32 where `Self` is f32 (the int8 products take f32 only).
    fn as_f32(s: &[Self]) -> Option<&[f32]>;
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

impl Real for f32 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        sigmoid(self)
    }
    fn as_f32(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
    fn as_f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
        Some(s)
    }
    #[inline(always)]
    fn tanh_(self) -> Self {
        tanh(self)
    }
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sigmoid(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
    fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
    #[inline(always)]
    fn tanh_(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn sqrt_(self) -> Self {
        self.sqrt()
    }
}

/// `exp` for f32: Cephes `expf` (relative error below 1e-7 for `x` in [-87, 88]; smaller
/// inputs give ~1e-38 instead of 0, harmless in a softmax or a sigmoid), written so that
/// loops calling it vectorise.
///
/// Range reduction `x = k ln2 + r` with `|r| <= ln2 / 2` (ln 2 split in two so that `k ln2`
/// is exact), then Cephes' minimax polynomial for `e^r`. This is the `exp` the LSTM gates
/// have always used, so trained models translate exactly as before; a degree-6 Taylor
/// polynomial was a little cheaper per call but three times less accurate, and no faster
/// in the LSTM as a whole.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer with plain float adds.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x > 88.0 { 88.0 } else { x };
    let x = if x < -87.0 { -87.0 } else { x };
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    y * pow2(k)
}

/// `2^k` for an integral `k` in [-127, 128], from the bits of `k + 127 + ROUND`, whose low
/// mantissa bits hold `k + 127`. A float → int `as` cast gives the same bits but saturates
/// lane by lane, which made `exp` twice as slow.
#[inline(always)]
fn pow2(k: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let biased = (k + (127.0 + ROUND))
        .to_bits()
        .wrapping_sub(ROUND.to_bits());
    f32::from_bits(biased << 23)
}

/// `tanh(x) = 1 - 2 / (1 + exp(2x))`: absolute error below 1e-6 (relative error grows
/// for |x| < 1e-3, where only the absolute error matters to its users).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

/// `1 / (1 + exp(-x))`, absolute error below 1e-6.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `exp` for the softmaxes of the loss and of search (`log_softmax`): range reduction as in
/// [`exp`], then a degree-6 Taylor polynomial (relative error below 5e-7 for `x` in [-87,
/// 88]). It is kept beside [`exp`] only because every model trained so far, and the
/// tolerances of the tests that train tiny models, come from it: switching the loss to
/// [`exp`] changes what training learns (a tiny test model's shortlist agreement moved
/// past its bound). Retire it together with re-measured test tolerances.
#[inline(always)]
pub fn softmax_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * pow2(k)
}

/// Independent accumulators: a single running max or sum is a dependency chain the
/// compiler may not reorder (float addition is not associative), which leaves the
/// loop latency-bound; eight lanes let it use SIMD.
pub const LANES: usize = 8;

#[inline(always)]
pub fn lanes_fold(row: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> [f32; LANES] {
    let mut acc = [init; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = f(*a, x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(rest) {
        *a = f(*a, x);
    }
    acc
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (fast, exact) = (super::exp(x) as f64, (x as f64).exp());
            assert!(
                ((fast - exact) / exact).abs() < 5e-7,
                "exp({x}) = {fast}, not {exact}"
            );
            x += 0.013;
        }
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1e9) < 1e-37);
    }

    #[test]
    fn tanh_is_accurate() {
        let mut x = -50.0f32;
        while x < 50.0 {
            let (fast, exact) = (super::tanh(x) as f64, (x as f64).tanh());
            assert!(
                (fast - exact).abs() < 1e-6,
                "tanh({x}) = {fast}, not {exact}"
            );
            x += 0.0037;
        }
        assert_eq!(super::tanh(0.0), 0.0);
        assert_eq!(super::tanh(1e9), 1.0);
        assert_eq!(super::tanh(-1e9), -1.0);
    }

    #[test]
    fn sigmoid_is_accurate() {
        let mut x = -50.0f32;
        while x < 50.0 {
            let (fast, exact) = (super::sigmoid(x) as f64, 1.0 / (1.0 + (-x as f64).exp()));
            assert!(
                (fast - exact).abs() < 1e-6,
                "sigmoid({x}) = {fast}, not {exact}"
            );
            x += 0.0037;
        }
        assert_eq!(super::sigmoid(0.0), 0.5);
        assert_eq!(super::sigmoid(1e9), 1.0);
    }

    #[test]
    fn lanes_fold_covers_every_element() {
        let v: Vec<f32> = (1..=21).map(|i| i as f32).collect();
        let sum: f32 = super::lanes_fold(&v, 0.0, |a, x| a + x).iter().sum();
        assert_eq!(sum, 231.0);
        let max = super::lanes_fold(&v, f32::MIN, f32::max)
            .into_iter()
            .fold(f32::MIN, f32::max);
        assert_eq!(max, 21.0);
    }
}
