//! Preparing a corpus for training: validate and filter a parallel corpus, learn subword models, and write
//! a folder the trainer reads (`prepare.json`, `tokenizer-src.json`, `tokenizer-tgt.json`,
//! `summary.json`). A monolingual corpus (a language model's data) gets one tokenizer,
//! `tokenizer.json`, and pairs with an empty source side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::batch::EncodedPair;
use crate::corpus::{resolve_prefix, FilterConfig, FilterReport, ParallelCorpus};
use crate::subword::{
    SubwordConfig, SubwordKind, SubwordModel, SubwordSampling, LM_TOKENIZER, SOURCE_TOKENIZER,
    SPECIAL_TOKENS, TARGET_TOKENIZER,
};

/// What `prepare` reads, learns and writes.
#[derive(Debug, Clone)]
pub struct PrepareConfig {
    /// Training corpus prefix: PREFIX.SRC and PREFIX.TGT are aligned line by line.
    pub train: PathBuf,
    /// Validation corpus prefix (recorded for the trainer; not used to learn subwords).
    pub valid: Option<PathBuf>,
    pub src_lang: String,
    pub tgt_lang: String,
    /// Subword vocabulary size (of each side, or of the joint vocabulary).
    pub vocab_size: usize,
    /// The source side's vocabulary size instead (not with --joint-vocab). Source subwords
    /// cost an embedding row each and no compute, target ones a row of the output layer, so
    /// a larger source vocabulary keeps more rare words whole at no cost in speed.
    pub src_vocab_size: Option<usize>,
    /// Learn one vocabulary from both sides (same file for source and target).
    pub joint_vocab: bool,
    pub model_type: SubwordKind,
    /// BPE: minimum frequency of a merge.
    pub min_frequency: u64,
    /// Drop pairs with more words than this on either side.
    pub max_len: usize,
    /// Drop pairs whose word-count ratio exceeds this (from 5 words on).
    pub max_ratio: f64,
    /// Output folder.
    pub out: PathBuf,
    /// One-sided data: `train` (and `valid`) name `PREFIX.LANG` only, with `src_lang ==
    /// tgt_lang == LANG`.
    pub mono: bool,
}

/// What a prepare run did, printed on stderr and written to `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrepareSummary {
    pub train: FilterReport,
    pub valid: Option<FilterReport>,
    pub src_vocab_size: usize,
    pub tgt_vocab_size: usize,
    pub mean_src_subwords: f64,
    pub mean_tgt_subwords: f64,
    pub seconds: f64,
}

impl std::fmt::Display for PrepareSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "train: {}", self.train)?;
        if let Some(v) = &self.valid {
            writeln!(f, "valid: {v}")?;
        }
        writeln!(
            f,
            "vocabulary: source {}, target {}",
            self.src_vocab_size, self.tgt_vocab_size
        )?;
        writeln!(
            f,
            "mean subwords per sentence: source {:.2}, target {:.2}",
            self.mean_src_subwords, self.mean_tgt_subwords
        )?;
        write!(f, "time: {:.1} s", self.seconds)
    }
}

/// Validates and filters the corpus, learns the subword models and writes the prepared
/// folder `args.out`.
/// The smallest vocabulary: the 4 special tokens and the 256 symbols of the byte
/// alphabet (below that the tokenizers crate silently gives this size anyway).
pub const MIN_VOCAB: usize = SPECIAL_TOKENS.len() + 256;
/// The largest: 4× the 256k of the largest multilingual models; an embedding of 10^6 rows
/// of 512 floats is already 2 GB (10^10 tried to allocate 567 GB and aborted).
pub const MAX_VOCAB: usize = 1_000_000;

fn check_vocab(option: &str, n: usize) -> anyhow::Result<()> {
    if !(MIN_VOCAB..=MAX_VOCAB).contains(&n) {
        anyhow::bail!(
            "{option} {n}: must be between {MIN_VOCAB} (4 special tokens + the 256-byte \
             alphabet) and {MAX_VOCAB}"
        );
    }
    Ok(())
}

pub fn run(args: &PrepareConfig) -> anyhow::Result<PrepareSummary> {
    let start = Instant::now();
    check_vocab("--vocab-size", args.vocab_size)?;
    if let Some(n) = args.src_vocab_size {
        check_vocab("--src-vocab-size", n)?;
    }
    let filter = FilterConfig {
        max_len: args.max_len,
        max_ratio: args.max_ratio,
        ..FilterConfig::default()
    };
    if args.mono
        && (args.src_lang != args.tgt_lang || args.joint_vocab || args.src_vocab_size.is_some())
    {
        anyhow::bail!(
            "a monolingual corpus has one language and one vocabulary: no source and \
             target languages, --joint-vocab or --src-vocab-size"
        );
    }
    let train = read_corpus(
        &args.train,
        &args.src_lang,
        &args.tgt_lang,
        &filter,
        args.mono,
    )?;
    if train.pairs.is_empty() {
        anyhow::bail!(
            "no training pairs left in {} after filtering ({})",
            args.train.display(),
            train.report
        );
    }
    let valid = match &args.valid {
        Some(prefix) => Some(read_valid_corpus(
            prefix,
            &args.src_lang,
            &args.tgt_lang,
            args.mono,
        )?),
        None => None,
    };
    let subword = SubwordConfig {
        kind: args.model_type,
        vocab_size: args.vocab_size,
        min_frequency: args.min_frequency,
    };
    let (source, target) = if args.mono {
        let model = SubwordModel::learn(&subword, train.targets())?;
        (model.clone(), model)
    } else if args.joint_vocab {
        let joint = SubwordModel::learn(&subword, train.sources().chain(train.targets()))?;
        (joint.clone(), joint)
    } else {
        let source = SubwordConfig {
            vocab_size: args.src_vocab_size.unwrap_or(args.vocab_size),
            ..subword.clone()
        };
        (
            SubwordModel::learn(&source, train.sources())?,
            SubwordModel::learn(&subword, train.targets())?,
        )
    };

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    if args.mono {
        target.save(&args.out.join(LM_TOKENIZER))?;
    } else {
        source.save(&args.out.join(SOURCE_TOKENIZER))?;
        target.save(&args.out.join(TARGET_TOKENIZER))?;
    }
    let manifest = PreparedManifest {
        train: absolute(&resolve_prefix(&args.train, &args.src_lang)),
        valid: args
            .valid
            .as_ref()
            .map(|v| absolute(&resolve_prefix(v, &args.src_lang))),
        src_lang: args.src_lang.clone(),
        tgt_lang: args.tgt_lang.clone(),
        filter,
        subword,
        src_vocab_size: args.src_vocab_size,
        joint_vocab: args.joint_vocab,
        mono: args.mono,
    };
    crate::io::write_atomic(
        &args.out.join(PREPARE_FILE),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;

    let mean = |model: &SubwordModel, texts: Vec<&str>| -> anyhow::Result<f64> {
        let n = texts.len().max(1);
        Ok(model
            .encode_batch(&texts)?
            .iter()
            .map(Vec::len)
            .sum::<usize>() as f64
            / n as f64)
    };
    let summary = PrepareSummary {
        // A monolingual corpus has no source side to encode.
        mean_src_subwords: if args.mono {
            0.0
        } else {
            mean(&source, train.sources().collect())?
        },
        mean_tgt_subwords: mean(&target, train.targets().collect())?,
        train: train.report,
        valid: valid.map(|v| v.report),
        src_vocab_size: source.vocab_size(),
        tgt_vocab_size: target.vocab_size(),
        seconds: start.elapsed().as_secs_f64(),
    };
    crate::io::write_atomic(
        &args.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// The training corpus: parallel, or one-sided (`mono`, then `src_lang == tgt_lang`).
fn read_corpus(
    prefix: &Path,
    src_lang: &str,
    tgt_lang: &str,
    filter: &FilterConfig,
    mono: bool,
) -> anyhow::Result<ParallelCorpus> {
    Ok(if mono {
        ParallelCorpus::read_monolingual(prefix, tgt_lang, filter)?
    } else {
        ParallelCorpus::read(prefix, src_lang, tgt_lang, filter)?
    })
}

/// A dev corpus: a parallel one keeps every line (it is scored against its references),
/// a one-sided one drops only empty lines (perplexity has nothing to score in them).
fn read_valid_corpus(
    prefix: &Path,
    src_lang: &str,
    tgt_lang: &str,
    mono: bool,
) -> anyhow::Result<ParallelCorpus> {
    Ok(if mono {
        ParallelCorpus::read_monolingual(prefix, tgt_lang, &FilterConfig::keep_all())?
    } else {
        ParallelCorpus::read_unfiltered(prefix, src_lang, tgt_lang)?
    })
}

/// Stores prefixes as absolute paths so the trainer finds them from any directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What `rnmt prepare` records about its run.
pub const PREPARE_FILE: &str = "prepare.json";

/// What `rnmt prepare` wrote into a folder: enough for the trainer to read the same
/// corpus with the same filters and the same subword models.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreparedManifest {
    pub train: PathBuf,
    pub valid: Option<PathBuf>,
    pub src_lang: String,
    pub tgt_lang: String,
    pub filter: crate::corpus::FilterConfig,
    pub subword: SubwordConfig,
    /// The source side's vocabulary size when it differs from `subword.vocab_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_vocab_size: Option<usize>,
    pub joint_vocab: bool,
    /// A monolingual corpus (one tokenizer, `tokenizer.json`; empty source sides).
    #[serde(default)]
    pub mono: bool,
}

/// A prepared folder, loaded.
pub struct PreparedData {
    pub dir: PathBuf,
    pub manifest: PreparedManifest,
    source: SubwordModel,
    target: SubwordModel,
}

impl PreparedData {
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(PREPARE_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {} (is {} a folder written by `rnmt prepare`?)",
                path.display(),
                dir.display()
            )
        })?;
        let manifest: PreparedManifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid prepare manifest", path.display()))?;
        let (source, target) = if manifest.mono {
            let model = SubwordModel::load(&dir.join(LM_TOKENIZER))?;
            (model.clone(), model)
        } else {
            (
                SubwordModel::load(&dir.join(SOURCE_TOKENIZER))?,
                SubwordModel::load(&dir.join(TARGET_TOKENIZER))?,
            )
        };
        Ok(Self {
            source,
            target,
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn source_tokenizer(&self) -> &SubwordModel {
        &self.source
    }

    pub fn target_tokenizer(&self) -> &SubwordModel {
        &self.target
    }

    /// The tokenizer files a model trained on this data ships with.
    pub fn tokenizer_files(&self) -> Vec<PathBuf> {
        if self.manifest.mono {
            vec![self.dir.join(LM_TOKENIZER)]
        } else {
            vec![
                self.dir.join(SOURCE_TOKENIZER),
                self.dir.join(TARGET_TOKENIZER),
            ]
        }
    }

    /// The training corpus, read and filtered as `prepare` did.
    pub fn read_train(&self) -> anyhow::Result<crate::corpus::ParallelCorpus> {
        let m = &self.manifest;
        read_corpus(&m.train, &m.src_lang, &m.tgt_lang, &m.filter, m.mono)
    }

    /// The validation corpus, every line kept (it is scored against its references).
    pub fn read_valid(&self) -> anyhow::Result<Option<crate::corpus::ParallelCorpus>> {
        let m = &self.manifest;
        match &m.valid {
            Some(prefix) => Ok(Some(read_valid_corpus(
                prefix,
                &m.src_lang,
                &m.tgt_lang,
                m.mono,
            )?)),
            None => Ok(None),
        }
    }

    pub fn encode_pairs(
        &self,
        corpus: &crate::corpus::ParallelCorpus,
    ) -> anyhow::Result<Vec<EncodedPair>> {
        let src: Vec<&str> = corpus.sources().collect();
        let tgt: Vec<&str> = corpus.targets().collect();
        let src = if self.manifest.mono {
            vec![Vec::new(); src.len()]
        } else {
            self.source.encode_batch(&src)?
        };
        let tgt = self.target.encode_batch(&tgt)?;
        Ok(src
            .into_iter()
            .zip(tgt)
            .map(|(src, tgt)| EncodedPair { src, tgt })
            .collect())
    }

    /// The training pairs of `corpus` segmented anew for each epoch: BPE-dropout
    /// `dropout` or unigram sampling `alpha` (the trainer's `subword_dropout` and
    /// `subword_alpha`, one of them > 0); the seed and the epoch fix every draw.
    pub fn subword_sampler(
        &self,
        corpus: crate::corpus::ParallelCorpus,
        (dropout, alpha): (f64, f64),
        seed: u64,
    ) -> anyhow::Result<SubwordSampler> {
        let sampling = |model: &SubwordModel, side: &str| {
            match dropout > 0.0 {
                true => model.bpe_dropout(dropout as f32),
                false => model.unigram_sampling(alpha),
            }
            .with_context(|| format!("the {side} subwords of {}", self.dir.display()))
        };
        Ok(SubwordSampler {
            source: match self.manifest.mono {
                true => None,
                false => Some(sampling(&self.source, "source")?),
            },
            target: sampling(&self.target, "target")?,
            corpus,
            seed,
        })
    }
}

/// Mixed into the training seed, so the segmentations' draws are a stream of their own.
const SUBWORD_SEED_MIX: u64 = 0x5EED_5B3D_0000_0002;

/// Training pairs with fresh segmentations each epoch (subword regularisation).
pub struct SubwordSampler {
    corpus: crate::corpus::ParallelCorpus,
    source: Option<SubwordSampling>,
    target: SubwordSampling,
    seed: u64,
}

impl SubwordSampler {
    /// Epoch `epoch`'s pairs, in corpus order. Each pair draws from a ChaCha8 stream of its
    /// own (its index), so the result does not depend on the number of threads.
    pub fn epoch(&self, epoch: u64) -> anyhow::Result<Vec<EncodedPair>> {
        use rand::SeedableRng;
        use rayon::prelude::*;
        let seed =
            (self.seed ^ SUBWORD_SEED_MIX).wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.corpus
            .pairs
            .par_iter()
            .enumerate()
            .map(|(i, (src, tgt))| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(i as u64);
                Ok(EncodedPair {
                    src: match &self.source {
                        Some(sampling) => sampling.encode(src, &mut rng)?,
                        None => Vec::new(),
                    },
                    tgt: self.target.encode(tgt, &mut rng)?,
                })
            })
            .collect()
    }
}
