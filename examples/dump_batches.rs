//! Writes the first batches of epoch 0 exactly as `rnmt train` builds them, so the
//! PyTorch reference (benches/torch_ref) trains on identical batches, and optionally the
//! freshly initialised model plus rnmt's losses on those batches, so the reference can
//! prove it computes the same function.
//!
//! ```text
//! cargo run --release --example dump_batches -- --config configs/multi30k-de-en.toml \
//!     [--set KEY=VALUE ...] --batches 20 --out batches.jsonl \
//!     [--model-out DIR --check-steps 3 --check-lr 0.001]
//! ```
//! The config is read like `rnmt train` reads it (`data`, `max_tokens`, `seed`, [model];
//! vocabulary sizes come from the prepared tokenizers). Each output line is one batch:
//! `{"src": [[u32]], "src_lengths": [..], "tgt_in": [[u32]], "tgt_out": [[u32]],
//! "tgt_lengths": [..], "target_tokens": N}` (rows padded with 0, lengths count EOS/BOS).
//!
//! With `--model-out DIR` it also saves the model initialised as the trainer does
//! (`config.json` + `model.safetensors`) and writes `DIR/reference.json`: for
//! `--check-steps` training steps on the first batches with dropout off, Adam at a constant
//! `--check-lr` and the config's clipping and label smoothing, the loss, NLL and gradient
//! norm of each step. Dropout masks cannot match across frameworks, everything else can.
//! It also writes `DIR/train.json`, the run's optimisation settings for the PyTorch
//! trainer: the learning rate of every dumped step from rnmt's schedule, clipping, label
//! smoothing and Adam's parameters.
//!
//! With `--encode-source FILE --encoded-out OUT.jsonl` it also writes the source
//! tokenizer's ids of every line of FILE (one JSON array per line, no EOS), the input of
//! the PyTorch decode benchmark; `--decode-target IDS.jsonl --decoded-out OUT.txt` turns
//! its output ids back into text with the target tokenizer, as `rnmt translate` does.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use rnmt::batch::{Batch, TokenBatcher};
use rnmt::model::{init_weights, save_model, Seq2Seq};
use rnmt::prepare::PreparedData;
use rnmt::train::config::TrainConfig;
use rnmt::train::loss::OutputLoss;
use rnmt::train::optim::{clip_scale, global_grad_norm, Adam};
use rnmt::train::schedule::Schedule;
use serde_json::json;

struct Args {
    config: PathBuf,
    set: Vec<String>,
    batches: usize,
    out: PathBuf,
    model_out: Option<PathBuf>,
    check_steps: usize,
    check_lr: f64,
    encode_source: Option<PathBuf>,
    encoded_out: Option<PathBuf>,
    decode_target: Option<PathBuf>,
    decoded_out: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut config = None;
    let mut out = None;
    let mut args = Args {
        config: PathBuf::new(),
        set: Vec::new(),
        batches: 20,
        out: PathBuf::new(),
        model_out: None,
        check_steps: 3,
        check_lr: 1e-3,
        encode_source: None,
        encoded_out: None,
        decode_target: None,
        decoded_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => config = Some(PathBuf::from(value()?)),
            "--set" => args.set.push(value()?),
            "--batches" => args.batches = value()?.parse().context("--batches")?,
            "--out" => out = Some(PathBuf::from(value()?)),
            "--model-out" => args.model_out = Some(PathBuf::from(value()?)),
            "--check-steps" => args.check_steps = value()?.parse().context("--check-steps")?,
            "--check-lr" => args.check_lr = value()?.parse().context("--check-lr")?,
            "--encode-source" => args.encode_source = Some(PathBuf::from(value()?)),
            "--encoded-out" => args.encoded_out = Some(PathBuf::from(value()?)),
            "--decode-target" => args.decode_target = Some(PathBuf::from(value()?)),
            "--decoded-out" => args.decoded_out = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other}"),
        }
    }
    args.config = config.context("--config FILE.toml is required")?;
    args.out = out.context("--out FILE.jsonl is required")?;
    Ok(args)
}

fn rows(ids: &[u32], width: usize) -> Vec<&[u32]> {
    if width == 0 {
        return Vec::new();
    }
    ids.chunks(width).collect()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut cfg = TrainConfig::load(&args.config, &args.set)?;
    let prepared = PreparedData::load(&cfg.data)?;
    cfg.model.src_vocab_size = prepared.source_tokenizer().vocab_size();
    cfg.model.tgt_vocab_size = prepared.target_tokenizer().vocab_size();
    cfg.validate()?;
    let pairs = prepared.encode_pairs(&prepared.read_train()?)?;
    let order = TokenBatcher::new(cfg.max_tokens, cfg.seed).epoch(&pairs, 0);
    let batches: Vec<Batch> = order
        .iter()
        .take(args.batches)
        .map(|idx| Batch::new(&pairs, idx))
        .collect();

    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?,
    );
    for b in &batches {
        let line = json!({
            "src": rows(&b.src, b.src_max_len),
            "src_lengths": b.src_lengths,
            "tgt_in": rows(&b.tgt_in, b.tgt_max_len),
            "tgt_out": rows(&b.tgt_out, b.tgt_max_len),
            "tgt_lengths": b.tgt_lengths,
            "target_tokens": b.target_tokens(),
        });
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    eprintln!(
        "{} of {} epoch-0 batches (max_tokens {}, seed {}) → {}",
        batches.len(),
        order.len(),
        cfg.max_tokens,
        cfg.seed,
        args.out.display()
    );

    match (&args.encode_source, &args.encoded_out) {
        (Some(input), Some(output)) => encode_lines(&prepared, input, output)?,
        (None, None) => {}
        _ => bail!("--encode-source and --encoded-out go together"),
    }
    match (&args.decode_target, &args.decoded_out) {
        (Some(input), Some(output)) => decode_lines(&prepared, input, output)?,
        (None, None) => {}
        _ => bail!("--decode-target and --decoded-out go together"),
    }
    if let Some(dir) = &args.model_out {
        reference_steps(&cfg, &batches, dir, args.check_steps, args.check_lr)?;
    }
    Ok(())
}

/// Saves the initial model and rnmt's losses for a few dropout-free Adam steps.
fn reference_steps(
    cfg: &TrainConfig,
    batches: &[Batch],
    dir: &std::path::Path,
    steps: usize,
    lr: f64,
) -> Result<()> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Seq2Seq::new(
        &cfg.model,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    init_weights(&varmap, cfg.seed)?;
    save_model(dir, &cfg.model, &varmap)?;

    let mut named: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .expect("variable map lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let vars: Vec<candle_core::Var> = named.iter().map(|(_, v)| v.clone()).collect();
    let mut adam = Adam::new(named, cfg.adam_params())?;
    // The trainer's own loss path: the output layer fused with the loss.
    let loss_fn = OutputLoss::new(cfg.label_smoothing);
    let mut records = Vec::new();
    for (step, batch) in batches.iter().cycle().take(steps).enumerate() {
        let t = batch.to_tensors(&device)?;
        let features = model.forward_features(&t, None)?;
        let sums = loss_fn.forward(&features, model.output_layer(), &t.tgt_out, &t.tgt_mask)?;
        let tokens = sums.tokens;
        let objective = (sums.sum / tokens.max(1) as f64)?;
        let grads = objective.backward()?;
        let norm = global_grad_norm(&grads, &vars)?;
        let loss = objective.to_scalar::<f32>()? as f64;
        let nll = sums.nll / tokens.max(1) as f64;
        eprintln!("step {step}: loss {loss:.6} nll {nll:.6} grad_norm {norm:.6}");
        records.push(
            json!({"step": step, "loss": loss, "nll": nll, "grad_norm": norm, "tokens": tokens}),
        );
        adam.step(&grads, lr, clip_scale(norm, cfg.clip_norm))?;
    }
    let reference = json!({
        "lr": lr,
        "clip_norm": cfg.clip_norm,
        "label_smoothing": cfg.label_smoothing,
        "adam": cfg.adam_params(),
        "steps": records,
    });
    // Without validation the schedule never sees a score, as in a benchmark run.
    let schedule = Schedule::new(cfg);
    let lrs: Vec<f64> = (1..=batches.len() as u64).map(|s| schedule.lr(s)).collect();
    let train = json!({
        "lr": lrs,
        "clip_norm": cfg.clip_norm,
        "label_smoothing": cfg.label_smoothing,
        "adam": cfg.adam_params(),
    });
    let path = dir.join("train.json");
    std::fs::write(&path, serde_json::to_string_pretty(&train)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("reference.json");
    std::fs::write(&path, serde_json::to_string_pretty(&reference)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("initial model and reference losses → {}", dir.display());
    Ok(())
}

/// The text of `input` and a buffered writer on a new `output`.
fn read_input_create_output(
    input: &std::path::Path,
    output: &std::path::Path,
) -> Result<(String, std::io::BufWriter<std::fs::File>)> {
    let text = std::fs::read_to_string(input)
        .with_context(|| format!("cannot read {}", input.display()))?;
    let out = std::fs::File::create(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    Ok((text, std::io::BufWriter::new(out)))
}

/// Source-side subword ids of every line of `input`, one JSON array per line.
fn encode_lines(
    prepared: &PreparedData,
    input: &std::path::Path,
    output: &std::path::Path,
) -> Result<()> {
    let (text, mut out) = read_input_create_output(input, output)?;
    let lines: Vec<&str> = text.lines().collect();
    let ids = prepared.source_tokenizer().encode_batch(&lines)?;
    for row in &ids {
        writeln!(out, "{}", serde_json::to_string(row)?)?;
    }
    out.flush()?;
    eprintln!(
        "{} lines of {} encoded → {}",
        ids.len(),
        input.display(),
        output.display()
    );
    Ok(())
}

/// Target-side text of every line of `input` (JSON arrays of ids), one line each.
fn decode_lines(
    prepared: &PreparedData,
    input: &std::path::Path,
    output: &std::path::Path,
) -> Result<()> {
    let (text, mut out) = read_input_create_output(input, output)?;
    for (n, line) in text.lines().enumerate() {
        let ids: Vec<u32> = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON array of ids", input.display(), n + 1))?;
        writeln!(out, "{}", prepared.target_tokenizer().decode(&ids)?)?;
    }
    out.flush()?;
    Ok(())
}
