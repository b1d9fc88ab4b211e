//! Where models come from: a local model folder, the Hugging Face Hub
//! (`hf:ORG/NAME[@REVISION]`), or the default model shipped in `models/`.
//!
//! A model folder holds `config.json`, `model.safetensors`, `tokenizer-src.json` and
//! `tokenizer-tgt.json` (and a `README.md` model card, which translation does not need).
//! Hub downloads go into the usual Hugging Face cache (`$HF_HOME/hub`, by default
//! `~/.cache/huggingface/hub`) and are read from there afterwards without any network
//! access; `HF_ENDPOINT` points the client at another server and `HF_HUB_OFFLINE=1`
//! forbids the network altogether.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::model::{CONFIG_FILE, WEIGHTS_FILE};
use crate::subword::{LM_TOKENIZER, SOURCE_TOKENIZER, TARGET_TOKENIZER};

/// The files translation reads from a model folder.
pub const MODEL_FILES: [&str; 4] = [
    CONFIG_FILE,
    WEIGHTS_FILE,
    SOURCE_TOKENIZER,
    TARGET_TOKENIZER,
];

/// The files `rnmt lm` reads from a language model's folder.
pub const LM_FILES: [&str; 3] = [CONFIG_FILE, WEIGHTS_FILE, LM_TOKENIZER];

/// The model used without `--model`, a folder name under the models directory.
pub const DEFAULT_MODEL: &str = "tatoeba-de-en";
/// The language model `rnmt lm` uses without `--model`.
pub const DEFAULT_LM: &str = "tatoeba-de-lm";

/// What a model folder holds: the files to check and download differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Translation,
    Language,
}

impl ModelKind {
    pub fn files(self) -> &'static [&'static str] {
        match self {
            Self::Translation => &MODEL_FILES,
            Self::Language => &LM_FILES,
        }
    }

    fn default_name(self) -> &'static str {
        match self {
            Self::Translation => DEFAULT_MODEL,
            Self::Language => DEFAULT_LM,
        }
    }
}

/// Overrides the models directory (checked before the crate's own `models/`).
pub const MODELS_ENV: &str = "RNMT_MODELS";

const HUB_PREFIX: &str = "hf:";

/// A `--model` argument, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    Local(PathBuf),
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl ModelSpec {
    pub fn parse(spec: &str) -> Result<Self> {
        let Some(rest) = spec.strip_prefix(HUB_PREFIX) else {
            return Ok(Self::Local(PathBuf::from(spec)));
        };
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (rest, None),
        };
        let valid_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        match repo.split_once('/') {
            Some((org, name)) if valid_part(org) && valid_part(name) => {}
            _ => bail!(
                "model `{spec}`: expected hf:ORG/NAME or hf:ORG/NAME@REVISION (letters, digits, '-', '_', '.')"
            ),
        }
        if revision.is_some_and(|r| r.is_empty() || r.contains("..")) {
            bail!("model `{spec}`: the revision after '@' is empty or invalid");
        }
        Ok(Self::Hub {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }
}

/// The local folder of a `--model` argument, downloading Hub models first.
///
/// `extra` names files beyond [`MODEL_FILES`] that the caller will read (e.g. the
/// shortlist): downloaded too from the Hub; a local folder's caller checks them itself.
pub fn resolve(spec: &str, extra: &[&str]) -> Result<PathBuf> {
    resolve_kind(spec, ModelKind::Translation, extra)
}

/// [`resolve`] for a folder of the given kind.
pub fn resolve_kind(spec: &str, kind: ModelKind, extra: &[&str]) -> Result<PathBuf> {
    match ModelSpec::parse(spec)? {
        ModelSpec::Local(dir) => {
            check_folder(&dir, kind)?;
            Ok(dir)
        }
        ModelSpec::Hub { repo, revision } => download_kind(&repo, revision.as_deref(), kind, extra),
    }
}

/// Fails with the first missing file of a translation model's folder.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    check_folder(dir, ModelKind::Translation)
}

/// Fails with the first missing file of a model folder of `kind`.
pub fn check_folder(dir: &Path, kind: ModelKind) -> Result<()> {
    let files = kind.files();
    if !dir.is_dir() {
        bail!(
            "model folder {} does not exist (expected a folder with {})",
            dir.display(),
            files.join(", ")
        );
    }
    for file in files {
        if !crate::model::model_file(dir, file).is_file() {
            bail!("model folder {}: {file} is missing", dir.display());
        }
    }
    Ok(())
}

/// The directories searched for the default model, in order: `$RNMT_MODELS`, then the
/// `models/` folder of the source tree this binary was built from.
fn models_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os(MODELS_ENV).filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    dirs
}

/// The default model's folder, or an error saying none is installed and what to do.
pub fn default_model() -> Result<PathBuf> {
    default_of(ModelKind::Translation)
}

/// The default folder of a model kind ([`DEFAULT_MODEL`], [`DEFAULT_LM`]).
pub fn default_of(kind: ModelKind) -> Result<PathBuf> {
    let name = kind.default_name();
    let dirs = models_dirs();
    for dir in &dirs {
        let candidate = dir.join(name);
        if candidate.join(CONFIG_FILE).is_file() {
            check_folder(&candidate, kind)?;
            return Ok(candidate);
        }
    }
    let searched: Vec<String> = dirs
        .iter()
        .map(|d| d.join(name).display().to_string())
        .collect();
    bail!(
        "no default model is installed (looked for {}). Pass one with --model DIR (a folder \
         with {}) or --model hf:ORG/NAME, or set {MODELS_ENV} to a folder holding {name}/",
        searched.join(" and "),
        kind.files().join(", ")
    )
}

/// hf-hub's client has no time-outs, so a server that accepts the connection and never
/// answers would hang it for ever: before hf-hub fetches a file, one HEAD request with
/// rnmt's time-outs ([`crate::corpus::fetch::network_timeout`]) checks that the server
/// answers at all (any HTTP status will do; hf-hub reports real errors itself).
fn probe(endpoint: &str, repo: &Repo, revision: &str, file: &str) -> Result<()> {
    let url = format!(
        "{}/{}/resolve/{revision}/{file}",
        endpoint.trim_end_matches('/'),
        repo.url()
    );
    let agent = ureq::AgentBuilder::new()
        .try_proxy_from_env(true)
        .timeout_connect(crate::corpus::fetch::network_timeout())
        .timeout_read(crate::corpus::fetch::network_timeout())
        .redirects(0)
        .build();
    match agent.head(&url).call() {
        Ok(_) | Err(ureq::Error::Status(..)) => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "{url}: no answer within {} s ({} sets the time-out; HF_ENDPOINT the server)",
                crate::corpus::fetch::network_timeout().as_secs_f64(),
                crate::corpus::fetch::TIMEOUT_ENV
            )
        }),
    }
}

/// Fetches the model files of a Hub repository, and the `extra` ones, into the Hugging
/// Face cache (files already cached are not fetched again) and returns the snapshot
/// folder holding them.
pub fn download(repo: &str, revision: Option<&str>, extra: &[&str]) -> Result<PathBuf> {
    download_kind(repo, revision, ModelKind::Translation, extra)
}

/// [`download`] of the files of a model of `kind`.
fn download_kind(
    repo: &str,
    revision: Option<&str>,
    kind: ModelKind,
    extra: &[&str],
) -> Result<PathBuf> {
    let revision = revision.unwrap_or("main");
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let name = format!("hf:{repo}@{revision}");
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let cache = Cache::from_env();
    let mut dir: Option<PathBuf> = None;
    let api = if offline {
        None
    } else {
        use std::io::IsTerminal;
        Some(
            ApiBuilder::from_env()
                .with_progress(std::io::stderr().is_terminal())
                .build()
                .context("setting up the Hugging Face Hub client")?,
        )
    };
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    for &file in kind.files().iter().chain(extra) {
        if api.is_some() && cache.repo(hub_repo.clone()).get(file).is_none() {
            probe(&endpoint, &hub_repo, revision, file)?;
        }
        let path = match &api {
            // `get` reads the cache first, so a downloaded model works offline.
            Some(api) => api.repo(hub_repo.clone()).get(file).with_context(|| {
                format!(
                    "downloading {file} of {name} from {endpoint} (set HF_ENDPOINT to use another server)"
                )
            })?,
            None => cache.repo(hub_repo.clone()).get(file).with_context(|| {
                format!(
                    "HF_HUB_OFFLINE is set and {file} of {name} is not in the cache {}",
                    cache.path().display()
                )
            })?,
        };
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match &dir {
            None => dir = Some(parent),
            Some(d) if *d != parent => bail!(
                "{name}: {file} comes from another revision ({}) than {CONFIG_FILE} ({}); the repository changed during the download, try again",
                parent.display(),
                d.display()
            ),
            Some(_) => {}
        }
    }
    let dir = dir.expect("a model has files");
    check_folder(&dir, kind).with_context(|| format!("the cached copy of {name}"))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_specs() {
        assert_eq!(
            ModelSpec::parse("models/x").unwrap(),
            ModelSpec::Local("models/x".into())
        );
        assert_eq!(
            ModelSpec::parse("hf:org/name@v1.0").unwrap(),
            ModelSpec::Hub {
                repo: "org/name".into(),
                revision: Some("v1.0".into())
            }
        );
        assert_eq!(
            ModelSpec::parse("hf:org/name").unwrap(),
            ModelSpec::Hub {
                repo: "org/name".into(),
                revision: None
            }
        );
        for bad in [
            "hf:name", "hf:org/", "hf:/x", "hf:a/b/c", "hf:a/..", "hf:a/b@",
        ] {
            assert!(ModelSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_folder_is_named() {
        let err = resolve("/nonexistent/model", &[]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/model"), "{err}");
    }
}
