//! Optimizer step time: rnmt's one-pass Adam vs candle_nn's AdamW, on parameter
//! shapes of the Multi30k config (vocab 8000, emb/hidden 256, 2+2 layers).
//!
//! cargo run --release --example bench_optim [-- STEPS]

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rnmt::train::optim::{clip_scale, global_grad_norm, Adam, AdamParams};

fn main() -> anyhow::Result<()> {
    let steps: usize = std::env::args().nth(1).map_or(Ok(20), |s| s.parse())?;
    let dev = Device::Cpu;
    let shapes: &[(usize, usize)] = &[
        (8000, 256), // source embeddings
        (8000, 256), // target embeddings (tied output)
        (1024, 256),
        (1024, 128),
        (1024, 256),
        (1024, 256),
        (1024, 512),
        (1024, 256),
        (1024, 512),
        (1024, 256),
        (256, 256),
        (256, 256),
        (8000, 1),
    ];
    let make = || -> anyhow::Result<Vec<Var>> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                Ok(Var::from_tensor(
                    &(Tensor::ones(s, DType::F32, &dev)? * (0.01 * i as f64))?,
                )?)
            })
            .collect()
    };
    let n: usize = shapes.iter().map(|(a, b)| a * b).sum();
    let loss_of = |vars: &[Var]| -> anyhow::Result<Tensor> {
        let mut l = Tensor::zeros((), DType::F32, &dev)?;
        for v in vars {
            l = (l + v.as_tensor().sqr()?.sum_all()?)?;
        }
        Ok(l)
    };

    let vars = make()?;
    let named = vars
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("p{i:02}"), v.clone()))
        .collect();
    let mut ours = Adam::new(named, AdamParams::default())?;
    let grads = loss_of(&vars)?.backward()?;
    let t = Instant::now();
    for _ in 0..steps {
        let norm = global_grad_norm(&grads, &vars)?;
        ours.step(&grads, 1e-3, clip_scale(norm, 5.0))?;
    }
    let ours_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;

    let vars = make()?;
    let mut reference = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let grads = loss_of(&vars)?.backward()?;
    let t = Instant::now();
    for _ in 0..steps {
        reference.step(&grads)?;
    }
    let ref_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    println!(
        "{n} parameters, {steps} steps: rnmt Adam (with global-norm clipping) {ours_ms:.2} ms/step, candle_nn AdamW {ref_ms:.2} ms/step"
    );
    Ok(())
}
