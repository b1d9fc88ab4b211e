//! The `rnmt` command line: parses arguments and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Training allocates and frees large tensors every step; glibc's malloc hands them back to
// the kernel and page-faults fresh zeroed pages each time, mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: its position in mimalloc.h's `mi_option_e` (libmimalloc-sys
/// names no constant for it); the unit test below checks it by its default value.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Even with mimalloc, freed multi-megabyte tensors (a beam step's `[rows, vocab]`
/// log-probabilities) were purged back to the kernel after a delay and came back as fresh
/// zeroed pages: ~10 % of beam-search CPU time was the kernel clearing pages. Never purge;
/// the process keeps its peak footprint, which it reaches anyway.
fn keep_freed_memory() {
    // SAFETY: setting an option is thread-safe and valid at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// A closed pipe (`rnmt bleu … | head -1`) ends the process quietly, as it ends `cat` and
/// `grep`: Rust ignores SIGPIPE, so every `println!` after the reader left would panic.
fn die_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[derive(Parser)]
#[command(
    name = "rnmt",
    version,
    about = "Neural machine translation: stacked-LSTM encoder-decoder with attention"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a parallel corpus and learn subword models for training.
    Prepare(rnmt::prepare::PrepareArgs),
    /// Train a model (see `rnmt train --help`).
    #[command(
        after_help = "Example:\n  rnmt train --config configs/multi30k-de-en.toml --set max_minutes=60"
    )]
    Train(rnmt::train::cli::TrainArgs),
    /// Average the weights of checkpoints into a model folder.
    #[command(
        after_help = "Example:\n  rnmt average runs/multi30k --last 5 -o models/multi30k-avg"
    )]
    Average(rnmt::train::cli::AverageArgs),
    /// Draw a run's learning curve (loss and validation BLEU) as RUN_DIR/curve.svg.
    #[command(after_help = "Example:\n  rnmt plot runs/multi30k")]
    Plot(rnmt::train::cli::PlotArgs),
    /// Translate sentences given as arguments, or stdin line by line.
    #[command(
        after_help = "Example:\n  rnmt translate \"Der Hund jagt die Katze.\"\n  rnmt translate < input.de > output.en"
    )]
    Translate(rnmt::translate::TranslateArgs),
    /// Learn a lexical shortlist for `rnmt translate --shortlist` (IBM Model 1 on a corpus).
    #[command(
        after_help = "Example:\n  rnmt shortlist -m models/tatoeba-de-en --train tatoeba-deu-eng/train --src-lang de --tgt-lang en"
    )]
    Shortlist(rnmt::search::shortlist::ShortlistArgs),
    /// Score translations with sacreBLEU-compatible BLEU and chrF.
    #[command(
        after_help = "Example:\n  rnmt bleu ref.en -i hyp.en\n  rnmt bleu ref.en -i hyp.en -m bleu chrf -f text"
    )]
    Bleu(rnmt::metrics::cli::BleuArgs),
    /// Manage the known corpora.
    #[command(subcommand)]
    Corpus(CorpusCommand),
}

#[derive(Subcommand)]
enum CorpusCommand {
    /// Download a corpus from the manifest and verify its checksums.
    Fetch(rnmt::corpus::fetch::FetchArgs),
    /// List the corpora of the manifest.
    List(rnmt::corpus::fetch::ListArgs),
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Prepare(args) => {
            let summary = rnmt::prepare::run(&args)?;
            eprintln!("{summary}");
            eprintln!("wrote {}", args.out.display());
            Ok(())
        }
        Command::Train(args) => rnmt::train::cli::run_train(&args),
        Command::Average(args) => rnmt::train::cli::run_average(&args),
        Command::Plot(args) => rnmt::train::cli::run_plot(&args),
        Command::Translate(args) => rnmt::translate::run(&args),
        Command::Shortlist(args) => rnmt::search::shortlist::run(&args),
        Command::Bleu(args) => rnmt::metrics::cli::run(&args),
        Command::Corpus(CorpusCommand::Fetch(args)) => rnmt::corpus::fetch::run_fetch(&args),
        Command::Corpus(CorpusCommand::List(args)) => rnmt::corpus::fetch::run_list(&args),
    }
}

fn main() -> ExitCode {
    die_on_closed_pipe();
    keep_freed_memory();
    // sacreBLEU's single-dash long flags (-lc, -tok, ...) are accepted as users type them.
    let cli = Cli::parse_from(rnmt::metrics::cli::expand_sacrebleu_flags(std::env::args()));
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_option_is_the_one_we_mean() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reading an option is valid at any time.
            let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
            // mimalloc 3's options.c default (its header's comment still says 10).
            assert_eq!(delay, 1000, "mimalloc's default purge delay");
        }
    }
}
