//! `cairn sim ...`: experiments in the deterministic simulator (`cairn_sim`).
//!
//! Owns: argument parsing and report printing for `cairn sim routing`,
//! `cairn sim durability`, `cairn sim placement` and `cairn sim churn`. The
//! experiments themselves are `cairn_sim::run_routing`,
//! `cairn_sim::placement::run_placement` and `cairn_sim::churn::run_churn` (behind both
//! `churn` and `durability`), so tests and the CLI run the same code.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_sim::{LookupSummary, RoutingParams, RoutingReport, run_routing};
use serde_json::json;

mod churn;
mod durability;
mod placement;

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
    /// Durability and repair traffic under churn, erasure coding against replication: a
    /// sweep of the churn simulation (`cairn sim churn`'s real overlays, PAST holders
    /// and maintenance) over schemes and mean sessions.
    Durability(durability::DurabilityArgs),
    /// PAST's storage experiment (SOSP 2001, §5): fill a network of nodes of unequal
    /// capacities with files until inserts fail, through the real placement code, and
    /// report the global storage utilisation against the cumulative share of failed
    /// inserts, with and without replica and file diversion. Sizes are scaled down
    /// (the stores keep real bytes in memory): see docs/placement.md.
    Placement(PlacementArgs),
    /// The simulated twin of `cairn bench churn`: the same flags, model and JSON
    /// report, with every node simulated (PAST holders, the daemon's maintenance, the
    /// gateway's reads and stats), so that a real run and its simulation compare
    /// point by point.
    Churn(churn::SimChurnArgs),
}

/// Arguments of `cairn sim placement`.
#[derive(Debug, clap::Args)]
pub struct PlacementArgs {
    /// Nodes (PAST used 2,250), each joining the overlay for real.
    #[arg(long, default_value_t = 2250)]
    pub nodes: usize,
    /// Seed of every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Data fragments per block.
    #[arg(short = 'k', default_value_t = 4)]
    pub k: u16,
    /// Parity fragments per block.
    #[arg(short = 'm', default_value_t = 2)]
    pub m: u16,
    /// Variants to run: `both` (t_pri 0.1, t_div 0.05, salts 0..=3), `replica` (the
    /// thresholds, no salt retries), `file` (t_pri 1, t_div 0, salts 0..=3), `none`
    /// (t_pri 1, t_div 0, no salt retries).
    #[arg(long = "variant", value_delimiter = ',', default_values = ["both", "replica", "file", "none"])]
    pub variants: Vec<cairn_sim::placement::Diversion>,
    /// Mean node capacity in bytes (σ 0.4× the mean, within [0.074, 1.89]× it: PAST's
    /// truncated normal d1 scaled down).
    #[arg(long, default_value_t = 32 << 10)]
    pub capacity_mean: u64,
    /// Median file size in bytes (lognormal; each file is one block).
    #[arg(long, default_value_t = 256.0)]
    pub file_median: f64,
    /// σ of the logarithm of the file size (2.04: the web-proxy trace's mean/median).
    #[arg(long, default_value_t = 2.04)]
    pub file_sigma: f64,
    /// Largest file in bytes.
    #[arg(long, default_value_t = 4 << 10)]
    pub file_max: usize,
    /// Inserts in flight at once.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Stop once this share of the inserts so far has failed.
    #[arg(long, default_value_t = 0.1)]
    pub stop_failed: f64,
    /// Or once the files offered would take this many times the total capacity.
    #[arg(long, default_value_t = 1.5)]
    pub max_offered: f64,
    /// Variants run at once (each is single-threaded).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Print one JSON object per variant instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write PREFIX.md (tables) and PREFIX.svg (the chart) into this directory.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Names of the files written by `--out`.
    #[arg(long, default_value = "placement")]
    pub prefix: String,
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
        SimCommand::Durability(args) => durability::run_command(&args),
        SimCommand::Placement(args) => placement::run_command(&args),
        SimCommand::Churn(args) => churn::run_command(&args),
    }
}

/// One result per item, in input order, computed on up to `jobs` threads.
fn run_parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    type Slots<R> = Mutex<Vec<Option<anyhow::Result<R>>>>;
    let next = AtomicUsize::new(0);
    let results: Slots<R> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = work(item);
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(result);
                    }
                }
            });
        }
    });
    results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a simulation thread panicked"))?
        .into_iter()
        .map(|slot| slot.unwrap_or_else(|| Err(anyhow::anyhow!("a configuration did not run"))))
        .collect()
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
