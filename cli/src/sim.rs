//! `cairn sim ...`: experiments in the deterministic simulator (`cairn_sim`).
//!
//! Owns: argument parsing and report printing for `cairn sim routing`,
//! `cairn sim durability`, `cairn sim placement` and `cairn sim churn`. The
//! experiments themselves are `cairn_sim::run_routing`,
//! `cairn_sim::durability::run_durability`, `cairn_sim::placement::run_placement` and
//! `cairn_sim::churn::run_churn`, so tests and the CLI run the same code.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_sim::durability::{DurabilityParams, DurabilityReport, Scheme, run_durability};
use cairn_sim::{LookupSummary, RoutingParams, RoutingReport, run_routing};
use serde_json::json;

use crate::chart::{Axis, LineChart};

mod churn;
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
    /// Durability and repair traffic under churn: thousands of nodes with exponential
    /// sessions over virtual hours, erasure coding against replication.
    Durability(DurabilityArgs),
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

/// Arguments of `cairn sim durability`.
#[derive(Debug, clap::Args)]
pub struct DurabilityArgs {
    /// Live nodes (a new empty node joins for each permanent departure).
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Blocks stored at the start.
    #[arg(long, default_value_t = 10_000)]
    pub blocks: usize,
    /// Bytes per block.
    #[arg(long, default_value_t = 1 << 20)]
    pub block_size: u64,
    /// Virtual hours to simulate.
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Mean session lengths to sweep (`90s`, `15m`, `4h`, `1d`, `1w`, or `none`).
    #[arg(long = "mean-session", value_parser = parse_session,
          default_values = ["15m", "1h", "4h", "1d", "1w"])]
    pub mean_sessions: Vec<Option<Duration>>,
    /// Redundancy schemes to compare (`r3`: three replicas; `4+2`: k = 4, m = 2).
    #[arg(long = "scheme", default_values = ["r2", "4+4", "8+8", "r3", "4+8", "6+12", "4+2"])]
    pub schemes: Vec<Scheme>,
    /// Repair bandwidth per node, bytes per second (a regenerating node downloads a
    /// whole block per fragment at this rate).
    #[arg(long, default_value_t = 1e6)]
    pub repair_bandwidth: f64,
    /// Seconds before a departed node is declared dead (3 missed 10 s keepalives).
    #[arg(long, default_value_t = 30.0)]
    pub detect_after: f64,
    /// Fraction of departures that are transient (the node returns with its data).
    #[arg(long, default_value_t = 0.0)]
    pub transient: f64,
    /// Mean downtime of a transient departure (`10m`, `2h`, ...).
    #[arg(long, value_parser = parse_duration, default_value = "10m")]
    pub downtime: Duration,
    /// Seed of every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also search, for each scheme, the mean session below which blocks are lost
    /// (bisection on a log scale inside the bracket the sweep found, to within 10%).
    #[arg(long)]
    pub find_limit: bool,
    /// Configurations run at once (each is single-threaded).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Print one JSON object per configuration instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a Markdown report and SVG charts into this directory.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Names of the files written by `--out`: PREFIX-report.md, PREFIX-durability.svg,
    /// PREFIX-lost.svg, PREFIX-repair.svg.
    #[arg(long, default_value = "durability")]
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
        SimCommand::Durability(durability) => run_durability_command(&durability),
        SimCommand::Placement(args) => placement::run_command(&args),
        SimCommand::Churn(args) => churn::run_command(&args),
    }
}

/// `15m`, `1h`, `1d`, `1w`, `90s` or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 4h, 1d or 1w"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (s, m, h, d, w)"
            ));
        }
    };
    let seconds = value * scale;
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_session(text: &str) -> Result<Option<Duration>, String> {
    if text.trim() == "none" {
        Ok(None)
    } else {
        parse_duration(text).map(Some)
    }
}

/// `15 min`, `4 h`, `1 d`, `1 w`: the label of a session length in tables and charts.
fn session_label(session: Option<Duration>) -> String {
    let Some(session) = session else {
        return "none".to_owned();
    };
    let s = session.as_secs_f64();
    let (value, unit) = if s >= 604_800.0 && (s / 604_800.0).fract() == 0.0 {
        (s / 604_800.0, "w")
    } else if s >= 86_400.0 && (s / 86_400.0).fract() == 0.0 {
        (s / 86_400.0, "d")
    } else if s >= 3600.0 {
        (s / 3600.0, "h")
    } else if s >= 60.0 {
        (s / 60.0, "min")
    } else {
        (s, "s")
    };
    if value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

fn durability_params(
    args: &DurabilityArgs,
    scheme: Scheme,
    session: Option<Duration>,
) -> DurabilityParams {
    let mut p = DurabilityParams::new(
        args.nodes,
        args.blocks,
        Duration::from_secs_f64(args.hours * 3600.0),
        session,
        scheme,
        args.seed,
    );
    p.block_bytes = args.block_size;
    p.repair_bandwidth = args.repair_bandwidth;
    p.detect_after = Duration::from_secs_f64(args.detect_after);
    p.transient_fraction = args.transient;
    p.mean_downtime = args.downtime;
    p
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

/// Runs every configuration; results (with their wall seconds) in input order.
fn run_all(
    configs: &[DurabilityParams],
    jobs: usize,
) -> anyhow::Result<Vec<(DurabilityReport, f64)>> {
    run_parallel(configs, jobs, |params| {
        let started = Instant::now();
        let report = run_durability(params).with_context(|| format!("scheme {}", params.scheme))?;
        Ok((report, started.elapsed().as_secs_f64()))
    })
}

fn run_durability_command(args: &DurabilityArgs) -> anyhow::Result<()> {
    if args.hours <= 0.0 || !args.hours.is_finite() {
        bail!("--hours must be positive, got {}", args.hours);
    }
    if args.detect_after < 0.0 || !args.detect_after.is_finite() {
        bail!(
            "--detect-after must be at least 0, got {}",
            args.detect_after
        );
    }
    let mut configs = Vec::new();
    for &scheme in &args.schemes {
        for &session in &args.mean_sessions {
            configs.push(durability_params(args, scheme, session));
        }
    }
    let started = Instant::now();
    let results = run_all(&configs, args.jobs)?;
    let limits = if args.find_limit {
        find_limits(args, &results)?
    } else {
        Vec::new()
    };
    let wall = started.elapsed().as_secs_f64();
    if args.json {
        for (report, seconds) in &results {
            println!("{}", durability_json(report, *seconds));
        }
        for limit in &limits {
            println!("{}", limit_json(limit));
        }
    } else {
        print!("{}", durability_header(args));
        print!("{}", durability_table(&results));
        if !limits.is_empty() {
            print!("{}", limits_table(args, &limits));
        }
        println!("wall {wall:.1} s");
    }
    if let Some(dir) = &args.out {
        write_durability_report(dir, args, &results, &limits, wall)
            .with_context(|| format!("writing the report into {}", dir.display()))?;
    }
    Ok(())
}

/// The mean session below which a scheme loses blocks: `safe` lost none, `lossy` lost
/// some (`None` when the bracket's end already did not hold).
struct Limit {
    scheme: Scheme,
    safe: Option<Duration>,
    lossy: Option<Duration>,
    lost_at_lossy: usize,
}

fn find_limits(
    args: &DurabilityArgs,
    results: &[(DurabilityReport, f64)],
) -> anyhow::Result<Vec<Limit>> {
    let lost = |scheme: Scheme, session: Duration| -> anyhow::Result<usize> {
        Ok(
            run_durability(&durability_params(args, scheme, Some(session)))
                .with_context(|| format!("scheme {scheme}"))?
                .lost_blocks,
        )
    };
    // The sweep brackets the limit: the longest session that lost blocks and the
    // shortest longer one that did not.
    let search = |scheme: Scheme| -> anyhow::Result<Limit> {
        let mut swept: Vec<(Duration, usize)> = results
            .iter()
            .filter(|(r, _)| r.params.scheme == scheme)
            .filter_map(|(r, _)| Some((r.params.mean_session?, r.lost_blocks)))
            .collect();
        swept.sort();
        let lossy = swept.iter().rev().find(|(_, lost)| *lost > 0).copied();
        let Some((mut lossy, mut lost_at_lossy)) = lossy else {
            return Ok(Limit {
                scheme,
                safe: swept.first().map(|s| s.0),
                lossy: None,
                lost_at_lossy: 0,
            });
        };
        let Some(&(mut safe, _)) = swept.iter().find(|(d, _)| *d > lossy) else {
            return Ok(Limit {
                scheme,
                safe: None,
                lossy: Some(lossy),
                lost_at_lossy,
            });
        };
        // Bisect on a log scale until the bracket is within 10%.
        for _ in 0..20 {
            if safe.as_secs_f64() / lossy.as_secs_f64() <= 1.1 {
                break;
            }
            let middle = Duration::from_secs_f64((safe.as_secs_f64() * lossy.as_secs_f64()).sqrt());
            let lost_here = lost(scheme, middle)?;
            if lost_here > 0 {
                (lossy, lost_at_lossy) = (middle, lost_here);
            } else {
                safe = middle;
            }
        }
        Ok(Limit {
            scheme,
            safe: Some(safe),
            lossy: Some(lossy),
            lost_at_lossy,
        })
    };
    run_parallel(&args.schemes, args.jobs, |&scheme| search(scheme))
}

fn limit_json(limit: &Limit) -> serde_json::Value {
    json!({
        "limit_for": limit.scheme.to_string(),
        "longest_session_with_loss_s": limit.lossy.map(|d| d.as_secs_f64()),
        "shortest_session_without_loss_s": limit.safe.map(|d| d.as_secs_f64()),
        "lost_blocks_at_that_session": limit.lost_at_lossy,
    })
}

fn limits_table(args: &DurabilityArgs, limits: &[Limit]) -> String {
    let mut out = format!(
        "\nThe stated limit: the mean session below which blocks are lost ({} nodes, {} blocks, {} h, seed {}):\n\n",
        args.nodes, args.blocks, args.hours, args.seed
    );
    out.push_str("| scheme | overhead | no loss at | loss at (blocks lost) |\n|---|---|---|---|\n");
    for limit in limits {
        let safe = match limit.safe {
            Some(d) if limit.lossy.is_none() => {
                format!("≤ {} (shortest tried)", session_label(Some(d)))
            }
            Some(d) => session_label(Some(d)),
            None => "none tried".to_owned(),
        };
        let lossy = match limit.lossy {
            Some(d) if limit.safe.is_none() => {
                format!(
                    "{} (longest tried; {} lost)",
                    session_label(Some(d)),
                    limit.lost_at_lossy
                )
            }
            Some(d) => format!("{} ({})", session_label(Some(d)), limit.lost_at_lossy),
            None => "–".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {:.1}× | {safe} | {lossy} |\n",
            limit.scheme,
            limit.scheme.overhead()
        ));
    }
    out
}

fn durability_json(r: &DurabilityReport, wall_seconds: f64) -> serde_json::Value {
    let p = &r.params;
    json!({
        "scheme": p.scheme.to_string(),
        "overhead": p.scheme.overhead(),
        "nodes": p.nodes,
        "blocks": p.blocks,
        "block_bytes": p.block_bytes,
        "hours": p.duration.as_secs_f64() / 3600.0,
        "mean_session_s": p.mean_session.map(|d| d.as_secs_f64()),
        "transient_fraction": p.transient_fraction,
        "mean_downtime_s": p.mean_downtime.as_secs_f64(),
        "detect_after_s": p.detect_after.as_secs_f64(),
        "repair_bandwidth": p.repair_bandwidth,
        "seed": p.seed,
        "durability": r.durability,
        "lost_blocks": r.lost_blocks,
        "first_loss_s": r.first_loss_seconds,
        "min_live_fragments": r.min_live_fragments,
        "departures": r.departures,
        "transient_departures": r.transient_departures,
        "returns": r.returns,
        "joins": r.joins,
        "repairs": r.repairs,
        "cancelled_repairs": r.cancelled_repairs,
        "repair_bytes": r.repair_bytes,
        "stored_bytes": r.stored_bytes,
        "repair_bytes_per_stored_byte": r.repair_per_stored_byte,
        "repair_bytes_per_stored_byte_per_hour": r.repair_per_stored_byte_per_hour,
        "handoffs": r.handoffs,
        "handoff_bytes_per_stored_byte": r.handoff_per_stored_byte,
        "degraded_fraction": r.degraded_fraction,
        "unavailable_fraction": r.unavailable_fraction,
        "mean_repair_s": r.mean_repair_seconds,
        "max_repair_s": r.max_repair_seconds,
        "events": r.events,
        "wall_seconds": wall_seconds,
    })
}

fn durability_header(args: &DurabilityArgs) -> String {
    format!(
        "cairn sim durability: {} nodes, {} blocks of {} KiB, {} h, repair bandwidth {:.0} kB/s per node, detection after {} s, {:.0}% transient departures (mean downtime {}), seed {}\n\n",
        args.nodes,
        args.blocks,
        args.block_size / 1024,
        args.hours,
        args.repair_bandwidth / 1e3,
        args.detect_after,
        args.transient * 100.0,
        session_label(Some(args.downtime)),
        args.seed
    )
}

fn durability_table(results: &[(DurabilityReport, f64)]) -> String {
    let mut out = String::from(
        "| scheme | overhead | mean session | durability | lost | min live (n) | repair B / stored B / h | handoff B / stored B | below n live | mean / max repair s | departures |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (r, _) in results {
        let p = &r.params;
        out.push_str(&format!(
            "| {} | {:.1}× | {} | {:.6} | {} | {} ({}) | {:.4} | {:.3} | {:.3}% | {:.0} / {:.0} | {} |\n",
            p.scheme,
            p.scheme.overhead(),
            session_label(p.mean_session),
            r.durability,
            r.lost_blocks,
            r.min_live_fragments,
            p.scheme.fragments(),
            r.repair_per_stored_byte_per_hour,
            r.handoff_per_stored_byte,
            r.degraded_fraction * 100.0,
            r.mean_repair_seconds,
            r.max_repair_seconds,
            r.departures,
        ));
    }
    out
}

/// One series per scheme: (mean session in seconds, value), sessions with churn only.
fn per_scheme(
    args: &DurabilityArgs,
    results: &[(DurabilityReport, f64)],
    value: impl Fn(&DurabilityReport) -> f64,
) -> Vec<(String, Vec<(f64, f64)>)> {
    args.schemes
        .iter()
        .map(|scheme| {
            let points = results
                .iter()
                .filter(|(r, _)| r.params.scheme == *scheme)
                .filter_map(|(r, _)| Some((r.params.mean_session?.as_secs_f64(), value(r))))
                .collect();
            (format!("{scheme} ({:.1}×)", scheme.overhead()), points)
        })
        .collect()
}

fn session_axis(args: &DurabilityArgs) -> Axis {
    Axis {
        label: "mean session length (exponential)".to_owned(),
        log: true,
        range: None,
        ticks: Some(
            args.mean_sessions
                .iter()
                .flatten()
                .map(|d| (d.as_secs_f64(), session_label(Some(*d))))
                .collect(),
        ),
    }
}

fn write_durability_report(
    dir: &Path,
    args: &DurabilityArgs,
    results: &[(DurabilityReport, f64)],
    limits: &[Limit],
    wall: f64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let setting = format!(
        "{} nodes, {:.0} kB/s per node",
        args.nodes,
        args.repair_bandwidth / 1e3
    );
    type Measure = fn(&DurabilityReport) -> f64;
    let charts: [(&str, String, Axis, Measure); 3] = [
        (
            "durability.svg",
            format!(
                "Durability after {} h against churn ({setting})",
                args.hours
            ),
            Axis {
                label: "blocks surviving / blocks".to_owned(),
                range: Some((0.0, 1.0)),
                ..Axis::default()
            },
            |r| r.durability,
        ),
        (
            "lost.svg",
            format!("Blocks lost in {} h (no point: none lost)", args.hours),
            Axis {
                label: "blocks lost / blocks".to_owned(),
                log: true,
                ..Axis::default()
            },
            |r| 1.0 - r.durability,
        ),
        (
            "repair.svg",
            format!("Repair traffic against churn ({setting})"),
            Axis {
                label: "repair bytes per stored byte per hour".to_owned(),
                log: true,
                ..Axis::default()
            },
            |r| r.repair_per_stored_byte_per_hour,
        ),
    ];
    let mut markdown = format!(
        "# cairn sim durability\n\n{}Command: `{}`\n\n",
        durability_header(args),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    markdown.push_str(&durability_table(results));
    if !limits.is_empty() {
        markdown.push_str(&limits_table(args, limits));
    }
    markdown.push('\n');
    for (file, title, y, value) in charts {
        let file = format!("{}-{file}", args.prefix);
        let mut chart = LineChart::new(title, session_axis(args), y);
        for (name, points) in per_scheme(args, results, value) {
            chart.push(name, points);
        }
        std::fs::write(dir.join(&file), chart.to_svg())?;
        markdown.push_str(&format!("![{file}]({file})\n\n"));
    }
    markdown.push_str(&format!("Wall time {wall:.1} s.\n"));
    std::fs::write(dir.join(format!("{}-report.md", args.prefix)), markdown)?;
    Ok(())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn durations_read_and_print_as_people_write_them() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1w").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "h", "0", "-3h", "3y", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_session("none").unwrap(), None);
        let label = |s: &str| session_label(parse_session(s).unwrap());
        assert_eq!(label("15m"), "15 min");
        assert_eq!(label("4h"), "4 h");
        assert_eq!(label("1d"), "1 d");
        assert_eq!(label("1w"), "1 w");
        assert_eq!(label("36h"), "36 h");
        assert_eq!(label("90m"), "1.5 h");
        assert_eq!(label("none"), "none");
    }

    #[test]
    fn a_tiny_sweep_writes_its_table_report_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let args = DurabilityArgs {
            nodes: 100,
            blocks: 200,
            block_size: 1 << 20,
            hours: 2.0,
            mean_sessions: vec![
                Some(Duration::from_secs(600)),
                Some(Duration::from_secs(7200)),
            ],
            schemes: vec!["r2".parse().unwrap(), "4+4".parse().unwrap()],
            repair_bandwidth: 1e6,
            detect_after: 30.0,
            transient: 0.0,
            downtime: Duration::from_secs(600),
            seed: 1,
            find_limit: false,
            jobs: 2,
            json: false,
            out: Some(dir.path().to_owned()),
            prefix: "durability".to_owned(),
        };
        let configs: Vec<_> = args
            .schemes
            .iter()
            .flat_map(|&s| args.mean_sessions.iter().map(move |&m| (s, m)))
            .map(|(s, m)| durability_params(&args, s, m))
            .collect();
        let results = run_all(&configs, args.jobs).unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[3].0.params.scheme.to_string(), "4+4");
        let table = durability_table(&results);
        assert_eq!(table.lines().count(), 2 + 4);
        assert!(table.contains("| r2 | 2.0× | 10 min |"));
        write_durability_report(dir.path(), &args, &results, &[], 0.0).unwrap();
        let report = std::fs::read_to_string(dir.path().join("durability-report.md")).unwrap();
        assert!(report.contains("| 4+4 | 2.0× | 2 h |"));
        for chart in [
            "durability-durability.svg",
            "durability-lost.svg",
            "durability-repair.svg",
        ] {
            let svg = std::fs::read_to_string(dir.path().join(chart)).unwrap();
            assert!(report.contains(chart));
            assert!(svg.contains("</svg>"), "{chart}");
            if !chart.contains("lost") {
                // One line per scheme (the lost chart leaves out schemes that lost none).
                assert_eq!(svg.matches("<polyline").count(), 2, "{chart}");
            }
        }
    }
}
