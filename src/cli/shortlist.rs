//! `rnmt shortlist`: learns a lexical shortlist into a model folder.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;

use crate::search::shortlist::{Shortlist, SHORTLIST_FILE};

#[derive(Args, Debug, Clone)]
pub struct ShortlistArgs {
    /// Model folder: its tokenizers encode the corpus, the shortlist is written into it.
    #[arg(short, long, value_name = "DIR")]
    pub model: PathBuf,
    /// Training corpus prefix: PREFIX.SRC and PREFIX.TGT (under $RNMT_CORPORA if
    /// relative and not found).
    #[arg(long, value_name = "PREFIX")]
    pub train: PathBuf,
    #[arg(long)]
    pub src_lang: String,
    #[arg(long)]
    pub tgt_lang: String,
    /// EM iterations of IBM Model 1.
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// Translations kept per source subword (translate's PER_WORD can be at most this).
    #[arg(long, default_value_t = 100)]
    pub keep: usize,
}

/// `rnmt shortlist`: learns the table from a corpus and writes MODEL/shortlist.safetensors.
pub fn run(args: &ShortlistArgs) -> Result<()> {
    let started = std::time::Instant::now();
    // The vocabulary sizes the table must fit; the weights are not needed.
    let cfg = crate::model::load_config(&args.model)?;
    let source =
        crate::subword::SubwordModel::load(&args.model.join(crate::subword::SOURCE_TOKENIZER))?;
    let target =
        crate::subword::SubwordModel::load(&args.model.join(crate::subword::TARGET_TOKENIZER))?;
    let corpus = crate::corpus::ParallelCorpus::read(
        &args.train,
        &args.src_lang,
        &args.tgt_lang,
        &crate::corpus::FilterConfig::default(),
    )?;
    ensure!(
        !corpus.pairs.is_empty(),
        "{}: no sentence pairs to learn from",
        args.train.display()
    );
    let src = source.encode_batch(&corpus.sources().collect::<Vec<_>>())?;
    let tgt = target.encode_batch(&corpus.targets().collect::<Vec<_>>())?;
    let pairs = src
        .iter()
        .zip(&tgt)
        .map(|(s, t)| (s.as_slice(), t.as_slice()));
    let list = Shortlist::learn(
        pairs,
        cfg.src_vocab_size,
        cfg.tgt_vocab_size,
        args.iterations,
        args.keep,
    )?;
    let path = args.model.join(SHORTLIST_FILE);
    list.save(&path)?;
    eprintln!(
        "learned from {} sentence pairs in {:.1} s; wrote {}",
        corpus.pairs.len(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(())
}
