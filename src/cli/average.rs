//! `rnmt average`: checkpoint averaging into a model folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;

use crate::io::write_atomic;
use crate::model::weights_file::int8_matrix;
use crate::model::{load_language_model, load_model, Task};
use crate::train::checkpoint::{
    self, average_checkpoints, list_checkpoints, save_tensors, CONFIG_FILE, WEIGHTS_FILE,
};

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
    /// either way); int8 quarters it and is searched in int8 (as `rnmt translate --int8`). A
    /// single checkpoint (or model folder) with --dtype f16 or int8 is a conversion.
    #[arg(long, value_enum, default_value_t = WeightsDtype::F32)]
    pub dtype: WeightsDtype,
    /// Choose the averaged model's search settings (α, β in its config.json) by beam-5
    /// BLEU on the run's dev set, as the end of `rnmt train` does for best/: the first
    /// `valid_max_sentences` dev sentences of the prepared data that the run's
    /// config.toml names. Translation models only.
    #[arg(long)]
    pub tune: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsDtype {
    F32,
    F16,
    Bf16,
    /// Matrices in int8 with a scale per row, the rest (biases, norms) in f32; a model stored
    /// so is searched in int8 (as `rnmt translate --int8`).
    Int8,
}

impl WeightsDtype {
    /// The tensors that store `tensor` as `name` in this dtype.
    fn store(self, name: String, tensor: Tensor) -> Result<Vec<(String, Tensor)>> {
        let dtype = match self {
            WeightsDtype::F32 => DType::F32,
            WeightsDtype::F16 => DType::F16,
            WeightsDtype::Bf16 => DType::BF16,
            WeightsDtype::Int8 if tensor.rank() == 2 => {
                return Ok(int8_matrix(&name, &tensor)?.into());
            }
            WeightsDtype::Int8 => DType::F32,
        };
        Ok(vec![(name, tensor.to_dtype(dtype)?)])
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
            let start = all.len().saturating_sub(args.last);
            let dirs = all[start..].iter().map(|(_, p)| p.clone()).collect();
            return Ok((dirs, Some(run.clone())));
        }
    }
    for d in &args.inputs {
        if !d.join(WEIGHTS_FILE).is_file() {
            bail!(
                "{}: neither a run folder (with checkpoints/) nor a checkpoint (with {WEIGHTS_FILE})",
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

pub fn run(args: &AverageArgs) -> Result<()> {
    if args.last == 0 {
        bail!("--last 0: at least one checkpoint must be averaged");
    }
    let (dirs, run) = average_inputs(args)?;
    let (tensors, config) = average_checkpoints(&dirs)?;
    let mut stored = std::collections::HashMap::new();
    for (name, t) in tensors {
        stored.extend(args.dtype.store(name, t)?);
    }
    let tensors = stored;
    let out = &args.output;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    save_tensors(&out.join(WEIGHTS_FILE), &tensors)?;
    write_atomic(&out.join(CONFIG_FILE), config.as_bytes())?;
    // The tokenizers: beside the weights in a model folder, in RUN for checkpoints.
    for name in [
        crate::subword::SOURCE_TOKENIZER,
        crate::subword::TARGET_TOKENIZER,
        crate::subword::LM_TOKENIZER,
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
    let loaded = match crate::model::load_config(out)?.task {
        Task::Translation => load_model(out, &candle_core::Device::Cpu).map(drop),
        Task::Lm => load_language_model(out, &candle_core::Device::Cpu).map(drop),
    };
    loaded.with_context(|| format!("the averaged model in {} does not load", out.display()))?;
    eprintln!("averaged {} checkpoints into {}", dirs.len(), out.display());
    for d in &dirs {
        eprintln!("  {}", d.display());
    }
    if args.tune {
        tune_averaged(out, run.as_deref())?;
    }
    Ok(())
}

/// `--tune`: the α/β grid of `rnmt train`'s end on the run's dev set, for `out`.
fn tune_averaged(out: &Path, run: Option<&Path>) -> Result<()> {
    if crate::model::load_config(out)?.task == Task::Lm {
        bail!("--tune: a language model has no search settings to choose");
    }
    let config = run
        .map(|r| r.join(crate::cli::train::RUN_CONFIG_FILE))
        .filter(|c| c.is_file())
        .with_context(|| {
            "--tune needs the run folder's config.toml (it names the prepared data and its \
             dev set): give the run folder, or checkpoints inside it"
        })?;
    let cfg = crate::train::config::TrainConfig::load(&config, &[])?;
    let prepared = crate::prepare::PreparedData::load(&cfg.data)
        .with_context(|| format!("--tune: the data of {}", config.display()))?;
    let Some(valid) = prepared.read_valid()? else {
        bail!(
            "--tune: {} has no dev set (rnmt prepare --valid) to choose the settings on",
            cfg.data.display()
        );
    };
    let pairs = prepared.encode_pairs(&valid)?;
    let references: Vec<String> = valid.targets().map(str::to_string).collect();
    let n = match cfg.valid_max_sentences {
        0 => pairs.len(),
        n => n.min(pairs.len()),
    };
    let target = prepared.target_tokenizer();
    crate::device::set_threads(cfg.threads)?;
    let chosen = crate::train::tune::tune_model_folder(
        out,
        &pairs[..n],
        &references[..n],
        &|ids: &[u32]| target.decode(ids),
        cfg.valid_max_tokens,
        &candle_core::Device::Cpu,
    )?;
    if let Some(chosen) = chosen {
        eprintln!("{}", crate::train::tune::report(out, chosen));
    }
    Ok(())
}
