//! What `cairn bench churn` and `cairn sim churn` share, so that a real run and its
//! simulation take the same flags and print the same report: the flags
//! ([`ChurnShape`]), the JSON report built from a [`ChurnRecord`] ([`report_json`]),
//! and the files `--out` writes (report, raw series, chart).
//!
//! Owns: [`ChurnShape`], [`ChurnModeArg`], [`report_json`], [`print_report`].
//!
//! May use: [`cairn_sim::churn_report`] (the tracker and the record: the measures
//! themselves), [`crate::chart`], `serde_json`, the file system for `--out`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_core::id::Reference;
use cairn_sim::churn::ChurnMode;
use cairn_sim::churn_report::{ChurnRecord, LostBlock, Read, Redundancy, percentile, tenths};
use serde_json::json;

use crate::chart::{Axis, LineChart};
use crate::files::parse_size;

/// How departed nodes come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ChurnModeArg {
    /// A killed node is replaced by a new, empty one (its data is gone).
    Crash,
    /// A killed node restarts on its data dir after a short downtime.
    Restart,
    /// Each death flips a coin between the two.
    Mixed,
}

impl From<ChurnModeArg> for ChurnMode {
    fn from(mode: ChurnModeArg) -> ChurnMode {
        match mode {
            ChurnModeArg::Crash => ChurnMode::CRASH,
            ChurnModeArg::Restart => ChurnMode::RESTART,
            ChurnModeArg::Mixed => ChurnMode::MIXED,
        }
    }
}

/// The flags of a churn run, the same for the bench and the simulation.
#[derive(Clone, Debug, clap::Args)]
pub struct ChurnShape {
    /// Nodes (node 0, the API gateway, is never killed).
    #[arg(long, default_value_t = 16)]
    pub nodes: usize,
    /// Files stored before the churn starts.
    #[arg(long, default_value_t = 16)]
    pub files: usize,
    /// Size of each file (e.g. 1MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub size: u64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Mean session length of a node in seconds (exponentially distributed).
    #[arg(long, default_value_t = 60)]
    pub mean_session: u64,
    /// What a killed node does next.
    #[arg(long, value_enum, default_value_t = ChurnModeArg::Mixed)]
    pub mode: ChurnModeArg,
    /// Concurrent readers fetching random files during the churn.
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Seed of every random choice of the run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Data fragments per block.
    #[arg(short, default_value_t = 4)]
    pub k: u16,
    /// Parity fragments per block.
    #[arg(short, default_value_t = 2)]
    pub m: u16,
    /// How long to wait for full redundancy after the churn stops, in seconds.
    #[arg(long, default_value_t = 300)]
    pub repair_timeout: u64,
    /// Overlay keepalive period of the nodes in milliseconds (failure detection ~3×).
    #[arg(long, default_value_t = 300)]
    pub tick_ms: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Also write a Markdown report and an SVG chart here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl ChurnShape {
    /// The mode's name in the report.
    pub fn mode_name(&self) -> &'static str {
        ChurnMode::from(self.mode).name()
    }
}

/// One lost block as the report lists it.
fn lost_block_json(block: &LostBlock) -> serde_json::Value {
    json!({
        "file": Reference::File(block.file).to_string(),
        "block": block.block,
        "key": block.key,
        "live": block.live,
        "last_readable_live": block.last_readable.map(|(_, live)| live),
        "last_readable_at_s": block.last_readable.map(|(at, _)| tenths(at)),
        "lost_at_s": block.lost_at.map(tenths),
        "degraded_at_s": block.degraded_at.map(tenths),
        "repair_pending_s": block.repair_pending().map(tenths),
        "readable": block.readable,
        "why": block.why,
    })
}

/// The report of a churn run: the same fields, computed the same way, for the bench
/// and the simulation.
pub fn report_json(shape: &ChurnShape, record: &ChurnRecord) -> serde_json::Value {
    let latencies = record.sorted_latencies();
    let last = record.samples.last();
    json!({
        "availability": record.availability(),
        "durability": record.durability(),
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "repair_bytes_per_stored_byte": record.repair_per_stored(),
        "time_to_full_redundancy_s": record.time_to_full_redundancy,
        // The last redundancy sample, taken at the end of the repair wait: when full
        // redundancy never came back, how far it was. A block of a file whose stat
        // failed counts as 0 live fragments (`final_stat_failures` says how many).
        "final_sample_s": last.map(|s| tenths(s.at)),
        "final_min_live": last.map(|s| s.min_live),
        "final_mean_live": last.map(|s| s.mean_live),
        "final_blocks_below_k": last.map(|s| s.below_k),
        "final_stat_failures": last.map(|s| s.stat_failures),
        "lost_blocks": record.lost.iter().map(lost_block_json).collect::<Vec<_>>(),
        "reads": record.reads.len(),
        "failed_reads": record.reads.len() - record.ok_reads(),
        "kills": record.kills,
        "files": shape.files,
        "nodes": shape.nodes,
        "k": shape.k,
        "m": shape.m,
        "duration_s": shape.duration,
        "mean_session_s": shape.mean_session,
        "mode": shape.mode_name(),
        "seed": shape.seed,
    })
}

/// Prints the report (lost blocks on stderr, the JSON on stdout: one line with
/// `--json`, pretty otherwise) and writes `--out`. `command` names the run
/// (`"bench churn"`, `"sim churn"`).
pub fn print_report(command: &str, shape: &ChurnShape, record: &ChurnRecord) -> anyhow::Result<()> {
    for block in &record.lost {
        eprintln!("{}", block.line());
    }
    let report = report_json(shape, record);
    if shape.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(out) = &shape.out {
        write_report(out, command, shape, &report, record)?;
    }
    Ok(())
}

/// Writes `report.md`, `reads.csv`, `redundancy.csv` and `churn.svg` into `out`.
fn write_report(
    out: &Path,
    command: &str,
    shape: &ChurnShape,
    report: &serde_json::Value,
    record: &ChurnRecord,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut csv = String::from("t_s,ok,ms\n");
    for r in &record.reads {
        csv.push_str(&format!("{:.3},{},{:.1}\n", r.at, u8::from(r.ok), r.millis));
    }
    std::fs::write(out.join("reads.csv"), csv)?;
    let mut csv =
        String::from("t_s,mean_live_fraction,min_live,blocks_below_k,stat_failures,live_nodes\n");
    for s in &record.samples {
        csv.push_str(&format!(
            "{:.1},{:.4},{},{},{},{}\n",
            s.at, s.mean_live, s.min_live, s.below_k, s.stat_failures, s.live_nodes
        ));
    }
    std::fs::write(out.join("redundancy.csv"), csv)?;
    std::fs::write(
        out.join("churn.svg"),
        churn_chart(shape, &record.reads, &record.samples),
    )?;
    let lost_section = if record.lost.is_empty() {
        "No block was below k live fragments at the end, and every file read.\n".to_string()
    } else {
        let lines: Vec<String> = record
            .lost
            .iter()
            .map(|b| format!("- {}\n", b.line()))
            .collect();
        format!("## Lost blocks\n\n{}", lines.concat())
    };
    let markdown = format!(
        "# cairn {command}\n\n`cairn {command} --nodes {} --files {} --size {} --duration {} \
         --mean-session {} --mode {} --readers {} --seed {} -k {} -m {}`\n\n```json\n{}\n```\n\n\
         ![availability and redundancy over time](churn.svg)\n\n\
         Raw series: `reads.csv` (every read: time, success, latency) and `redundancy.csv` \
         (mean live-fragment fraction, fewest live fragments of any block, blocks below k, \
         failed stats, live nodes).\n\n{}",
        shape.nodes,
        shape.files,
        shape.size,
        shape.duration,
        shape.mean_session,
        shape.mode_name(),
        shape.readers,
        shape.seed,
        shape.k,
        shape.m,
        serde_json::to_string_pretty(report)?,
        lost_section
    );
    std::fs::write(out.join("report.md"), markdown)?;
    Ok(())
}

/// Read availability (per 10 s window) and live-fragment redundancy over time.
fn churn_chart(shape: &ChurnShape, reads: &[Read], samples: &[Redundancy]) -> String {
    const WINDOW: f64 = 10.0;
    let mut windows: Vec<(usize, usize)> = Vec::new();
    for read in reads {
        let slot = (read.at / WINDOW) as usize;
        if windows.len() <= slot {
            windows.resize(slot + 1, (0, 0));
        }
        windows[slot].0 += usize::from(read.ok);
        windows[slot].1 += 1;
    }
    let availability = windows
        .iter()
        .enumerate()
        .filter(|(_, (_, total))| *total > 0)
        .map(|(i, (ok, total))| ((i as f64 + 0.5) * WINDOW, *ok as f64 / *total as f64))
        .collect();
    let n = f64::from(shape.k + shape.m);
    let mut chart = LineChart::new(
        format!(
            "churn: {} nodes, mean session {} s, {}, {}+{}",
            shape.nodes,
            shape.mean_session,
            shape.mode_name(),
            shape.k,
            shape.m
        ),
        Axis {
            label: format!(
                "time (s); churn from 0 to {} s, then repair",
                shape.duration
            ),
            ..Axis::default()
        },
        Axis {
            label: "fraction".into(),
            range: Some((0.0, 1.05)),
            ..Axis::default()
        },
    );
    chart.push("reads OK (10 s)", availability);
    chart.push(
        "mean live / n",
        samples.iter().map(|s| (s.at, s.mean_live)).collect(),
    );
    chart.push(
        "fewest live / n",
        samples
            .iter()
            .map(|s| (s.at, s.min_live as f64 / n))
            .collect(),
    );
    chart.to_svg()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cairn_core::id::{FileId, Id};

    use super::*;

    #[test]
    fn a_lost_block_reports_how_long_its_repair_was_pending() {
        let block = LostBlock {
            file: FileId(Id([1; 32])),
            block: Some("0".into()),
            key: Some("key1".into()),
            live: Some(3),
            last_readable: Some((20.0, 4)),
            lost_at: Some(25.0),
            degraded_at: Some(15.0),
            readable: false,
            why: "3 of 6 fragments live, 4 needed".into(),
        };
        let json = lost_block_json(&block);
        assert_eq!(json["repair_pending_s"], 10.0);
        assert_eq!(json["last_readable_live"], 4);
        assert_eq!(json["readable"], false);
    }
}
