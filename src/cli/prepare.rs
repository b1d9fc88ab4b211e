//! `rnmt prepare`: a corpus validated, filtered and turned into subwords for training.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::corpus::FilterConfig;
use crate::prepare::PrepareConfig;
use crate::subword::SubwordKind;

/// `--model-type`: the subword algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModelType {
    /// Byte-pair encoding (Sennrich et al. 2016).
    Bpe,
    /// Unigram language model (Kudo 2018).
    Unigram,
}

impl From<ModelType> for SubwordKind {
    fn from(t: ModelType) -> Self {
        match t {
            ModelType::Bpe => SubwordKind::Bpe,
            ModelType::Unigram => SubwordKind::Unigram,
        }
    }
}

#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Example:\n  rnmt prepare --train multi30k/train --valid multi30k/val --src-lang de --tgt-lang en \\\n      --vocab-size 8000 --out data/multi30k-de-en\n  rnmt prepare --mono tatoeba-deu-eng/train --valid tatoeba-deu-eng/dev --lang de \\\n      --vocab-size 8000 --out data/tatoeba-de-lm\n\nPREFIX.de and PREFIX.en are aligned files; a relative PREFIX that does not exist is\nlooked up under $RNMT_CORPORA (default corpora/)."
)]
pub struct PrepareArgs {
    /// Training corpus prefix: PREFIX.SRC and PREFIX.TGT are aligned line by line.
    #[arg(long, value_name = "PREFIX", required_unless_present = "mono")]
    pub train: Option<PathBuf>,
    /// Monolingual training corpus PREFIX.LANG, for a language model (`task = "lm"`):
    /// one tokenizer, no source side.
    #[arg(
        long,
        value_name = "PREFIX",
        conflicts_with_all = ["train", "src_lang", "tgt_lang", "joint_vocab", "src_vocab_size"],
        requires = "lang"
    )]
    pub mono: Option<PathBuf>,
    /// The language of --mono (and of its --valid PREFIX.LANG).
    #[arg(long, requires = "mono")]
    pub lang: Option<String>,
    /// Validation corpus prefix (recorded for the trainer; not used to learn subwords).
    #[arg(long, value_name = "PREFIX")]
    pub valid: Option<PathBuf>,
    #[arg(long, required_unless_present = "mono")]
    pub src_lang: Option<String>,
    #[arg(long, required_unless_present = "mono")]
    pub tgt_lang: Option<String>,
    /// Subword vocabulary size (of each side, or of the joint vocabulary).
    #[arg(long, default_value_t = 8000)]
    pub vocab_size: usize,
    /// The source side's vocabulary size instead (not with --joint-vocab). Source subwords
    /// cost an embedding row each and no compute, target ones a row of the output layer, so
    /// a larger source vocabulary keeps more rare words whole at no cost in speed.
    #[arg(long, value_name = "N", conflicts_with = "joint_vocab")]
    pub src_vocab_size: Option<usize>,
    /// Learn one vocabulary from both sides (same file for source and target).
    #[arg(long)]
    pub joint_vocab: bool,
    #[arg(long, value_enum, default_value_t = ModelType::Bpe)]
    pub model_type: ModelType,
    /// BPE: minimum frequency of a merge.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Drop pairs with more words than this on either side.
    #[arg(long, default_value_t = FilterConfig::default().max_len)]
    pub max_len: usize,
    /// Drop pairs whose word-count ratio exceeds this (from 5 words on).
    #[arg(long, default_value_t = FilterConfig::default().max_ratio)]
    pub max_ratio: f64,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

impl From<&PrepareArgs> for PrepareConfig {
    fn from(a: &PrepareArgs) -> Self {
        // clap guarantees either --train with both languages or --mono with --lang.
        let (train, src_lang, tgt_lang) = match (&a.mono, &a.lang) {
            (Some(mono), Some(lang)) => (mono.clone(), lang.clone(), lang.clone()),
            _ => (
                a.train.clone().unwrap_or_default(),
                a.src_lang.clone().unwrap_or_default(),
                a.tgt_lang.clone().unwrap_or_default(),
            ),
        };
        PrepareConfig {
            mono: a.mono.is_some(),
            train,
            valid: a.valid.clone(),
            src_lang,
            tgt_lang,
            vocab_size: a.vocab_size,
            src_vocab_size: a.src_vocab_size,
            joint_vocab: a.joint_vocab,
            model_type: a.model_type.into(),
            min_frequency: a.min_frequency,
            max_len: a.max_len,
            max_ratio: a.max_ratio,
            out: a.out.clone(),
        }
    }
}

pub fn run(args: &PrepareArgs) -> Result<()> {
    let summary = crate::prepare::run(&PrepareConfig::from(args))?;
    eprintln!("{summary}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
