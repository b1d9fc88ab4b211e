//! Pictures: learning curves (training loss and validation BLEU over steps or over
//! minutes of training, SVG) and attention heatmaps (SVG or PNG).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::train::log::{read_metrics, Record, METRICS_FILE};

pub const CURVE_FILE: &str = "curve.svg";
/// The learning curve against wall-clock minutes (`rnmt plot --minutes`).
pub const CURVE_MINUTES_FILE: &str = "curve-minutes.svg";

/// What a learning curve's x axis counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CurveAxis {
    /// Updates.
    #[default]
    Steps,
    /// Minutes of training, wall clock (`elapsed_s` of the log, which a resumed run
    /// continues): how recipes with a time budget compare.
    Minutes,
}

/// DejaVu Sans (Bitstream Vera licence, assets/fonts/DejaVuSans.LICENSE), built in so
/// that PNG text renders the same on a machine without fonts; plotters also measures
/// text with it when laying out SVG.
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Registers [`FONT`] as plotters' "sans-serif" (once); every drawing calls it first.
fn register_fonts() -> Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    anyhow::ensure!(ok, "the built-in font does not load");
    Ok(())
}

/// Reads `RUN/metrics.jsonl` and writes `RUN/curve.svg`; returns the picture's path.
pub fn plot_run(run_dir: &Path) -> Result<std::path::PathBuf> {
    plot_run_on(run_dir, CurveAxis::Steps)
}

/// Reads `RUN/metrics.jsonl` and writes the learning curve over `axis` into the run
/// folder (`curve.svg` over steps, `curve-minutes.svg` over minutes); returns its path.
pub fn plot_run_on(run_dir: &Path, axis: CurveAxis) -> Result<std::path::PathBuf> {
    let records = read_metrics(&run_dir.join(METRICS_FILE))?;
    let out = run_dir.join(match axis {
        CurveAxis::Steps => CURVE_FILE,
        CurveAxis::Minutes => CURVE_MINUTES_FILE,
    });
    let svg = learning_curve_svg_on(&records, axis)?;
    crate::io::write_atomic(&out, svg.as_bytes())?;
    Ok(out)
}

/// The learning curve over steps as SVG text: loss (and validation loss) on top, BLEU
/// below.
pub fn learning_curve_svg(records: &[Record]) -> Result<String> {
    learning_curve_svg_on(records, CurveAxis::Steps)
}

/// (x, y) points of the training loss, the validation loss and the validation BLEU.
type CurvePoints = (Vec<(f64, f64)>, Vec<(f64, f64)>, Vec<(f64, f64)>);

/// A learning curve's points over `axis`. A validation has no clock of its own in the
/// log: it is placed at the time of the update it follows.
fn curve_points(records: &[Record], axis: CurveAxis) -> CurvePoints {
    let mut loss = Vec::new();
    let mut valid_loss = Vec::new();
    let mut bleu = Vec::new();
    let mut minutes = 0.0;
    let x = |step: u64, minutes: f64| match axis {
        CurveAxis::Steps => step as f64,
        CurveAxis::Minutes => minutes,
    };
    for r in records {
        match r {
            Record::Train {
                step,
                loss: l,
                elapsed_s,
                ..
            } => {
                minutes = elapsed_s / 60.0;
                loss.push((x(*step, minutes), *l));
            }
            Record::Valid {
                step,
                valid_loss: vl,
                bleu: b,
                ..
            } => {
                valid_loss.push((x(*step, minutes), *vl));
                bleu.push((x(*step, minutes), *b));
            }
        }
    }
    (loss, valid_loss, bleu)
}

/// [`learning_curve_svg`] over `axis`.
pub fn learning_curve_svg_on(records: &[Record], axis: CurveAxis) -> Result<String> {
    register_fonts()?;
    let (loss, valid_loss, bleu) = curve_points(records, axis);
    let x_desc = match axis {
        CurveAxis::Steps => "step",
        CurveAxis::Minutes => "minutes of training",
    };
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
            .x_desc(x_desc)
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
            .x_desc(x_desc)
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

/// [`plot_run_on`] with the run folder named in an error.
pub fn plot_run_dir(run_dir: &Path, axis: CurveAxis) -> Result<std::path::PathBuf> {
    plot_run_on(run_dir, axis).with_context(|| format!("plotting {}", run_dir.display()))
}

/// The picture formats of an attention plot, chosen by the file name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlotFormat {
    Svg,
    Png,
}

/// The format `path` asks for (`.svg` or `.png`, any case); anything else is an error
/// naming the file.
pub fn check_attention_plot_path(path: &Path) -> Result<PlotFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => Ok(PlotFormat::Svg),
        Some("png") => Ok(PlotFormat::Png),
        _ => anyhow::bail!(
            "attention plot {}: use a file name ending in .svg or .png",
            path.display()
        ),
    }
}

/// Writes the attention heatmap of one sentence pair to `path`, as SVG or PNG by its
/// extension.
pub fn write_attention_plot(
    path: &Path,
    source: &[String],
    target: &[String],
    weights: &[Vec<f32>],
) -> Result<()> {
    let bytes = match check_attention_plot_path(path)? {
        PlotFormat::Svg => attention_heatmap_svg(source, target, weights)?.into_bytes(),
        PlotFormat::Png => attention_heatmap_png(source, target, weights)?,
    };
    crate::io::write_atomic(path, &bytes)
        .with_context(|| format!("writing the attention plot {}", path.display()))
}

/// Where the cells and labels of a heatmap go.
struct HeatmapLayout {
    left: i32,
    top: i32,
    width: u32,
    height: u32,
}

const CELL: i32 = 24;

fn label(t: &str) -> String {
    t.trim().replace(char::is_control, "\u{fffd}")
}

fn heatmap_layout(
    source: &[String],
    target: &[String],
    weights: &[Vec<f32>],
) -> Result<HeatmapLayout> {
    if weights.len() != target.len() || weights.iter().any(|r| r.len() != source.len()) {
        anyhow::bail!(
            "attention plot: {} target tokens and {} source tokens, but the matrix is {}×{}",
            target.len(),
            source.len(),
            weights.len(),
            weights.first().map_or(0, Vec::len)
        );
    }
    const CHAR: i32 = 8;
    let longest = |ts: &[String]| {
        ts.iter()
            .map(|t| label(t).chars().count())
            .max()
            .unwrap_or(1)
    };
    let left = 16 + CHAR * longest(target) as i32;
    let top = 16 + CHAR * longest(source) as i32;
    Ok(HeatmapLayout {
        left,
        top,
        width: (left + CELL * source.len().max(1) as i32 + 16) as u32,
        height: (top + CELL * target.len().max(1) as i32 + 16) as u32,
    })
}

/// Draws the heatmap on any plotters backend: source tokens along the top (rotated),
/// target tokens down the left, one cell per weight (white 0 → dark blue 1).
fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    layout: &HeatmapLayout,
    source: &[String],
    target: &[String],
    weights: &[Vec<f32>],
) -> Result<()> {
    let (left, top) = (layout.left, layout.top);
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
    let corner = (
        left + CELL * source.len() as i32,
        top + CELL * target.len() as i32,
    );
    root.draw(&Rectangle::new(
        [(left, top), corner],
        BLACK.stroke_width(1),
    ))
    .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// The attention matrix of one sentence pair as an SVG heatmap. `weights[j][i]` is the
/// attention of target token j on source token i.
pub fn attention_heatmap_svg(
    source: &[String],
    target: &[String],
    weights: &[Vec<f32>],
) -> Result<String> {
    register_fonts()?;
    let layout = heatmap_layout(source, target, weights)?;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (layout.width, layout.height)).into_drawing_area();
        draw_heatmap(&root, &layout, source, target, weights)?;
    }
    Ok(svg)
}

/// The same heatmap as [`attention_heatmap_svg`], rendered to a PNG file's bytes.
pub fn attention_heatmap_png(
    source: &[String],
    target: &[String],
    weights: &[Vec<f32>],
) -> Result<Vec<u8>> {
    register_fonts()?;
    let layout = heatmap_layout(source, target, weights)?;
    let (w, h) = (layout.width, layout.height);
    let mut rgb = vec![255u8; 3 * w as usize * h as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_heatmap(&root, &layout, source, target, weights)?;
    }
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&rgb))
        .context("encoding the attention plot as PNG")?;
    Ok(png_bytes)
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

        // Over minutes: 200 updates one second apart; the validation after update 50 is
        // placed at its time.
        let svg = learning_curve_svg_on(&records, CurveAxis::Minutes)?;
        assert!(svg.contains("minutes of training"));
        let (loss, valid_loss, bleu) = curve_points(&records, CurveAxis::Minutes);
        assert_eq!(loss.last().map(|p| p.0), Some(200.0 / 60.0));
        assert_eq!(valid_loss[0].0, 50.0 / 60.0);
        assert_eq!(bleu[3], (200.0 / 60.0, 20.0));
        let (_, _, by_step) = curve_points(&records, CurveAxis::Steps);
        assert_eq!(by_step[0], (50.0, 5.0));
        Ok(())
    }

    #[test]
    fn png_heatmap_has_cells_and_text() -> Result<()> {
        let source: Vec<String> = ["Der", "Hund", "</s>"].map(String::from).to_vec();
        let target: Vec<String> = ["The", "dog", "</s>"].map(String::from).to_vec();
        let weights = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ];
        let bytes = attention_heatmap_png(&source, &target, &weights)?;
        let layout = heatmap_layout(&source, &target, &weights)?;
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info()?;
        let mut rgb = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut rgb)?;
        assert_eq!((info.width, info.height), (layout.width, layout.height));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        let pixel = |x: i32, y: i32| {
            let at = 3 * (y as usize * info.width as usize + x as usize);
            [rgb[at], rgb[at + 1], rgb[at + 2]]
        };
        let centre = |i: i32, j: i32| {
            pixel(
                layout.left + CELL * i + CELL / 2,
                layout.top + CELL * j + CELL / 2,
            )
        };
        // Weight 1 is dark blue, weight 0 white.
        assert_eq!(centre(0, 0), [8, 48, 107]);
        assert_eq!(centre(1, 1), [8, 48, 107]);
        assert_eq!(centre(1, 0), [255, 255, 255]);
        // The labels left of the grid are drawn: dark pixels where only text can be.
        let text_pixels = (0..layout.top + CELL * 3)
            .flat_map(|y| (0..layout.left - 2).map(move |x| (x, y)))
            .filter(|&(x, y)| pixel(x, y)[0] < 128)
            .count();
        assert!(
            text_pixels > 30,
            "only {text_pixels} dark pixels in the label column"
        );
        assert!(
            check_attention_plot_path(Path::new("a.PNG"))? == PlotFormat::Png
                && check_attention_plot_path(Path::new("a.bmp")).is_err()
        );
        Ok(())
    }
}
