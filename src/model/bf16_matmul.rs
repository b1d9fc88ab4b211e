//! `A·B` with bf16 inputs and f32 sums on Intel AMX (Advanced Matrix Extensions: Xeon of
//! the 4th generation, Sapphire Rapids, and later), for the training step's largest
//! products (opt-in: `precision = "bf16"`). Mixed precision as on GPUs and TPUs: the
//! weights, their gradients and Adam stay f32; only the products' inputs are rounded to
//! bf16 (8 significant bits), and the products are summed in f32.
//!
//! One AMX instruction, `tdpbf16ps`, multiplies a 16 × 32 bf16 tile by a 32 × 16 one and
//! adds the 16 × 16 result into an f32 tile: 16,384 multiply-adds, where AVX-512 does 16
//! per instruction. The kernel keeps a 32 × 32 block of the result in four tiles and walks
//! the shared dimension 32 at a time: two tiles of `A` (16 rows each), two of `B` (16
//! columns each), four products.
//!
//! `A` is packed row-major in bf16, rows padded to a multiple of 32 and the shared
//! dimension to a multiple of 32 (the padding is zero, so it adds nothing). `B` is packed
//! in panels of 32 columns, each panel `[k/2][32][2]`: the two values of a column at rows
//! `2i` and `2i + 1` side by side, the layout `tdpbf16ps` reads. A panel is contiguous (16
//! KB for k = 256). Each task keeps one block of 32 rows of `A` in the L1 cache and walks a
//! pass of panels that stays in the L2 cache ([`PANELS_PER_PASS`]).
//!
//! Written by hand: the gemm crate and candle have no AMX kernels, and Rust's AMX
//! intrinsics are not stable, hence inline assembly. Linux hands out the 8 KB of tile
//! state only to a process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which
//! [`available`] does once.

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};

use super::fused::slice_of;

use multiversion::multiversion;
use rayon::prelude::*;

/// Rows (and columns) of the block the kernel computes: two tiles by two.
const BLOCK: usize = 32;
/// The shared dimension a tile row holds: 32 bf16 = 64 bytes.
const DEPTH: usize = 32;
/// Panels of `B` per pass over the rows of `A`: 1,024 columns, whose panels (512 KB at
/// k = 256) stay in the L2 cache while every row block of `A` meets them.
const PANELS_PER_PASS: usize = 32;

/// Whether this CPU and kernel run AMX bf16 products (checked once per process).
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            amx::cpu_has_amx_bf16() && amx::request_tile_data()
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// `x` rounded to the nearest bf16 (ties to even), as bits; NaN stays NaN. Branch-free,
/// so that the loops over rows vectorise.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x40;
    (if bits & 0x7fff_ffff > 0x7f80_0000 {
        quiet_nan
    } else {
        rounded
    }) as u16
}

/// The f32 value of bf16 bits.
pub fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `src` rounded to bf16 into `dst`, elementwise.
#[multiversion(targets("x86_64+avx512f+avx512bw", "x86_64+avx2"))]
fn round_into(src: &[f32], dst: &mut [u16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = bf16_bits(x);
    }
}

/// A matrix operand: its values, row stride and column stride.
type Operand<'a> = (&'a [f32], usize, usize);

/// `dst = A·B` for `A` `m × k` and `B` `k × n` given by their slices and row / column
/// strides, `dst` with row stride `dst_rs`: the inputs rounded to bf16, the products
/// summed in f32, on the current rayon pool. Panics where [`available`] is false (callers
/// check it when the run starts) or an index falls outside a slice.
pub fn matmul_bf16(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: Operand,
    rhs: Operand,
) {
    assert!(available(), "bf16 matmul: this CPU has no AMX-BF16");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * dst_rs + n <= dst.len(),
        "bf16 matmul: dst out of bounds"
    );
    if k == 0 {
        for row in 0..m {
            dst[row * dst_rs..row * dst_rs + n].fill(0.0);
        }
        return;
    }
    let (a, a_rs, a_cs) = lhs;
    let (b, b_rs, b_cs) = rhs;
    if a_cs != 1 && a_rs == 1 && b_cs == 1 {
        // A column-major A (`Gᵀ` of `dW = Gᵀ·x`) would be packed by a gather of single
        // values; `Cᵀ = Bᵀ·Aᵀ` reads both row by row instead (`Bᵀ` is the small one).
        product(
            (n, m, k),
            dst,
            (1, dst_rs),
            (b, b_cs, b_rs),
            (a, a_cs, a_rs),
        );
    } else {
        product((m, n, k), dst, (dst_rs, 1), lhs, rhs);
    }
}

thread_local! {
    /// Whether this thread is inside a training step with bf16 products.
    static BF16_PRODUCTS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a training step's forward and backward pass) with its large products in
/// bf16 on this thread when `on`: the output layer's ([`crate::train::loss::OutputLoss`])
/// and the recurrent layers' input projections ([`xs_times_w_t`]). Validation and search
/// never run inside it, so they stay f32.
pub fn with_bf16_products<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BF16_PRODUCTS.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(BF16_PRODUCTS.with(|c| c.replace(on)));
    f()
}

/// Whether products on this thread run in bf16 ([`with_bf16_products`]).
pub fn bf16_products() -> bool {
    BF16_PRODUCTS.with(|c| c.get())
}

/// `x·Wᵀ` for `x [rows, input]` and `W [outputs, input]` (f32 on the CPU) with the
/// product and the two of its backward in bf16: the recurrent layers' input projection
/// over a whole sequence inside [`with_bf16_products`].
pub fn xs_times_w_t(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2(weight, XsTimesWt)
}

struct XsTimesWt;

impl CustomOp2 for XsTimesWt {
    fn name(&self) -> &'static str {
        "bf16-x-times-w-transposed"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (slice_of(s1, l1, "x")?, slice_of(s2, l2, "W")?);
        let (m, k) = l1.shape().dims2()?;
        let (n, w_k) = l2.shape().dims2()?;
        if w_k != k {
            candle_core::bail!("bf16 product: x [{m}, {k}] and W [{n}, {w_k}]");
        }
        let mut out = vec![0f32; m * n];
        matmul_bf16((m, n, k), &mut out, n, (x, k, 1), (w, 1, k));
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (Storage::Cpu(gs), Storage::Cpu(xs), Storage::Cpu(ws)) = (&*gs, &*xs, &*ws) else {
            candle_core::bail!("bf16 product: not on the CPU");
        };
        let (g, x_data, w_data) = (
            slice_of(gs, gl, "the gradient")?,
            slice_of(xs, xl, "x")?,
            slice_of(ws, wl, "W")?,
        );
        let mut dx = vec![0f32; m * k];
        matmul_bf16((m, k, n), &mut dx, k, (g, n, 1), (w_data, k, 1));
        let mut dw = vec![0f32; n * k];
        matmul_bf16((n, k, m), &mut dw, k, (g, 1, n), (x_data, k, 1));
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (m, k), device)?),
            Some(Tensor::from_vec(dw, (n, k), device)?),
        ))
    }
}

/// [`matmul_bf16`] into `dst` with strides `(rs, cs)`, one of them 1.
fn product(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    lhs: Operand,
    rhs: Operand,
) {
    let a = pack_rows(m, k, lhs);
    let b = pack_panels(k, n, rhs);
    let (blocks, depth) = (m.div_ceil(BLOCK), k.div_ceil(DEPTH) * DEPTH);
    let panels = n.div_ceil(BLOCK);
    let dst = SharedRows(dst.as_mut_ptr(), dst.len());
    for first in (0..panels).step_by(PANELS_PER_PASS) {
        let pass = first..(first + PANELS_PER_PASS).min(panels);
        (0..blocks).into_par_iter().for_each(|block| {
            let mut out = [0f32; BLOCK * BLOCK];
            let rows = BLOCK.min(m - block * BLOCK);
            let a_block = &a[block * BLOCK * depth..(block + 1) * BLOCK * depth];
            let _tiles = amx::Tiles::configure();
            for panel in pass.clone() {
                let b_panel = &b[panel * BLOCK * depth..(panel + 1) * BLOCK * depth];
                let cols = BLOCK.min(n - panel * BLOCK);
                let (row0, col0) = (block * BLOCK, panel * BLOCK);
                if dst_cs == 1 && rows == BLOCK && cols == BLOCK {
                    // A whole block of a row-major result: the tiles go straight to `dst`.
                    let first = row0 * dst_rs + col0;
                    assert!(
                        first + (BLOCK - 1) * dst_rs + BLOCK <= dst.1,
                        "bf16 matmul: dst out of bounds"
                    );
                    // SAFETY: `available()` held above, the tiles are configured on this
                    // thread, both packed blocks hold `depth` (a multiple of 32) columns,
                    // the block lies inside `dst` (just checked), and each task writes
                    // rows of its own.
                    unsafe { amx::block(a_block, b_panel, depth, dst.0.add(first), dst_rs) };
                    continue;
                }
                // SAFETY: as above, into `out`, 32 × 32.
                unsafe { amx::block(a_block, b_panel, depth, out.as_mut_ptr(), BLOCK) };
                if dst_cs == 1 {
                    for (r, sums) in out.chunks(BLOCK).take(rows).enumerate() {
                        // SAFETY: in bounds (checked by the caller), and each block
                        // writes rows of its own, so no two threads write one element.
                        unsafe { dst.write((row0 + r) * dst_rs + col0, &sums[..cols]) };
                    }
                } else {
                    // The result transposed: column c of the block is a row of `dst`.
                    let mut column = [0f32; BLOCK];
                    for c in 0..cols {
                        for (r, v) in column.iter_mut().enumerate().take(rows) {
                            *v = out[r * BLOCK + c];
                        }
                        // SAFETY: as above, with rows and columns swapped.
                        unsafe { dst.write((col0 + c) * dst_cs + row0, &column[..rows]) };
                    }
                }
            }
        });
    }
}

/// `dst`'s buffer shared by the threads that write disjoint parts of it.
struct SharedRows(*mut f32, usize);
unsafe impl Sync for SharedRows {}

impl SharedRows {
    /// # Safety
    /// `start + values.len()` must be within the buffer and no other thread may write
    /// those elements at the same time.
    unsafe fn write(&self, start: usize, values: &[f32]) {
        assert!(
            start + values.len() <= self.1,
            "bf16 matmul: dst out of bounds"
        );
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.0.add(start), values.len());
    }
}

/// `A` (`m × k`, strides `rs`, `cs`) as bf16, row-major, `m` padded to a multiple of
/// [`BLOCK`] and `k` to one of [`DEPTH`], zeros in the padding.
fn pack_rows(m: usize, k: usize, (a, rs, cs): Operand) -> Vec<u16> {
    assert!(
        (m - 1) * rs + (k - 1) * cs < a.len(),
        "bf16 matmul: lhs out of bounds"
    );
    let depth = k.div_ceil(DEPTH) * DEPTH;
    let mut packed = vec![0u16; m.div_ceil(BLOCK) * BLOCK * depth];
    packed
        .par_chunks_mut(BLOCK * depth)
        .enumerate()
        .for_each(|(block, out)| {
            let rows = BLOCK.min(m - block * BLOCK);
            for (r, row) in out.chunks_mut(depth).take(rows).enumerate() {
                let first = (block * BLOCK + r) * rs;
                if cs == 1 {
                    round_into(&a[first..first + k], &mut row[..k]);
                } else {
                    // A transposed source: the small operand here (see matmul_bf16).
                    for (col, o) in row[..k].iter_mut().enumerate() {
                        *o = bf16_bits(a[first + col * cs]);
                    }
                }
            }
        });
    packed
}

/// `B` (`k × n`, strides `rs`, `cs`) in panels of [`BLOCK`] columns, each `[depth/2]
/// [BLOCK][2]` (see the module's notes), zeros in the padding.
fn pack_panels(k: usize, n: usize, (b, rs, cs): Operand) -> Vec<u16> {
    assert!(
        (k - 1) * rs + (n - 1) * cs < b.len(),
        "bf16 matmul: rhs out of bounds"
    );
    let depth = k.div_ceil(DEPTH) * DEPTH;
    let mut packed = vec![0u16; n.div_ceil(BLOCK) * BLOCK * depth];
    if cs == 1 {
        // Rows of B are contiguous: each task takes a group of panels and walks the rows
        // in pairs, rounding both rows' part once (long runs that vectorise) and
        // interleaving them, 32 columns at a time, into each panel's row.
        const GROUP: usize = 8;
        packed
            .par_chunks_mut(GROUP * BLOCK * depth)
            .enumerate()
            .for_each(|(group, out)| {
                let first_col = group * GROUP * BLOCK;
                let cols = (GROUP * BLOCK).min(n - first_col);
                let mut pair = [vec![0u16; GROUP * BLOCK], vec![0u16; GROUP * BLOCK]];
                for i in 0..k.div_ceil(2) {
                    for (half, rounded) in pair.iter_mut().enumerate() {
                        let row = 2 * i + half;
                        if row < k {
                            let first = row * rs + first_col;
                            round_into(&b[first..first + cols], &mut rounded[..cols]);
                        } else {
                            rounded.fill(0);
                        }
                    }
                    for (panel, panel_out) in out.chunks_exact_mut(BLOCK * depth).enumerate() {
                        let dst = &mut panel_out[i * 2 * BLOCK..(i + 1) * 2 * BLOCK];
                        let (top, bottom) = (
                            &pair[0][panel * BLOCK..(panel + 1) * BLOCK],
                            &pair[1][panel * BLOCK..(panel + 1) * BLOCK],
                        );
                        for ((two, &upper), &lower) in dst.chunks_exact_mut(2).zip(top).zip(bottom)
                        {
                            two[0] = upper;
                            two[1] = lower;
                        }
                    }
                }
            });
        return packed;
    }
    packed
        .par_chunks_mut(BLOCK * depth)
        .enumerate()
        .for_each(|(panel, out)| {
            let cols = BLOCK.min(n - panel * BLOCK);
            // Columns of B are contiguous (`Wᵀ` of `x·Wᵀ`): a column, rounded, goes to
            // every other value of the panel's column.
            let mut column = vec![0u16; k];
            for c in 0..cols {
                let first = (panel * BLOCK + c) * cs;
                if rs == 1 {
                    round_into(&b[first..first + k], &mut column);
                } else {
                    for (row, o) in column.iter_mut().enumerate() {
                        *o = bf16_bits(b[first + row * rs]);
                    }
                }
                for (row, &v) in column.iter().enumerate() {
                    out[(row / 2) * 2 * BLOCK + c * 2 + row % 2] = v;
                }
            }
        });
    packed
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;

    use super::BLOCK;

    /// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-BF16 (bit 22). Read directly because
    /// `is_x86_feature_detected!` does not know AMX in stable Rust.
    pub fn cpu_has_amx_bf16() -> bool {
        use std::arch::x86_64::{__cpuid, __cpuid_count};
        if __cpuid(0).eax < 7 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        edx & (1 << 24) != 0 && edx & (1 << 22) != 0
    }

    /// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`: Linux's permission for this
    /// process to use the tile registers.
    pub fn request_tile_data() -> bool {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: a system call with integer arguments; it changes only which CPU state
        // the kernel saves for this process.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    /// The tile configuration (`ldtilecfg`'s 64 bytes): palette 1, tiles 0–7 of 16 rows
    /// of 64 bytes, tiles 8–15 (which palette 1 does not have) zero.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    /// The tiles configured on this thread until dropped (`tilerelease`).
    pub struct Tiles(());

    impl Tiles {
        pub fn configure() -> Self {
            let mut config = Config {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                bytes_per_row: [0; 16],
                rows: [0; 16],
            };
            for tile in 0..8 {
                config.bytes_per_row[tile] = 64;
                config.rows[tile] = 16;
            }
            // SAFETY: callers checked `available()`; the configuration is valid for
            // palette 1.
            unsafe { asm!("ldtilecfg [{0}]", in(reg) &config, options(nostack)) };
            Tiles(())
        }
    }

    impl Drop for Tiles {
        fn drop(&mut self) {
            // SAFETY: releases the tiles this value configured.
            unsafe { asm!("tilerelease", options(nostack)) };
        }
    }

    /// `out (32 × 32, row stride out_rs floats) = a_block (32 × depth, bf16, row-major) ·
    /// b_panel (depth/2 × 32 × 2)`.
    ///
    /// # Safety
    /// The tiles must be configured on this thread ([`Tiles`]); `depth` must be a positive
    /// multiple of 32, both blocks hold `32 · depth` values, and `out` must be valid for
    /// writes of 32 rows of 32 floats, `out_rs` floats apart.
    pub unsafe fn block(
        a_block: &[u16],
        b_panel: &[u16],
        depth: usize,
        out: *mut f32,
        out_rs: usize,
    ) {
        debug_assert!(depth > 0 && depth.is_multiple_of(32));
        debug_assert!(a_block.len() >= BLOCK * depth && b_panel.len() >= BLOCK * depth);
        let a_top = a_block.as_ptr();
        let a_bottom = a_block.as_ptr().add(16 * depth);
        let b_left = b_panel.as_ptr();
        // Column 16's pair starts 32 values into a panel row.
        let b_right = b_panel.as_ptr().add(32);
        let c = out;
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a_top} + {a_stride}*1]",
            "tileloadd tmm5, [{a_bottom} + {a_stride}*1]",
            "tileloadd tmm6, [{b_left} + {b_stride}*1]",
            "tileloadd tmm7, [{b_right} + {b_stride}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a_top}, 64",
            "add {a_bottom}, 64",
            "add {b_left}, {b_step}",
            "add {b_right}, {b_step}",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c_top_left} + {c_stride}*1], tmm0",
            "tilestored [{c_top_right} + {c_stride}*1], tmm1",
            "tilestored [{c_bottom_left} + {c_stride}*1], tmm2",
            "tilestored [{c_bottom_right} + {c_stride}*1], tmm3",
            a_top = inout(reg) a_top => _,
            a_bottom = inout(reg) a_bottom => _,
            b_left = inout(reg) b_left => _,
            b_right = inout(reg) b_right => _,
            steps = inout(reg) depth / 32 => _,
            a_stride = in(reg) depth * 2,
            // A panel row holds 32 columns × 2 values × 2 bytes; a step uses 16 rows.
            b_stride = in(reg) BLOCK * 4,
            b_step = in(reg) 16 * BLOCK * 4,
            c_top_left = in(reg) c,
            c_top_right = in(reg) c.add(16),
            c_bottom_left = in(reg) c.add(16 * out_rs),
            c_bottom_right = in(reg) c.add(16 * out_rs + 16),
            c_stride = in(reg) out_rs * 4,
            options(nostack),
        );
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod amx {
    pub struct Tiles(());
    impl Tiles {
        pub fn configure() -> Self {
            unreachable!("AMX is x86-64 Linux only")
        }
    }
    pub unsafe fn block(_: &[u16], _: &[u16], _: usize, _: *mut f32, _: usize) {
        unreachable!("AMX is x86-64 Linux only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `A·B` in f64 from the bf16-rounded inputs: what the kernel computes, up to the
    /// order and precision (f32) of its sums.
    fn reference(
        (m, n, k): (usize, usize, usize),
        (a, ars, acs): (&[f32], usize, usize),
        (b, brs, bcs): (&[f32], usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let round = |x: f32| bf16_value(bf16_bits(x)) as f64;
        let mut out = vec![0.0; m * n];
        let mut magnitude = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let p = round(a[i * ars + l * acs]) * round(b[l * brs + j * bcs]);
                    out[i * n + j] += p;
                    magnitude[i * n + j] += p.abs();
                }
            }
        }
        (out, magnitude)
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 20_001) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    /// The recurrent layers' bf16 input projection and its backward, through candle's
    /// autograd, against f64 products of the bf16-rounded operands (the upstream gradient
    /// is rounded too, as the backward's products round it).
    #[test]
    fn bf16_projection_and_its_gradients_match_the_rounded_f64_products() {
        if !available() {
            eprintln!("no AMX-BF16 on this CPU: the op is not run");
            return;
        }
        use candle_core::{DType, Device, Var};
        let (m, n, k) = (37, 45, 70);
        let dev = Device::Cpu;
        let tensor = |v: Vec<f32>, shape: (usize, usize)| Tensor::from_vec(v, shape, &dev).unwrap();
        let x = Var::from_tensor(&tensor(values(m * k, 5), (m, k))).unwrap();
        let w = Var::from_tensor(&tensor(values(n * k, 6), (n, k))).unwrap();
        let upstream = tensor(values(m * n, 7), (m, n));
        let y = xs_times_w_t(x.as_tensor(), w.as_tensor()).unwrap();
        let grads = (&y * &upstream)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let rounded = |t: &Tensor| {
            t.to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
        };
        let (x64, w64, g64) = (
            rounded(x.as_tensor()),
            rounded(w.as_tensor()),
            rounded(&upstream),
        );
        let cases = [
            (y, x64.matmul(&w64.t().unwrap()).unwrap(), "y"),
            (
                grads.get(x.as_tensor()).unwrap().clone(),
                g64.matmul(&w64).unwrap(),
                "dx",
            ),
            (
                grads.get(w.as_tensor()).unwrap().clone(),
                g64.t().unwrap().matmul(&x64).unwrap(),
                "dW",
            ),
        ];
        for (got, want, name) in cases {
            let got = got.to_dtype(DType::F64).unwrap();
            let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
            let largest = want.abs().unwrap().max_all().unwrap();
            let (diff, largest) = (
                diff.to_scalar::<f64>().unwrap(),
                largest.to_scalar::<f64>().unwrap(),
            );
            assert!(largest > 0.1, "{name}: nothing to compare");
            // f32 sums of at most 70 products of values below 1.
            assert!(diff < 1e-5 * largest, "{name}: {diff} of {largest}");
        }
    }

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(bf16_value(bf16_bits(1.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(-2.5)), -2.5);
        // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: the even one, 1, wins.
        assert_eq!(bf16_value(bf16_bits(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_value(bf16_bits(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(bf16_value(bf16_bits(f32::NAN)).is_nan());
        assert_eq!(bf16_value(bf16_bits(f32::INFINITY)), f32::INFINITY);
    }

    /// Every layout the output layer uses (plain, `Wᵀ`, a transposed left side), with
    /// edges: sizes that are not multiples of the block or the depth.
    #[test]
    fn amx_products_match_the_f64_reference_of_the_rounded_inputs() {
        if !available() {
            eprintln!("no AMX-BF16 on this CPU: the kernel is not run (precision = bf16 is refused; tests/train_config.rs checks that)");
            return;
        }
        for &(m, n, k) in &[(1, 1, 1), (37, 45, 70), (64, 96, 256), (33, 1030, 31)] {
            let a = values(m * k, 1 + m as u64);
            let b = values(k * n, 2 + n as u64);
            // (lhs strides, rhs strides): row-major both; B given as its transpose's
            // storage (B[l][j] = bt[j·k + l]); A given as its transpose's storage.
            let layouts = [((k, 1), (n, 1)), ((k, 1), (1, k)), ((1, m), (n, 1))];
            for ((ars, acs), (brs, bcs)) in layouts {
                let mut dst = vec![f32::NAN; m * n + 3];
                matmul_bf16((m, n, k), &mut dst, n, (&a, ars, acs), (&b, brs, bcs));
                let (want, magnitude) = reference((m, n, k), (&a, ars, acs), (&b, brs, bcs));
                for i in 0..m * n {
                    // f32 sums of k terms: |error| ≤ k · 2⁻²⁴ · Σ|products|.
                    let tolerance = k as f64 * 2f64.powi(-24) * magnitude[i] + 1e-30;
                    assert!(
                        (dst[i] as f64 - want[i]).abs() <= tolerance,
                        "{m}×{n}×{k} layout {:?}: [{i}] {} vs {}",
                        ((ars, acs), (brs, bcs)),
                        dst[i],
                        want[i]
                    );
                }
                // Nothing is written past the result.
                assert!(dst[m * n..].iter().all(|x| x.is_nan()));
            }
        }
    }
}
