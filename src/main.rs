//! The `rnmt` command line: parses arguments and calls the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Training allocates and frees large tensors every step; glibc's malloc hands them back to
// the kernel and page-faults fresh zeroed pages each time, mimalloc reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Bleu(args) => rnmt::metrics::cli::run(&args),
        Command::Corpus(CorpusCommand::Fetch(args)) => rnmt::corpus::fetch::run_fetch(&args),
        Command::Corpus(CorpusCommand::List(args)) => rnmt::corpus::fetch::run_list(&args),
    }
}

fn main() -> ExitCode {
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
