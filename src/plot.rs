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
    crate::train::checkpoint::write_atomic(&out, svg.as_bytes())?;
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
