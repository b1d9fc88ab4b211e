//! The default model shipped in models/: it loads, translates the README's sentence, and
//! keeps its measured quality on a fixed slice of the Tatoeba test split.

mod common;

use common::*;
use rnmt::metrics::bleu::{Bleu, BleuConfig};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tatoeba-de-en");

/// BLEU of the first 400 lines of tatoeba-deu-eng/test.de with beam 5, measured with
/// `rnmt translate --model models/tatoeba-de-en -i test400.de | rnmt bleu test400.en`,
/// minus a margin of 1.0 for numeric differences across machines.
const BLEU_FLOOR: f64 = BLEU_MEASURED - 1.0;
const BLEU_MEASURED: f64 = 55.2;

#[test]
fn readme_command_translates_with_the_default_model() {
    // No --model: the default model from models/ must be found.
    let out = run(rnmt().args(["translate", "Der Hund jagt die Katze."]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let line = text.trim().to_lowercase();
    assert!(line.contains("dog") && line.contains("cat"), "{text}");
}

#[test]
fn default_model_keeps_its_tatoeba_bleu() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let (src, _) = rnmt::corpus::read_lines(&corpora.join("tatoeba-deu-eng/test.de")).unwrap();
    let (refs, _) = rnmt::corpus::read_lines(&corpora.join("tatoeba-deu-eng/test.en")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "test400.de",
        (src[..400].join("\n") + "\n").as_bytes(),
    );
    let out = run(rnmt()
        .args(["translate", "--model", MODEL, "--beam", "5", "-i"])
        .arg(&input));
    assert!(out.status.success(), "{}", stderr(&out));
    let hyps: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(hyps.len(), 400);
    let score = Bleu::new(BleuConfig::default())
        .corpus_score(&hyps, &[refs[..400].to_vec()])
        .unwrap()
        .score;
    eprintln!("BLEU on the first 400 Tatoeba test lines: {score:.2}");
    assert!(
        score >= BLEU_FLOOR,
        "BLEU {score:.2} fell below {BLEU_FLOOR:.2}"
    );
}
