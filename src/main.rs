//! Minimal entry point dispatching `rnmt bleu` (the full CLI replaces this on merge).

use clap::{Parser, Subcommand};
use rnmt::metrics::cli::{expand_sacrebleu_flags, run, BleuArgs};

#[derive(Parser)]
#[command(
    name = "rnmt",
    version,
    about = "Neural machine translation in the GNMT tradition"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score translations with sacreBLEU-exact BLEU, chrF and chrF++.
    Bleu(BleuArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(expand_sacrebleu_flags(std::env::args()));
    match cli.command {
        Command::Bleu(args) => run(&args),
    }
}
