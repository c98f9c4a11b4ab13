//! The churn scenario behind `cairn sim churn`: the simulated twin of `cairn bench
//! churn`, with the same model, flags and measures ([`crate::churn_report`]), so that
//! a real run and its simulation compare point by point.
//!
//! Owns: [`ChurnParams`] and [`ChurnMode`], [`run_churn`] and its [`ChurnOutcome`]:
//! the network, the churn, the readers, the samples and the repair wait.
//!
//! May use: [`crate::Sim`] with PAST and maintenance on, [`crate::gateway`] (the put,
//! the stat and [`FileRead`] as node 0 does them), [`crate::churn_report`] (what is
//! measured), `cairn_core`'s keys and PRNG.
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
//!   an exponential downtime of mean `downtime` (the bench's clamp(mean/10, 1, 30) s
//!   by default), in mixed mode a coin decides each death; [`ChurnMode`] takes any
//!   share of transient deaths (`cairn sim durability --transient`). The draws come
//!   from one generator in the bench's order.
//! - Readers read random files back to back from the gateway ([`FileRead`]).
//! - Every 5 s the redundancy is sampled ([`file_stat`]); after the churn the readers
//!   finish, nodes still down come back, and every 2 s a sample is taken until every
//!   block has `n` live fragments or `repair_timeout` passes; then every file is read
//!   once more.
//!
//! # What is not the bench
//! Time is the simulator's: no CPU, disk or HTTP time, latencies from its network
//! model; a stat takes no time (the gateway's `BlockSurvey` driven at one instant,
//! where the bench's stats take a moment per file); no start-up time for a restarted
//! node; no read-ahead of the next block (files of one segment have one block). See
//! also [`crate::maintenance`]'s list.

use std::time::Duration;

use cairn_core::crypto::KeyPair;
use cairn_core::erasure::{Codec, ErasureParams, ParamsError};
use cairn_core::id::{FileId, NodeId};
use cairn_core::rng::Rng;
use cairn_overlay::{Config, ConfigError, Time};

use crate::churn_report::{ChurnRecord, Read, Redundancy, Tracker, exponential};
pub use crate::gateway::{FileRead, ReadOutcome, read_file};
use crate::gateway::{StoredFile, put_file, stat_all};
use crate::maintenance::{MaintenanceSetup, MaintenanceStats};
use crate::past::{PastSetup, PastStats};
use crate::{Sim, SimConfig, SimStats};

/// How departed nodes come back: the share of deaths that are transient (the same node,
/// id and store, comes back after a downtime); the others are crashes (a new, empty
/// node takes the place at once).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChurnMode {
    transient: f64,
}

/// A transient share outside [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("the share of transient departures is within 0 and 1, got {0}")]
pub struct TransientShareError(pub f64);

impl ChurnMode {
    /// Every killed node is replaced by a new, empty one (transient share 0).
    pub const CRASH: ChurnMode = ChurnMode { transient: 0.0 };
    /// Every killed node comes back with its id and store (transient share 1).
    pub const RESTART: ChurnMode = ChurnMode { transient: 1.0 };
    /// A coin per death (transient share 0.5), the bench's `mixed`.
    pub const MIXED: ChurnMode = ChurnMode { transient: 0.5 };

    /// A mode where `share` of the deaths are transient.
    pub fn transient(share: f64) -> Result<ChurnMode, TransientShareError> {
        if (0.0..=1.0).contains(&share) {
            Ok(ChurnMode { transient: share })
        } else {
            Err(TransientShareError(share))
        }
    }

    /// The share of deaths that are transient.
    pub fn transient_share(self) -> f64 {
        self.transient
    }

    /// Its name in the report: the bench's three, `transient` for any other share.
    pub fn name(self) -> &'static str {
        if self.transient == 0.0 {
            "crash"
        } else if self.transient == 1.0 {
            "restart"
        } else if self.transient == 0.5 {
            "mixed"
        } else {
            "transient"
        }
    }

    /// Whether the death just drawn is transient. Crash and restart draw nothing and
    /// a share of one half flips the bench's coin (`below(2)`), so that the bench's
    /// three modes draw what the bench draws; any other share draws a uniform number.
    fn comes_back(self, rng: &mut Rng) -> bool {
        if self.transient <= 0.0 {
            false
        } else if self.transient >= 1.0 {
            true
        } else if self.transient == 0.5 {
            rng.below(2) == 0
        } else {
            rng.unit() < self.transient
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
    /// Mean downtime of a transient departure (`None`: the bench's clamp(mean
    /// session / 10, 1 s, 30 s)).
    pub downtime: Option<Duration>,
    /// The overlay's keepalive period (`--tick-ms`): a node is declared dead after
    /// three missed keepalives, so failure detection takes about three ticks.
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
    /// mixed, 2 readers, 4+2, 300 s repair timeout, 300 ms tick), daemon maintenance, and
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
            mode: ChurnMode::MIXED,
            readers: 2,
            seed,
            params: ErasureParams::DEFAULT,
            repair_timeout: 300,
            downtime: None,
            // The daemon's `DEFAULT_TICK`.
            tick: Duration::from_millis(300),
            maintenance: Some(MaintenanceSetup::default()),
            base_latency: Duration::from_micros(500),
            latency_per_unit: Duration::from_micros(200),
        }
    }
}

impl ChurnParams {
    /// Mean downtime of a transient departure in seconds: `downtime`, or the bench's
    /// clamp(mean session / 10, 1, 30).
    pub fn mean_downtime(&self) -> f64 {
        match self.downtime {
            Some(downtime) => downtime.as_secs_f64(),
            None => (self.mean_session.max(1) as f64 / 10.0).clamp(1.0, 30.0),
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
    /// Blocks stored, manifests included.
    pub stored_blocks: usize,
    /// Killed nodes that came back with their store (during the churn, or after it
    /// when they were still down).
    pub returns: usize,
    /// New, empty nodes that took a killed node's place.
    pub joins: usize,
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
    let mean_downtime = params.mean_downtime();
    let (mut returns, mut joins) = (0usize, 0usize);
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
        let target = Time(start.0.saturating_add(tick.saturating_mul(100_000)));
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
                returns += 1;
                downtime[i] = None;
                death[i] = now + exponential(&mut rng, mean);
                continue;
            }
            if downtime[i].is_none() && now >= death[i] {
                tracing::debug!(node = %slots[i], at = now, "killed");
                sim.crash(&slots[i], t);
                kills += 1;
                if params.mode.comes_back(&mut rng) {
                    downtime[i] = Some(now + exponential(&mut rng, mean_downtime));
                } else {
                    slots[i] = sim.add_node_through(t, Some(&gateway));
                    joins += 1;
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
            returns += 1;
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
            let (now, until) = (sim.now(), sim.now().plus(Duration::from_secs(120)));
            read_file(&mut sim, &gateway, file.file, now, until)
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
        stored_blocks: layout.iter().map(|(_, blocks)| *blocks as usize + 1).sum(),
        returns,
        joins,
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
            maintenance: params.maintenance.clone(),
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
    running: Option<(crate::Started<ReadOutcome>, Time)>,
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
                Some(ReadOutcome::Done(outcome)) => {
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
                // The gateway waits out a block, then the same read goes on.
                Some(ReadOutcome::Wait { after, then }) => {
                    let at = sim.now().plus(after);
                    reader.running = sim.start(gateway, at, *then).map(|s| (s, began));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::manifest::manifest_placement_key;
    use cairn_store::NodeStore;

    use super::*;
    use crate::NodeState;
    use crate::gateway::file_stat;

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

    /// Issue 10's churn goals, with the bench's own parameters (16 nodes, 40 files of
    /// 256 KiB, one minute of churn, two readers): at 60 s mean sessions crash and
    /// mixed churn keep every file and serve at least 99.9% of reads; at 30 s restart
    /// churn serves at least 99.9%. Deterministic: the simulator gives the same run for
    /// the same seed, so three seeds stand for three runs.
    #[test]
    fn the_churn_goals_hold_with_the_benchs_parameters() {
        let goal = |mode: ChurnMode, mean_session: u64, seed: u64, keep_every_file: bool| {
            let params = ChurnParams {
                files: 40,
                size: 256 << 10,
                duration: 60,
                mean_session,
                mode,
                ..ChurnParams::new(seed)
            };
            let outcome = run_churn(&params).unwrap();
            let record = &outcome.record;
            let summary = describe(&outcome);
            assert!(record.kills > 0, "{summary}");
            if keep_every_file {
                assert_eq!(
                    record.durability(),
                    1.0,
                    "{mode:?} {mean_session} s seed {seed}: {summary}"
                );
            }
            assert!(
                record.availability() >= 0.999,
                "{mode:?} {mean_session} s seed {seed}: {summary}"
            );
        };
        for seed in 1..=3 {
            goal(ChurnMode::CRASH, 60, seed, true);
            goal(ChurnMode::MIXED, 60, seed, true);
            goal(ChurnMode::RESTART, 30, seed, false);
        }
    }

    #[test]
    fn restart_churn_keeps_every_file_and_serves_most_reads() {
        let outcome = run_churn(&small(ChurnMode::RESTART, 1)).unwrap();
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
            ..small(ChurnMode::CRASH, 2)
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
            ..small(ChurnMode::CRASH, 7)
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
        let (now, until) = (sim.now(), sim.now().plus(Duration::from_secs(10)));
        assert_eq!(read_file(&mut sim, &gateway, file.file, now, until), Ok(()));
    }

    #[test]
    fn a_read_waits_out_a_block_out_of_reach_as_the_gateway_does_then_fails() {
        let params = ChurnParams {
            nodes: 12,
            maintenance: None,
            ..small(ChurnMode::RESTART, 8)
        };
        let (mut sim, gateway, _) = start_network(&params).unwrap();
        let owner = KeyPair::from_secret_bytes(&[9; 32]);
        let data = Rng::new(2).bytes(100_000);
        let file = put_file(&mut sim, &gateway, &owner, 0, &data, params.params).unwrap();
        // Three of the data block's six holders go down: three left, four needed.
        let down: Vec<NodeId> = holders_of(&sim, &file)[1]
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != gateway)
            .take(3)
            .collect();
        let t = sim.now();
        for id in &down {
            sim.crash(id, t);
        }
        // One comes back after 1.2 s: the read, which waits 0.5, 1, 2 and 4 s between
        // fetches, gets the block on a later fetch.
        sim.restart(
            &down[0],
            t.plus(Duration::from_millis(1200)),
            Some(&gateway),
        );
        let until = t.plus(Duration::from_secs(30));
        let read = read_file(
            &mut sim,
            &gateway,
            file.file,
            t.plus(Duration::from_millis(1)),
            until,
        );
        assert_eq!(read, Ok(()));
        let waited = sim.now().micros_since(t);
        assert!((1_200_000..7_600_000).contains(&waited), "{waited} µs");
        // With two down for good, it gives up once the waits (7.5 s) are spent.
        let t = sim.now();
        sim.crash(&down[0], t);
        let read = read_file(
            &mut sim,
            &gateway,
            file.file,
            t.plus(Duration::from_millis(1)),
            t.plus(Duration::from_secs(30)),
        );
        assert!(
            read.as_ref()
                .is_err_and(|e| e.contains("could not be rebuilt")),
            "{read:?}"
        );
        let waited = sim.now().micros_since(t);
        assert!((7_500_000..9_000_000).contains(&waited), "{waited} µs");
    }

    #[test]
    fn a_transient_share_decides_which_deaths_come_back_and_the_bench_modes_draw_as_the_bench() {
        let share_of = |mode: ChurnMode| {
            let mut rng = Rng::new(3);
            (0..10_000).filter(|_| mode.comes_back(&mut rng)).count() as f64 / 10_000.0
        };
        assert_eq!(share_of(ChurnMode::CRASH), 0.0);
        assert_eq!(share_of(ChurnMode::RESTART), 1.0);
        let quarter = share_of(ChurnMode::transient(0.25).unwrap());
        assert!((0.23..0.27).contains(&quarter), "{quarter}");
        // Mixed is the bench's coin: the same draws as `below(2) == 0`.
        let (mut a, mut b) = (Rng::new(4), Rng::new(4));
        for _ in 0..100 {
            assert_eq!(ChurnMode::MIXED.comes_back(&mut a), b.below(2) == 0);
        }
        assert_eq!(ChurnMode::transient(0.5).unwrap(), ChurnMode::MIXED);
        assert_eq!(ChurnMode::transient(0.0).unwrap().name(), "crash");
        assert_eq!(ChurnMode::transient(0.3).unwrap().name(), "transient");
        assert_eq!(ChurnMode::transient(0.3).unwrap().transient_share(), 0.3);
        for bad in [-0.1, 1.5, f64::NAN] {
            assert!(ChurnMode::transient(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_mean_downtime_is_the_bench_s_unless_set() {
        let params = |mean_session, downtime| ChurnParams {
            mean_session,
            downtime,
            ..ChurnParams::new(1)
        };
        assert_eq!(params(60, None).mean_downtime(), 6.0);
        assert_eq!(params(5, None).mean_downtime(), 1.0);
        assert_eq!(params(3600, None).mean_downtime(), 30.0);
        let set = Some(Duration::from_millis(2500));
        assert_eq!(params(3600, set).mean_downtime(), 2.5);
    }

    #[test]
    fn crashes_are_replaced_by_joins_and_transient_deaths_return_with_their_store() {
        let crash = run_churn(&ChurnParams {
            readers: 0,
            ..small(ChurnMode::CRASH, 3)
        })
        .unwrap();
        assert!(crash.record.kills > 0, "{}", describe(&crash));
        assert_eq!(crash.joins, crash.record.kills);
        assert_eq!(crash.returns, 0);
        assert!(crash.record.reads.is_empty());
        // Files of one block of 64 KiB: one data block and the manifest each.
        assert_eq!(crash.stored_blocks, 2 * 4);
        let restart = run_churn(&ChurnParams {
            readers: 0,
            downtime: Some(Duration::from_secs(2)),
            ..small(ChurnMode::RESTART, 3)
        })
        .unwrap();
        assert_eq!(restart.joins, 0);
        assert_eq!(restart.returns, restart.record.kills);
        assert_eq!(restart.record.durability(), 1.0, "{}", describe(&restart));
    }

    #[test]
    fn replication_is_a_code_of_one_data_fragment_and_survives_churn_with_repair() {
        // `cairn sim durability --scheme 3x`: three copies are k = 1, m = 2.
        let outcome = run_churn(&ChurnParams {
            params: ErasureParams::new(1, 2).unwrap(),
            readers: 1,
            ..small(ChurnMode::MIXED, 4)
        })
        .unwrap();
        let summary = describe(&outcome);
        assert!(outcome.record.kills > 0, "{summary}");
        assert_eq!(outcome.record.durability(), 1.0, "{summary}");
        assert!(outcome.record.availability() > 0.9, "{summary}");
    }

    #[test]
    fn without_departures_nothing_is_lost_or_repaired() {
        let outcome = run_churn(&ChurnParams {
            mean_session: u64::MAX,
            readers: 0,
            ..small(ChurnMode::CRASH, 9)
        })
        .unwrap();
        assert_eq!(outcome.record.kills, 0, "{}", describe(&outcome));
        assert_eq!(outcome.record.durability(), 1.0);
        assert_eq!(outcome.record.repair_bytes, 0, "{}", describe(&outcome));
        assert_eq!(outcome.record.time_to_full_redundancy, Some(0.0));
    }

    #[test]
    fn a_smaller_repair_budget_repairs_less_in_the_same_churn() {
        let params = |repair_bytes_per_sec| ChurnParams {
            nodes: 12,
            files: 20,
            duration: 36,
            mean_session: 20,
            readers: 0,
            maintenance: Some(MaintenanceSetup {
                repair_bytes_per_sec,
                ..MaintenanceSetup::default()
            }),
            ..small(ChurnMode::CRASH, 1)
        };
        let unlimited = run_churn(&params(0)).unwrap();
        let paced = run_churn(&params(50_000)).unwrap();
        let summary = format!("{}\n{}", describe(&unlimited), describe(&paced));
        assert_eq!(unlimited.record.kills, paced.record.kills, "{summary}");
        assert!(
            unlimited.record.time_to_full_redundancy.is_some(),
            "{summary}"
        );
        assert_eq!(unlimited.record.durability(), 1.0, "{summary}");
        assert!(
            paced.record.repair_bytes < unlimited.record.repair_bytes,
            "{summary}"
        );
        assert!(
            paced.record.time_to_full_redundancy.is_none()
                || paced.record.time_to_full_redundancy > unlimited.record.time_to_full_redundancy,
            "{summary}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_run_and_another_seed_another() {
        let params = ChurnParams {
            duration: 10,
            mean_session: 10,
            ..small(ChurnMode::MIXED, 5)
        };
        let a = run_churn(&params).unwrap();
        let b = run_churn(&params).unwrap();
        assert_eq!(a, b);
        let c = run_churn(&ChurnParams { seed: 6, ..params }).unwrap();
        assert_ne!(a.record, c.record);
    }
}
