//! The models shipped in models/: the default one loads without --model and translates
//! the README's sentence, every one keeps its measured quality on a fixed slice of the
//! Tatoeba test split, and wider beams find outputs the model scores higher.

mod common;

use common::*;
use rnmt::metrics::bleu::{Bleu, BleuConfig};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tatoeba-de-en");

/// BLEU of the first 400 lines of tatoeba-deu-eng/test.de with beam 5, measured with
/// `rnmt translate --model models/tatoeba-de-en -i test400.de | rnmt bleu test400.en`,
/// minus a margin of 1.0 for numeric differences across machines.
const DE_EN_BLEU_FLOOR: f64 = 59.8 - 1.0;
/// The same for models/tatoeba-en-de (test.en → test.de), measured 44.5.
const EN_DE_BLEU_FLOOR: f64 = 44.5 - 1.0;
/// The same with `--shortlist` (the default size 500,50), measured 59.3 and 45.0 (on the
/// whole test split the default model scores 50.1 without it, 50.2 with it).
const DE_EN_SHORTLIST_BLEU_FLOOR: f64 = 59.3 - 1.0;
const EN_DE_SHORTLIST_BLEU_FLOOR: f64 = 45.0 - 1.0;

#[test]
fn readme_command_translates_with_the_default_model() {
    // No --model: the default model from models/ must be found.
    let out = run(rnmt().args(["translate", "Der Hund jagt die Katze."]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let line = text.trim().to_lowercase();
    // "jagt" is present tense: "chases"/"hunts" or their progressive forms. The BPE model
    // shipped before said "The dog reads the cat.", and "chased" would be the wrong tense.
    let verbs = ["chases", "is chasing", "hunts", "is hunting", "is after"];
    assert!(
        line.contains("dog") && line.contains("cat") && verbs.iter().any(|v| line.contains(v)),
        "{text}"
    );
}

#[test]
fn translate_with_a_prefix_continues_it() {
    let plain = run(rnmt().args(["translate", "Der Hund jagt die Katze."]));
    assert!(plain.status.success(), "{}", stderr(&plain));
    // An empty prefix changes nothing.
    let empty = run(rnmt().args(["translate", "--prefix", "", "Der Hund jagt die Katze."]));
    assert_eq!(
        String::from_utf8_lossy(&empty.stdout),
        String::from_utf8_lossy(&plain.stdout)
    );
    // A prefix the model would not choose is kept, and the sentence is finished from it.
    let out = run(rnmt().args([
        "translate",
        "--prefix",
        "A big animal",
        "--nbest",
        "3",
        "Der Hund jagt die Katze.",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for line in text.lines() {
        let translation = line.split(" ||| ").nth(1).unwrap();
        assert!(translation.starts_with("A big animal "), "{text}");
        assert!(translation.to_lowercase().contains("cat"), "{text}");
    }
    // A prefix per line after a tab; a line without one is translated as usual.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tsv");
    std::fs::write(
        &input,
        "Der Hund jagt die Katze.\tThe big\nIch habe Hunger.\n",
    )
    .unwrap();
    let out = run(rnmt().args(["translate", "--tab-prefix", "-i"]).arg(&input));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("The big "), "{text}");
    let alone = run(rnmt().args(["translate", "Ich habe Hunger."]));
    assert_eq!(lines[1], String::from_utf8_lossy(&alone.stdout).trim());
}

const EN_DE_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tatoeba-en-de");

#[test]
fn default_model_keeps_its_tatoeba_bleu() {
    assert_tatoeba_bleu(MODEL, "de", "en", &[], DE_EN_BLEU_FLOOR);
}

#[test]
fn en_de_model_keeps_its_tatoeba_bleu() {
    assert_tatoeba_bleu(EN_DE_MODEL, "en", "de", &[], EN_DE_BLEU_FLOOR);
}

#[test]
fn shipped_shortlists_keep_the_bleu() {
    let shortlist = ["--shortlist"];
    assert_tatoeba_bleu(MODEL, "de", "en", &shortlist, DE_EN_SHORTLIST_BLEU_FLOOR);
    assert_tatoeba_bleu(
        EN_DE_MODEL,
        "en",
        "de",
        &shortlist,
        EN_DE_SHORTLIST_BLEU_FLOOR,
    );
}

/// `--int8` (the output layer and the LSTM products in int8): the same floors as f32
/// search, alone and with the shortlist (whose layer is a selection of the quantized rows).
/// Measured on the first 400 lines: de→en 60.21 (f32 59.8), en→de 44.67 (44.5); de→en with
/// the shortlist 59.06 (59.3).
#[test]
fn int8_search_keeps_the_bleu() {
    assert_tatoeba_bleu(MODEL, "de", "en", &["--int8"], DE_EN_BLEU_FLOOR);
    assert_tatoeba_bleu(EN_DE_MODEL, "en", "de", &["--int8"], EN_DE_BLEU_FLOOR);
    let both = ["--int8", "--shortlist"];
    assert_tatoeba_bleu(MODEL, "de", "en", &both, DE_EN_SHORTLIST_BLEU_FLOOR);
}

/// `rnmt average MODEL --dtype int8` converts a model folder: its weights file is about half
/// the f16 one, it is searched in int8 without asking (`--int8` changes nothing), it keeps
/// the floor (measured on the first 400 lines: 59.60), and it cannot be
/// averaged again.
#[test]
fn an_int8_copy_of_the_default_model_keeps_the_bleu() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let int8 = dir.path().join("int8");
    let out = run(rnmt()
        .args(["average", MODEL, "--dtype", "int8", "-o"])
        .arg(&int8));
    assert!(out.status.success(), "{}", stderr(&out));
    let size = |d: &std::path::Path| {
        std::fs::metadata(d.join("model.safetensors"))
            .unwrap()
            .len()
    };
    let (f16, stored) = (size(MODEL.as_ref()), size(&int8));
    assert!(
        stored * 100 < f16 * 55,
        "{stored} bytes against {f16} in f16"
    );
    let int8_dir = int8.to_str().unwrap();
    assert_tatoeba_bleu(int8_dir, "de", "en", &[], DE_EN_BLEU_FLOOR);

    let (sources, _) = rnmt::corpus::read_lines(&corpora.join("tatoeba-deu-eng/test.de")).unwrap();
    let input = write(
        dir.path(),
        "in.de",
        (sources[..60].join("\n") + "\n").as_bytes(),
    );
    let translate = |extra: &[&str]| {
        let out = run(rnmt()
            .args(["translate", "--model", int8_dir, "-i"])
            .arg(&input)
            .args(extra));
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    assert_eq!(translate(&[]), translate(&["--int8"]));

    let out = run(rnmt()
        .args(["average", int8_dir, "-o"])
        .arg(dir.path().join("again")));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("stored in int8"), "{}", stderr(&out));
}

/// Translates the first 400 lines of the Tatoeba test split with beam 5 (the model's α
/// and β, and `args`) through the CLI and checks the BLEU against `floor`.
fn assert_tatoeba_bleu(model: &str, src: &str, tgt: &str, args: &[&str], floor: f64) {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let test = corpora.join("tatoeba-deu-eng/test");
    let (sources, _) = rnmt::corpus::read_lines(&test.with_extension(src)).unwrap();
    let (refs, _) = rnmt::corpus::read_lines(&test.with_extension(tgt)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "test400.txt",
        (sources[..400].join("\n") + "\n").as_bytes(),
    );
    let out = run(rnmt()
        .args(["translate", "--model", model, "--beam", "5", "-i"])
        .arg(&input)
        .args(args));
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
    eprintln!("{model} {args:?}: BLEU on the first 400 Tatoeba test lines: {score:.2}");
    assert!(
        score >= floor,
        "{model} {args:?}: BLEU {score:.2} fell below {floor:.2}"
    );
}

/// With α = β = 0 (the score is the log-probability), wider beams find better-scoring
/// outputs: on the first 300 Tatoeba test sentences, beam 2 and beam 5 each score higher
/// than the next narrower beam on average, and lower on at most 3 % of the sentences.
///
/// Not "never lower", as first asked: beam search does not have that property. It prunes
/// on the scores of prefixes, and beams of different widths hold different prefixes (they
/// are not nested), so a wider beam can let in prefixes that start well and end badly and
/// push out the one the narrower beam finishes with. A counter-example from a tiny test
/// model: greedy gives "The dog chases the cat." at -3.67; beam 2 keeps "The ho|u|s|e"
/// beside "The dog chases the cat", at step 6 "The dog chases the cat ." misses the beam
/// by 0.01 nats and the result is "The house chases the cat." at -4.67. Only exhaustive
/// search is monotone. Measured with the shipped model (`cargo test --release --test
/// shipped_models wider -- --nocapture` prints the counts): beam 2 against greedy higher
/// on 43, lower on 4 of 300 sentences; beam 5 against beam 2 higher on 20, lower on 0.
#[test]
fn wider_beams_score_higher_without_penalties() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let (src, _) = rnmt::corpus::read_lines(&corpora.join("tatoeba-deu-eng/test.de")).unwrap();
    let src = &src[..300];
    let mut previous: Option<(usize, Vec<f32>)> = None;
    for beam in [1, 2, 5] {
        let options = rnmt::translate::TranslateOptions {
            beam,
            alpha: Some(0.0),
            beta: Some(0.0),
            ..Default::default()
        };
        let translator =
            rnmt::translate::Translator::new(&[MODEL.into()], &candle_core::Device::Cpu, &options)
                .unwrap();
        let out = translator.translate(src, 1).unwrap();
        let scores: Vec<f32> = out.iter().map(|t| t.log_prob).collect();
        for t in &out {
            assert_eq!(
                t.score, t.log_prob,
                "with α = β = 0 the score is the log-probability"
            );
        }
        if let Some((narrow, prev)) = &previous {
            let lower = scores
                .iter()
                .zip(prev)
                .filter(|(w, n)| **w < **n - 1e-4)
                .count();
            let higher = scores
                .iter()
                .zip(prev)
                .filter(|(w, n)| **w > **n + 1e-4)
                .count();
            let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let (wide_mean, narrow_mean) = (mean(&scores), mean(prev));
            eprintln!(
                "beam {beam} vs {narrow}: higher on {higher}, lower on {lower} of {} sentences; mean log-prob {wide_mean:.4} vs {narrow_mean:.4}",
                src.len()
            );
            assert!(
                wide_mean > narrow_mean,
                "beam {beam} scores lower on average"
            );
            assert!(
                lower * 100 <= 3 * src.len(),
                "beam {beam} scores lower than beam {narrow} on {lower} of {} sentences",
                src.len()
            );
        }
        previous = Some((beam, scores));
    }
}

/// Several batch workers (each on a pool of its own, taking batches as they finish) give
/// exactly the translations and scores of one, in the input's order, on 200 Tatoeba test
/// sentences in batches of 16: a batch's search does not depend on which thread runs it.
#[test]
fn batch_workers_change_no_translation() {
    let Some(corpora) = corpora_dir_for_tests() else {
        return;
    };
    let (src, _) = rnmt::corpus::read_lines(&corpora.join("tatoeba-deu-eng/test.de")).unwrap();
    let src = &src[..200];
    let run = |batch_workers: usize| {
        let options = rnmt::translate::TranslateOptions {
            batch_size: 16,
            batch_workers,
            ..Default::default()
        };
        rnmt::translate::Translator::new(&[MODEL.into()], &candle_core::Device::Cpu, &options)
            .unwrap()
            .translate(src, 1)
            .unwrap()
    };
    let one = run(1);
    for workers in [2, 3] {
        let many = run(workers);
        assert_eq!(many.len(), one.len());
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert_eq!(
                a.translation,
                b.translation,
                "{workers} workers, line {}",
                i + 1
            );
            assert_eq!(a.score, b.score, "{workers} workers, line {}", i + 1);
        }
    }
}
