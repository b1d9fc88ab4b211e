//! The training configuration: a TOML file, `--set key=value` overrides, validation.
//!
//! Every key has a default and unknown keys are errors, in every table. The `[model]`
//! table is the model's own [`ModelConfig`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::model::ModelConfig;
use crate::train::optim::AdamParams;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `lr` after warmup.
    Constant,
    /// `lr · sqrt(warmup / step)` after warmup.
    InverseSqrt,
    /// GNMT (Wu et al. 2016): constant, then from `decay_start` multiplied by
    /// `decay_factor` every `decay_interval` steps, at most `decay_times` times.
    Gnmt,
    /// RNMT+ (Chen et al. 2018, one replica): constant, then from `decay_start` an
    /// exponential decay by `decay_factor` per `decay_end - decay_start` steps.
    RnmtPlus,
    /// Constant, multiplied by `decay_factor` whenever validation BLEU has not improved
    /// for `plateau_patience` validations.
    Plateau,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Folder written by `rnmt prepare` (tokenizers and corpus paths).
    pub data: PathBuf,
    /// Where checkpoints, `best/`, `metrics.jsonl` and `curve.svg` go.
    pub run_dir: PathBuf,
    /// Seeds the weights, the batch order and the dropout masks.
    pub seed: u64,
    /// `cpu`, `cuda:N` or `metal` (`cuda`/`metal` need the cargo features).
    pub device: String,
    /// CPU threads for rayon and candle's matmul (gemm); 0 = one per physical core.
    pub threads: usize,
    /// How many parts each batch is split into, each part's gradient computed by a
    /// worker on threads of its own and the parts' gradients summed: data parallelism
    /// inside one process, as Marian trains on CPU threads (two half batches on one
    /// thread each run faster than one batch on two threads). 0 = one worker per thread
    /// on the CPU, one on a GPU. The sum is the batch's gradient up to float summation
    /// order; each part draws its own dropout masks.
    pub batch_workers: usize,

    /// Token budget of a batch: rows × longest side (source or target).
    pub max_tokens: usize,
    /// Stop after this many updates (0 = no limit).
    pub max_steps: u64,
    /// Stop after this many epochs (0 = no limit).
    pub max_epochs: u64,
    /// Stop after this many minutes of training (0 = no limit). Not reproducible.
    pub max_minutes: f64,

    /// Peak learning rate.
    pub lr: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: u64,
    pub decay_start: u64,
    pub decay_end: u64,
    pub decay_interval: u64,
    pub decay_times: u64,
    pub decay_factor: f64,
    /// The RNMT+ decay measured in the fraction of `max_minutes` trained instead of in
    /// steps: from `decay_start_fraction` to `decay_end_fraction` of the time budget
    /// (`decay_end_fraction = 0`: by steps, `decay_start`/`decay_end`). A recipe so
    /// written decays alike on a fast and a slow machine; like `max_minutes`, it makes a
    /// run depend on the machine's speed, so it is not reproducible step for step.
    pub decay_start_fraction: f64,
    pub decay_end_fraction: f64,
    pub plateau_patience: u64,
    pub min_lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW); 0 = plain Adam.
    pub weight_decay: f64,
    /// Global gradient-norm bound (0 = no clipping).
    pub clip_norm: f64,
    /// An update whose loss or gradient norm is not finite, or whose loss explodes (over
    /// ten times that of a uniform guess, 10·ln(target vocabulary)), is skipped; after
    /// this many in a row training stops with an error, its last checkpoint intact.
    pub max_bad_steps: u64,
    pub label_smoothing: f64,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999;
    /// 0 = off): validation, checkpoints and `best/` then hold the average, the raw
    /// weights go on training (`train::ema`).
    pub ema_decay: f64,
    /// BPE-dropout (Provilkov et al. 2020): each epoch segments the training sentences
    /// anew, leaving out every possible merge with this probability (e.g. 0.1; 0 = off).
    /// Both sides; validation and search keep the deterministic segmentation.
    pub subword_dropout: f64,
    /// Unigram sampling (Kudo 2018), unigram subwords' counterpart of `subword_dropout`:
    /// each epoch draws every training sentence's segmentation with probability
    /// ∝ P(x)^α (e.g. 0.2 or 0.5; smaller is more varied; 0 = off).
    pub subword_alpha: f64,
    /// `bf16`: the training step's large products (the output layer's forward and the two
    /// of its backward, the recurrent layers' input projections and their backward) with
    /// bf16 inputs and f32 sums on Intel AMX (Xeon of the 4th generation, Sapphire Rapids,
    /// and later): mixed precision; the weights, gradients, Adam, validation and search
    /// stay f32. Refused where the CPU has no AMX-BF16 and on GPUs. `f32` (the default):
    /// every product in f32.
    pub precision: Precision,

    /// Validate (and checkpoint) every N updates (0 = only at the end).
    pub valid_every: u64,
    /// At most this many dev sentences are translated for BLEU (0 = all).
    pub valid_max_sentences: usize,
    /// Token budget of validation batches.
    pub valid_max_tokens: usize,
    /// Write a metrics line every N updates (1 = every update).
    pub log_every: u64,
    /// Checkpoints kept besides the best one.
    pub keep_last: usize,
    /// Stop after this many validations without a better BLEU (0 = never).
    pub patience: u64,

    /// At the end of training, choose `best/`'s search settings (α, β in its config.json)
    /// by beam-5 BLEU on the dev set's first `valid_max_sentences` sentences over a small
    /// grid (`train::tune`). Translation models with a dev set only.
    pub tune_search: bool,
    /// Data-parallel training (`mpirun -np N rnmt train`): how long one collective may
    /// wait for the other ranks before this rank gives up with an error naming the
    /// operation. It must cover rank 0's validation and checkpoint writing, which the
    /// other ranks wait for at their next step.
    pub collective_timeout_s: f64,
    pub model: ModelConfig,
}

/// The precision of the training step's largest products ([`TrainConfig::precision`]).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("data"),
            run_dir: PathBuf::from("run"),
            seed: 1,
            device: "cpu".into(),
            threads: 0,
            batch_workers: 0,
            max_tokens: 4096,
            max_steps: 0,
            max_epochs: 10,
            max_minutes: 0.0,
            lr: 1e-3,
            schedule: ScheduleKind::RnmtPlus,
            warmup_steps: 500,
            decay_start: 20_000,
            decay_end: 60_000,
            decay_interval: 10_000,
            decay_times: 4,
            decay_factor: 0.5,
            decay_start_fraction: 0.0,
            decay_end_fraction: 0.0,
            plateau_patience: 2,
            min_lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_norm: 5.0,
            max_bad_steps: 5,
            label_smoothing: 0.1,
            ema_decay: 0.0,
            subword_dropout: 0.0,
            subword_alpha: 0.0,
            precision: Precision::F32,
            valid_every: 1000,
            valid_max_sentences: 500,
            valid_max_tokens: 4096,
            log_every: 1,
            keep_last: 3,
            patience: 10,
            tune_search: true,
            collective_timeout_s: 600.0,
            model: ModelConfig::default(),
        }
    }
}

impl TrainConfig {
    /// Reads `path` and applies `overrides` (`key=value`, dotted keys for tables, the
    /// value parsed as a TOML value or, failing that, taken as a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml(&text, overrides).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses a config from TOML text plus overrides, then validates it.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let cfg: Self = if overrides.is_empty() {
            // Straight from the text, so errors point at the line of the bad key.
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?
        } else {
            let mut table: toml::Table = toml::from_str(text)
                .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
            let known = toml::Table::try_from(Self::default())?;
            for o in overrides {
                apply_override(&mut table, &known, o)?;
            }
            let merged = toml::to_string(&table)?;
            toml::from_str(&merged).map_err(|e| {
                anyhow::anyhow!("{} (after --set overrides)", e.to_string().trim_end())
            })?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range checks; errors name the key and its value.
    pub fn validate(&self) -> Result<()> {
        fn positive(key: &str, v: f64) -> Result<()> {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{key} = {v}: must be a positive number");
            }
            Ok(())
        }
        fn unit(key: &str, v: f64) -> Result<()> {
            if !(0.0..1.0).contains(&v) {
                bail!("{key} = {v}: must be in [0, 1)");
            }
            Ok(())
        }
        positive("lr", self.lr)?;
        positive("eps", self.eps)?;
        unit("beta1", self.beta1)?;
        unit("beta2", self.beta2)?;
        unit("label_smoothing", self.label_smoothing)?;
        unit("ema_decay", self.ema_decay)?;
        unit("subword_dropout", self.subword_dropout)?;
        if !(self.subword_alpha >= 0.0 && self.subword_alpha.is_finite()) {
            bail!(
                "subword_alpha = {}: must be >= 0 (0 turns sampling off)",
                self.subword_alpha
            );
        }
        if self.subword_dropout > 0.0 && self.subword_alpha > 0.0 {
            bail!(
                "subword_dropout = {} and subword_alpha = {}: set one (BPE-dropout for BPE \
                 subwords, sampling for unigram ones)",
                self.subword_dropout,
                self.subword_alpha
            );
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            bail!("weight_decay = {}: must be >= 0", self.weight_decay);
        }
        if self.clip_norm.is_nan() || self.clip_norm < 0.0 {
            bail!(
                "clip_norm = {}: must be >= 0 (0 turns clipping off)",
                self.clip_norm
            );
        }
        if self.min_lr.is_nan() || self.min_lr < 0.0 {
            bail!("min_lr = {}: must be >= 0", self.min_lr);
        }
        if self.max_minutes.is_nan() || self.max_minutes < 0.0 {
            bail!("max_minutes = {}: must be >= 0", self.max_minutes);
        }
        if self.batch_workers > crate::device::MAX_THREADS {
            bail!(
                "batch_workers = {}: at most {} (0 = one per thread)",
                self.batch_workers,
                crate::device::MAX_THREADS
            );
        }
        if !(1.0..=86_400.0).contains(&self.collective_timeout_s) {
            bail!(
                "collective_timeout_s = {}: must be between 1 and 86400 seconds",
                self.collective_timeout_s
            );
        }
        if !(self.decay_factor > 0.0 && self.decay_factor <= 1.0) {
            bail!("decay_factor = {}: must be in (0, 1]", self.decay_factor);
        }
        if self.max_tokens == 0 {
            bail!("max_tokens = 0: a batch needs a positive token budget");
        }
        if self.valid_max_tokens == 0 {
            bail!("valid_max_tokens = 0: must be positive");
        }
        if self.max_bad_steps == 0 {
            bail!(
                "max_bad_steps = 0: must be at least 1 (updates skipped in a row before stopping)"
            );
        }
        if self.log_every == 0 {
            bail!("log_every = 0: must be at least 1");
        }
        if self.max_steps == 0 && self.max_epochs == 0 && self.max_minutes == 0.0 {
            bail!("max_steps, max_epochs and max_minutes are all 0: training would never stop");
        }
        if self.schedule == ScheduleKind::RnmtPlus && self.decay_end <= self.decay_start {
            bail!(
                "decay_end = {} must be greater than decay_start = {} for schedule rnmt_plus",
                self.decay_end,
                self.decay_start
            );
        }
        if self.decay_end_fraction != 0.0 || self.decay_start_fraction != 0.0 {
            let (a, b) = (self.decay_start_fraction, self.decay_end_fraction);
            if self.schedule != ScheduleKind::RnmtPlus || self.max_minutes == 0.0 {
                bail!(
                    "decay_start_fraction / decay_end_fraction = {a} / {b}: a decay over the \
                     time budget needs schedule = \"rnmt_plus\" and max_minutes > 0"
                );
            }
            if !(0.0 <= a && a < b && b <= 10.0) {
                bail!(
                    "decay_start_fraction = {a}, decay_end_fraction = {b}: need \
                     0 <= start < end <= 10 (fractions of max_minutes)"
                );
            }
        }
        if self.schedule == ScheduleKind::Gnmt && self.decay_interval == 0 {
            bail!("decay_interval = 0: must be positive for schedule gnmt");
        }
        crate::device::parse_device(&self.device)?;
        self.model.validate().context("in [model]")?;
        Ok(())
    }

    pub fn adam_params(&self) -> AdamParams {
        AdamParams {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }
}

/// Sets `key=value` in `table`, creating intermediate tables for dotted keys. `known`
/// (the defaults, which hold every key) catches misspelt keys with their full name.
fn apply_override(table: &mut toml::Table, known: &toml::Table, assignment: &str) -> Result<()> {
    let Some((key, raw)) = assignment.split_once('=') else {
        bail!("--set {assignment}: expected key=value");
    };
    let (key, raw) = (key.trim(), raw.trim());
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {assignment}: bad key `{key}`");
    }
    let mut k = known;
    for (i, part) in parts.iter().enumerate() {
        match k.get(*part) {
            Some(toml::Value::Table(t)) if i + 1 < parts.len() => k = t,
            Some(toml::Value::Table(_)) => {
                bail!("--set {assignment}: `{key}` is a table, not a key")
            }
            Some(_) if i + 1 == parts.len() => {}
            _ => bail!("--set {assignment}: unknown key `{key}`"),
        }
    }
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed one key"),
        // A bare word such as a path: take it as a string.
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut cur = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {assignment}: `{part}` is not a table"),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let cfg = TrainConfig::from_toml(
            "lr = 0.002\nschedule = \"plateau\"\n[model]\nhidden_size = 64\n",
            &[
                "model.embedding_size=32".into(),
                "run_dir=runs/x".into(),
                "clip_norm = 1".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.lr, 0.002);
        assert_eq!(cfg.schedule, ScheduleKind::Plateau);
        assert_eq!(cfg.model.hidden_size, 64);
        assert_eq!(cfg.model.embedding_size, 32);
        assert_eq!(cfg.run_dir, PathBuf::from("runs/x"));
        assert_eq!(cfg.clip_norm, 1.0);
        assert_eq!(cfg.keep_last, TrainConfig::default().keep_last);
    }

    fn err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        format!("{:#}", TrainConfig::from_toml(text, &o).unwrap_err())
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = err("lr = 0.1\nlearning_rate = 3\n", &[]);
        assert!(e.contains("learning_rate") && e.contains("line 2"), "{e}");
        let e = err("[model]\nhiden_size = 3\n", &[]);
        assert!(e.contains("hiden_size"), "{e}");
        let e = err("", &["model.hiden_size=3"]);
        assert!(e.contains("hiden_size"), "{e}");
        let e = err("lr = \"fast\"\n", &[]);
        assert!(e.contains("lr") && e.contains("fast"), "{e}");
        let e = err("lr = -1.0\n", &[]);
        assert!(e.contains("lr = -1"), "{e}");
        let e = err("schedule = \"cosine\"\n", &[]);
        assert!(e.contains("cosine"), "{e}");
        let e = err("", &["label_smoothing=1.5"]);
        assert!(e.contains("label_smoothing = 1.5"), "{e}");
        let e = err("", &["device=tpu"]);
        assert!(e.contains("tpu"), "{e}");
        let e = err("", &["lr"]);
        assert!(e.contains("key=value"), "{e}");
        let e = err("", &["ema_decay=1.0"]);
        assert!(e.contains("ema_decay = 1"), "{e}");
        let e = err("", &["subword_dropout=-0.1"]);
        assert!(e.contains("subword_dropout = -0.1"), "{e}");
        let e = err("", &["subword_dropout=0.1", "subword_alpha=0.2"]);
        assert!(e.contains("set one"), "{e}");
        let e = err("", &["decay_end_fraction=0.9"]);
        assert!(e.contains("max_minutes > 0"), "{e}");
        let e = err(
            "max_minutes = 60.0\n",
            &["decay_start_fraction=0.8", "decay_end_fraction=0.5"],
        );
        assert!(e.contains("0 <= start < end"), "{e}");
        let ok = "max_minutes = 60.0\ndecay_start_fraction = 0.5\ndecay_end_fraction = 1.0\n";
        assert!(TrainConfig::from_toml(ok, &[]).is_ok());
    }
}
