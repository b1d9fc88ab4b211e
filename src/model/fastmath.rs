//! Vectorisable `exp` and `tanh` for f32 hot loops (softmax-loss, additive attention)
//! and lane-parallel reductions.
//!
//! libm's `expf`/`tanhf` are calls the compiler cannot vectorise; these are plain
//! arithmetic it can.

/// `exp` for softmaxes: `f32::exp` is a libm call the compiler cannot vectorise, and
/// exponentials dominate the loss. Range reduction `x = k ln2 + r` with
/// `|r| <= ln2 / 2`, then a degree-6 Taylor polynomial: relative error below 5e-7 (a few ulp) for
/// `x` in [-87, 88]; smaller inputs give ~1e-38 instead of 0, harmless in a softmax.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2²³ rounds to an integer with plain float adds.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k from the bits of k + 127 + ROUND, whose low mantissa bits hold k + 127: a float
    // → int `as` cast would saturate lane by lane and stop vectorisation.
    let biased = (k + (127.0 + ROUND))
        .to_bits()
        .wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// `tanh(x) = 1 - 2 / (exp(2x) + 1)`: absolute error below 1e-6 (relative error grows
/// for |x| < 1e-3, where only the absolute error matters to its users).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Whether the CPU has AVX2 and FMA. The default x86-64 target allows only SSE2, so the
/// loops of this module vectorise 4 lanes wide; hot kernels are compiled a second time for
/// AVX2+FMA (8 lanes; `#[multiversion]` or a `#[target_feature]` entry point) and chosen at
/// run time, so the binary still runs on older CPUs. Rust never contracts `a * b + c` into
/// an FMA on its own, so both versions give bit-identical results.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
