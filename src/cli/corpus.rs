//! `rnmt corpus fetch|list`: the corpora of the manifest.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::corpus::fetch::{fetch, Manifest};

#[derive(Subcommand, Debug)]
pub enum CorpusCommand {
    /// Download a corpus from the manifest and verify its checksums.
    Fetch(FetchArgs),
    /// List the corpora of the manifest.
    List(ListArgs),
}

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  rnmt corpus fetch multi30k\n  rnmt corpus fetch tatoeba-deu-eng --dir /data/corpora"
)]
pub struct FetchArgs {
    /// Corpus name from the manifest (see `rnmt corpus list`).
    pub name: String,
    /// Folder that receives NAME/ (default: $RNMT_CORPORA, else corpora/).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Fetch the finished files from a mirror laid out as URL/NAME/FILE instead of
    /// rebuilding them from the original sources.
    #[arg(long, value_name = "URL", env = "RNMT_CORPUS_MIRROR")]
    pub mirror: Option<String>,
    /// Read this manifest instead of the built-in one.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

pub fn run(command: &CorpusCommand) -> Result<()> {
    match command {
        CorpusCommand::Fetch(args) => {
            let manifest = Manifest::load(args.manifest.as_deref())?;
            fetch(
                &manifest,
                &args.name,
                args.dir.as_deref(),
                args.mirror.as_deref(),
            )
        }
        CorpusCommand::List(args) => run_list(args),
    }
}

fn run_list(args: &ListArgs) -> anyhow::Result<()> {
    let manifest = Manifest::load(args.manifest.as_deref())?;
    for c in &manifest.corpus {
        println!(
            "{}\t{} files\t{}\n\tlicence: {}\n\tsource: {}",
            c.name,
            c.file.len(),
            c.description,
            c.licence,
            c.source
        );
    }
    Ok(())
}
