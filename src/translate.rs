//! `rnmt translate`: sentences from the command line, a file or stdin, through search,
//! to text or JSON lines.
//!
//! Every input line gives exactly one output line, in order (n-best text output gives
//! `nbest` lines per input, each tagged with the input's 0-based index, as Moses does).
//! Empty and whitespace-only lines give empty translations without running the model;
//! lines longer than `--max-input-len` subwords are truncated with a warning; invalid
//! UTF-8 is decoded lossily with a warning. Lines are read in chunks and each chunk is
//! written and flushed before the next is read; when stdin is a terminal a chunk is one
//! line, so an interactive user gets each translation at once.

use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::ValueEnum;
use serde::Serialize;

use crate::hub;
use crate::model::{load_model, Seq2Seq};
use crate::search::alignment::{hard_alignment, pharaoh, word_alignment, word_index};
use crate::search::shortlist::{DEFAULT_SIZE, SHORTLIST_FILE};
use crate::search::{search, Ensemble, Hypothesis, SearchConfig, Shortlist, ShortlistSize};
use crate::subword::{SubwordModel, SOURCE_TOKENIZER, TARGET_TOKENIZER};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One translation per line (`translation ||| alignment` with --alignments).
    Text,
    /// One JSON object per line: translation, score, log_prob, nbest, alignment.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlignUnit {
    /// Whitespace-separated words of the input and the translation.
    Word,
    /// Subwords of the source and target tokenizers.
    Subword,
}

#[derive(clap::Args, Debug, Clone)]
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
    /// Write translations to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Beam size; 1 is greedy decoding.
    #[arg(short = 'b', long, default_value_t = 5)]
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
    #[arg(long, default_value_t = 1, value_name = "N")]
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
    #[arg(long, default_value_t = 32, value_name = "S")]
    pub batch_size: usize,
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Print hard alignments from attention in Pharaoh format (`i-j`: 0-based source
    /// position i, target position j; see --align-unit).
    #[arg(long)]
    pub alignments: bool,
    /// Positions of --alignments: words (whitespace-separated) or subwords.
    #[arg(long, value_enum, default_value_t = AlignUnit::Word)]
    pub align_unit: AlignUnit,
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
    #[arg(long, default_value_t = 250, value_name = "N")]
    pub max_input_len: usize,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Loaded models with their tokenizers.
pub struct Translator {
    models: Vec<Seq2Seq>,
    source: SubwordModel,
    target: SubwordModel,
    device: Device,
    pub search: SearchConfig,
    pub max_input_len: usize,
    /// Search over a lexical shortlist (see [`crate::search::shortlist`]).
    pub shortlist: Option<(Shortlist, ShortlistSize)>,
}

/// One input line, ready for search.
struct Prepared {
    ids: Option<Vec<u32>>,
}

/// The translation of one input line.
#[derive(Clone, Debug, Serialize)]
pub struct Translation {
    pub translation: String,
    pub score: f32,
    pub log_prob: f32,
    pub nbest: Vec<NbestEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alignment: Option<String>,
    /// Source and target pieces with the attention matrix, for plots.
    #[serde(skip)]
    pub attention: Option<AttentionMatrix>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NbestEntry {
    pub translation: String,
    pub score: f32,
    pub log_prob: f32,
}

#[derive(Clone, Debug)]
pub struct AttentionMatrix {
    pub source: Vec<String>,
    pub target: Vec<String>,
    /// `weights[j][i]`: attention of target step j on source position i.
    pub weights: Vec<Vec<f32>>,
}

impl Translator {
    /// Loads every model folder; ensemble members must use the same tokenizer files.
    pub fn load(dirs: &[PathBuf], device: &Device) -> Result<Self> {
        let Some(first) = dirs.first() else {
            bail!("no model to load");
        };
        let source = SubwordModel::load(&first.join(SOURCE_TOKENIZER))?;
        let target = SubwordModel::load(&first.join(TARGET_TOKENIZER))?;
        let mut models = Vec::with_capacity(dirs.len());
        for dir in dirs {
            for file in [SOURCE_TOKENIZER, TARGET_TOKENIZER] {
                let read = |d: &Path| {
                    std::fs::read(d.join(file))
                        .with_context(|| format!("reading {}", d.join(file).display()))
                };
                if dir != first && read(dir)? != read(first)? {
                    bail!(
                        "ensemble: {} differs from {}; the members of an ensemble must share their tokenizers",
                        dir.join(file).display(),
                        first.join(file).display()
                    );
                }
            }
            let (model, _) = load_model(dir, device)?;
            models.push(model);
        }
        let search = SearchConfig::for_model(models[0].config());
        Ok(Self {
            models,
            source,
            target,
            device: device.clone(),
            search,
            max_input_len: 250,
            shortlist: None,
        })
    }

    /// Loads the shortlist of model folder `dir` (the first model's, for an ensemble).
    pub fn load_shortlist(&self, dir: &Path) -> Result<Shortlist> {
        let path = dir.join(SHORTLIST_FILE);
        if !path.exists() {
            bail!(
                "{} does not exist; learn one with `rnmt shortlist -m {} --train PREFIX --src-lang S --tgt-lang T`",
                path.display(),
                dir.display()
            );
        }
        let cfg = self.models[0].config();
        Shortlist::load(&path, cfg.src_vocab_size, cfg.tgt_vocab_size)
    }

    pub fn source_tokenizer(&self) -> &SubwordModel {
        &self.source
    }

    pub fn target_tokenizer(&self) -> &SubwordModel {
        &self.target
    }

    /// Translates `lines` (named `line N` in warnings, N = `first_line` + index), in
    /// batches of `batch_size` sentences of similar length.
    pub fn translate(
        &self,
        lines: &[String],
        first_line: usize,
        batch_size: usize,
        align: Option<AlignUnit>,
    ) -> Result<Vec<Translation>> {
        let prepared = self.prepare(lines, first_line)?;
        let mut order: Vec<usize> = (0..lines.len())
            .filter(|&i| prepared[i].ids.is_some())
            .collect();
        order.sort_by_key(|&i| prepared[i].ids.as_ref().map_or(0, Vec::len));
        let mut ens = Ensemble::new(self.models.iter().collect())?;
        if let Some((list, size)) = &self.shortlist {
            ens = ens.with_shortlist(list, *size);
        }
        let mut out: Vec<Option<Translation>> = vec![None; lines.len()];
        for batch in order.chunks(batch_size.max(1)) {
            let sources: Vec<Vec<u32>> = batch
                .iter()
                .map(|&i| prepared[i].ids.clone().expect("non-empty line"))
                .collect();
            let results = search(&ens, &sources, &self.search, &self.device)?;
            for ((&i, src), nbest) in batch.iter().zip(&sources).zip(results) {
                out[i] = Some(self.finish(src, nbest, align)?);
            }
        }
        Ok(out
            .into_iter()
            .map(|t| t.unwrap_or_else(empty_translation))
            .collect())
    }

    fn prepare(&self, lines: &[String], first_line: usize) -> Result<Vec<Prepared>> {
        let texts: Vec<&str> = lines.iter().map(|l| l.trim()).collect();
        let encoded = self.source.encode_batch(&texts)?;
        Ok(texts
            .iter()
            .zip(encoded)
            .enumerate()
            .map(|(i, (text, mut ids))| {
                if text.is_empty() {
                    return Prepared { ids: None };
                }
                if ids.len() > self.max_input_len {
                    eprintln!(
                        "warning: line {}: {} subwords, more than the limit of {}; translating only the first {}",
                        first_line + i,
                        ids.len(),
                        self.max_input_len,
                        self.max_input_len
                    );
                    ids.truncate(self.max_input_len);
                }
                Prepared { ids: Some(ids) }
            })
            .collect())
    }

    fn finish(
        &self,
        src: &[u32],
        nbest: Vec<Hypothesis>,
        align: Option<AlignUnit>,
    ) -> Result<Translation> {
        let texts: Vec<&[u32]> = nbest.iter().map(|h| h.tokens.as_slice()).collect();
        // A newline in a translation would break the one-line-per-input rule.
        let decoded: Vec<String> = self
            .target
            .decode_batch(&texts)?
            .into_iter()
            .map(|t| t.replace(['\n', '\r'], " "))
            .collect();
        let best = &nbest[0];
        let mut alignment = None;
        let mut attention = None;
        if let Some(weights) = &best.attention {
            let src_pieces = self.pieces(&self.source, src);
            let tgt_pieces = self.pieces(&self.target, &best.tokens);
            let mut pairs = hard_alignment(weights, src.len(), best.tokens.len());
            if align == Some(AlignUnit::Word) {
                pairs = word_alignment(&pairs, &word_index(&src_pieces), &word_index(&tgt_pieces));
            }
            if align.is_some() {
                alignment = Some(pharaoh(&pairs));
            }
            let mut source = src_pieces;
            source.push(crate::subword::EOS.to_string());
            let mut target = tgt_pieces;
            if best.ended {
                target.push(crate::subword::EOS.to_string());
            }
            attention = Some(AttentionMatrix {
                source,
                target,
                weights: weights.clone(),
            });
        }
        Ok(Translation {
            translation: decoded[0].clone(),
            score: best.score,
            log_prob: best.log_prob,
            nbest: nbest
                .iter()
                .zip(decoded)
                .map(|(h, translation)| NbestEntry {
                    translation,
                    score: h.score,
                    log_prob: h.log_prob,
                })
                .collect(),
            alignment,
            attention,
        })
    }

    /// The text of each subword on its own (byte-level pieces of a multi-byte character
    /// show as replacement characters).
    fn pieces(&self, tokenizer: &SubwordModel, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                tokenizer
                    .decode(&[id])
                    .unwrap_or_else(|_| tokenizer.tokens(&[id]).concat())
            })
            .collect()
    }
}

fn empty_translation() -> Translation {
    Translation {
        translation: String::new(),
        score: 0.0,
        log_prob: 0.0,
        nbest: Vec::new(),
        alignment: None,
        attention: None,
    }
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
    crate::train::cli::set_threads(args.threads);
    let device = crate::train::config::parse_device(&args.device)?.device()?;
    let dirs = if args.models.is_empty() {
        vec![hub::default_model()?]
    } else {
        args.models
            .iter()
            .map(|m| {
                hub::resolve(
                    m,
                    if args.shortlist {
                        &[SHORTLIST_FILE]
                    } else {
                        &[]
                    },
                )
            })
            .collect::<Result<Vec<_>>>()?
    };
    let mut translator = Translator::load(&dirs, &device)?;
    let model_cfg = translator.models[0].config().clone();
    translator.search = SearchConfig {
        beam: args.beam,
        alpha: args.alpha.unwrap_or(model_cfg.decode_alpha),
        beta: args.beta.unwrap_or(model_cfg.decode_beta),
        nbest: args.nbest,
        max_len_a: args.max_len_a.unwrap_or(model_cfg.max_decode_len_a),
        max_len_b: args.max_len_b.unwrap_or(model_cfg.max_decode_len_b),
        keep_attention: args.alignments || args.attention_plot.is_some(),
    };
    translator.search.validate()?;
    if args.max_input_len == 0 {
        bail!("--max-input-len must be at least 1");
    }
    translator.max_input_len = args.max_input_len;
    if args.shortlist {
        let list = translator.load_shortlist(&dirs[0])?;
        translator.shortlist = Some((list, args.shortlist_size));
    }
    if let Some(plot) = &args.attention_plot {
        crate::plot::check_attention_plot_path(plot)?;
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
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create output {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let chunk = if interactive {
        1
    } else {
        args.batch_size.max(1) * 8
    };
    let align = args.alignments.then_some(args.align_unit);
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
        let translations = translator.translate(&lines, line_no + 1, args.batch_size, align)?;
        for (i, t) in translations.iter().enumerate() {
            write_translation(&mut out, args.format, line_no + i, t, args.nbest > 1)?;
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
        Format::Text if nbest_lines => {
            if t.nbest.is_empty() {
                writeln!(out, "{index} |||  ||| 0")?;
            }
            for (rank, e) in t.nbest.iter().enumerate() {
                // The alignment belongs to the best hypothesis only.
                let suffix = if rank == 0 { align_suffix.as_str() } else { "" };
                writeln!(out, "{index} ||| {} ||| {}{suffix}", e.translation, e.score)?;
            }
        }
        Format::Text => writeln!(out, "{}{align_suffix}", t.translation)?,
    }
    Ok(())
}
