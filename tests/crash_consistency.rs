//! Crash consistency: a tiny training run killed with SIGKILL at seeded random points
//! (inside checkpoint and `best/` publication, between atomic writes, after metrics
//! lines and updates; `RNMT_ABORT_AT=NAME:N` makes the process kill itself the Nth time
//! it passes NAME) and resumed each time must end with the weights of an uninterrupted
//! run, and after every kill every checkpoint present is complete and at most one
//! checkpoint interval is lost. A disk-full run on a small tmpfs must stop with a clear
//! error and resume once space is freed.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use rand::{Rng, SeedableRng};
use rnmt::train::checkpoint::{list_checkpoints, MODEL_CARD_FILE, OPTIMIZER_FILE, STATE_FILE};

const VALID_EVERY: u64 = 3;
const STEPS: u64 = 45;

const CONFIG: &str = r#"
seed = 11
max_tokens = 300
max_epochs = 0
lr = 0.003
schedule = "inverse_sqrt"
warmup_steps = 2
valid_max_sentences = 4
keep_last = 2
patience = 0
threads = 1

[model]
embedding_size = 8
hidden_size = 8
encoder_layers = 1
decoder_layers = 1
residual_from = 0
dropout = 0.1
"#;

/// Prepared data from a 120-line Multi30k slice and a config for it.
fn setup(root: &Path) -> Option<PathBuf> {
    let corpora = corpora_dir_for_tests()?;
    for (split, name, n) in [("train", "train", 120), ("val", "val", 8)] {
        for lang in ["de", "en"] {
            let text =
                std::fs::read_to_string(corpora.join(format!("multi30k/{split}.{lang}"))).unwrap();
            let lines: Vec<&str> = text.lines().take(n).collect();
            write(
                root,
                &format!("{name}.{lang}"),
                (lines.join("\n") + "\n").as_bytes(),
            );
        }
    }
    let data = root.join("data");
    let out = prepare(&root.join("train"), Some(&root.join("val")), 300, &data);
    assert!(out.status.success(), "prepare: {}", stderr(&out));
    Some(write(
        root,
        "tiny.toml",
        format!(
            "data = {:?}\nmax_steps = {STEPS}\nvalid_every = {VALID_EVERY}\n{CONFIG}",
            data.to_str().unwrap()
        )
        .as_bytes(),
    ))
}

fn train(config: &Path, run_dir: &Path, abort_at: Option<&str>) -> Output {
    let mut cmd = rnmt();
    if list_checkpoints(run_dir).unwrap().is_empty() {
        cmd.arg("train")
            .arg("--config")
            .arg(config)
            .args(["--set", &format!("run_dir={:?}", run_dir.to_str().unwrap())]);
    } else {
        cmd.arg("train").arg("--resume").arg(run_dir);
    }
    match abort_at {
        Some(a) => cmd.env("RNMT_ABORT_AT", a),
        None => cmd.env_remove("RNMT_ABORT_AT"),
    };
    run(&mut cmd)
}

/// Every listed checkpoint holds all its files, and its weights load.
fn assert_checkpoints_complete(run_dir: &Path) {
    for (step, dir) in list_checkpoints(run_dir).unwrap() {
        for f in [
            "model.safetensors",
            "config.json",
            OPTIMIZER_FILE,
            MODEL_CARD_FILE,
            STATE_FILE,
        ] {
            assert!(dir.join(f).is_file(), "step {step}: {f} missing");
        }
        rnmt::train::checkpoint::read_state(&dir.join(STATE_FILE)).unwrap();
        rnmt::model::load_model(&dir, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("step {step} does not load: {e:#}"));
    }
}

fn last_step(run_dir: &Path) -> u64 {
    list_checkpoints(run_dir).unwrap().last().map_or(0, |c| c.0)
}

/// The highest step in the metrics log (reached before the kill).
fn logged_step(run_dir: &Path) -> u64 {
    let path = run_dir.join("metrics.jsonl");
    if !path.exists() {
        return 0;
    }
    rnmt::train::log::read_metrics(&path)
        .unwrap()
        .iter()
        .map(|r| r.step())
        .max()
        .unwrap_or(0)
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model.safetensors")).unwrap()
}

fn assert_best_loads(run_dir: &Path) {
    rnmt::model::load_model(run_dir.join("best"), &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("best/ does not load: {e:#}"));
}

#[test]
fn killed_at_random_points_and_resumed_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(config) = setup(tmp.path()) else {
        return;
    };
    let reference = tmp.path().join("reference");
    let out = train(&config, &reference, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(last_step(&reference), STEPS);

    let run_dir = tmp.path().join("crashed");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2024);
    // (point, how many passes a run makes at most before it is killed). Without a BLEU
    // improvement on this tiny task best/ is published once, so `publish.moved_old`
    // (replacing an existing folder) is rarely reached: the unit tests of
    // `train::checkpoint` cover its repair.
    let points = [
        ("publish.filled", 3),
        ("publish.moved_old", 3),
        ("publish.renamed", 3),
        ("atomic.written", 25),
        ("metrics.write", 12),
        ("train.step", 8),
    ];
    let (mut kills, mut runs) = (0, 0);
    let mut hit = std::collections::BTreeMap::new();
    loop {
        runs += 1;
        assert!(runs < 200, "no end after {runs} runs");
        let (point, max) = points[rng.random_range(0..points.len())];
        let n = rng.random_range(1..=max);
        let before = last_step(&run_dir);
        let out = train(&config, &run_dir, Some(&format!("{point}:{n}")));
        if out.status.success() {
            // The run got to its end (the kill point was not reached).
            assert_eq!(last_step(&run_dir), STEPS, "{}", stderr(&out));
            if kills >= 20 {
                break;
            }
            // Too few kills yet: the same run again from scratch.
            std::fs::remove_dir_all(&run_dir).unwrap();
            continue;
        }
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}:{n} should kill: {}",
            stderr(&out)
        );
        kills += 1;
        *hit.entry(point).or_insert(0) += 1;
        assert_checkpoints_complete(&run_dir);
        let (reached, kept) = (logged_step(&run_dir).max(before), last_step(&run_dir));
        assert!(
            reached <= kept + VALID_EVERY,
            "{point}:{n}: reached step {reached}, but the last checkpoint is {kept}"
        );
        if run_dir.join("best").exists() {
            assert_best_loads(&run_dir);
        }
    }
    eprintln!("{kills} kills in {runs} runs: {hit:?}");
    assert!(kills >= 20, "only {kills} kills");
    assert!(hit.len() >= 4, "{hit:?}");
    assert_checkpoints_complete(&run_dir);
    assert_best_loads(&run_dir);
    let last = rnmt::train::checkpoint::checkpoint_dir(&run_dir, STEPS);
    assert!(
        weights(&last) == weights(&rnmt::train::checkpoint::checkpoint_dir(&reference, STEPS)),
        "final weights differ from the uninterrupted run's"
    );
    assert!(weights(&run_dir.join("best")) == weights(&reference.join("best")));
}

/// A full disk: training stops with an error naming the file it could not write, every
/// checkpoint present is complete, and once space is freed `--resume` finishes the run
/// with the uninterrupted run's weights.
#[test]
fn disk_full_then_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(config) = setup(tmp.path()) else {
        return;
    };
    let mnt = tmp.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=400k", "tmpfs"])
        .arg(&mnt)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: cannot mount a tmpfs here (needs root): {mounted:?}");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let reference = tmp.path().join("reference");
    assert!(train(&config, &reference, None).status.success());

    let run_dir = mnt.join("run");
    let out = train(&config, &run_dir, None);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("No space left on device"), "{e}");
    assert!(e.contains(&run_dir.display().to_string()), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert_checkpoints_complete(&run_dir);
    let kept = last_step(&run_dir);
    assert!(kept < STEPS, "the disk should fill before the end");

    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(grown.success());
    let out = train(&config, &run_dir, None);
    assert!(out.status.success(), "resume: {}", stderr(&out));
    assert_checkpoints_complete(&run_dir);
    assert_best_loads(&run_dir);
    let last = rnmt::train::checkpoint::checkpoint_dir(&run_dir, STEPS);
    assert!(
        weights(&last) == weights(&rnmt::train::checkpoint::checkpoint_dir(&reference, STEPS)),
        "final weights differ from the uninterrupted run's"
    );
}
