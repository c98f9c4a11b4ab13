//! `cairn sim ...`: experiments in the deterministic simulator (`cairn_node::sim`).
//!
//! Owns: argument parsing and report printing for `cairn sim routing`. The experiment
//! itself is `cairn_node::sim::run_routing`, so tests and the CLI run the same code.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_node::sim::{LookupSummary, RoutingParams, RoutingReport, run_routing};
use serde_json::json;

/// `cairn sim`: run an experiment in the simulator.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Which experiment.
    #[command(subcommand)]
    pub command: SimCommand,
}

/// The simulator's experiments.
#[derive(Debug, clap::Subcommand)]
pub enum SimCommand {
    /// Build an N-node Pastry overlay by real joins, optionally crash a fraction of it,
    /// and route lookups, judged against the simulator's ground truth.
    Routing(RoutingArgs),
}

/// Arguments of `cairn sim routing`.
#[derive(Debug, clap::Args)]
pub struct RoutingArgs {
    /// Nodes to build the overlay of.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Lookups for random keys from random live nodes (as many again during repair).
    #[arg(long, default_value_t = 10_000)]
    pub lookups: usize,
    /// Seed of every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Fraction of nodes to crash at once after the build (e.g. 0.1).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Joins started per simulated second (default: N/100, within 50..=1000).
    #[arg(long)]
    pub join_rate: Option<f64>,
    /// Simulated seconds of quiet after the last join, before measuring.
    #[arg(long, default_value_t = 60)]
    pub settle: u64,
    /// Simulated seconds given to repair after the crash, before the final lookups.
    #[arg(long, default_value_t = 120)]
    pub repair: u64,
    /// Every node on a join's path gives the joiner all the rows it can use, not only
    /// row i from the i-th node (more probes per join, more candidates per slot).
    #[arg(long)]
    pub join_all_rows: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cairn sim ...`.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.command {
        SimCommand::Routing(routing) => run_routing_command(&routing),
    }
}

fn run_routing_command(args: &RoutingArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if !(0.0..1.0).contains(&args.churn) {
        bail!("--churn is a fraction in [0, 1), got {}", args.churn);
    }
    if !(0.0..1.0).contains(&args.loss) {
        bail!("--loss is a probability in [0, 1), got {}", args.loss);
    }
    let mut params = RoutingParams::new(args.nodes, args.lookups, args.seed);
    params.churn = args.churn;
    params.sim.loss = args.loss;
    params.settle = Duration::from_secs(args.settle);
    params.repair = Duration::from_secs(args.repair);
    params.sim.overlay.join_all_shared_rows = args.join_all_rows;
    if let Some(rate) = args.join_rate {
        if rate <= 0.0 {
            bail!("--join-rate must be positive, got {rate}");
        }
        params.join_rate = rate;
    }
    let started = Instant::now();
    let report = run_routing(&params).context("running the routing experiment")?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let peak_rss_bytes = peak_rss_bytes();
    if args.json {
        println!("{}", to_json(args, &report, wall_seconds, peak_rss_bytes));
    } else {
        print_text(args, &report, wall_seconds, peak_rss_bytes);
    }
    Ok(())
}

fn summary_json(s: &LookupSummary) -> serde_json::Value {
    json!({
        "lookups": s.lookups,
        "delivery_rate": s.delivery_rate,
        "misdelivered": s.misdelivered,
        "lost": s.lost,
        "mean_hops": s.mean_hops,
        "p99_hops": s.p99_hops,
        "rdp": s.rdp,
        "rdp_of_totals": s.rdp_of_totals,
    })
}

fn to_json(
    args: &RoutingArgs,
    report: &RoutingReport,
    wall_seconds: f64,
    peak_rss_bytes: Option<u64>,
) -> serde_json::Value {
    json!({
        "nodes": report.nodes,
        "lookups": report.after.lookups,
        "delivery_rate": report.after.delivery_rate,
        "mean_hops": report.after.mean_hops,
        "p99_hops": report.after.p99_hops,
        "mean_state_entries": report.mean_state_entries,
        "messages_per_join": report.messages_per_join,
        "rdp": report.after.rdp,
        "rdp_of_totals": report.after.rdp_of_totals,
        "wall_seconds": wall_seconds,
        "peak_rss_bytes": peak_rss_bytes,
        "seed": args.seed,
        "churn": args.churn,
        "loss": args.loss,
        "crashed": report.crashed,
        "live_nodes": report.live_nodes,
        "during_repair": report.during_repair.as_ref().map(summary_json),
        "wrong_leaf_sets_after_build": report.wrong_leaf_sets_after_build,
        "wrong_leaf_sets": report.wrong_leaf_sets,
        "simulated_seconds": report.simulated_seconds,
        "messages_sent": report.stats.messages_sent,
        "joins_completed": report.stats.joins_completed,
        "routes_failed": report.stats.routes_failed,
        "not_joined": report.not_joined,
        "join_retries": report.stats.join_retries,
        "messages_lost": report.stats.messages_lost,
    })
}

fn print_text(args: &RoutingArgs, r: &RoutingReport, wall_seconds: f64, peak: Option<u64>) {
    let log16 = (r.nodes as f64).ln() / 16f64.ln();
    println!(
        "cairn sim routing: {} nodes (seed {}), {} crashed ({:.0}% churn), {} live",
        r.nodes,
        args.seed,
        r.crashed,
        args.churn * 100.0,
        r.live_nodes
    );
    println!(
        "  build: {} joins completed, {:.1} messages per join, {:.1} routing-state entries per node, {} wrong leaf sets",
        r.stats.joins_completed,
        r.messages_per_join,
        r.mean_state_entries,
        r.wrong_leaf_sets_after_build
    );
    if let Some(d) = &r.during_repair {
        println!(
            "  during repair: {:.4} delivered to the closest live node ({} misdelivered, {} lost), mean hops {:.2}",
            d.delivery_rate, d.misdelivered, d.lost, d.mean_hops
        );
    }
    let a = &r.after;
    println!(
        "  lookups: {}, delivery {:.4} ({} misdelivered, {} lost), mean hops {:.3} (log16 N = {:.2}), p99 hops {}, RDP {:.2} (of totals {:.2})",
        a.lookups,
        a.delivery_rate,
        a.misdelivered,
        a.lost,
        a.mean_hops,
        log16,
        a.p99_hops,
        a.rdp,
        a.rdp_of_totals
    );
    println!("  final leaf sets wrong: {}", r.wrong_leaf_sets);
    let peak = peak.map_or_else(
        || "unknown".to_owned(),
        |b| format!("{:.0} MiB", b as f64 / 1048576.0),
    );
    println!(
        "  {:.0} simulated s, {} messages; wall {:.1} s, peak RSS {}",
        r.simulated_seconds, r.stats.messages_sent, wall_seconds, peak
    );
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
