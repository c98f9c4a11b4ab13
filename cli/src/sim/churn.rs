//! `cairn sim churn`: the simulated twin of `cairn bench churn`.
//!
//! Owns: [`SimChurnArgs`] and [`run_command`]: the bench's flags
//! ([`crate::churn_report::ChurnShape`]) turned into `cairn_sim::churn::ChurnParams`,
//! and the run's record printed as the bench prints its own.
//!
//! May use: [`cairn_sim::churn`], [`crate::churn_report`].

use std::time::Duration;

use anyhow::Context;
use cairn_core::erasure::ErasureParams;
use cairn_sim::churn::{ChurnParams, run_churn};

use crate::churn_report::{ChurnShape, print_report};

/// Arguments of `cairn sim churn`.
#[derive(Debug, clap::Args)]
pub struct SimChurnArgs {
    /// The run's shape, as `cairn bench churn` takes it.
    #[command(flatten)]
    pub shape: ChurnShape,
}

/// The simulation's parameters for the bench's flags.
fn params(shape: &ChurnShape) -> anyhow::Result<ChurnParams> {
    anyhow::ensure!(shape.nodes >= 2, "--nodes must be at least 2");
    Ok(ChurnParams {
        nodes: shape.nodes,
        files: shape.files,
        size: shape.size,
        duration: shape.duration,
        mean_session: shape.mean_session,
        mode: shape.mode.into(),
        readers: shape.readers,
        params: ErasureParams::new(shape.k, shape.m).context("invalid -k/-m")?,
        repair_timeout: shape.repair_timeout,
        tick: Duration::from_millis(shape.tick_ms),
        ..ChurnParams::new(shape.seed)
    })
}

/// Runs `cairn sim churn`.
pub fn run_command(args: &SimChurnArgs) -> anyhow::Result<()> {
    let outcome = run_churn(&params(&args.shape)?).context("the churn simulation")?;
    if !args.shape.json {
        eprintln!(
            "simulated {:.0} s: {} keys reconciled, {} fragments regenerated",
            outcome.simulated_seconds,
            outcome.maintenance.keys_reconciled,
            outcome.maintenance.fragments_regenerated
        );
    }
    print_report("sim churn", &args.shape, &outcome.record)
}
