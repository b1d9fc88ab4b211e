//! sacreBLEU's tokenizers, BLEU and chrF on arbitrary text: no panic, scores in [0, 100],
//! the same score twice for the same input, and a hypothesis equal to its reference scores
//! 100 wherever it has something to count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnmt::metrics::bleu::{Bleu, BleuConfig};
use rnmt::metrics::chrf::{Chrf, ChrfConfig};
use rnmt::metrics::tokenize::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (hyp, reference) = text.split_once('\n').unwrap_or((&text, &text));
    for tok in [Tokenizer::None, Tokenizer::V13a, Tokenizer::Intl, Tokenizer::Char] {
        let _ = tok.tokenize(hyp);
        let bleu = Bleu::new(BleuConfig {
            tokenize: tok,
            ..BleuConfig::default()
        });
        if let Ok(s) = bleu.sentence_score(hyp, &[reference]) {
            assert!((0.0..=100.0).contains(&s.score), "BLEU {}", s.score);
            let again = bleu.sentence_score(hyp, &[reference]).unwrap();
            assert_eq!(s.score.to_bits(), again.score.to_bits());
        }
        if let Ok(s) = bleu.corpus_score(&[hyp], &[vec![reference]]) {
            assert!((0.0..=100.0).contains(&s.score), "corpus BLEU {}", s.score);
        }
        // Where the hypothesis has 4-grams (by BLEU's own count, which splits as Python's
        // `str.split` does), matching its reference scores 100.
        if let Ok(same) = bleu.sentence_score(hyp, &[hyp]) {
            if same.totals[3] > 0.0 {
                assert!((same.score - 100.0).abs() < 1e-9, "BLEU(x, x) = {}", same.score);
            }
        }
    }
    for config in [ChrfConfig::default(), ChrfConfig::chrf_plus_plus()] {
        let chrf = Chrf::new(config);
        if let Ok(s) = chrf.sentence_score(hyp, &[reference]) {
            assert!((0.0..=100.0).contains(&s.score), "chrF {}", s.score);
        }
        // Letters and digits are never whitespace, by Rust's rules or Python's (which
        // chrF follows: U+001C..U+001F count as whitespace there).
        if hyp.chars().filter(|c| c.is_alphanumeric()).count() >= 6 {
            let same = chrf.sentence_score(hyp, &[hyp]).unwrap();
            assert!((same.score - 100.0).abs() < 1e-9, "chrF(x, x) = {}", same.score);
        }
    }
});
