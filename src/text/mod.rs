//! Real text in, real text out: running text, HTML and Markdown cut into the single
//! sentences a model translates, and put back together around their translations.
//!
//! [`Segmented::new`] splits a text into [`Segmented::sentences`] and keeps everything
//! else — whitespace, line breaks, HTML tags, attributes and entities, `<script>`, `<style>`,
//! `<code>` and `<pre>` content, Markdown syntax — as it was. [`Segmented::assemble`] writes
//! the text again with each sentence replaced by its translation; inline markup within a
//! sentence (`<b>`, `<a>`, `*emphasis*`, links) goes around the target words aligned to
//! the source words it covered (see [`markup`]).

mod html;
mod markdown;
pub mod markup;
pub mod sentences;

use std::ops::Range;

use markup::{covered_words, place_marks, split_punctuation, word_ranges, Escape, Mark};
pub use sentences::{clause_cuts, split_sentences, word_cuts};

/// What a text is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFormat {
    /// Plain text: each line on its own, its sentences translated, its whitespace kept.
    Text,
    /// HTML: text between tags, sentence by sentence across inline tags.
    Html,
    /// CommonMark (with tables, strikethrough, footnotes and task lists).
    Markdown,
}

impl TextFormat {
    /// The format a file name's extension names: `.html`/`.htm`, `.md`/`.markdown`,
    /// anything else text.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("html" | "htm" | "xhtml") => TextFormat::Html,
            Some("md" | "markdown") => TextFormat::Markdown,
            _ => TextFormat::Text,
        }
    }
}

/// How text is cut into sentences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitOptions {
    /// Language of the text (ISO 639-1), for the splitter's abbreviation rules.
    pub lang: String,
    /// `false`: every line (every block of markup) is one segment, as given.
    pub split: bool,
}

/// The translation of one sentence, as [`Segmented::assemble`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct SentenceTranslation<'a> {
    pub text: &'a str,
    /// (source word, target word) pairs, words being whitespace-separated; needed only
    /// where [`Segmented::needs_alignment`].
    pub alignment: &'a [(usize, usize)],
}

/// A text cut into sentences, with the layout around them.
#[derive(Clone, Debug, Default)]
pub struct Segmented {
    pieces: Vec<Piece>,
    sentences: Vec<String>,
    needs_alignment: bool,
}

#[derive(Clone, Debug)]
enum Piece {
    /// Written out as it is.
    Keep(String),
    /// Sentence `index`, with its inline markup.
    Sentence {
        index: usize,
        marks: Vec<Mark>,
        escape: Escape,
    },
}

/// Markup at a byte position of a block's plain text.
#[derive(Clone, Debug)]
struct Tag {
    pos: usize,
    raw: String,
    kind: TagKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TagKind {
    /// Opens the markup that the `Close` with the same id closes.
    Open(usize),
    Close(usize),
    /// Stands on its own (`<img>`, a code span kept verbatim).
    Point,
    /// A line break within running text, which the plain text reads as the one space
    /// that follows it there.
    Break,
}

impl Segmented {
    pub fn new(text: &str, format: TextFormat, split: &SplitOptions) -> Self {
        let mut s = Segmented::default();
        match format {
            TextFormat::Text => {
                for (i, line) in text.split('\n').enumerate() {
                    if i > 0 {
                        s.keep("\n");
                    }
                    let (line, cr) = match line.strip_suffix('\r') {
                        Some(l) => (l, "\r"),
                        None => (line, ""),
                    };
                    s.push_block(line, &[], Escape::None, split);
                    s.keep(cr);
                }
            }
            TextFormat::Html => html::segment(text, split, &mut s),
            TextFormat::Markdown => markdown::segment(text, split, &mut s),
        }
        s
    }

    /// The sentences to translate, in order.
    pub fn sentences(&self) -> &[String] {
        &self.sentences
    }

    /// Whether some sentence carries inline markup, so that [`Self::assemble`] needs the
    /// word alignments of the translations.
    pub fn needs_alignment(&self) -> bool {
        self.needs_alignment
    }

    /// The text again with `translations[i]` in the place of `sentences()[i]`.
    pub fn assemble(&self, translations: &[SentenceTranslation]) -> String {
        assert_eq!(
            translations.len(),
            self.sentences.len(),
            "one translation per sentence"
        );
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Keep(s) => out.push_str(s),
                Piece::Sentence {
                    index,
                    marks,
                    escape,
                } => {
                    let t = &translations[*index];
                    let source_words = self.sentences[*index].split_whitespace().count();
                    out.push_str(&place_marks(
                        t.text,
                        source_words,
                        t.alignment,
                        marks,
                        *escape,
                    ));
                }
            }
        }
        out
    }

    fn keep(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(Piece::Keep(last)) = self.pieces.last_mut() {
            last.push_str(s);
        } else {
            self.pieces.push(Piece::Keep(s.to_string()));
        }
    }

    /// Adds a block of running text `plain` (markup taken out, entities decoded) with its
    /// markup `tags`: each sentence of it becomes a piece to translate, whitespace and
    /// markup between sentences are kept.
    fn push_block(&mut self, plain: &str, tags: &[Tag], escape: Escape, split: &SplitOptions) {
        let sentences = if split.split {
            split_sentences(plain, &split.lang)
        } else {
            let start = plain.len() - plain.trim_start().len();
            let end = plain.trim_end().len();
            std::iter::once(start..end)
                .filter(|r| !r.is_empty())
                .collect()
        };
        let mut tags: Vec<&Tag> = tags.iter().collect();
        tags.sort_by_key(|t| t.pos);
        let mut next_tag = 0;
        let mut at = 0;
        for range in sentences {
            // The gap before the sentence: whitespace and the markup that stands in it.
            while next_tag < tags.len() && !inside(tags[next_tag], &range) {
                let t = tags[next_tag];
                if t.pos > range.start {
                    break;
                }
                self.keep(&escape.apply(&plain[at..t.pos.max(at)]));
                at = skip_break_space(plain, t, at.max(t.pos));
                self.keep(&t.raw);
                next_tag += 1;
            }
            self.keep(&escape.apply(&plain[at..range.start]));
            let first = next_tag;
            while next_tag < tags.len() && inside(tags[next_tag], &range) {
                next_tag += 1;
            }
            let marks = marks_of(&plain[range.clone()], range.start, &tags[first..next_tag]);
            self.needs_alignment |= !marks.is_empty();
            self.pieces.push(Piece::Sentence {
                index: self.sentences.len(),
                marks,
                escape,
            });
            self.sentences.push(plain[range.clone()].to_string());
            at = range.end;
        }
        for t in &tags[next_tag..] {
            self.keep(&escape.apply(&plain[at..t.pos.max(at)]));
            at = skip_break_space(plain, t, at.max(t.pos));
            self.keep(&t.raw);
        }
        self.keep(&escape.apply(&plain[at..]));
    }
}

/// Where the plain text goes on after `tag` at `at`: past the space a line break reads as.
fn skip_break_space(plain: &str, tag: &Tag, at: usize) -> usize {
    if tag.kind == TagKind::Break && plain[at..].starts_with(' ') {
        at + 1
    } else {
        at
    }
}

/// Whether `tag` belongs to the sentence at `range`: markup strictly inside, an opening
/// or point at its start, a closing at its end.
fn inside(tag: &Tag, range: &Range<usize>) -> bool {
    let p = tag.pos;
    (range.start < p && p < range.end)
        || (p == range.start && !is_close(tag))
        || (p == range.end && is_close(tag))
}

fn is_close(tag: &Tag) -> bool {
    matches!(tag.kind, TagKind::Close(_))
}

/// The marks of `tags` (all inside `sentence`, which starts at byte `offset` of its block).
fn marks_of(sentence: &str, offset: usize, tags: &[&Tag]) -> Vec<Mark> {
    let words = word_ranges(sentence);
    let local = |pos: usize| pos.saturating_sub(offset).min(sentence.len());
    // Whether the markup from `at` to `end` leaves its words' punctuation outside (or
    // they have none): then the translation's punctuation stays outside too.
    let hugs = |at: usize, end: usize, covered: &Range<usize>| {
        if covered.is_empty() {
            return (false, false);
        }
        let (first, last) = (&words[covered.start], &words[covered.end - 1]);
        let (lead, _, _) = split_punctuation(&sentence[first.clone()]);
        let (_, _, trail) = split_punctuation(&sentence[last.clone()]);
        let (core_start, core_end) = (first.start + lead.len(), last.end - trail.len());
        (at >= core_start, end <= core_end)
    };
    let mut marks = Vec::new();
    for (k, t) in tags.iter().enumerate() {
        let pos = local(t.pos);
        match t.kind {
            TagKind::Open(id) => {
                let close = tags[k + 1..].iter().find(|c| c.kind == TagKind::Close(id));
                let end = close.map_or(sentence.len(), |c| local(c.pos)).max(pos);
                let covered = covered_words(&words, pos..end);
                marks.push(Mark {
                    open: Some(t.raw.clone()),
                    close: close.map(|c| c.raw.clone()),
                    inside_punctuation: hugs(pos, end, &covered),
                    spaced: spaced(sentence, pos),
                    words: covered,
                });
            }
            TagKind::Close(id) => {
                let opened_here = tags[..k].iter().any(|o| o.kind == TagKind::Open(id));
                if !opened_here {
                    let covered = covered_words(&words, 0..pos);
                    marks.push(Mark {
                        open: None,
                        close: Some(t.raw.clone()),
                        inside_punctuation: hugs(0, pos, &covered),
                        spaced: spaced(sentence, pos),
                        words: covered,
                    });
                }
            }
            TagKind::Point | TagKind::Break => {
                let i = covered_words(&words, pos..pos).start;
                marks.push(Mark {
                    spaced: spaced(sentence, pos),
                    ..Mark::point(&t.raw, i)
                });
            }
        }
    }
    marks
}

/// Whether whitespace stands just before and just after byte `pos` of `text`.
fn spaced(text: &str, pos: usize) -> (bool, bool) {
    (
        text[..pos].ends_with(char::is_whitespace),
        text[pos..].starts_with(char::is_whitespace),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn split_de() -> SplitOptions {
        SplitOptions {
            lang: "de".into(),
            split: true,
        }
    }

    /// `seg` with sentence i replaced by `texts[i]`, word k aligned to word k.
    pub(crate) fn assemble_monotone(seg: &Segmented, texts: &[String]) -> String {
        let alignments: Vec<Vec<(usize, usize)>> = seg
            .sentences()
            .iter()
            .map(|s| (0..s.split_whitespace().count()).map(|i| (i, i)).collect())
            .collect();
        let t: Vec<SentenceTranslation> = texts
            .iter()
            .zip(&alignments)
            .map(|(text, alignment)| SentenceTranslation { text, alignment })
            .collect();
        seg.assemble(&t)
    }

    /// Every sentence translated as itself: the text must come back byte for byte.
    pub(crate) fn identity(seg: &Segmented) -> String {
        assemble_monotone(seg, seg.sentences())
    }

    #[test]
    fn plain_text_keeps_its_lines_and_whitespace() {
        let text = "  Ich bin müde.  Ich gehe.\r\n\n\tMorgen wieder. \n...";
        let seg = Segmented::new(text, TextFormat::Text, &split_de());
        assert_eq!(
            seg.sentences(),
            ["Ich bin müde.", "Ich gehe.", "Morgen wieder.", "..."]
        );
        assert!(!seg.needs_alignment());
        assert_eq!(identity(&seg), text);
        let upper: Vec<String> = seg.sentences().iter().map(|s| s.to_uppercase()).collect();
        let t: Vec<SentenceTranslation> = upper
            .iter()
            .map(|s| SentenceTranslation {
                text: s,
                alignment: &[],
            })
            .collect();
        assert_eq!(
            seg.assemble(&t),
            "  ICH BIN MÜDE.  ICH GEHE.\r\n\n\tMORGEN WIEDER. \n..."
        );
    }

    #[test]
    fn no_split_keeps_one_segment_per_line() {
        let opts = SplitOptions {
            lang: "de".into(),
            split: false,
        };
        let seg = Segmented::new(" Ich bin müde. Ich gehe.\n", TextFormat::Text, &opts);
        assert_eq!(seg.sentences(), ["Ich bin müde. Ich gehe."]);
        assert_eq!(identity(&seg), " Ich bin müde. Ich gehe.\n");
    }

    #[test]
    fn format_from_the_file_name() {
        use std::path::Path;
        assert_eq!(
            TextFormat::from_path(Path::new("a/b.HTML")),
            TextFormat::Html
        );
        assert_eq!(
            TextFormat::from_path(Path::new("r.md")),
            TextFormat::Markdown
        );
        assert_eq!(TextFormat::from_path(Path::new("r.txt")), TextFormat::Text);
        assert_eq!(TextFormat::from_path(Path::new("r")), TextFormat::Text);
    }
}
