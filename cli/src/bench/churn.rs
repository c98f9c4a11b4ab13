//! `cairn bench churn`: real node processes killed and started at random while readers
//! fetch and verify files; then the churn stops, repair is awaited and every file is
//! read once more.
//!
//! Node 0 is the seed of the network and serves the API the readers use; it is never
//! killed (a reader needs a gateway; the question is whether the data outlives the
//! other nodes). Every node serves its own API on an ephemeral loopback port, which is
//! how its counters (repair bytes) are read.
//!
//! Redundancy is sampled per block through the gateway's stat (the API's
//! `FileStatAnswer`, what `cairn stat` prints) from the start of the churn until the end
//! of the repair wait. A [`Tracker`] follows every block across the samples, without
//! I/O, so that the report can say which blocks were lost, when and after how long a
//! repair had been pending.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_api::FileStatAnswer;
use cairn_api::client::ApiClient;
use cairn_core::crypto::KeyPair;
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{FileId, Reference};
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

/// One sample of the network's redundancy. A block of a file whose stat failed in
/// this sample counts as having no live fragment (unknown is not counted as safe).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Redundancy {
    at: f64,
    /// Mean over blocks of live fragments / n.
    mean_live: f64,
    /// The fewest live fragments of any block.
    min_live: usize,
    /// Blocks with fewer than k live fragments, or of a file whose stat failed.
    below_k: usize,
    /// Files whose stat failed.
    stat_failures: usize,
    live_nodes: usize,
}

/// What the samples saw of one block.
#[derive(Clone, Debug)]
struct BlockTrack {
    /// `"manifest"` or the block's position, as the stat names it.
    name: String,
    /// Its placement key, once a stat has shown it.
    key: Option<String>,
    /// Live fragments in the latest sample (`None`: the file's stat failed then).
    live: Option<usize>,
    /// The latest sample in which it had at least k live fragments: (time, live).
    last_readable: Option<(f64, usize)>,
    /// The first of the samples, up to the latest, in which it had fewer than k live
    /// fragments (or its file's stat failed).
    below_k_since: Option<f64>,
    /// The first of the samples, up to the latest, in which it had fewer than n.
    below_n_since: Option<f64>,
}

impl BlockTrack {
    fn new(name: String) -> BlockTrack {
        BlockTrack {
            name,
            key: None,
            live: None,
            last_readable: None,
            below_k_since: None,
            below_n_since: None,
        }
    }
}

/// What the samples saw of one file.
#[derive(Clone, Debug)]
struct FileTrack {
    file: FileId,
    /// The manifest block first, then the data blocks.
    blocks: Vec<BlockTrack>,
    /// Why the latest stat failed (`None`: it succeeded).
    stat_error: Option<String>,
}

/// Follows every block of every file across redundancy samples. It does no I/O: the
/// bench stats the files and hands the answers to [`Tracker::observe`].
struct Tracker {
    files: Vec<FileTrack>,
    k: usize,
    n: usize,
}

/// A block below k live fragments at the last sample, or a file that did not read at
/// the end: an entry of `lost_blocks`.
#[derive(Clone, Debug, PartialEq)]
struct LostBlock {
    file: FileId,
    /// `None` for a file that did not read although no block was below k.
    block: Option<String>,
    key: Option<String>,
    /// Live fragments at the last sample (`None`: the stat failed).
    live: Option<usize>,
    /// The last sample at which it was still readable: (time, live fragments).
    last_readable: Option<(f64, usize)>,
    /// The first sample below k, of the run that lasted to the end.
    lost_at: Option<f64>,
    /// The first sample below n, of the run that lasted to the end.
    degraded_at: Option<f64>,
    /// Whether the file read and verified at the end.
    readable: bool,
    why: String,
}

impl Tracker {
    /// `files`: each file with its count of data blocks (the put's answer); the
    /// manifest block comes first, as in the stat.
    fn new(files: &[(FileId, u64)], k: usize, n: usize) -> Tracker {
        let files = files
            .iter()
            .map(|&(file, data_blocks)| FileTrack {
                file,
                blocks: std::iter::once("manifest".to_string())
                    .chain((0..data_blocks).map(|b| b.to_string()))
                    .map(BlockTrack::new)
                    .collect(),
                stat_error: None,
            })
            .collect();
        Tracker { files, k, n }
    }

    /// Takes one sample: `stats[i]` is the stat of file `i` (or why it failed).
    fn observe(
        &mut self,
        at: f64,
        live_nodes: usize,
        stats: Vec<Result<FileStatAnswer, String>>,
    ) -> Redundancy {
        let (k, n) = (self.k, self.n);
        let (mut sum, mut count, mut min, mut below_k) = (0.0, 0usize, usize::MAX, 0usize);
        let mut stat_failures = 0;
        for (track, stat) in self.files.iter_mut().zip(stats) {
            for block in &mut track.blocks {
                block.live = None;
            }
            match stat {
                Ok(stat) => {
                    track.stat_error = None;
                    for answer in stat.blocks {
                        let index = match track.blocks.iter().position(|b| b.name == answer.block) {
                            Some(index) => index,
                            None => {
                                track.blocks.push(BlockTrack::new(answer.block.clone()));
                                track.blocks.len() - 1
                            }
                        };
                        let block = &mut track.blocks[index];
                        block.key = Some(answer.key);
                        block.live = Some(answer.live);
                    }
                }
                Err(error) => {
                    track.stat_error = Some(error);
                    stat_failures += 1;
                }
            }
            for block in &mut track.blocks {
                match block.live {
                    Some(live) if live >= k => {
                        block.last_readable = Some((at, live));
                        block.below_k_since = None;
                    }
                    _ => {
                        block.below_k_since.get_or_insert(at);
                        below_k += 1;
                    }
                }
                match block.live {
                    Some(live) if live >= n => block.below_n_since = None,
                    _ => {
                        block.below_n_since.get_or_insert(at);
                    }
                }
                let live = block.live.unwrap_or(0);
                sum += live as f64 / n as f64;
                count += 1;
                min = min.min(live);
            }
        }
        Redundancy {
            at,
            mean_live: if count > 0 { sum / count as f64 } else { 0.0 },
            min_live: if count > 0 { min } else { 0 },
            below_k,
            stat_failures,
            live_nodes,
        }
    }

    /// Blocks below k at the last sample, and files that did not read at the end
    /// (`reads[i]`: the final read of file `i`).
    fn lost(&self, reads: &[Result<(), String>]) -> Vec<LostBlock> {
        let mut lost = Vec::new();
        for (track, read) in self.files.iter().zip(reads) {
            let before = lost.len();
            for block in &track.blocks {
                let why = match (block.live, &track.stat_error) {
                    (Some(live), _) if live >= self.k => continue,
                    (Some(live), _) => {
                        format!("{live} of {} fragments live, {} needed", self.n, self.k)
                    }
                    (None, Some(error)) => format!("the file's stat failed: {error}"),
                    (None, None) => "the stat did not list this block".to_string(),
                };
                lost.push(LostBlock {
                    file: track.file,
                    block: Some(block.name.clone()),
                    key: block.key.clone(),
                    live: block.live,
                    last_readable: block.last_readable,
                    lost_at: block.below_k_since,
                    degraded_at: block.below_n_since,
                    readable: read.is_ok(),
                    why,
                });
            }
            if let Err(error) = read
                && lost.len() == before
            {
                lost.push(LostBlock {
                    file: track.file,
                    block: None,
                    key: None,
                    live: None,
                    last_readable: None,
                    lost_at: None,
                    degraded_at: None,
                    readable: false,
                    why: format!("the read failed with every block at k or more: {error}"),
                });
            }
        }
        lost
    }
}

/// Seconds to one decimal, as the report prints times.
fn tenths(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

impl LostBlock {
    /// How long a repair had been pending when the block fell below k.
    fn repair_pending(&self) -> Option<f64> {
        Some(self.lost_at? - self.degraded_at?)
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "file": Reference::File(self.file).to_string(),
            "block": self.block,
            "key": self.key,
            "live": self.live,
            "last_readable_live": self.last_readable.map(|(_, live)| live),
            "last_readable_at_s": self.last_readable.map(|(at, _)| tenths(at)),
            "lost_at_s": self.lost_at.map(tenths),
            "degraded_at_s": self.degraded_at.map(tenths),
            "repair_pending_s": self.repair_pending().map(tenths),
            "readable": self.readable,
            "why": self.why,
        })
    }

    /// One line for a person.
    fn line(&self) -> String {
        let block = self.block.as_deref().unwrap_or("?");
        let key = self
            .key
            .as_deref()
            .map_or("?", |key| key.get(..8).unwrap_or(key));
        let mut line = format!(
            "lost: {:?} block {block} (key {key}…): {}",
            self.file, self.why
        );
        match self.last_readable {
            Some((at, live)) => line.push_str(&format!("; last readable at {at:.1} s with {live}")),
            None => line.push_str("; never seen readable"),
        }
        if let Some(at) = self.lost_at {
            line.push_str(&format!(", below k from {at:.1} s"));
        }
        if let (Some(at), Some(pending)) = (self.degraded_at, self.repair_pending()) {
            line.push_str(&format!(
                ", below n from {at:.1} s ({pending:.1} s of pending repair)"
            ));
        }
        line.push_str(if self.readable {
            "; the file still read at the end"
        } else {
            "; the file did not read at the end"
        });
        line
    }
}

fn exponential(rng: &mut Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.unit()).max(1e-12).ln()
}

fn read_and_verify(client: &ApiClient, file: &FileId, digest: &[u8; 32]) -> Result<(), String> {
    let mut hasher = HashingWriter::default();
    client.get(file, &mut hasher).map_err(|e| e.to_string())?;
    if &hasher.finish() == digest {
        Ok(())
    } else {
        Err("the bytes read differ from those stored".to_string())
    }
}

/// The gateway's stat of every file; one failure does not stop the others.
fn stat_all(
    client: &ApiClient,
    files: &[(FileId, [u8; 32])],
) -> Vec<Result<FileStatAnswer, String>> {
    files
        .iter()
        .map(|(file, _)| client.stat(file).map_err(|e| e.to_string()))
        .collect()
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
    let mut layout: Vec<(FileId, u64)> = Vec::new();
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
        layout.push((file, outcome.stored.blocks));
    }
    let mut tracker = Tracker::new(&layout, usize::from(args.k), n);
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
                    let ok = read_and_verify(&client, file, digest).is_ok();
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
    // 100 ms a tick: the count bounds the loop should the clock misbehave.
    let max_ticks = args.duration.saturating_mul(10).saturating_add(1);
    for _ in 0..max_ticks {
        let now = start.elapsed().as_secs_f64();
        if now >= duration {
            break;
        }
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
            let stats = stat_all(&gateway.api, &files);
            samples.push(tracker.observe(now, live(&nodes), stats));
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
    // A sample every 2 s at most: the count bounds the loop as the deadline does.
    for _ in 0..=args.repair_timeout / 2 {
        if churn_end.elapsed() >= Duration::from_secs(args.repair_timeout) {
            break;
        }
        let stats = stat_all(&gateway.api, &files);
        let sample = tracker.observe(start.elapsed().as_secs_f64(), live(&nodes), stats);
        samples.push(sample);
        if sample.stat_failures == 0 && sample.min_live >= n {
            time_to_full = Some(churn_end.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    scrape(&nodes, &mut repair_seen, &mut repair_total);
    let final_reads: Vec<Result<(), String>> = files
        .iter()
        .map(|(file, digest)| read_and_verify(&gateway.api, file, digest))
        .collect();
    let readable = final_reads.iter().filter(|r| r.is_ok()).count();
    let lost = tracker.lost(&final_reads);
    for block in &lost {
        eprintln!("{}", block.line());
    }

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
        // The last redundancy sample, taken at the end of the repair wait: when full
        // redundancy never came back, how far it was. A block of a file whose stat
        // failed counts as 0 live fragments (`final_stat_failures` says how many).
        "final_sample_s": samples.last().map(|s| tenths(s.at)),
        "final_min_live": samples.last().map(|s| s.min_live),
        "final_mean_live": samples.last().map(|s| s.mean_live),
        "final_blocks_below_k": samples.last().map(|s| s.below_k),
        "final_stat_failures": samples.last().map(|s| s.stat_failures),
        "lost_blocks": lost.iter().map(LostBlock::to_json).collect::<Vec<_>>(),
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
        write_report(out, &args, &report, &reads, &samples, &lost)?;
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
    lost: &[LostBlock],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut csv = String::from("t_s,ok,ms\n");
    for r in reads {
        csv.push_str(&format!("{:.3},{},{:.1}\n", r.at, u8::from(r.ok), r.millis));
    }
    std::fs::write(out.join("reads.csv"), csv)?;
    let mut csv =
        String::from("t_s,mean_live_fraction,min_live,blocks_below_k,stat_failures,live_nodes\n");
    for s in samples {
        csv.push_str(&format!(
            "{:.1},{:.4},{},{},{},{}\n",
            s.at, s.mean_live, s.min_live, s.below_k, s.stat_failures, s.live_nodes
        ));
    }
    std::fs::write(out.join("redundancy.csv"), csv)?;
    std::fs::write(out.join("churn.svg"), churn_chart(args, reads, samples))?;
    let lost_section = if lost.is_empty() {
        "No block was below k live fragments at the end, and every file read.\n".to_string()
    } else {
        let lines: Vec<String> = lost.iter().map(|b| format!("- {}\n", b.line())).collect();
        format!("## Lost blocks\n\n{}", lines.concat())
    };
    let markdown = format!(
        "# cairn bench churn\n\n`cairn bench churn --nodes {} --files {} --size {} --duration {} \
         --mean-session {} --mode {:?} --readers {} --seed {} -k {} -m {}`\n\n```json\n{}\n```\n\n\
         ![availability and redundancy over time](churn.svg)\n\n\
         Raw series: `reads.csv` (every read: time, success, latency) and `redundancy.csv` \
         (mean live-fragment fraction, fewest live fragments of any block, blocks below k, \
         failed stats, live nodes).\n\n{}",
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
        serde_json::to_string_pretty(report)?,
        lost_section
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cairn_api::BlockAnswer;
    use cairn_core::id::Id;

    use super::*;

    const K: usize = 4;
    const N: usize = 6;

    fn file(byte: u8) -> FileId {
        FileId(Id([byte; 32]))
    }

    /// A stat of a file with the given live fragments, the manifest block first.
    fn stat(live: &[usize]) -> Result<FileStatAnswer, String> {
        Ok(FileStatAnswer {
            reference: String::new(),
            size: 0,
            k: K as u16,
            m: (N - K) as u16,
            owner: String::new(),
            created_at: 0,
            expires_at: None,
            blocks: live
                .iter()
                .enumerate()
                .map(|(i, &live)| BlockAnswer {
                    block: if i == 0 {
                        "manifest".into()
                    } else {
                        (i - 1).to_string()
                    },
                    key: format!("key{i}"),
                    salt: 0,
                    live,
                    holders: Vec::new(),
                    pointers: Vec::new(),
                })
                .collect(),
            unreadable_blocks: live.iter().filter(|&&l| l < K).count(),
            degraded_blocks: live.iter().filter(|&&l| l < N).count(),
        })
    }

    #[test]
    fn churn_samples_go_on_past_a_failed_stat_and_count_it_below_k() {
        let mut tracker = Tracker::new(&[(file(1), 1), (file(2), 1)], K, N);
        let first = tracker.observe(0.0, 8, vec![stat(&[6, 6]), stat(&[6, 5])]);
        assert_eq!(
            (first.min_live, first.below_k, first.stat_failures),
            (5, 0, 0)
        );
        // File 1's stat fails: its two blocks count as 0 live, file 2 is still sampled.
        let second = tracker.observe(5.0, 7, vec![Err("no manifest".into()), stat(&[6, 4])]);
        assert_eq!(
            (second.min_live, second.below_k, second.stat_failures),
            (0, 2, 1)
        );
        assert!((second.mean_live - 10.0 / 24.0).abs() < 1e-9);
        let third = tracker.observe(10.0, 8, vec![stat(&[6, 6]), stat(&[6, 6])]);
        assert_eq!(
            (third.min_live, third.below_k, third.stat_failures),
            (6, 0, 0)
        );
        assert!(tracker.lost(&[Ok(()), Ok(())]).is_empty());
    }

    #[test]
    fn churn_lost_blocks_say_when_the_block_fell_below_k_and_n() {
        let mut tracker = Tracker::new(&[(file(1), 2)], K, N);
        tracker.observe(0.0, 8, vec![stat(&[6, 6, 6])]);
        tracker.observe(5.0, 7, vec![stat(&[6, 5, 6])]);
        // Back to n: the pending repair of the earlier dip is forgotten.
        tracker.observe(10.0, 8, vec![stat(&[6, 6, 6])]);
        tracker.observe(15.0, 7, vec![stat(&[6, 5, 6])]);
        tracker.observe(20.0, 6, vec![stat(&[6, 4, 6])]);
        tracker.observe(25.0, 5, vec![stat(&[6, 3, 6])]);
        tracker.observe(30.0, 5, vec![stat(&[6, 3, 6])]);
        let lost = tracker.lost(&[Err("not enough fragments".into())]);
        assert_eq!(lost.len(), 1, "{lost:?}");
        let block = &lost[0];
        assert_eq!(block.block.as_deref(), Some("0"));
        assert_eq!(block.key.as_deref(), Some("key1"));
        assert_eq!(block.live, Some(3));
        assert_eq!(block.last_readable, Some((20.0, 4)));
        assert_eq!(block.lost_at, Some(25.0));
        assert_eq!(block.degraded_at, Some(15.0));
        assert_eq!(block.repair_pending(), Some(10.0));
        assert!(!block.readable);
        let json = block.to_json();
        assert_eq!(json["repair_pending_s"], 10.0);
        assert_eq!(json["last_readable_live"], 4);
        assert!(
            block.line().contains("3 of 6 fragments live, 4 needed"),
            "{}",
            block.line()
        );
    }

    #[test]
    fn churn_lost_blocks_name_a_failed_stat_and_an_unexplained_failed_read() {
        let mut tracker = Tracker::new(&[(file(1), 1), (file(2), 1)], K, N);
        tracker.observe(0.0, 8, vec![stat(&[6, 6]), stat(&[6, 6])]);
        tracker.observe(
            5.0,
            8,
            vec![Err("certificate not found".into()), stat(&[6, 6])],
        );
        let lost = tracker.lost(&[Err("gone".into()), Err("timeout".into())]);
        assert_eq!(lost.len(), 3, "{lost:?}");
        assert!(lost[..2].iter().all(|b| b.live.is_none()
            && b.lost_at == Some(5.0)
            && b.why.contains("certificate not found")));
        assert_eq!(lost[2].block, None);
        assert!(lost[2].why.contains("timeout"));
    }
}
