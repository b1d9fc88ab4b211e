//! Real text in, real text out, on the shipped de→en model: paragraphs are split into
//! sentences (none lost), abbreviations do not split, long sentences are cut at clauses,
//! and HTML, Markdown and whole documents keep their layout and markup.

mod common;

use std::process::Output;

use common::*;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tatoeba-de-en");

fn translate(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = rnmt()
        .args(["translate", "--threads", "1", "-m", MODEL])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok_stdout(out: Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

const PARAGRAPH: [&str; 4] = [
    "Ich bin müde.",
    "Ich gehe jetzt nach Hause.",
    "Morgen arbeite ich wieder.",
    "Meine Schwester wohnt in Berlin und arbeitet als Ärztin in einem großen Krankenhaus.",
];

#[test]
fn no_sentence_of_a_paragraph_is_lost() {
    // Each sentence alone, one per line, with --no-split: the reference.
    let alone = ok_stdout(translate(&["--no-split"], &PARAGRAPH.join("\n")));
    let alone: Vec<&str> = alone.lines().collect();
    assert_eq!(alone.len(), 4);
    assert!(alone.iter().all(|t| !t.trim().is_empty()), "{alone:?}");
    // The paragraph as one line, split (the default): exactly those translations, in
    // order, joined by the whitespace between the sentences.
    let paragraph = PARAGRAPH.join(" ");
    let split = ok_stdout(translate(&[], &format!("{paragraph}\n")));
    assert_eq!(split, format!("{}\n", alone.join(" ")));
    // With JSON: word alignments from every sentence reach into its own part.
    let json = ok_stdout(translate(&["-f", "json", "--alignments"], &paragraph));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["translation"], alone.join(" "));
    let pairs: Vec<(usize, usize)> = v["alignment"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|p| {
            let (i, j) = p.split_once('-').unwrap();
            (i.parse().unwrap(), j.parse().unwrap())
        })
        .collect();
    let (mut src, mut tgt) = (0, 0);
    for (sentence, translation) in PARAGRAPH.iter().zip(&alone) {
        let (s_words, t_words) = (
            sentence.split_whitespace().count(),
            translation.split_whitespace().count(),
        );
        assert!(
            pairs
                .iter()
                .any(|&(i, j)| (src..src + s_words).contains(&i)
                    && (tgt..tgt + t_words).contains(&j)),
            "{sentence:?} is aligned to nothing of {translation:?}: {pairs:?}"
        );
        src += s_words;
        tgt += t_words;
    }
    // Without splitting the model drops a sentence of this paragraph: the reason for
    // splitting by default.
    let whole = ok_stdout(translate(&["--no-split"], &paragraph));
    assert!(whole.split_whitespace().count() < split.split_whitespace().count());
}

#[test]
fn abbreviations_ordinals_quotes_and_punctuation_only_lines() {
    let lines = [
        "Dr. Müller kommt am 3. Oktober, z. B. mit Zug Nr. 5, ca. um 8 Uhr usw.",
        "Er sagte: „Komm her!“",
        "...",
        "(Das war gestern.)",
    ];
    let input = lines.join("\n");
    // None of these lines holds two sentences: splitting changes nothing.
    let split = ok_stdout(translate(&[], &input));
    let whole = ok_stdout(translate(&["--no-split"], &input));
    assert_eq!(split, whole);
    assert_eq!(split.lines().count(), lines.len());
}

#[test]
fn a_sentence_over_the_limit_is_cut_at_clauses_not_truncated() {
    let clauses = [
        "Wenn es morgen regnet",
        "bleiben wir zu Hause",
        "und wenn die Sonne scheint",
        "gehen wir in den Park",
    ];
    let sentence = format!("{}.", clauses.join(", "));
    let out = translate(&["--max-input-len", "8"], &sentence);
    let err = stderr(&out);
    let text = ok_stdout(out);
    assert!(
        err.contains("line 1") && err.contains("limit of 8") && err.contains("clause boundaries"),
        "{err}"
    );
    // Every clause was translated: the output is as long as the clauses' translations.
    let clause_out = ok_stdout(translate(&["--no-split"], &clauses.join("\n")));
    let want = clause_out.split_whitespace().count();
    let got = text.split_whitespace().count();
    assert!(
        got * 10 >= want * 7,
        "{got} words for {want}: {text:?} vs {clause_out:?}"
    );
}

/// Every tag of `html`, in order (the tokens that start with `<`).
fn tags(html: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        let end = rest[start..]
            .find('>')
            .map_or(rest.len(), |e| start + e + 1);
        out.push(&rest[start..end]);
        rest = &rest[end..];
    }
    out
}

#[test]
fn html_keeps_tags_attributes_entities_and_scripts() {
    let html = "<p class=\"intro\" title=\"Das ist ein Satz.\">Der <b>Hund</b> jagt die \
        <a href=\"/k?a=1&amp;b=2\"><i>kleine</i> Katze</a>. Ich bin müde &amp; gehe nach Hause.</p>\
        <script>var s = \"Ich bin müde.\";</script><pre>Nicht übersetzen.</pre>";
    let out = ok_stdout(translate(&["-f", "html"], html));
    let out = out.trim_end_matches('\n');
    // The same tags, each byte for byte; inline ones may move with the words they cover.
    let (mut want, mut got) = (tags(html), tags(out));
    want.sort();
    got.sort();
    assert_eq!(got, want, "{out}");
    for kept in [
        "<p class=\"intro\" title=\"Das ist ein Satz.\">",
        "<script>var s = \"Ich bin müde.\";</script>",
        "<pre>Nicht übersetzen.</pre>",
    ] {
        assert!(out.contains(kept), "{kept:?} not in {out}");
    }
    let lower = out.to_lowercase();
    assert!(lower.contains("<b>dog</b>"), "{out}");
    assert!(lower.contains("cat") && lower.contains("tired"), "{out}");
    assert!(out.contains("&amp;") || lower.contains(" and "), "{out}");
}

#[test]
fn markdown_keeps_its_markup() {
    let md = "# Der Hund\n\nDer **Hund** jagt die [Katze](katze.html). Ich bin müde.\n\n\
        - Ich gehe nach Hause.\n- Morgen arbeite ich.\n\n```\nNicht übersetzen.\n```\n\n\
        > Meine Schwester wohnt in Berlin.\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "doc.md", md.as_bytes());
    let out_path = dir.path().join("doc.en.md");
    ok_stdout(translate(
        &[
            "--document",
            path.to_str().unwrap(),
            "-o",
            out_path.to_str().unwrap(),
        ],
        "",
    ));
    let out = std::fs::read_to_string(&out_path).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let src: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), src.len(), "{out}");
    for (o, s) in lines.iter().zip(&src) {
        // Structure: the same markers at the start of each line, blank lines blank, the
        // code block untouched.
        let marker = |l: &str| {
            l.chars()
                .take_while(|c| "#->` ".contains(*c))
                .collect::<String>()
        };
        assert_eq!(marker(o), marker(s), "{o:?} vs {s:?}");
        if s.is_empty() || s.starts_with("```") || *s == "Nicht übersetzen." {
            assert_eq!(o, s);
        }
    }
    assert!(out.contains("**") && out.contains("](katze.html)"), "{out}");
    assert!(out.to_lowercase().contains("**dog**"), "{out}");
}

#[test]
fn a_text_document_keeps_blank_lines_and_indentation() {
    let doc = "Liebe Anna,\n\n    ich bin müde. Ich gehe jetzt nach Hause.\n\t\tMorgen arbeite ich wieder.\n\n\n  Viele Grüße\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "brief.txt", doc.as_bytes());
    let out = ok_stdout(translate(&["--document", path.to_str().unwrap()], ""));
    let indent = |l: &str| l.len() - l.trim_start().len();
    let (src, got): (Vec<&str>, Vec<&str>) = (doc.lines().collect(), out.lines().collect());
    assert_eq!(got.len(), src.len(), "{out}");
    for (o, s) in got.iter().zip(&src) {
        assert_eq!(&o[..indent(o)], &s[..indent(s)], "{o:?} vs {s:?}");
        assert_eq!(o.trim().is_empty(), s.trim().is_empty(), "{o:?} vs {s:?}");
    }
    assert!(out.ends_with('\n'));
    // The sentence split inside the indented line keeps its two sentences.
    assert!(got[2].matches('.').count() >= 2, "{out}");
}
