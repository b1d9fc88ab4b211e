//! The `rnmt train`, `rnmt average` and `rnmt plot` commands (argument structs and
//! entry points; src/main.rs only dispatches).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::model::load_model;
use crate::subword::PreparedData;
use crate::train::checkpoint::{
    self, average_checkpoints, list_checkpoints, save_tensors, write_atomic, CONFIG_FILE,
    MODEL_FILE,
};
use crate::train::config::{parse_device, TrainConfig};
use crate::train::trainer::{TrainData, Trainer, ValidSet};

/// The effective config of a run, written at its start and read by `--resume`.
pub const RUN_CONFIG_FILE: &str = "config.toml";

#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// Training config (TOML). Optional with --resume (then RUN_DIR/config.toml).
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set model.hidden_size=512 (repeatable; the value
    /// is read as a TOML value, or as a string if it is not one).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue the run in RUN_DIR from its latest checkpoint, exactly as if it had
    /// not been interrupted.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// cpu, cuda:N or metal (overrides the config's `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// CPU threads (overrides the config's `threads`; 0 = one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct AverageArgs {
    /// A run folder (its last --last checkpoints are averaged) or checkpoint folders.
    #[arg(required = true, value_name = "RUN_DIR|CKPT")]
    pub inputs: Vec<PathBuf>,
    /// With a run folder: how many of its latest checkpoints to average.
    #[arg(long, default_value_t = 5)]
    pub last: usize,
    /// The model folder to write.
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// The weights' storage type: f16 or bf16 halve the folder (search computes in f32
    /// either way); a single checkpoint with --dtype f16 is a conversion.
    #[arg(long, value_enum, default_value_t = WeightsDtype::F32)]
    pub dtype: WeightsDtype,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsDtype {
    F32,
    F16,
    Bf16,
}

impl From<WeightsDtype> for candle_core::DType {
    fn from(d: WeightsDtype) -> Self {
        match d {
            WeightsDtype::F32 => Self::F32,
            WeightsDtype::F16 => Self::F16,
            WeightsDtype::Bf16 => Self::BF16,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// A run folder with metrics.jsonl; writes RUN_DIR/curve.svg.
    pub run_dir: PathBuf,
}

/// Quotes a string as a TOML value for a `--set` override.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The config of `rnmt train`: the file (or the run's saved one when resuming) with
/// the --set, --device and --threads overrides applied.
pub fn resolve_config(args: &TrainArgs) -> Result<TrainConfig> {
    let mut overrides = args.set.clone();
    let path = match (&args.config, &args.resume) {
        (Some(p), _) => p.clone(),
        (None, Some(run)) => run.join(RUN_CONFIG_FILE),
        (None, None) => bail!("rnmt train needs --config FILE.toml (or --resume RUN_DIR)"),
    };
    if let Some(run) = &args.resume {
        overrides.push(format!("run_dir={}", toml_string(&run.to_string_lossy())));
    }
    if let Some(d) = &args.device {
        overrides.push(format!("device={}", toml_string(d)));
    }
    if let Some(t) = args.threads {
        overrides.push(format!("threads={t}"));
    }
    TrainConfig::load(&path, &overrides)
}

/// Sets the CPU thread count for everything that computes.
///
/// candle's matmul hands `gemm` a `Parallelism::Rayon(n)` with `n` read from
/// `RAYON_NUM_THREADS` (not from rayon's pool), and gemm and rnmt's fused kernels run on
/// rayon's global pool: `threads` sets both, and must run before the first tensor op.
/// candle's element-wise ops use a pool of their own, sized once from
/// `CANDLE_NUM_THREADS`, whose workers spin between ops and take the core from gemm;
/// the element-wise ops are small here, so that pool gets one thread (the caller) unless
/// `CANDLE_NUM_THREADS` is set. Measured on Multi30k config A, 2 threads, 40 steps, 3
/// alternating rounds: 2,658 target tok/s against 2,496 with a 2-thread element-wise
/// pool (+6.5 %).
pub fn set_threads(threads: usize) {
    if threads == 0 {
        return;
    }
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // Fails only if the pool already exists (e.g. a second run in one process).
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}

pub fn run_train(args: &TrainArgs) -> Result<()> {
    let mut cfg = resolve_config(args)?;
    set_threads(cfg.threads);
    let device = parse_device(&cfg.device)?.device()?;
    let prepared = PreparedData::load(&cfg.data)?;
    // The vocabularies are the tokenizers': the config cannot disagree with them.
    cfg.model.src_vocab_size = prepared.source_tokenizer().vocab_size();
    cfg.model.tgt_vocab_size = prepared.target_tokenizer().vocab_size();
    cfg.validate()?;

    let train_corpus = prepared.read_train()?;
    let train = prepared.encode_pairs(&train_corpus)?;
    let valid = match prepared.read_valid()? {
        Some(c) => Some(ValidSet {
            pairs: prepared.encode_pairs(&c)?,
            references: c.targets().map(str::to_string).collect(),
        }),
        None => None,
    };
    let target = prepared.target_tokenizer();
    let data = TrainData {
        train,
        valid,
        detokenize: Box::new(|ids: &[u32]| target.decode(ids)),
        model_files: prepared.tokenizer_files().to_vec(),
        description: format!(
            "{} → {}, trained on {} (prepared in {}).",
            prepared.manifest.src_lang,
            prepared.manifest.tgt_lang,
            prepared.manifest.train.display(),
            cfg.data.display()
        ),
    };

    let run_dir = cfg.run_dir.clone();
    if args.resume.is_some() {
        warn_if_not_exact(&run_dir, &cfg);
    }
    let mut trainer = if args.resume.is_some() {
        Trainer::resume(cfg.clone(), device)?
    } else {
        if !list_checkpoints(&run_dir)?.is_empty() {
            bail!(
                "{} already holds checkpoints: continue it with --resume {0}, or choose another run_dir",
                run_dir.display()
            );
        }
        Trainer::new(cfg.clone(), device)?
    };
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("cannot create {}", run_dir.display()))?;
    write_atomic(
        &run_dir.join(RUN_CONFIG_FILE),
        toml::to_string(&cfg)?.as_bytes(),
    )?;
    for f in &data.model_files {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        write_atomic(&run_dir.join(f.file_name().unwrap_or_default()), &bytes)?;
    }
    eprintln!(
        "training on {} pairs ({} dev), run folder {}",
        data.train.len(),
        data.valid.as_ref().map_or(0, |v| v.pairs.len()),
        run_dir.display()
    );
    trainer.train(&data)?;
    eprintln!("best model: {}", run_dir.join("best").display());
    Ok(())
}

/// Resuming repeats the original batches only with the original seed and batch
/// budget; say so when the config changed them.
fn warn_if_not_exact(run_dir: &Path, cfg: &TrainConfig) {
    let Ok(old) = TrainConfig::load(&run_dir.join(RUN_CONFIG_FILE), &[]) else {
        return;
    };
    for (key, was, now) in [
        ("seed", old.seed.to_string(), cfg.seed.to_string()),
        (
            "max_tokens",
            old.max_tokens.to_string(),
            cfg.max_tokens.to_string(),
        ),
        (
            "data",
            old.data.display().to_string(),
            cfg.data.display().to_string(),
        ),
    ] {
        if was != now {
            eprintln!(
                "warning: {key} changed from {was} to {now}: the resumed run will not repeat \
                 the batches of an uninterrupted one"
            );
        }
    }
}

/// The checkpoint folders `rnmt average` reads.
fn average_inputs(args: &AverageArgs) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    if let [run] = args.inputs.as_slice() {
        if checkpoint::checkpoints_dir(run).is_dir() {
            let all = list_checkpoints(run)?;
            if all.is_empty() {
                bail!(
                    "{}: no complete checkpoints",
                    checkpoint::checkpoints_dir(run).display()
                );
            }
            let start = all.len().saturating_sub(args.last.max(1));
            let dirs = all[start..].iter().map(|(_, p)| p.clone()).collect();
            return Ok((dirs, Some(run.clone())));
        }
    }
    for d in &args.inputs {
        if !d.join(MODEL_FILE).is_file() {
            bail!(
                "{}: neither a run folder (with checkpoints/) nor a checkpoint (with {MODEL_FILE})",
                d.display()
            );
        }
    }
    // Checkpoints live in RUN/checkpoints/step-N: the tokenizers are in RUN.
    let run = args.inputs[0]
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    Ok((args.inputs.clone(), run))
}

pub fn run_average(args: &AverageArgs) -> Result<()> {
    let (dirs, run) = average_inputs(args)?;
    let (tensors, config) = average_checkpoints(&dirs)?;
    let tensors = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(args.dtype.into())?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    let out = &args.output;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    save_tensors(&out.join(MODEL_FILE), &tensors)?;
    write_atomic(&out.join(CONFIG_FILE), config.as_bytes())?;
    // The tokenizers: beside the weights in a model folder, in RUN for checkpoints.
    for name in [
        crate::subword::SOURCE_TOKENIZER,
        crate::subword::TARGET_TOKENIZER,
    ] {
        let found = std::iter::once(&dirs[0])
            .chain(run.as_ref())
            .map(|d| d.join(name))
            .find(|f| f.is_file());
        if let Some(f) = found {
            write_atomic(&out.join(name), &std::fs::read(&f)?)?;
        }
    }
    // The result must be a loadable model folder.
    load_model(out, &candle_core::Device::Cpu)
        .with_context(|| format!("the averaged model in {} does not load", out.display()))?;
    eprintln!("averaged {} checkpoints into {}", dirs.len(), out.display());
    for d in &dirs {
        eprintln!("  {}", d.display());
    }
    Ok(())
}

pub fn run_plot(args: &PlotArgs) -> Result<()> {
    let path = crate::plot::plot_run_dir(&args.run_dir)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
