//! Markdown: the text of paragraphs, headings, list items and table cells translated,
//! the markup kept.
//!
//! pulldown-cmark (CommonMark, with tables, strikethrough, footnotes and task lists)
//! gives every event's byte range, so the syntax around the text — `#`, list markers,
//! `>`, indentation, fences, link targets — is copied from the input, and emphasis,
//! strong, strikethrough and links within a sentence go around the words they covered.
//! Code spans and blocks, inline HTML, HTML blocks, images, math and autolinks are kept
//! verbatim.

use pulldown_cmark::{Event, LinkType, Options, Parser, Tag, TagEnd};

use super::markup::Escape;
use super::{Segmented, SplitOptions, Tag as Markup, TagKind};

/// The running text of one paragraph, heading, list item or table cell.
#[derive(Default)]
struct Block {
    /// Byte range of the document it covers so far.
    start: Option<usize>,
    last: usize,
    plain: String,
    tags: Vec<Markup>,
    /// Where the raw bytes of the last tag end, so a following gap (a block quote's `> `
    /// after a line break) joins it.
    last_tag_end: Option<usize>,
    /// Inline containers whose first child has not come yet: (id, start byte).
    pending: Vec<(usize, usize)>,
    /// Open inline containers: (id, end byte of the container).
    open: Vec<(usize, usize)>,
    next_id: usize,
}

pub(super) fn segment(md: &str, split: &SplitOptions, out: &mut Segmented) {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_TASKLISTS;
    let mut block = Block::default();
    let mut at = 0;
    // Inside an element kept verbatim: its start byte, nesting depth, and whether it is
    // inline (an image) rather than a block (code, HTML, metadata).
    let mut verbatim: Option<(usize, usize, bool)> = None;
    for (event, range) in Parser::new_ext(md, options).into_offset_iter() {
        if let Some((start, depth, inline)) = &mut verbatim {
            match &event {
                Event::Start(_) => *depth += 1,
                Event::End(_) => {
                    *depth -= 1;
                    if *depth == 0 {
                        if *inline {
                            let start = *start;
                            block.child(md, start);
                            block.point(md, start, range.end);
                        }
                        verbatim = None;
                    }
                }
                _ => {}
            }
            continue;
        }
        match event {
            Event::Text(text) => {
                block.child(md, range.start);
                block.plain.push_str(&text);
                block.last = range.end;
            }
            Event::Code(_)
            | Event::InlineHtml(_)
            | Event::InlineMath(_)
            | Event::DisplayMath(_)
            | Event::FootnoteReference(_) => {
                block.child(md, range.start);
                block.point(md, range.start, range.end);
            }
            Event::SoftBreak | Event::HardBreak => {
                // The line break stays where it was; the sentence reads a space.
                block.child(md, range.start);
                block.point(md, range.start, range.end);
                if let Some(t) = block.tags.last_mut() {
                    t.kind = TagKind::Break;
                }
                block.plain.push(' ');
            }
            Event::Start(Tag::Image { .. }) => verbatim = Some((range.start, 1, true)),
            Event::Start(Tag::Link {
                link_type: LinkType::Autolink | LinkType::Email,
                ..
            }) => verbatim = Some((range.start, 1, true)),
            Event::Start(
                Tag::Emphasis
                | Tag::Strong
                | Tag::Strikethrough
                | Tag::Superscript
                | Tag::Subscript
                | Tag::Link { .. },
            ) => block.open_container(md, range.start, range.end),
            Event::End(
                TagEnd::Emphasis
                | TagEnd::Strong
                | TagEnd::Strikethrough
                | TagEnd::Superscript
                | TagEnd::Subscript
                | TagEnd::Link,
            ) => block.close_container(md),
            Event::Start(Tag::CodeBlock(_) | Tag::HtmlBlock | Tag::MetadataBlock(_)) => {
                flush(&mut block, md, split, out, &mut at);
                verbatim = Some((range.start, 1, false));
            }
            _ => flush(&mut block, md, split, out, &mut at),
        }
    }
    flush(&mut block, md, split, out, &mut at);
    out.keep(&md[at..]);
}

impl Block {
    /// Before a child event at byte `pos`: starts the block, and gives the containers
    /// opened since the last child their opening markup.
    fn child(&mut self, md: &str, pos: usize) {
        if self.start.is_none() {
            self.start = Some(pos);
            self.last = pos;
        }
        let first = self.pending.first().map_or(pos, |&(_, s)| s);
        self.gap(md, first);
        let pending = std::mem::take(&mut self.pending);
        for (k, &(id, start)) in pending.iter().enumerate() {
            let end = pending.get(k + 1).map_or(pos, |&(_, s)| s);
            self.tags.push(Markup {
                pos: self.plain.len(),
                raw: md[start..end].to_string(),
                kind: TagKind::Open(id),
            });
            self.last_tag_end = Some(end);
        }
        self.last = self.last.max(pos);
    }

    /// Bytes between the last event and `pos` that no event covers.
    fn gap(&mut self, md: &str, pos: usize) {
        if pos <= self.last {
            return;
        }
        let gap = &md[self.last..pos];
        if gap == "\\" {
            // The backslash of an escaped character: the text holds the character, and
            // writing it escapes it again.
            self.last = pos;
            return;
        }
        match self.tags.last_mut() {
            Some(t) if self.last_tag_end == Some(self.last) => t.raw.push_str(gap),
            _ => self.tags.push(Markup {
                pos: self.plain.len(),
                raw: gap.to_string(),
                kind: TagKind::Point,
            }),
        }
        self.last = pos;
        self.last_tag_end = Some(pos);
    }

    fn point(&mut self, md: &str, start: usize, end: usize) {
        self.tags.push(Markup {
            pos: self.plain.len(),
            raw: md[start..end].to_string(),
            kind: TagKind::Point,
        });
        self.last = end;
        self.last_tag_end = Some(end);
    }

    fn open_container(&mut self, md: &str, start: usize, end: usize) {
        if self.start.is_none() {
            self.start = Some(start);
            self.last = start;
        }
        if self.pending.is_empty() {
            self.gap(md, start);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push((id, start));
        self.open.push((id, end));
    }

    fn close_container(&mut self, md: &str) {
        let Some((id, end)) = self.open.pop() else {
            return;
        };
        if let Some(k) = self.pending.iter().position(|&(p, _)| p == id) {
            // A container without children (`**` `**`): its bytes stand on their own.
            let (_, start) = self.pending.remove(k);
            self.pending.truncate(k);
            self.child(md, start);
            self.point(md, start, end);
            return;
        }
        self.tags.push(Markup {
            pos: self.plain.len(),
            raw: md[self.last.min(end)..end].to_string(),
            kind: TagKind::Close(id),
        });
        self.last = end;
        self.last_tag_end = Some(end);
    }
}

/// Ends the running text: translated if it holds a letter or digit, otherwise left to
/// be copied as it is.
fn flush(block: &mut Block, md: &str, split: &SplitOptions, out: &mut Segmented, at: &mut usize) {
    if let Some(start) = block.start {
        if block.plain.chars().any(char::is_alphanumeric) && start >= *at {
            out.keep(&md[*at..start]);
            out.push_block(&block.plain, &block.tags, Escape::Markdown, split);
            *at = block.last;
        }
    }
    *block = Block::default();
}

#[cfg(test)]
mod tests {
    use super::super::tests::{identity, split_de};
    use super::super::{SentenceTranslation, TextFormat};
    use super::*;

    fn seg(md: &str) -> Segmented {
        Segmented::new(md, TextFormat::Markdown, &split_de())
    }

    const DOC: &str = "---\n# Mein *schönes* Haus\n\nIch bin **sehr müde**. Wir gehen [nach Hause](https://x.de/a_b \"Titel. Satz.\").\n\
        Zweite Zeile mit `code()` darin.\n\n> Ein Zitat,\n> über zwei Zeilen.\n\n- Eins\n- Zwei\n  1. Drei\n\n\
        ```rust\nlet s = \"Nicht übersetzen.\";\n```\n\n    Eingerückter Code.\n\n| Kopf | Spalte |\n|------|--------|\n| Zelle eins | zwei |\n\n\
        Ein Bild ![Ein Hund](hund.png) und <https://example.org/a.b>.\n\n<div>Ein HTML-Block.</div>\n";

    #[test]
    fn sentences_come_from_text_blocks_only() {
        let s = seg(DOC);
        assert_eq!(
            s.sentences(),
            [
                "Mein schönes Haus",
                "Ich bin sehr müde.",
                "Wir gehen nach Hause.",
                "Zweite Zeile mit  darin.",
                "Ein Zitat, über zwei Zeilen.",
                "Eins",
                "Zwei",
                "Drei",
                "Kopf",
                "Spalte",
                "Zelle eins",
                "zwei",
                "Ein Bild  und .",
            ]
        );
    }

    #[test]
    fn a_document_translated_as_itself_comes_back_byte_for_byte() {
        assert_eq!(identity(&seg(DOC)), DOC);
        for md in [
            "",
            "\n\n",
            "*",
            "**leer** ",
            "Text ohne Ende",
            "a\\*b \\_c",
            "***x***",
        ] {
            assert_eq!(identity(&seg(md)), md, "{md:?}");
        }
    }

    #[test]
    fn emphasis_and_links_follow_the_alignment() {
        let s = seg("Der **Hund** jagt die [Katze](k.html).\n");
        assert_eq!(s.sentences(), ["Der Hund jagt die Katze."]);
        let alignment = [(0, 0), (4, 1), (2, 3), (1, 6)];
        let out = s.assemble(&[SentenceTranslation {
            text: "The cat is chased by the dog.",
            alignment: &alignment,
        }]);
        assert_eq!(out, "The [cat](k.html) is chased by the **dog**.\n");
    }
}
