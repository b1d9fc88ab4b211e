//! Checkpoints: atomic files, the training state, keeping the last K and the best,
//! loading with shape checks, and checkpoint averaging.
//!
//! Layout of a run folder:
//! ```text
//! RUN/config.toml                    the effective training config
//! RUN/tokenizer-{src,tgt}.json       copied from the prepared data
//! RUN/checkpoints/step-N/            model.safetensors, config.json,
//!                                    optimizer.safetensors, train_state.json
//! RUN/best/                          model folder of the best checkpoint (by BLEU)
//! RUN/metrics.jsonl, RUN/curve.svg
//! ```
//! A checkpoint is assembled in `step-N.tmp` (each file itself written to a temporary
//! name, fsynced and renamed) and then renamed to `step-N`, so a crash never leaves a
//! half-written `step-N`. `train_state.json` is the last file written.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::train::schedule::PlateauState;

pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "train_state.json";

/// The layout of `train_state.json` this rnmt writes. Version 1 (no `version` key)
/// also held `adam_t`, Adam's update count, which always equals `step` (one Adam update
/// per step): it is derived now, and version-1 files still load.
pub const STATE_VERSION: u32 = 2;

/// Everything besides weights and moments needed to continue a run exactly.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// [`STATE_VERSION`] when written by this rnmt.
    pub version: u32,
    /// Updates done (also Adam's update count, for its bias correction).
    pub step: u64,
    /// The epoch of the next batch, and its index in that epoch's batch list.
    pub epoch: u64,
    pub batch_index: usize,
    /// The dropout RNG (ChaCha8): seed, stream and position in the key stream.
    pub rng_seed: [u8; 32],
    pub rng_stream: u64,
    pub rng_word_pos: u128,
    pub plateau: PlateauState,
    /// The best validation score: BLEU, or a language model's negative cross-entropy.
    #[serde(alias = "best_bleu")]
    pub best_score: Option<f64>,
    pub best_step: Option<u64>,
    /// Validations since the best score (early stopping).
    pub bad_validations: u64,
    /// Updates skipped in a row for a non-finite or exploding loss.
    pub bad_steps: u64,
    /// [`data_fingerprint`] of the files the run was trained with (the prepared data's
    /// tokenizers), checked on resume. None in version-1 states.
    pub data_fingerprint: Option<String>,
    pub target_tokens_seen: u64,
    pub elapsed_s: f64,
}

impl Default for TrainState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            step: 0,
            epoch: 0,
            batch_index: 0,
            rng_seed: [0; 32],
            rng_stream: 0,
            rng_word_pos: 0,
            plateau: PlateauState::default(),
            best_score: None,
            best_step: None,
            bad_validations: 0,
            bad_steps: 0,
            data_fingerprint: None,
            target_tokens_seen: 0,
            elapsed_s: 0.0,
        }
    }
}

use crate::io::{publish_dir, repair_published, write_atomic, write_atomic_with};
pub use crate::model::{CONFIG_FILE, WEIGHTS_FILE};

pub fn save_tensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    write_atomic_with(path, |tmp| {
        Ok(candle_core::safetensors::save(tensors, tmp)?)
    })
}

/// Reads a safetensors file; a truncated or garbled file gives an error naming it.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}: not a readable safetensors file", path.display()))
}

/// Reads a training state of any version up to [`STATE_VERSION`].
pub fn read_state(path: &Path) -> Result<TrainState> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_state(&text).with_context(|| format!("{}: bad training state", path.display()))
}

fn parse_state(text: &str) -> Result<TrainState> {
    let mut value: serde_json::Value = serde_json::from_str(text)?;
    let Some(object) = value.as_object_mut() else {
        bail!("expected a JSON object");
    };
    let version = match object.get("version") {
        None => 1,
        Some(v) => v
            .as_u64()
            .with_context(|| format!("`version` must be a whole number, not {v}"))?,
    };
    if version > STATE_VERSION as u64 {
        bail!(
            "version {version} was written by a newer rnmt; this one reads versions up to \
             {STATE_VERSION}"
        );
    }
    if version == 1 {
        let step = object.get("step").and_then(|s| s.as_u64());
        match object.remove("adam_t") {
            Some(t) if t.as_u64() == step => {}
            Some(t) => bail!(
                "version 1: adam_t = {t} differs from step = {}; every step is one Adam \
                 update, so the file is inconsistent",
                step.map_or("?".into(), |s| s.to_string())
            ),
            None => bail!("version 1 (no `version` key) needs `adam_t`"),
        }
        object.insert("version".into(), STATE_VERSION.into());
        object.insert("bad_steps".into(), 0.into());
        object.insert("data_fingerprint".into(), serde_json::Value::Null);
    }
    Ok(serde_json::from_value(value)?)
}

/// `RUN/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step-{step}"))
}

/// Complete checkpoints of a run (those with a training state), oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            if path.join(STATE_FILE).is_file() {
                out.push((step, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Publishes a checkpoint folder assembled by `fill` (which writes the files into the
/// folder it is given, [`STATE_FILE`] last) as `RUN/checkpoints/step-N`, through
/// [`publish_dir`].
pub fn publish_checkpoint(
    run_dir: &Path,
    step: u64,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoint_dir(run_dir, step);
    fs::create_dir_all(checkpoints_dir(run_dir))
        .with_context(|| format!("cannot create {}", checkpoints_dir(run_dir).display()))?;
    publish_dir(&dir, fill)?;
    Ok(dir)
}

/// sha256 over the names and contents of `files` (the tokenizers a run trains with):
/// another prepared folder with the same vocabulary sizes gets another fingerprint.
pub fn data_fingerprint(files: &[PathBuf]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for f in files {
        let bytes = fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        hash.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok(crate::io::hex(&hash.finalize()))
}

/// `RUN/.lock`: held (an advisory file lock) by the trainer writing into the run folder.
pub const LOCK_FILE: &str = ".lock";

/// The run folder's lock: one trainer at a time, since two would write the same
/// checkpoints and append to one `metrics.jsonl`. The kernel drops the lock when the
/// process ends, however it ends, so a killed trainer never leaves a stale lock; the
/// file stays and names the last holder's pid.
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
        let path = run_dir.join(LOCK_FILE);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                file.rewind()?;
                write!(file, "{}", std::process::id())?;
                file.flush()?;
                Ok(Self { _file: file })
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_string(),
                    p => p.to_string(),
                };
                bail!(
                    "{} is in use by another trainer (pid {pid}, which holds {}): two trainers \
                     on one run folder would overwrite each other's checkpoints; wait for it \
                     or stop it, or choose another run_dir",
                    run_dir.display(),
                    path.display()
                )
            }
            Err(fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
    }
}

/// `RUN/best`: the model folder of the best checkpoint.
pub fn best_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("best")
}

/// The model card, in every checkpoint and in `best/`.
pub const MODEL_CARD_FILE: &str = "README.md";

/// Publishes `RUN/best` from the checkpoint folder `checkpoint`: its weights, config and
/// model card, plus `model_files` (the tokenizers). The card is written last, so a
/// `best.tmp` with a card is complete.
pub fn publish_best(run_dir: &Path, checkpoint: &Path, model_files: &[PathBuf]) -> Result<()> {
    let mut files: Vec<PathBuf> = [WEIGHTS_FILE, CONFIG_FILE]
        .iter()
        .map(|f| checkpoint.join(f))
        .collect();
    files.extend(model_files.iter().cloned());
    files.push(checkpoint.join(MODEL_CARD_FILE));
    publish_dir(&best_dir(run_dir), |tmp| {
        for f in &files {
            let name = f
                .file_name()
                .with_context(|| format!("{} has no name", f.display()))?;
            let bytes = fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            write_atomic(&tmp.join(name), &bytes)?;
        }
        Ok(())
    })
}

/// Finishes or undoes publications of checkpoints and `best/` that a crash
/// interrupted, then makes `best/` the model of `best_step` when it is not (missing, or
/// left from an earlier best because the crash came between the checkpoint and `best/`).
pub fn repair_run(run_dir: &Path, best_step: Option<u64>, model_files: &[PathBuf]) -> Result<()> {
    repair_checkpoints(run_dir)?;
    let best = best_dir(run_dir);
    repair_published(&best, |d| d.join(MODEL_CARD_FILE).is_file())?;
    let Some(step) = best_step else {
        return Ok(());
    };
    let checkpoint = checkpoint_dir(run_dir, step);
    if !checkpoint.join(STATE_FILE).is_file() || !checkpoint.join(MODEL_CARD_FILE).is_file() {
        // A run from before checkpoints held their card: nothing to re-publish from.
        return Ok(());
    }
    let same = |name: &str| -> bool {
        match (fs::read(best.join(name)), fs::read(checkpoint.join(name))) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    };
    // The end of training may have tuned best/'s search settings and added them to its
    // card: that is still the best checkpoint's model.
    let same_config = || -> bool {
        let (Ok(mut a), Ok(b)) = (
            crate::model::load_config(&best),
            crate::model::load_config(&checkpoint),
        ) else {
            return false;
        };
        a.decode_alpha = b.decode_alpha;
        a.decode_beta = b.decode_beta;
        a == b
    };
    let same_card_start = || -> bool {
        match (
            fs::read(best.join(MODEL_CARD_FILE)),
            fs::read(checkpoint.join(MODEL_CARD_FILE)),
        ) {
            (Ok(a), Ok(b)) => a.starts_with(&b),
            _ => false,
        }
    };
    let complete = same(WEIGHTS_FILE)
        && same_config()
        && same_card_start()
        && model_files
            .iter()
            .all(|f| f.file_name().is_some_and(|n| best.join(n).is_file()));
    if !complete {
        eprintln!(
            "{}: re-published from {} (the best checkpoint)",
            best.display(),
            checkpoint.display()
        );
        publish_best(run_dir, &checkpoint, model_files)?;
    }
    Ok(())
}

/// The checkpoint part of [`repair_run`], run before a resume picks its checkpoint.
pub fn repair_checkpoints(run_dir: &Path) -> Result<()> {
    let dir = checkpoints_dir(run_dir);
    if !dir.is_dir() {
        return Ok(());
    }
    let mut names = std::collections::BTreeSet::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if let Some(base) = name
            .strip_suffix(".tmp")
            .or_else(|| name.strip_suffix(".old"))
        {
            names.insert(base.to_string());
        }
    }
    for name in names {
        repair_published(&dir.join(name), |d| d.join(STATE_FILE).is_file())?;
    }
    Ok(())
}

/// Deletes all checkpoints but the last `keep_last` and `keep` (the best).
pub fn prune_checkpoints(run_dir: &Path, keep_last: usize, keep: Option<u64>) -> Result<()> {
    let all = list_checkpoints(run_dir)?;
    let n = all.len();
    for (i, (step, path)) in all.into_iter().enumerate() {
        if i + keep_last.max(1) < n && Some(step) != keep {
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// The element-wise mean of the weights of several checkpoints (or model folders).
/// All must hold the same tensors with the same shapes and the same `config.json`.
/// Returns the averaged tensors and the config text.
pub fn average_checkpoints(dirs: &[PathBuf]) -> Result<(HashMap<String, Tensor>, String)> {
    let Some(first) = dirs.first() else {
        bail!("nothing to average: no checkpoints given");
    };
    let config_path = first.join(CONFIG_FILE);
    let config = fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config_value: serde_json::Value = serde_json::from_str(&config)
        .with_context(|| format!("{}: bad JSON", config_path.display()))?;
    let mut sum: HashMap<String, Tensor> = HashMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let cp = dir.join(CONFIG_FILE);
        let other: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(&cp).with_context(|| format!("cannot read {}", cp.display()))?,
        )
        .with_context(|| format!("{}: bad JSON", cp.display()))?;
        if other != config_value {
            bail!(
                "{} differs from {}: only checkpoints of one model can be averaged",
                cp.display(),
                config_path.display()
            );
        }
        let path = dir.join(WEIGHTS_FILE);
        let tensors = load_tensors(&path)?;
        if let Some(name) = tensors
            .keys()
            .find(|n| n.ends_with(crate::model::weights_file::INT8_SCALE_SUFFIX))
        {
            bail!(
                "{}: stored in int8 (`{name}`): average the f32 or f16 checkpoints it was made from",
                path.display()
            );
        }
        if i == 0 {
            for (name, t) in tensors {
                sum.insert(name, t.to_dtype(DType::F64)?);
            }
            continue;
        }
        if let Some(missing) = sum.keys().find(|k| !tensors.contains_key(*k)) {
            bail!("{}: tensor `{missing}` is missing", path.display());
        }
        for (name, t) in tensors {
            let acc = sum
                .get_mut(&name)
                .with_context(|| format!("{}: unexpected tensor `{name}`", path.display()))?;
            if acc.dims() != t.dims() {
                bail!(
                    "{}: tensor `{name}` has shape {:?}, {} has {:?}",
                    path.display(),
                    t.dims(),
                    first.join(WEIGHTS_FILE).display(),
                    acc.dims()
                );
            }
            *acc = (&*acc + t.to_dtype(DType::F64)?)?;
        }
    }
    let n = dirs.len() as f64;
    let avg = sum
        .into_iter()
        .map(|(k, t)| Ok((k, (t / n)?.to_dtype(DType::F32)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok((avg, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one")?;
        write_atomic(&p, b"two")?;
        assert_eq!(fs::read_to_string(&p)?, "two");
        let names: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
        Ok(())
    }

    #[test]
    fn state_versions() -> Result<()> {
        let state = TrainState {
            step: 7,
            epoch: 1,
            best_step: Some(4),
            ..Default::default()
        };
        let json = serde_json::to_string(&state)?;
        assert!(
            json.contains("\"version\":2") && !json.contains("adam_t"),
            "{json}"
        );
        assert_eq!(parse_state(&json)?, state);

        // Version 1: no `version`, Adam's count beside the step.
        let mut v1: serde_json::Value = serde_json::from_str(&json)?;
        v1.as_object_mut().unwrap().remove("version");
        v1["adam_t"] = 7.into();
        assert_eq!(parse_state(&v1.to_string())?, state);
        v1["adam_t"] = 6.into();
        let e = format!("{:#}", parse_state(&v1.to_string()).unwrap_err());
        assert!(e.contains("adam_t = 6") && e.contains("step = 7"), "{e}");

        let mut v3: serde_json::Value = serde_json::from_str(&json)?;
        v3["version"] = 3.into();
        let e = format!("{:#}", parse_state(&v3.to_string()).unwrap_err());
        assert!(e.contains("version 3") && e.contains("newer rnmt"), "{e}");
        // A version-2 file with adam_t is not one this rnmt wrote.
        let mut bad: serde_json::Value = serde_json::from_str(&json)?;
        bad["adam_t"] = 7.into();
        assert!(parse_state(&bad.to_string()).is_err());
        Ok(())
    }

    /// A checkpoint folder with the files `publish_best` copies, `tag` in each.
    fn fake_checkpoint(run: &Path, step: u64, tag: &str) -> Result<PathBuf> {
        publish_checkpoint(run, step, |d| {
            for f in [WEIGHTS_FILE, CONFIG_FILE, MODEL_CARD_FILE, STATE_FILE] {
                write_atomic(&d.join(f), format!("{tag} {f}").as_bytes())?;
            }
            Ok(())
        })
    }

    #[test]
    fn interrupted_publications_are_repaired() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let run = dir.path();
        let tok = run.join("tokenizer-src.json");
        fs::write(&tok, "tok")?;
        let files = [tok];
        let c4 = fake_checkpoint(run, 4, "four")?;
        let c8 = fake_checkpoint(run, 8, "eight")?;
        let best = best_dir(run);
        let card = || fs::read_to_string(best.join(MODEL_CARD_FILE)).unwrap();

        // Killed between the best checkpoint and best/: no best/ at all.
        repair_run(run, Some(4), &files)?;
        assert_eq!(card(), format!("four {MODEL_CARD_FILE}"));
        assert!(best.join("tokenizer-src.json").is_file());

        // best/ still holds the previous best while the state says 8.
        repair_run(run, Some(8), &files)?;
        assert_eq!(card(), format!("eight {MODEL_CARD_FILE}"));

        // Killed after best/ became best.old and before best.tmp was renamed.
        publish_best(run, &c4, &files)?;
        let (tmp, old) = (run.join("best.tmp"), run.join("best.old"));
        fs::rename(&best, &old)?;
        publish_best(run, &c8, &files)?;
        fs::rename(&best, &tmp)?;
        repair_run(run, None, &files)?;
        assert_eq!(card(), format!("eight {MODEL_CARD_FILE}"));
        assert!(!tmp.exists() && !old.exists());

        // An unfinished best.tmp (no card) is removed, best/ left as it was.
        fs::create_dir_all(&tmp)?;
        fs::write(tmp.join(WEIGHTS_FILE), "half")?;
        repair_run(run, None, &files)?;
        assert!(!tmp.exists());
        assert_eq!(card(), format!("eight {MODEL_CARD_FILE}"));

        // A complete step-12.tmp (first publication, killed before its rename) is
        // put in place; an unfinished one is removed.
        let c12 = fake_checkpoint(run, 12, "twelve")?;
        fs::rename(&c12, run.join("checkpoints/step-12.tmp"))?;
        fs::create_dir_all(run.join("checkpoints/step-16.tmp"))?;
        repair_checkpoints(run)?;
        let steps: Vec<u64> = list_checkpoints(run)?.into_iter().map(|c| c.0).collect();
        assert_eq!(steps, vec![4, 8, 12]);
        let names: Vec<String> = fs::read_dir(checkpoints_dir(run))?
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(c8.is_dir());
        Ok(())
    }

    #[test]
    fn one_trainer_per_run_folder() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let run = dir.path().join("run");
        let lock = RunLock::acquire(&run)?;
        let e = format!("{:#}", RunLock::acquire(&run).err().expect("locked"));
        assert!(
            e.contains(&format!("pid {}", std::process::id()))
                && e.contains(&run.display().to_string())
                && e.contains("in use"),
            "{e}"
        );
        drop(lock);
        RunLock::acquire(&run)?;
        Ok(())
    }

    #[test]
    fn keeps_last_k_and_best() -> Result<()> {
        let dir = tempfile::tempdir()?;
        for step in [10, 20, 30, 40, 50] {
            publish_checkpoint(dir.path(), step, |d| {
                write_atomic(&d.join(STATE_FILE), b"{}")
            })?;
        }
        // An unfinished checkpoint (no state) is not listed.
        fs::create_dir_all(checkpoint_dir(dir.path(), 60))?;
        prune_checkpoints(dir.path(), 2, Some(20))?;
        let steps: Vec<u64> = list_checkpoints(dir.path())?
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(steps, vec![20, 40, 50]);
        Ok(())
    }

    #[test]
    fn averaging_and_its_errors() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let dev = Device::Cpu;
        let mk = |name: &str, w: Vec<f32>, shape: (usize, usize)| -> Result<PathBuf> {
            let d = dir.path().join(name);
            fs::create_dir_all(&d)?;
            write_atomic(&d.join(CONFIG_FILE), b"{\"hidden_size\": 4}")?;
            let mut t = HashMap::new();
            t.insert("w".to_string(), Tensor::from_vec(w, shape, &dev)?);
            save_tensors(&d.join(WEIGHTS_FILE), &t)?;
            Ok(d)
        };
        let a = mk("a", vec![1.0, 2.0, 3.0, 4.0], (2, 2))?;
        let b = mk("b", vec![3.0, 2.0, 1.0, 0.0], (2, 2))?;
        let (avg, _) = average_checkpoints(&[a.clone(), b])?;
        assert_eq!(avg["w"].flatten_all()?.to_vec1::<f32>()?, vec![2.0; 4]);

        let c = mk("c", vec![1.0; 4], (4, 1))?;
        let e = format!(
            "{:#}",
            average_checkpoints(&[a.clone(), c.clone()]).unwrap_err()
        );
        assert!(
            e.contains("`w`") && e.contains("[4, 1]") && e.contains("c/model.safetensors"),
            "{e}"
        );

        fs::write(c.join(WEIGHTS_FILE), b"garbage, not safetensors")?;
        let e = format!("{:#}", average_checkpoints(&[a, c]).unwrap_err());
        assert!(e.contains("c/model.safetensors"), "{e}");
        Ok(())
    }
}
