//! rnmt's BLEU / chrF / chrF++ against sacreBLEU's own numbers.
//!
//! tests/goldens/bleu/goldens.json holds, per case, a recipe over the shared corpora and the
//! unrounded scores sacreBLEU printed for it (made by make_goldens.py beside it). This test
//! rebuilds every case with the same recipe and scores it with rnmt.

mod common;

use std::path::Path;

use rnmt::metrics::{Bleu, BleuConfig, Chrf, ChrfConfig, Tokenizer};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TOLERANCE: f64 = 0.005;

fn goldens() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/bleu/goldens.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn read_lines(corpora: &Path, file: &str) -> Vec<String> {
    let text = std::fs::read_to_string(corpora.join(file)).unwrap();
    text.split_terminator('\n').map(str::to_string).collect()
}

fn apply_op(lines: Vec<String>, op: &[Value]) -> Vec<String> {
    let name = op[0].as_str().unwrap();
    let int = |k: usize| op[k].as_u64().unwrap() as usize;
    let n = lines.len();
    (0..n)
        .map(|i| {
            let line = &lines[i];
            let mut words: Vec<&str> = line.split(' ').collect();
            match name {
                "shift" => lines[(i + int(1)) % n].clone(),
                "drop" => {
                    let k = int(1);
                    let kept: Vec<&str> = words
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| j % k != k - 1)
                        .map(|(_, w)| *w)
                        .collect();
                    kept.join(" ")
                }
                "swap" => {
                    if i % int(1) == 0 && words.len() >= 2 {
                        words.swap(0, 1);
                    }
                    words.join(" ")
                }
                "reverse" => {
                    words.reverse();
                    words.join(" ")
                }
                "trunc" => words[..words.len().min(int(1))].join(" "),
                "lower" if i % int(1) == 0 => line.to_lowercase(),
                "lower" => line.clone(),
                "empty" if i % int(1) == 0 => String::new(),
                "empty" => line.clone(),
                "replace" => line.replace(op[1].as_str().unwrap(), op[2].as_str().unwrap()),
                other => panic!("unknown recipe op {other}"),
            }
        })
        .collect()
}

fn build(corpora: &Path, src: &Value) -> Vec<String> {
    if let Some(lines) = src.get("lines") {
        return lines
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
    }
    let all = read_lines(corpora, src["file"].as_str().unwrap());
    let (start, end) = (
        src["start"].as_u64().unwrap() as usize,
        src["end"].as_u64().unwrap() as usize,
    );
    let mut lines = all[start..end].to_vec();
    for op in src["ops"].as_array().unwrap() {
        lines = apply_op(lines, op.as_array().unwrap());
    }
    lines
}

fn close(name: &str, what: &str, ours: f64, theirs: f64, failures: &mut Vec<String>) {
    if (ours - theirs).abs() > TOLERANCE || ours.is_nan() {
        failures.push(format!("{name}: {what} rnmt {ours} vs sacreBLEU {theirs}"));
    }
}

#[test]
fn scores_match_sacrebleu_goldens() {
    let Some(corpora) = common::corpora_dir_for_tests() else {
        return;
    };
    let doc = goldens();
    let cases = doc["cases"].as_object().unwrap();
    assert!(cases.len() >= 30, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    for (name, case) in cases {
        let hyp = build(&corpora, &case["hyp"]);
        let refs: Vec<Vec<String>> = case["refs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| build(&corpora, r))
            .collect();
        let sentence = case
            .get("sentence")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let is_bleu = case["metric"] == "bleu";
        let bleu =
            || Bleu::new(serde_json::from_value::<BleuConfig>(case["config"].clone()).unwrap());
        let chrf =
            || Chrf::new(serde_json::from_value::<ChrfConfig>(case["config"].clone()).unwrap());
        if sentence {
            let expected = case["scores"].as_array().unwrap();
            assert_eq!(expected.len(), hyp.len(), "{name}");
            for (i, h) in hyp.iter().enumerate() {
                let r: Vec<&str> = refs.iter().map(|r| r[i].as_str()).collect();
                let ours = if is_bleu {
                    bleu().sentence_score(h, &r).unwrap().score
                } else {
                    chrf().sentence_score(h, &r).unwrap().score
                };
                close(
                    name,
                    &format!("line {i}"),
                    ours,
                    expected[i].as_f64().unwrap(),
                    &mut failures,
                );
            }
            continue;
        }
        let expected = case["score"].as_f64().unwrap();
        if is_bleu {
            let s = bleu().corpus_score(&hyp, &refs).unwrap();
            close(name, "score", s.score, expected, &mut failures);
            close(
                name,
                "bp",
                s.bp,
                case["bp"].as_f64().unwrap(),
                &mut failures,
            );
            for (k, key) in [(0, "sys_len"), (1, "ref_len")] {
                let ours = if k == 0 { s.sys_len } else { s.ref_len };
                if ours != case[key].as_u64().unwrap() {
                    failures.push(format!(
                        "{name}: {key} rnmt {ours} vs sacreBLEU {}",
                        case[key]
                    ));
                }
            }
            for n in 0..4 {
                close(
                    name,
                    &format!("count {n}"),
                    s.counts[n],
                    case["counts"][n].as_f64().unwrap(),
                    &mut failures,
                );
                close(
                    name,
                    &format!("total {n}"),
                    s.totals[n],
                    case["totals"][n].as_f64().unwrap(),
                    &mut failures,
                );
                let p = case["precisions"][n].as_f64().unwrap();
                close(
                    name,
                    &format!("precision {n}"),
                    s.precisions[n],
                    p,
                    &mut failures,
                );
            }
            check_signature(
                name,
                &s.signature(),
                case["signature"].as_str().unwrap(),
                &mut failures,
            );
        } else {
            let s = chrf().corpus_score(&hyp, &refs).unwrap();
            close(name, "score", s.score, expected, &mut failures);
            check_signature(
                name,
                &s.signature(),
                case["signature"].as_str().unwrap(),
                &mut failures,
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Same fields as sacreBLEU's signature; only the version value names rnmt instead.
fn check_signature(name: &str, ours: &str, theirs: &str, failures: &mut Vec<String>) {
    let strip = |s: &str| {
        s.rsplit_once("|version:")
            .map(|(head, _)| head.to_string())
            .unwrap()
    };
    if strip(ours) != strip(theirs) || !ours.ends_with(rnmt::metrics::SIGNATURE_VERSION) {
        failures.push(format!("{name}: signature {ours} vs sacreBLEU {theirs}"));
    }
}

/// Whole corpus files tokenized by rnmt hash to what sacreBLEU's tokenizers produce.
#[test]
fn tokenizers_match_sacrebleu_on_whole_files() {
    let Some(corpora) = common::corpora_dir_for_tests() else {
        return;
    };
    let doc = goldens();
    let digests = doc["tokenizer_sha256"].as_object().unwrap();
    assert!(digests.len() >= 3 * 2 * 8);
    let rstrip = |s: &str| {
        s.trim_end_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
            .to_string()
    };
    let mut failures = Vec::new();
    for (key, expected) in digests {
        let mut parts = key.splitn(3, '|');
        let (tok, case, file) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let tokenizer: Tokenizer = tok.parse().unwrap();
        let lines: Vec<String> = read_lines(&corpora, file)
            .iter()
            .map(|l| {
                let l = if case == "lc" {
                    l.to_lowercase()
                } else {
                    l.clone()
                };
                tokenizer.tokenize(&rstrip(&l))
            })
            .collect();
        let digest = format!("{:x}", Sha256::digest(lines.join("\n").as_bytes()));
        if digest != expected.as_str().unwrap() {
            failures.push(key.clone());
        }
    }
    assert!(
        failures.is_empty(),
        "tokenization differs from sacreBLEU for: {failures:?}"
    );
}
