//! `rnmt bleu`: sacreBLEU's command line over rnmt's metrics.
//!
//! Flags, defaults and output follow sacreBLEU 2.x (JSON by default; one object for one
//! metric, a list for several; text with `-f text`), so scripts written for sacreBLEU keep
//! working. sacreBLEU's multi-letter short flags (`-lc`, `-tok`, `-sl`, ...) are not
//! expressible in clap; [`expand_sacrebleu_flags`] rewrites them to their long forms and must be
//! applied to the raw arguments before parsing.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::metrics::bootstrap::{paired_bootstrap, BootstrapConfig, PairedResult};
use crate::metrics::{
    py_float_repr, py_rstrip, Bleu, BleuConfig, Chrf, ChrfConfig, Metric, SmoothMethod, Tokenizer,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum MetricName {
    Bleu,
    Chrf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Json,
    Text,
}

/// Score translations against references with sacreBLEU-exact BLEU, chrF and chrF++.
#[derive(clap::Args, Debug, Clone)]
pub struct BleuArgs {
    /// Reference files (one per reference stream, or one tab-separated file with --num-refs).
    #[arg(required = true)]
    pub refs: Vec<PathBuf>,
    /// Hypothesis file(s); several files are several systems. Reads stdin when absent
    /// (tab-separated columns are systems).
    #[arg(short = 'i', long = "input", num_args = 1..)]
    pub input: Option<Vec<PathBuf>>,
    /// Number of tab-separated references per line of a single reference file (-nr).
    #[arg(long = "num-refs", default_value_t = 1)]
    pub num_refs: usize,
    /// Metrics to compute.
    #[arg(short = 'm', long = "metrics", num_args = 1.., default_values = ["bleu"], value_enum)]
    pub metrics: Vec<MetricName>,
    /// Score every line on its own (-sl); uses effective order for BLEU.
    #[arg(long = "sentence-level")]
    pub sentence_level: bool,
    /// BLEU smoothing method.
    #[arg(short = 's', long = "smooth-method", default_value = "exp")]
    pub smooth_method: SmoothMethod,
    /// Smoothing value for floor (default 0.1) and add-k (default 1) (-sv).
    #[arg(long = "smooth-value")]
    pub smooth_value: Option<f64>,
    /// BLEU tokenizer: 13a, intl, char, none (-tok).
    #[arg(long = "tokenize", default_value = "13a")]
    pub tokenize: Tokenizer,
    /// Lowercase before BLEU (-lc); chrF has its own --chrf-lowercase, as in sacreBLEU.
    #[arg(long = "lowercase")]
    pub lowercase: bool,
    /// chrF character n-gram order (-cc).
    #[arg(long = "chrf-char-order", default_value_t = 6)]
    pub chrf_char_order: usize,
    /// chrF word n-gram order; 2 gives chrF++ (-cw).
    #[arg(long = "chrf-word-order", default_value_t = 0)]
    pub chrf_word_order: usize,
    /// chrF β.
    #[arg(long = "chrf-beta", default_value_t = 2)]
    pub chrf_beta: u32,
    /// Keep whitespace in chrF character n-grams.
    #[arg(long = "chrf-whitespace")]
    pub chrf_whitespace: bool,
    /// Lowercase before chrF.
    #[arg(long = "chrf-lowercase")]
    pub chrf_lowercase: bool,
    /// chrF++.py-style epsilon smoothing.
    #[arg(long = "chrf-eps-smoothing")]
    pub chrf_eps_smoothing: bool,
    /// Paired bootstrap resampling of every -i system against the first (-pbs).
    #[arg(long = "paired-bs")]
    pub paired_bs: bool,
    /// Number of bootstrap resamples (-pbsn).
    #[arg(long = "paired-bs-n", default_value_t = 1000)]
    pub paired_bs_n: usize,
    /// Seed of the resampling (sacreBLEU takes it from SACREBLEU_SEED, default 12345).
    #[arg(long = "seed", default_value_t = 12345)]
    pub seed: u64,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value = "json")]
    pub format: OutputFormat,
    /// Decimal places of printed scores.
    #[arg(short = 'w', long = "width", default_value_t = 1)]
    pub width: usize,
    /// Print only the score (text format) (-b).
    #[arg(short = 'b', long = "score-only")]
    pub score_only: bool,
    /// Abbreviated signatures (-sh).
    #[arg(long = "short")]
    pub short: bool,
}

/// Rewrites sacreBLEU's multi-letter short flags (`-lc`, `-tok`, `-sl`, `-cw`, ...) to the long
/// flags clap understands; everything else passes through.
pub fn expand_sacrebleu_flags<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    const MAP: &[(&str, &str)] = &[
        ("-lc", "--lowercase"),
        ("-tok", "--tokenize"),
        ("-sl", "--sentence-level"),
        ("-sv", "--smooth-value"),
        ("-nr", "--num-refs"),
        ("-cc", "--chrf-char-order"),
        ("-cw", "--chrf-word-order"),
        ("-pbs", "--paired-bs"),
        ("-pbsn", "--paired-bs-n"),
        ("-sh", "--short"),
    ];
    args.into_iter()
        .map(|a| match MAP.iter().find(|(short, _)| *short == a) {
            Some((_, long)) => long.to_string(),
            None => a,
        })
        .collect()
}

/// Lines of a text file as sacreBLEU reads them: split on `\n` only, right-stripped.
fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_lines(bytes, &path.display().to_string())
}

fn decode_lines(bytes: Vec<u8>, name: &str) -> anyhow::Result<Vec<String>> {
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{name}: line {line} is not valid UTF-8 (byte offset {at})")
    })?;
    Ok(text
        .split_terminator('\n')
        .map(|l| py_rstrip(l).to_string())
        .collect())
}

/// Reference streams: one per file, or `num_refs` tab-separated ones from a single file.
fn read_refs(args: &BleuArgs) -> anyhow::Result<Vec<Vec<String>>> {
    if args.num_refs == 0 {
        bail!("--num-refs must be at least 1");
    }
    if args.num_refs == 1 {
        return args.refs.iter().map(|p| read_lines(p)).collect();
    }
    if args.refs.len() != 1 {
        bail!(
            "--num-refs {} needs exactly one reference file, got {}",
            args.num_refs,
            args.refs.len()
        );
    }
    let path = &args.refs[0];
    let mut streams = vec![Vec::new(); args.num_refs];
    for (n, line) in read_lines(path)?.iter().enumerate() {
        let fields: Vec<&str> = line.splitn(args.num_refs, '\t').collect();
        if fields.len() != args.num_refs {
            bail!(
                "{}: line {}: expected {} tab-separated references, found {}",
                path.display(),
                n + 1,
                args.num_refs,
                fields.len()
            );
        }
        for (stream, f) in streams.iter_mut().zip(fields) {
            stream.push(f.to_string());
        }
    }
    Ok(streams)
}

/// `(name, lines)` per system: one per -i file, or one per tab-separated stdin column.
fn read_systems(args: &BleuArgs) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    if let Some(files) = &args.input {
        let mut systems = Vec::new();
        for f in files {
            let name = f.display().to_string();
            if systems.iter().any(|(n, _)| *n == name) {
                bail!("{name} is given twice as a system");
            }
            systems.push((name, read_lines(f)?));
        }
        return Ok(systems);
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .context("cannot read the hypothesis from stdin")?;
    let lines = decode_lines(bytes, "stdin")?;
    let n_sys = lines.first().map_or(1, |l| l.split('\t').count());
    let mut systems: Vec<(String, Vec<String>)> = (0..n_sys)
        .map(|i| (format!("System {}", i + 1), Vec::with_capacity(lines.len())))
        .collect();
    for (n, line) in lines.iter().enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != n_sys {
            bail!(
                "stdin: line {}: {} tab-separated systems, but the first line has {n_sys}",
                n + 1,
                fields.len()
            );
        }
        for ((_, sys), f) in systems.iter_mut().zip(fields) {
            sys.push(py_rstrip(f).to_string());
        }
    }
    Ok(systems)
}

/// The metrics in sacreBLEU's output order (BLEU before chrF).
fn build_metrics(args: &BleuArgs) -> anyhow::Result<Vec<Box<dyn Metric>>> {
    let mut names = args.metrics.clone();
    names.sort();
    names.dedup();
    let mut metrics: Vec<Box<dyn Metric>> = Vec::new();
    for name in names {
        match name {
            MetricName::Bleu => {
                if args.smooth_value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    bail!("--smooth-value must be a non-negative number");
                }
                metrics.push(Box::new(Bleu::new(BleuConfig {
                    tokenize: args.tokenize,
                    lowercase: args.lowercase,
                    smooth_method: args.smooth_method,
                    smooth_value: args.smooth_value,
                    effective_order: args.sentence_level,
                })))
            }
            MetricName::Chrf => {
                let cfg = ChrfConfig {
                    char_order: args.chrf_char_order,
                    word_order: args.chrf_word_order,
                    beta: args.chrf_beta,
                    lowercase: args.chrf_lowercase,
                    whitespace: args.chrf_whitespace,
                    eps_smoothing: args.chrf_eps_smoothing,
                };
                cfg.validate()?;
                metrics.push(Box::new(Chrf::new(cfg)))
            }
        }
    }
    Ok(metrics)
}

/// sacreBLEU's `Score.format` in text mode.
fn text_line(name: &str, sig: &str, score: f64, verbose: &str, args: &BleuArgs) -> String {
    let sc = format!("{score:.*}", args.width);
    if args.score_only {
        return sc;
    }
    let mut line = format!("{name}|{sig} = {sc}");
    if !verbose.is_empty() {
        line.push(' ');
        line.push_str(verbose);
    }
    line
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// sacreBLEU's `Score.format` in JSON mode: `json.dumps(d, indent=1, ensure_ascii=False)`.
/// rnmt always includes `verbose_score` (empty for chrF) so every object has the same keys.
fn json_object(name: &str, sig: &str, score: f64, verbose: &str, width: usize) -> String {
    let rounded: f64 = format!("{score:.width$}")
        .parse()
        .expect("a formatted float parses");
    let mut fields = vec![
        ("name".to_string(), json_str(name)),
        ("score".to_string(), py_float_repr(rounded)),
        ("signature".to_string(), json_str(sig)),
        ("verbose_score".to_string(), json_str(verbose)),
    ];
    for kv in sig.split('|') {
        if let Some((k, v)) = kv.split_once(':') {
            fields.push((k.to_string(), json_str(v)));
        }
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!(" {}: {v}", json_str(k)))
        .collect();
    format!("{{\n{}\n}}", body.join(",\n"))
}

pub fn run(args: &BleuArgs) -> anyhow::Result<()> {
    let metrics = build_metrics(args)?;
    let refs = read_refs(args)?;
    let systems = read_systems(args)?;
    let ref_views: Vec<Vec<&str>> = refs
        .iter()
        .map(|r| r.iter().map(String::as_str).collect())
        .collect();
    for (name, lines) in &systems {
        if lines.is_empty() {
            bail!("hypothesis {name} has no lines");
        }
        for (k, r) in refs.iter().enumerate() {
            if r.len() != lines.len() {
                let ref_name = if args.num_refs > 1 {
                    format!("reference stream {} of {}", k + 1, args.refs[0].display())
                } else {
                    args.refs[k].display().to_string()
                };
                bail!(
                    "line counts differ: hypothesis {name} has {} lines but reference {ref_name} has {} lines",
                    lines.len(),
                    r.len()
                );
            }
        }
    }
    let views: Vec<Vec<&str>> = systems
        .iter()
        .map(|(_, l)| l.iter().map(String::as_str).collect())
        .collect();
    let nrefs = refs.len();
    if args.paired_bs && systems.len() < 2 && !args.sentence_level {
        // As sacreBLEU: a paired test compares a baseline with other systems.
        bail!(
            "--paired-bs needs at least two systems given to -i (the first is the baseline), got {}",
            systems.len()
        );
    }

    if args.sentence_level {
        if systems.len() > 1 || args.paired_bs {
            bail!("sentence-level scoring takes exactly one system and no paired test");
        }
        // As sacreBLEU: only the first metric given is used at sentence level.
        let first = args.metrics[0];
        let metric = metrics
            .iter()
            .find(|m| (first == MetricName::Bleu) == (m.name() == "BLEU"))
            .expect("every requested metric was built");
        let w = metric.stats_width();
        let stats = metric.segment_stats(&views[0], &ref_views)?;
        let sig = metric.signature_with(nrefs, &[], args.short);
        let name = metric.name();
        let mut out = String::new();
        for seg in stats.chunks_exact(w) {
            let score = metric.score_from_stats(seg);
            out.push_str(&text_line(
                &name,
                &sig,
                score,
                &metric.verbose_from_stats(seg),
                args,
            ));
            out.push('\n');
        }
        print!("{out}");
        return Ok(());
    }

    if systems.len() == 1 {
        let mut results = Vec::new();
        for metric in &metrics {
            let stats = metric.corpus_stats(&views[0], &ref_views)?;
            let score = metric.score_from_stats(&stats);
            let verbose = metric.verbose_from_stats(&stats);
            let name = metric.name();
            results.push(match args.format {
                OutputFormat::Json => json_object(
                    &name,
                    &metric.signature_with(nrefs, &[], false),
                    score,
                    &verbose,
                    args.width,
                ),
                OutputFormat::Text => text_line(
                    &name,
                    &metric.signature_with(nrefs, &[], args.short),
                    score,
                    &verbose,
                    args,
                ),
            });
        }
        print_single(&results, args.format);
        return Ok(());
    }

    if args.paired_bs {
        let bs = BootstrapConfig {
            n_samples: args.paired_bs_n,
            seed: args.seed,
        };
        if bs.n_samples == 0 {
            bail!("--paired-bs-n must be at least 1");
        }
        let mut columns = Vec::new();
        for metric in &metrics {
            let stats: Vec<Vec<u64>> = views
                .iter()
                .map(|v| metric.segment_stats(v, &ref_views))
                .collect::<Result<_, _>>()?;
            let results = paired_bootstrap(metric.as_ref(), &stats, &bs);
            let extra = [
                ("bs", bs.n_samples.to_string()),
                ("seed", bs.seed.to_string()),
            ];
            columns.push((
                metric.name(),
                metric.signature_with(nrefs, &extra, args.short),
                results,
            ));
        }
        let mut names: Vec<String> = systems.iter().map(|(n, _)| n.clone()).collect();
        names[0] = if args.input.is_some() {
            format!("Baseline: {}", names[0])
        } else {
            "Baseline".to_string()
        };
        if args.input.is_none() {
            for (i, n) in names.iter_mut().enumerate().skip(1) {
                *n = format!("System {i}");
            }
        }
        print_paired(&names, &columns, args);
        return Ok(());
    }

    // Several systems, no test: one row of scores per system.
    let mut columns = Vec::new();
    for metric in &metrics {
        let mut scores = Vec::new();
        for v in &views {
            scores.push(metric.score_from_stats(&metric.corpus_stats(v, &ref_views)?));
        }
        columns.push((
            metric.name(),
            metric.signature_with(nrefs, &[], args.short),
            scores,
        ));
    }
    let names: Vec<&str> = systems.iter().map(|(n, _)| n.as_str()).collect();
    match args.format {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut row = serde_json::Map::new();
                    row.insert("system".into(), (*n).into());
                    for (metric, _, scores) in &columns {
                        row.insert(
                            metric.clone(),
                            format!("{:.*}", args.width, scores[i]).into(),
                        );
                    }
                    serde_json::Value::Object(row)
                })
                .collect();
            println!("{}", pretty_json(&serde_json::Value::Array(rows)));
        }
        OutputFormat::Text => {
            let header: Vec<String> = std::iter::once("System".to_string())
                .chain(columns.iter().map(|c| c.0.clone()))
                .collect();
            let rows: Vec<Vec<String>> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    std::iter::once(n.to_string())
                        .chain(columns.iter().map(|c| format!("{:.*}", args.width, c.2[i])))
                        .collect()
                })
                .collect();
            print_table(&header, &rows);
            print_signatures(columns.iter().map(|c| (&c.0, &c.1)));
        }
    }
    Ok(())
}

fn print_single(results: &[String], format: OutputFormat) {
    match format {
        OutputFormat::Json if results.len() > 1 => println!("[\n{}\n]", results.join(",\n")),
        OutputFormat::Json => println!("{}", results[0]),
        OutputFormat::Text => {
            // Align the lines on their '=' as sacreBLEU does.
            let w = results
                .iter()
                .filter_map(|l| l.find('='))
                .max()
                .unwrap_or(0);
            for line in results {
                match line.find('=') {
                    Some(at) if at > 0 => {
                        println!("{:>pad$}{}", &line[..at - 1], &line[at - 1..], pad = w - 1)
                    }
                    _ => println!("{line}"),
                }
            }
        }
    }
}

/// JSON with sacreBLEU's 4-space indentation and key order.
fn pretty_json(v: &serde_json::Value) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("JSON values serialise");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

type PairedColumn = (String, String, Vec<PairedResult>);

fn print_paired(names: &[String], columns: &[PairedColumn], args: &BleuArgs) {
    let w = args.width;
    match args.format {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut row = serde_json::Map::new();
                    row.insert("system".into(), n.as_str().into());
                    for (metric, _, results) in columns {
                        let r = &results[i];
                        row.insert(
                            metric.clone(),
                            serde_json::json!({"score": r.score, "p_value": r.p_value, "mean": r.mean, "ci": r.ci}),
                        );
                    }
                    serde_json::Value::Object(row)
                })
                .collect();
            println!("{}", pretty_json(&serde_json::Value::Array(rows)));
        }
        OutputFormat::Text => {
            let header: Vec<String> = std::iter::once("System".to_string())
                .chain(columns.iter().map(|c| format!("{} (μ ± 95% CI)", c.0)))
                .collect();
            let rows: Vec<Vec<String>> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    std::iter::once(n.clone())
                        .chain(columns.iter().map(|c| {
                            let r = &c.2[i];
                            let mut s = format!("{:.w$} ({:.w$} ± {:.w$})", r.score, r.mean, r.ci);
                            if let Some(p) = r.p_value {
                                s.push_str(&format!(" (p = {p:.4})"));
                                if p <= 0.05 {
                                    s.push('*');
                                }
                            }
                            s
                        }))
                        .collect()
                })
                .collect();
            print_table(&header, &rows);
            let msg = format!(
                "Paired bootstrap resampling test with {} resampling trials",
                args.paired_bs_n
            );
            println!(
                "{}\n{msg}\n{}",
                "-".repeat(msg.len()),
                "-".repeat(msg.len())
            );
            println!(" - Each system is pairwise compared to {}.", names[0]);
            println!("   Actual system score / bootstrap estimated true mean / 95% CI are provided for each metric.");
            println!(" - p-values < 0.05 (marked with \"*\") mean the score difference is unlikely to be due to chance.");
            println!();
            print_signatures(columns.iter().map(|c| (&c.0, &c.1)));
        }
    }
}

fn print_table(header: &[String], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            std::iter::once(&header[c])
                .chain(rows.iter().map(|r| &r[c]))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("{}", line(header));
    println!(
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for r in rows {
        println!("{}", line(r));
    }
    println!();
}

fn print_signatures<'a>(sigs: impl Iterator<Item = (&'a String, &'a String)>) {
    println!("-----------------\nMetric signatures\n-----------------");
    for (name, sig) in sigs {
        println!(" - {name:<10} {sig}");
    }
}
