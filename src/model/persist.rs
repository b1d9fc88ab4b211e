//! The model folder: `config.json` (the [`ModelConfig`]) beside `model.safetensors`.
//!
//! Both files are written to a temporary name and renamed, so a crash mid-save never
//! leaves a half-written model behind. Checkpoints (`train::checkpoint`) are model folders
//! too, with the same names and the same loader. Loading checks every tensor against the model the
//! config describes and names the file and tensor of any mismatch.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use super::config::{ModelConfig, Task};
use super::language_model::LanguageModel;
use super::seq2seq::Seq2Seq;
use super::weights_file::WeightsFile;
use crate::io::{write_atomic, write_atomic_with};
use crate::subword::{SubwordModel, LM_TOKENIZER};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The path of `file` (a tokenizer) for the model folder `dir`. A checkpoint
/// (`RUN/checkpoints/step-N`) has no tokenizers of its own: they are its run folder's
/// (`RUN/tokenizer-*.json`), so a checkpoint translates like any model folder, as
/// OpenNMT-py's and Marian's checkpoints do.
pub fn model_file(dir: &Path, file: &str) -> PathBuf {
    let own = dir.join(file);
    if own.exists() {
        return own;
    }
    let run = dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))
        .and_then(Path::parent)
        .map(|run| run.join(file));
    match run {
        Some(run) if run.is_file() => run,
        _ => own,
    }
}

/// Writes `config.json` and `model.safetensors` into `dir` (created if missing), each
/// through [`write_atomic`].
pub fn save_model(dir: impl AsRef<Path>, cfg: &ModelConfig, varmap: &VarMap) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(
        &dir.join(CONFIG_FILE),
        (serde_json::to_string_pretty(cfg)? + "\n").as_bytes(),
    )?;
    write_atomic_with(&dir.join(WEIGHTS_FILE), |tmp| Ok(varmap.save(tmp)?))
}

/// Loads the model in `dir` onto `device` (f32) for inference, prepared for search
/// ([`Seq2Seq::prepare_for_search`]).
///
/// Its weights are plain tensors, not variables: candle records the graph of every op
/// on a variable, so in search each step's state would keep the whole history of the
/// batch alive (measured on 1000 Multi30k sentences at beam 5: peak RSS 408 MB with
/// variables; fresh pages for that history were a tenth of the decoding time).
pub fn load_model(dir: impl AsRef<Path>, device: &Device) -> Result<(Seq2Seq, ModelConfig)> {
    let dir = dir.as_ref();
    let cfg = load_config(dir)?;
    check_tokenizers(dir, &cfg)?;
    build_model(dir, cfg, device)
}

/// [`load_model`] without looking at the folder's tokenizers, for a caller that loads them
/// itself (at the same time, on another thread) and then checks their vocabulary sizes
/// with [`check_vocab_sizes`].
pub fn load_model_without_tokenizers(
    dir: impl AsRef<Path>,
    device: &Device,
) -> Result<(Seq2Seq, ModelConfig)> {
    let dir = dir.as_ref();
    build_model(dir, load_config(dir)?, device)
}

/// The vocabulary sizes of `dir`'s tokenizers, source then target, must be its config's.
pub fn check_vocab_sizes(
    dir: impl AsRef<Path>,
    cfg: &ModelConfig,
    sizes: [usize; 2],
) -> Result<()> {
    use crate::subword::{SOURCE_TOKENIZER, TARGET_TOKENIZER};
    for (file, n) in [SOURCE_TOKENIZER, TARGET_TOKENIZER].into_iter().zip(sizes) {
        check_vocab_size(dir.as_ref(), cfg, file, n)?;
    }
    Ok(())
}

fn build_model(dir: &Path, cfg: ModelConfig, device: &Device) -> Result<(Seq2Seq, ModelConfig)> {
    check_task(dir, &cfg, Task::Translation)?;
    let (mut model, int8) = build_from_file(dir, device, |vb| Seq2Seq::new(&cfg, vb))?;
    model.prepare_for_search()?;
    // Stored in int8 (`rnmt average --dtype int8`): searched so, with the stored integers.
    if int8 && device.is_cpu() {
        model.quantize_int8()?;
    }
    Ok((model, cfg))
}

/// Loads the language model in `dir` (a folder of `rnmt train` with `task = "lm"`) onto
/// `device` for inference, with its tokenizer (`tokenizer.json`).
pub fn load_language_model(
    dir: impl AsRef<Path>,
    device: &Device,
) -> Result<(LanguageModel, SubwordModel)> {
    let dir = dir.as_ref();
    let cfg = load_config(dir)?;
    check_task(dir, &cfg, Task::Lm)?;
    let tokenizer = SubwordModel::load(&model_file(dir, LM_TOKENIZER))?;
    check_vocab_size(dir, &cfg, LM_TOKENIZER, tokenizer.vocab_size())?;
    let (model, _) = build_from_file(dir, device, |vb| LanguageModel::new(&cfg, vb))?;
    Ok((model, tokenizer))
}

/// A translation model where a language model is expected, or the other way round, is
/// an error that says which command reads the folder.
fn check_task(dir: &Path, cfg: &ModelConfig, expected: Task) -> Result<()> {
    if cfg.task != expected {
        let (is, use_) = match cfg.task {
            Task::Lm => ("a language model (task = \"lm\")", "rnmt lm"),
            Task::Translation => ("a translation model", "rnmt translate"),
        };
        bail!(
            "{}: {} is {is}; read it with `{use_}`",
            dir.display(),
            dir.join(CONFIG_FILE).display()
        );
    }
    Ok(())
}

/// The model `build` makes, its weights read straight from `dir`'s weights file: every
/// tensor it asks for is checked, and one left over is an error. With it, whether the file
/// stores matrices in int8.
fn build_from_file<M>(
    dir: &Path,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
) -> Result<(M, bool)> {
    // Built once, straight from the file: no variables, and no random initialisation
    // to overwrite (building through a `VarMap` first and then copying was about a
    // third of a cold `rnmt translate`); each tensor is read when the model asks for it.
    let file = Arc::new(CheckedTensors {
        file: WeightsFile::open(&dir.join(WEIGHTS_FILE))?,
        used: Mutex::new(HashSet::new()),
    });
    let vb = VarBuilder::from_backend(
        Box::new(SharedTensors(Arc::clone(&file))),
        DType::F32,
        device.clone(),
    );
    let model = build(vb).map_err(|e| anyhow::anyhow!("{e}"))?;
    file.check_all_used()?;
    Ok((model, file.file.has_int8()))
}

/// The tensors of a weights file as a `VarBuilder` backend that checks each tensor the
/// model asks for (present, of the shape the config implies, a float) and records it, so
/// that a tensor left over (another model's) is an error too. The messages are
/// [`load_weights_into`]'s.
struct CheckedTensors {
    file: WeightsFile,
    used: Mutex<HashSet<String>>,
}

impl CheckedTensors {
    fn tensor(&self, shape: &Shape, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let entry = self.file.entry(name);
        check_entry(
            self.file.path(),
            name,
            entry.map(|e| (e.shape.as_slice(), e.dtype)),
            shape.dims(),
        )?;
        let t = self.file.read(name, dtype, device)?;
        self.used
            .lock()
            .expect("not poisoned")
            .insert(name.to_string());
        Ok(t)
    }

    fn check_all_used(&self) -> Result<()> {
        let used = self.used.lock().expect("not poisoned");
        let extra: Vec<&String> = self.file.names().filter(|k| !used.contains(*k)).collect();
        check_no_extra(self.file.path(), &extra)
    }
}

/// [`CheckedTensors`] shared between the builder and the loader, which asks it at the
/// end what was left over.
struct SharedTensors(Arc<CheckedTensors>);

impl SimpleBackend for SharedTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .tensor(&s, name, dtype, device)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(entry) = self.0.file.entry(name) else {
            return Err(candle_core::Error::Msg(format!(
                "{}: tensor `{name}` is missing",
                self.0.file.path().display()
            )));
        };
        let shape = Shape::from(entry.shape.clone());
        self.0
            .tensor(&shape, name, dtype, device)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.file.entry(name).is_some()
    }
}

/// The model config of a model or checkpoint folder (`DIR/config.json`), without the
/// weights.
pub fn load_config(dir: impl AsRef<Path>) -> Result<ModelConfig> {
    let config_path = dir.as_ref().join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    ModelConfig::from_json(&text)
        .with_context(|| format!("{}: invalid model config", config_path.display()))
}

/// Like [`load_model`], also returning the variables (to continue training from them).
pub fn load_model_with_vars(
    dir: impl AsRef<Path>,
    device: &Device,
) -> Result<(Seq2Seq, ModelConfig, VarMap)> {
    let dir = dir.as_ref();
    let config_path = dir.join(CONFIG_FILE);
    let cfg = load_config(dir)?;

    check_task(dir, &cfg, Task::Translation)?;
    check_tokenizers(dir, &cfg)?;
    let varmap = VarMap::new();
    let model = Seq2Seq::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))
        .with_context(|| format!("building the model of {}", config_path.display()))?;
    load_weights_into(&varmap, &dir.join(WEIGHTS_FILE))?;
    Ok((model, cfg, varmap))
}

/// The tokenizers of a model folder (checkpoints have none) must have the vocabulary
/// sizes of its `config.json`: a tokenizer of another model, or source and target
/// swapped, would otherwise give garbage or a late index error deep in search.
pub fn check_tokenizers(dir: &Path, cfg: &ModelConfig) -> Result<()> {
    use crate::subword::{SOURCE_TOKENIZER, TARGET_TOKENIZER};
    for file in [SOURCE_TOKENIZER, TARGET_TOKENIZER] {
        let path = model_file(dir, file);
        if path.is_file() {
            check_vocab_size(dir, cfg, file, SubwordModel::load(&path)?.vocab_size())?;
        }
    }
    Ok(())
}

/// The tokenizer `file` of `dir`, of `n` subwords, must have the vocabulary size of the
/// folder's config.
fn check_vocab_size(dir: &Path, cfg: &ModelConfig, file: &str, n: usize) -> Result<()> {
    use crate::subword::SOURCE_TOKENIZER;
    let (key, size) = if file == SOURCE_TOKENIZER {
        ("src_vocab_size", cfg.src_vocab_size)
    } else {
        ("tgt_vocab_size", cfg.tgt_vocab_size)
    };
    if n != size {
        bail!(
            "{}: {n} subwords, but {}'s {key} is {size} (a tokenizer of another model, \
             or source and target swapped?)",
            model_file(dir, file).display(),
            dir.join(CONFIG_FILE).display()
        );
    }
    Ok(())
}

/// Copies the tensors of the weights file `path` into the variables of `varmap` (the one
/// dtype policy: float tensors of any width are converted to the variable's dtype). Every
/// variable must be present with its shape; an extra tensor is an error too (a different
/// model).
pub fn load_weights_into(varmap: &VarMap, path: &Path) -> Result<()> {
    let device = {
        let vars = varmap.data().lock().expect("variable map lock poisoned");
        match vars.values().next() {
            Some(v) => v.device().clone(),
            None => Device::Cpu,
        }
    };
    let mut tensors = candle_core::safetensors::load(path, &device)
        .with_context(|| format!("{}: not a readable safetensors file", path.display()))?;
    let vars = varmap.data().lock().expect("variable map lock poisoned");
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let t = tensors.remove(name.as_str());
        check_entry(
            path,
            name,
            t.as_ref().map(|t| (t.dims(), t.dtype())),
            var.dims(),
        )?;
        let t = t.expect("check_entry rejects a missing tensor");
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    check_no_extra(path, &tensors.keys().collect::<Vec<_>>())
}

/// Tensor `name` of the weights file `path` (its shape and dtype, if there), which the
/// model needs with shape `dims`: it must be there, of that shape, and a float.
fn check_entry(
    path: &Path,
    name: &str,
    entry: Option<(&[usize], DType)>,
    dims: &[usize],
) -> Result<()> {
    let path = path.display();
    let Some((shape, dtype)) = entry else {
        bail!(
            "{path}: tensor `{name}` is missing (the model of {CONFIG_FILE} needs shape {dims:?})"
        );
    };
    if shape != dims {
        bail!(
            "{path}: tensor `{name}` has shape {shape:?}, but the model of {CONFIG_FILE} needs {dims:?}"
        );
    }
    if !dtype.is_float() {
        bail!("{path}: tensor `{name}` has dtype {dtype:?}, expected a float type");
    }
    Ok(())
}

/// The tensors of `path` the model did not use: none is allowed (another model's file).
fn check_no_extra(path: &Path, extra: &[&String]) -> Result<()> {
    if let Some(first) = extra.iter().min() {
        bail!(
            "{}: unexpected tensor `{first}` (not part of the model described by {CONFIG_FILE}; {} extra in all)",
            path.display(),
            extra.len()
        );
    }
    Ok(())
}
