//! `rnmt translate`: sentences from the command line, a file or stdin, through the
//! [`Translator`], to text or JSON lines.
//!
//! Every input line gives exactly one output line, in order (n-best text output gives
//! `nbest` lines per input, each tagged with the input's 0-based index, as Moses does).
//! Invalid UTF-8 is decoded lossily with a warning.

use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::hub;
use crate::io::write_atomic_with;
use crate::search::shortlist::{DEFAULT_SIZE, SHORTLIST_FILE};
use crate::search::ShortlistSize;
use crate::text::TextFormat;
use crate::translate::{AlignUnit, TranslateOptions, Translation, Translator};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Plain text in, one translation per line out (`translation ||| alignment` with
    /// --alignments).
    Text,
    /// Plain text in, one JSON object per line out: translation, score, log_prob, nbest,
    /// alignment.
    Json,
    /// HTML in and out: tags, attributes, entities, scripts, styles and code kept; text
    /// translated sentence by sentence across inline tags.
    Html,
    /// Markdown in and out: the markup kept, the text translated.
    Markdown,
}

impl Format {
    /// The text format of the input, for HTML and Markdown.
    fn markup(self) -> Option<TextFormat> {
        match self {
            Format::Html => Some(TextFormat::Html),
            Format::Markdown => Some(TextFormat::Markdown),
            Format::Text | Format::Json => None,
        }
    }
}

/// `--align-unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlignUnitArg {
    /// Whitespace-separated words of the input and the translation.
    Word,
    /// Subwords of the source and target tokenizers.
    Subword,
}

impl From<AlignUnitArg> for AlignUnit {
    fn from(u: AlignUnitArg) -> Self {
        match u {
            AlignUnitArg::Word => AlignUnit::Word,
            AlignUnitArg::Subword => AlignUnit::Subword,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct TranslateArgs {
    /// Sentences to translate, one output line each. Without any, reads --input or stdin
    /// line by line.
    pub sentences: Vec<String>,
    /// Model folder or Hugging Face Hub model `hf:ORG/NAME[@REVISION]`; repeat for an
    /// ensemble (log-probabilities averaged). Default: the installed default model.
    #[arg(short = 'm', long = "model", value_name = "DIR|hf:ORG/NAME[@REV]")]
    pub models: Vec<String>,
    /// Read sentences from FILE, one per line.
    #[arg(short, long, value_name = "FILE", conflicts_with = "sentences")]
    pub input: Option<PathBuf>,
    /// Translate FILE as one document (.txt, .html/.htm or .md by its extension, unless
    /// --format html|markdown says otherwise), its layout kept: blank lines, indentation,
    /// markup.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["sentences", "input", "nbest", "alignments", "attention_plot"])]
    pub document: Option<PathBuf>,
    /// Translate each line as one segment, as given, instead of splitting it into
    /// sentences first (for pipelines of one sentence per line).
    #[arg(long)]
    pub no_split: bool,
    /// Every translation starts with TEXT (target language), and search continues from
    /// it: interactive translation, auto-completion (with --nbest, the best
    /// continuations). Lines are then translated whole, not split into sentences.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["document", "tab_prefix"])]
    pub prefix: Option<String>,
    /// Each input line is SOURCE<TAB>PREFIX: its translation starts with PREFIX, as
    /// with --prefix (a line without a tab has no prefix).
    #[arg(long, conflicts_with = "document")]
    pub tab_prefix: bool,
    /// Write translations to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Beam size; 1 is greedy decoding.
    #[arg(short = 'b', long, default_value_t = TranslateOptions::DEFAULT.beam)]
    pub beam: usize,
    /// Length normalisation α of GNMT: lp(Y) = ((5+|Y|)/6)^α. 0: raw log-probability.
    /// Default: the model's `decode_alpha` (config.json; 0.6 unless tuned).
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Coverage penalty β of GNMT: cp = β·Σᵢ log(min(Σⱼ aᵢⱼ, 1)). 0: none.
    /// Default: the model's `decode_beta` (config.json; 0.2 unless tuned).
    #[arg(long)]
    pub beta: Option<f32>,
    /// Output the N best translations (at most the beam size).
    #[arg(long, default_value_t = TranslateOptions::DEFAULT.nbest, value_name = "N")]
    pub nbest: usize,
    /// Score only a lexical shortlist of target subwords per batch: faster, and results
    /// may differ from the full search. Needs MODEL/shortlist.safetensors (`rnmt
    /// shortlist`).
    #[arg(long)]
    pub shortlist: bool,
    /// FREQUENT,PER_WORD: the most frequent target subwords and the most probable
    /// translations of each source subword that --shortlist scores.
    #[arg(long, value_name = "FREQUENT,PER_WORD", default_value = DEFAULT_SIZE)]
    pub shortlist_size: ShortlistSize,
    /// Sentences decoded together in one batch.
    #[arg(long, default_value_t = TranslateOptions::DEFAULT.batch_size, value_name = "S")]
    pub batch_size: usize,
    /// Batches searched at once, each on its share of `--threads` (0: one per thread on
    /// the CPU, one on a GPU; 0..=64).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=64))]
    pub batch_workers: u64,
    /// Compute the output layer and the recurrent layers' products in int8 (weights per
    /// row, activations per row and step, i32 sums): 1.7-3x faster on the CPU, and results
    /// may differ from f32 search.
    #[arg(long)]
    pub int8: bool,
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Print hard alignments from attention in Pharaoh format (`i-j`: 0-based source
    /// position i, target position j; see --align-unit).
    #[arg(long)]
    pub alignments: bool,
    /// Positions of --alignments: words (whitespace-separated) or subwords.
    #[arg(long, value_enum, default_value_t = AlignUnitArg::Word)]
    pub align_unit: AlignUnitArg,
    /// Draw the attention of the first (non-empty) sentence as a heatmap: SVG or PNG by
    /// the file name's extension.
    #[arg(long, value_name = "OUT.svg|OUT.png")]
    pub attention_plot: Option<PathBuf>,
    /// Longest output: A·|source subwords + 1| + B (default: the model's config).
    #[arg(long, value_name = "A")]
    pub max_len_a: Option<f32>,
    #[arg(long, value_name = "B")]
    pub max_len_b: Option<usize>,
    /// Longer inputs are cut to this many subwords (with a warning).
    #[arg(long, default_value_t = TranslateOptions::DEFAULT.max_input_len, value_name = "N")]
    pub max_input_len: usize,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Where input lines come from.
enum Input {
    Sentences(std::vec::IntoIter<String>),
    Reader(Box<dyn BufRead>),
}

impl Input {
    /// The next line, without its line terminator (`\n` or `\r\n`). A last line without
    /// a newline still counts; invalid UTF-8 is decoded lossily with a warning.
    fn next_line(&mut self, line_no: usize) -> Result<Option<String>> {
        match self {
            Input::Sentences(it) => Ok(it.next()),
            Input::Reader(r) => {
                let mut buf = Vec::new();
                if r.read_until(b'\n', &mut buf).context("reading the input")? == 0 {
                    return Ok(None);
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                Ok(Some(match String::from_utf8(buf) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("warning: line {line_no}: invalid UTF-8, decoded with replacement characters");
                        String::from_utf8_lossy(e.as_bytes()).into_owned()
                    }
                }))
            }
        }
    }
}

pub fn run(args: &TranslateArgs) -> Result<()> {
    crate::device::set_threads(args.threads)?;
    let device = crate::device::parse_device(&args.device)?.device()?;
    let dirs = if args.models.is_empty() {
        vec![hub::default_model()?]
    } else {
        let extra: &[&str] = if args.shortlist {
            &[SHORTLIST_FILE]
        } else {
            &[]
        };
        args.models
            .iter()
            .map(|m| hub::resolve(m, extra))
            .collect::<Result<Vec<_>>>()?
    };
    if let Some(plot) = &args.attention_plot {
        crate::plot::check_attention_plot_path(plot)?;
    }
    if args.format.markup().is_some() && (args.nbest > 1 || args.alignments) {
        anyhow::bail!("--format html|markdown writes documents: --nbest and --alignments need --format text or json");
    }
    if args.format.markup().is_some() && (args.prefix.is_some() || args.tab_prefix) {
        anyhow::bail!("--prefix and --tab-prefix need --format text or json: a prefix starts one plain translation");
    }
    let translator = Translator::new(&dirs, &device, &args.options())?;
    if let Some(path) = &args.document {
        return translate_document(args, &translator, path);
    }

    let interactive =
        args.sentences.is_empty() && args.input.is_none() && std::io::stdin().is_terminal();
    let mut input = if !args.sentences.is_empty() {
        // A newline inside an argument would break the one-line-per-input rule.
        let sentences: Vec<String> = args
            .sentences
            .iter()
            .map(|s| s.replace(['\n', '\r'], " "))
            .collect();
        Input::Sentences(sentences.into_iter())
    } else if let Some(path) = &args.input {
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open input {}", path.display()))?;
        Input::Reader(Box::new(BufReader::new(file)))
    } else {
        Input::Reader(Box::new(BufReader::new(std::io::stdin())) as Box<dyn BufRead>)
    };
    match &args.output {
        // Into a temporary file renamed at the end: an interrupted run leaves the old
        // output (or none), never half of one, and `-i F -o F` reads F before replacing it.
        Some(path) => write_atomic_with(path, |tmp| {
            let file = std::fs::File::create(tmp)
                .with_context(|| format!("cannot create output {}", tmp.display()))?;
            let mut out = BufWriter::new(file);
            translate_stream(args, &translator, &mut input, &mut out, interactive)?;
            out.flush().context("writing the output")?;
            Ok(())
        }),
        None => {
            let mut out = BufWriter::new(std::io::stdout().lock());
            translate_stream(args, &translator, &mut input, &mut out, interactive)
        }
    }
}

impl TranslateArgs {
    /// The library's options for these arguments.
    pub fn options(&self) -> TranslateOptions {
        TranslateOptions {
            beam: self.beam,
            alpha: self.alpha,
            beta: self.beta,
            nbest: self.nbest,
            max_len_a: self.max_len_a,
            max_len_b: self.max_len_b,
            max_input_len: self.max_input_len,
            batch_size: self.batch_size,
            batch_workers: self.batch_workers as usize,
            shortlist: self.shortlist.then_some(self.shortlist_size),
            alignments: self.alignments.then_some(self.align_unit.into()),
            keep_attention: self.attention_plot.is_some(),
            split: !self.no_split,
            int8: self.int8,
        }
    }
}

/// Reads `input` in chunks, translates each and writes and flushes it before the next is
/// read; when stdin is a terminal a chunk is one line, so an interactive user gets each
/// translation at once.
fn translate_stream(
    args: &TranslateArgs,
    translator: &Translator,
    input: &mut Input,
    out: &mut dyn Write,
    interactive: bool,
) -> Result<()> {
    let chunk = if interactive {
        1
    } else {
        args.batch_size.max(1) * 8
    };
    let mut plot_pending = args.attention_plot.clone();
    let mut line_no = 0;
    loop {
        let mut lines = Vec::with_capacity(chunk);
        while lines.len() < chunk {
            match input.next_line(line_no + lines.len() + 1)? {
                Some(l) => lines.push(l),
                None => break,
            }
        }
        if lines.is_empty() {
            break;
        }
        if let Some(format) = args.format.markup() {
            let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
            for text in translator.translate_texts(&texts, format)? {
                // A newline in a translation would break the one-line-per-input rule.
                writeln!(out, "{}", text.replace(['\n', '\r'], " "))?;
            }
            out.flush().context("writing the output")?;
            line_no += lines.len();
            continue;
        }
        let translations = if args.prefix.is_some() || args.tab_prefix {
            let (sources, prefixes) = split_prefixes(args, &lines);
            translator.translate_with_prefixes(&sources, &prefixes, line_no + 1)?
        } else {
            translator.translate_lines(&lines, line_no + 1)?
        };
        for (i, t) in translations.iter().enumerate() {
            write_translation(out, args.format, line_no + i, t, args.nbest > 1)?;
        }
        out.flush().context("writing the output")?;
        if let Some(path) = &plot_pending {
            if let Some(m) = translations.iter().find_map(|t| t.attention.as_ref()) {
                crate::plot::write_attention_plot(path, &m.source, &m.target, &m.weights)?;
                eprintln!("wrote {}", path.display());
                plot_pending = None;
            }
        }
        line_no += lines.len();
    }
    if let Some(path) = plot_pending {
        eprintln!(
            "warning: no attention plot written to {}: every input line was empty",
            path.display()
        );
    }
    Ok(())
}

/// The sources and target prefixes of `lines`: `--prefix` for every line, or with
/// `--tab-prefix` each line's text after its first tab.
fn split_prefixes(args: &TranslateArgs, lines: &[String]) -> (Vec<String>, Vec<String>) {
    if let Some(prefix) = &args.prefix {
        return (lines.to_vec(), vec![prefix.clone(); lines.len()]);
    }
    lines
        .iter()
        .map(|l| match l.split_once('\t') {
            Some((source, prefix)) => (source.to_string(), prefix.to_string()),
            None => (l.clone(), String::new()),
        })
        .unzip()
}

/// `rnmt translate --document FILE`: the whole file at once, its layout kept, to -o or
/// stdout.
fn translate_document(
    args: &TranslateArgs,
    translator: &Translator,
    path: &std::path::Path,
) -> Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read document {}", path.display()))?;
    let text = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "warning: {}: invalid UTF-8, decoded with replacement characters",
                path.display()
            );
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        }
    };
    let format = args
        .format
        .markup()
        .unwrap_or_else(|| TextFormat::from_path(path));
    if args.format == Format::Json {
        anyhow::bail!("--document writes the document itself: --format json does not apply");
    }
    let translated = translator
        .translate_texts(&[text.as_str()], format)?
        .pop()
        .unwrap_or_default();
    match &args.output {
        Some(out) => crate::io::write_atomic(out, translated.as_bytes()),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(translated.as_bytes())
                .and_then(|()| stdout.flush())
                .context("writing the output")
        }
    }
}

fn write_translation(
    out: &mut dyn Write,
    format: Format,
    index: usize,
    t: &Translation,
    nbest_lines: bool,
) -> Result<()> {
    let align_suffix = t
        .alignment
        .as_ref()
        .map(|a| format!(" ||| {a}"))
        .unwrap_or_default();
    match format {
        Format::Json => writeln!(out, "{}", serde_json::to_string(t)?)?,
        Format::Text | Format::Html | Format::Markdown if nbest_lines => {
            if t.nbest.is_empty() {
                writeln!(out, "{index} |||  ||| 0")?;
            }
            for (rank, e) in t.nbest.iter().enumerate() {
                // The alignment belongs to the best hypothesis only.
                let suffix = if rank == 0 { align_suffix.as_str() } else { "" };
                writeln!(out, "{index} ||| {} ||| {}{suffix}", e.translation, e.score)?;
            }
        }
        Format::Text | Format::Html | Format::Markdown => {
            writeln!(out, "{}{align_suffix}", t.translation)?
        }
    }
    Ok(())
}
