//! The churn scenario behind `cairn sim churn`: the simulated twin of `cairn bench
//! churn`, with the same model, flags and measures ([`crate::churn_report`]), so that
//! a real run and its simulation compare point by point.
//!
//! Owns: [`ChurnParams`] and [`ChurnMode`], [`run_churn`] and its [`ChurnOutcome`],
//! [`FileRead`] (a read of a whole file as the gateway's get does it, an
//! [`Operation`]), the put of a file through the real client pipeline into the
//! simulated network, and the stat of a file as the gateway's `stat_file` counts live
//! fragments.
//!
//! May use: [`crate::Sim`] with PAST and maintenance on, `cairn_pipeline`'s put,
//! `cairn_past`'s operations, `cairn_core`'s keys, erasure code and manifests.
//!
//! # The model (the bench's, step for step)
//! - Node 0 starts the network and is the gateway: every put, read and stat goes
//!   through it, and it is never killed. The others join through it.
//! - Files are put one at a time through the gateway, as `PUT /v1/files` does
//!   (`put_unsigned`: blocks and the manifest block, each a `BlockInsert` with file
//!   diversion), and the owner's signed certificate is published to its keepers
//!   (`RecordPublish`).
//! - The churn runs `duration` seconds on a 100 ms tick: every other node dies after an
//!   exponential session of mean `mean_session`; in crash mode a new empty node takes
//!   its place at once, in restart mode the same node (id and store) comes back after
//!   an exponential downtime of mean clamp(mean/10, 1, 30) s, in mixed mode a coin
//!   decides each death. The draws come from one generator in the bench's order.
//! - Readers read random files back to back from the gateway ([`FileRead`]).
//! - Every 5 s the redundancy is sampled ([`file_stat`]); after the churn the readers
//!   finish, nodes still down come back, and every 2 s a sample is taken until every
//!   block has `n` live fragments or `repair_timeout` passes; then every file is read
//!   once more.
//!
//! # What is not the bench
//! Time is the simulator's: no CPU, disk or HTTP time, latencies from its network
//! model, a stat counted at one instant from the holders (the bench's takes time), no
//! start-up time for a restarted node, no read-ahead of the next block (files of one
//! segment have one block). See also [`crate::maintenance`]'s list.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::crypto::{FileCertificate, KeyPair, Signed, UploadGrant};
use cairn_core::erasure::{
    BlockSpec, Codec, ErasureParams, Fragment, FragmentRef, Offer, ParamsError,
};
use cairn_core::id::{BlockHash, FileId, FragmentHash, NodeId, PlacementKey};
use cairn_core::manifest::{Manifest, manifest_placement_key};
use cairn_core::rng::Rng;
use cairn_overlay::{Config, ConfigError, Time};
use cairn_past::insert::{BlockInsert, InsertError};
use cairn_past::lookup::{FetchFailure, Fetched, FragmentLookup, LOOKUP_SPARES};
use cairn_past::operation::{AskId, Command, Input, Operation, Progress};
use cairn_past::records::{FindError, RecordFind, RecordPublish};
use cairn_past::{UnixSeconds, certificate_key, check_signed_certificate};
use cairn_pipeline::{
    FailureKind, FileIdentity, FragmentSink, PutOptions, StoreFailure, put_unsigned,
};

use crate::churn_report::{
    BlockLive, ChurnRecord, FileSample, Read, Redundancy, Tracker, exponential,
};
use crate::maintenance::{MaintenanceSetup, MaintenanceStats};
use crate::past::{PastSetup, PastStats, SimFailure};
use crate::{Sim, SimConfig, SimStats};

/// How departed nodes come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChurnMode {
    /// A killed node is replaced by a new, empty one.
    Crash,
    /// A killed node comes back with its id and store after a downtime.
    Restart,
    /// A coin per death.
    Mixed,
}

impl ChurnMode {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            ChurnMode::Crash => "crash",
            ChurnMode::Restart => "restart",
            ChurnMode::Mixed => "mixed",
        }
    }
}

/// Parameters of [`run_churn`]: the bench's flags.
#[derive(Clone, Debug)]
pub struct ChurnParams {
    /// Nodes, the gateway included.
    pub nodes: usize,
    /// Files stored before the churn.
    pub files: usize,
    /// Bytes per file.
    pub size: u64,
    /// Seconds of churn.
    pub duration: u64,
    /// Mean session in seconds.
    pub mean_session: u64,
    /// What a killed node does next.
    pub mode: ChurnMode,
    /// Readers during the churn.
    pub readers: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// The erasure code.
    pub params: ErasureParams,
    /// Seconds to wait for full redundancy after the churn.
    pub repair_timeout: u64,
    /// The overlay's keepalive period (`--tick-ms`).
    pub tick: Duration,
    /// Maintenance (`None`: no node repairs anything).
    pub maintenance: Option<MaintenanceSetup>,
    /// One-way latency between two nodes at the same point.
    pub base_latency: Duration,
    /// One-way latency added per unit of distance.
    pub latency_per_unit: Duration,
}

impl ChurnParams {
    /// The bench's defaults (16 nodes, 16 files of 1 MiB, 60 s, mean session 60 s,
    /// mixed, 2 readers, 4+2, 300 s repair timeout, 1 s tick), daemon maintenance, and
    /// one-way latencies of 0.5 ms plus up to about 0.3 ms: what makes a quiet read of
    /// a 256 KiB file take about the bench's median on this machine (5 ms: four
    /// requests one after the other, each standing for a loopback round trip and the
    /// work of the nodes at both ends).
    pub fn new(seed: u64) -> ChurnParams {
        ChurnParams {
            nodes: 16,
            files: 16,
            size: 1 << 20,
            duration: 60,
            mean_session: 60,
            mode: ChurnMode::Mixed,
            readers: 2,
            seed,
            params: ErasureParams::DEFAULT,
            repair_timeout: 300,
            tick: Duration::from_secs(1),
            maintenance: Some(MaintenanceSetup::default()),
            base_latency: Duration::from_micros(500),
            latency_per_unit: Duration::from_micros(200),
        }
    }
}

/// Why a churn run could not run.
#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    /// The overlay's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The erasure code cannot be built.
    #[error(transparent)]
    Codec(#[from] ParamsError),
    /// The parameters do not make a run.
    #[error("{0}")]
    Params(String),
    /// A file could not be stored before the churn.
    #[error("storing file {index}: {reason}")]
    Put {
        /// The file.
        index: usize,
        /// Why.
        reason: String,
    },
}

/// What [`run_churn`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ChurnOutcome {
    /// The series and totals the report is made of.
    pub record: ChurnRecord,
    /// The files, in order.
    pub files: Vec<FileId>,
    /// Maintenance counters.
    pub maintenance: MaintenanceStats,
    /// PAST counters.
    pub past: PastStats,
    /// Overlay counters.
    pub stats: SimStats,
    /// Simulated seconds of the whole run.
    pub simulated_seconds: f64,
}

/// A file stored before the churn.
struct StoredFile {
    file: FileId,
    certificate: FileCertificate,
    manifest: Manifest,
}

/// Runs the churn scenario (see the module's model).
pub fn run_churn(params: &ChurnParams) -> Result<ChurnOutcome, ChurnError> {
    let n = usize::from(params.params.n());
    if params.nodes <= n {
        return Err(ChurnError::Params(format!(
            "--nodes must exceed k + m = {n} so that churn can leave every block placeable"
        )));
    }
    Codec::new(params.params)?;
    let (mut sim, gateway, mut slots) = start_network(params)?;

    let owner = {
        let mut rng = Rng::new(params.seed ^ 0x0c4a_u64);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        KeyPair::from_secret_bytes(&secret)
    };
    let mut files = Vec::with_capacity(params.files);
    for i in 0..params.files {
        let data = Rng::new(params.seed ^ (i as u64 + 1) << 20).bytes(params.size as usize);
        let stored = put_file(&mut sim, &gateway, &owner, i, &data, params.params)
            .map_err(|reason| ChurnError::Put { index: i, reason })?;
        files.push(stored);
    }
    let layout: Vec<(FileId, u64)> = files
        .iter()
        .map(|f| (f.file, f.manifest.blocks.len() as u64))
        .collect();
    let mut tracker = Tracker::new(&layout, usize::from(params.params.k()), n);
    let stored_bytes =
        params.files as f64 * params.size as f64 * n as f64 / f64::from(params.params.k());

    // The churn.
    let start = sim.now();
    let at = |sim: &Sim| sim.now().micros_since(start) as f64 / 1e6;
    let mut readers: Vec<Reader> = (0..params.readers)
        .map(|r| Reader {
            rng: Rng::new(params.seed.wrapping_mul(31).wrapping_add(r as u64)),
            running: None,
        })
        .collect();
    let mut reads: Vec<Read> = Vec::new();
    for reader in &mut readers {
        reader.start(&mut sim, &gateway, &files);
    }
    let mut rng = Rng::new(params.seed);
    let mean = params.mean_session.max(1) as f64;
    let mut death: Vec<f64> = slots.iter().map(|_| exponential(&mut rng, mean)).collect();
    let mut downtime: Vec<Option<f64>> = slots.iter().map(|_| None).collect();
    let mut samples: Vec<Redundancy> = Vec::new();
    let mut kills = 0usize;
    let mut last_sample = -10.0f64;
    let duration = params.duration as f64;
    let max_ticks = params.duration.saturating_mul(10).saturating_add(1);
    for tick in 0..max_ticks {
        let now = tick as f64 / 10.0;
        if now >= duration {
            break;
        }
        let target = Time(start.0 + tick * 100_000);
        run_readers(
            &mut sim,
            target,
            &mut readers,
            &mut reads,
            start,
            true,
            &gateway,
            &files,
        );
        let t = sim.now();
        for i in 0..slots.len() {
            if let Some(back_at) = downtime[i]
                && now >= back_at
            {
                tracing::debug!(node = %slots[i], at = now, "restarted");
                sim.restart(&slots[i], t, Some(&gateway));
                downtime[i] = None;
                death[i] = now + exponential(&mut rng, mean);
                continue;
            }
            if downtime[i].is_none() && now >= death[i] {
                tracing::debug!(node = %slots[i], at = now, "killed");
                sim.crash(&slots[i], t);
                kills += 1;
                let restart = match params.mode {
                    ChurnMode::Crash => false,
                    ChurnMode::Restart => true,
                    ChurnMode::Mixed => rng.below(2) == 0,
                };
                if restart {
                    downtime[i] = Some(now + exponential(&mut rng, (mean / 10.0).clamp(1.0, 30.0)));
                } else {
                    slots[i] = sim.add_node_through(t, Some(&gateway));
                    tracing::debug!(node = %slots[i], at = now, "replacement started");
                    death[i] = now + exponential(&mut rng, mean);
                }
            }
        }
        // Apply this instant's crashes before the sample, as the bench's kills are.
        sim.run_until(t);
        if now - last_sample >= 5.0 {
            last_sample = now;
            let live = 1 + downtime.iter().filter(|d| d.is_none()).count();
            samples.push(tracker.observe(at(&sim), live, stat_all(&sim, &gateway, &files)));
        }
    }
    // The readers finish what they read (the bench joins them), then nodes still down
    // come back so that the end state is complete.
    let end = sim.now().plus(Duration::from_secs(120));
    run_readers(
        &mut sim,
        end,
        &mut readers,
        &mut reads,
        start,
        false,
        &gateway,
        &files,
    );
    let t = sim.now();
    for (i, down) in downtime.iter_mut().enumerate() {
        if down.take().is_some() {
            sim.restart(&slots[i], t, Some(&gateway));
        }
    }

    let churn_end = sim.now();
    let mut time_to_full = None;
    for _ in 0..=params.repair_timeout / 2 {
        let elapsed = sim.now().micros_since(churn_end) as f64 / 1e6;
        if elapsed >= params.repair_timeout as f64 {
            break;
        }
        let sample = tracker.observe(at(&sim), params.nodes, stat_all(&sim, &gateway, &files));
        samples.push(sample);
        if sample.stat_failures == 0 && sample.min_live >= n {
            time_to_full = Some(elapsed);
            break;
        }
        let next = sim.now().plus(Duration::from_secs(2));
        sim.run_until(next);
    }
    let final_reads: Vec<Result<(), String>> = files
        .iter()
        .map(|file| {
            let read = FileRead::new(file.file, sim.unix_now());
            let started = sim.start(&gateway, sim.now(), read);
            let deadline = sim.now().plus(Duration::from_secs(120));
            started
                .and_then(|s| sim.run_until_done(&s, deadline))
                .unwrap_or_else(|| Err("the read did not finish".to_string()))
        })
        .collect();
    let lost = tracker.lost(&final_reads);
    let record = ChurnRecord {
        reads,
        samples,
        final_reads,
        lost,
        time_to_full_redundancy: time_to_full,
        repair_bytes: sim.maintenance_stats().repair_bytes,
        stored_bytes,
        kills,
    };
    Ok(ChurnOutcome {
        record,
        files: files.iter().map(|f| f.file).collect(),
        maintenance: sim.maintenance_stats().clone(),
        past: sim.past_stats().clone(),
        stats: sim.stats().clone(),
        simulated_seconds: sim.now().as_secs_f64(),
    })
}

/// The network of a churn run: the gateway alone, then the other nodes through it, as
/// the bench starts them one after the other; then (at most 30 s) until the gateway
/// knows them all. Returns the simulator, the gateway and the other nodes.
fn start_network(params: &ChurnParams) -> Result<(Sim, NodeId, Vec<NodeId>), ChurnError> {
    let mut sim = Sim::new(SimConfig {
        seed: params.seed,
        overlay: Config {
            // The daemon's mapping of `--tick-ms` (at least 10 ms).
            tick: params.tick.max(Duration::from_millis(10)),
            ..Config::default()
        },
        base_latency: params.base_latency,
        latency_per_unit: params.latency_per_unit,
        past: Some(PastSetup {
            // The daemon's default `--capacity`.
            capacity: 16 << 30,
            refuse_when_down: true,
            maintenance: params.maintenance,
            ..PastSetup::default()
        }),
        ..SimConfig::default()
    })?;

    let gateway = sim.add_node_through(Time::ZERO, None);
    let slots: Vec<NodeId> = (1..params.nodes)
        .map(|i| sim.add_node_through(Time(i as u64 * 100_000), Some(&gateway)))
        .collect();
    let settle_until = sim
        .now()
        .plus(Duration::from_secs(params.nodes as u64 / 10 + 30));
    while sim.now() < settle_until && !knows_all(&sim, &gateway, params.nodes) {
        let next = sim.now().plus(Duration::from_millis(100));
        sim.run_until(next);
    }
    Ok((sim, gateway, slots))
}

/// Whether the gateway's overlay knows every other node (the bench's `settle`).
fn knows_all(sim: &Sim, gateway: &NodeId, nodes: usize) -> bool {
    sim.overlay(gateway)
        .is_some_and(|o| o.known_nodes().len() + 1 >= nodes)
}

/// One reader: its generator and the read it waits for (when it started).
struct Reader {
    rng: Rng,
    running: Option<(crate::Started<Result<(), String>>, Time)>,
}

impl Reader {
    /// Starts a read of a random file now.
    fn start(&mut self, sim: &mut Sim, gateway: &NodeId, files: &[StoredFile]) {
        let Some(file) = files.get(self.rng.below(files.len().max(1) as u64) as usize) else {
            return;
        };
        let read = FileRead::new(file.file, sim.unix_now());
        self.running = sim.start(gateway, sim.now(), read).map(|s| (s, sim.now()));
    }
}

/// Runs the simulation to `until`, recording every read that ends and starting the
/// reader's next one at once while `more`; without `more`, returns as soon as no read
/// runs.
#[allow(clippy::too_many_arguments)]
fn run_readers(
    sim: &mut Sim,
    until: Time,
    readers: &mut [Reader],
    reads: &mut Vec<Read>,
    start: Time,
    more: bool,
    gateway: &NodeId,
    files: &[StoredFile],
) {
    loop {
        let mut any = false;
        for reader in readers.iter_mut() {
            let Some((started, began)) = reader.running else {
                continue;
            };
            match sim.take_output(&started) {
                Some(outcome) => {
                    reads.push(Read {
                        at: sim.now().micros_since(start) as f64 / 1e6,
                        ok: outcome.is_ok(),
                        millis: sim.now().micros_since(began) as f64 / 1e3,
                    });
                    reader.running = None;
                    if more {
                        reader.start(sim, gateway, files);
                    }
                }
                None => any = true,
            }
            any |= reader.running.is_some();
        }
        if !any && !more {
            return;
        }
        if !sim.run_until_finished(until) {
            return;
        }
    }
}

/// Why a block could not be stored through the simulated gateway.
#[derive(Debug, thiserror::Error)]
enum SinkError {
    /// The block's `n` fragments could not be placed at this key.
    #[error("{0}")]
    Refused(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl StoreFailure for SinkError {
    fn kind(&self) -> FailureKind {
        match self {
            SinkError::Refused(_) => FailureKind::Refused,
            SinkError::Other(_) => FailureKind::Other,
        }
    }
}

/// The gateway's `NetworkFragments` for a put, over the simulator: each block a
/// [`BlockInsert`] from the gateway, run to its end (one block at a time).
struct SimSink<'a> {
    sim: RefCell<&'a mut Sim>,
    gateway: NodeId,
    file: FileId,
    grant: Arc<Vec<u8>>,
}

impl FragmentSink for SimSink<'_> {
    type Error = SinkError;

    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), SinkError> {
        self.put_block_fragments(key, &[(fragment, *hash)])
    }

    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), SinkError> {
        let owned = Arc::new(
            fragments
                .iter()
                .map(|(f, hash)| (f.index, *hash, f.bytes.to_vec()))
                .collect(),
        );
        let insert: BlockInsert<SimFailure> =
            BlockInsert::new(self.file, Arc::clone(&self.grant), *key, owned);
        let mut sim = self.sim.borrow_mut();
        let now = sim.now();
        let deadline = now.plus(Duration::from_secs(120));
        let started = sim
            .start(&self.gateway, now, insert)
            .ok_or_else(|| SinkError::Other("the gateway is not simulated".into()))?;
        match sim.run_until_done(&started, deadline) {
            Some(Ok(())) => Ok(()),
            Some(Err(InsertError::Placement(failure))) => {
                Err(SinkError::Refused(failure.to_string()))
            }
            Some(Err(other)) => Err(SinkError::Other(other.to_string())),
            None => Err(SinkError::Other("the insert did not finish".into())),
        }
    }

    fn put_certificate(&self, _: &Signed<FileCertificate>) -> Result<(), SinkError> {
        Err(SinkError::Other(
            "certificates are published by the caller".into(),
        ))
    }
}

/// Puts file `index` through the gateway as `PUT /v1/files` and the client do: the
/// pipeline stores the blocks and the manifest under the owner's grant, the owner
/// signs the certificate, and the gateway publishes it to its keepers.
fn put_file(
    sim: &mut Sim,
    gateway: &NodeId,
    owner: &KeyPair,
    index: usize,
    data: &[u8],
    params: ErasureParams,
) -> Result<StoredFile, String> {
    let now = sim.unix_now();
    let name = format!("churn-{index}");
    let grant = UploadGrant::new(
        name.as_bytes(),
        index as u64,
        owner.public_key(),
        now,
        // The API client's grant lifetime.
        24 * 3600,
    );
    let identity = FileIdentity::from(&grant);
    let grant_bytes = Signed::sign(owner, grant)
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())?;
    let mut options = PutOptions::new(params, now);
    options.name_salt = index as u64;
    let sink = SimSink {
        sim: RefCell::new(&mut *sim),
        gateway: *gateway,
        file: identity.file_id,
        grant: Arc::new(grant_bytes),
    };
    let unsigned = put_unsigned(data, &identity, &options, &sink).map_err(|e| e.to_string())?;
    drop(sink);
    let signed = Signed::sign(owner, unsigned.certificate.clone())
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())?;
    let replicas = sim
        .holder(gateway)
        .map_or(4, |h| h.config().certificate_replicas);
    let publish = RecordPublish::<FileCertificate, SimFailure>::new(
        signed,
        u16::try_from(replicas).unwrap_or(u16::MAX),
        sim.unix_now(),
    );
    let started = sim
        .start(gateway, sim.now(), publish)
        .ok_or("the gateway is not simulated")?;
    let deadline = sim.now().plus(Duration::from_secs(60));
    match sim.run_until_done(&started, deadline) {
        Some(Ok(_)) => Ok(StoredFile {
            file: identity.file_id,
            certificate: unsigned.certificate,
            manifest: unsigned.manifest,
        }),
        Some(Err(e)) => Err(format!("publishing the certificate: {e}")),
        None => Err("publishing the certificate did not finish".into()),
    }
}

/// The gateway's stat of every file at this instant.
fn stat_all(sim: &Sim, gateway: &NodeId, files: &[StoredFile]) -> Vec<FileSample> {
    files.iter().map(|f| file_stat(sim, gateway, f)).collect()
}

/// The gateway's `stat_file` at this instant: the certificate from the first of its
/// keepers (as the gateway locates them) that is up and holds it, the manifest
/// readable (at least `k` live fragments), then per block the fragments that have a
/// live holder, as `block_stat` counts them.
fn file_stat(sim: &Sim, gateway: &NodeId, file: &StoredFile) -> FileSample {
    let body = &file.certificate;
    let n = usize::from(body.k) + usize::from(body.m);
    let replicas = sim
        .holder(gateway)
        .map_or(4, |h| h.config().certificate_replicas);
    let keepers = sim.locate_from(gateway, &certificate_key(&file.file).0, replicas + 2);
    let certified = keepers.iter().any(|id| {
        sim.is_up(id)
            && sim
                .holder(id)
                .and_then(|h| h.get_certificate(&file.file).ok().flatten())
                .is_some_and(|bytes| check_signed_certificate(&bytes, sim.unix_now()).is_ok())
    });
    if !certified {
        return Err(format!("no node has a certificate for file {}", file.file));
    }
    let manifest_key = manifest_placement_key(&body.manifest_hash, body.manifest_salt);
    let manifest_live = block_live(sim, gateway, &manifest_key, &body.manifest_fragments, n);
    if manifest_live < usize::from(body.k) {
        return Err(format!(
            "reading the manifest of file {}: {manifest_live} of {n} fragments live",
            file.file
        ));
    }
    let mut blocks = vec![BlockLive {
        name: "manifest".into(),
        key: manifest_key.to_string(),
        live: manifest_live,
    }];
    for (position, entry) in file.manifest.blocks.iter().enumerate() {
        let key = entry.placement_key();
        blocks.push(BlockLive {
            name: position.to_string(),
            key: key.to_string(),
            live: block_live(sim, gateway, &key, &entry.fragments, n),
        });
    }
    Ok(blocks)
}

/// Fragments of the block at `key` with a live holder that has the manifest's hash:
/// among the `n + LOOKUP_SPARES` closest the gateway locates, and the diverted holders
/// their pointers name (the gateway's `block_stat`).
fn block_live(
    sim: &Sim,
    gateway: &NodeId,
    key: &PlacementKey,
    hashes: &[FragmentHash],
    n: usize,
) -> usize {
    let mut held = vec![false; hashes.len()];
    let holds = |id: &NodeId, index: u16| -> bool {
        sim.is_up(id)
            && sim
                .holder(id)
                .and_then(|h| h.holdings(key).ok())
                .is_some_and(|(fragments, _, _)| {
                    fragments.iter().any(|(i, hash)| {
                        *i == index && hashes.get(usize::from(index)) == Some(hash)
                    })
                })
    };
    for id in sim.locate_from(gateway, &key.0, n + LOOKUP_SPARES) {
        if !sim.is_up(&id) {
            continue;
        }
        let Some(Ok((fragments, pointers, _))) = sim.holder(&id).map(|h| h.holdings(key)) else {
            continue;
        };
        for (index, hash) in fragments {
            if hashes.get(usize::from(index)) == Some(&hash)
                && let Some(slot) = held.get_mut(usize::from(index))
            {
                *slot = true;
            }
        }
        for (index, holder) in pointers {
            if holds(&holder, index)
                && let Some(slot) = held.get_mut(usize::from(index))
            {
                *slot = true;
            }
        }
    }
    held.iter().filter(|h| **h).count()
}

/// What one fetched fragment offers the decoder (kept so that a decode can be retried
/// with more fragments).
#[derive(Clone, Debug)]
enum Got {
    Fragment(Fragment),
    Missing,
    Corrupt(String),
    Unavailable(String),
}

impl Got {
    fn from_fetched(fetched: Fetched<SimFailure>) -> Got {
        match fetched {
            Ok(Some(fragment)) => Got::Fragment(fragment),
            Ok(None) => Got::Missing,
            Err(FetchFailure::Corrupt { node, index }) => {
                Got::Corrupt(format!("node {node} reports fragment {index} corrupt"))
            }
            Err(other) => Got::Unavailable(other.to_string()),
        }
    }

    fn offer(&self) -> Offer {
        match self {
            Got::Fragment(fragment) => Offer::Fragment(fragment.clone()),
            Got::Missing => Offer::Missing,
            Got::Corrupt(why) => Offer::ReportedCorrupt(why.clone()),
            Got::Unavailable(why) => Offer::Unavailable(why.clone()),
        }
    }
}

/// Which block a [`FileRead`] fetches: the manifest, or a data block by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Manifest,
    Block(usize),
}

/// Where a [`FileRead`] stands.
#[derive(Debug)]
enum Stage {
    /// Finding the certificate.
    Certificate(RecordFind<FileCertificate, SimFailure>),
    /// Fetching fragments of a block: the first `k` of the fetch order, then (only if
    /// those do not decode) the rest.
    Fetching {
        part: Part,
        lookup: FragmentLookup<SimFailure>,
        indexes: Vec<u16>,
        got: Vec<(u16, Got)>,
    },
    Done,
}

/// A read of a whole file through the gateway, as `GET /v1/files/{ref}` does it: the
/// certificate from its keepers (closest first, the first valid one), checked; then the
/// manifest block and every data block in order, each by a [`FragmentLookup`] of the
/// first `k` indexes of the fetch order and, only if those do not decode, one of the
/// other `m` (the pipeline's `block_offers`); every block decoded and checked against
/// its hash. Fails as the gateway's get does: no certificate, or a block that does not
/// decode. Its output is `Ok` or why not.
#[derive(Debug)]
pub struct FileRead {
    file: FileId,
    now: UnixSeconds,
    stage: Stage,
    /// Bumped with each sub-operation: the high bits of its asks' ids, so that a late
    /// answer to an earlier one is told apart.
    round: u32,
    certificate: Option<FileCertificate>,
    codec: Option<Codec>,
    manifest: Option<Manifest>,
}

/// Bits of an [`AskId`] left to the sub-operation; the round goes above them.
const ROUND_SHIFT: u32 = 20;

impl FileRead {
    /// A read of `file` at `now` (Unix seconds: the certificate's expiry is judged then).
    pub fn new(file: FileId, now: UnixSeconds) -> FileRead {
        FileRead {
            file,
            now,
            stage: Stage::Done,
            round: 0,
            certificate: None,
            codec: None,
            manifest: None,
        }
    }

    fn outer(&self, commands: Vec<Command>) -> Vec<Command> {
        commands
            .into_iter()
            .map(|command| match command {
                Command::Ask { ask, to, request } => Command::Ask {
                    ask: AskId((self.round << ROUND_SHIFT) | ask.0),
                    to,
                    request,
                },
                Command::Pace { ask, bytes } => Command::Pace {
                    ask: AskId((self.round << ROUND_SHIFT) | ask.0),
                    bytes,
                },
                locate => locate,
            })
            .collect()
    }

    fn fail(&mut self, why: String) -> Progress<Result<(), String>> {
        self.stage = Stage::Done;
        Progress::Done(Err(why))
    }

    /// Starts fetching `indexes` of `part`.
    fn fetch(
        &mut self,
        part: Part,
        indexes: Vec<u16>,
        got: Vec<(u16, Got)>,
    ) -> Progress<Result<(), String>> {
        let Some(key) = self.key_of(part) else {
            return self.fail("the manifest lists no such block".into());
        };
        self.round += 1;
        let mut lookup = FragmentLookup::new(key, &indexes);
        let progress = lookup.start();
        self.stage = Stage::Fetching {
            part,
            lookup,
            indexes,
            got,
        };
        self.on_fetch(progress)
    }

    fn key_of(&self, part: Part) -> Option<PlacementKey> {
        match part {
            Part::Manifest => {
                let body = self.certificate.as_ref()?;
                Some(manifest_placement_key(
                    &body.manifest_hash,
                    body.manifest_salt,
                ))
            }
            Part::Block(position) => Some(
                self.manifest
                    .as_ref()?
                    .blocks
                    .get(position)?
                    .placement_key(),
            ),
        }
    }

    /// The first `k` indexes of the fetch order, and the others.
    fn batches(&self) -> (Vec<u16>, Vec<u16>) {
        let Some(codec) = &self.codec else {
            return (Vec::new(), Vec::new());
        };
        let order: Vec<u16> = codec.fetch_order().collect();
        let first = usize::from(codec.params().k()).min(order.len());
        (order[..first].to_vec(), order[first..].to_vec())
    }

    fn on_fetch(
        &mut self,
        progress: Progress<
            Result<Vec<Fetched<SimFailure>>, cairn_past::lookup::LookupError<SimFailure>>,
        >,
    ) -> Progress<Result<(), String>> {
        let fetched = match progress {
            Progress::Continue(commands) => return Progress::Continue(self.outer(commands)),
            Progress::Done(fetched) => fetched,
        };
        let Stage::Fetching {
            part,
            indexes,
            mut got,
            ..
        } = std::mem::replace(&mut self.stage, Stage::Done)
        else {
            return self.fail("a fetch ended outside its stage".into());
        };
        match fetched {
            Ok(results) => got.extend(
                indexes
                    .iter()
                    .copied()
                    .zip(results.into_iter().map(Got::from_fetched)),
            ),
            Err(error) => {
                let why = error.to_string();
                got.extend(indexes.iter().map(|&i| (i, Got::Unavailable(why.clone()))));
            }
        }
        let (first, rest) = self.batches();
        match self.decode(part, &got) {
            Ok(()) => self.next_part(part),
            Err(_) if got.len() <= first.len() && !rest.is_empty() => self.fetch(part, rest, got),
            Err(why) => self.fail(why),
        }
    }

    /// Decodes `part` from what was fetched; a decoded manifest is kept.
    fn decode(&mut self, part: Part, got: &[(u16, Got)]) -> Result<(), String> {
        let (Some(codec), Some(body)) = (&self.codec, &self.certificate) else {
            return Err("no certificate".into());
        };
        let offers = got.iter().map(|(index, got)| (*index, got.offer()));
        match part {
            Part::Manifest => {
                let spec = BlockSpec {
                    hash: BlockHash(body.manifest_hash.0),
                    len: None,
                    fragment_hashes: &body.manifest_fragments,
                };
                let (decoded, _) = codec.decode(&spec, offers).map_err(|e| {
                    format!(
                        "the manifest of file {} could not be fetched: {e}",
                        body.file_id
                    )
                })?;
                let manifest =
                    Manifest::from_block(&decoded.to_vec(), &body.manifest_hash, codec.params())
                        .map_err(|e| {
                            format!("the manifest of file {} is invalid: {e}", body.file_id)
                        })?;
                if manifest.file_size != body.size
                    || manifest.params.k() != body.k
                    || manifest.params.m() != body.m
                {
                    return Err("the manifest disagrees with the certificate".into());
                }
                self.manifest = Some(manifest);
                Ok(())
            }
            Part::Block(position) => {
                let manifest = self.manifest.as_ref().ok_or("no manifest")?;
                let entry = manifest.blocks.get(position).ok_or("no such block")?;
                let len = manifest
                    .block_len(position)
                    .ok_or("a block without a length")?;
                let spec = BlockSpec {
                    hash: entry.hash,
                    len: Some(len),
                    fragment_hashes: &entry.fragments,
                };
                codec.decode(&spec, offers).map(|_| ()).map_err(|e| {
                    format!(
                        "block {position} of file {} could not be rebuilt: {e}",
                        body.file_id
                    )
                })
            }
        }
    }

    /// After `part` decoded: the next block, or done.
    fn next_part(&mut self, part: Part) -> Progress<Result<(), String>> {
        let next = match part {
            Part::Manifest => 0,
            Part::Block(position) => position + 1,
        };
        let blocks = self.manifest.as_ref().map_or(0, |m| m.blocks.len());
        if next >= blocks {
            self.stage = Stage::Done;
            return Progress::Done(Ok(()));
        }
        let (first, _) = self.batches();
        self.fetch(Part::Block(next), first, Vec::new())
    }

    fn on_certificate(
        &mut self,
        progress: Progress<
            Result<cairn_past::records::Found<FileCertificate>, FindError<SimFailure>>,
        >,
    ) -> Progress<Result<(), String>> {
        let found = match progress {
            Progress::Continue(commands) => return Progress::Continue(self.outer(commands)),
            Progress::Done(found) => found,
        };
        let signed = match found {
            Ok(found) => found.record,
            Err(FindError::NoReplicas) => None,
            Err(error) => return self.fail(error.to_string()),
        };
        let Some(signed) = signed else {
            return self.fail(format!(
                "no file {} is stored in this network (no node has its certificate)",
                self.file
            ));
        };
        let body = match signed.verify() {
            Ok(body) if body.file_id == self.file => body.clone(),
            Ok(_) => return self.fail("the certificate is for another file".into()),
            Err(e) => return self.fail(format!("the certificate does not verify: {e}")),
        };
        if let Err(e) = body.check_time(self.now) {
            return self.fail(format!("the certificate: {e}"));
        }
        let codec = ErasureParams::new(body.k, body.m).and_then(Codec::new);
        match codec {
            Ok(codec) => self.codec = Some(codec),
            Err(e) => return self.fail(format!("the certificate's code: {e}")),
        }
        self.certificate = Some(body);
        let (first, _) = self.batches();
        self.fetch(Part::Manifest, first, Vec::new())
    }
}

impl Operation for FileRead {
    type Output = Result<(), String>;
    type Failure = SimFailure;

    fn start(&mut self) -> Progress<Self::Output> {
        // The gateway's `find_record`: the keepers and two more.
        let count = u16::try_from(cairn_past::PastConfig::default().certificate_replicas + 2)
            .unwrap_or(u16::MAX);
        let mut find = RecordFind::new(self.file, count, self.now);
        let progress = find.start();
        self.stage = Stage::Certificate(find);
        self.on_certificate(progress)
    }

    fn handle(&mut self, input: Input<SimFailure>) -> Progress<Self::Output> {
        let input = match input {
            Input::Answered(ask, answer) => {
                if ask.0 >> ROUND_SHIFT != self.round {
                    return Progress::Continue(Vec::new());
                }
                Input::Answered(AskId(ask.0 & ((1 << ROUND_SHIFT) - 1)), answer)
            }
            Input::Paced(ask) => Input::Paced(AskId(ask.0 & ((1 << ROUND_SHIFT) - 1))),
            located => located,
        };
        match &mut self.stage {
            Stage::Certificate(find) => {
                let progress = find.handle(input);
                self.on_certificate(progress)
            }
            Stage::Fetching { lookup, .. } => {
                let progress = lookup.handle(input);
                self.on_fetch(progress)
            }
            Stage::Done => Progress::Continue(Vec::new()),
        }
    }

    fn stalled(&mut self) -> Self::Output {
        Err(format!("the read of file {} stalled", self.file))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_store::NodeStore;

    use super::*;
    use crate::NodeState;

    fn small(mode: ChurnMode, seed: u64) -> ChurnParams {
        ChurnParams {
            nodes: 8,
            files: 4,
            size: 64 << 10,
            duration: 20,
            mean_session: 20,
            mode,
            readers: 2,
            repair_timeout: 120,
            ..ChurnParams::new(seed)
        }
    }

    fn describe(outcome: &ChurnOutcome) -> String {
        let r = &outcome.record;
        format!(
            "kills {} reads {} availability {:.4} durability {} lost {:?} time to full {:?} \
             repair bytes {} last sample {:?} maintenance {:?}",
            r.kills,
            r.reads.len(),
            r.availability(),
            r.durability(),
            r.lost,
            r.time_to_full_redundancy,
            r.repair_bytes,
            r.samples.last(),
            outcome.maintenance
        )
    }

    #[test]
    fn restart_churn_keeps_every_file_and_serves_most_reads() {
        let outcome = run_churn(&small(ChurnMode::Restart, 1)).unwrap();
        let record = &outcome.record;
        let summary = describe(&outcome);
        assert!(record.kills > 0, "{summary}");
        assert_eq!(record.durability(), 1.0, "{summary}");
        assert!(record.lost.is_empty(), "{summary}");
        assert!(record.reads.len() > 100, "{summary}");
        assert!(record.availability() > 0.9, "{summary}");
        assert!(
            record.samples.iter().any(|s| s.min_live < 6),
            "the churn took fragments away: {summary}"
        );
        assert!(record.time_to_full_redundancy.is_some(), "{summary}");
    }

    #[test]
    fn crash_churn_without_maintenance_loses_files_and_says_which_blocks() {
        let params = ChurnParams {
            mean_session: 30,
            duration: 60,
            repair_timeout: 30,
            maintenance: None,
            ..small(ChurnMode::Crash, 2)
        };
        let outcome = run_churn(&params).unwrap();
        let record = &outcome.record;
        let summary = describe(&outcome);
        assert!(record.durability() < 1.0, "{summary}");
        assert!(record.time_to_full_redundancy.is_none(), "{summary}");
        assert_eq!(outcome.maintenance.repair_bytes, 0, "{summary}");
        assert!(
            record.lost.iter().any(|b| !b.readable
                && b.lost_at.is_some()
                && (b.why.contains("fragments live") || b.why.contains("stat failed"))),
            "{summary}"
        );
        // The same churn with the daemon's maintenance repairs what the deaths take.
        let repaired = run_churn(&ChurnParams {
            maintenance: Some(MaintenanceSetup::default()),
            ..params
        })
        .unwrap();
        assert!(
            repaired.maintenance.fragments_regenerated > 0,
            "{}",
            describe(&repaired)
        );
        assert!(
            repaired.record.durability() > record.durability(),
            "{}",
            describe(&repaired)
        );
    }

    /// The fragments of `file` each node holds, by block (manifest first).
    fn holders_of(sim: &Sim, file: &StoredFile) -> Vec<Vec<(NodeId, u16)>> {
        let body = &file.certificate;
        let keys = std::iter::once(manifest_placement_key(
            &body.manifest_hash,
            body.manifest_salt,
        ))
        .chain(file.manifest.blocks.iter().map(|b| b.placement_key()));
        keys.map(|key| {
            sim.holders()
                .filter(|(id, _, _)| sim.is_up(id))
                .flat_map(|(id, _, holder)| {
                    let (fragments, _, _) = holder.holdings(&key).unwrap();
                    fragments.into_iter().map(move |(index, _)| (id, index))
                })
                .collect()
        })
        .collect()
    }

    #[test]
    fn a_fragment_lost_with_its_node_is_regenerated_by_the_coordinator_and_a_restarted_node_keeps_its_own()
     {
        let params = ChurnParams {
            nodes: 12,
            ..small(ChurnMode::Crash, 7)
        };
        let (mut sim, gateway, _) = start_network(&params).unwrap();
        let owner = KeyPair::from_secret_bytes(&[9; 32]);
        let data = Rng::new(1).bytes(100_000);
        let file = put_file(&mut sim, &gateway, &owner, 0, &data, params.params).unwrap();
        let before = holders_of(&sim, &file);
        assert!(before.iter().all(|block| block.len() == 6), "{before:?}");
        // One holder of the data block crashes for good, another one for a while.
        let mut victims = before[1]
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != gateway);
        let (gone, away) = (victims.next().unwrap(), victims.next().unwrap());
        let away_used = sim.holder(&away).unwrap().store().used();
        let t = sim.now();
        sim.crash(&gone, t);
        sim.crash(&away, t);
        // Failure detection (3 missed 1 s keepalives), the debounce, the reconcile.
        sim.run_until(t.plus(Duration::from_secs(20)));
        let stat = file_stat(&sim, &gateway, &file).unwrap();
        assert!(stat.iter().all(|b| b.live == 6), "{stat:?}");
        assert!(
            sim.maintenance_stats().fragments_regenerated >= 1,
            "{:?}",
            sim.maintenance_stats()
        );
        assert!(sim.maintenance_stats().repair_bytes > 0);
        // The other node comes back with its store and joins again.
        let t = sim.now();
        sim.restart(&away, t, Some(&gateway));
        sim.run_until(t.plus(Duration::from_secs(20)));
        assert_eq!(sim.state(&away), Some(NodeState::Joined));
        assert_eq!(sim.holder(&away).unwrap().store().used(), away_used);
        // It is in the leaf set of every node whose true leaf set has it, and its own is
        // true. (In a ring this small, 10 others for 8 a side, some other nodes' farthest
        // entries can differ from the truth after churn: not the restart's doing.)
        assert_eq!(
            sim.overlay(&away).unwrap().leaf_set(),
            sim.true_leaf_set(&away)
        );
        for id in sim.live_nodes() {
            let (left, right) = sim.true_leaf_set(&id);
            let (l, r) = sim.overlay(&id).unwrap().leaf_set();
            if left.contains(&away) || right.contains(&away) {
                assert!(l.contains(&away) || r.contains(&away), "{id:?} lacks it");
            }
        }
        let read = FileRead::new(file.file, sim.unix_now());
        let started = sim.start(&gateway, sim.now(), read).unwrap();
        let deadline = sim.now().plus(Duration::from_secs(10));
        assert_eq!(sim.run_until_done(&started, deadline), Some(Ok(())));
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_another_seed_another() {
        let params = ChurnParams {
            duration: 10,
            mean_session: 10,
            ..small(ChurnMode::Mixed, 5)
        };
        let a = run_churn(&params).unwrap();
        let b = run_churn(&params).unwrap();
        assert_eq!(a, b);
        let c = run_churn(&ChurnParams { seed: 6, ..params }).unwrap();
        assert_ne!(a.record, c.record);
    }
}
