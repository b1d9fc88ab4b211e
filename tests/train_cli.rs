//! `rnmt train`, `rnmt average` and `rnmt plot` end to end on a tiny Multi30k slice
//! (cut from $RNMT_CORPORA by the test): a few steps of a tiny model, then resume,
//! averaging, plotting and the errors a user meets first.

mod common;

use common::*;
use rnmt::train::log::{read_metrics, Record};

#[test]
fn train_resume_average_plot() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    multi30k_slice(&corpora, t, "train", "train", 300);
    multi30k_slice(&corpora, t, "val", "val", 20);
    let data = t.join("data");
    let out = prepare(&t.join("train"), Some(&t.join("val")), 300, &data);
    assert!(out.status.success(), "prepare: {}", stderr(&out));
    let cfg = write(
        t,
        "tiny.toml",
        format!("data = {:?}\n{TINY_TRAIN_CONFIG}", data.to_str().unwrap()).as_bytes(),
    );
    let run_dir = t.join("run");
    let set_run = format!("run_dir={:?}", run_dir.to_str().unwrap());

    let out = run(rnmt()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .args(["--set", &set_run]));
    assert!(out.status.success(), "train: {}", stderr(&out));
    let records = read_metrics(&run_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = records
        .iter()
        .filter_map(|r| matches!(r, Record::Train { .. }).then_some(r.step()))
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
    let valids: Vec<&Record> = records
        .iter()
        .filter(|r| matches!(r, Record::Valid { .. }))
        .collect();
    assert_eq!(valids.len(), 2);
    for v in valids {
        let Record::Valid {
            valid_ppl,
            bleu,
            bleu_signature,
            sentences,
            ..
        } = v
        else {
            unreachable!()
        };
        assert!(valid_ppl.is_finite() && *valid_ppl > 1.0);
        assert!((0.0..=100.0).contains(bleu));
        assert!(bleu_signature.contains("tok:13a"), "{bleu_signature}");
        assert_eq!(*sentences, 8);
    }
    let best = run_dir.join("best");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer-src.json",
        "tokenizer-tgt.json",
    ] {
        assert!(best.join(f).is_file(), "best/{f} missing");
    }
    let (_, mcfg) = rnmt::model::load_model(&best, &candle_core::Device::Cpu).unwrap();
    assert_eq!(mcfg.hidden_size, 16);
    assert!(
        mcfg.src_vocab_size <= 300 && mcfg.src_vocab_size > 4,
        "vocab from the tokenizers"
    );
    assert!(run_dir.join("curve.svg").is_file());

    // The end of training chose best/'s α and β on the dev set, and the card shows the grid.
    let e = stderr(&out);
    let line = e
        .lines()
        .find(|l| l.starts_with("search settings of"))
        .unwrap_or_else(|| panic!("no tuning line in {e}"));
    let field = |name: &str| -> f64 {
        line.split(name)
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (alpha, beta) = (field("alpha "), field("beta "));
    assert_eq!(
        (f64::from(mcfg.decode_alpha), f64::from(mcfg.decode_beta)),
        (alpha, beta)
    );
    let tuned_bleu = field("dev BLEU ");
    let card = std::fs::read_to_string(best.join("README.md")).unwrap();
    assert!(card.contains("| β \\ α |"), "{card}");
    assert!(card.contains(&format!("**{tuned_bleu:.2}**")), "{card}");
    // The grid's figure is what `rnmt translate` with those settings scores on those lines.
    let dev: Vec<String> = std::fs::read_to_string(t.join("val.de"))
        .unwrap()
        .lines()
        .take(8)
        .map(str::to_string)
        .collect();
    let refs: String = std::fs::read_to_string(t.join("val.en"))
        .unwrap()
        .lines()
        .take(8)
        .map(|l| format!("{l}\n"))
        .collect();
    write(t, "dev8.de", (dev.join("\n") + "\n").as_bytes());
    let ref_path = write(t, "dev8.en", refs.as_bytes());
    let out = run(rnmt()
        .args(["translate", "--beam", "5", "-m"])
        .arg(&best)
        .arg("-i")
        .arg(t.join("dev8.de")));
    assert!(out.status.success(), "{}", stderr(&out));
    let hyp = write(t, "dev8.hyp", &out.stdout);
    let out = run(rnmt()
        .arg("bleu")
        .arg(&ref_path)
        .arg("-i")
        .arg(&hyp)
        .args(["-f", "text", "-b", "-w", "2"]));
    let score: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((score - tuned_bleu).abs() < 0.01, "{score} vs {tuned_bleu}");
    // A checkpoint translates like a model folder, with its run folder's tokenizers: the
    // best one as best/ does (given best/'s tuned α and β, which only best/ stores).
    let best_weights = std::fs::read(best.join("model.safetensors")).unwrap();
    let checkpoint = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read(p.join("model.safetensors")).unwrap() == best_weights)
        .expect("best/ is one of the checkpoints");
    assert!(!checkpoint.join("tokenizer-src.json").exists());
    let out = run(rnmt()
        .args(["translate", "--beam", "5", "-m"])
        .arg(&checkpoint)
        .args(["--alpha", &alpha.to_string(), "--beta", &beta.to_string()])
        .arg("-i")
        .arg(t.join("dev8.de")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&hyp).unwrap(), out.stdout);

    // A second fresh run into the same folder is refused.
    let out = run(rnmt()
        .arg("train")
        .arg("--config")
        .arg(&cfg)
        .args(["--set", &set_run]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));

    // Resume with a higher step limit continues from step 6 to 8.
    let out = run(rnmt()
        .arg("train")
        .arg("--resume")
        .arg(&run_dir)
        .args(["--set", "max_steps=8"]));
    assert!(out.status.success(), "resume: {}", stderr(&out));
    // The tuned best/ is still the best checkpoint's model: not re-published.
    assert!(!stderr(&out).contains("re-published"), "{}", stderr(&out));
    let records = read_metrics(&run_dir.join("metrics.jsonl")).unwrap();
    let last = records
        .iter()
        .rfind(|r| matches!(r, Record::Train { .. }))
        .unwrap();
    assert_eq!(last.step(), 8);
    let ckpts = rnmt::train::checkpoint::list_checkpoints(&run_dir).unwrap();
    let kept: Vec<u64> = ckpts.iter().map(|c| c.0).collect();
    assert!(kept.ends_with(&[6, 8]), "{kept:?}");

    // Average the last two checkpoints into a loadable model folder.
    let avg = t.join("avg");
    let out = run(rnmt()
        .arg("average")
        .arg(&run_dir)
        .args(["--last", "2", "-o"])
        .arg(&avg));
    assert!(out.status.success(), "average: {}", stderr(&out));
    assert!(avg.join("tokenizer-tgt.json").is_file());
    rnmt::model::load_model(&avg, &candle_core::Device::Cpu).unwrap();

    // --tune chooses the averaged model's α and β on the run's dev set, as training's end
    // does for best/: the printed choice is in its config.json, the grid in its card.
    let tuned = t.join("avg-tuned");
    let out = run(rnmt()
        .arg("average")
        .arg(&run_dir)
        .args(["--last", "2", "--tune", "-o"])
        .arg(&tuned));
    assert!(out.status.success(), "average --tune: {}", stderr(&out));
    let e = stderr(&out);
    let line = e
        .lines()
        .find(|l| l.starts_with("search settings of"))
        .unwrap_or_else(|| panic!("no tuning line in {e}"));
    let (_, tcfg) = rnmt::model::load_model(&tuned, &candle_core::Device::Cpu).unwrap();
    assert!(
        line.contains(&format!(
            "alpha {} beta {} ",
            tcfg.decode_alpha, tcfg.decode_beta
        )),
        "{line}"
    );
    let card = std::fs::read_to_string(tuned.join("README.md")).unwrap();
    assert!(
        card.contains("| β \\ α |") && card.contains("over 8 dev sentences"),
        "{card}"
    );

    std::fs::remove_file(run_dir.join("curve.svg")).unwrap();
    let out = run(rnmt().arg("plot").arg(&run_dir));
    assert!(out.status.success(), "plot: {}", stderr(&out));
    let svg = std::fs::read_to_string(run_dir.join("curve.svg")).unwrap();
    assert!(svg.contains("validation BLEU"));
}

#[test]
fn cli_errors_name_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write(tmp.path(), "bad.toml", b"[model]\nhiden_size = 8\n");
    let out = run(rnmt().arg("train").arg("--config").arg(&cfg));
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("bad.toml") && e.contains("hiden_size"), "{e}");

    let good = write(
        tmp.path(),
        "good.toml",
        b"data = \"/nonexistent/prepared\"\n",
    );
    let out = run(rnmt()
        .arg("train")
        .arg("--config")
        .arg(&good)
        .args(["--set", "label_smoothing=2"]));
    assert!(
        stderr(&out).contains("label_smoothing = 2"),
        "{}",
        stderr(&out)
    );
    let out = run(rnmt()
        .arg("train")
        .arg("--config")
        .arg(&good)
        .args(["--device", "tpu:0"]));
    assert!(stderr(&out).contains("tpu"), "{}", stderr(&out));
    let out = run(rnmt().arg("train").arg("--config").arg(&good));
    assert!(
        stderr(&out).contains("/nonexistent/prepared"),
        "{}",
        stderr(&out)
    );

    let out = run(rnmt()
        .arg("train")
        .arg("--resume")
        .arg(tmp.path().join("norun")));
    assert!(
        stderr(&out).contains("norun/config.toml"),
        "{}",
        stderr(&out)
    );

    let out = run(rnmt()
        .arg("average")
        .arg(tmp.path())
        .args(["-o"])
        .arg(tmp.path().join("o")));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("neither a run folder"),
        "{}",
        stderr(&out)
    );
}
