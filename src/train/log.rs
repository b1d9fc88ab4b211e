//! The training log: `metrics.jsonl` (one JSON object per logged step and per
//! validation), and what the user sees on stderr (a progress bar on a terminal, plain
//! periodic lines otherwise).

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::io::write_atomic;

pub const METRICS_FILE: &str = "metrics.jsonl";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// One update. `loss` is the training objective (label-smoothed cross-entropy per
    /// target token); `ppl` is `exp` of the plain cross-entropy per token.
    Train {
        step: u64,
        epoch: u64,
        #[serde(
            default = "finite::missing",
            skip_serializing_if = "finite::not",
            deserialize_with = "finite::or_null"
        )]
        loss: f64,
        #[serde(
            default = "finite::missing",
            skip_serializing_if = "finite::not",
            deserialize_with = "finite::or_null"
        )]
        ppl: f64,
        lr: f64,
        #[serde(
            default = "finite::missing",
            skip_serializing_if = "finite::not",
            deserialize_with = "finite::or_null"
        )]
        grad_norm: f64,
        target_tokens: usize,
        #[serde(
            default = "finite::missing",
            skip_serializing_if = "finite::not",
            deserialize_with = "finite::or_null"
        )]
        tokens_per_s: f64,
        elapsed_s: f64,
    },
    /// One validation on the dev set.
    Valid {
        step: u64,
        epoch: u64,
        #[serde(
            default = "finite::missing",
            skip_serializing_if = "finite::not",
            deserialize_with = "finite::or_null"
        )]
        valid_loss: f64,
        #[serde(
            default = "finite::missing",
            skip_serializing_if = "finite::not",
            deserialize_with = "finite::or_null"
        )]
        valid_ppl: f64,
        #[serde(
            default = "finite::missing",
            skip_serializing_if = "finite::not",
            deserialize_with = "finite::or_null"
        )]
        bleu: f64,
        /// Empty (and left out) for a language model.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        bleu_signature: String,
        sentences: usize,
        best: bool,
    },
}

/// Non-finite numbers (a diverged loss, the perplexity `exp` of a large one) are not
/// JSON: such a field is left out of the line and reads back as NaN, as does the `null`
/// that earlier versions wrote for them.
mod finite {
    use serde::{Deserialize, Deserializer};

    pub fn not(v: &f64) -> bool {
        !v.is_finite()
    }

    pub fn missing() -> f64 {
        f64::NAN
    }

    pub fn or_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

impl Record {
    pub fn step(&self) -> u64 {
        match self {
            Record::Train { step, .. } | Record::Valid { step, .. } => *step,
        }
    }
}

/// Appends records to `RUN/metrics.jsonl`, one flushed line each.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens the log of a run. `resume_step`: when continuing from a checkpoint, lines
    /// after that step (written before an interruption, for updates that will be
    /// redone) are dropped first, so the log reads as one uninterrupted run.
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        match resume_step {
            Some(step) if path.exists() => {
                let kept: Vec<String> = read_lines(&path)?
                    .into_iter()
                    .filter(|(_, r)| r.step() <= step)
                    .map(|(line, _)| line + "\n")
                    .collect();
                write_atomic(&path, kept.concat().as_bytes())?;
            }
            Some(_) => {}
            None => write_atomic(&path, b"")?,
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path, file })
    }

    pub fn write(&mut self, record: &Record) -> Result<()> {
        let line = serde_json::to_string(record)?;
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        crate::io::crash_point("metrics.write");
        Ok(())
    }
}

/// The lines of a metrics file with their records. A last line without its newline
/// that does not parse is what a write cut short (a full disk, a kill) leaves: it is
/// dropped with a warning, so the run can resume. Any other bad line is an error.
fn read_lines(path: &Path) -> Result<Vec<(String, Record)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let complete = bytes.ends_with(b"\n");
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if complete {
        lines.pop();
    }
    let last = lines.len();
    let mut out = Vec::new();
    for (i, raw) in lines.into_iter().enumerate() {
        if raw.trim_ascii().is_empty() {
            continue;
        }
        let parsed = std::str::from_utf8(raw)
            .map_err(anyhow::Error::from)
            .and_then(|line| Ok((line, serde_json::from_str::<Record>(line)?)));
        match parsed {
            Ok((line, r)) => out.push((line.to_string(), r)),
            Err(_) if i + 1 == last && !complete => {
                eprintln!(
                    "warning: {}:{}: dropped an unfinished last line ({} bytes, no newline: \
                     a write cut short)",
                    path.display(),
                    i + 1,
                    raw.len()
                );
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}:{}: not a metrics record", path.display(), i + 1))
            }
        }
    }
    Ok(out)
}

/// All records of a metrics file, in order.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    Ok(read_lines(path)?.into_iter().map(|(_, r)| r).collect())
}

/// Progress display: an indicatif bar when stderr is a terminal, otherwise a plain line
/// every `interval`.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// When the last plain line was printed (None: print the next update at once).
    last_line: Option<Instant>,
    interval: Duration,
    /// Shows nothing: the ranks other than 0 of a data-parallel run.
    hidden: bool,
}

impl Progress {
    /// `total_steps`: the step limit, if any, for the bar's length and ETA.
    pub fn new(total_steps: Option<u64>, start_step: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_steps {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total_steps.is_some() {
                "{bar:30} {pos}/{len} {msg} ETA {eta}"
            } else {
                "{spinner} step {pos} {msg} {elapsed}"
            };
            bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
            bar.set_position(start_step);
            bar
        });
        Self {
            bar,
            last_line: None,
            interval: Duration::from_secs(30),
            hidden: false,
        }
    }

    /// A display that shows nothing.
    pub fn hidden() -> Self {
        Self {
            bar: None,
            last_line: None,
            interval: Duration::from_secs(30),
            hidden: true,
        }
    }

    pub fn update(&mut self, step: u64, epoch: u64, loss: f64, ppl: f64, tok_s: f64, lr: f64) {
        if self.hidden {
            return;
        }
        let msg = format!("epoch {epoch} loss {loss:.3} ppl {ppl:.2} {tok_s:.0} tok/s lr {lr:.2e}");
        match &self.bar {
            Some(bar) => {
                bar.set_position(step);
                bar.set_message(msg);
            }
            None if self.last_line.is_none_or(|t| t.elapsed() >= self.interval) => {
                eprintln!("step {step} {msg}");
                self.last_line = Some(Instant::now());
            }
            None => {}
        }
    }

    /// A line that must not be overwritten by the bar (validations, checkpoints).
    pub fn println(&self, line: &str) {
        if self.hidden {
            return;
        }
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64, loss: f64) -> Record {
        Record::Train {
            step,
            epoch: 0,
            loss,
            ppl: loss.exp(),
            lr: 1e-3,
            grad_norm: 1.0,
            target_tokens: 10,
            tokens_per_s: 100.0,
            elapsed_s: 0.5,
        }
    }

    #[test]
    fn roundtrip_exactly_and_truncate_on_resume() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut log = MetricsLog::open(dir.path(), None)?;
        let loss = 2.345_678_9_f32 as f64;
        for s in 1..=5 {
            log.write(&train(s, loss / s as f64))?;
        }
        drop(log);
        let back = read_metrics(&dir.path().join(METRICS_FILE))?;
        assert_eq!(
            back,
            (1..=5)
                .map(|s| train(s, loss / s as f64))
                .collect::<Vec<_>>()
        );
        let mut log = MetricsLog::open(dir.path(), Some(3))?;
        log.write(&train(4, 9.0))?;
        let back = read_metrics(&dir.path().join(METRICS_FILE))?;
        assert_eq!(
            back.iter().map(Record::step).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(back[3], train(4, 9.0));
        Ok(())
    }

    #[test]
    fn non_finite_numbers_are_left_out_and_old_nulls_read() -> Result<()> {
        let mut r = train(3, f64::NAN);
        if let Record::Train { ppl, .. } = &mut r {
            *ppl = f64::INFINITY;
        }
        let line = serde_json::to_string(&r)?;
        assert!(!line.contains("loss") && !line.contains("ppl") && !line.contains("null"));
        let back: Record = serde_json::from_str(&line)?;
        let old = line.replace("\"lr\"", "\"loss\":null,\"ppl\":null,\"lr\"");
        for r in [back, serde_json::from_str(&old)?] {
            match r {
                Record::Train {
                    step, loss, ppl, ..
                } => {
                    assert!(step == 3 && loss.is_nan() && ppl.is_nan())
                }
                _ => panic!("a train record"),
            }
        }
        Ok(())
    }

    #[test]
    fn an_unfinished_last_line_is_dropped_on_resume() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join(METRICS_FILE);
        let full: String = (1..=3)
            .map(|s| serde_json::to_string(&train(s, 1.0)).unwrap() + "\n")
            .collect();
        // A full disk cut the fourth line short (mid-way through a UTF-8 sequence too).
        let mut bytes = full.clone().into_bytes();
        bytes.extend_from_slice(b"{\"kind\":\"train\",\"step\":4,\"lo\xc3");
        std::fs::write(&p, &bytes)?;
        assert_eq!(read_metrics(&p)?.len(), 3);
        let mut log = MetricsLog::open(dir.path(), Some(2))?;
        log.write(&train(3, 2.0))?;
        let back = read_metrics(&p)?;
        assert_eq!(back, vec![train(1, 1.0), train(2, 1.0), train(3, 2.0)]);
        // A bad line that is not the unfinished last one is still an error.
        std::fs::write(&p, format!("{{oops\n{full}"))?;
        let e = format!("{:#}", read_metrics(&p).unwrap_err());
        assert!(e.contains("metrics.jsonl:1"), "{e}");
        std::fs::write(&p, format!("{full}{{oops\n"))?;
        assert!(read_metrics(&p).is_err());
        Ok(())
    }

    #[test]
    fn bad_line_is_reported_with_its_number() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join(METRICS_FILE);
        std::fs::write(
            &p,
            format!(
                "{}\n{{\"kind\":\"oops\"}}\n",
                serde_json::to_string(&train(1, 1.0))?
            ),
        )?;
        let e = format!("{:#}", read_metrics(&p).unwrap_err());
        assert!(e.contains("metrics.jsonl:2"), "{e}");
        Ok(())
    }
}
