//! The sentence splitter and the HTML and Markdown segmenters on arbitrary text: no
//! panic; plain text comes back byte for byte when every sentence is "translated" as
//! itself, and only whitespace lies outside the sentences the splitter finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnmt::text::{split_sentences, Segmented, SentenceTranslation, SplitOptions, TextFormat};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for lang in ["de", "en"] {
        let mut outside = String::new();
        let mut at = 0;
        for r in split_sentences(text, lang) {
            assert!(r.start >= at && r.end <= text.len());
            outside.push_str(&text[at..r.start]);
            at = r.end;
        }
        outside.push_str(&text[at..]);
        assert!(outside.trim().is_empty(), "{outside:?} outside the sentences");
    }
    let split = SplitOptions {
        lang: "de".into(),
        split: true,
    };
    for format in [TextFormat::Text, TextFormat::Html, TextFormat::Markdown] {
        let seg = Segmented::new(text, format, &split);
        let alignments: Vec<Vec<(usize, usize)>> = seg
            .sentences()
            .iter()
            .map(|s| (0..s.split_whitespace().count()).map(|i| (i, i)).collect())
            .collect();
        let same: Vec<SentenceTranslation> = seg
            .sentences()
            .iter()
            .zip(&alignments)
            .map(|(s, a)| SentenceTranslation {
                text: s,
                alignment: a,
            })
            .collect();
        let back = seg.assemble(&same);
        if format == TextFormat::Text {
            assert_eq!(back, text);
        }
        // Arbitrary translations with no alignment at all: no panic either.
        let other: Vec<SentenceTranslation> = seg
            .sentences()
            .iter()
            .map(|_| SentenceTranslation {
                text: "a b c",
                alignment: &[(7, 1), (0, 9)],
            })
            .collect();
        let _ = seg.assemble(&other);
    }
});
