//! Benchmark of the whole model: one training step (forward, label-smoothed loss,
//! backward, AdamW) on a synthetic batch, then greedy decoding, with the time split by
//! phase.
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example seq2seq_bench -- \
//!     [--hidden 256] [--vocab 8000] [--batch 64] [--len 14] [--steps 5] \
//!     [--attention normalized_additive] [--input-feeding] [--layers 2]
//! ```
//! Threads come from `RAYON_NUM_THREADS`. Sizes default to config A of the README's
//! performance section (vocab 8k, batch 64 × 14, emb/hid 256).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rnmt::batch::{Batch, EncodedPair};
use rnmt::model::{init_weights, ModelConfig, Seq2Seq};
use rnmt::search::{greedy_search, Ensemble, SearchConfig};
use rnmt::train::loss::LabelSmoothedLoss;

fn parse_args() -> Result<(ModelConfig, usize, usize, usize)> {
    let mut cfg = ModelConfig {
        embedding_size: 256,
        hidden_size: 256,
        ..ModelConfig::default()
    };
    let (mut batch, mut len, mut steps) = (64, 14, 5);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--input-feeding" {
            cfg.input_feeding = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        let number = || -> Result<usize> {
            value
                .parse()
                .with_context(|| format!("{flag} needs a number, got {value}"))
        };
        match flag.as_str() {
            "--hidden" => {
                cfg.hidden_size = number()?;
                cfg.embedding_size = cfg.hidden_size;
            }
            "--vocab" => {
                cfg.src_vocab_size = number()?;
                cfg.tgt_vocab_size = cfg.src_vocab_size;
            }
            "--layers" => {
                cfg.encoder_layers = number()?;
                cfg.decoder_layers = cfg.encoder_layers;
            }
            "--attention" => {
                cfg.attention = serde_json::from_str(&format!("\"{value}\""))
                    .with_context(|| format!("unknown attention {value}"))?
            }
            "--batch" => batch = number()?,
            "--len" => len = number()?,
            "--steps" => steps = number()?,
            _ => bail!("unknown flag {flag} (--hidden, --vocab, --layers, --attention, --batch, --len, --steps, --input-feeding)"),
        }
    }
    cfg.validate()?;
    Ok((cfg, batch, len, steps))
}

fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / n as f64
}

fn main() -> Result<()> {
    let (cfg, batch, len, steps) = parse_args()?;
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Seq2Seq::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    init_weights(&varmap, 1)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-3,
            ..Default::default()
        },
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let sentence = |rng: &mut ChaCha8Rng| -> Vec<u32> {
        (0..len - 1)
            .map(|_| rng.random_range(4..cfg.src_vocab_size as u32))
            .collect()
    };
    let pairs: Vec<EncodedPair> = (0..batch)
        .map(|_| EncodedPair {
            src: sentence(&mut rng),
            tgt: sentence(&mut rng),
        })
        .collect();
    let all: Vec<usize> = (0..batch).collect();
    let bt = Batch::new(&pairs, &all).to_tensors(&device)?;
    let loss_fn = LabelSmoothedLoss::new(0.1);
    let mut dropout = ChaCha8Rng::seed_from_u64(2);
    println!(
        "hidden {} vocab {} layers {}+{} {:?} input_feeding={} batch {batch}x{len}, threads {}",
        cfg.hidden_size,
        cfg.tgt_vocab_size,
        cfg.encoder_layers,
        cfg.decoder_layers,
        cfg.attention,
        cfg.input_feeding,
        candle_core::utils::get_num_threads()
    );
    let mut times = [Duration::ZERO; 4];
    // One warm-up step, not timed.
    for step in 0..=steps {
        let t0 = Instant::now();
        let logits = model.forward(&bt, Some(&mut dropout))?;
        let t1 = Instant::now();
        let (total, tokens) = loss_fn.forward(&logits, &bt.tgt_out, &bt.tgt_mask)?;
        let loss = (total / tokens as f64)?;
        let t2 = Instant::now();
        let grads = loss.backward()?;
        let t3 = Instant::now();
        opt.step(&grads)?;
        let t4 = Instant::now();
        if step > 0 {
            for (acc, d) in times.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3]) {
                *acc += d;
            }
        }
    }
    let total: Duration = times.iter().sum();
    println!(
        "train step {:.1} ms (forward {:.1}, loss {:.1}, backward {:.1}, adamw {:.1}): {:.0} target tokens/s",
        ms(total, steps),
        ms(times[0], steps),
        ms(times[1], steps),
        ms(times[2], steps),
        ms(times[3], steps),
        (batch * len * steps) as f64 / total.as_secs_f64()
    );
    let sources: Vec<Vec<u32>> = pairs.iter().map(|p| p.src.clone()).collect();
    let search = SearchConfig {
        beam: 1,
        nbest: 1,
        max_len_a: 0.0,
        max_len_b: len,
        ..SearchConfig::for_model(&cfg)
    };
    let start = Instant::now();
    let out = greedy_search(&Ensemble::single(&model), &sources, &search, &device)?;
    let elapsed = start.elapsed();
    println!(
        "greedy decoding of {} sentences (max {len} tokens): {:.1} ms, {:.0} sentences/s",
        out.len(),
        ms(elapsed, 1),
        out.len() as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
