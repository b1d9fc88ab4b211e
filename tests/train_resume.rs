//! Resume equivalence and checkpoint errors, on a tiny model and synthetic id-level
//! data (no tokenizer, no corpus): an interrupted run resumed from its checkpoint must
//! log exactly the losses of an uninterrupted run.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rnmt::batch::EncodedPair;
use rnmt::model::{Cell, ModelConfig};
use rnmt::train::checkpoint::{self, list_checkpoints, OPTIMIZER_FILE, WEIGHTS_FILE};
use rnmt::train::config::{Precision, TrainConfig};
use rnmt::train::log::{read_metrics, Record, METRICS_FILE};
use rnmt::train::trainer::{TrainData, Trainer, ValidSet};

/// Digit strings (ids 4..14) → reversed and shifted by 10 (ids 14..24).
fn synthetic(n: usize, seed: u64) -> Vec<EncodedPair> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(2..8);
            let src: Vec<u32> = (0..len).map(|_| rng.random_range(4..14)).collect();
            let tgt = src.iter().rev().map(|&x| x + 10).collect();
            EncodedPair { src, tgt }
        })
        .collect()
}

fn data() -> TrainData<'static> {
    let valid = synthetic(12, 99);
    let references = valid.iter().map(|p| words(&p.tgt)).collect();
    TrainData {
        train: synthetic(80, 7),
        resample: None,
        valid: Some(ValidSet {
            pairs: valid,
            references,
        }),
        detokenize: Box::new(|ids: &[u32]| Ok(words(ids))),
        model_files: Vec::new(),
        description: "synthetic reverse-and-shift task".into(),
    }
}

fn words(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn config(run_dir: &Path, max_steps: u64) -> TrainConfig {
    config_with(run_dir, max_steps, Cell::Lstm, 1)
}

fn config_with(run_dir: &Path, max_steps: u64, cell: Cell, batch_workers: usize) -> TrainConfig {
    TrainConfig {
        run_dir: run_dir.to_path_buf(),
        batch_workers,
        seed: 3,
        max_tokens: 60,
        max_steps,
        max_epochs: 0,
        lr: 0.01,
        warmup_steps: 3,
        schedule: rnmt::train::schedule::ScheduleKind::Plateau,
        plateau_patience: 1,
        valid_every: 4,
        keep_last: 2,
        patience: 0,
        label_smoothing: 0.1,
        clip_norm: 1.0,
        model: ModelConfig {
            cell,
            src_vocab_size: 24,
            tgt_vocab_size: 24,
            embedding_size: 16,
            hidden_size: 16,
            encoder_layers: 2,
            decoder_layers: 2,
            residual_from: 2,
            // Dropout on, so resuming must restore the mask stream too.
            dropout: 0.3,
            ..ModelConfig::default()
        },
        ..TrainConfig::default()
    }
}

/// Per-step records without the timing fields, which legitimately differ.
fn comparable(run_dir: &Path) -> Vec<String> {
    read_metrics(&run_dir.join(METRICS_FILE))
        .unwrap()
        .into_iter()
        .map(|r| match r {
            Record::Train {
                step,
                epoch,
                loss,
                ppl,
                lr,
                grad_norm,
                target_tokens,
                ..
            } => {
                format!(
                    "train {step} {epoch} {loss:e} {ppl:e} {lr:e} {grad_norm:e} {target_tokens}"
                )
            }
            Record::Valid {
                step,
                epoch,
                valid_loss,
                bleu,
                best,
                ..
            } => {
                format!("valid {step} {epoch} {valid_loss:e} {bleu:e} {best}")
            }
        })
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run() -> anyhow::Result<()> {
    resumed_equals_uninterrupted(Cell::Lstm, 1, 0.0).map(drop)
}

/// Word dropout draws its masks from the same stream: a resumed run repeats them, and
/// they do change the run (a word-dropout setting that reached no mask would not).
#[test]
fn resumed_run_with_word_dropout_equals_uninterrupted_run() -> anyhow::Result<()> {
    let with = resumed_equals_uninterrupted(Cell::Lstm, 1, 0.2)?;
    let without = resumed_equals_uninterrupted(Cell::Lstm, 1, 0.0)?;
    assert_ne!(
        with[0], without[0],
        "step 1 should differ with word dropout"
    );
    Ok(())
}

/// Each batch worker draws its dropout masks from a stream of its own: resuming must
/// restore those too.
#[test]
fn resumed_run_of_two_batch_workers_equals_uninterrupted_run() -> anyhow::Result<()> {
    resumed_equals_uninterrupted(Cell::Lstm, 2, 0.0).map(drop)
}

#[test]
fn resumed_gru_run_equals_uninterrupted_run() -> anyhow::Result<()> {
    resumed_equals_uninterrupted(Cell::Gru, 1, 0.0).map(drop)
}

/// Runs 14 steps at once and 7 + a resume from step 4; returns the run's comparable log.
fn resumed_equals_uninterrupted(
    cell: Cell,
    batch_workers: usize,
    word_dropout: f32,
) -> anyhow::Result<Vec<String>> {
    let config = |run: &Path, n: u64| {
        let mut cfg = config_with(run, n, cell, batch_workers);
        cfg.model.source_word_dropout = word_dropout;
        cfg.model.target_word_dropout = word_dropout;
        cfg
    };
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let data = data();
    let n = 14;

    let mut full = Trainer::new(config(&a, n), candle_core::Device::Cpu)?;
    full.train(&data)?;
    let reference = comparable(&a);
    assert_eq!(
        reference.iter().filter(|l| l.starts_with("train")).count(),
        n as usize
    );
    assert!(
        full.state.epoch >= 1,
        "the run should cross an epoch boundary"
    );

    // "Kill" after step 7: the run got past its step-4 checkpoint, then died before
    // the step-7 one was complete (we delete it), leaving log lines for steps 5–7.
    Trainer::new(config(&b, 7), candle_core::Device::Cpu)?.train(&data)?;
    std::fs::remove_dir_all(checkpoint::checkpoint_dir(&b, 7))?;
    assert!(read_metrics(&b.join(METRICS_FILE))?
        .iter()
        .any(|r| r.step() == 7));
    let mut resumed = Trainer::resume(config(&b, n), candle_core::Device::Cpu)?;
    assert_eq!(resumed.state.step, 4);
    resumed.train(&data)?;

    let got = comparable(&b);
    assert_eq!(
        got, reference,
        "resumed run diverged from the uninterrupted one"
    );
    // The losses actually went down, so the comparison is about a run that learns.
    let losses: Vec<f64> = read_metrics(&a.join(METRICS_FILE))?
        .iter()
        .filter_map(|r| match r {
            Record::Train { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    assert!(losses[n as usize - 1] < losses[0], "{losses:?}");
    // Last two and the best are kept; best/ exists. (The learning curve is drawn by the
    // `rnmt train` command, not the library trainer: tests/train_cli.rs checks it.)
    assert!(list_checkpoints(&b)?.len() <= 3);
    assert!(b.join("best").join(WEIGHTS_FILE).is_file());
    Ok(reference)
}

#[test]
fn corrupt_and_mismatched_checkpoints_give_clear_errors() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let mut data = data();
    data.valid = None;
    Trainer::new(config(&run, 2), candle_core::Device::Cpu)?.train(&data)?;
    let ckpt = checkpoint::checkpoint_dir(&run, 2);
    let resume_err = |cfg: TrainConfig| -> String {
        match Trainer::resume(cfg, candle_core::Device::Cpu) {
            Ok(_) => panic!("resume should fail"),
            Err(e) => format!("{e:#}"),
        }
    };

    // A different model in the config.
    let mut cfg = config(&run, 4);
    cfg.model.hidden_size = 32;
    let e = resume_err(cfg);
    assert!(e.contains("config.json") && e.contains("differs"), "{e}");

    // A wrong-shape tensor in the weights.
    let weights = ckpt.join(WEIGHTS_FILE);
    let mut tensors = checkpoint::load_tensors(&weights)?;
    let name = tensors.keys().min().unwrap().clone();
    let shape = tensors[&name].dims().to_vec();
    let bad = candle_core::Tensor::zeros(
        (shape.iter().product::<usize>() + 1,),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )?;
    let original = tensors.insert(name.clone(), bad).unwrap();
    checkpoint::save_tensors(&weights, &tensors)?;
    let e = resume_err(config(&run, 4));
    assert!(
        e.contains("model.safetensors") && e.contains(&format!("`{name}`")),
        "{e}"
    );

    // A missing tensor.
    tensors.remove(&name);
    checkpoint::save_tensors(&weights, &tensors)?;
    let e = resume_err(config(&run, 4));
    assert!(
        e.contains(&format!("`{name}`")) && e.contains("missing"),
        "{e}"
    );
    tensors.insert(name.clone(), original);
    checkpoint::save_tensors(&weights, &tensors)?;

    // A truncated optimizer file.
    let opt = ckpt.join(OPTIMIZER_FILE);
    let bytes = std::fs::read(&opt)?;
    std::fs::write(&opt, &bytes[..bytes.len() / 2])?;
    let e = resume_err(config(&run, 4));
    assert!(e.contains("optimizer.safetensors"), "{e}");
    std::fs::write(&opt, &bytes)?;

    // A garbled training state.
    std::fs::write(ckpt.join("train_state.json"), "{\"step\": \"two\"}")?;
    let e = resume_err(config(&run, 4));
    assert!(e.contains("train_state.json"), "{e}");

    // Nothing to resume from.
    let e = resume_err(config(&tmp.path().join("empty"), 4));
    assert!(e.contains("no checkpoint"), "{e}");
    Ok(())
}

/// With a learning rate too small to change BLEU, the first validation is the best and
/// training stops after `patience` more; the plateau schedule halves the rate after
/// each validation without improvement.
#[test]
fn early_stopping_and_plateau_decay() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let run = tmp.path().join("run");
    let mut cfg = config(&run, 50);
    cfg.lr = 1e-9;
    cfg.min_lr = 0.0;
    cfg.warmup_steps = 0;
    cfg.valid_every = 1;
    cfg.patience = 2;
    cfg.plateau_patience = 1;
    let reason = Trainer::new(cfg, candle_core::Device::Cpu)?.train(&data())?;
    assert_eq!(reason, rnmt::train::trainer::StopReason::EarlyStopping);
    let records = read_metrics(&run.join(METRICS_FILE))?;
    let bests: Vec<bool> = records
        .iter()
        .filter_map(|r| match r {
            Record::Valid { best, .. } => Some(*best),
            _ => None,
        })
        .collect();
    assert_eq!(bests, vec![true, false, false]);
    let lrs: Vec<f64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train { lr, .. } => Some(*lr),
            _ => None,
        })
        .collect();
    assert_eq!(lrs, vec![1e-9, 1e-9, 0.5e-9]);
    // best/ is the step-1 model; checkpoints 2 and 3 are the last two, 1 is kept as best.
    let steps: Vec<u64> = list_checkpoints(&run)?.into_iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![1, 2, 3]);
    let best = checkpoint::load_tensors(&run.join("best").join(WEIGHTS_FILE))?;
    let step1 = checkpoint::load_tensors(&checkpoint::checkpoint_dir(&run, 1).join(WEIGHTS_FILE))?;
    for (name, t) in &step1 {
        let diff = (t - &best[name])?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0, "best/ differs from step 1 in {name}");
    }
    Ok(())
}

/// A moving average of the weights (`ema_decay`) leaves training itself alone: the same
/// losses and raw weights as without it, while validation and the checkpoints' models
/// are the average's. An interrupted run resumes both exactly.
#[test]
fn weight_average_is_validated_saved_and_resumed() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (plain, full, cut) = (
        tmp.path().join("plain"),
        tmp.path().join("full"),
        tmp.path().join("cut"),
    );
    let data = data();
    let n = 12;
    // A schedule that does not listen to validation, which the average changes.
    let plain_config = |run: &Path, steps: u64| TrainConfig {
        schedule: rnmt::train::schedule::ScheduleKind::Constant,
        ..config(run, steps)
    };
    let with_ema = |run: &Path, steps: u64| TrainConfig {
        ema_decay: 0.9,
        ..plain_config(run, steps)
    };
    Trainer::new(plain_config(&plain, n), candle_core::Device::Cpu)?.train(&data)?;
    Trainer::new(with_ema(&full, n), candle_core::Device::Cpu)?.train(&data)?;
    let (a, b) = (comparable(&plain), comparable(&full));
    let train = |r: &[String]| -> Vec<String> {
        r.iter()
            .filter(|l| l.starts_with("train"))
            .cloned()
            .collect()
    };
    let valid = |r: &[String]| -> Vec<String> {
        r.iter()
            .filter(|l| l.starts_with("valid"))
            .cloned()
            .collect()
    };
    assert_eq!(train(&a), train(&b), "the average changed training");
    assert_eq!(valid(&a).len(), valid(&b).len());
    assert_ne!(valid(&a), valid(&b), "validation did not use the average");

    let step = checkpoint::checkpoint_dir(&full, 8);
    let raw = checkpoint::load_tensors(&step.join(rnmt::train::ema::TRAINING_WEIGHTS_FILE))?;
    let average = checkpoint::load_tensors(&step.join(WEIGHTS_FILE))?;
    let reference =
        checkpoint::load_tensors(&checkpoint::checkpoint_dir(&plain, 8).join(WEIGHTS_FILE))?;
    let mut differ = 0;
    for (name, w) in &reference {
        let flat = |t: &candle_core::Tensor| t.flatten_all()?.to_vec1::<f32>();
        assert_eq!(flat(w)?, flat(&raw[name])?, "{name}: raw weights differ");
        differ += usize::from(flat(w)? != flat(&average[name])?);
    }
    assert!(
        differ > reference.len() / 2,
        "{differ} of {} averaged",
        reference.len()
    );
    assert!(!checkpoint::checkpoint_dir(&plain, 8)
        .join(rnmt::train::ema::TRAINING_WEIGHTS_FILE)
        .exists());

    // Killed after step 7 (its checkpoint never completed): resumed from step 4.
    Trainer::new(with_ema(&cut, 7), candle_core::Device::Cpu)?.train(&data)?;
    std::fs::remove_dir_all(checkpoint::checkpoint_dir(&cut, 7))?;
    let mut resumed = Trainer::resume(with_ema(&cut, n), candle_core::Device::Cpu)?;
    assert_eq!(resumed.state.step, 4);
    resumed.train(&data)?;
    assert_eq!(comparable(&cut), b, "the resumed run diverged");
    Ok(())
}

/// `precision = "bf16"` trains where the CPU has AMX-BF16, close to the f32 run (the
/// products' inputs lose bits, not the sums), and is refused with a clear error elsewhere.
#[test]
fn bf16_precision_trains_close_to_f32_or_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data();
    let run = |name: &str, precision: Precision| -> anyhow::Result<Vec<f64>> {
        let dir = tmp.path().join(name);
        let mut cfg = config(&dir, 8);
        cfg.precision = precision;
        Trainer::new(cfg, candle_core::Device::Cpu)?.train(&data)?;
        Ok(read_metrics(&dir.join(METRICS_FILE))?
            .iter()
            .filter_map(|r| match r {
                Record::Train { loss, .. } => Some(*loss),
                _ => None,
            })
            .collect())
    };
    let f32_losses = run("f32", Precision::F32)?;
    if !rnmt::model::bf16_matmul::available() {
        let e = format!("{:#}", run("bf16", Precision::Bf16).unwrap_err());
        assert!(e.contains("no AMX-BF16") && e.contains("precision"), "{e}");
        return Ok(());
    }
    let bf16_losses = run("bf16", Precision::Bf16)?;
    assert_eq!(bf16_losses.len(), f32_losses.len());
    for (step, (a, b)) in f32_losses.iter().zip(&bf16_losses).enumerate() {
        assert!(
            (a - b).abs() < 0.01 * a,
            "step {}: f32 {a}, bf16 {b}",
            step + 1
        );
    }
    assert_ne!(
        f32_losses, bf16_losses,
        "bf16 products should change the sums"
    );
    Ok(())
}
