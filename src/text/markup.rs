//! Inline markup carried across translation: `<b>`, `<a href=…>`, `*emphasis*`, `[links](…)`
//! around words of a sentence are put back around the words of the translation that the
//! source words are aligned to.
//!
//! A [`Mark`] holds the markup's own bytes (never rewritten) and the source words it
//! covers. After translation, its target words are the span of the target words aligned
//! to those source words (from the attention's word alignment); spans are then repaired
//! so that they nest as they did in the source, and the markup is written around them.

use std::ops::Range;

/// Inline markup within one sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Markup before the covered words (`<b>`); `None` when it opened in an earlier sentence.
    pub open: Option<String>,
    /// Markup after them (`</b>`); `None` when it closes in a later sentence.
    pub close: Option<String>,
    /// Source words covered (indices into the sentence's whitespace-separated words). An
    /// empty range `i..i` is a point (`<img>`, an inline code span kept verbatim, a line
    /// break) that stands before word `i`.
    pub words: Range<usize>,
    /// Whether the open markup stood after the first word's leading punctuation and the
    /// close markup before the last word's trailing punctuation (`<b>müde</b>.`): so it
    /// stands in the translation.
    pub inside_punctuation: (bool, bool),
    /// For a point: whether whitespace stood before and after it.
    pub spaced: (bool, bool),
}

impl Mark {
    /// Markup around whole words.
    pub fn around(open: &str, close: &str, words: Range<usize>) -> Self {
        Mark {
            open: Some(open.into()),
            close: Some(close.into()),
            words,
            inside_punctuation: (false, false),
            spaced: (false, false),
        }
    }

    /// Markup on its own before word `i`, with whitespace on both sides.
    pub fn point(raw: &str, i: usize) -> Self {
        Mark {
            open: Some(raw.into()),
            close: Some(String::new()),
            words: i..i,
            inside_punctuation: (false, false),
            spaced: (true, true),
        }
    }
}

/// How translated words are written into the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    None,
    /// `&`, `<`, `>` as character references.
    Html,
    /// Characters that would start Markdown markup, backslash-escaped.
    Markdown,
}

impl Escape {
    pub fn apply(self, text: &str) -> String {
        match self {
            Escape::None => text.to_string(),
            Escape::Html => {
                let mut out = String::with_capacity(text.len());
                for c in text.chars() {
                    match c {
                        '&' => out.push_str("&amp;"),
                        '<' => out.push_str("&lt;"),
                        '>' => out.push_str("&gt;"),
                        c => out.push(c),
                    }
                }
                out
            }
            Escape::Markdown => {
                let mut out = String::with_capacity(text.len());
                for c in text.chars() {
                    if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<') {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out
            }
        }
    }
}

/// The source words of a sentence that markup at byte range `bytes` of it covers
/// (`words` are the words' byte ranges). An empty `bytes` is a point before the first
/// word that starts at or after it.
pub fn covered_words(words: &[Range<usize>], bytes: Range<usize>) -> Range<usize> {
    if bytes.is_empty() {
        let i = words.partition_point(|w| w.start < bytes.start);
        return i..i;
    }
    let first = words.partition_point(|w| w.end <= bytes.start);
    let last = words.partition_point(|w| w.start < bytes.end);
    if first >= last {
        // Markup around whitespace only: a point where it stood.
        return first..first;
    }
    first..last
}

/// Byte ranges of the whitespace-separated words of `text`.
pub fn word_ranges(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push(s..i);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(s..text.len());
    }
    out
}

/// Writes `translation` with `marks` put back, escaping the words with `escape`.
/// `alignment` holds (source word, target word) pairs; `source_words` is the sentence's
/// word count.
pub fn place_marks(
    translation: &str,
    source_words: usize,
    alignment: &[(usize, usize)],
    marks: &[Mark],
    escape: Escape,
) -> String {
    if marks.is_empty() {
        return escape.apply(translation);
    }
    let target: Vec<&str> = translation.split_whitespace().collect();
    let n = target.len();
    // Source word → target words aligned to it.
    let mut aligned: Vec<Vec<usize>> = vec![Vec::new(); source_words];
    for &(i, j) in alignment {
        if i < source_words && j < n {
            aligned[i].push(j);
        }
    }
    // Outer marks first, so that each inner mark is clamped into its parent.
    let mut order: Vec<usize> = (0..marks.len()).collect();
    order.sort_by_key(|&m| {
        let w = &marks[m].words;
        (w.start, std::cmp::Reverse(w.end), m)
    });
    let mut spans: Vec<Range<usize>> = vec![0..0; marks.len()];
    // Marks already placed, outer to inner, each with its parent.
    let mut placed: Vec<(usize, Option<usize>)> = Vec::with_capacity(marks.len());
    for &m in &order {
        let mark = &marks[m];
        // The innermost placed mark whose source words contain this one's is its parent.
        let parent = placed.iter().rev().map(|&(p, _)| p).find(|&p| {
            let (pw, w) = (&marks[p].words, &mark.words);
            pw.start <= w.start && w.end <= pw.end && !pw.is_empty()
        });
        let bounds = parent.map_or(0..n, |p| spans[p].clone());
        let mut span = clamp(target_span(mark, &aligned, source_words, n), &bounds);
        // Siblings (same parent) that overlap in the target: this one starts after them.
        for &(s, sibling_parent) in &placed {
            if sibling_parent == parent && ranges_overlap(&spans[s], &span) {
                let start = spans[s].end.min(bounds.end);
                span = start..span.end.max(start);
            }
        }
        spans[m] = span;
        placed.push((m, parent));
    }
    write_with_marks(&target, marks, &spans, escape)
}

/// The target words of `mark`: the hull of the words aligned to its source words; a
/// point goes before the first target word aligned to the source word it precedes.
fn target_span(mark: &Mark, aligned: &[Vec<usize>], source_words: usize, n: usize) -> Range<usize> {
    let proportional = |i: usize| (i * n).div_ceil(source_words.max(1)).min(n);
    if mark.words.is_empty() {
        let i = mark.words.start;
        let j = aligned
            .get(i)
            .and_then(|a| a.iter().min().copied())
            .unwrap_or_else(|| proportional(i));
        return j..j;
    }
    let hull = aligned[mark.words.start.min(source_words)..mark.words.end.min(source_words)]
        .iter()
        .flatten()
        .fold(None, |acc: Option<(usize, usize)>, &j| {
            Some(acc.map_or((j, j), |(a, b)| (a.min(j), b.max(j))))
        });
    let (mut start, mut end) = match hull {
        Some((a, b)) => (a, b + 1),
        None => {
            // No alignment: the same relative position, at least one word.
            let a = proportional(mark.words.start).min(n.saturating_sub(1));
            let b = proportional(mark.words.end).clamp(a + 1, n.max(a + 1));
            (a, b.min(n))
        }
    };
    // Markup continuing into the next sentence (or from the previous one) reaches the end
    // (or the start) of the translation.
    if mark.close.is_none() {
        end = n;
    }
    if mark.open.is_none() {
        start = 0;
    }
    start..end.max(start)
}

fn clamp(span: Range<usize>, bounds: &Range<usize>) -> Range<usize> {
    let start = span.start.clamp(bounds.start, bounds.end);
    let end = span.end.clamp(start, bounds.end);
    start..end
}

fn ranges_overlap(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The target words with each mark's open markup before its first word and its close
/// markup after its last, outer marks outside inner ones.
fn write_with_marks(
    target: &[&str],
    marks: &[Mark],
    spans: &[Range<usize>],
    escape: Escape,
) -> String {
    let n = target.len();
    let points_at = |j: usize| -> Vec<usize> {
        (0..marks.len())
            .filter(|&m| spans[m].is_empty() && spans[m].start == j)
            .collect()
    };
    let mut out = String::new();
    for (j, word) in target.iter().enumerate() {
        let points = points_at(j);
        match (points.first(), points.last()) {
            (Some(&first), Some(&last)) => {
                let (before, after) = (marks[first].spaced.0, marks[last].spaced.1);
                // A line break brings its own whitespace.
                let raw_spaced = marks[first]
                    .open
                    .as_deref()
                    .is_some_and(|r| r.starts_with(char::is_whitespace));
                if j > 0 && before && !raw_spaced {
                    out.push(' ');
                }
                for &m in &points {
                    push_empty(&mut out, &marks[m]);
                }
                // Words stay apart even where the markup stood inside one.
                if (after || (j > 0 && !before)) && !out.ends_with(char::is_whitespace) {
                    out.push(' ');
                }
            }
            _ if j > 0 => out.push(' '),
            _ => {}
        }
        let (lead, core, trail) = split_punctuation(word);
        // Opening before word j, outer (longest) first; from the first that hugs the
        // letters on, after the leading punctuation.
        let mut opening: Vec<usize> = (0..marks.len())
            .filter(|&m| spans[m].start == j && !spans[m].is_empty())
            .collect();
        opening.sort_by_key(|&m| (std::cmp::Reverse(spans[m].end), m));
        let k = opening
            .iter()
            .position(|&m| marks[m].inside_punctuation.0)
            .unwrap_or(opening.len());
        for &m in &opening[..k] {
            out.push_str(marks[m].open.as_deref().unwrap_or(""));
        }
        out.push_str(&escape.apply(lead));
        for &m in &opening[k..] {
            out.push_str(marks[m].open.as_deref().unwrap_or(""));
        }
        out.push_str(&escape.apply(core));
        // Closing after word j, innermost (shortest) first; up to the last that hugs the
        // letters, before the trailing punctuation.
        let mut closing: Vec<usize> = (0..marks.len())
            .filter(|&m| spans[m].end == j + 1 && !spans[m].is_empty())
            .collect();
        closing.sort_by_key(|&m| (std::cmp::Reverse(spans[m].start), std::cmp::Reverse(m)));
        let k = closing
            .iter()
            .rposition(|&m| marks[m].inside_punctuation.1)
            .map_or(0, |k| k + 1);
        for &m in &closing[..k] {
            out.push_str(marks[m].close.as_deref().unwrap_or(""));
        }
        out.push_str(&escape.apply(trail));
        for &m in &closing[k..] {
            out.push_str(marks[m].close.as_deref().unwrap_or(""));
        }
    }
    for m in points_at(n) {
        if n > 0 && marks[m].spaced.0 {
            out.push(' ');
        }
        push_empty(&mut out, &marks[m]);
    }
    out
}

/// A word as leading punctuation, the part from its first to its last letter or digit,
/// and trailing punctuation (`„Hund!“` → `„`, `Hund`, `!“`).
pub fn split_punctuation(word: &str) -> (&str, &str, &str) {
    let Some(first) = word.find(char::is_alphanumeric) else {
        return ("", word, "");
    };
    let last = word
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_alphanumeric())
        .map_or(word.len(), |(i, c)| i + c.len_utf8());
    (&word[..first], &word[first..last], &word[last..])
}

fn push_empty(out: &mut String, mark: &Mark) {
    out.push_str(mark.open.as_deref().unwrap_or(""));
    out.push_str(mark.close.as_deref().unwrap_or(""));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(open: &str, close: &str, words: Range<usize>) -> Mark {
        Mark::around(open, close, words)
    }

    #[test]
    fn markup_follows_the_aligned_words() {
        // "Der <b>Hund</b> jagt die Katze." → "The dog chases the cat."
        let alignment = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)];
        let marks = [mark("<b>", "</b>", 1..2)];
        let out = place_marks(
            "The dog chases the cat.",
            5,
            &alignment,
            &marks,
            Escape::Html,
        );
        assert_eq!(out, "The <b>dog</b> chases the cat.");
        // Markup that hugged the letters keeps the punctuation outside.
        let marks = [Mark {
            inside_punctuation: (true, true),
            ..mark("<i>", "</i>", 4..5)
        }];
        let out = place_marks(
            "The dog chases „the cat“.",
            5,
            &[(4, 4)],
            &marks,
            Escape::Html,
        );
        assert_eq!(out, "The dog chases „the <i>cat</i>“.");
        // Reordered: "Die Katze jagt den <i>Hund</i>." with Hund aligned to the last word.
        let marks = [mark("<i>", "</i>", 4..5)];
        let out = place_marks(
            "The dog chases the cat.",
            5,
            &[(4, 1)],
            &marks,
            Escape::Html,
        );
        assert_eq!(out, "The <i>dog</i> chases the cat.");
    }

    #[test]
    fn nested_marks_stay_nested_and_points_are_kept() {
        // "<a><b>Ein</b> Hund</a><br>" over two source words.
        let marks = [
            mark("<a href=\"x\">", "</a>", 0..2),
            mark("<b>", "</b>", 0..1),
            Mark {
                spaced: (false, false),
                ..Mark::point("<img>", 2)
            },
        ];
        // Alignment puts the inner word outside the outer span: it is clamped in.
        let out = place_marks("A dog", 2, &[(0, 0), (1, 1)], &marks, Escape::Html);
        assert_eq!(out, "<a href=\"x\"><b>A</b> dog</a><img>");
        let out = place_marks("A dog", 2, &[], &marks, Escape::Html);
        assert!(out.contains("<a href=\"x\">") && out.contains("</a>") && out.contains("<img>"));
        assert_eq!(out.matches("<b>").count(), 1);
    }

    #[test]
    fn escaping_applies_to_words_not_to_markup() {
        let marks = [mark("<b>", "</b>", 0..1)];
        let out = place_marks("Tom & Jerry", 3, &[(0, 0)], &marks, Escape::Html);
        assert_eq!(out, "<b>Tom</b> &amp; Jerry");
        assert_eq!(Escape::Markdown.apply("a*b_c"), "a\\*b\\_c");
        assert_eq!(place_marks("a < b", 1, &[], &[], Escape::Html), "a &lt; b");
    }

    #[test]
    fn covered_words_by_byte_range() {
        let words = word_ranges("Der Hund jagt");
        assert_eq!(words, [0..3, 4..8, 9..13]);
        assert_eq!(covered_words(&words, 4..8), 1..2);
        assert_eq!(covered_words(&words, 0..13), 0..3);
        assert_eq!(covered_words(&words, 8..8), 2..2);
        assert_eq!(covered_words(&words, 13..13), 3..3);
    }
}
