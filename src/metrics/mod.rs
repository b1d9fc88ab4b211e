//! Translation quality metrics: sacreBLEU-exact BLEU, chrF and chrF++.
//!
//! Every score here reproduces sacreBLEU 2.x to the last printed digit: the tokenizers, the
//! n-gram statistics and the final formulas follow its definitions, including Python's notion
//! of whitespace and its order of floating-point operations. Speed comes from hashing n-grams
//! instead of building string tuples, and from scoring lines in parallel.

pub mod bleu;
pub mod bootstrap;
pub mod chrf;
mod ngram;
pub mod tokenize;

pub use bleu::{Bleu, BleuConfig, BleuScore, SmoothMethod};
pub use chrf::{Chrf, ChrfConfig, ChrfScore};
pub use tokenize::Tokenizer;

/// The `version` field of rnmt's signatures. It names rnmt so a signature cannot be mistaken
/// for one printed by sacreBLEU itself, while keeping sacreBLEU's key layout for parsers.
pub const SIGNATURE_VERSION: &str = concat!("rnmt-", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum MetricError {
    #[error("no reference streams given")]
    NoReferences,
    #[error("no hypotheses given")]
    NoHypotheses,
    #[error("the hypothesis has {hyps} lines but reference stream {stream} has {refs} lines")]
    LengthMismatch {
        stream: usize,
        hyps: usize,
        refs: usize,
    },
    #[error("invalid metric configuration: {0}")]
    InvalidConfig(String),
}

/// A corpus metric whose score is a function of per-segment sufficient statistics that add up
/// over segments; bootstrap resampling and sentence-level scoring rely on exactly that.
pub trait Metric: Sync {
    /// Display name, e.g. `BLEU` or `chrF2++`.
    fn name(&self) -> String;
    /// Number of `u64` statistics per segment.
    fn stats_width(&self) -> usize;
    /// Per-segment statistics, flattened: segment `i` occupies `[i * width, (i + 1) * width)`.
    fn segment_stats(&self, hyps: &[&str], refs: &[Vec<&str>]) -> Result<Vec<u64>, MetricError>;
    /// Statistics summed over all segments, without keeping per-segment ones.
    fn corpus_stats(&self, hyps: &[&str], refs: &[Vec<&str>]) -> Result<Vec<u64>, MetricError>;
    /// The corpus score (0–100) of statistics summed over any subset of segments.
    fn score_from_stats(&self, stats: &[u64]) -> f64;
    /// What sacreBLEU prints after the score (empty for chrF).
    fn verbose_from_stats(&self, _stats: &[u64]) -> String {
        String::new()
    }
    /// sacreBLEU's reproducibility signature; `extra` are global `(key, value)` pairs such as
    /// `bs:1000`, placed after `nrefs` as sacreBLEU does.
    fn signature_with(&self, nrefs: usize, extra: &[(&str, String)], short: bool) -> String;
}

/// sacreBLEU's signature layout: `nrefs`, then global extras (`bs`, `seed`), then the
/// metric's own fields, then `version`. `own` holds `(name, short name, value)`.
pub(crate) fn format_signature(
    nrefs: usize,
    extra: &[(&str, String)],
    own: &[(&str, &str, String)],
    short: bool,
) -> String {
    let mut parts = vec![format!("{}:{nrefs}", if short { "#" } else { "nrefs" })];
    for (key, value) in extra {
        let key = match (*key, short) {
            ("seed", true) => "rs",
            (k, _) => k,
        };
        parts.push(format!("{key}:{value}"));
    }
    for (name, abbr, value) in own {
        parts.push(format!("{}:{value}", if short { abbr } else { name }));
    }
    parts.push(format!(
        "{}:{SIGNATURE_VERSION}",
        if short { "v" } else { "version" }
    ));
    parts.join("|")
}

/// Checks that every reference stream has as many lines as the hypothesis.
pub(crate) fn check_lengths<R>(
    hyps: usize,
    refs: &[R],
    len: impl Fn(&R) -> usize,
) -> Result<(), MetricError> {
    if refs.is_empty() {
        return Err(MetricError::NoReferences);
    }
    if hyps == 0 {
        return Err(MetricError::NoHypotheses);
    }
    for (k, r) in refs.iter().enumerate() {
        if len(r) != hyps {
            return Err(MetricError::LengthMismatch {
                stream: k + 1,
                hyps,
                refs: len(r),
            });
        }
    }
    Ok(())
}

/// Python's `str.isspace()`: Rust's `char::is_whitespace` plus the ASCII separators
/// U+001C–U+001F, which Python's `str.split()` also splits on.
#[inline]
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.rstrip()` without arguments.
pub(crate) fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Python's `str.split()` without arguments, calling `f` on every field.
#[inline]
pub(crate) fn py_split(s: &str, mut f: impl FnMut(&str)) {
    let bytes = s.as_bytes();
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (space, width) = if b < 0x80 {
            (ASCII_PY_SPACE[b as usize], 1)
        } else {
            // Only a handful of non-ASCII characters are whitespace; decode just this one.
            let c = s[i..].chars().next().expect("index is a char boundary");
            (c.is_whitespace(), c.len_utf8())
        };
        if space {
            if let Some(st) = start.take() {
                f(&s[st..i]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
        i += width;
    }
    if let Some(st) = start {
        f(&s[st..]);
    }
}

const ASCII_PY_SPACE: [bool; 128] = {
    let mut t = [false; 128];
    let mut c = 0;
    while c < 128 {
        t[c] = matches!(c, 0x09..=0x0d | 0x1c..=0x1f | 0x20);
        c += 1;
    }
    t
};

/// Python's `str.lower()`; ASCII lines (the common case) avoid the Unicode tables.
pub(crate) fn py_lower(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

/// Python's `repr(float)` for the rounded scores sacreBLEU puts in its JSON.
pub(crate) fn py_float_repr(x: f64) -> String {
    let s = format!("{x:?}");
    match s.split_once('e') {
        // Python writes at least two exponent digits and always a sign: 1e-05, 1e+16.
        Some((mant, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mant}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// Borrows hypotheses and reference streams as `&str`, the form the scorers count on.
pub(crate) fn borrow_streams<'a, S: AsRef<str>, R: AsRef<str>>(
    hyps: &'a [S],
    refs: &'a [Vec<R>],
) -> (Vec<&'a str>, Vec<Vec<&'a str>>) {
    let hyps = hyps.iter().map(AsRef::as_ref).collect();
    let refs = refs
        .iter()
        .map(|r| r.iter().map(AsRef::as_ref).collect())
        .collect();
    (hyps, refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_split_and_rstrip_agree_on_separators() {
        let mut v = Vec::new();
        py_split(" a\u{1c}b\u{a0}c\u{3000}d  ", |t| v.push(t.to_string()));
        assert_eq!(v, ["a", "b", "c", "d"]);
        assert_eq!(py_rstrip("x \u{1f}\u{2009}"), "x");
        assert_eq!(py_float_repr(1e-5), "1e-05");
        assert_eq!(py_float_repr(100.0), "100.0");
    }
}
