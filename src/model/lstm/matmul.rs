//! The one matrix product the recurrent kernels (LSTM and GRU) and the fused output
//! layer of training (`train::loss::OutputLoss`) need, on slices.

use gemm::Parallelism;

use crate::model::fastmath::Real;

/// `dst[m×n] = lhs[m×k] · rhs[k×n]`; each operand is (data, row stride, column stride),
/// `dst` is row-major with row stride `dst_rs`. Bounds are checked here so that the one
/// unsafe call below can trust them.
pub(crate) fn matmul<T: Real>(
    shape: (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    lhs: (&[T], usize, usize),
    rhs: (&[T], usize, usize),
) {
    // Single-threaded: the recurrent kernels' parallelism comes from splitting the batch
    // into blocks.
    matmul_on_threads(1, shape, dst, dst_rs, lhs, rhs)
}

/// [`matmul`] split over `threads` rayon threads by gemm itself, for one large product.
pub fn matmul_on_threads<T: Real>(
    threads: usize,
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
            match threads {
                0 | 1 => Parallelism::None,
                n => Parallelism::Rayon(n),
            },
        )
    }
}
