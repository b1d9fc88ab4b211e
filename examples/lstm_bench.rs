//! Micro-benchmark of one LSTM layer: forward + backward of the fused recurrence against the
//! step-by-step candle-ops path, and the matmul throughput it reaches against a big sgemm
//! through the same `gemm` crate.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example lstm_bench -- [--hidden 256] [--iters 20]
//! ```
//! Threads come from `RAYON_NUM_THREADS` (candle and the fused op both read it), so run it
//! once per thread count.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rnmt::model::lstm::{Lstm, Recurrence};

struct Args {
    batch: usize,
    time: usize,
    hidden: usize,
    iters: usize,
    layer_norm: bool,
    /// Skip the slow step-by-step path (for profiling the fused one).
    fused_only: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        batch: 64,
        time: 14,
        hidden: 256,
        iters: 20,
        layer_norm: false,
        fused_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--layer-norm" => args.layer_norm = true,
            "--fused-only" => args.fused_only = true,
            _ => (),
        }
        if flag == "--layer-norm" || flag == "--fused-only" {
            continue;
        }
        let value: usize = match it.next().map(|v| v.parse()) {
            Some(Ok(v)) => v,
            _ => bail!("{flag} needs a number"),
        };
        match flag.as_str() {
            "--batch" => args.batch = value,
            "--time" => args.time = value,
            "--hidden" => args.hidden = value,
            "--iters" => args.iters = value,
            _ => bail!("unknown flag {flag} (--batch, --time, --hidden, --iters, --layer-norm, --fused-only)"),
        }
    }
    Ok(args)
}

/// Fastest wall time of `f` in milliseconds, after two warm-up runs: on a machine shared
/// with other jobs the minimum is the figure least disturbed by them.
fn best_ms(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    f()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times.into_iter().fold(f64::INFINITY, f64::min))
}

/// How one matmul operand is laid out in memory.
#[derive(Clone, Copy)]
enum Layout {
    RowMajor,
    ColMajor,
}

/// GFLOP/s of `gemm` on an `m×k · k×n` product with the given operand layouts (row-major
/// destination), best of `iters`.
fn sgemm_gflops(
    (m, n, k): (usize, usize, usize),
    (lhs_layout, rhs_layout): (Layout, Layout),
    threads: usize,
    iters: usize,
) -> Result<f64> {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let strides = |layout, rows: usize, cols: usize| match layout {
        Layout::RowMajor => (cols as isize, 1),
        Layout::ColMajor => (1, rows as isize),
    };
    let (a_rs, a_cs) = strides(lhs_layout, m, k);
    let (b_rs, b_cs) = strides(rhs_layout, k, n);
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let ms = best_ms(iters, || {
        // SAFETY: a, b, c hold exactly m×k, k×n, m×n elements and the strides stay inside.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            )
        };
        Ok(())
    })?;
    Ok(2.0 * (m * n * k) as f64 / (ms * 1e-3) / 1e9)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let (b, t, h) = (args.batch, args.time, args.hidden);
    let i = h;
    let threads = rayon::current_num_threads();
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let lstm = Lstm::new(i, h, args.layer_norm, vb)?;
    let xs = Tensor::randn(0f32, 1.0, (b, t, i), &dev)?;
    // Ragged lengths as in a real batch: every row at least half the time.
    let mask: Vec<f32> = (0..b)
        .flat_map(|row| {
            let len = t - (row * 7) % (t / 2 + 1);
            (0..t).map(move |s| if s < len { 1.0 } else { 0.0 })
        })
        .collect();
    let mask = Tensor::from_vec(mask, (b, t), &dev)?;
    let weights = Tensor::randn(0f32, 1.0, (b, t, h), &dev)?;
    let train_step = |recurrence: Recurrence| -> Result<()> {
        let (hs, _) = lstm.forward_with(&xs, &mask, false, None, recurrence)?;
        let grads = (hs * &weights)?.sum_all()?.backward()?;
        if grads.get(&varmap.all_vars()[0]).is_none() {
            bail!("no gradient reached the weights");
        }
        Ok(())
    };
    println!(
        "LSTM layer B={b} T={t} I={i} H={h} layer_norm={} threads={threads}",
        args.layer_norm
    );
    // Matmul work of forward + backward: input projection, recurrence, and in backward the
    // input and weight gradients of both (the x-gradient of the input projection included).
    let flops = 3.0 * 2.0 * (b * t * 4 * h * (i + h)) as f64;
    let gflops = |ms: f64| flops / (ms * 1e-3) / 1e9;
    let fused = best_ms(args.iters, || train_step(Recurrence::Auto))?;
    println!(
        "fused      fwd+bwd {fused:8.2} ms/iter  ({:6.1} GFLOP/s of matmul work)",
        gflops(fused)
    );
    if args.fused_only {
        return Ok(());
    }
    let stepwise = best_ms(args.iters, || train_step(Recurrence::StepByStep))?;
    let fused_fwd = best_ms(args.iters, || {
        lstm.forward_with(&xs.detach(), &mask, false, None, Recurrence::Auto)?;
        Ok(())
    })?;
    println!(
        "step-by-step fwd+bwd {stepwise:6.2} ms/iter  ({:6.1} GFLOP/s)",
        gflops(stepwise)
    );
    println!("speed-up fused vs step-by-step: {:.2}x", stepwise / fused);
    println!("fused      fwd only (no grad) {fused_fwd:6.2} ms/iter");
    use Layout::{ColMajor, RowMajor};
    println!(
        "gemm 1024^3 on {threads} thread(s): {:6.1} GFLOP/s",
        sgemm_gflops((1024, 1024, 1024), (RowMajor, RowMajor), threads, 5)?
    );
    // The products the layer runs, with the layouts it gives gemm (1 thread each).
    let bt = b * t;
    for (what, dims, layouts, reps) in [
        (
            "step fwd  h·W_hhᵀ",
            (b, 4 * h, h),
            (RowMajor, ColMajor),
            args.time,
        ),
        (
            "step bwd  dA·W_hh",
            (b, h, 4 * h),
            (RowMajor, RowMajor),
            args.time,
        ),
        ("dW_hh = dAᵀ·H", (4 * h, h, bt), (ColMajor, RowMajor), 1),
        ("xproj = X·W_ihᵀ", (bt, 4 * h, i), (RowMajor, ColMajor), 1),
    ] {
        let gf = sgemm_gflops(dims, layouts, 1, 20)?;
        let ms = reps as f64 * 2.0 * (dims.0 * dims.1 * dims.2) as f64 / gf / 1e6;
        println!(
            "gemm {what:18} {:>4}x{:>4}x{:>4}: {gf:6.1} GFLOP/s, {ms:5.2} ms per layer pass",
            dims.0, dims.1, dims.2
        );
    }
    Ok(())
}
