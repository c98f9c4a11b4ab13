//! `cairn bench churn`: real node processes killed and started at random while readers
//! fetch and verify files; then the churn stops, repair is awaited and every file is
//! read once more.
//!
//! Node 0 is the seed of the network and serves the API the readers use; it is never
//! killed (a reader needs a gateway; the question is whether the data outlives the
//! other nodes). Every node serves its own API on an ephemeral loopback port, which is
//! how its counters (repair bytes) are read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_api::client::ApiClient;
use cairn_core::crypto::KeyPair;
use cairn_core::erasure::ErasureParams;
use cairn_core::id::FileId;
use cairn_core::rng::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{HashingWriter, NodeOptions, NodeProcess, settle, spawn_node};
use crate::chart::{Axis, LineChart};
use crate::files::{parse_size, unix_now};

/// How departed nodes come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// A killed node is replaced by a new, empty one (its data is gone).
    Crash,
    /// A killed node restarts on its data dir after a short downtime.
    Restart,
    /// Each death flips a coin between the two.
    Mixed,
}

/// Arguments of `cairn bench churn`.
#[derive(clap::Args)]
pub(super) struct ChurnArgs {
    /// Node processes (node 0, the API gateway, is never killed).
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Files stored before the churn starts.
    #[arg(long, default_value_t = 16)]
    files: usize,
    /// Size of each file (e.g. 1MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    size: u64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Mean session length of a node in seconds (exponentially distributed).
    #[arg(long, default_value_t = 60)]
    mean_session: u64,
    /// What a killed node does next.
    #[arg(long, value_enum, default_value_t = Mode::Mixed)]
    mode: Mode,
    /// Concurrent readers fetching random files during the churn.
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// Seed of every random choice of the bench (not of the nodes' keys).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Data fragments per block.
    #[arg(short, default_value_t = 4)]
    k: u16,
    /// Parity fragments per block.
    #[arg(short, default_value_t = 2)]
    m: u16,
    /// How long to wait for full redundancy after the churn stops, in seconds.
    #[arg(long, default_value_t = 300)]
    repair_timeout: u64,
    /// Overlay keepalive period of the nodes in milliseconds (failure detection ~3×).
    #[arg(long, default_value_t = 1000)]
    tick_ms: u64,
    /// Where the nodes keep their data [default: a temporary directory, removed after].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
    /// Also write a Markdown report and an SVG chart here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One read attempt by a reader.
#[derive(Clone, Copy)]
struct Read {
    at: f64,
    ok: bool,
    millis: f64,
}

/// One sample of the network's redundancy.
#[derive(Clone, Copy)]
struct Redundancy {
    at: f64,
    /// Mean over blocks of live fragments / n.
    mean_live: f64,
    /// The fewest live fragments of any block.
    min_live: usize,
    live_nodes: usize,
}

fn exponential(rng: &mut Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.unit()).max(1e-12).ln()
}

fn read_and_verify(client: &ApiClient, file: &FileId, digest: &[u8; 32]) -> bool {
    let mut hasher = HashingWriter::default();
    client.get(file, &mut hasher).is_ok() && &hasher.finish() == digest
}

/// Live fragments per block of every file, via the gateway's stat (`None` if a stat
/// failed: counted as not yet known).
fn redundancy(client: &ApiClient, files: &[(FileId, [u8; 32])], n: usize) -> Option<(f64, usize)> {
    let (mut sum, mut count, mut min) = (0.0, 0usize, usize::MAX);
    for (file, _) in files {
        let stat = client.stat(file).ok()?;
        for block in &stat.blocks {
            sum += block.live as f64 / n as f64;
            count += 1;
            min = min.min(block.live);
        }
    }
    (count > 0).then(|| (sum / count as f64, min))
}

/// The sum of every `cairn_repair*bytes*` counter a node exposes.
fn repair_bytes(client: &ApiClient) -> Option<u64> {
    let text = client.metrics().ok()?;
    Some(
        text.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with("cairn_repair") && l.contains("bytes"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(super) fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    let params = ErasureParams::new(args.k, args.m).context("invalid -k/-m")?;
    let n = usize::from(params.n());
    anyhow::ensure!(
        args.nodes > n,
        "--nodes must exceed k + m = {n} so that churn can leave every block placeable"
    );
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let temp;
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let say = |text: String| {
        if !args.json {
            eprintln!("{text}");
        }
    };
    let mut rng = Rng::new(args.seed);
    let mut next_dir = 0usize;
    let mut fresh_dir = || {
        next_dir += 1;
        root.join(format!("node-{next_dir}"))
    };

    say(format!("starting {} nodes", args.nodes));
    let options = NodeOptions {
        tick_ms: args.tick_ms,
        k: args.k,
        m: args.m,
    };
    let gateway = spawn_node(&exe, &fresh_dir(), "127.0.0.1:0", None, &options)?;
    let seed_addr = gateway.listen.clone();
    let mut nodes: Vec<Option<NodeProcess>> = Vec::new();
    for _ in 1..args.nodes {
        nodes.push(Some(spawn_node(
            &exe,
            &fresh_dir(),
            "127.0.0.1:0",
            Some(&seed_addr),
            &options,
        )?));
    }
    settle(&gateway, args.nodes);

    say(format!(
        "storing {} files of {} bytes",
        args.files, args.size
    ));
    let owner = KeyPair::generate();
    let mut files: Vec<(FileId, [u8; 32])> = Vec::new();
    for i in 0..args.files {
        let data = Rng::new(args.seed ^ (i as u64 + 1) << 20).bytes(args.size as usize);
        let digest: [u8; 32] = Sha256::digest(&data).into();
        let outcome = gateway
            .api
            .put(
                &mut &data[..],
                &format!("churn-{i}"),
                i as u64,
                &owner,
                Some(params),
                unix_now(),
            )
            .with_context(|| format!("storing file {i}"))?;
        let cairn_core::id::Reference::File(file) = outcome.reference else {
            bail!("a put returned a volume reference");
        };
        files.push((file, digest));
    }
    let files = Arc::new(files);
    let stored_bytes = args.files as f64 * args.size as f64 * n as f64 / f64::from(args.k);

    // Readers.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let reads: Arc<Mutex<Vec<Read>>> = Arc::new(Mutex::new(Vec::new()));
    let api_addr = gateway.api.base().to_string();
    let readers: Vec<_> = (0..args.readers)
        .map(|r| {
            let (stop, reads, files) = (Arc::clone(&stop), Arc::clone(&reads), Arc::clone(&files));
            let client = ApiClient::new(&api_addr, None);
            let mut rng = Rng::new(args.seed.wrapping_mul(31).wrapping_add(r as u64));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (file, digest) = &files[rng.below(files.len() as u64) as usize];
                    let began = Instant::now();
                    let ok = read_and_verify(&client, file, digest);
                    let record = Read {
                        at: start.elapsed().as_secs_f64(),
                        ok,
                        millis: began.elapsed().as_secs_f64() * 1e3,
                    };
                    if let Ok(mut reads) = reads.lock() {
                        reads.push(record);
                    }
                }
            })
        })
        .collect();

    // Churn.
    say(format!(
        "churn for {} s, mean session {} s, mode {:?}",
        args.duration, args.mean_session, args.mode
    ));
    let mean = args.mean_session.max(1) as f64;
    let mut death: Vec<f64> = nodes.iter().map(|_| exponential(&mut rng, mean)).collect();
    let mut downtime: Vec<Option<(f64, PathBuf, String)>> = nodes.iter().map(|_| None).collect();
    let mut samples: Vec<Redundancy> = Vec::new();
    let mut repair_seen: Vec<u64> = vec![0; nodes.len()];
    let mut repair_total = 0u64;
    let mut kills = 0usize;
    let mut last_sample = -10.0f64;
    let duration = args.duration as f64;
    let live = |nodes: &[Option<NodeProcess>]| 1 + nodes.iter().flatten().count();
    let scrape = |nodes: &[Option<NodeProcess>], seen: &mut [u64], total: &mut u64| {
        // Counters only grow within one process; a killed node's last reading is kept.
        for (i, node) in nodes.iter().enumerate() {
            if let Some(node) = node
                && let Some(bytes) = repair_bytes(&node.api)
            {
                *total += bytes.saturating_sub(seen[i]);
                seen[i] = bytes;
            }
        }
    };
    while start.elapsed().as_secs_f64() < duration {
        let now = start.elapsed().as_secs_f64();
        for i in 0..nodes.len() {
            if let Some((back_at, data, listen)) = downtime[i].clone()
                && now >= back_at
            {
                nodes[i] = Some(spawn_node(
                    &exe,
                    &data,
                    &listen,
                    Some(&seed_addr),
                    &options,
                )?);
                downtime[i] = None;
                death[i] = now + exponential(&mut rng, mean);
                continue;
            }
            if nodes[i].is_some() && now >= death[i] {
                scrape(&nodes, &mut repair_seen, &mut repair_total);
                let Some(dead) = nodes[i].take() else {
                    continue;
                };
                let (data, listen) = (dead.data.clone(), dead.listen.clone());
                drop(dead); // kill -9
                kills += 1;
                repair_seen[i] = 0;
                let restart = match args.mode {
                    Mode::Crash => false,
                    Mode::Restart => true,
                    Mode::Mixed => rng.below(2) == 0,
                };
                if restart {
                    let down = exponential(&mut rng, (mean / 10.0).clamp(1.0, 30.0));
                    downtime[i] = Some((now + down, data, listen));
                } else {
                    nodes[i] = Some(spawn_node(
                        &exe,
                        &fresh_dir(),
                        "127.0.0.1:0",
                        Some(&seed_addr),
                        &options,
                    )?);
                    death[i] = now + exponential(&mut rng, mean);
                }
            }
        }
        if now - last_sample >= 5.0 {
            last_sample = now;
            if let Some((mean_live, min_live)) = redundancy(&gateway.api, &files, n) {
                samples.push(Redundancy {
                    at: now,
                    mean_live,
                    min_live,
                    live_nodes: live(&nodes),
                });
            }
            scrape(&nodes, &mut repair_seen, &mut repair_total);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.join();
    }
    // Nodes still down come back (restart mode) so that the end state is complete.
    for i in 0..nodes.len() {
        if let Some((_, data, listen)) = downtime[i].take() {
            nodes[i] = Some(spawn_node(
                &exe,
                &data,
                &listen,
                Some(&seed_addr),
                &options,
            )?);
        }
    }

    say("churn stopped; waiting for full redundancy".to_string());
    let churn_end = Instant::now();
    let mut time_to_full = None;
    while churn_end.elapsed() < Duration::from_secs(args.repair_timeout) {
        if let Some((mean_live, min_live)) = redundancy(&gateway.api, &files, n) {
            samples.push(Redundancy {
                at: start.elapsed().as_secs_f64(),
                mean_live,
                min_live,
                live_nodes: live(&nodes),
            });
            if min_live >= n {
                time_to_full = Some(churn_end.elapsed().as_secs_f64());
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    scrape(&nodes, &mut repair_seen, &mut repair_total);
    let readable = files
        .iter()
        .filter(|(file, digest)| read_and_verify(&gateway.api, file, digest))
        .count();

    let reads = reads.lock().map(|r| r.clone()).unwrap_or_default();
    let ok = reads.iter().filter(|r| r.ok).count();
    let availability = if reads.is_empty() {
        1.0
    } else {
        ok as f64 / reads.len() as f64
    };
    let mut latencies: Vec<f64> = reads.iter().filter(|r| r.ok).map(|r| r.millis).collect();
    latencies.sort_by(f64::total_cmp);
    let durability = readable as f64 / files.len().max(1) as f64;
    let report = json!({
        "availability": availability,
        "durability": durability,
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "repair_bytes_per_stored_byte": repair_total as f64 / stored_bytes.max(1.0),
        "time_to_full_redundancy_s": time_to_full,
        // The last redundancy sample: when full redundancy never came back, how far
        // it was (or null: no stat of every file succeeded at the end).
        "final_min_live": samples.last().map(|s| s.min_live),
        "final_mean_live": samples.last().map(|s| s.mean_live),
        "reads": reads.len(),
        "failed_reads": reads.len() - ok,
        "kills": kills,
        "files": args.files,
        "nodes": args.nodes,
        "k": args.k,
        "m": args.m,
        "duration_s": args.duration,
        "mean_session_s": args.mean_session,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "seed": args.seed,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if let Some(out) = &args.out {
        write_report(out, &args, &report, &reads, &samples)?;
    }
    Ok(())
}

/// Writes `report.md`, `reads.csv` and `redundancy.csv` into `out`.
fn write_report(
    out: &Path,
    args: &ChurnArgs,
    report: &serde_json::Value,
    reads: &[Read],
    samples: &[Redundancy],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut csv = String::from("t_s,ok,ms\n");
    for r in reads {
        csv.push_str(&format!("{:.3},{},{:.1}\n", r.at, u8::from(r.ok), r.millis));
    }
    std::fs::write(out.join("reads.csv"), csv)?;
    let mut csv = String::from("t_s,mean_live_fraction,min_live,live_nodes\n");
    for s in samples {
        csv.push_str(&format!(
            "{:.1},{:.4},{},{}\n",
            s.at, s.mean_live, s.min_live, s.live_nodes
        ));
    }
    std::fs::write(out.join("redundancy.csv"), csv)?;
    std::fs::write(out.join("churn.svg"), churn_chart(args, reads, samples))?;
    let markdown = format!(
        "# cairn bench churn\n\n`cairn bench churn --nodes {} --files {} --size {} --duration {} \
         --mean-session {} --mode {:?} --readers {} --seed {} -k {} -m {}`\n\n```json\n{}\n```\n\n\
         ![availability and redundancy over time](churn.svg)\n\n\
         Raw series: `reads.csv` (every read: time, success, latency) and `redundancy.csv` \
         (mean live-fragment fraction, fewest live fragments of any block, live nodes).\n",
        args.nodes,
        args.files,
        args.size,
        args.duration,
        args.mean_session,
        args.mode,
        args.readers,
        args.seed,
        args.k,
        args.m,
        serde_json::to_string_pretty(report)?
    );
    std::fs::write(out.join("report.md"), markdown)?;
    Ok(())
}

/// Read availability (per 10 s window) and live-fragment redundancy over time.
fn churn_chart(args: &ChurnArgs, reads: &[Read], samples: &[Redundancy]) -> String {
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
    let n = f64::from(args.k + args.m);
    let mut chart = LineChart::new(
        format!(
            "churn: {} nodes, mean session {} s, {:?}, {}+{}",
            args.nodes, args.mean_session, args.mode, args.k, args.m
        ),
        Axis {
            label: format!("time (s); churn from 0 to {} s, then repair", args.duration),
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
