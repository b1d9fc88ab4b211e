//! sacreBLEU's BLEU tokenizers: `13a` (mteval-v13a), `intl` (mteval-v14 international),
//! `char` and `none`.
//!
//! Each tokenizer writes into a reusable buffer a string whose Python-whitespace-separated
//! fields are exactly the tokens sacreBLEU produces; [`Tokenizer::tokenize`] joins them with
//! single spaces as sacreBLEU's tokenizers return them.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use super::py_split;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Tokenizer {
    /// Only splits on whitespace.
    #[serde(rename = "none")]
    None,
    /// mteval-v13a, the WMT standard and sacreBLEU's default.
    #[default]
    #[serde(rename = "13a")]
    V13a,
    /// mteval-v14 "international": splits on Unicode punctuation and symbols.
    #[serde(rename = "intl")]
    Intl,
    /// Every non-space character is a token.
    #[serde(rename = "char")]
    Char,
}

impl Tokenizer {
    /// The name sacreBLEU puts after `tok:` in the signature.
    pub fn signature(&self) -> &'static str {
        match self {
            Tokenizer::None => "none",
            Tokenizer::V13a => "13a",
            Tokenizer::Intl => "intl",
            Tokenizer::Char => "char",
        }
    }

    /// The tokenized line, tokens joined by single spaces, as sacreBLEU's tokenizer returns it.
    pub fn tokenize(&self, line: &str) -> String {
        let mut scratch = TokScratch::default();
        let mut out = String::new();
        py_split(self.split_ready(line, &mut scratch), |t| {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(t);
        });
        out
    }

    /// Calls `f` on every token of `line`.
    pub(crate) fn for_each_token(&self, line: &str, scratch: &mut TokScratch, f: impl FnMut(&str)) {
        py_split(self.split_ready(line, scratch), f)
    }

    /// A string whose Python-whitespace fields are the tokens.
    fn split_ready<'a>(&self, line: &'a str, s: &'a mut TokScratch) -> &'a str {
        match self {
            Tokenizer::None => line,
            Tokenizer::V13a => tokenize_13a(line, s),
            Tokenizer::Intl => tokenize_intl(line, s),
            Tokenizer::Char => {
                s.a.clear();
                for c in line.chars() {
                    let mut b = [0u8; 4];
                    s.a.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                    s.a.push(b' ');
                }
                as_str(&s.a)
            }
        }
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.signature())
    }
}

impl FromStr for Tokenizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Tokenizer::None),
            "13a" => Ok(Tokenizer::V13a),
            "intl" => Ok(Tokenizer::Intl),
            "char" => Ok(Tokenizer::Char),
            other => Err(format!(
                "unknown tokenizer {other:?} (expected one of: 13a, intl, char, none)"
            )),
        }
    }
}

/// Reusable buffers so that tokenizing a million lines allocates a handful of times.
#[derive(Default)]
pub(crate) struct TokScratch {
    a: Vec<u8>,
    b: Vec<u8>,
    pre: String,
    chars: Vec<char>,
    chars2: Vec<char>,
}

fn as_str(b: &[u8]) -> &str {
    // The passes only insert ASCII spaces next to whole characters, so UTF-8 stays valid.
    std::str::from_utf8(b).expect("tokenizer passes keep UTF-8 valid")
}

/// mteval-v13a. The four regular expressions of sacreBLEU's `TokenizerRegexp` only involve
/// ASCII characters, so they run as byte passes: a multi-byte character's bytes are all
/// `>= 0x80` and behave exactly like the single non-digit character they encode.
fn tokenize_13a<'a>(line: &str, s: &'a mut TokScratch) -> &'a str {
    // The language-independent part: <skipped>, hyphenated line breaks and four entities.
    let needs_pre = line.contains(['<', '\n', '&']);
    let text: &str = if needs_pre {
        let mut t = line
            .replace("<skipped>", "")
            .replace("-\n", "")
            .replace('\n', " ");
        if t.contains('&') {
            t = t
                .replace("&quot;", "\"")
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">");
        }
        s.pre = t;
        &s.pre
    } else {
        line
    };
    let (a, b) = (&mut s.a, &mut s.b);

    // Pass 1: pad the symbols [{-~[-` -&(-+:-@/] with spaces, on ` {line} `.
    a.clear();
    a.push(b' ');
    for &c in text.as_bytes() {
        if is_13a_symbol(c) {
            a.extend_from_slice(&[b' ', c, b' ']);
        } else {
            a.push(c);
        }
    }
    a.push(b' ');

    // Pass 2: `([^0-9])([\.,])` -> `\1 \2 ` (non-overlapping, left to right).
    pair_pass(
        a,
        b,
        |x, y| !x.is_ascii_digit() && (y == b'.' || y == b','),
        |out, x, y| out.extend_from_slice(&[x, b' ', y, b' ']),
    );
    // Pass 3: `([\.,])([^0-9])` -> ` \1 \2`.
    pair_pass(
        b,
        a,
        |x, y| (x == b'.' || x == b',') && !y.is_ascii_digit(),
        |out, x, y| out.extend_from_slice(&[b' ', x, b' ', y]),
    );
    // Pass 4: `([0-9])(-)` -> `\1 \2 `.
    pair_pass(
        a,
        b,
        |x, y| x.is_ascii_digit() && y == b'-',
        |out, x, y| out.extend_from_slice(&[x, b' ', y, b' ']),
    );
    as_str(b)
}

#[inline]
fn is_13a_symbol(c: u8) -> bool {
    matches!(c, b'{'..=b'~' | b'['..=b'`' | b' '..=b'&' | b'('..=b'+' | b':'..=b'@' | b'/')
}

/// `re.sub` of a two-character pattern over bytes or chars: leftmost matches, never
/// overlapping.
#[inline]
fn pair_pass<T: Copy>(
    src: &[T],
    out: &mut Vec<T>,
    matches: impl Fn(T, T) -> bool,
    replace: impl Fn(&mut Vec<T>, T, T),
) {
    out.clear();
    let mut i = 0;
    while i < src.len() {
        if i + 1 < src.len() && matches(src[i], src[i + 1]) {
            replace(out, src[i], src[i + 1]);
            i += 2;
        } else {
            out.push(src[i]);
            i += 1;
        }
    }
}

/// Unicode general-category classes used by the `intl` tokenizer.
struct Categories {
    number: Vec<(char, char)>,
    punct: Vec<(char, char)>,
    symbol: Vec<(char, char)>,
}

fn categories() -> &'static Categories {
    static CATS: OnceLock<Categories> = OnceLock::new();
    CATS.get_or_init(|| Categories {
        number: class_ranges(r"\p{N}"),
        punct: class_ranges(r"\p{P}"),
        symbol: class_ranges(r"\p{S}"),
    })
}

/// The code-point ranges of a Unicode class, from regex-syntax's Unicode tables.
fn class_ranges(pattern: &str) -> Vec<(char, char)> {
    use regex_syntax::hir::{Class, HirKind};
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .expect("a fixed Unicode class parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => {
            cls.ranges().iter().map(|r| (r.start(), r.end())).collect()
        }
        other => panic!("{pattern} parsed to {other:?}, not a Unicode class"),
    }
}

#[inline]
fn in_ranges(ranges: &[(char, char)], c: char) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// mteval-v14 international tokenization, as sacreBLEU's `TokenizerV14International`.
fn tokenize_intl<'a>(line: &str, s: &'a mut TokScratch) -> &'a str {
    let cats = categories();
    let is_n = |c: char| in_ranges(&cats.number, c);
    let is_p = |c: char| in_ranges(&cats.punct, c);
    let is_s = |c: char| in_ranges(&cats.symbol, c);
    let (x, y) = (&mut s.chars, &mut s.chars2);
    x.clear();
    x.extend(line.chars());

    // `(\P{N})(\p{P})` -> `\1 \2 `, then `(\p{P})(\P{N})` -> ` \1 \2`.
    pair_pass(
        x,
        y,
        |a, b| !is_n(a) && is_p(b),
        |o, a, b| o.extend([a, ' ', b, ' ']),
    );
    pair_pass(
        y,
        x,
        |a, b| is_p(a) && !is_n(b),
        |o, a, b| o.extend([' ', a, ' ', b]),
    );
    // `(\p{S})` -> ` \1 `.
    s.a.clear();
    let mut buf = [0u8; 4];
    for &c in x.iter() {
        let sym = is_s(c);
        if sym {
            s.a.push(b' ');
        }
        s.a.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        if sym {
            s.a.push(b' ');
        }
    }
    as_str(&s.a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v13a_handles_entities_numbers_and_dashes() {
        let t = Tokenizer::V13a;
        assert_eq!(t.tokenize("&quot;Hi&quot; &amp; bye."), "\" Hi \" & bye .");
        assert_eq!(
            t.tokenize("It cost 1,000.50 in 1999."),
            "It cost 1,000.50 in 1999 ."
        );
        assert_eq!(t.tokenize("a 3-4 well-known"), "a 3 - 4 well-known");
    }

    #[test]
    fn intl_splits_unicode_punctuation_but_not_decimal_marks() {
        let t = Tokenizer::Intl;
        assert_eq!(t.tokenize("„Ja“, 3,5 €!"), "„ Ja “ , 3,5 € !");
    }
}
