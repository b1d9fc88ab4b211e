//! `rnmt lm score | next | generate`: a language model's perplexity, next words and
//! sampled continuations.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};

use crate::hub::{self, ModelKind};
use crate::lm::{self, Sampling};
use crate::model::{load_language_model, LanguageModel};
use crate::subword::SubwordModel;

#[derive(Subcommand, Debug)]
pub enum LmCommand {
    /// Perplexity of sentences (FILE or stdin, one per line): the corpus figure, and with
    /// --sentences one line per input line.
    #[command(
        after_help = "Example:\n  rnmt lm score test.de\n  rnmt lm score --sentences < test.de > ppl.tsv"
    )]
    Score(ScoreArgs),
    /// The most probable next words after a context, with their probabilities.
    #[command(after_help = "Example:\n  rnmt lm next \"Der Hund jagt die\" -k 5")]
    Next(NextArgs),
    /// Continue a prompt by sampling (temperature, top-k, top-p; seeded).
    #[command(
        after_help = "Example:\n  rnmt lm generate \"Der Hund\" -n 3 --temperature 0.8 --top-p 0.9 --seed 7"
    )]
    Generate(GenerateArgs),
}

/// The model and machine options every `rnmt lm` command takes.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A language model folder (config.json with task "lm", model.safetensors,
    /// tokenizer.json) or hf:ORG/NAME; default: the shipped German model.
    #[arg(long, short = 'm', value_name = "DIR")]
    pub model: Option<String>,
    /// Threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl ModelArgs {
    fn load(&self) -> Result<(PathBuf, LanguageModel, SubwordModel)> {
        crate::device::set_threads(self.threads)?;
        let dir = match &self.model {
            Some(spec) => hub::resolve_kind(spec, ModelKind::Language, &[])?,
            None => hub::default_of(ModelKind::Language)?,
        };
        let (model, tokenizer) = load_language_model(&dir, &Device::Cpu)?;
        Ok((dir, model, tokenizer))
    }
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sentences, one per line (default: stdin).
    pub file: Option<PathBuf>,
    /// One line per input line on stdout: perplexity, log-probability (natural log) and
    /// predictions (subwords + end of sentence), tab-separated; the corpus line goes to
    /// stderr.
    #[arg(long)]
    pub sentences: bool,
    /// Subwords per scoring batch.
    #[arg(long, default_value_t = 4000)]
    pub max_tokens: usize,
}

#[derive(Args, Debug)]
pub struct NextArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The words so far.
    pub context: String,
    /// How many words to list.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    /// Partial words kept while words are assembled from subwords. A word is found only
    /// if its first subword is among the `beam` most probable ones, and many are a word's
    /// first piece only ("ĠK", "ĠVer"), so the beam is well above -k.
    #[arg(long, default_value_t = 100)]
    pub beam: usize,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The start of the text (may be empty).
    #[arg(default_value = "")]
    pub prompt: String,
    /// How many texts to generate.
    #[arg(short, long, default_value_t = 1)]
    pub n: usize,
    /// 0: always the most probable subword; above 1 more surprising.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f64,
    /// Draw only from the K most probable subwords (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Draw only from the most probable subwords that together have probability P.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Subwords to add at most.
    #[arg(long, default_value_t = 50)]
    pub max_len: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The largest `-n` of `rnmt lm generate`.
const MAX_SAMPLES: usize = 10_000;

pub fn run(command: &LmCommand) -> Result<()> {
    match command {
        LmCommand::Score(a) => score(a),
        LmCommand::Next(a) => next(a),
        LmCommand::Generate(a) => generate(a),
    }
}

fn score(args: &ScoreArgs) -> Result<()> {
    let lines = read_input(args.file.as_ref())?;
    let (dir, model, tokenizer) = args.model.load()?;
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let scores = lm::score_sentences(&model, &tokenizer, &refs, args.max_tokens, &Device::Cpu)?;
    let tokens: usize = scores.iter().map(|s| s.tokens).sum();
    let corpus = format!(
        "PPL = {:.2} ({} sentences, {tokens} predictions) {}",
        lm::corpus_perplexity(&scores),
        scores.len(),
        lm::signature(&dir, tokenizer.vocab_size())?
    );
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.sentences {
        for s in &scores {
            writeln!(
                out,
                "{:.4}\t{:.4}\t{}",
                s.perplexity(),
                s.log_prob,
                s.tokens
            )?;
        }
        out.flush()?;
        eprintln!("{corpus}");
    } else {
        writeln!(out, "{corpus}")?;
    }
    Ok(())
}

fn next(args: &NextArgs) -> Result<()> {
    let (_, model, tokenizer) = args.model.load()?;
    let words = lm::next_words(
        &model,
        &tokenizer,
        &args.context,
        args.k,
        args.beam,
        &Device::Cpu,
    )?;
    for w in words {
        println!("{:.4}\t{}", w.probability, w.word);
    }
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<()> {
    if !(1..=MAX_SAMPLES).contains(&args.n) {
        anyhow::bail!("-n {}: must be between 1 and {MAX_SAMPLES}", args.n);
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        max_len: args.max_len,
        seed: args.seed,
    };
    sampling.validate()?;
    let (_, model, tokenizer) = args.model.load()?;
    let texts = lm::generate(
        &model,
        &tokenizer,
        &args.prompt,
        args.n,
        &sampling,
        &Device::Cpu,
    )?;
    for t in texts {
        println!("{}", t.replace('\n', " "));
    }
    Ok(())
}

/// The lines of `file`, or of stdin.
fn read_input(file: Option<&PathBuf>) -> Result<Vec<String>> {
    match file {
        Some(path) => Ok(crate::corpus::read_lines(path)
            .with_context(|| format!("reading {}", path.display()))?
            .0),
        None => std::io::stdin()
            .lock()
            .lines()
            .enumerate()
            .map(|(i, l)| l.with_context(|| format!("stdin line {}: not UTF-8 text", i + 1)))
            .collect(),
    }
}
