//! Sentence splitting: running text into the single sentences the models were trained on.
//!
//! The rules are sentencex's (rule-based, with per-language abbreviation lists, and
//! "prefer not splitting over a wrong split"): "z. B.", "Dr.", "Nr.", "usw.", "ca." and
//! ordinals such as "3. Oktober" do not end a German sentence. Nothing is dropped: the
//! ranges returned, with the whitespace between them, cover the whole text.

use std::ops::Range;

/// The sentences of `text` (in language `lang`, an ISO 639-1 code; unknown codes use
/// sentencex's fallbacks, English at last) as byte ranges without surrounding
/// whitespace, in order. Only whitespace lies outside the ranges.
pub fn split_sentences(text: &str, lang: &str) -> Vec<Range<usize>> {
    // Cut after each sentence end sentencex finds; building the pieces from the cut
    // points alone (not from its ranges) guarantees that they cover the text.
    let mut cuts: Vec<usize> = sentencex::get_sentence_boundaries(lang, text)
        .iter()
        .map(|b| b.end_byte)
        .filter(|&c| c > 0 && c < text.len() && text.is_char_boundary(c))
        .filter(|&c| !(lang == "de" && ordinal_before_month(&text[..c], &text[c..])))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts.push(text.len());
    let mut out = Vec::with_capacity(cuts.len());
    let mut start = 0;
    for end in cuts {
        if let Some(r) = trimmed(text, start..end) {
            out.push(r);
        }
        start = end;
    }
    out
}

const GERMAN_MONTHS: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];

/// Whether a cut between `before` and `after` would part a German date ("am 3. |
/// Oktober"). sentencex knows the rule but misses it when the month is followed by a
/// comma or another mark it does not strip ("am 3. Oktober, …").
fn ordinal_before_month(before: &str, after: &str) -> bool {
    let Some(number) = before.trim_end().strip_suffix('.') else {
        return false;
    };
    let digits = number.len() - number.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || digits > 2 {
        return false;
    }
    let word: String = after
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphabetic())
        .collect();
    GERMAN_MONTHS.contains(&word.as_str())
}

/// `range` of `text` without leading and trailing whitespace; `None` if nothing remains.
fn trimmed(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let piece = &text[range.clone()];
    let start = range.start + (piece.len() - piece.trim_start().len());
    let end = range.end - (piece.len() - piece.trim_end().len());
    (start < end).then_some(start..end)
}

/// Where a long sentence may be cut without splitting a clause: byte offsets just after
/// a comma, semicolon, colon or dash that is followed by whitespace, in order. A cut
/// falls before the whitespace, so each side keeps its own punctuation.
pub fn clause_cuts(sentence: &str) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut chars = sentence.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let boundary = matches!(c, ',' | ';' | ':' | '–' | '—')
            || (c == '-' && i > 0 && sentence[..i].ends_with(' '));
        if boundary {
            if let Some(&(j, next)) = chars.peek() {
                if next.is_whitespace() {
                    cuts.push(j);
                }
            }
        }
    }
    cuts
}

/// Byte offsets between whitespace-separated words (just after each word but the last).
pub fn word_cuts(sentence: &str) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut in_word = false;
    for (i, c) in sentence.char_indices() {
        if c.is_whitespace() {
            if in_word {
                cuts.push(i);
            }
            in_word = false;
        } else {
            in_word = true;
        }
    }
    if cuts.last() == Some(&sentence.trim_end().len()) {
        cuts.pop();
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentences<'a>(text: &'a str, lang: &str) -> Vec<&'a str> {
        split_sentences(text, lang)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn a_paragraph_gives_each_of_its_sentences() {
        let text = "Ich bin müde. Ich gehe jetzt nach Hause. Morgen arbeite ich wieder. Meine \
                    Schwester wohnt in Berlin und arbeitet als Ärztin in einem großen Krankenhaus.";
        assert_eq!(
            sentences(text, "de"),
            [
                "Ich bin müde.",
                "Ich gehe jetzt nach Hause.",
                "Morgen arbeite ich wieder.",
                "Meine Schwester wohnt in Berlin und arbeitet als Ärztin in einem großen Krankenhaus."
            ]
        );
    }

    #[test]
    fn german_abbreviations_and_ordinals_do_not_end_a_sentence() {
        let text = "Das ist z. B. ein Test. Dr. Müller kommt am 3. Oktober. Zimmer Nr. 5 ist \
                    frei. Äpfel, Birnen usw. sind da. Es kostet ca. 5 Euro. Am 12. März, \
                    einem Montag, kam er.";
        assert_eq!(
            sentences(text, "de"),
            [
                "Das ist z. B. ein Test.",
                "Dr. Müller kommt am 3. Oktober.",
                "Zimmer Nr. 5 ist frei.",
                "Äpfel, Birnen usw. sind da.",
                "Es kostet ca. 5 Euro.",
                "Am 12. März, einem Montag, kam er."
            ]
        );
    }

    #[test]
    fn quotes_and_brackets_stay_with_their_sentence() {
        let text = "Er sagte: „Komm her!“ Dann ging er. (Das war gestern.)";
        let got = sentences(text, "de");
        assert_eq!(got[0], "Er sagte: „Komm her!“");
        assert_eq!(got[1], "Dann ging er.");
        assert_eq!(got.last().unwrap(), &"(Das war gestern.)");
    }

    #[test]
    fn nothing_but_whitespace_lies_between_the_sentences() {
        for text in [
            "  Zwei Leerzeichen.  Und noch einer.   ",
            "...",
            "",
            "   ",
            "Mr. Smith went to Washington. He arrived at 5 p.m. on Monday.",
            "Ein Satz ohne Punkt",
        ] {
            let ranges = split_sentences(text, "de");
            let mut rest = String::new();
            let mut at = 0;
            for r in &ranges {
                rest.push_str(&text[at..r.start]);
                at = r.end;
            }
            rest.push_str(&text[at..]);
            assert!(rest.trim().is_empty(), "{text:?} left {rest:?} outside");
        }
        assert_eq!(sentences("...", "de"), ["..."]);
    }

    #[test]
    fn clauses_are_cut_after_their_punctuation() {
        let s = "Wenn es regnet, bleiben wir zu Hause; sonst gehen wir – vielleicht – aus.";
        let cuts = clause_cuts(s);
        let parts: Vec<&str> = std::iter::once(0)
            .chain(cuts.iter().copied())
            .zip(cuts.iter().copied().chain(std::iter::once(s.len())))
            .map(|(a, b)| s[a..b].trim())
            .collect();
        assert_eq!(
            parts,
            [
                "Wenn es regnet,",
                "bleiben wir zu Hause;",
                "sonst gehen wir –",
                "vielleicht –",
                "aus."
            ]
        );
        assert!(clause_cuts("3,5 Millionen").is_empty());
        assert_eq!(word_cuts("a bb  c "), [1, 4]);
    }
}
