//! `rnmt plot`: a run's learning curve.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// A run folder with metrics.jsonl; writes RUN_DIR/curve.svg.
    pub run_dir: PathBuf,
}

pub fn run(args: &PlotArgs) -> Result<()> {
    let path = crate::plot::plot_run_dir(&args.run_dir)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
