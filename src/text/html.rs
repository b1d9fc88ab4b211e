//! HTML: the text between tags, translated sentence by sentence across inline tags.
//!
//! The document is read with html5gum, a WHATWG tokenizer that gives every token's byte
//! span, so everything that is not translated is copied from the input byte for byte:
//! tags with their attributes (a `title="Ein Satz."` is never translated), comments, the
//! doctype, entities outside translated text, and the whole of `<script>`, `<style>`,
//! `<pre>`, `<textarea>` and any element marked `translate="no"` or `class="notranslate"`
//! (as browsers' translators honour them). Inline elements (`<b>`, `<a>`, `<span>` …)
//! do not break a sentence; `<code>`, `<kbd>`, `<img>` within a sentence are kept verbatim
//! at the place of the word they stood before.

use html5gum::{DefaultEmitter, Token, Tokenizer};

use super::markup::Escape;
use super::{Segmented, SplitOptions, Tag, TagKind};

/// Elements within running text: they do not end a sentence.
const INLINE: &[&str] = &[
    "a", "abbr", "b", "bdi", "bdo", "big", "cite", "data", "del", "dfn", "em", "font", "i", "ins",
    "mark", "q", "s", "small", "span", "strike", "strong", "sub", "sup", "time", "tt", "u",
    "label",
];

/// Inline elements kept verbatim, content and all, at their place in the sentence.
const INLINE_VERBATIM: &[&str] = &["code", "kbd", "samp", "var", "img", "wbr", "math", "svg"];

/// Elements whose content is never translated.
const VERBATIM: &[&str] = &[
    "script",
    "style",
    "pre",
    "textarea",
    "noscript",
    "template",
    "iframe",
    "object",
    "xmp",
    "plaintext",
    "code",
    "kbd",
    "samp",
    "var",
    "math",
    "svg",
];

/// Elements without an end tag.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr",
];

/// The running text between block boundaries: decoded text and inline tags.
#[derive(Default)]
struct Block {
    /// Byte offset in the document where the block starts.
    start: Option<usize>,
    plain: String,
    tags: Vec<Tag>,
    /// Open inline elements: (name, id).
    open: Vec<(Vec<u8>, usize)>,
    next_id: usize,
}

pub(super) fn segment(html: &str, split: &SplitOptions, out: &mut Segmented) {
    let mut emitter = DefaultEmitter::<usize>::new_with_span();
    // Script, style and the other raw-text elements are tokenized as text, not as tags.
    emitter.naively_switch_states(true);
    let tokens = Tokenizer::new_with_emitter(html, emitter).flatten();
    let mut block = Block::default();
    // Inside a verbatim element: its name, how deeply it nests, where it started, whether
    // it stands within running text.
    let mut verbatim: Option<(Vec<u8>, usize, usize, bool)> = None;
    let mut at = 0;
    for token in tokens {
        let Some(span) = span_of(&token) else {
            continue;
        };
        if let Some((name, depth, start, inline)) = &mut verbatim {
            match &token {
                Token::StartTag(t) if t.name.as_slice() == name.as_slice() && !t.self_closing => {
                    *depth += 1
                }
                Token::EndTag(t) if t.name.as_slice() == name.as_slice() => {
                    *depth -= 1;
                    if *depth == 0 {
                        let (start, inline) = (*start, *inline);
                        verbatim = None;
                        let raw = &html[start..span.end];
                        if inline {
                            block.start.get_or_insert(start);
                            block.point(raw);
                        } else {
                            flush(&mut block, html, start, split, out, &mut at);
                            out.keep(raw);
                            at = span.end;
                        }
                    }
                }
                _ => {}
            }
            continue;
        }
        match &token {
            Token::String(s) => {
                block.start.get_or_insert(span.start);
                block.plain.push_str(&String::from_utf8_lossy(&s.value));
            }
            Token::StartTag(t) => {
                let name = t.name.to_vec();
                let no_translate = t
                    .attributes
                    .get(b"translate".as_slice())
                    .is_some_and(|v| v.value.eq_ignore_ascii_case(b"no"))
                    || t.attributes.get(b"class".as_slice()).is_some_and(|v| {
                        String::from_utf8_lossy(&v.value)
                            .split_whitespace()
                            .any(|c| c == "notranslate")
                    });
                let raw = &html[span.start..span.end];
                let void = t.self_closing || is(VOID, &name);
                if (no_translate || is(VERBATIM, &name)) && !void {
                    let inline = is(INLINE, &name) || is_inline_verbatim(&name);
                    verbatim = Some((name, 1, span.start, inline));
                    continue;
                }
                if is(INLINE, &name) || (void && is_inline_verbatim(&name)) {
                    block.start.get_or_insert(span.start);
                    if void {
                        block.point(raw);
                    } else {
                        block.open_tag(name, raw);
                    }
                } else {
                    flush(&mut block, html, span.start, split, out, &mut at);
                    out.keep(raw);
                    at = span.end;
                }
            }
            Token::EndTag(t) if is(INLINE, &t.name) => {
                block.start.get_or_insert(span.start);
                block.close_tag(&t.name, &html[span.start..span.end]);
            }
            _ => {
                // Block-level tags, comments, the doctype: they end the running text.
                flush(&mut block, html, span.start, split, out, &mut at);
                out.keep(&html[span.start..span.end]);
                at = span.end;
            }
        }
    }
    if let Some((_, _, start, _)) = verbatim {
        // An unclosed verbatim element runs to the end of the document.
        flush(&mut block, html, start, split, out, &mut at);
        out.keep(&html[start..]);
        return;
    }
    flush(&mut block, html, html.len(), split, out, &mut at);
}

fn span_of(token: &Token<usize>) -> Option<html5gum::Span<usize>> {
    match token {
        Token::StartTag(t) => Some(t.span),
        Token::EndTag(t) => Some(t.span),
        Token::String(s) => Some(s.span),
        Token::Comment(c) => Some(c.span),
        Token::Doctype(d) => Some(d.span),
        Token::Error(_) => None,
    }
}

fn is(list: &[&str], name: &[u8]) -> bool {
    list.iter().any(|n| n.as_bytes() == name)
}

fn is_inline_verbatim(name: &[u8]) -> bool {
    is(INLINE_VERBATIM, name)
}

impl Block {
    fn point(&mut self, raw: &str) {
        self.tags.push(Tag {
            pos: self.plain.len(),
            raw: raw.to_string(),
            kind: TagKind::Point,
        });
    }

    fn open_tag(&mut self, name: Vec<u8>, raw: &str) {
        let id = self.next_id;
        self.next_id += 1;
        self.open.push((name, id));
        self.tags.push(Tag {
            pos: self.plain.len(),
            raw: raw.to_string(),
            kind: TagKind::Open(id),
        });
    }

    fn close_tag(&mut self, name: &[u8], raw: &str) {
        // The innermost open element of that name; a stray end tag stands on its own.
        let kind = match self.open.iter().rposition(|(n, _)| n.as_slice() == name) {
            Some(k) => TagKind::Close(self.open.remove(k).1),
            None => TagKind::Point,
        };
        self.tags.push(Tag {
            pos: self.plain.len(),
            raw: raw.to_string(),
            kind,
        });
    }
}

/// Ends the running text at byte `end` of the document: translated if it holds any
/// letter or digit, otherwise copied as it is.
fn flush(
    block: &mut Block,
    html: &str,
    end: usize,
    split: &SplitOptions,
    out: &mut Segmented,
    at: &mut usize,
) {
    let Some(start) = block.start else {
        return;
    };
    let start = start.max(*at);
    if block.plain.chars().any(char::is_alphanumeric) {
        // Elements left open in this block pair with nothing here: points.
        let open: Vec<usize> = block.open.iter().map(|&(_, id)| id).collect();
        for t in &mut block.tags {
            if matches!(t.kind, TagKind::Open(id) if open.contains(&id)) {
                t.kind = TagKind::Point;
            }
        }
        out.keep(&html[*at..start]);
        out.push_block(&block.plain, &block.tags, Escape::Html, split);
    } else {
        out.keep(&html[*at..end]);
    }
    *at = end;
    *block = Block::default();
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assemble_monotone, identity, split_de};
    use super::super::{SentenceTranslation, TextFormat};
    use super::*;

    fn seg(html: &str) -> Segmented {
        Segmented::new(html, TextFormat::Html, &split_de())
    }

    const PAGE: &str = "<!DOCTYPE html>\n<html lang=\"de\"><head><title>Mein Haus</title>\
        <style>p { color: red; } /* Ein Satz. */</style>\
        <script>let s = \"Der Hund jagt die Katze.\"; if (a < b) {}</script></head>\n<body>\n\
        <!-- Ein Kommentar. -->\n<h1 title=\"Ein Satz im Attribut.\">Willkommen!</h1>\n\
        <p>Ich bin <b>sehr <i>müde</i></b>. Tom &amp; Jerry gehen <a href=\"/x?a=1&amp;b=2\">nach Hause</a>.</p>\n\
        <pre>  Nicht   übersetzen.  </pre><p>Führe <code>ls -l</code> aus.<br>Neue Zeile.</p>\n\
        <p translate=\"no\">Bleibt so.</p><ul><li>Eins</li><li>  </li></ul>\n</body></html>\n";

    #[test]
    fn text_is_cut_into_sentences_across_inline_tags() {
        let s = seg(PAGE);
        assert_eq!(
            s.sentences(),
            [
                "Mein Haus",
                "Willkommen!",
                "Ich bin sehr müde.",
                "Tom & Jerry gehen nach Hause.",
                "Führe  aus.",
                "Neue Zeile.",
                "Eins"
            ]
        );
        assert!(s.needs_alignment());
    }

    #[test]
    fn a_document_translated_as_itself_comes_back_byte_for_byte() {
        assert_eq!(identity(&seg(PAGE)), PAGE);
    }

    #[test]
    fn scripts_styles_attributes_and_comments_are_never_touched() {
        let s = seg(PAGE);
        let shout: Vec<String> = s.sentences().iter().map(|t| t.to_uppercase()).collect();
        let out = assemble_monotone(&s, &shout);
        for kept in [
            "<style>p { color: red; } /* Ein Satz. */</style>",
            "<script>let s = \"Der Hund jagt die Katze.\"; if (a < b) {}</script>",
            "<!-- Ein Kommentar. -->",
            "<h1 title=\"Ein Satz im Attribut.\">WILLKOMMEN!</h1>",
            "<pre>  Nicht   übersetzen.  </pre>",
            "<p translate=\"no\">Bleibt so.</p>",
            "ICH BIN <b>SEHR <i>MÜDE</i></b>.",
            "TOM &amp; JERRY GEHEN <a href=\"/x?a=1&amp;b=2\">NACH HAUSE</a>.</p>",
            "FÜHRE <code>ls -l</code> AUS.<br>NEUE ZEILE.",
        ] {
            assert!(out.contains(kept), "{kept:?} not in {out}");
        }
    }

    #[test]
    fn inline_tags_follow_the_alignment() {
        let s = seg("<p>Der <b>Hund</b> jagt die <i>Katze</i>.</p>");
        assert_eq!(s.sentences(), ["Der Hund jagt die Katze."]);
        // "The cat is chased by the dog." with Hund → dog, Katze → cat.
        let alignment = [(0, 0), (4, 1), (2, 3), (1, 6)];
        let out = s.assemble(&[SentenceTranslation {
            text: "The cat is chased by the dog.",
            alignment: &alignment,
        }]);
        assert_eq!(out, "<p>The <i>cat</i> is chased by the <b>dog</b>.</p>");
    }

    #[test]
    fn broken_html_keeps_every_tag_and_word() {
        for (html, back) in [
            ("<p>Offen <b>nie geschlossen.</p>", None),
            ("</b>Streuendes Ende.", None),
            ("<p>Ein <span>Satz", None),
            ("<script>unendlich", None),
            ("<", None),
            ("", None),
            // Text is decoded for translation and escaped again where it must be.
            ("a < b & c > d", Some("a &lt; b &amp; c &gt; d")),
            (
                "<p a='1' b=2 c>Text &notanentity; &#x41;&#66;</p>",
                // `&not` is a legacy entity even without its `;`, as browsers read it.
                Some("<p a='1' b=2 c>Text ¬anentity; AB</p>"),
            ),
        ] {
            assert_eq!(identity(&seg(html)), back.unwrap_or(html), "{html:?}");
        }
    }
}
