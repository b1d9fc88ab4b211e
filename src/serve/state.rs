//! What the server holds: its options, the served language pairs (from each model's
//! config), the loaded models with their batchers, the limits and the metrics.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::batcher::{Batcher, BatcherOptions};
use super::limits::{ApiKeys, Limits};
use super::metrics::Metrics;
use crate::translate::{TranslateOptions, Translator};

/// Everything `rnmt serve` is told; the command line fills it, tests build it directly.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Model folders, one per language pair.
    pub models: Vec<PathBuf>,
    /// Longest text, in characters (`--char-limit`).
    pub char_limit: usize,
    /// Most texts in one request (`--batch-limit`).
    pub batch_limit: usize,
    /// Most alternatives one may ask for (`--alternatives-limit`).
    pub alternatives_limit: usize,
    pub batcher: BatcherOptions,
    /// A request not answered in this time gets a 503.
    pub request_timeout: Duration,
    /// A connection that has not sent a request's headers this long after its first
    /// byte (or after opening, or after the previous response) is closed.
    pub header_timeout: Duration,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    pub api_keys: Option<ApiKeys>,
    /// Requests per minute per key or client address; 0: no limit.
    pub req_limit: u32,
    pub cors: bool,
    pub web_page: bool,
    /// Log the text of each request (off: only its size).
    pub log_text: bool,
    /// The web page translates this long after the last keystroke (milliseconds).
    pub frontend_timeout_ms: u64,
    /// The search; its `nbest` is raised to serve `alternatives_limit`.
    pub translate: TranslateOptions,
}

impl ServeOptions {
    /// The defaults of the command line (with no model yet).
    pub const DEFAULT: Self = Self {
        models: Vec::new(),
        char_limit: 5000,
        batch_limit: 100,
        alternatives_limit: 3,
        batcher: BatcherOptions {
            max_batch_tokens: 1024,
            batch_wait: Duration::from_millis(5),
            max_queue: 4096,
            workers: 0,
        },
        request_timeout: Duration::from_secs(60),
        header_timeout: Duration::from_secs(10),
        max_connections: 1024,
        api_keys: None,
        req_limit: 0,
        cors: true,
        web_page: true,
        log_text: false,
        frontend_timeout_ms: 500,
        translate: TranslateOptions::DEFAULT,
    };

    /// The defaults, serving `models`.
    pub fn new(models: Vec<PathBuf>) -> Self {
        Self {
            models,
            ..Self::DEFAULT
        }
    }

    /// The largest request body accepted: every text at the character limit, four bytes a
    /// character, with room for the other fields and form encoding.
    pub fn body_limit(&self) -> usize {
        self.batch_limit
            .saturating_mul(self.char_limit)
            .saturating_mul(4)
            .saturating_mul(3)
            .saturating_add(64 * 1024)
    }
}

/// A language the server knows (as a source or a target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code, as in the model's config.json.
    pub code: String,
    /// English name (the code when it is not an ISO 639-1 code).
    pub name: String,
}

impl Language {
    fn new(code: &str) -> Self {
        let name = isolang::Language::from_639_1(code)
            .map(|l| l.to_name().to_string())
            .unwrap_or_else(|| code.to_string());
        Self {
            code: code.to_string(),
            name,
        }
    }
}

/// One served model: its pair and folder.
#[derive(Clone, Debug)]
pub struct Pair {
    pub source: String,
    pub target: String,
    pub dir: PathBuf,
}

impl Pair {
    /// `de-en`: the name of the pair in metrics and logs.
    pub fn label(&self) -> String {
        format!("{}-{}", self.source, self.target)
    }
}

/// The language pair of each model folder, from its config.json; an error when one has
/// none or two claim the same pair.
pub fn language_pairs(dirs: &[PathBuf]) -> Result<Vec<Pair>> {
    if dirs.is_empty() {
        bail!("no model to serve");
    }
    let mut pairs: Vec<Pair> = Vec::new();
    for dir in dirs {
        let cfg = crate::model::persist::load_config(dir)?;
        let (Some(source), Some(target)) = (cfg.src_lang, cfg.tgt_lang) else {
            bail!(
                "{}: no language pair; add \"src_lang\" and \"tgt_lang\" (ISO 639-1 codes, e.g. \"de\" and \"en\") to it",
                dir.join(crate::model::CONFIG_FILE).display()
            );
        };
        if let Some(other) = pairs
            .iter()
            .find(|p| p.source == source && p.target == target)
        {
            bail!(
                "models {} and {} both translate {source}→{target}; serve one model per language pair",
                other.dir.display(),
                dir.display()
            );
        }
        pairs.push(Pair {
            source,
            target,
            dir: dir.clone(),
        });
    }
    Ok(pairs)
}

/// A loaded model and the batchers that feed it.
pub struct Served {
    pub pair: Pair,
    pub translator: Arc<Translator>,
    /// Its one batcher: a batch holding a sentence that needs word alignments or attention
    /// (HTML markup, the native API) is searched keeping them; the others are not.
    pub batcher: Batcher,
}

pub struct AppState {
    pub options: ServeOptions,
    pub pairs: Vec<Pair>,
    /// Every language, sources first, in the order of the models.
    pub languages: Vec<Language>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Translated files waiting for download.
    pub files: super::files::FileStore,
    /// Set once the models are loaded; until then translation answers 503.
    models: OnceLock<Vec<Served>>,
    detector: whatlang::Detector,
    /// The whatlang language of each served source language it knows.
    detectable: Vec<(whatlang::Lang, String)>,
}

impl AppState {
    /// Reads the models' language pairs (not yet their weights: see [`Self::load_models`]).
    pub fn new(mut options: ServeOptions) -> Result<Self> {
        let pairs = language_pairs(&options.models)?;
        options.translate.nbest = options.translate.nbest.max(options.alternatives_limit + 1);
        if options.translate.nbest > options.translate.beam {
            bail!(
                "--alternatives-limit {} needs a beam of at least {} (it is {})",
                options.alternatives_limit,
                options.alternatives_limit + 1,
                options.translate.beam
            );
        }
        // One batch is one search: the translator's own batches are as large as ours.
        options.translate.batch_size = options.batcher.max_batch_tokens;
        let mut languages: Vec<Language> = Vec::new();
        for code in pairs
            .iter()
            .map(|p| &p.source)
            .chain(pairs.iter().map(|p| &p.target))
        {
            if !languages.iter().any(|l| &l.code == code) {
                languages.push(Language::new(code));
            }
        }
        let mut detectable = Vec::new();
        for p in &pairs {
            let lang = isolang::Language::from_639_1(&p.source)
                .and_then(|l| whatlang::Lang::from_code(l.to_639_3()));
            match lang {
                Some(l) if !detectable.iter().any(|(_, c)| c == &p.source) => {
                    detectable.push((l, p.source.clone()))
                }
                Some(_) => {}
                None => tracing::warn!(
                    "language detection does not know `{}`; `auto` never picks it",
                    p.source
                ),
            }
        }
        let detector =
            whatlang::Detector::with_allowlist(detectable.iter().map(|(l, _)| *l).collect());
        let limits = Limits::new(options.api_keys.clone(), options.req_limit);
        Ok(Self {
            options,
            pairs,
            languages,
            limits,
            metrics: Arc::new(Metrics::new()),
            files: super::files::FileStore::default(),
            models: OnceLock::new(),
            detector,
            detectable,
        })
    }

    /// Loads every model and starts its batcher; the server is ready afterwards.
    pub fn load_models(&self, device: &Device) -> Result<()> {
        let mut served = Vec::with_capacity(self.pairs.len());
        for pair in &self.pairs {
            let translator = Arc::new(
                Translator::new(
                    std::slice::from_ref(&pair.dir),
                    device,
                    &self.options.translate,
                )
                .with_context(|| format!("loading {}", pair.dir.display()))?,
            );
            let batcher = Batcher::start(
                Arc::clone(&translator),
                self.options.batcher,
                Arc::clone(&self.metrics),
                pair.label(),
            )?;
            served.push(Served {
                pair: pair.clone(),
                translator,
                batcher,
            });
        }
        if self.models.set(served).is_err() {
            bail!("the models are already loaded");
        }
        Ok(())
    }

    /// The loaded models, or `None` while they load.
    pub fn models(&self) -> Option<&[Served]> {
        self.models.get().map(Vec::as_slice)
    }

    pub fn language(&self, code: &str) -> Option<&Language> {
        self.languages.iter().find(|l| l.code == code)
    }

    /// The served source language `text` is most likely in, with the confidence in
    /// percent (LibreTranslate's scale); the first source language with 0 when the text
    /// says nothing.
    pub fn detect(&self, text: &str) -> (String, f64) {
        let fallback = || (self.pairs[0].source.clone(), 0.0);
        let Some(info) = self.detector.detect(text) else {
            return fallback();
        };
        match self.detectable.iter().find(|(l, _)| *l == info.lang()) {
            Some((_, code)) => (code.clone(), (info.confidence() * 100.0).round()),
            None => fallback(),
        }
    }
}
