//! `rnmt prepare` on real corpora: lossless subwords, the Python cross-check, corpus
//! validation errors, and batching invariants.

mod common;

use std::path::Path;

use common::*;
use rnmt::batch::TokenBatcher;
use rnmt::corpus::read_lines;
use rnmt::prepare::PreparedData;
use rnmt::subword::{SubwordConfig, SubwordKind, SubwordModel, UNK_ID};

fn all_lines(corpora: &Path) -> Vec<(String, Vec<String>)> {
    let mut files = Vec::new();
    for (corpus, splits) in [
        ("multi30k", &["train", "val", "test_2016_flickr"][..]),
        ("tatoeba-deu-eng", &["train", "dev", "test"][..]),
    ] {
        for split in splits {
            for lang in ["de", "en"] {
                let path = corpora.join(corpus).join(format!("{split}.{lang}"));
                files.push((path.display().to_string(), read_lines(&path).unwrap().0));
            }
        }
    }
    files
}

/// decode(encode(s)) == s on every line of Multi30k and Tatoeba for the BPE models, and
/// on the dev/test splits for a unigram model: byte-level subwords have no exceptions.
#[test]
fn round_trip_every_line() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let prepared = PreparedData::load(prepared_multi30k(&corpora)).unwrap();
    let files = all_lines(&corpora);
    let tatoeba_dev: Vec<&str> = files
        .iter()
        .filter(|(p, _)| p.contains("dev."))
        .flat_map(|(_, l)| l.iter().map(String::as_str))
        .collect();
    let unigram = SubwordModel::learn(
        &SubwordConfig {
            kind: SubwordKind::Unigram,
            vocab_size: 2000,
            min_frequency: 1,
        },
        tatoeba_dev.into_iter(),
    )
    .unwrap();
    let models = [
        ("bpe de", prepared.source_tokenizer()),
        ("bpe en", prepared.target_tokenizer()),
        ("unigram", &unigram),
    ];
    let mut checked = 0;
    for (path, lines) in &files {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        for (name, model) in &models {
            let wrong_language = (name.ends_with("de") && path.ends_with(".en"))
                || (name.ends_with("en") && path.ends_with(".de"));
            if wrong_language || (*name == "unigram" && path.contains("train.")) {
                continue;
            }
            let encoded = model.encode_batch(&refs).unwrap();
            let slices: Vec<&[u32]> = encoded.iter().map(Vec::as_slice).collect();
            let decoded = model.decode_batch(&slices).unwrap();
            for ((line, ids), text) in lines.iter().zip(&encoded).zip(&decoded) {
                assert!(!ids.contains(&UNK_ID), "{name}: <unk> in {path}: {line:?}");
                assert_eq!(text, line, "{name}: {path}");
                checked += 1;
            }
        }
    }
    assert!(checked > 2 * 195_000, "only {checked} lines checked");
}

/// The tokenizer files load in Python's `tokenizers` and give the same ids.
#[test]
fn python_tokenizers_gives_the_same_ids() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let has_python = std::process::Command::new("python3")
        .args(["-c", "import tokenizers"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_python {
        assert!(
            std::env::var("CI").is_err() && std::env::var("RNMT_REQUIRE_CORPORA").is_err(),
            "python3 with `tokenizers` is required in CI"
        );
        eprintln!("skipping: python3 -c 'import tokenizers' fails (pip install tokenizers)");
        return;
    }
    let dir = prepared_multi30k(&corpora);
    let prepared = PreparedData::load(dir).unwrap();
    let work = tempfile::tempdir().unwrap();
    for (side, file, model, lang) in [
        (
            "src",
            "tokenizer-src.json",
            prepared.source_tokenizer(),
            "de",
        ),
        (
            "tgt",
            "tokenizer-tgt.json",
            prepared.target_tokenizer(),
            "en",
        ),
    ] {
        let mut lines = read_lines(&corpora.join(format!("multi30k/test_2016_flickr.{lang}")))
            .unwrap()
            .0;
        lines.extend(
            read_lines(&corpora.join(format!("tatoeba-deu-eng/test.{lang}")))
                .unwrap()
                .0,
        );
        let input = write(
            work.path(),
            &format!("{side}.txt"),
            lines.join("\n").as_bytes(),
        );
        let script = "import sys, json\nfrom tokenizers import Tokenizer\nt = Tokenizer.from_file(sys.argv[1])\nfor line in open(sys.argv[2], encoding='utf-8').read().split('\\n'):\n    print(json.dumps(t.encode(line, add_special_tokens=False).ids))\n";
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(dir.join(file))
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let python: Vec<Vec<u32>> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(python.len(), lines.len());
        for (line, ids) in lines.iter().zip(&python) {
            assert_eq!(&model.encode(line).unwrap(), ids, "{side}: {line:?}");
        }
    }
}

#[test]
fn source_vocabulary_can_be_larger() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run(rnmt()
        .args(["prepare", "--src-lang", "de", "--tgt-lang", "en"])
        .args([
            "--vocab-size",
            "2000",
            "--src-vocab-size",
            "6000",
            "--train",
        ])
        .arg(corpora.join("multi30k/train"))
        .arg("--out")
        .arg(dir.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let prepared = PreparedData::load(dir.path()).unwrap();
    assert_eq!(prepared.source_tokenizer().vocab_size(), 6000);
    assert_eq!(prepared.target_tokenizer().vocab_size(), 2000);
    assert_eq!(prepared.manifest.src_vocab_size, Some(6000));
    let out = run(rnmt()
        .args([
            "prepare",
            "--src-lang",
            "de",
            "--tgt-lang",
            "en",
            "--joint-vocab",
        ])
        .args(["--src-vocab-size", "6000", "--train"])
        .arg(corpora.join("multi30k/train"))
        .arg("--out")
        .arg(dir.path()));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--joint-vocab"), "{}", stderr(&out));
}

#[test]
fn prepare_writes_summary_and_manifest() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let dir = prepared_multi30k(&corpora);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["train"]["read"], 29000);
    assert_eq!(summary["valid"]["read"], 1014);
    assert_eq!(summary["src_vocab_size"], 8000);
    let mean = summary["mean_src_subwords"].as_f64().unwrap();
    // Multi30k German captions average ~12 words; subwords must be a bit more than words.
    assert!((12.0..20.0).contains(&mean), "mean subwords {mean}");
    let prepared = PreparedData::load(dir).unwrap();
    assert_eq!(
        prepared.read_train().unwrap().pairs.len() as u64,
        summary["train"]["kept"].as_u64().unwrap()
    );
}

/// Every training pair of Multi30k lands in exactly one batch per epoch, batches respect
/// the budget, and the epoch is reproducible from the seed.
#[test]
fn batching_invariants_on_multi30k() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let prepared = PreparedData::load(prepared_multi30k(&corpora)).unwrap();
    let pairs = prepared
        .encode_pairs(&prepared.read_train().unwrap())
        .unwrap();
    let batcher = TokenBatcher::new(2000, 42);
    let epoch = batcher.epoch(&pairs, 3);
    assert_eq!(epoch, TokenBatcher::new(2000, 42).epoch(&pairs, 3));
    let mut seen = vec![0u8; pairs.len()];
    let mut padded = 0usize;
    for b in &epoch {
        let batch = rnmt::batch::Batch::new(&pairs, b);
        assert!(batch.len() == 1 || batch.len() * batch.src_max_len.max(batch.tgt_max_len) <= 2000);
        padded += batch.len() * batch.src_max_len;
        b.iter().for_each(|&i| seen[i] += 1);
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "a pair is missing or repeated"
    );
    let real: usize = pairs.iter().map(|p| p.src_len()).sum();
    // Length bucketing keeps padding low.
    assert!(
        (padded as f64) < 1.15 * real as f64,
        "padding too high: {padded} slots for {real} tokens"
    );
}

fn prepare_in(dir: &Path, prefix: &str) -> std::process::Output {
    prepare(&dir.join(prefix), None, 300, &dir.join("out"))
}

#[test]
fn validation_errors_name_file_line_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "count.de",
        b"Ein Hund.\nEine Katze.\nZwei V\xc3\xb6gel.\n",
    );
    write(d, "count.en", b"A dog.\nA cat.\n");
    let out = prepare_in(d, "count");
    assert_eq!(out.status.code(), Some(1));
    let msg = stderr(&out);
    assert!(
        msg.contains("count.de has 3 lines") && msg.contains("count.en has 2"),
        "{msg}"
    );

    write(d, "utf.de", b"Ein Hund.\nEine Katze \xe4.\n");
    write(d, "utf.en", b"A dog.\nA cat.\n");
    let out = prepare_in(d, "utf");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("utf.de:2: invalid UTF-8"),
        "{}",
        stderr(&out)
    );

    let out = prepare_in(d, "missing");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.de"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn crlf_and_filters_are_reported() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Real Multi30k pairs with CRLF endings, plus an empty pair, an overlong pair and a
    // pair with an extreme length ratio.
    let de = read_lines(&corpora.join("multi30k/val.de")).unwrap().0;
    let en = read_lines(&corpora.join("multi30k/val.en")).unwrap().0;
    let mut src: Vec<String> = de[..200].to_vec();
    let mut tgt: Vec<String> = en[..200].to_vec();
    src.push(String::new());
    tgt.push("Nothing on the other side.".into());
    src.push(de[..12].join(" "));
    tgt.push(en[..12].join(" "));
    src.push("Ja.".into());
    tgt.push(en[0].clone());
    write(d, "c.de", (src.join("\r\n") + "\r\n").as_bytes());
    write(d, "c.en", (tgt.join("\r\n") + "\r\n").as_bytes());
    let out = prepare_in(d, "c");
    assert!(out.status.success(), "{}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains(
            "203 pairs read, 200 kept, 3 dropped (1 empty, 1 too long, 1 extreme length ratio)"
        ),
        "{msg}"
    );
    assert!(msg.contains("406 CRLF line endings normalised"), "{msg}");
    let prepared = PreparedData::load(&d.join("out")).unwrap();
    let train = prepared.read_train().unwrap();
    assert_eq!(train.pairs[0], (de[0].clone(), en[0].clone()));
}
