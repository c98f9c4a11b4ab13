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
//! repair had been pending. The flags, the tracker and the report are shared with
//! `cairn sim churn`, the simulated twin of this bench (`crate::churn_report`,
//! `cairn_sim::churn_report`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_api::client::ApiClient;
use cairn_core::crypto::KeyPair;
use cairn_core::erasure::ErasureParams;
use cairn_core::id::FileId;
use cairn_core::rng::Rng;
use cairn_sim::churn_report::{
    BlockLive, ChurnRecord, FileSample, Read, Redundancy, Tracker, exponential,
};
use sha2::{Digest, Sha256};

use super::{HashingWriter, NodeOptions, NodeProcess, settle, spawn_node};
use crate::churn_report::{ChurnModeArg, ChurnShape, print_report};
use crate::files::unix_now;

/// Arguments of `cairn bench churn`.
#[derive(clap::Args)]
pub(super) struct ChurnArgs {
    /// The run's shape, as `cairn sim churn` takes it.
    #[command(flatten)]
    shape: ChurnShape,
    /// Where the nodes keep their data [default: a temporary directory, removed after].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Why the readers' reads failed, by message (the first [`ReadErrors::KINDS`] kinds),
/// printed on stderr at the end: what a failed read was is otherwise lost.
#[derive(Default)]
struct ReadErrors {
    counts: std::collections::BTreeMap<String, u64>,
    others: u64,
}

impl ReadErrors {
    const KINDS: usize = 20;

    fn note(&mut self, error: String) {
        if let Some(count) = self.counts.get_mut(&error) {
            *count += 1;
        } else if self.counts.len() < Self::KINDS {
            self.counts.insert(error, 1);
        } else {
            self.others += 1;
        }
    }

    fn print(&self) {
        for (error, count) in &self.counts {
            eprintln!("failed reads: {count} × {error}");
        }
        if self.others > 0 {
            eprintln!("failed reads: {} more, of other kinds", self.others);
        }
    }
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
fn stat_all(client: &ApiClient, files: &[(FileId, [u8; 32])]) -> Vec<FileSample> {
    files
        .iter()
        .map(|(file, _)| {
            let stat = client.stat(file).map_err(|e| e.to_string())?;
            Ok(stat
                .blocks
                .into_iter()
                .map(|block| BlockLive {
                    name: block.block,
                    key: block.key,
                    live: block.live,
                })
                .collect())
        })
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

pub(super) fn churn(ChurnArgs { shape: args, dir }: ChurnArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 2, "--nodes must be at least 2");
    let params = ErasureParams::new(args.k, args.m).context("invalid -k/-m")?;
    let n = usize::from(params.n());
    anyhow::ensure!(
        args.nodes > n,
        "--nodes must exceed k + m = {n} so that churn can leave every block placeable"
    );
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let temp;
    let root = match &dir {
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
    let tracker = Tracker::new(&layout, usize::from(args.k), n);
    let files = Arc::new(files);
    let stored_bytes = args.files as f64 * args.size as f64 * n as f64 / f64::from(args.k);

    // Readers.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let reads: Arc<Mutex<Vec<Read>>> = Arc::new(Mutex::new(Vec::new()));
    let read_errors: Arc<Mutex<ReadErrors>> = Arc::new(Mutex::new(ReadErrors::default()));
    let api_addr = gateway.api.base().to_string();
    let readers: Vec<_> = (0..args.readers)
        .map(|r| {
            let (stop, reads, files, read_errors) = (
                Arc::clone(&stop),
                Arc::clone(&reads),
                Arc::clone(&files),
                Arc::clone(&read_errors),
            );
            let client = ApiClient::new(&api_addr, None);
            let mut rng = Rng::new(args.seed.wrapping_mul(31).wrapping_add(r as u64));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (file, digest) = &files[rng.below(files.len() as u64) as usize];
                    let began = Instant::now();
                    let read = read_and_verify(&client, file, digest);
                    let record = Read {
                        at: start.elapsed().as_secs_f64(),
                        ok: read.is_ok(),
                        millis: began.elapsed().as_secs_f64() * 1e3,
                    };
                    if let Ok(mut reads) = reads.lock() {
                        reads.push(record);
                    }
                    if let Err(error) = read
                        && let Ok(mut errors) = read_errors.lock()
                    {
                        errors.note(error);
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
    // A node process takes a while to start; started on a thread of its own, so that
    // the churn keeps to its schedule (as `cairn sim churn` does) instead of falling
    // behind by one start-up per death.
    let mut starting: Vec<Option<std::thread::JoinHandle<anyhow::Result<NodeProcess>>>> =
        nodes.iter().map(|_| None).collect();
    let start_node = |data: PathBuf, listen: String| {
        let (exe, seed_addr) = (exe.clone(), seed_addr.clone());
        std::thread::spawn(move || spawn_node(&exe, &data, &listen, Some(&seed_addr), &options))
    };
    let mut repair_seen: Vec<u64> = vec![0; nodes.len()];
    let mut repair_total = 0u64;
    let mut kills = 0usize;
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
    // The samples are taken on a thread of their own too: a round of stats takes a
    // while, and the kills must not wait for it.
    let live_nodes = Arc::new(AtomicUsize::new(live(&nodes)));
    let tracker = Arc::new(Mutex::new(tracker));
    let samples: Arc<Mutex<Vec<Redundancy>>> = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, files, tracker, samples, live_nodes) = (
            Arc::clone(&stop),
            Arc::clone(&files),
            Arc::clone(&tracker),
            Arc::clone(&samples),
            Arc::clone(&live_nodes),
        );
        let client = ApiClient::new(&api_addr, None);
        std::thread::spawn(move || {
            // Every 5 s; the stop flag is looked at every 100 ms.
            let mut next = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                let now = start.elapsed().as_secs_f64();
                if now >= next {
                    next = now + 5.0;
                    let stats = stat_all(&client, &files);
                    let at = start.elapsed().as_secs_f64();
                    let live = live_nodes.load(Ordering::Relaxed);
                    if let (Ok(mut tracker), Ok(mut samples)) = (tracker.lock(), samples.lock()) {
                        samples.push(tracker.observe(at, live, stats));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // 100 ms a tick: the count bounds the loop should the clock misbehave.
    let max_ticks = args.duration.saturating_mul(10).saturating_add(1);
    for _ in 0..max_ticks {
        let now = start.elapsed().as_secs_f64();
        if now >= duration {
            break;
        }
        for i in 0..nodes.len() {
            if starting[i].as_ref().is_some_and(|t| t.is_finished())
                && let Some(started) = starting[i].take()
            {
                let node = started
                    .join()
                    .map_err(|_| anyhow::anyhow!("a node's start-up thread panicked"))??;
                nodes[i] = Some(node);
            }
            if let Some((back_at, data, listen)) = downtime[i].clone()
                && now >= back_at
            {
                starting[i] = Some(start_node(data, listen));
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
                    ChurnModeArg::Crash => false,
                    ChurnModeArg::Restart => true,
                    ChurnModeArg::Mixed => rng.below(2) == 0,
                };
                if restart {
                    let down = exponential(&mut rng, (mean / 10.0).clamp(1.0, 30.0));
                    downtime[i] = Some((now + down, data, listen));
                } else {
                    starting[i] = Some(start_node(fresh_dir(), "127.0.0.1:0".to_string()));
                    death[i] = now + exponential(&mut rng, mean);
                }
            }
        }
        live_nodes.store(live(&nodes), Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(100));
    }
    scrape(&nodes, &mut repair_seen, &mut repair_total);
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.join();
    }
    let _ = sampler.join();
    let mut samples = std::mem::take(
        &mut *samples
            .lock()
            .map_err(|_| anyhow::anyhow!("a sampler panicked"))?,
    );
    let mut tracker = Arc::try_unwrap(tracker)
        .map_err(|_| anyhow::anyhow!("the sampler still holds the tracker"))?
        .into_inner()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    // Nodes still starting finish; nodes still down come back (restart mode), so that
    // the end state is complete.
    for i in 0..nodes.len() {
        if let Some(started) = starting[i].take() {
            let node = started
                .join()
                .map_err(|_| anyhow::anyhow!("a node's start-up thread panicked"))??;
            nodes[i] = Some(node);
        }
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
    let lost = tracker.lost(&final_reads);
    if let Ok(errors) = read_errors.lock() {
        errors.print();
    }
    let record = ChurnRecord {
        reads: reads.lock().map(|r| r.clone()).unwrap_or_default(),
        samples,
        final_reads,
        lost,
        time_to_full_redundancy: time_to_full,
        repair_bytes: repair_total,
        stored_bytes,
        kills,
    };
    print_report("bench churn", &args, &record)?;
    Ok(())
}
