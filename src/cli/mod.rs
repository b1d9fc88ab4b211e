//! The command line: one file per subcommand, each with its clap `Args` and its `run`.
//! The library modules below know nothing of clap; this layer turns arguments into their
//! plain options and calls them.

pub mod average;
pub mod bleu;
pub mod corpus;
pub mod lm;
pub mod plot;
pub mod prepare;
pub mod serve;
pub mod shortlist;
pub mod train;
pub mod translate;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rnmt",
    version,
    about = "Neural machine translation: stacked-LSTM encoder-decoder with attention"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a parallel (or, with --mono, one-sided) corpus and learn subword models for training.
    Prepare(prepare::PrepareArgs),
    /// Train a model (see `rnmt train --help`).
    #[command(
        after_help = "Example:\n  rnmt train --config configs/multi30k-de-en.toml --set max_minutes=60"
    )]
    Train(train::TrainArgs),
    /// Average the weights of checkpoints into a model folder.
    #[command(
        after_help = "Example:\n  rnmt average runs/multi30k --last 5 -o models/multi30k-avg"
    )]
    Average(average::AverageArgs),
    /// Draw a run's learning curve (loss and validation BLEU) as RUN_DIR/curve.svg.
    #[command(after_help = "Example:\n  rnmt plot runs/multi30k")]
    Plot(plot::PlotArgs),
    /// Translate sentences given as arguments, or stdin line by line.
    #[command(
        after_help = "Example:\n  rnmt translate \"Der Hund jagt die Katze.\"\n  rnmt translate < input.de > output.en"
    )]
    Translate(translate::TranslateArgs),
    /// Serve the models over HTTP: the LibreTranslate API, a native API and a web page.
    #[command(
        after_help = "Example:\n  rnmt serve --port 5000\n  curl -s localhost:5000/translate -H 'Content-Type: application/json' \\\n    -d '{\"q\": \"Der Hund jagt die Katze.\", \"source\": \"de\", \"target\": \"en\"}'"
    )]
    Serve(serve::ServeArgs),
    /// Learn a lexical shortlist for `rnmt translate --shortlist` (IBM Model 1 on a corpus).
    #[command(
        after_help = "Example:\n  rnmt shortlist -m models/tatoeba-de-en --train tatoeba-deu-eng/train --src-lang de --tgt-lang en"
    )]
    Shortlist(shortlist::ShortlistArgs),
    /// Score translations with sacreBLEU-compatible BLEU and chrF.
    #[command(
        after_help = "Example:\n  rnmt bleu ref.en -i hyp.en\n  rnmt bleu ref.en -i hyp.en -m bleu chrf -f text"
    )]
    Bleu(bleu::BleuArgs),
    /// Manage the known corpora.
    #[command(subcommand)]
    Corpus(corpus::CorpusCommand),
    /// Use a language model: perplexity, next words, sampled text.
    #[command(subcommand)]
    Lm(lm::LmCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  rnmt completions bash > ~/.local/share/bash-completion/completions/rnmt\n  rnmt completions zsh > ~/.zfunc/_rnmt"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// Parses the process arguments. sacreBLEU's single-dash long flags (`-lc`, `-tok`,
    /// ...) are expanded for `rnmt bleu` only: elsewhere `-lc` may be text to translate.
    pub fn from_env() -> Self {
        let mut args: Vec<String> = std::env::args().collect();
        if args.get(1).map(String::as_str) == Some("bleu") {
            let rest = args.split_off(2);
            args.extend(bleu::expand_sacrebleu_flags(rest));
        }
        Self::parse_from(args)
    }

    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Prepare(args) => prepare::run(&args),
            Command::Train(args) => train::run(&args),
            Command::Average(args) => average::run(&args),
            Command::Plot(args) => plot::run(&args),
            Command::Translate(args) => translate::run(&args),
            Command::Serve(args) => serve::run(&args),
            Command::Shortlist(args) => shortlist::run(&args),
            Command::Bleu(args) => bleu::run(&args),
            Command::Corpus(command) => corpus::run(&command),
            Command::Lm(command) => lm::run(&command),
            Command::Completions { shell } => {
                let mut cmd = Cli::command();
                clap_complete::generate(shell, &mut cmd, "rnmt", &mut std::io::stdout());
                Ok(())
            }
        }
    }
}
