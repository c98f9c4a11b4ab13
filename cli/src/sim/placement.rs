//! `cairn sim placement`: runs `cairn_sim::placement::run_placement` for each variant,
//! prints the table and writes the Markdown report and its chart.
//!
//! Owns: the report's text (tables, the comparison with PAST, the chart). May use:
//! `cairn_sim::placement`, the parent's `run_parallel` and `crate::chart`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use cairn_core::erasure::ErasureParams;
use cairn_sim::placement::{PlacementParams, PlacementReport, run_placement};
use serde_json::json;

use super::{PlacementArgs, run_parallel};
use crate::chart::{Axis, LineChart};

/// Utilisation levels of the curve table.
const LEVELS: [f64; 9] = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99];

fn params(args: &PlacementArgs) -> anyhow::Result<Vec<PlacementParams>> {
    if args.nodes < 8 {
        bail!("--nodes must be at least 8");
    }
    if !(0.0..=1.0).contains(&args.stop_failed) || args.max_offered <= 0.0 {
        bail!("--stop-failed is a share in [0, 1] and --max-offered positive");
    }
    if args.file_max == 0 || args.file_median < 1.0 || args.file_sigma < 0.0 {
        bail!("--file-max, --file-median must be at least 1 and --file-sigma at least 0");
    }
    let erasure = ErasureParams::new(args.k, args.m).context("invalid -k/-m")?;
    Ok(args
        .variants
        .iter()
        .map(|&diversion| PlacementParams {
            params: erasure,
            capacity_mean: args.capacity_mean,
            file_median: args.file_median,
            file_sigma: args.file_sigma,
            file_max: args.file_max,
            in_flight: args.in_flight,
            stop_failed: args.stop_failed,
            max_offered: args.max_offered,
            ..PlacementParams::new(args.nodes, args.seed, diversion)
        })
        .collect())
}

/// `cairn sim placement`.
pub fn run_command(args: &PlacementArgs) -> anyhow::Result<()> {
    let configs = params(args)?;
    let started = Instant::now();
    let results = run_parallel(&configs, args.jobs, |p| {
        let started = Instant::now();
        let report = run_placement(p).with_context(|| format!("variant {}", p.diversion))?;
        Ok((report, started.elapsed().as_secs_f64()))
    })?;
    let wall = started.elapsed().as_secs_f64();
    if args.json {
        for (report, seconds) in &results {
            println!("{}", report_json(report, *seconds));
        }
    } else {
        print!("{}", header(args));
        print!("{}", summary_table(&results));
        print!("\n{}", curve_table(&results));
        println!("wall {wall:.1} s");
    }
    if let Some(dir) = &args.out {
        write_report(dir, args, &results, wall)
            .with_context(|| format!("writing the report into {}", dir.display()))?;
    }
    Ok(())
}

fn header(args: &PlacementArgs) -> String {
    format!(
        "cairn sim placement: {} nodes (seed {}), {}+{} fragments, capacities mean {} B (truncated normal, σ 0.4× mean, within [0.074, 1.89]× mean), files lognormal median {} B σ {} up to {} B, {} inserts in flight\n\n",
        args.nodes,
        args.seed,
        args.k,
        args.m,
        args.capacity_mean,
        args.file_median,
        args.file_sigma,
        args.file_max,
        args.in_flight
    )
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn percent2(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{:.2}%", v * 100.0))
}

fn summary_table(results: &[(PlacementReport, f64)]) -> String {
    let mut out = String::from(
        "| variant | thresholds, file diversion | utilisation at first failed insert | at 1% failed | at 5% failed | at the end | inserts (failed) | fragments diverted | blocks diverted |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (r, _) in results {
        let d = r.params.diversion;
        let last = r.last();
        out.push_str(&format!(
            "| {d} | {} | {} | {} | {} | {} | {} ({:.1}%) | {} | {} |\n",
            d.describe(),
            percent(r.first_failure.map(|s| s.utilisation)),
            percent(r.utilisation_at_failed_share(0.01)),
            percent(r.utilisation_at_failed_share(0.05)),
            percent(Some(last.utilisation)),
            r.inserts,
            last.failed_share() * 100.0,
            r.past.fragments_diverted,
            r.file_diverted,
        ));
    }
    out
}

fn curve_table(results: &[(PlacementReport, f64)]) -> String {
    let mut out = String::from(
        "Cumulative share of failed inserts when the global utilisation first reached:\n\n| utilisation |",
    );
    for (r, _) in results {
        out.push_str(&format!(" {} |", r.params.diversion));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(results.len()));
    out.push('\n');
    for level in LEVELS {
        out.push_str(&format!("| {:.0}% |", level * 100.0));
        for (r, _) in results {
            out.push_str(&format!(
                " {} |",
                percent2(r.failed_share_at_utilisation(level))
            ));
        }
        out.push('\n');
    }
    out.push_str("\n(–: never reached before the run stopped.)\n");
    out
}

fn report_json(r: &PlacementReport, wall_seconds: f64) -> serde_json::Value {
    let p = &r.params;
    let config = p.diversion.config();
    json!({
        "variant": p.diversion.to_string(),
        "t_pri": config.t_pri,
        "t_div": config.t_div,
        "max_salt": p.diversion.max_salt(),
        "nodes": p.nodes,
        "seed": p.seed,
        "k": p.params.k(),
        "m": p.params.m(),
        "capacity_mean": p.capacity_mean,
        "total_capacity": r.total_capacity,
        "capacity_range": [r.capacity_range.0, r.capacity_range.1],
        "file_median": p.file_median,
        "file_sigma": p.file_sigma,
        "file_max": p.file_max,
        "inserts": r.inserts,
        "failed": r.failed,
        "first_failure_utilisation": r.first_failure.map(|s| s.utilisation),
        "first_failure_insert": r.first_failure.map(|s| s.inserts),
        "final_utilisation": r.last().utilisation,
        "fragments_diverted": r.past.fragments_diverted,
        "blocks_diverted": r.file_diverted,
        "failure_reasons": r.failure_reasons,
        "curve": r.samples.iter().map(|s| [s.utilisation, s.failed_share()]).collect::<Vec<_>>(),
        "simulated_seconds": r.simulated_seconds,
        "wall_seconds": wall_seconds,
    })
}

fn write_report(
    dir: &Path,
    args: &PlacementArgs,
    results: &[(PlacementReport, f64)],
    wall: f64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let svg = format!("{}.svg", args.prefix);
    let mut chart = LineChart::new(
        format!(
            "Failed inserts against storage utilisation ({} nodes, {}+{})",
            args.nodes, args.k, args.m
        ),
        Axis {
            label: "global storage utilisation".to_owned(),
            range: Some((0.0, 1.0)),
            ..Axis::default()
        },
        Axis {
            label: "cumulative share of failed inserts".to_owned(),
            ..Axis::default()
        },
    );
    for (r, _) in results {
        let d = r.params.diversion;
        chart.push(
            format!("{d} ({})", d.describe()),
            r.samples
                .iter()
                .map(|s| (s.utilisation, s.failed_share()))
                .collect(),
        );
    }
    std::fs::write(dir.join(&svg), chart.to_svg())?;

    let mut md = String::from(
        "# Storage utilisation against failed inserts: PAST's experiment in the simulator\n\n",
    );
    md.push_str(INTRO);
    md.push_str(&format!(
        "\nCommand (release build; wall {wall:.0} s on the machine it ran on):\n\n```\ncairn {}\n```\n\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    ));
    md.push_str(&header(args));
    if let Some((r, _)) = results.first() {
        md.push_str(&format!(
            "Total capacity {:.1} MiB; capacities drawn from {} to {} B.\n\n",
            r.total_capacity as f64 / 1048576.0,
            r.capacity_range.0,
            r.capacity_range.1
        ));
    }
    md.push_str(&summary_table(results));
    md.push('\n');
    md.push_str(&curve_table(results));
    md.push_str(&format!("\n![{svg}]({svg})\n\n"));
    md.push_str(
        "Why the failed inserts failed (at their last salt):\n\n| variant | reasons |\n|---|---|\n",
    );
    for (r, _) in results {
        let reasons: Vec<String> = r
            .failure_reasons
            .iter()
            .map(|(reason, n)| format!("{n}× {reason}"))
            .collect();
        md.push_str(&format!(
            "| {} | {} |\n",
            r.params.diversion,
            reasons.join("; ")
        ));
    }
    md.push_str(PAPER);
    std::fs::write(dir.join(format!("{}.md", args.prefix)), md)?;
    Ok(())
}

const INTRO: &str = "\
`cairn sim placement` (experiment: `node/sim/src/placement.rs`; driver: `node/sim/src/past.rs`;
report: `cli/src/sim/placement.rs`) repeats the storage experiment of PAST (Rowstron &
Druschel, SOSP 2001, §5) with cairn's own placement code: every simulated node runs a
Pastry overlay (`cairn_overlay`) and a PAST holder (`cairn_past::Holder` over a
`MemoryStore`); every file is one block, erasure-coded by the real codec and inserted by
`cairn_past`'s `BlockInsert` from a random node. Holders answer with `Holder::answer`: a
holder with `size / free > t_pri` diverts the fragment through `ReplicaDiversion` to a
node of its leaf set beyond the `n` closest that takes it under `t_div`, and keeps a
pointer (replica diversion). A block refused at its key is retried at
`PlacementKey::for_block(block, salt)` for salts 1..=3 (file diversion, as the pipeline
does). Files are inserted 32 at a time until the share of failed inserts so far
reaches `--stop-failed` (or `--max-offered` times the capacity has been offered).

The variants:

- **both**: `t_pri` = 0.1, `t_div` = 0.05, salts 0..=3 (PAST's recommended setting);
- **replica**: the same thresholds, no salt retries;
- **file**: `t_pri` = 1 (a node takes a fragment while it fits), `t_div` = 0 (nobody
  takes a diverted fragment), salts 0..=3;
- **none** (\"without\"): `t_pri` = 1, `t_div` = 0, no salt retries: what PAST measured
  without diversion.

**Scaled down.** The stores keep real bytes in memory, so sizes are small: capacities
follow PAST's truncated normal `d1` (mean 27 MB, σ 10.8 MB, within [2, 51] MB) scaled to
a mean of 32 KiB, and file sizes are lognormal with the spread of PAST's web-proxy trace
(σ 2.04, from its mean/median of 10.5 kB/1.3 kB) around a median of 256 B, cut at 4 KiB.
A fragment (4+2) is then up to 1 KiB and about 1/190 of a mean node on average, where a
PAST replica was about 1/2,600 of one. Thresholds are ratios to free space, so coarser
files make them bite earlier: the utilisations here are lower than PAST's, and the
shape, and the gap between the variants, are what to compare.
";

const PAPER: &str = "
## PAST's figures, for comparison

PAST (2,250 nodes, 5 replicas per file, the NLANR web-proxy trace, capacities `d1`):
without diversion (`t_pri` = 1, `t_div` = 0, no file diversion) 51.1% of the inserts
failed and utilisation ended at 60.8%; with `t_pri` = 0.1 and `t_div` = 0.05, the
utilisation reached about 98% with a few per cent of inserts failed, and inserts began
to fail in numbers only beyond 95% utilisation (the paper's Table 2 and Figure 6).
";
