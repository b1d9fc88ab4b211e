//! `rnmt bleu` end to end: sacreBLEU-compatible output, flags, stdin, paired bootstrap and
//! error messages.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rnmt::metrics::{Bleu, BleuConfig, Chrf, ChrfConfig, Tokenizer};
use serde_json::Value;

fn rnmt(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rnmt"))
        .arg("bleu")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    std::thread::spawn(move || pipe.write_all(input.as_bytes()));
    child.wait_with_output().unwrap()
}

fn write(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    p
}

/// A real reference slice and a hypothesis with every third word dropped.
fn corpus_pair(corpora: &Path) -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string(corpora.join("wmt-news/newstest2021_ende.en")).unwrap();
    let refs: Vec<String> = text.lines().take(300).map(str::to_string).collect();
    let hyps = refs
        .iter()
        .map(|l| {
            l.split(' ')
                .enumerate()
                .filter(|(j, _)| j % 3 != 2)
                .map(|(_, w)| w)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    (refs, hyps)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn json_output_matches_the_library_and_carries_sacrebleu_fields() {
    let Some(corpora) = common::corpora_dir_for_tests() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (refs, hyps) = corpus_pair(&corpora);
    let r = write(dir.path(), "ref.en", &refs);
    let h = write(dir.path(), "hyp.en", &hyps);
    let out = rnmt(
        &[
            s(&r),
            "-i",
            s(&h),
            "-m",
            "chrf",
            "bleu",
            "-w",
            "4",
            "-cw",
            "2",
            "-lc",
            "-tok",
            "intl",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().expect("several metrics print a JSON list");
    assert_eq!(list.len(), 2);

    let bleu = Bleu::new(BleuConfig {
        lowercase: true,
        tokenize: Tokenizer::Intl,
        ..Default::default()
    })
    .corpus_score(&hyps, std::slice::from_ref(&refs))
    .unwrap();
    let chrf = Chrf::new(ChrfConfig::chrf_plus_plus())
        .corpus_score(&hyps, &[refs])
        .unwrap();
    assert_eq!(list[0]["name"], "BLEU", "BLEU comes first, as in sacreBLEU");
    assert_eq!(
        list[0]["score"].as_f64().unwrap(),
        format!("{:.4}", bleu.score).parse::<f64>().unwrap()
    );
    assert_eq!(list[0]["signature"], bleu.signature().as_str());
    assert_eq!(list[0]["verbose_score"], bleu.verbose_score().as_str());
    assert_eq!(list[0]["tok"], "intl");
    assert_eq!(list[0]["case"], "lc");
    assert_eq!(list[1]["name"], "chrF2++");
    assert_eq!(
        list[1]["score"].as_f64().unwrap(),
        format!("{:.4}", chrf.score).parse::<f64>().unwrap()
    );
    assert_eq!(list[1]["nw"], "2");
    assert!(list[1]["verbose_score"].is_string());
    assert!(bleu.score > 5.0 && bleu.score < 95.0, "{}", bleu.score);
}

#[test]
fn stdin_text_output_and_sentence_level() {
    let dir = tempfile::tempdir().unwrap();
    let refs: Vec<String> = ["The cat sat on the mat.", "It cost 1,000.50 dollars.", ""]
        .map(String::from)
        .to_vec();
    let r = write(dir.path(), "ref", &refs);
    let hyp = "The cat sat on a mat.\nIt cost 1,000.50 dollars.\n\n";

    let single = rnmt(&[s(&r), "-f", "text", "-w", "2"], Some(hyp));
    assert!(
        single.status.success(),
        "{}",
        String::from_utf8_lossy(&single.stderr)
    );
    let text = String::from_utf8(single.stdout).unwrap();
    let expected = Bleu::default()
        .corpus_score(
            &hyp.lines().collect::<Vec<_>>(),
            std::slice::from_ref(&refs),
        )
        .unwrap();
    assert_eq!(
        text.trim_end(),
        format!(
            "BLEU|{} = {:.2} {}",
            expected.signature(),
            expected.score,
            expected.verbose_score()
        )
    );

    let sl = rnmt(&[s(&r), "-sl", "-b"], Some(hyp));
    assert!(sl.status.success());
    let lines: Vec<f64> = String::from_utf8(sl.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1], 100.0);
    assert!(lines[0] > 0.0 && lines[0] < 100.0);
}

#[test]
fn paired_bootstrap_is_seeded_and_separates_systems() {
    let Some(corpora) = common::corpora_dir_for_tests() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (refs, worse) = corpus_pair(&corpora);
    let r = write(dir.path(), "ref", &refs);
    let base = write(
        dir.path(),
        "base",
        &refs
            .iter()
            .map(|l| l.replace(" the ", " a "))
            .collect::<Vec<_>>(),
    );
    let sys = write(dir.path(), "sys", &worse);
    let args = [
        s(&r),
        "-i",
        s(&base),
        s(&sys),
        "--paired-bs",
        "-pbsn",
        "200",
        "--seed",
        "7",
    ];
    let a = rnmt(&args, None);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = rnmt(&args, None);
    assert_eq!(a.stdout, b.stdout, "the same seed gives the same resamples");
    let v: Value = serde_json::from_slice(&a.stdout).unwrap();
    assert!(v[0]["system"].as_str().unwrap().starts_with("Baseline: "));
    assert!(v[0]["BLEU"]["p_value"].is_null());
    let p = v[1]["BLEU"]["p_value"].as_f64().unwrap();
    // A hypothesis missing a third of its words is clearly different from the baseline.
    assert!(p < 0.05, "p = {p}");
    assert!(v[1]["BLEU"]["score"].as_f64().unwrap() < v[0]["BLEU"]["score"].as_f64().unwrap());
}

#[test]
fn line_count_mismatch_and_unreadable_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(
        dir.path(),
        "ref",
        &["a b c".to_string(), "d e f".to_string()],
    );
    let h = write(dir.path(), "hyp", &["a b c".to_string()]);
    let out = rnmt(&[s(&r), "-i", s(&h)], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 lines") && err.contains("2 lines"), "{err}");

    let missing = dir.path().join("no_such_ref.txt");
    let out = rnmt(&[s(&missing), "-i", s(&h)], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_ref.txt"));

    std::fs::write(dir.path().join("bad"), b"ok\n\xff\xfe\n").unwrap();
    let out = rnmt(&[s(&r), "-i", s(&dir.path().join("bad"))], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 2") && err.contains("UTF-8"),
        "{err}"
    );
}

#[test]
fn a_closed_output_pipe_ends_quietly() {
    // `rnmt bleu ref -i hyp | head -0`: the reader is gone before anything is printed.
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..50).map(|i| format!("line {i} of a test")).collect();
    let path = write(dir.path(), "ref.en", &lines);
    let path = path.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rnmt"))
        .args(["bleu", path, "-i", path, "-m", "bleu", "chrf"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
