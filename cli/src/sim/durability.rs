//! `cairn sim durability`: do blocks outlive their nodes, and what does it cost in repair
//! traffic? A front end over the churn scenario (`cairn_sim::churn::run_churn`), the
//! same simulation as `cairn sim churn`: real overlays, PAST holders, the daemon's
//! maintenance schedule and planner, crash and restart churn.
//!
//! Owns: [`DurabilityArgs`] and their mapping onto `ChurnParams` ([`churn_params`]),
//! [`Scheme`] (`k+m`, or `rN` / `Nx` replication as a code of one data fragment), the
//! sweep over schemes and mean sessions, the limit search, and the table, JSON, report
//! and charts.
//!
//! May use: [`cairn_sim::churn`], the parent's `run_parallel`, [`crate::chart`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_core::erasure::ErasureParams;
use cairn_sim::churn::{ChurnMode, ChurnOutcome, ChurnParams, run_churn};
use cairn_sim::maintenance::MaintenanceSetup;
use serde_json::json;

use super::run_parallel;
use crate::chart::{Axis, LineChart};

/// Arguments of `cairn sim durability`.
#[derive(Debug, clap::Args)]
pub struct DurabilityArgs {
    /// Nodes, the gateway (node 0, never killed) included; a new empty node joins for
    /// each permanent departure.
    #[arg(long, default_value_t = 16)]
    pub nodes: usize,
    /// Blocks stored at the start, through the real put: one file of one block each
    /// (plus its manifest block).
    #[arg(long, default_value_t = 80)]
    pub blocks: usize,
    /// Bytes per block (at most the put's segment, 1 MiB).
    #[arg(long, default_value_t = 256 << 10)]
    pub block_size: u64,
    /// Virtual hours of churn (rounded to whole seconds).
    #[arg(long, default_value_t = 1.0 / 60.0)]
    pub hours: f64,
    /// Mean session lengths to sweep (`30s`, `15m`, `4h`, whole seconds, or `none`).
    #[arg(long = "mean-session", value_parser = parse_session, default_values = ["30s", "60s", "300s"])]
    pub mean_sessions: Vec<Option<Duration>>,
    /// Redundancy schemes to compare (`4+2`: k = 4, m = 2; `r3` or `3x`: three copies,
    /// run as the code k = 1, m = 2).
    #[arg(long = "scheme", default_values = ["4+2", "4+4", "r3"])]
    pub schemes: Vec<Scheme>,
    /// Repair bytes per second each node starts: the maintenance's pacing (0:
    /// unlimited; the daemon's default is 50 MiB/s).
    #[arg(long, default_value_t = 50 << 20)]
    pub repair_bandwidth: u64,
    /// Seconds before a departed node is declared dead. A node is declared dead after
    /// 3 missed keepalives, so the overlay's keepalive tick is set to a third of this
    /// (at least 10 ms; the daemon's 300 ms tick detects in about 0.9 s).
    #[arg(long, default_value_t = 0.9)]
    pub detect_after: f64,
    /// Share of departures that are transient (the node returns with its data): 0 is
    /// `cairn sim churn --mode crash`, 0.5 mixed, 1 restart.
    #[arg(long, default_value_t = 0.0)]
    pub transient: f64,
    /// Mean downtime of a transient departure (`3s`, `10m`, ...; default: the churn
    /// bench's clamp(mean session / 10, 1 s, 30 s)).
    #[arg(long, value_parser = parse_duration)]
    pub downtime: Option<Duration>,
    /// Readers reading random files back to back during the churn (0: durability only).
    #[arg(long, default_value_t = 0)]
    pub readers: usize,
    /// Seconds to wait for full redundancy after the churn, before the final reads.
    #[arg(long, default_value_t = 120)]
    pub repair_timeout: u64,
    /// Seed of every random choice: the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also search, for each scheme, the mean session below which blocks are lost
    /// (bisection on a log scale inside the bracket the sweep found, to within 10%).
    #[arg(long)]
    pub find_limit: bool,
    /// Configurations run at once (each is single-threaded).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Print one JSON object per configuration instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a Markdown report and SVG charts into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Names of the files written by `--out`: PREFIX-report.md, PREFIX-durability.svg,
    /// PREFIX-lost.svg, PREFIX-repair.svg.
    #[arg(long, default_value = "durability")]
    pub prefix: String,
}

/// A redundancy scheme: erasure coding, or whole copies run as a code of one data
/// fragment (each fragment of a block of k = 1 is the whole block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `copies` whole copies (`r3`, `3x`): k = 1, m = copies - 1.
    Replication {
        /// Copies kept.
        copies: u16,
    },
    /// Reed-Solomon `k+m`.
    Erasure {
        /// Data fragments.
        k: u16,
        /// Parity fragments.
        m: u16,
    },
}

impl Scheme {
    /// The code the real put and repair run.
    pub fn params(self) -> anyhow::Result<ErasureParams> {
        let (k, m) = match self {
            Scheme::Replication { copies } => (1, copies.saturating_sub(1)),
            Scheme::Erasure { k, m } => (k, m),
        };
        ErasureParams::new(k, m).with_context(|| format!("scheme {self}"))
    }

    /// Fragments (or copies) per block: n.
    pub fn fragments(self) -> u16 {
        match self {
            Scheme::Replication { copies } => copies,
            Scheme::Erasure { k, m } => k.saturating_add(m),
        }
    }

    /// Bytes stored per byte of data: n / k.
    pub fn overhead(self) -> f64 {
        match self {
            Scheme::Replication { copies } => f64::from(copies),
            Scheme::Erasure { k, m } => f64::from(k + m) / f64::from(k.max(1)),
        }
    }
}

impl std::fmt::Display for Scheme {
    /// `r3` for three copies, `4+2` for k = 4, m = 2.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheme::Replication { copies } => write!(f, "r{copies}"),
            Scheme::Erasure { k, m } => write!(f, "{k}+{m}"),
        }
    }
}

impl FromStr for Scheme {
    type Err = String;

    /// `rN` or `Nx` (N copies, N >= 1), or `K+M` (K >= 1, K + M <= 256).
    fn from_str(text: &str) -> Result<Scheme, String> {
        let bad = || format!("a scheme is `K+M` (K >= 1), `rN` or `Nx` (N >= 1), got {text:?}");
        let t = text.trim();
        let scheme = if let Some((k, m)) = t.split_once('+') {
            Scheme::Erasure {
                k: k.trim().parse().map_err(|_| bad())?,
                m: m.trim().parse().map_err(|_| bad())?,
            }
        } else {
            let copies = t
                .strip_prefix('r')
                .or_else(|| t.strip_suffix('x'))
                .or_else(|| t.strip_suffix('×'))
                .ok_or_else(bad)?;
            Scheme::Replication {
                copies: copies.trim().parse().map_err(|_| bad())?,
            }
        };
        if scheme.fragments() == 0 {
            return Err(bad());
        }
        scheme.params().map_err(|e| format!("{e:#}"))?;
        Ok(scheme)
    }
}

/// The churn scenario's parameters for one scheme and mean session (`None`: no
/// departures in the run).
pub fn churn_params(
    args: &DurabilityArgs,
    scheme: Scheme,
    session: Option<Duration>,
) -> anyhow::Result<ChurnParams> {
    if !(args.hours > 0.0 && args.hours.is_finite()) {
        bail!("--hours must be positive, got {}", args.hours);
    }
    if !(args.detect_after >= 0.0 && args.detect_after.is_finite()) {
        bail!(
            "--detect-after must be at least 0, got {}",
            args.detect_after
        );
    }
    if args.block_size == 0
        || args.block_size > u64::from(cairn_core::manifest::DEFAULT_SEGMENT_SIZE)
    {
        bail!(
            "--block-size must be within 1 and {} bytes (one block per file: the put cuts files into blocks of that size)",
            cairn_core::manifest::DEFAULT_SEGMENT_SIZE
        );
    }
    let mode = ChurnMode::transient(args.transient).context("--transient")?;
    Ok(ChurnParams {
        nodes: args.nodes,
        files: args.blocks,
        size: args.block_size,
        duration: churn_seconds(args) as u64,
        mean_session: session.map_or(u64::MAX, |s| s.as_secs().max(1)),
        mode,
        readers: args.readers,
        params: scheme.params()?,
        repair_timeout: args.repair_timeout,
        downtime: args.downtime,
        tick: Duration::try_from_secs_f64(args.detect_after / 3.0)
            .with_context(|| format!("--detect-after {}", args.detect_after))?,
        maintenance: Some(MaintenanceSetup {
            repair_bytes_per_sec: args.repair_bandwidth,
            ..MaintenanceSetup::default()
        }),
        ..ChurnParams::new(args.seed)
    })
}

/// One configuration's run.
pub struct DurabilityRun {
    /// The scheme.
    pub scheme: Scheme,
    /// The mean session (`None`: no departures).
    pub session: Option<Duration>,
    /// What the churn scenario measured.
    pub outcome: ChurnOutcome,
    /// Wall seconds of the run.
    pub wall_seconds: f64,
}

impl DurabilityRun {
    /// Blocks below k fragments at the end (manifests included).
    pub fn lost_blocks(&self) -> usize {
        self.outcome
            .record
            .lost
            .iter()
            .filter(|b| b.block.is_some())
            .count()
    }

    /// Files whose final read failed.
    pub fn lost_files(&self) -> usize {
        self.outcome
            .record
            .final_reads
            .iter()
            .filter(|r| r.is_err())
            .count()
    }

    /// Seconds into the churn when a block first fell below k.
    pub fn first_loss_seconds(&self) -> Option<f64> {
        self.outcome
            .record
            .lost
            .iter()
            .filter_map(|b| b.lost_at)
            .min_by(f64::total_cmp)
    }

    /// The fewest live fragments any block had in a sample.
    pub fn min_live(&self) -> Option<usize> {
        self.outcome.record.samples.iter().map(|s| s.min_live).min()
    }

    /// Repair bytes per stored byte per hour of churn.
    pub fn repair_per_stored_per_hour(&self, hours: f64) -> f64 {
        self.outcome.record.repair_per_stored() / hours
    }
}

fn run_all(
    args: &DurabilityArgs,
    configs: &[(Scheme, Option<Duration>)],
) -> anyhow::Result<Vec<DurabilityRun>> {
    run_parallel(configs, args.jobs, |&(scheme, session)| {
        let started = Instant::now();
        let params = churn_params(args, scheme, session)?;
        let outcome = run_churn(&params).with_context(|| format!("scheme {scheme}"))?;
        Ok(DurabilityRun {
            scheme,
            session,
            outcome,
            wall_seconds: started.elapsed().as_secs_f64(),
        })
    })
}

/// Runs `cairn sim durability`.
pub fn run_command(args: &DurabilityArgs) -> anyhow::Result<()> {
    let configs: Vec<(Scheme, Option<Duration>)> = args
        .schemes
        .iter()
        .flat_map(|&s| args.mean_sessions.iter().map(move |&m| (s, m)))
        .collect();
    // Refuse bad flags before any run starts.
    for &(scheme, session) in &configs {
        churn_params(args, scheme, session)?;
    }
    let started = Instant::now();
    let results = run_all(args, &configs)?;
    let limits = if args.find_limit {
        find_limits(args, &results)?
    } else {
        Vec::new()
    };
    let wall = started.elapsed().as_secs_f64();
    if args.json {
        for run in &results {
            println!("{}", run_json(args, run));
        }
        for limit in &limits {
            println!("{}", limit_json(limit));
        }
    } else {
        print!("{}", header(args));
        print!("{}", table(args, &results));
        if !limits.is_empty() {
            print!("{}", limits_table(args, &limits));
        }
        println!("wall {wall:.1} s");
    }
    if let Some(dir) = &args.out {
        write_report(dir, args, &results, &limits, wall)
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

fn find_limits(args: &DurabilityArgs, results: &[DurabilityRun]) -> anyhow::Result<Vec<Limit>> {
    let lost = |scheme: Scheme, session: Duration| -> anyhow::Result<usize> {
        Ok(run_all(args, &[(scheme, Some(session))])?
            .first()
            .map_or(0, DurabilityRun::lost_blocks))
    };
    // The sweep brackets the limit: the longest session that lost blocks and the
    // shortest longer one that did not.
    let search = |scheme: Scheme| -> anyhow::Result<Limit> {
        let mut swept: Vec<(Duration, usize)> = results
            .iter()
            .filter(|r| r.scheme == scheme)
            .filter_map(|r| Some((r.session?, r.lost_blocks())))
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
        // Bisect on a log scale until the bracket is within 10% (or a second apart:
        // sessions are whole seconds).
        for _ in 0..20 {
            if safe.as_secs_f64() / lossy.as_secs_f64() <= 1.1
                || safe.as_secs() <= lossy.as_secs() + 1
            {
                break;
            }
            let middle = Duration::from_secs(
                (safe.as_secs_f64() * lossy.as_secs_f64()).sqrt().round() as u64,
            );
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
    args.schemes.iter().map(|&scheme| search(scheme)).collect()
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
        "\nThe stated limit: the mean session below which blocks are lost ({} nodes, {} blocks, {} of churn, seed {}):\n\n",
        args.nodes,
        args.blocks,
        churn_label(args),
        args.seed
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
            Some(d) if limit.safe.is_none() => format!(
                "{} (longest tried; {} lost)",
                session_label(Some(d)),
                limit.lost_at_lossy
            ),
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

fn run_json(args: &DurabilityArgs, run: &DurabilityRun) -> serde_json::Value {
    let record = &run.outcome.record;
    let maintenance = &run.outcome.maintenance;
    let params = run.scheme.params().ok();
    let hours = churn_seconds(args) / 3600.0;
    json!({
        "scheme": run.scheme.to_string(),
        "k": params.map(|p| p.k()),
        "m": params.map(|p| p.m()),
        "overhead": run.scheme.overhead(),
        "nodes": args.nodes,
        "blocks": args.blocks,
        "block_bytes": args.block_size,
        "stored_blocks": run.outcome.stored_blocks,
        "hours": hours,
        "mean_session_s": run.session.map(|d| d.as_secs_f64()),
        "transient_fraction": args.transient,
        "mean_downtime_s": args.downtime.map(|d| d.as_secs_f64()),
        "detect_after_s": args.detect_after,
        "repair_bandwidth": args.repair_bandwidth,
        "readers": args.readers,
        "seed": args.seed,
        "durability": record.durability(),
        "lost_blocks": run.lost_blocks(),
        "lost_files": run.lost_files(),
        "first_loss_s": run.first_loss_seconds(),
        "min_live_fragments": run.min_live(),
        "departures": record.kills,
        "returns": run.outcome.returns,
        "joins": run.outcome.joins,
        "repairs": maintenance.fragments_regenerated,
        "handoffs": maintenance.fragments_handed_off,
        "repair_bytes": record.repair_bytes,
        "stored_bytes": record.stored_bytes,
        "repair_bytes_per_stored_byte": record.repair_per_stored(),
        "repair_bytes_per_stored_byte_per_hour": run.repair_per_stored_per_hour(hours),
        "time_to_full_redundancy_s": record.time_to_full_redundancy,
        "reads": record.reads.len(),
        "availability": record.availability(),
        "simulated_seconds": run.outcome.simulated_seconds,
        "wall_seconds": run.wall_seconds,
    })
}

/// The churn's length as tables print it (`1 min`, `6 min`, `24 h`).
fn churn_label(args: &DurabilityArgs) -> String {
    session_label(Some(Duration::from_secs_f64(churn_seconds(args))))
}

/// Seconds of churn: `--hours` rounded to whole seconds, at least one.
fn churn_seconds(args: &DurabilityArgs) -> f64 {
    (args.hours * 3600.0).round().max(1.0)
}

fn header(args: &DurabilityArgs) -> String {
    let downtime = args.downtime.map_or_else(
        || "the churn bench's".to_owned(),
        |d| session_label(Some(d)),
    );
    format!(
        "cairn sim durability (the churn simulation): {} nodes, {} blocks of {} KiB, {} of churn, repair pacing {:.0} kB/s per node, detection after {} s (keepalive tick {:.0} ms), {:.0}% transient departures (mean downtime {downtime}), {} readers, seed {}\n\n",
        args.nodes,
        args.blocks,
        args.block_size / 1024,
        churn_label(args),
        args.repair_bandwidth as f64 / 1e3,
        args.detect_after,
        args.detect_after / 3.0 * 1e3,
        args.transient * 100.0,
        args.readers,
        args.seed
    )
}

fn table(args: &DurabilityArgs, results: &[DurabilityRun]) -> String {
    let hours = churn_seconds(args) / 3600.0;
    let mut out = String::from(
        "| scheme | overhead | mean session | durability | lost blocks | first loss s | min live (n) | departures / returns / joins | repair B / stored B | time to full redundancy s |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for run in results {
        let record = &run.outcome.record;
        let first_loss = run
            .first_loss_seconds()
            .map_or_else(|| "–".to_owned(), |s| format!("{s:.1}"));
        let full = record
            .time_to_full_redundancy
            .map_or_else(|| "never".to_owned(), |s| format!("{s:.0}"));
        let min_live = run
            .min_live()
            .map_or_else(|| "–".to_owned(), |l| l.to_string());
        out.push_str(&format!(
            "| {} | {:.1}× | {} | {:.4} | {} | {first_loss} | {min_live} ({}) | {} / {} / {} | {:.3} ({:.1} / h) | {full} |\n",
            run.scheme,
            run.scheme.overhead(),
            session_label(run.session),
            record.durability(),
            run.lost_blocks(),
            run.scheme.fragments(),
            record.kills,
            run.outcome.returns,
            run.outcome.joins,
            record.repair_per_stored(),
            run.repair_per_stored_per_hour(hours),
        ));
    }
    out
}

/// One series per scheme: (mean session in seconds, value), sessions with churn only.
fn per_scheme(
    args: &DurabilityArgs,
    results: &[DurabilityRun],
    value: impl Fn(&DurabilityRun) -> f64,
) -> Vec<(String, Vec<(f64, f64)>)> {
    args.schemes
        .iter()
        .map(|scheme| {
            let points = results
                .iter()
                .filter(|r| r.scheme == *scheme)
                .filter_map(|r| Some((r.session?.as_secs_f64(), value(r))))
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

fn write_report(
    dir: &Path,
    args: &DurabilityArgs,
    results: &[DurabilityRun],
    limits: &[Limit],
    wall: f64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let setting = format!(
        "{} nodes, detection {} s, {:.0}% transient",
        args.nodes,
        args.detect_after,
        args.transient * 100.0
    );
    let hours = churn_seconds(args) / 3600.0;
    type Measure = Box<dyn Fn(&DurabilityRun) -> f64>;
    let charts: [(&str, String, Axis, Measure); 3] = [
        (
            "durability.svg",
            format!(
                "Files readable after {} of churn ({setting})",
                churn_label(args)
            ),
            Axis {
                label: "files readable / files".to_owned(),
                range: Some((0.0, 1.0)),
                ..Axis::default()
            },
            Box::new(|r| r.outcome.record.durability()),
        ),
        (
            "lost.svg",
            format!(
                "Blocks lost in {} of churn (no point: none lost)",
                churn_label(args)
            ),
            Axis {
                label: "blocks lost / blocks stored".to_owned(),
                log: true,
                ..Axis::default()
            },
            Box::new(|r| r.lost_blocks() as f64 / r.outcome.stored_blocks.max(1) as f64),
        ),
        (
            "repair.svg",
            format!("Repair traffic against churn ({setting})"),
            Axis {
                label: "repair bytes per stored byte per hour".to_owned(),
                log: true,
                ..Axis::default()
            },
            Box::new(move |r| r.repair_per_stored_per_hour(hours)),
        ),
    ];
    let mut markdown = format!(
        "# cairn sim durability\n\n{}Command: `{}`\n\n",
        header(args),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    markdown.push_str(&table(args, results));
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

/// A mean session: a duration of at least a second (the churn draws whole-second
/// means), or `none`.
fn parse_session(text: &str) -> Result<Option<Duration>, String> {
    if text.trim() == "none" {
        return Ok(None);
    }
    let session = parse_duration(text)?;
    if session < Duration::from_secs(1) {
        return Err(format!("{text:?}: a mean session is at least 1 s"));
    }
    Ok(Some(session))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: DurabilityArgs,
    }

    fn args(flags: &[&str]) -> DurabilityArgs {
        Cli::try_parse_from(std::iter::once("durability").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

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
        assert!(parse_session("0.5s").is_err());
        let label = |s: &str| session_label(parse_session(s).unwrap());
        assert_eq!(label("15m"), "15 min");
        assert_eq!(label("30s"), "30 s");
        assert_eq!(label("4h"), "4 h");
        assert_eq!(label("1d"), "1 d");
        assert_eq!(label("1w"), "1 w");
        assert_eq!(label("90m"), "1.5 h");
        assert_eq!(label("none"), "none");
    }

    #[test]
    fn schemes_parse_and_replication_runs_as_one_data_fragment() {
        let scheme = |s: &str| s.parse::<Scheme>();
        assert_eq!(scheme("4+2").unwrap(), Scheme::Erasure { k: 4, m: 2 });
        assert_eq!(scheme("r3").unwrap(), Scheme::Replication { copies: 3 });
        assert_eq!(scheme("3x").unwrap(), Scheme::Replication { copies: 3 });
        let r3 = scheme("r3").unwrap().params().unwrap();
        assert_eq!((r3.k(), r3.m()), (1, 2));
        assert_eq!(scheme("r3").unwrap().overhead(), 3.0);
        assert_eq!(scheme("4+2").unwrap().overhead(), 1.5);
        assert_eq!(scheme("r1").unwrap().params().unwrap().m(), 0);
        for bad in ["", "r0", "0x", "0+2", "4+", "x", "200+100", "r"] {
            assert!(scheme(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_flags_map_onto_the_churn_scenario() {
        let a = args(&[
            "--nodes",
            "12",
            "--blocks",
            "7",
            "--block-size",
            "1000",
            "--hours",
            "0.0167",
            "--transient",
            "0.25",
            "--downtime",
            "3s",
            "--detect-after",
            "0.3",
            "--repair-bandwidth",
            "1000000",
        ]);
        let p = churn_params(&a, "3x".parse().unwrap(), Some(Duration::from_secs(30))).unwrap();
        assert_eq!((p.nodes, p.files, p.size), (12, 7, 1000));
        assert_eq!(p.duration, 60);
        assert_eq!(p.mean_session, 30);
        assert_eq!(p.mode, ChurnMode::transient(0.25).unwrap());
        assert_eq!(p.downtime, Some(Duration::from_secs(3)));
        assert_eq!(p.tick, Duration::from_millis(100));
        assert_eq!(p.readers, 0);
        assert_eq!((p.params.k(), p.params.m()), (1, 2));
        assert_eq!(p.maintenance.unwrap().repair_bytes_per_sec, 1_000_000);
        // Defaults: crash churn, the bench's downtime, the daemon's detection.
        let p = churn_params(&args(&[]), "4+2".parse().unwrap(), None).unwrap();
        assert_eq!(p.mode, ChurnMode::CRASH);
        assert_eq!(p.downtime, None);
        assert_eq!(p.tick, Duration::from_millis(300));
        assert_eq!(p.mean_session, u64::MAX);
        let scheme = "4+2".parse().unwrap();
        for bad in [
            &["--transient", "1.5"][..],
            &["--hours", "0"],
            &["--detect-after=-1"],
            &["--detect-after", "1e300"],
            &["--block-size", "2000000"],
        ] {
            assert!(churn_params(&args(bad), scheme, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_tiny_sweep_writes_its_table_report_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let a = DurabilityArgs {
            out: Some(dir.path().to_owned()),
            ..args(&[
                "--nodes",
                "8",
                "--blocks",
                "4",
                "--block-size",
                "65536",
                "--hours",
                "0.005",
                "--mean-session",
                "10s",
                "--mean-session",
                "none",
                "--scheme",
                "4+2",
                "--scheme",
                "r2",
                "--repair-timeout",
                "60",
            ])
        };
        let configs: Vec<_> = a
            .schemes
            .iter()
            .flat_map(|&s| a.mean_sessions.iter().map(move |&m| (s, m)))
            .collect();
        let results = run_all(&a, &configs).unwrap();
        assert_eq!(results.len(), 4);
        assert_eq!(results[3].scheme.to_string(), "r2");
        // Without departures nothing leaves, nothing is lost.
        let quiet = &results[1];
        assert_eq!(quiet.outcome.record.kills, 0);
        assert_eq!(quiet.lost_blocks(), 0);
        assert_eq!(quiet.outcome.record.durability(), 1.0);
        assert!(results[0].outcome.record.kills > 0);
        let table = table(&a, &results);
        assert_eq!(table.lines().count(), 2 + 4, "{table}");
        assert!(table.contains("| r2 | 2.0× | 10 s |"), "{table}");
        let json = run_json(&a, &results[0]);
        assert_eq!(json["stored_blocks"], 8);
        assert_eq!(json["departures"], results[0].outcome.record.kills);
        write_report(dir.path(), &a, &results, &[], 0.0).unwrap();
        let report = std::fs::read_to_string(dir.path().join("durability-report.md")).unwrap();
        assert!(report.contains("| 4+2 | 1.5× | none |"), "{report}");
        for chart in [
            "durability-durability.svg",
            "durability-lost.svg",
            "durability-repair.svg",
        ] {
            let svg = std::fs::read_to_string(dir.path().join(chart)).unwrap();
            assert!(report.contains(chart));
            assert!(svg.contains("</svg>"), "{chart}");
        }
    }
}
