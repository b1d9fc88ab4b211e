//! `rnmt serve`: the LibreTranslate-compatible translation server of [`crate::serve`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::hub;
use crate::serve::batcher::BatcherOptions;
use crate::serve::limits::{ApiKeys, MAX_REQ_LIMIT};
use crate::serve::ServeOptions;
use crate::translate::TranslateOptions;

const D: ServeOptions = ServeOptions::DEFAULT;

/// The second shipped model, served with the default one when no --model is given.
const DEFAULT_REVERSE_MODEL: &str = "tatoeba-en-de";

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Model folder or Hugging Face Hub model `hf:ORG/NAME[@REVISION]`, one per language
    /// pair (from its config.json's src_lang and tgt_lang); repeat for more pairs.
    /// Default: the shipped tatoeba-de-en and tatoeba-en-de.
    #[arg(short = 'm', long = "model", value_name = "DIR|hf:ORG/NAME[@REV]")]
    pub models: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 5000)]
    pub port: u16,
    /// Longest text of a request, in characters (1..=1000000).
    #[arg(long, default_value_t = D.char_limit as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub char_limit: u64,
    /// Most texts in one request (`q` as a list; 1..=10000).
    #[arg(long, default_value_t = D.batch_limit as u64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_limit: u64,
    /// Most alternative translations one may ask for (0..beam).
    #[arg(long, default_value_t = D.alternatives_limit as u64, value_parser = clap::value_parser!(u64).range(0..=63))]
    pub alternatives_limit: u64,
    /// Sentences waiting for a batch across requests, per model; a request that does not
    /// fit gets a 503 (1..=1000000).
    #[arg(long, default_value_t = D.batcher.max_queue as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_queue: u64,
    /// Seconds a request may take before it gets a 503 (1..=3600).
    #[arg(long, default_value_t = D.request_timeout.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,
    /// Seconds a connection may take to send a request's headers, and may stay idle
    /// between requests, before it is closed (1..=600).
    #[arg(long, default_value_t = D.header_timeout.as_secs(), value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout: u64,
    /// Connections open at once; more wait until one closes (1..=65536).
    #[arg(long, default_value_t = D.max_connections as u64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_connections: u64,
    /// Source subwords in one batched search, across requests (a longer sentence goes
    /// alone; 1: one sentence at a time; 1..=65536).
    #[arg(long, default_value_t = D.batcher.max_batch_tokens as u64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_batch_tokens: u64,
    /// Milliseconds a batch waits for more sentences after its first (0..=1000).
    #[arg(long, default_value_t = D.batcher.batch_wait.as_millis() as u64, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub batch_wait_ms: u64,
    /// Batches searched at once per model, each on its share of `--threads`: one
    /// gathers the next batch while the others search (0: one per thread on the CPU,
    /// one on a GPU; 0..=64).
    #[arg(long, default_value_t = D.batcher.workers as u64, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub batch_workers: u64,
    /// Beam size (1..=64).
    #[arg(short = 'b', long, default_value_t = TranslateOptions::DEFAULT.beam as u64, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub beam: u64,
    /// Compute the output layer and the recurrent layers in int8, as `rnmt translate --int8` (CPU
    /// only).
    #[arg(long)]
    pub int8: bool,
    /// Threads for the search (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// API keys, one per line, each optionally followed by its requests per minute
    /// (`KEY 120`). With it, an unknown `api_key` gets a 403.
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// Requests per minute per API key or client address (0: no limit).
    #[arg(long, default_value_t = D.req_limit, value_parser = clap::value_parser!(u32).range(0..=MAX_REQ_LIMIT as i64))]
    pub req_limit: u32,
    /// Allow browsers on any origin to call the API (CORS), as LibreTranslate does.
    #[arg(long, default_value_t = D.cors, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub cors: bool,
    /// Serve only the API, no web page at `/`.
    #[arg(long)]
    pub no_web_page: bool,
    /// The web page translates this many milliseconds after the last keystroke (0..=10000).
    #[arg(long, default_value_t = D.frontend_timeout_ms, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub frontend_timeout: u64,
    /// Log the texts of requests (off: only their counts).
    #[arg(long)]
    pub log_text: bool,
    /// More log detail (-v debug, -vv trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    init_logs(args.verbose);
    crate::device::set_threads(args.threads)?;
    let device = crate::device::parse_device(&args.device)?.device()?;
    let dirs = if args.models.is_empty() {
        let first = hub::default_model()?;
        let second = first
            .parent()
            .map(|p| p.join(DEFAULT_REVERSE_MODEL))
            .context("the default model folder has no parent")?;
        hub::check_model_dir(&second)?;
        vec![first, second]
    } else {
        args.models
            .iter()
            .map(|m| hub::resolve(m, &[]))
            .collect::<Result<Vec<_>>>()?
    };
    let options = args.options(dirs)?;
    crate::serve::run(options, &args.host, args.port, device)
}

impl ServeArgs {
    /// The server's options for these arguments, serving `models`.
    pub fn options(&self, models: Vec<PathBuf>) -> Result<ServeOptions> {
        let api_keys = self.api_keys.as_deref().map(ApiKeys::load).transpose()?;
        let mut translate = TranslateOptions::DEFAULT;
        translate.beam = self.beam as usize;
        translate.int8 = self.int8;
        Ok(ServeOptions {
            models,
            char_limit: self.char_limit as usize,
            batch_limit: self.batch_limit as usize,
            alternatives_limit: self.alternatives_limit as usize,
            batcher: BatcherOptions {
                max_batch_tokens: self.max_batch_tokens as usize,
                batch_wait: Duration::from_millis(self.batch_wait_ms),
                max_queue: self.max_queue as usize,
                workers: self.batch_workers as usize,
            },
            request_timeout: Duration::from_secs(self.request_timeout),
            header_timeout: Duration::from_secs(self.header_timeout),
            max_connections: self.max_connections as usize,
            api_keys,
            req_limit: self.req_limit,
            cors: self.cors,
            web_page: !self.no_web_page,
            log_text: self.log_text,
            frontend_timeout_ms: self.frontend_timeout,
            translate,
        })
    }
}

/// Logs go to stderr, at `info` (or as -v and RUST_LOG say).
fn init_logs(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
