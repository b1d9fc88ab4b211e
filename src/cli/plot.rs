//! `rnmt plot`: a run's learning curve.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// A run folder with metrics.jsonl; writes RUN_DIR/curve.svg.
    pub run_dir: PathBuf,
    /// Over minutes of training (wall clock) instead of steps: writes
    /// RUN_DIR/curve-minutes.svg.
    #[arg(long)]
    pub minutes: bool,
}

pub fn run(args: &PlotArgs) -> Result<()> {
    let axis = match args.minutes {
        true => crate::plot::CurveAxis::Minutes,
        false => crate::plot::CurveAxis::Steps,
    };
    let path = crate::plot::plot_run_dir(&args.run_dir, axis)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
