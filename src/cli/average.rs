//! `rnmt average`: checkpoint averaging into a model folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::io::write_atomic;
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
    let tensors = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(args.dtype.into())?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
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
    Ok(())
}
