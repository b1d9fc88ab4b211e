//! Micro-benchmark of one GRU layer: forward + backward of the fused recurrence against the
//! step-by-step candle-ops path, and against the fused LSTM layer of the same sizes.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example gru_bench -- [--hidden 256] [--iters 20]
//! ```
//! Flags as `lstm_bench`: `--batch`, `--time`, `--hidden`, `--iters`, `--layer-norm`.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rnmt::model::gru::{Gru, Recurrence};
use rnmt::model::lstm::Lstm;

struct Args {
    batch: usize,
    time: usize,
    hidden: usize,
    iters: usize,
    layer_norm: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        batch: 64,
        time: 14,
        hidden: 256,
        iters: 20,
        layer_norm: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--layer-norm" {
            args.layer_norm = true;
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
            _ => bail!("unknown flag {flag} (--batch, --time, --hidden, --iters, --layer-norm)"),
        }
    }
    Ok(args)
}

/// Fastest wall time of `f` in milliseconds after two warm-up runs (the figure least
/// disturbed by other jobs on a shared machine).
fn best_ms(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let (b, t, h) = (args.batch, args.time, args.hidden);
    let i = h;
    let dev = Device::Cpu;
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
    let gru_vars = VarMap::new();
    let gru = Gru::new(
        i,
        h,
        args.layer_norm,
        VarBuilder::from_varmap(&gru_vars, DType::F32, &dev),
    )?;
    let lstm_vars = VarMap::new();
    let lstm = Lstm::new(
        i,
        h,
        args.layer_norm,
        VarBuilder::from_varmap(&lstm_vars, DType::F32, &dev),
    )?;
    let loss_backward = |hs: Tensor| -> Result<()> {
        (hs * &weights)?.sum_all()?.backward()?;
        Ok(())
    };
    println!(
        "B={b} T={t} I={i} H={h} layer_norm={} threads={}",
        args.layer_norm,
        rayon::current_num_threads()
    );
    let gru_fused = best_ms(args.iters, || {
        loss_backward(
            gru.forward_with(&xs, &mask, false, None, Recurrence::Auto)?
                .0,
        )
    })?;
    let gru_steps = best_ms(args.iters, || {
        loss_backward(
            gru.forward_with(&xs, &mask, false, None, Recurrence::StepByStep)?
                .0,
        )
    })?;
    let lstm_fused = best_ms(args.iters, || {
        loss_backward(
            lstm.forward_with(&xs, &mask, false, None, Recurrence::Auto)?
                .0,
        )
    })?;
    println!("GRU  fused        fwd+bwd {gru_fused:8.2} ms/iter best wall");
    println!(
        "GRU  step-by-step fwd+bwd {gru_steps:8.2} ms/iter best wall ({:.2}x the fused)",
        gru_steps / gru_fused
    );
    println!(
        "LSTM fused        fwd+bwd {lstm_fused:8.2} ms/iter best wall (GRU/LSTM {:.2})",
        gru_fused / lstm_fused
    );
    // Inference: parameters that need no gradient, as when a model is loaded to translate.
    let frozen: std::collections::HashMap<String, Tensor> = gru_vars
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let gru = Gru::new(
        i,
        h,
        args.layer_norm,
        VarBuilder::from_tensors(frozen, DType::F32, &dev),
    )?;
    let xs = xs.detach();
    let fwd = best_ms(args.iters, || {
        gru.forward(&xs, &mask, false)?;
        Ok(())
    })?;
    println!("GRU  fused        fwd only (no grad) {fwd:8.2} ms/iter best wall");
    let x0 = xs.narrow(1, 0, 1)?.squeeze(1)?;
    let h0 = Tensor::zeros((b, h), DType::F32, &dev)?;
    let mut step_ms = Vec::new();
    for recurrence in [Recurrence::Auto, Recurrence::StepByStep] {
        step_ms.push(best_ms(args.iters * 10, || {
            gru.step_with(&x0, &h0, recurrence)?;
            Ok(())
        })?);
    }
    println!(
        "GRU  decoding step (no grad): fused {:.3} ms, candle ops {:.3} ms best wall",
        step_ms[0], step_ms[1]
    );
    Ok(())
}
