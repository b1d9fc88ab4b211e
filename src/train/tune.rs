//! Choosing a finished model's search settings: the length normalisation α and the
//! coverage penalty β (Wu et al. 2016, eq. 14) that give the best dev BLEU with beam
//! search, stored in the model's `config.json` so that `rnmt translate` uses them without
//! being told. What helps one model can cost another BLEU: β 0.2 costs a Multi30k model
//! 3–4 BLEU and gains the Tatoeba en→de model 0.3.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;

use crate::batch::{EncodedPair, TokenBatcher};
use crate::io::write_atomic;
use crate::metrics::{Bleu, BleuConfig};
use crate::model::{CONFIG_FILE, WEIGHTS_FILE};
use crate::search::{search, Ensemble, SearchConfig};
use crate::train::checkpoint::MODEL_CARD_FILE;

use super::trainer::Detokenize;

/// The grid searched: α from raw log-probability (0) to strong normalisation, β off and at
/// GNMT's value.
pub const ALPHAS: [f32; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
pub const BETAS: [f32; 2] = [0.0, 0.2];
/// The beam the settings are chosen for (`rnmt translate`'s default).
pub const TUNING_BEAM: usize = 5;

/// Dev BLEU at one point of the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridPoint {
    pub alpha: f32,
    pub beta: f32,
    pub bleu: f64,
}

/// BLEU of beam-[`TUNING_BEAM`] translations of `pairs` (their sources) against
/// `references` for every (α, β) of the grid, in grid order; `base` gives the length bound.
pub fn search_grid(
    ens: &Ensemble,
    base: &SearchConfig,
    pairs: &[EncodedPair],
    references: &[String],
    detokenize: &Detokenize,
    max_tokens: usize,
    device: &Device,
) -> Result<Vec<GridPoint>> {
    let batches = TokenBatcher::new(max_tokens, 0).epoch(pairs, 0);
    let bleu = Bleu::new(BleuConfig::default());
    let refs = vec![references.to_vec()];
    let mut grid = Vec::with_capacity(ALPHAS.len() * BETAS.len());
    for &beta in &BETAS {
        for &alpha in &ALPHAS {
            let cfg = SearchConfig {
                beam: TUNING_BEAM,
                nbest: 1,
                alpha,
                beta,
                ..base.clone()
            };
            let mut hyps = vec![String::new(); pairs.len()];
            for idx in &batches {
                let sources: Vec<Vec<u32>> = idx.iter().map(|&i| pairs[i].src.clone()).collect();
                for (&i, nbest) in idx.iter().zip(search(ens, &sources, &cfg, device)?) {
                    if let Some(best) = nbest.first() {
                        hyps[i] = detokenize(&best.tokens)?;
                    }
                }
            }
            grid.push(GridPoint {
                alpha,
                beta,
                bleu: bleu.corpus_score(&hyps, &refs)?.score,
            });
        }
    }
    Ok(grid)
}

/// Chooses the search settings of the translation model folder `dir` on the dev `pairs`
/// (with their `references`): writes the best point into its `config.json`
/// (`decode_alpha`, `decode_beta`) and the grid, the choice in bold, into its model card.
/// Returns the chosen point (None for an empty grid).
pub fn tune_model_folder(
    dir: &Path,
    pairs: &[EncodedPair],
    references: &[String],
    detokenize: &Detokenize,
    max_tokens: usize,
    device: &Device,
) -> Result<Option<GridPoint>> {
    if !dir.join(WEIGHTS_FILE).is_file() {
        anyhow::bail!("{}: no {WEIGHTS_FILE} to tune", dir.display());
    }
    let (model, mut cfg) = crate::model::load_model(dir, device)?;
    let grid = search_grid(
        &Ensemble::single(&model),
        &SearchConfig::for_model(&cfg),
        pairs,
        references,
        detokenize,
        max_tokens,
        device,
    )?;
    let Some(chosen) = best_point(&grid) else {
        return Ok(None);
    };
    cfg.decode_alpha = chosen.alpha;
    cfg.decode_beta = chosen.beta;
    write_atomic(
        &dir.join(CONFIG_FILE),
        (serde_json::to_string_pretty(&cfg)? + "\n").as_bytes(),
    )?;
    let card_path = dir.join(MODEL_CARD_FILE);
    let card = match std::fs::read_to_string(&card_path) {
        Ok(card) => card,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# rnmt model\n".to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", card_path.display())),
    };
    let card = format!(
        "{card}\nSearch settings in config.json, chosen by dev BLEU with beam {TUNING_BEAM} over \
         {} dev sentences: α (decode_alpha) {}, β (decode_beta) {}.\n\n{}",
        pairs.len(),
        chosen.alpha,
        chosen.beta,
        grid_table(&grid, chosen)
    );
    write_atomic(&card_path, card.as_bytes())?;
    Ok(Some(chosen))
}

/// The line `rnmt train` and `rnmt average --tune` print about a tuned folder.
pub fn report(dir: &Path, chosen: GridPoint) -> String {
    format!(
        "search settings of {}: alpha {} beta {} (dev BLEU {:.2} at beam {TUNING_BEAM})",
        dir.display(),
        chosen.alpha,
        chosen.beta,
        chosen.bleu,
    )
}

/// The best point: the highest BLEU, the first in grid order among equals (smaller β,
/// then smaller α: the simpler setting).
pub fn best_point(grid: &[GridPoint]) -> Option<GridPoint> {
    grid.iter()
        .copied()
        .reduce(|best, p| if p.bleu > best.bleu { p } else { best })
}

/// The grid as a Markdown table for the model card, the chosen point in bold.
pub fn grid_table(grid: &[GridPoint], chosen: GridPoint) -> String {
    let mut table = String::from("| β \\ α |");
    for a in ALPHAS {
        table += &format!(" {a} |");
    }
    table += "\n| --- |";
    table += &" --- |".repeat(ALPHAS.len());
    for beta in BETAS {
        table += &format!("\n| {beta} |");
        for p in grid.iter().filter(|p| p.beta == beta) {
            if *p == chosen {
                table += &format!(" **{:.2}** |", p.bleu);
            } else {
                table += &format!(" {:.2} |", p.bleu);
            }
        }
    }
    table + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(alpha: f32, beta: f32, bleu: f64) -> GridPoint {
        GridPoint { alpha, beta, bleu }
    }

    #[test]
    fn the_best_point_is_the_first_of_the_highest() {
        let grid = [
            point(0.0, 0.0, 30.0),
            point(0.2, 0.0, 31.5),
            point(0.4, 0.0, 31.5),
            point(0.0, 0.2, 29.0),
        ];
        assert_eq!(best_point(&grid), Some(point(0.2, 0.0, 31.5)));
        assert_eq!(best_point(&[]), None);
    }

    #[test]
    fn the_table_has_a_row_per_beta_and_marks_the_choice() {
        let grid: Vec<GridPoint> = BETAS
            .iter()
            .flat_map(|&b| {
                ALPHAS
                    .iter()
                    .map(move |&a| point(a, b, f64::from(a + b) * 10.0))
            })
            .collect();
        let chosen = best_point(&grid).unwrap();
        assert_eq!((chosen.alpha, chosen.beta), (1.0, 0.2));
        let table = grid_table(&grid, chosen);
        assert_eq!(table.lines().count(), 2 + BETAS.len(), "{table}");
        assert!(table.contains("**12.00**"), "{table}");
        assert_eq!(table.matches("**").count(), 2, "{table}");
    }
}
