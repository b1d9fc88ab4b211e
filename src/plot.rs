//! Learning curves: training loss and validation BLEU over steps, as SVG.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::train::log::{read_metrics, Record, METRICS_FILE};

pub const CURVE_FILE: &str = "curve.svg";

/// Reads `RUN/metrics.jsonl` and writes `RUN/curve.svg`; returns the picture's path.
pub fn plot_run(run_dir: &Path) -> Result<std::path::PathBuf> {
    let records = read_metrics(&run_dir.join(METRICS_FILE))?;
    let out = run_dir.join(CURVE_FILE);
    let svg = learning_curve_svg(&records)?;
    crate::io::write_atomic(&out, svg.as_bytes())?;
    Ok(out)
}

/// The learning curve as SVG text: loss (and validation loss) on top, BLEU below.
pub fn learning_curve_svg(records: &[Record]) -> Result<String> {
    let mut loss = Vec::new();
    let mut valid_loss = Vec::new();
    let mut bleu = Vec::new();
    for r in records {
        match r {
            Record::Train { step, loss: l, .. } => loss.push((*step as f64, *l)),
            Record::Valid {
                step,
                valid_loss: vl,
                bleu: b,
                ..
            } => {
                valid_loss.push((*step as f64, *vl));
                bleu.push((*step as f64, *b));
            }
        }
    }
    if loss.is_empty() {
        anyhow::bail!("no training steps logged yet: nothing to plot");
    }
    let loss = smooth(&loss);
    let max_step = loss.iter().chain(&bleu).map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = loss
        .iter()
        .chain(&valid_loss)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let max_bleu = bleu.iter().map(|p| p.1).fold(1.0, f64::max);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (top, bottom) = root.split_vertically(300);
        let mut chart = ChartBuilder::on(&top)
            .caption("loss per target token", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_step, (lo * 0.95)..(hi * 1.05 + 1e-9))
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(loss, &BLUE))
            .map_err(plot_err)?
            .label("train (smoothed)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !valid_loss.is_empty() {
            chart
                .draw_series(LineSeries::new(valid_loss.clone(), &RED))
                .map_err(plot_err)?
                .label("valid")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;

        let mut chart = ChartBuilder::on(&bottom)
            .caption("validation BLEU", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_step, 0f64..max_bleu * 1.1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(bleu.clone(), &GREEN))
            .map_err(plot_err)?;
        chart
            .draw_series(bleu.iter().map(|&p| Circle::new(p, 3, GREEN.filled())))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// A centred moving average: per-step losses are noisy.
fn smooth(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let w = (points.len() / 50).max(1);
    (0..points.len())
        .map(|i| {
            let a = i.saturating_sub(w);
            let b = (i + w + 1).min(points.len());
            let mean = points[a..b].iter().map(|p| p.1).sum::<f64>() / (b - a) as f64;
            (points[i].0, mean)
        })
        .collect()
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the learning curve: {e:?}")
}

/// For callers that want a context on the run folder.
pub fn plot_run_dir(run_dir: &Path) -> Result<std::path::PathBuf> {
    plot_run(run_dir).with_context(|| format!("plotting {}", run_dir.display()))
}

/// Fails unless `path` names an SVG file: the heatmap is drawn with plotters' SVG
/// backend (a PNG backend would need font rendering this build does not include).
pub fn check_attention_plot_path(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if ext.as_deref() != Some("svg") {
        anyhow::bail!(
            "attention plot {}: only SVG output is supported; use a file name ending in .svg",
            path.display()
        );
    }
    Ok(())
}

/// Writes [`attention_heatmap_svg`] to `path` (which must end in `.svg`).
pub fn write_attention_plot(
    path: &Path,
    source: &[String],
    target: &[String],
    weights: &[Vec<f32>],
) -> Result<()> {
    check_attention_plot_path(path)?;
    let svg = attention_heatmap_svg(source, target, weights)?;
    crate::io::write_atomic(path, svg.as_bytes())
        .with_context(|| format!("writing the attention plot {}", path.display()))
}

/// The attention matrix of one sentence pair as an SVG heatmap: source tokens along the
/// top (rotated), target tokens down the left, one cell per weight (white 0 → dark blue
/// 1). `weights[j][i]` is the attention of target token j on source token i.
pub fn attention_heatmap_svg(
    source: &[String],
    target: &[String],
    weights: &[Vec<f32>],
) -> Result<String> {
    if weights.len() != target.len() || weights.iter().any(|r| r.len() != source.len()) {
        anyhow::bail!(
            "attention plot: {} target tokens and {} source tokens, but the matrix is {}×{}",
            target.len(),
            source.len(),
            weights.len(),
            weights.first().map_or(0, Vec::len)
        );
    }
    const CELL: i32 = 24;
    const CHAR: i32 = 8;
    let label = |t: &String| t.trim().replace(char::is_control, "\u{fffd}");
    let longest = |ts: &[String]| {
        ts.iter()
            .map(|t| label(t).chars().count())
            .max()
            .unwrap_or(1)
    };
    let left = 16 + CHAR * longest(target) as i32;
    let top = 16 + CHAR * longest(source) as i32;
    let width = left + CELL * source.len().max(1) as i32 + 16;
    let height = top + CELL * target.len().max(1) as i32 + 16;

    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let font = ("sans-serif", 14).into_font();
        let below = font.color(&BLACK);
        let rotated = font.transform(FontTransform::Rotate270).color(&BLACK);
        for (i, s) in source.iter().enumerate() {
            let x = left + CELL * i as i32 + CELL / 2 - 7;
            root.draw_text(&label(s), &rotated, (x, top - 6))
                .map_err(plot_err)?;
        }
        for (j, (t, row)) in target.iter().zip(weights).enumerate() {
            let y = top + CELL * j as i32;
            root.draw_text(&label(t), &below, (8, y + CELL / 2 - 7))
                .map_err(plot_err)?;
            for (i, &w) in row.iter().enumerate() {
                let x = left + CELL * i as i32;
                let w = if w.is_finite() {
                    w.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let shade = |full: f32| (255.0 - (255.0 - full) * w) as u8;
                let color = RGBColor(shade(8.0), shade(48.0), shade(107.0));
                root.draw(&Rectangle::new(
                    [(x, y), (x + CELL, y + CELL)],
                    color.filled(),
                ))
                .map_err(plot_err)?;
            }
        }
        root.draw(&Rectangle::new(
            [
                (left, top),
                (
                    left + CELL * source.len() as i32,
                    top + CELL * target.len() as i32,
                ),
            ],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_both_panels() -> Result<()> {
        let mut records = Vec::new();
        for step in 1..=200u64 {
            records.push(Record::Train {
                step,
                epoch: 0,
                loss: 5.0 / (step as f64).sqrt(),
                ppl: 1.0,
                lr: 1e-3,
                grad_norm: 1.0,
                target_tokens: 100,
                tokens_per_s: 1000.0,
                elapsed_s: step as f64,
            });
            if step % 50 == 0 {
                records.push(Record::Valid {
                    step,
                    epoch: 0,
                    valid_loss: 4.0 / (step as f64).sqrt(),
                    valid_ppl: 1.0,
                    bleu: step as f64 / 10.0,
                    bleu_signature: String::new(),
                    sentences: 10,
                    best: true,
                });
            }
        }
        let svg = learning_curve_svg(&records)?;
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("validation BLEU"));
        // Two line series on top, one line and four markers below.
        assert!(svg.matches("<polyline").count() >= 3, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(learning_curve_svg(&[]).is_err());
        Ok(())
    }
}
