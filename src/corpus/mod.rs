//! Aligned parallel corpora: reading, validation and filtering.
//!
//! A corpus is a pair of files `PREFIX.SRC` and `PREFIX.TGT` whose line *i* are
//! translations of each other. Reading validates the pair (existence, UTF-8, equal line
//! counts), normalises CRLF line endings and surrounding whitespace, and drops pairs that
//! would only hurt training (empty, too long, extreme length ratio), counting each reason.

pub mod fetch;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where corpora live when no explicit path is given: `$RNMT_CORPORA`, else `corpora/`.
pub fn corpora_dir() -> PathBuf {
    std::env::var_os("RNMT_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("corpora"))
}

/// Resolves a corpus path: an existing explicit path wins; a relative path that does not
/// exist is looked up under [`corpora_dir`] (so `multi30k/train` finds
/// `$RNMT_CORPORA/multi30k/train.de`).
pub fn resolve_prefix(prefix: &Path, lang: &str) -> PathBuf {
    let direct = with_lang(prefix, lang);
    if direct.exists() || prefix.is_absolute() {
        return prefix.to_path_buf();
    }
    let under = corpora_dir().join(prefix);
    if with_lang(&under, lang).exists() {
        under
    } else {
        prefix.to_path_buf()
    }
}

/// `PREFIX.LANG`
pub fn with_lang(prefix: &Path, lang: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(lang);
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: invalid UTF-8 (byte offset {offset} in the line)")]
    InvalidUtf8 {
        path: PathBuf,
        line: usize,
        offset: usize,
    },
    #[error("line counts differ: {src_path} has {src_lines} lines but {tgt_path} has {tgt_lines}")]
    LineCountMismatch {
        src_path: PathBuf,
        src_lines: usize,
        tgt_path: PathBuf,
        tgt_lines: usize,
    },
}

/// Pair filters applied when reading. Lengths are whitespace-separated words, so the
/// filter does not depend on a subword model (which is learned from the filtered text).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Drop pairs where either side has more words than this.
    pub max_len: usize,
    /// Drop pairs where the longer side has more than `max_ratio` times the words of the
    /// shorter side. Only applied from `ratio_min_words` words on, since "Lauf!" → "Run
    /// away!" is a fine pair.
    pub max_ratio: f64,
    pub ratio_min_words: usize,
    /// Drop pairs with a word (a run without whitespace) of more bytes than this. Such a
    /// "word" is a URL, base64 or line noise, and subword learning is superlinear in word
    /// length (a 100 KB word took 1.4 s of BPE learning, a 1 MB one did not finish in two
    /// minutes, and unigram learning overflowed the stack on it). 100 bytes keeps every
    /// real word: the longest in Multi30k, Tatoeba and newstest2021 has 38 bytes, long
    /// German compounds 60 to 80. None (a manifest from before this filter): no bound.
    #[serde(default)]
    pub max_word_bytes: Option<usize>,
}

/// The default of [`FilterConfig::max_word_bytes`].
pub const MAX_WORD_BYTES: usize = 100;

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            max_len: 100,
            max_ratio: 3.0,
            ratio_min_words: 5,
            max_word_bytes: Some(MAX_WORD_BYTES),
        }
    }
}

/// Why pairs were dropped, and how many were kept.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FilterReport {
    pub read: usize,
    pub kept: usize,
    pub empty: usize,
    pub too_long: usize,
    pub bad_ratio: usize,
    /// Pairs with a word over `max_word_bytes`.
    #[serde(default)]
    pub long_word: usize,
    /// Lines whose CRLF ending was normalised.
    pub crlf: usize,
}

impl fmt::Display for FilterReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pairs read, {} kept, {} dropped ({} empty, {} too long, {} extreme length ratio",
            self.read,
            self.kept,
            self.read - self.kept,
            self.empty,
            self.too_long,
            self.bad_ratio
        )?;
        if self.long_word > 0 {
            write!(f, ", {} with a word over the byte limit", self.long_word)?;
        }
        write!(f, ")")?;
        if self.crlf > 0 {
            write!(f, "; {} CRLF line endings normalised", self.crlf)?;
        }
        Ok(())
    }
}

/// The kept pairs of a corpus with the report of what was dropped.
#[derive(Clone, Debug)]
pub struct ParallelCorpus {
    pub pairs: Vec<(String, String)>,
    pub report: FilterReport,
}

impl ParallelCorpus {
    /// Reads and filters `PREFIX.SRC_LANG` / `PREFIX.TGT_LANG`.
    pub fn read(
        prefix: &Path,
        src_lang: &str,
        tgt_lang: &str,
        filter: &FilterConfig,
    ) -> Result<Self, CorpusError> {
        let src_path = with_lang(&resolve_prefix(prefix, src_lang), src_lang);
        let tgt_path = with_lang(&resolve_prefix(prefix, tgt_lang), tgt_lang);
        let (src, src_crlf) = read_lines(&src_path)?;
        let (tgt, tgt_crlf) = read_lines(&tgt_path)?;
        if src.len() != tgt.len() {
            return Err(CorpusError::LineCountMismatch {
                src_path,
                src_lines: src.len(),
                tgt_path,
                tgt_lines: tgt.len(),
            });
        }
        let mut report = FilterReport {
            read: src.len(),
            crlf: src_crlf + tgt_crlf,
            ..Default::default()
        };
        let mut pairs = Vec::with_capacity(src.len());
        for (s, t) in src.into_iter().zip(tgt) {
            if report.keeps(filter.check(&s, &t)) {
                pairs.push((s, t));
            }
        }
        report.kept = pairs.len();
        Ok(Self { pairs, report })
    }

    /// Reads every line of both sides without filtering (test sets: every line must be
    /// translated and scored).
    pub fn read_unfiltered(
        prefix: &Path,
        src_lang: &str,
        tgt_lang: &str,
    ) -> Result<Self, CorpusError> {
        let mut corpus = Self::read(prefix, src_lang, tgt_lang, &FilterConfig::keep_all())?;
        // Empty pairs stay too: re-read to keep alignment with the files.
        if corpus.report.empty > 0 {
            let src_path = with_lang(&resolve_prefix(prefix, src_lang), src_lang);
            let tgt_path = with_lang(&resolve_prefix(prefix, tgt_lang), tgt_lang);
            let (src, _) = read_lines(&src_path)?;
            let (tgt, _) = read_lines(&tgt_path)?;
            corpus.pairs = src.into_iter().zip(tgt).collect();
            corpus.report.kept = corpus.pairs.len();
            corpus.report.empty = 0;
        }
        Ok(corpus)
    }

    /// Reads and filters the one-sided corpus `PREFIX.LANG` (a language model's data) as
    /// pairs with an empty source: the same validation, and the filters applied to each
    /// line as if it were both sides of a pair.
    pub fn read_monolingual(
        prefix: &Path,
        lang: &str,
        filter: &FilterConfig,
    ) -> Result<Self, CorpusError> {
        let path = with_lang(&resolve_prefix(prefix, lang), lang);
        let (lines, crlf) = read_lines(&path)?;
        let mut report = FilterReport {
            read: lines.len(),
            crlf,
            ..Default::default()
        };
        let mut pairs = Vec::with_capacity(lines.len());
        for line in lines {
            if report.keeps(filter.check(&line, &line)) {
                pairs.push((String::new(), line));
            }
        }
        report.kept = pairs.len();
        Ok(Self { pairs, report })
    }

    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(s, _)| s.as_str())
    }

    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(_, t)| t.as_str())
    }
}

enum Dropped {
    Empty,
    TooLong,
    BadRatio,
    LongWord,
}

impl FilterReport {
    /// Counts a filter's verdict on one pair; true when the pair is kept.
    fn keeps(&mut self, verdict: Option<Dropped>) -> bool {
        match verdict {
            Some(Dropped::Empty) => self.empty += 1,
            Some(Dropped::TooLong) => self.too_long += 1,
            Some(Dropped::BadRatio) => self.bad_ratio += 1,
            Some(Dropped::LongWord) => self.long_word += 1,
            None => return true,
        }
        false
    }
}

impl FilterConfig {
    /// No filter but the one for empty lines.
    pub fn keep_all() -> Self {
        Self {
            max_len: usize::MAX,
            max_ratio: f64::INFINITY,
            ratio_min_words: 0,
            max_word_bytes: None,
        }
    }

    fn check(&self, src: &str, tgt: &str) -> Option<Dropped> {
        let (s, t) = (
            src.split_whitespace().count(),
            tgt.split_whitespace().count(),
        );
        if s == 0 || t == 0 {
            return Some(Dropped::Empty);
        }
        if s > self.max_len || t > self.max_len {
            return Some(Dropped::TooLong);
        }
        if let Some(max) = self.max_word_bytes {
            if src
                .split_whitespace()
                .chain(tgt.split_whitespace())
                .any(|w| w.len() > max)
            {
                return Some(Dropped::LongWord);
            }
        }
        let (short, long) = (s.min(t), s.max(t));
        if long >= self.ratio_min_words && long as f64 > self.max_ratio * short as f64 {
            return Some(Dropped::BadRatio);
        }
        None
    }
}

/// Reads a text file as trimmed lines, rejecting invalid UTF-8 with its line number.
/// Returns the lines and how many ended in CRLF. A final line without a newline counts.
pub fn read_lines(path: &Path) -> Result<(Vec<String>, usize), CorpusError> {
    let bytes = std::fs::read(path).map_err(|source| CorpusError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = Vec::new();
    let mut crlf = 0;
    let body = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    if bytes.is_empty() {
        return Ok((lines, 0));
    }
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = match raw.strip_suffix(b"\r") {
            Some(r) => {
                crlf += 1;
                r
            }
            None => raw,
        };
        let line = std::str::from_utf8(raw).map_err(|e| CorpusError::InvalidUtf8 {
            path: path.to_path_buf(),
            line: i + 1,
            offset: e.valid_up_to(),
        })?;
        lines.push(line.trim().to_string());
    }
    Ok((lines, crlf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn crlf_trailing_line_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "c.de",
            b"Hallo Welt\r\n\r\nein zwei drei vier f\xc3\xbcnf sechs sieben\r\nLauf!",
        );
        write(
            dir.path(),
            "c.en",
            b"Hello world\r\nempty source\r\none\r\nRun away!",
        );
        let c = ParallelCorpus::read(&dir.path().join("c"), "de", "en", &FilterConfig::default())
            .unwrap();
        assert_eq!(
            c.pairs,
            vec![
                ("Hallo Welt".into(), "Hello world".into()),
                ("Lauf!".into(), "Run away!".into())
            ]
        );
        assert_eq!(c.report.read, 4);
        assert_eq!(c.report.empty, 1);
        assert_eq!(c.report.bad_ratio, 1);
        assert_eq!(c.report.crlf, 6);
    }

    #[test]
    fn invalid_utf8_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "c.de", b"gut\nschlecht \xff\n");
        write(dir.path(), "c.en", b"good\nbad\n");
        let err = ParallelCorpus::read(&dir.path().join("c"), "de", "en", &FilterConfig::default())
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("c.de:2: invalid UTF-8"), "{msg}");
    }

    #[test]
    fn line_count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "c.de", b"a\nb\nc\n");
        write(dir.path(), "c.en", b"a\nb\n");
        let msg = ParallelCorpus::read(&dir.path().join("c"), "de", "en", &FilterConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("c.de has 3 lines") && msg.contains("c.en has 2"),
            "{msg}"
        );
    }
}
