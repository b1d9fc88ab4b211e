//! `rnmt train`: a config file with overrides, a fresh or resumed run.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::dist::Collective;
use crate::io::write_atomic;
use crate::model::Task;
use crate::prepare::PreparedData;
use crate::train::checkpoint::{list_checkpoints, RunLock};
use crate::train::config::TrainConfig;
use crate::train::trainer::{Resample, TrainData, Trainer, ValidSet};

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
    /// Split each batch over N workers on the threads, their gradients summed
    /// (overrides the config's `batch_workers`; 0 = one per thread on the CPU).
    #[arg(long, value_name = "N")]
    pub batch_workers: Option<usize>,
}

/// Quotes a string as a TOML value for a `--set` override.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The config of `rnmt train`: the file (or the run's saved one when resuming) with
/// the --set, --device, --threads and --batch-workers overrides applied.
fn resolve_config(args: &TrainArgs) -> Result<TrainConfig> {
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
    if let Some(n) = args.batch_workers {
        overrides.push(format!("batch_workers={n}"));
    }
    TrainConfig::load(&path, &overrides)
}

pub fn run(args: &TrainArgs) -> Result<()> {
    // Under an MPI launcher, only rank 0 touches the run folder (the launcher's rank is
    // needed before MPI starts: the lock comes before the config is read).
    let root = crate::dist::launcher_ranks().is_none_or(|(rank, _)| rank == 0);
    // A resumed run is locked before its config.toml is read: another trainer may be
    // about to rewrite it.
    let early_lock = match &args.resume {
        Some(run) if root && run.is_dir() => Some(RunLock::acquire(run)?),
        _ => None,
    };
    let cfg = resolve_config(args)?;
    let comm: Rc<dyn Collective> = Rc::from(crate::dist::init(cfg.collective_timeout_s)?);
    let result = train_rank(args, cfg, early_lock, Rc::clone(&comm));
    if comm.size() > 1 {
        match &result {
            Ok(()) => comm.finish(),
            // Said here, with the rank: dropping the collective unfinished then ends
            // every rank of the job at once.
            Err(e) => eprintln!("error: rank {} of {}: {e:#}", comm.rank(), comm.size()),
        }
    }
    drop(comm);
    result
}

/// `rnmt train` on one rank (the only one, or one of a data-parallel job).
fn train_rank(
    args: &TrainArgs,
    mut cfg: TrainConfig,
    early_lock: Option<RunLock>,
    comm: Rc<dyn Collective>,
) -> Result<()> {
    if comm.size() > 1 && cfg.device == "cuda" {
        // One rank per GPU: the rank's place on its host picks the GPU.
        let local = std::env::var("OMPI_COMM_WORLD_LOCAL_RANK")
            .or_else(|_| std::env::var("SLURM_LOCALID"))
            .unwrap_or_else(|_| "0".into());
        cfg.device = format!("cuda:{}", local.trim());
    }
    crate::device::set_threads(cfg.threads)?;
    let device = crate::device::parse_device(&cfg.device)?.device()?;
    let prepared = PreparedData::load(&cfg.data)?;
    let lm = cfg.model.task == Task::Lm;
    if prepared.manifest.mono != lm {
        bail!(
            "{}: {} data, but the config's model.task is \"{}\" (a language model trains on \
             `rnmt prepare --mono` data, a translation model on parallel data)",
            cfg.data.display(),
            if prepared.manifest.mono {
                "monolingual"
            } else {
                "parallel"
            },
            if lm { "lm" } else { "translation" }
        );
    }
    // The vocabularies are the tokenizers': the config cannot disagree with them.
    cfg.model.src_vocab_size = prepared.source_tokenizer().vocab_size();
    cfg.model.tgt_vocab_size = prepared.target_tokenizer().vocab_size();
    cfg.model.src_lang = Some(prepared.manifest.src_lang.clone());
    cfg.model.tgt_lang = Some(prepared.manifest.tgt_lang.clone());
    cfg.validate()?;
    // Once the config is known to be good, before the run folder is read or written.
    let lock = match early_lock {
        Some(lock) => Some(lock),
        None if comm.is_root() => Some(RunLock::acquire(&cfg.run_dir)?),
        None => None,
    };

    let train_corpus = prepared.read_train()?;
    let train = prepared.encode_pairs(&train_corpus)?;
    let regularization = (cfg.subword_dropout, cfg.subword_alpha);
    let sampler = match cfg.subword_dropout > 0.0 || cfg.subword_alpha > 0.0 {
        true => Some(prepared.subword_sampler(train_corpus, regularization, cfg.seed)?),
        false => None,
    };
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
        resample: sampler
            .map(|sampler| -> Box<Resample> { Box::new(move |epoch| sampler.epoch(epoch)) }),
        valid,
        detokenize: Box::new(|ids: &[u32]| target.decode(ids)),
        model_files: prepared.tokenizer_files(),
        description: if lm {
            format!(
                "Language model of `{}` text, trained on {} (prepared in {}).",
                prepared.manifest.tgt_lang,
                prepared.manifest.train.display(),
                cfg.data.display()
            )
        } else {
            format!(
                "{} → {}, trained on {} (prepared in {}).",
                prepared.manifest.src_lang,
                prepared.manifest.tgt_lang,
                prepared.manifest.train.display(),
                cfg.data.display()
            )
        },
    };

    if comm.size() > 1 {
        let vocabulary = crate::train::checkpoint::data_fingerprint(&data.model_files)?;
        let mut sets = vec![data.train.as_slice()];
        sets.extend(data.valid.as_ref().map(|v| v.pairs.as_slice()));
        crate::train::data_parallel::check_ranks_agree(&*comm, &cfg, &sets, &vocabulary)?;
    }

    let run_dir = cfg.run_dir.clone();
    if !comm.is_root() {
        // Rank 0 reads the checkpoint (or starts fresh) and sends the others its weights,
        // moments and state when training starts.
        let mut trainer = Trainer::new(cfg, device)?;
        trainer.set_collective(comm);
        trainer.train(&data)?;
        return Ok(());
    }
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
    if let Some(lock) = lock {
        trainer.hold_lock(lock);
    }
    trainer.set_collective(comm);
    // Before the run's copies of the tokenizers are replaced.
    trainer.check_data(&data)?;
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
    crate::plot::plot_run(&run_dir)?;
    let best = crate::train::checkpoint::best_dir(&run_dir);
    if best.join(crate::model::WEIGHTS_FILE).is_file() {
        eprintln!("best model: {}", best.display());
    } else {
        eprintln!("no best model: {} was not written", best.display());
    }
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
