//! The bad-input catalogue: the `rnmt` binary on inputs a hostile or careless user
//! gives it. Each case asserts the exit code, that stderr names the file or option and
//! what is wrong, and that nothing on disk was lost or left half-written. One tiny
//! prepared corpus (a Multi30k slice) and one 6-step run are shared by all cases.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// The shared fixture: corpus slices, prepared data, a config and a finished run.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
    run: PathBuf,
}

fn fixture() -> Option<&'static Fixture> {
    static F: std::sync::OnceLock<Option<Fixture>> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let corpora = corpora_dir_for_tests()?;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        multi30k_slice(&corpora, &root, "train", "train", 300);
        multi30k_slice(&corpora, &root, "val", "val", 20);
        let data = root.join("data");
        let out = prepare(&root.join("train"), Some(&root.join("val")), 300, &data);
        assert!(out.status.success(), "prepare: {}", stderr(&out));
        let config = write(
            &root,
            "tiny.toml",
            format!("data = {:?}\n{TINY_TRAIN_CONFIG}", data.to_str().unwrap()).as_bytes(),
        );
        let run = root.join("run");
        let out = train(&config, &run, &[]);
        assert!(out.status.success(), "train: {}", stderr(&out));
        Some(Fixture {
            _tmp: tmp,
            root,
            config,
            run,
        })
    })
    .as_ref()
}

fn train(config: &Path, run_dir: &Path, set: &[&str]) -> Output {
    let mut cmd = rnmt();
    cmd.arg("train").arg("--config").arg(config);
    cmd.args(["--set", &format!("run_dir={:?}", run_dir.to_str().unwrap())]);
    for s in set {
        cmd.args(["--set", s]);
    }
    run(&mut cmd)
}

/// Asserts a failure whose stderr holds every one of `needles`; returns stderr.
fn fails(out: &Output, needles: &[&str]) -> String {
    let e = stderr(out);
    assert!(!out.status.success(), "should fail; stderr: {e}");
    // 1: an error rnmt reports; 2: a usage error clap reports. Never a signal.
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "a clean error exit, not a crash: {:?} {e}",
        out.status
    );
    assert!(!e.contains("panicked"), "{e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks {n:?}: {e}");
    }
    e
}

/// Every file under `dir` with its bytes, to show nothing changed (but the lock file,
/// which names the last trainer's pid).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with(".lock") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

fn prepare_args(train: &Path, out: &Path, extra: &[&str]) -> Output {
    run(rnmt()
        .args(["prepare", "--src-lang", "de", "--tgt-lang", "en", "--train"])
        .arg(train)
        .arg("--out")
        .arg(out)
        .args(extra))
}

#[test]
fn prepare_vocab_size_bounds() {
    let Some(f) = fixture() else { return };
    for bad in ["0", "1", "259", "10000000000"] {
        let out_dir = f.root.join(format!("vocab-{bad}"));
        let out = prepare_args(&f.root.join("train"), &out_dir, &["--vocab-size", bad]);
        fails(&out, &["--vocab-size", bad, "260"]);
        assert!(!out_dir.exists(), "nothing written for --vocab-size {bad}");
    }
    let out_dir = f.root.join("vocab-src");
    let out = prepare_args(
        &f.root.join("train"),
        &out_dir,
        &["--vocab-size", "300", "--src-vocab-size", "0"],
    );
    fails(&out, &["--src-vocab-size 0"]);
}

#[test]
fn prepare_drops_pairs_with_a_megabyte_token_quickly() {
    let Some(f) = fixture() else { return };
    let dir = f.root.join("longtoken");
    std::fs::create_dir_all(&dir).unwrap();
    for lang in ["de", "en"] {
        let mut text = std::fs::read_to_string(f.root.join(format!("train.{lang}"))).unwrap();
        text.push_str(&"x".repeat(1 << 20));
        text.push('\n');
        std::fs::write(dir.join(format!("c.{lang}")), text).unwrap();
    }
    for model in ["bpe", "unigram"] {
        let started = Instant::now();
        let out = prepare_args(
            &dir.join("c"),
            &dir.join(model),
            &["--vocab-size", "300", "--model-type", model],
        );
        let e = stderr(&out);
        assert!(out.status.success(), "{model}: {e}");
        assert!(e.contains("1 with a word over the byte limit"), "{e}");
        assert!(e.contains("301 pairs read, 300 kept"), "{e}");
        // Before the filter: minutes for BPE, a stack overflow for unigram.
        assert!(started.elapsed() < Duration::from_secs(30), "{model}");
    }
}

#[test]
fn corpus_files_that_are_wrong() {
    let Some(f) = fixture() else { return };
    let dir = f.root.join("corpora-bad");
    std::fs::create_dir_all(&dir).unwrap();
    // (name, source bytes, target bytes, what the message must say)
    type Case<'a> = (&'a str, &'a [u8], &'a [u8], &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            "count",
            b"a\nb\nc\n",
            b"a\nb\n",
            &["count.de has 3 lines", "count.en has 2"],
        ),
        (
            "utf8",
            b"gut\nschlecht \xff\n",
            b"good\nbad\n",
            &["utf8.de:2", "invalid UTF-8"],
        ),
        ("empty", b"", b"", &["no training pairs", "empty"]),
        (
            "blank",
            b"\n\n  \n",
            b"\n\n\n",
            &["no training pairs", "3 empty"],
        ),
    ];
    for (name, de, en, needles) in cases {
        write(&dir, &format!("{name}.de"), de);
        write(&dir, &format!("{name}.en"), en);
        let out_dir = dir.join(format!("{name}-out"));
        let out = prepare_args(&dir.join(name), &out_dir, &["--vocab-size", "300"]);
        fails(&out, needles);
        assert!(!out_dir.exists(), "{name}: nothing written");
    }
    // A missing side.
    write(&dir, "lonely.de", b"a\n");
    let out = prepare_args(&dir.join("lonely"), &dir.join("x"), &[]);
    fails(&out, &["lonely.en"]);
    // CRLF and NUL bytes are text: read, normalised, learned.
    let text = std::fs::read_to_string(f.root.join("train.de")).unwrap();
    let crlf = text.replace('\n', "\r\n");
    write(&dir, "crlf.de", crlf.as_bytes());
    let nul = std::fs::read_to_string(f.root.join("train.en"))
        .unwrap()
        .replacen(' ', "\0", 5);
    write(&dir, "crlf.en", nul.as_bytes());
    let out = prepare_args(
        &dir.join("crlf"),
        &dir.join("crlf-out"),
        &["--vocab-size", "300"],
    );
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    assert!(e.contains("300 CRLF line endings normalised"), "{e}");
}

#[test]
fn thread_beam_and_shortlist_bounds() {
    let Some(f) = fixture() else { return };
    let run_dir = f.root.join("threads-run");
    let out = run(rnmt()
        .arg("train")
        .arg("--config")
        .arg(&f.config)
        .args(["--threads", "10000", "--set"])
        .arg(format!("run_dir={:?}", run_dir.to_str().unwrap())));
    fails(&out, &["threads = 10000", "at most", "per core"]);
    assert!(!run_dir.exists());
    let best = f.run.join("best");
    let t = |args: &[&str]| {
        run(rnmt()
            .arg("translate")
            .arg("--model")
            .arg(&best)
            .args(args)
            .arg("ein Hund"))
    };
    fails(&t(&["--threads", "10000"]), &["threads = 10000", "at most"]);
    fails(&t(&["--beam", "10000"]), &["beam size 10000", "64"]);
    fails(
        &t(&["--shortlist", "--shortlist-size", "0,0"]),
        &["--shortlist-size", "0,0"],
    );
    let ok = t(&["--beam", "64"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn average_and_bleu_options() {
    let Some(f) = fixture() else { return };
    let out_dir = f.root.join("avg0");
    let out = run(rnmt()
        .arg("average")
        .arg(&f.run)
        .args(["--last", "0", "-o"])
        .arg(&out_dir));
    fails(&out, &["--last 0"]);
    assert!(!out_dir.exists());

    // Outputs follow the umask like any file a program creates.
    let out_dir = f.root.join("avg");
    let out = run(std::process::Command::new("sh").arg("-c").arg(format!(
        "umask 022 && exec {} average {} --last 2 -o {}",
        env!("CARGO_BIN_EXE_rnmt"),
        f.run.display(),
        out_dir.display()
    )));
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["model.safetensors", "config.json", "tokenizer-src.json"] {
        let mode = std::fs::metadata(out_dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{name}: {:o}", mode & 0o777);
    }

    let refs = write(&f.root, "ref.txt", b"a b c d\n");
    let hyp = write(&f.root, "hyp.txt", b"a b c d\n");
    let out = run(rnmt()
        .arg("bleu")
        .arg(&refs)
        .arg("-i")
        .arg(&hyp)
        .arg("--paired-bs"));
    fails(&out, &["--paired-bs", "two systems"]);
}

#[test]
fn model_folders_that_are_wrong() {
    let Some(f) = fixture() else { return };
    let translate = |dir: &Path| {
        run(rnmt()
            .arg("translate")
            .arg("--model")
            .arg(dir)
            .arg("ein Hund"))
    };
    let fresh = |name: &str| {
        let d = f.root.join("models").join(name);
        copy_dir(&f.run.join("best"), &d);
        d
    };
    let ok = translate(&fresh("ok"));
    assert!(ok.status.success(), "{}", stderr(&ok));

    let weights = std::fs::read(f.run.join("best/model.safetensors")).unwrap();
    let mut random = vec![0u8; 4096];
    let mut x = 12345u64;
    for b in random.iter_mut() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (x >> 56) as u8;
    }
    for (name, bytes) in [
        ("truncated", weights[..weights.len() / 2].to_vec()),
        ("random", random),
        ("empty", Vec::new()),
        ("header", {
            let mut w = weights.clone();
            w[8..16].copy_from_slice(b"garbage!");
            w
        }),
    ] {
        let d = fresh(name);
        std::fs::write(d.join("model.safetensors"), bytes).unwrap();
        fails(&translate(&d), &["model.safetensors"]);
    }

    // config.json and the weights disagree.
    let d = fresh("disagree");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"hidden_size\": 16", "\"hidden_size\": 32"),
    )
    .unwrap();
    fails(&translate(&d), &["model.safetensors", "shape"]);
    // Unknown keys and wrong types in config.json.
    let d = fresh("unknown-key");
    std::fs::write(
        d.join("config.json"),
        cfg.replacen('{', "{\"hiden_size\": 3,", 1),
    )
    .unwrap();
    fails(&translate(&d), &["config.json", "hiden_size"]);
    let d = fresh("wrong-type");
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"hidden_size\": 16", "\"hidden_size\": \"big\""),
    )
    .unwrap();
    fails(&translate(&d), &["config.json", "big"]);

    // Tokenizers: invalid JSON, and source and target swapped (sizes differ).
    let d = fresh("bad-tokenizer");
    std::fs::write(d.join("tokenizer-tgt.json"), b"{\"version\": ").unwrap();
    fails(&translate(&d), &["tokenizer-tgt.json"]);
    let d = fresh("other-tokenizer");
    copy_dir(&f.run.join("best"), &d);
    let data2 = f.root.join("data-400");
    let out = prepare(&f.root.join("train"), None, 400, &data2);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::copy(
        data2.join("tokenizer-src.json"),
        d.join("tokenizer-src.json"),
    )
    .unwrap();
    fails(
        &translate(&d),
        &["tokenizer-src.json", "src_vocab_size", "subwords"],
    );
}

#[test]
fn train_configs_that_are_wrong() {
    let Some(f) = fixture() else { return };
    let before = snapshot(&f.run);
    let text = std::fs::read_to_string(&f.config).unwrap();
    for (name, body, needles) in [
        (
            "unknown.toml",
            format!("{text}\nlearning_rate = 3\n"),
            vec!["unknown.toml", "learning_rate"],
        ),
        (
            "type.toml",
            text.replace("lr = 0.003", "lr = \"fast\""),
            vec!["type.toml", "fast"],
        ),
        (
            "bad-steps.toml",
            format!("max_bad_steps = 0\n{text}"),
            vec!["max_bad_steps = 0"],
        ),
    ] {
        let cfg = write(&f.root, name, body.as_bytes());
        let run_dir = f.root.join(format!("run-{name}"));
        let needles: Vec<&str> = needles.into_iter().collect();
        fails(&train(&cfg, &run_dir, &[]), &needles);
        assert!(!run_dir.exists(), "{name}: no run folder");
    }
    // A finished run is not started afresh.
    fails(
        &train(&f.config, &f.run, &[]),
        &["already holds checkpoints", "--resume"],
    );
    assert_eq!(snapshot(&f.run), before);
}

#[test]
fn resume_with_other_prepared_data_keeps_the_run() {
    let Some(f) = fixture() else { return };
    let run_dir = f.root.join("run-other-data");
    copy_dir(&f.run, &run_dir);
    // Same vocabulary size, other subwords: learned from another slice.
    let other = f.root.join("data-other");
    let out = prepare(&f.root.join("val"), None, 300, &other);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = snapshot(&run_dir);
    let out = run(rnmt()
        .args(["train", "--resume"])
        .arg(&run_dir)
        .args(["--set", "max_steps=9", "--set"])
        .arg(format!("data={:?}", other.to_str().unwrap())));
    fails(&out, &["other prepared data", "tokenizer-src.json"]);
    let after = snapshot(&run_dir);
    assert!(after == before, "the run folder changed");
}

#[test]
fn two_trainers_on_one_run_folder() {
    let Some(f) = fixture() else { return };
    let run_dir = f.root.join("run-locked");
    let mut first = rnmt()
        .arg("train")
        .arg("--config")
        .arg(&f.config)
        .args([
            "--set",
            "max_steps=100000",
            "--set",
            "valid_every=0",
            "--set",
        ])
        .arg(format!("run_dir={:?}", run_dir.to_str().unwrap()))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = run_dir.join(".lock");
    let pid = first.id().to_string();
    let started = Instant::now();
    while std::fs::read_to_string(&lock).unwrap_or_default() != pid {
        assert!(started.elapsed() < Duration::from_secs(30), "no lock taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = train(&f.config, &run_dir, &["max_steps=100000"]);
    let e = fails(&out, &["in use by another trainer", &format!("pid {pid}")]);
    assert!(e.contains(&run_dir.display().to_string()), "{e}");
    let out = run(rnmt().args(["train", "--resume"]).arg(&run_dir));
    fails(&out, &[&format!("pid {pid}")]);
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn diverged_run_stops_and_old_null_metrics_still_resume_and_plot() {
    let Some(f) = fixture() else { return };
    let run_dir = f.root.join("run-diverged");
    copy_dir(&f.run, &run_dir);
    let weights = std::fs::read(run_dir.join("checkpoints/step-6/model.safetensors")).unwrap();
    let out = run(rnmt().args(["train", "--resume"]).arg(&run_dir).args([
        "--set",
        "max_steps=40",
        "--set",
        "lr=1e6",
    ]));
    fails(
        &out,
        &["diverged", "updates in a row", "checkpoints/step-6"],
    );
    assert_eq!(
        std::fs::read(run_dir.join("checkpoints/step-6/model.safetensors")).unwrap(),
        weights
    );
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(!metrics.contains("null") && !metrics.contains("inf"));

    // A log written by an earlier rnmt, with `null` for an infinite perplexity, and a
    // last line cut short by a full disk.
    let mut old = metrics.clone();
    let first_ppl = old.find("\"ppl\":").unwrap();
    let end = first_ppl + old[first_ppl..].find(',').unwrap();
    old.replace_range(first_ppl..end, "\"ppl\":null");
    old.push_str("{\"kind\":\"train\",\"step\":7,\"epo");
    std::fs::write(run_dir.join("metrics.jsonl"), &old).unwrap();
    let out = run(rnmt().arg("plot").arg(&run_dir));
    assert!(out.status.success(), "plot: {}", stderr(&out));
    let out = run(rnmt().args(["train", "--resume"]).arg(&run_dir).args([
        "--set",
        "max_steps=9",
        "--set",
        "lr=0.003",
    ]));
    let e = stderr(&out);
    assert!(out.status.success(), "resume: {e}");
    assert!(e.contains("unfinished last line"), "{e}");
    assert!(e.contains("best model:"), "{e}");
    let steps = rnmt::train::log::read_metrics(&run_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(steps.last().unwrap().step(), 9);
}

#[test]
fn missing_best_is_repaired_on_resume() {
    let Some(f) = fixture() else { return };
    let run_dir = f.root.join("run-nobest");
    copy_dir(&f.run, &run_dir);
    std::fs::remove_dir_all(run_dir.join("best")).unwrap();
    // A crash between the checkpoint and best/ leaves best.tmp half-filled.
    std::fs::create_dir_all(run_dir.join("best.tmp")).unwrap();
    write(&run_dir.join("best.tmp"), "model.safetensors", b"half");
    let out = run(rnmt()
        .args(["train", "--resume"])
        .arg(&run_dir)
        .args(["--set", "max_steps=7"]));
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    assert!(e.contains("re-published"), "{e}");
    assert!(!run_dir.join("best.tmp").exists());
    let ok = run(rnmt()
        .arg("translate")
        .arg("--model")
        .arg(run_dir.join("best"))
        .arg("ein Hund"));
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// A server that accepts connections and never answers.
fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            // Read the request, answer nothing, keep the connection open.
            let mut s2 = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = s2.read(&mut buf);
            });
            held.push(s);
        }
    });
    format!("http://{addr}")
}

#[test]
fn downloads_from_a_server_that_never_answers_time_out() {
    let Some(f) = fixture() else { return };
    let url = silent_server();
    let started = Instant::now();
    let out = run(rnmt()
        .env("RNMT_NET_TIMEOUT", "1")
        .args(["corpus", "fetch", "multi30k", "--dir"])
        .arg(f.root.join("fetched"))
        .args(["--mirror", &url]));
    fails(&out, &[&url, "RNMT_NET_TIMEOUT"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!f.root.join("fetched/multi30k/train.de").exists());

    let started = Instant::now();
    let out = run(rnmt()
        .env("RNMT_NET_TIMEOUT", "1")
        .env("HF_ENDPOINT", &url)
        .env("HF_HOME", f.root.join("hf-home"))
        .env_remove("HF_HUB_OFFLINE")
        .args(["translate", "--model", "hf:someone/model", "ein Hund"]));
    fails(&out, &[&url, "no answer"]);
    assert!(started.elapsed() < Duration::from_secs(20));
}
