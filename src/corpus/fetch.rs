//! `rnmt corpus fetch`: download the corpora listed in `corpora/manifest.toml`, rebuild
//! the aligned files from their public sources and verify every file's sha256.
//!
//! A file is written only after its checksum matched (to a temporary file, then renamed),
//! so an interrupted or corrupted download never leaves a partial corpus file behind.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::io::hex;

/// The manifest shipped with rnmt; `--manifest` reads another.
pub const BUILTIN_MANIFEST: &str = include_str!("../../corpora/manifest.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub corpus: Vec<CorpusEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusEntry {
    pub name: String,
    pub description: String,
    pub licence: String,
    pub source: String,
    pub file: Vec<FileEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub name: String,
    pub url: String,
    pub transform: Transform,
    pub sha256: String,
    pub bytes: u64,
    /// anki-split: the member of the zip, the split and the language column.
    pub member: Option<String>,
    pub split: Option<String>,
    pub lang: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Transform {
    None,
    Gunzip,
    AnkiSplit,
}

impl Manifest {
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).with_context(|| format!("invalid corpus manifest {origin}"))
    }

    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                Self::parse(&text, &p.display().to_string())
            }
            None => Self::parse(BUILTIN_MANIFEST, "corpora/manifest.toml"),
        }
    }

    pub fn get(&self, name: &str) -> anyhow::Result<&CorpusEntry> {
        self.corpus
            .iter()
            .find(|c| c.name == name)
            .with_context(|| {
                let known: Vec<&str> = self.corpus.iter().map(|c| c.name.as_str()).collect();
                format!("unknown corpus {name:?}; known: {}", known.join(", "))
            })
    }
}

/// Fetches corpus `name` of `manifest` into `DIR/NAME` (default DIR: [`super::corpora_dir`]),
/// from a mirror laid out as `URL/NAME/FILE` when given, else rebuilt from the original
/// sources; every file is checked against its sha256 before it is written.
pub fn fetch(
    manifest: &Manifest,
    name: &str,
    dir: Option<&Path>,
    mirror: Option<&str>,
) -> anyhow::Result<()> {
    let corpus = manifest.get(name)?;
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(super::corpora_dir)
        .join(&corpus.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut downloads = Downloads::default();
    for file in &corpus.file {
        let target = dir.join(&file.name);
        if target.exists() && sha256_file(&target)? == file.sha256 {
            eprintln!("{}: present, checksum ok", target.display());
            continue;
        }
        let bytes = match mirror {
            Some(base) => downloads.get(&format!(
                "{}/{}/{}",
                base.trim_end_matches('/'),
                corpus.name,
                file.name
            ))?,
            None => build_file(file, &mut downloads)?,
        };
        let got = hex(&Sha256::digest(&bytes));
        if got != file.sha256 {
            bail!(
                "sha256 mismatch for {} (from {}): expected {}, got {}; nothing written",
                file.name,
                file.url,
                file.sha256,
                got
            );
        }
        crate::io::write_atomic(&target, &bytes)?;
        eprintln!("{}: {} bytes, checksum ok", target.display(), bytes.len());
    }
    eprintln!("{}: licence: {}", corpus.name, corpus.licence);
    Ok(())
}

/// Seconds without progress after which a download fails (connecting, waiting for an
/// answer, or between two reads of the body), so a server that accepts and never
/// answers cannot hang rnmt; a slow download that keeps moving is not cut.
pub const TIMEOUT_ENV: &str = "RNMT_NET_TIMEOUT";
const DEFAULT_TIMEOUT_S: f64 = 30.0;

/// [`TIMEOUT_ENV`], or 30 s.
pub fn network_timeout() -> std::time::Duration {
    let s = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_TIMEOUT_S);
    std::time::Duration::from_secs_f64(s)
}

/// The HTTP client of every download: connect and read time-outs of
/// [`network_timeout`].
pub fn http_agent() -> ureq::Agent {
    let t = network_timeout();
    ureq::AgentBuilder::new()
        .try_proxy_from_env(true)
        .timeout_connect(t)
        .timeout_read(t)
        .timeout_write(t)
        .build()
}

/// Downloads each URL once per run (the Tatoeba zip serves six files).
#[derive(Default)]
struct Downloads {
    cache: HashMap<String, Vec<u8>>,
}

impl Downloads {
    fn get(&mut self, url: &str) -> anyhow::Result<Vec<u8>> {
        if let Some(bytes) = self.cache.get(url) {
            return Ok(bytes.clone());
        }
        let response = http_agent().get(url).call().with_context(|| {
            format!(
                "cannot download {url} (no answer within {} s counts as a failure; \
                     {TIMEOUT_ENV} sets it)",
                network_timeout().as_secs_f64()
            )
        })?;
        let mut bytes = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {url}"))?;
        self.cache.insert(url.to_string(), bytes.clone());
        Ok(bytes)
    }
}

fn build_file(file: &FileEntry, downloads: &mut Downloads) -> anyhow::Result<Vec<u8>> {
    let raw = downloads.get(&file.url)?;
    match file.transform {
        Transform::None => Ok(raw),
        Transform::Gunzip => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_end(&mut out)
                .with_context(|| format!("{} is not valid gzip", file.url))?;
            Ok(out)
        }
        Transform::AnkiSplit => {
            let (member, split, lang) = match (&file.member, &file.split, &file.lang) {
                (Some(m), Some(s), Some(l)) => (m, s, l),
                _ => bail!(
                    "manifest entry {}: anki-split needs member, split and lang",
                    file.name
                ),
            };
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(raw))
                .with_context(|| format!("{} is not a valid zip", file.url))?;
            let mut text = String::new();
            archive
                .by_name(member)
                .with_context(|| format!("{} has no member {member}", file.url))?
                .read_to_string(&mut text)
                .with_context(|| format!("{member} in {} is not UTF-8 text", file.url))?;
            anki_split(&text, split, lang).with_context(|| format!("{member} in {}", file.url))
        }
    }
}

/// Splits an Anki "English<TAB>German" file into train/dev/test without sentence leakage:
/// pairs sharing an English or a German string form one component, and each component goes
/// to one split by the first 8 bytes of sha256(smallest English string) mod 1000
/// (0–9 test, 10–19 dev, else train). Lines keep their order within a split.
pub fn anki_split(text: &str, split: &str, lang: &str) -> anyhow::Result<Vec<u8>> {
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split('\t');
        match (fields.next(), fields.next()) {
            (Some(en), Some(de)) => pairs.push((en, de)),
            _ => bail!("line {}: expected English<TAB>German", i + 1),
        }
    }
    // Union-find over pair indices, joined through shared strings.
    let mut parent: Vec<usize> = (0..pairs.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_en: HashMap<&str, usize> = HashMap::new();
    let mut first_de: HashMap<&str, usize> = HashMap::new();
    for (i, &(en, de)) in pairs.iter().enumerate() {
        for j in [
            *first_en.entry(en).or_insert(i),
            *first_de.entry(de).or_insert(i),
        ] {
            let (a, b) = (root(&mut parent, i), root(&mut parent, j));
            parent[a] = b;
        }
    }
    let mut smallest_en: HashMap<usize, &str> = HashMap::new();
    for (i, &(en, _)) in pairs.iter().enumerate() {
        let r = root(&mut parent, i);
        let e = smallest_en.entry(r).or_insert(en);
        if en < *e {
            *e = en;
        }
    }
    let mut out = Vec::new();
    for (i, &(en, de)) in pairs.iter().enumerate() {
        let r = root(&mut parent, i);
        let digest = Sha256::digest(smallest_en[&r].as_bytes());
        let bucket = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 1000;
        let this_split = match bucket {
            0..=9 => "test",
            10..=19 => "dev",
            _ => "train",
        };
        if this_split == split {
            out.extend_from_slice(if lang == "en" { en } else { de }.as_bytes());
            out.push(b'\n');
        }
    }
    Ok(out)
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_lists_the_shared_corpora() {
        let m = Manifest::load(None).unwrap();
        for name in ["multi30k", "tatoeba-deu-eng", "wmt-news"] {
            let c = m.get(name).unwrap();
            assert!(c
                .file
                .iter()
                .all(|f| f.sha256.len() == 64 && f.url.starts_with("https://")));
        }
        assert!(m
            .get("nope")
            .unwrap_err()
            .to_string()
            .contains("known: multi30k"));
    }
}
