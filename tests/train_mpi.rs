//! Data-parallel `rnmt train` on a real Multi30k slice. Inside one process, batch
//! workers on threads train the same model as one worker. Under `mpirun` (the `mpi`
//! feature): two ranks train the same model as one process, a dead or hung rank ends the
//! run with an error instead of a hang, a run resumes with another rank count, and ranks
//! that disagree on the config refuse to start. The default build is checked to refuse
//! a launcher's ranks. BPE-dropout's per-epoch segmentations resume exactly too.
//!
//! Tolerance of the equivalence, from float summation order only: each rank sums its own
//! sentences' losses and gradients and the all-reduce adds the two sums, where one process
//! adds all sentences in one pass. Both are correct f32 sums of the same terms, so they
//! differ by a few ulps per element (relative 1e-7 to 1e-6). Adam divides by the root of
//! the second moment, so a weight moves by at most `lr` per step whatever the gradient's
//! rounding; over a few steps the weights agree to ~1e-6 (measured: 3e-7 after 8 steps).
//! The test allows 1e-5 relative on losses and gradient norms and 1e-5 absolute on
//! weights: ten times the measured gap, far below what one different batch would cause
//! (the losses of consecutive steps differ by 1e-3).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rnmt::train::log::{read_metrics, Record};
use std::path::PathBuf;

/// `rnmt train` arguments for the run folder `run`, then `extra`.
fn train_args(cfg: &Path, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "train".to_string(),
        "--config".into(),
        cfg.to_str().unwrap().into(),
        "--set".into(),
        format!("run_dir={:?}", run.to_str().unwrap()),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs `cmd`, killing it (and failing the test) after `limit`: a hang is a failure,
/// never a stuck CI job.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > limit {
            // SIGTERM first: mpirun passes it on to its ranks.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(2));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?} (a hang): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Multi30k slice prepared once per test binary: 2,000 training pairs, 100 dev pairs,
/// 1,000 subwords.
fn prepared(corpora: &Path) -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        multi30k_slice(corpora, dir.path(), "train", "train", 2000);
        multi30k_slice(corpora, dir.path(), "val", "val", 100);
        let data = dir.path().join("data");
        let out = prepare(
            &dir.path().join("train"),
            Some(&dir.path().join("val")),
            1000,
            &data,
        );
        assert!(out.status.success(), "prepare: {}", stderr(&out));
        dir
    })
    .path()
}

/// A small 2+2-layer model, no dropout (dropout masks are drawn per rank), a checkpoint
/// every 4 steps.
fn config(dir: &Path, data: &Path) -> PathBuf {
    write(
        dir,
        "dp.toml",
        format!(
            "data = {:?}\n{}",
            data.join("data").to_str().unwrap(),
            r#"
seed = 5
max_tokens = 800
max_steps = 8
max_epochs = 0
lr = 0.003
schedule = "inverse_sqrt"
warmup_steps = 2
valid_every = 4
valid_max_sentences = 16
keep_last = 4
threads = 1
tune_search = false

[model]
embedding_size = 32
hidden_size = 32
encoder_layers = 2
decoder_layers = 2
dropout = 0.0
"#
        )
        .as_bytes(),
    )
}

/// A temporary folder holding the test's config (`None`: no corpora here).
fn setup() -> Option<(tempfile::TempDir, PathBuf)> {
    let corpora = corpora_dir_for_tests()?;
    let data = prepared(&corpora);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), data);
    Some((tmp, cfg))
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        stderr(out),
        String::from_utf8_lossy(&out.stdout)
    );
}

struct Step {
    step: u64,
    epoch: u64,
    loss: f64,
    grad_norm: f64,
    tokens: usize,
}

fn train_steps(run: &Path) -> Vec<Step> {
    read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Record::Train {
                step,
                epoch,
                loss,
                grad_norm,
                target_tokens,
                ..
            } => Some(Step {
                step,
                epoch,
                loss,
                grad_norm,
                tokens: target_tokens,
            }),
            _ => None,
        })
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Same steps, same batches (token counts), losses and norms within the tolerance.
fn assert_same_steps(a: &[Step], b: &[Step]) {
    assert_eq!(
        a.iter().map(|s| s.step).collect::<Vec<_>>(),
        b.iter().map(|s| s.step).collect::<Vec<_>>()
    );
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.tokens, y.tokens, "step {}: another batch", x.step);
        assert!(
            close(x.loss, y.loss, 1e-5),
            "step {}: loss {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
        assert!(
            close(x.grad_norm, y.grad_norm, 1e-5),
            "step {}: gradient norm {} vs {}",
            x.step,
            x.grad_norm,
            y.grad_norm
        );
    }
}

/// The largest absolute difference between two checkpoints' weights (same names).
fn weight_gap(a: &Path, b: &Path) -> f64 {
    let dev = candle_core::Device::Cpu;
    let wa = candle_core::safetensors::load(a.join("model.safetensors"), &dev).unwrap();
    let wb = candle_core::safetensors::load(b.join("model.safetensors"), &dev).unwrap();
    assert_eq!(wa.len(), wb.len());
    let mut gap = 0f64;
    for (name, ta) in &wa {
        let tb = &wb[name];
        let d = (ta.to_dtype(candle_core::DType::F64).unwrap()
            - tb.to_dtype(candle_core::DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        gap = gap.max(d);
    }
    gap
}

fn checkpoint(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step}"))
}

/// One process's run of the config: the reference.
fn reference(cfg: &Path, run: &Path) {
    let out = run_bounded(
        rnmt().args(train_args(cfg, run, &[])),
        Duration::from_secs(120),
    );
    ok(&out, "one process");
}

/// Batch workers split each batch inside one process, on threads: two train the same
/// model as one (the tolerance above holds for the same reason: each worker sums its
/// part, then the parts are added), and a run continues with another worker count.
#[test]
fn two_batch_workers_train_the_same_model_as_one() {
    let Some((tmp, cfg)) = setup() else {
        return;
    };
    let one = tmp.path().join("one");
    reference(&cfg, &one);
    let reference_steps = train_steps(&one);
    assert_eq!(reference_steps.len(), 8);
    // The losses move: identical numbers would also come from a broken update.
    assert!(reference_steps[7].loss < reference_steps[0].loss);

    let two = tmp.path().join("two");
    let out = run_bounded(
        rnmt().args(train_args(&cfg, &two, &["--set", "batch_workers=2"])),
        Duration::from_secs(120),
    );
    ok(&out, "two workers");
    let e = stderr(&out);
    assert!(e.contains("each batch split over 2 workers"), "{e}");
    assert_same_steps(&reference_steps, &train_steps(&two));
    for step in [4, 8] {
        let gap = weight_gap(&checkpoint(&one, step), &checkpoint(&two, step));
        assert!(gap <= 1e-5, "step {step}: weights differ by {gap}");
    }

    // One worker for 4 steps, then three to step 8.
    let mixed = tmp.path().join("one-then-three");
    let out = run_bounded(
        rnmt().args(train_args(&cfg, &mixed, &["--set", "max_steps=4"])),
        Duration::from_secs(120),
    );
    ok(&out, "one worker, 4 steps");
    assert_resumes_like(
        &one,
        &mixed,
        rnmt().args(resume_to_step_8(&mixed, &["--set", "batch_workers=3"])),
        "one worker, then three to step 8",
    );
}

/// BPE-dropout (`subword_dropout`) segments the training sentences anew in each epoch,
/// from the seed alone: a run interrupted inside an epoch and resumed lands on the same
/// batches, losses and weights as an uninterrupted one.
#[test]
fn subword_dropout_segments_each_epoch_anew_and_resumes_exactly() {
    let Some((tmp, cfg)) = setup() else {
        return;
    };
    const LIMIT: Duration = Duration::from_secs(120);
    // About 10 batches an epoch, so 26 steps cover two whole epochs.
    let args = |run: &Path, steps: &str, dropout: &str| {
        let extra = [
            "--set",
            "max_tokens=6000",
            "--set",
            steps,
            "--set",
            "valid_every=5",
            "--set",
            "keep_last=8",
            "--set",
            dropout,
        ];
        let mut cmd = rnmt();
        cmd.args(train_args(&cfg, run, &extra));
        cmd
    };
    let tokens_per_epoch = |steps: &[Step]| {
        let mut sums = vec![0usize; 2];
        for s in steps.iter().filter(|s| s.epoch < 2) {
            sums[s.epoch as usize] += s.tokens;
        }
        assert!(
            steps.iter().any(|s| s.epoch >= 2),
            "fewer than two whole epochs"
        );
        sums
    };
    // A run of 26 steps with `dropout` in `name`: its steps.
    let trained = |name: &str, dropout: &str| {
        let run = tmp.path().join(name);
        ok(
            &run_bounded(&mut args(&run, "max_steps=26", dropout), LIMIT),
            name,
        );
        (train_steps(&run), run)
    };
    let plain = tokens_per_epoch(&trained("plain", "subword_dropout=0").0);
    assert_eq!(
        plain[0], plain[1],
        "without dropout every epoch has the same subwords"
    );

    let (steps, one) = trained("dropout", "subword_dropout=0.1");
    let sampled = tokens_per_epoch(&steps);
    assert_ne!(
        sampled[0], sampled[1],
        "each epoch draws its own segmentations"
    );
    // Fewer merges, more subwords: 18 % more at p = 0.1 on this vocabulary of 1,000.
    for n in sampled {
        assert!(
            n > plain[0] && (n as f64) < 1.3 * plain[0] as f64,
            "{n} vs {}",
            plain[0]
        );
    }

    // Unigram sampling on BPE subwords is refused, naming the key that fits them.
    let wrong = tmp.path().join("wrong");
    let out = run_bounded(&mut args(&wrong, "max_steps=2", "subword_alpha=0.2"), LIMIT);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("subword_alpha") && e.contains("use subword_dropout"),
        "{e}"
    );

    // Interrupted inside the second epoch, then resumed to step 26.
    let inside = steps.iter().find(|s| s.epoch == 1).unwrap().step + 2;
    let resumed = tmp.path().join("resumed");
    let stop = format!("max_steps={inside}");
    let out = run_bounded(&mut args(&resumed, &stop, "subword_dropout=0.1"), LIMIT);
    ok(&out, "dropout, interrupted");
    assert_eq!(train_steps(&resumed).last().unwrap().epoch, 1);
    let resume = [
        "train",
        "--resume",
        resumed.to_str().unwrap(),
        "--set",
        "max_steps=26",
    ];
    ok(
        &run_bounded(rnmt().args(resume), LIMIT),
        "resumed to step 26",
    );
    assert_same_steps(&steps, &train_steps(&resumed));
    let gap = weight_gap(&checkpoint(&one, 26), &checkpoint(&resumed, 26));
    assert!(gap == 0.0, "weights differ by {gap}");
}

/// `rnmt train --resume RUN --set max_steps=8`, then `extra`.
fn resume_to_step_8(run: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--set",
        "max_steps=8",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs `resume` (which continues the 4-step run `run` to step 8) and checks that it
/// lands on the reference run `one`: the same steps, weights within the tolerance.
fn assert_resumes_like(one: &Path, run: &Path, resume: &mut Command, what: &str) {
    let out = run_bounded(resume, Duration::from_secs(120));
    ok(&out, what);
    assert_same_steps(&train_steps(one), &train_steps(run));
    let gap = weight_gap(&checkpoint(one, 8), &checkpoint(run, 8));
    assert!(gap <= 1e-5, "{what}: weights differ by {gap}");
}

#[cfg(feature = "mpi")]
mod under_mpirun {
    use super::*;

    /// `mpirun` with one app context per entry of `ranks` (MPMD: each its own
    /// arguments and environment), as root if need be, any core count.
    /// One MPMD app context: its environment (`-x K=V`) and its `rnmt` arguments.
    type AppContext<'a> = (Vec<(&'a str, &'a str)>, Vec<String>);

    fn mpirun(ranks: &[AppContext]) -> Command {
        let mut cmd = Command::new("mpirun");
        cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .args(["--oversubscribe", "--bind-to", "none"]);
        for (i, (env, args)) in ranks.iter().enumerate() {
            if i > 0 {
                cmd.arg(":");
            }
            cmd.args(["-np", "1"]);
            for (k, v) in env {
                cmd.arg("-x").arg(format!("{k}={v}"));
            }
            cmd.arg(env!("CARGO_BIN_EXE_rnmt")).args(args);
        }
        cmd
    }

    /// The job failed, its stderr says `needle`, and it ended in well under the
    /// test's bound (by an abort, not a kill).
    fn failed_saying(out: &Output, needle: &str, started: Instant) {
        assert!(!out.status.success());
        let e = stderr(out);
        assert!(e.contains(needle), "{e}");
        assert!(started.elapsed() < Duration::from_secs(60));
    }

    fn two_ranks(args: Vec<String>) -> Command {
        mpirun(&[(vec![], args.clone()), (vec![], args)])
    }

    #[test]
    fn two_ranks_train_the_same_model_as_one_process() {
        let Some((tmp, cfg)) = setup() else {
            return;
        };
        let one = tmp.path().join("one");
        let two = tmp.path().join("two");
        reference(&cfg, &one);
        let out = run_bounded(
            &mut two_ranks(train_args(&cfg, &two, &[])),
            Duration::from_secs(120),
        );
        ok(&out, "two ranks");
        let e = stderr(&out);
        assert!(
            e.contains("data-parallel training over MPI, 2 ranks"),
            "{e}"
        );
        // Rank 0 alone reports: each step's line once.
        assert_eq!(e.matches("training stopped (MaxSteps)").count(), 1, "{e}");

        let (a, b) = (train_steps(&one), train_steps(&two));
        assert_eq!(a.len(), 8);
        assert_same_steps(&a, &b);
        // The losses move: identical numbers would also come from a broken update.
        assert!(a[7].loss < a[0].loss);
        for step in [4, 8] {
            let gap = weight_gap(&checkpoint(&one, step), &checkpoint(&two, step));
            assert!(gap <= 1e-5, "step {step}: weights differ by {gap}");
        }
        // The same checkpoints, validations and best model, written once.
        for run in [&one, &two] {
            assert!(run.join("best/model.safetensors").is_file());
            assert!(checkpoint(run, 4).join("train_state.json").is_file());
        }
        let valid = |run: &Path| -> Vec<f64> {
            read_metrics(&run.join("metrics.jsonl"))
                .unwrap()
                .into_iter()
                .filter_map(|r| match r {
                    Record::Valid { valid_loss, .. } => Some(valid_loss),
                    _ => None,
                })
                .collect()
        };
        let (va, vb) = (valid(&one), valid(&two));
        assert_eq!(va.len(), 2);
        for (x, y) in va.iter().zip(&vb) {
            assert!(close(*x, *y, 1e-5), "valid loss {x} vs {y}");
        }
    }

    #[test]
    fn a_run_resumes_with_another_rank_count() {
        let Some((tmp, cfg)) = setup() else {
            return;
        };
        let one = tmp.path().join("one");
        reference(&cfg, &one);

        // Two ranks for 4 steps, then one process to step 8.
        let mixed = tmp.path().join("two-then-one");
        let out = run_bounded(
            &mut two_ranks(train_args(&cfg, &mixed, &["--set", "max_steps=4"])),
            Duration::from_secs(120),
        );
        ok(&out, "two ranks, 4 steps");
        // The run's own config says max_steps=4: continue to 8.
        assert_resumes_like(
            &one,
            &mixed,
            rnmt().args(resume_to_step_8(&mixed, &[])),
            "two ranks, then one process to step 8",
        );

        // One process for 4 steps, then two ranks to step 8.
        let other = tmp.path().join("one-then-two");
        let out = run_bounded(
            rnmt().args(train_args(&cfg, &other, &["--set", "max_steps=4"])),
            Duration::from_secs(120),
        );
        ok(&out, "one process, 4 steps");
        assert_resumes_like(
            &one,
            &other,
            &mut two_ranks(resume_to_step_8(&other, &[])),
            "one process, then two ranks to step 8",
        );
    }

    #[test]
    fn a_dead_rank_ends_the_others_with_an_error_naming_it() {
        let Some((tmp, cfg)) = setup() else {
            return;
        };
        let run = tmp.path().join("run");
        let args = train_args(&cfg, &run, &["--set", "max_steps=1000"]);
        // Rank 1 is killed (SIGKILL) at its third update.
        let out = run_bounded(
            &mut mpirun(&[
                (vec![], args.clone()),
                (vec![("RNMT_ABORT_AT", "train.step:3")], args),
            ]),
            Duration::from_secs(120),
        );
        assert!(!out.status.success());
        let text = stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("rank 1"), "{text}");
        // Nothing half-written: the run never reached a checkpoint and has none.
        assert!(!checkpoint(&run, 4).exists());
    }

    #[test]
    fn a_hung_rank_times_the_others_out() {
        let Some((tmp, cfg)) = setup() else {
            return;
        };
        let run = tmp.path().join("run");
        let args = train_args(
            &cfg,
            &run,
            &["--set", "max_steps=1000", "--set", "collective_timeout_s=3"],
        );
        // Rank 1 stops for good after its second update; rank 0 waits in the all-reduce.
        let started = Instant::now();
        let out = run_bounded(
            &mut mpirun(&[
                (vec![], args.clone()),
                (vec![("RNMT_STALL_AT", "train.step:2")], args),
            ]),
            Duration::from_secs(120),
        );
        failed_saying(
            &out,
            "rank 0 of 2: the gradient all-reduce did not complete within 3 s",
            started,
        );
    }

    #[test]
    fn an_error_on_one_rank_ends_every_rank_at_once() {
        let Some((tmp, cfg)) = setup() else {
            return;
        };
        let run = tmp.path().join("run");
        reference(&cfg, &run);
        // A new run in a folder with checkpoints is an error on rank 0 only (rank 0 alone
        // reads the run folder); rank 1 is by then waiting for rank 0's weights. The
        // default collective timeout (600 s) is far beyond the test's bound: the job
        // ends because rank 0 aborts it, not by a timeout.
        let started = Instant::now();
        let out = run_bounded(
            &mut two_ranks(train_args(&cfg, &run, &[])),
            Duration::from_secs(120),
        );
        failed_saying(&out, "error: rank 0 of 2:", started);
        failed_saying(&out, "already holds checkpoints", started);
    }

    #[test]
    fn ranks_with_different_configs_refuse_to_start() {
        let Some((tmp, cfg)) = setup() else {
            return;
        };
        let run = tmp.path().join("run");
        let started = Instant::now();
        let out = run_bounded(
            &mut mpirun(&[
                (vec![], train_args(&cfg, &run, &[])),
                (vec![], train_args(&cfg, &run, &["--set", "lr=0.002"])),
            ]),
            Duration::from_secs(120),
        );
        failed_saying(
            &out,
            "rank 1's config (apart from device and threads) differ from rank 0's",
            started,
        );
        assert!(!checkpoint(&run, 4).exists());
    }
}

/// Without the `mpi` feature, a launcher's ranks would each train a whole model of
/// their own: the binary refuses, naming the feature.
#[cfg(not(feature = "mpi"))]
#[test]
fn the_default_build_refuses_a_launchers_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "c.toml", b"data = \"nowhere\"\nmax_steps = 1\n");
    let out = run_bounded(
        rnmt()
            .args(train_args(&cfg, &tmp.path().join("run"), &[]))
            .env("OMPI_COMM_WORLD_RANK", "1")
            .env("OMPI_COMM_WORLD_SIZE", "2"),
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("rank 1 of 2") && e.contains("--features mpi"),
        "{e}"
    );
    assert!(!tmp.path().join("run").exists(), "rank 1 wrote nothing");
}
