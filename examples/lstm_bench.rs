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
fn best_ms(iters: usize, f: impl FnMut() -> Result<()>) -> Result<f64> {
    Ok(timed(iters, f)?.0)
}

/// (fastest wall ms, mean process CPU ms) per call of `f`. CPU time is what the work costs
/// whatever else the machine runs; with 2 threads it includes rayon's spin-waiting.
fn timed(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    f()?;
    let cpu_start = process_cpu_ms();
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok((best, (process_cpu_ms() - cpu_start) / iters as f64))
}

/// User + system CPU time of this process from `/proc/self/stat` (10 ms ticks; NaN where
/// there is no procfs).
fn process_cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) * 10.0
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
    let (fused, fused_cpu) = timed(args.iters, || train_step(Recurrence::Auto))?;
    println!(
        "fused        fwd+bwd {fused:7.2} ms/iter best wall ({:5.1} GFLOP/s of matmul work), {fused_cpu:7.2} ms CPU/iter",
        gflops(fused)
    );
    if args.fused_only {
        return Ok(());
    }
    let (stepwise, stepwise_cpu) = timed(args.iters, || train_step(Recurrence::StepByStep))?;
    println!(
        "step-by-step fwd+bwd {stepwise:7.2} ms/iter best wall ({:5.1} GFLOP/s of matmul work), {stepwise_cpu:7.2} ms CPU/iter",
        gflops(stepwise)
    );
    println!(
        "speed-up fused vs step-by-step: {:.2}x wall, {:.2}x CPU",
        stepwise / fused,
        stepwise_cpu / fused_cpu
    );
    // Inference: weights that need no gradient, as when a model is loaded for translation.
    let frozen: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let lstm = Lstm::new(
        i,
        h,
        args.layer_norm,
        VarBuilder::from_tensors(frozen, DType::F32, &dev),
    )?;
    let xs = xs.detach();
    let (fused_fwd, fused_fwd_cpu) = timed(args.iters, || {
        lstm.forward_with(&xs, &mask, false, None, Recurrence::Auto)?;
        Ok(())
    })?;
    println!("fused        fwd only (no grad) {fused_fwd:7.2} ms/iter best wall, {fused_fwd_cpu:7.2} ms CPU/iter");
    // One decoding step (no gradient), as beam search calls it.
    let x0 = xs.narrow(1, 0, 1)?.squeeze(1)?;
    let state = rnmt::model::lstm::LstmState::zeros(b, h, DType::F32, &dev)?;
    let mut step_ms = Vec::new();
    for recurrence in [Recurrence::Auto, Recurrence::StepByStep] {
        step_ms.push(timed(args.iters * 10, || {
            lstm.step_with(&x0, &state, recurrence)?;
            Ok(())
        })?);
    }
    println!(
        "decoding step (no grad): fused {:.3} ms best wall, {:.3} ms CPU; candle ops {:.3} ms best wall, {:.3} ms CPU",
        step_ms[0].0, step_ms[0].1, step_ms[1].0, step_ms[1].1
    );
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
