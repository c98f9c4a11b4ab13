//! Files stored and read back through the simulated PAST network: what a client puts,
//! and the scenario of inserts and lookups under churn ([`run_past_workload`]).
//!
//! Owns: [`SimFile`] (a one-block file: its bytes, the `n` fragments the real codec
//! makes of them, and the owner's upload grant), [`lookup_block`] (a block read back
//! through `FragmentLookup` and decoded), and the workload scenario with its report.
//!
//! May use: [`crate::Sim`] and its PAST driver ([`crate::past`]), `cairn_core`'s keys
//! and erasure code, `cairn_past`'s lookup.

use std::sync::Arc;
use std::time::Duration;

use cairn_core::crypto::{KeyPair, Signed, UploadGrant};
use cairn_core::erasure::{BlockSpec, Codec, ErasureParams, Fragment, Offer};
use cairn_core::id::{BlockHash, FileId, FragmentHash, NodeId, PlacementKey};
use cairn_core::rng::Rng;
use cairn_overlay::{ConfigError, Time};
use cairn_past::insert::OwnedFragments;
use cairn_past::lookup::FragmentLookup;
use cairn_store::NodeStore;

use crate::past::{PastSetup, PastStats, SaltedInsert, SimFailure, Started};
use crate::{Sim, SimConfig, SimStats};

/// Why a PAST scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The overlay's configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The erasure code cannot be built.
    #[error(transparent)]
    Codec(#[from] cairn_core::erasure::ParamsError),
}

/// How long an upload grant of a simulated file lives (seconds).
const GRANT_LIFETIME: u64 = 3600;

/// A file of one block, ready to insert.
#[derive(Clone, Debug)]
pub struct SimFile {
    /// The file's id (from the grant).
    pub file: FileId,
    /// The owner's signed upload grant.
    pub grant: Arc<Vec<u8>>,
    /// The block's hash (its placement key at salt `s` is `PlacementKey::for_block`).
    pub block: BlockHash,
    /// The block's length.
    pub len: usize,
    /// The `n` fragment hashes, by index.
    pub hashes: Vec<FragmentHash>,
    /// The `n` fragments as they go out in store requests.
    pub fragments: OwnedFragments,
}

impl SimFile {
    /// Encodes `bytes` with `codec` as the file `name` of `owner`, with a grant issued at
    /// `now` (Unix seconds).
    pub fn new(owner: &KeyPair, name: &[u8], bytes: &[u8], codec: &Codec, now: u64) -> SimFile {
        let body = UploadGrant::new(
            name,
            0,
            owner.public_key(),
            now.saturating_sub(1),
            GRANT_LIFETIME,
        );
        let file = body.file_id;
        let grant = Signed::sign(owner, body)
            .and_then(|s| s.to_bytes())
            .unwrap_or_default();
        // Encoding a block in memory cannot fail for valid parameters; an empty block
        // list would fail the insert visibly.
        let (block, hashes, fragments) = match codec.encode(bytes) {
            Ok(encoded) => (
                encoded.block_hash(),
                encoded.fragment_hashes().to_vec(),
                encoded
                    .fragments()
                    .map(|f| (f.index, f.hash(), f.bytes.to_vec()))
                    .collect(),
            ),
            Err(_) => (
                BlockHash(cairn_core::id::Id::hash(bytes)),
                Vec::new(),
                Vec::new(),
            ),
        };
        SimFile {
            file,
            grant: Arc::new(grant),
            block,
            len: bytes.len(),
            hashes,
            fragments: Arc::new(fragments),
        }
    }

    /// Bytes it takes on the holders: `n` fragments.
    pub fn stored_bytes(&self) -> u64 {
        self.fragments.iter().map(|(_, _, b)| b.len() as u64).sum()
    }

    /// Its insert, with file diversion over salts `1..=max_salt`.
    pub fn insert(&self, max_salt: u64) -> SaltedInsert {
        SaltedInsert::new(
            self.file,
            Arc::clone(&self.grant),
            self.block,
            Arc::clone(&self.fragments),
            max_salt,
        )
    }
}

/// Looks up every fragment of `file`'s block at salt `salt` from `origin` through
/// `FragmentLookup`, and decodes it; the block's bytes, or why not.
pub fn lookup_block(
    sim: &mut Sim,
    origin: &NodeId,
    file: &SimFile,
    salt: u64,
    codec: &Codec,
    deadline: Time,
) -> Result<Vec<u8>, String> {
    let key = PlacementKey::for_block(&file.block, salt);
    let indexes: Vec<u16> = (0..codec.params().n()).collect();
    let lookup: FragmentLookup<SimFailure> = FragmentLookup::new(key, &indexes);
    let started = sim
        .start(origin, sim.now(), lookup)
        .ok_or("the origin is not a simulated node")?;
    let fetched = sim
        .run_until_done(&started, deadline)
        .ok_or("the lookup did not decide in time")?
        .map_err(|e| e.to_string())?;
    let offers = indexes.iter().zip(fetched).map(|(&index, result)| {
        let offer = match result {
            Ok(Some(Fragment { index: _, bytes })) => Offer::Fragment(Fragment { index, bytes }),
            Ok(None) => Offer::Missing,
            Err(e) => Offer::Unavailable(e.to_string()),
        };
        (index, offer)
    });
    let spec = BlockSpec {
        hash: file.block,
        len: Some(file.len),
        fragment_hashes: &file.hashes,
    };
    let (decoded, _) = codec.decode(&spec, offers).map_err(|e| e.to_string())?;
    Ok(decoded.chunks().flat_map(|c| c.iter().copied()).collect())
}

/// Parameters of [`run_past_workload`].
#[derive(Clone, Debug)]
pub struct WorkloadParams {
    /// Nodes (each by a real join).
    pub nodes: usize,
    /// Files inserted (one block each), from random live nodes, one every `spacing`.
    pub files: usize,
    /// Time between two inserts.
    pub spacing: Duration,
    /// Bytes per file (uniform in 1..=max).
    pub max_file: usize,
    /// Nodes crashed while the files are inserted, at random times.
    pub crashes: usize,
    /// The erasure code.
    pub params: ErasureParams,
    /// The network (its `past` is set by the run if `None`).
    pub sim: SimConfig,
}

impl WorkloadParams {
    /// `nodes` nodes, `files` files, seed `seed`; 4+2 fragments, no crashes.
    pub fn new(nodes: usize, files: usize, seed: u64) -> WorkloadParams {
        WorkloadParams {
            nodes,
            files,
            spacing: Duration::from_millis(200),
            max_file: 4096,
            crashes: 0,
            params: ErasureParams::DEFAULT,
            sim: SimConfig {
                seed,
                past: Some(PastSetup::default()),
                ..SimConfig::default()
            },
        }
    }
}

/// What [`run_past_workload`] saw.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadReport {
    /// Files whose insert succeeded, and the salt of each (in insert order).
    pub inserted: Vec<(usize, u64)>,
    /// Files whose insert failed: index and reason.
    pub insert_failures: Vec<(usize, String)>,
    /// Inserted files read back byte-equal.
    pub read_back: usize,
    /// Inserted files not read back: index and reason.
    pub read_failures: Vec<(usize, String)>,
    /// Nodes crashed.
    pub crashed: usize,
    /// Fragment bytes held by all stores at the end.
    pub stored_bytes: u64,
    /// Simulated seconds.
    pub simulated_seconds: f64,
    /// The overlay's counters.
    pub stats: SimStats,
    /// PAST's counters.
    pub past: PastStats,
}

/// Builds `nodes` nodes by real joins, inserts `files` one-block files from random live
/// nodes (crashing `crashes` random nodes meanwhile), waits for the overlay to repair,
/// then reads every inserted file back from a random live node and compares bytes.
pub fn run_past_workload(params: &WorkloadParams) -> Result<WorkloadReport, ScenarioError> {
    let mut config = params.sim.clone();
    config.past.get_or_insert_with(PastSetup::default);
    let mut rng = Rng::new(config.seed ^ 0x5eed_f11e);
    let mut sim = Sim::new(config)?;
    let join_rate = 100.0;
    for i in 0..params.nodes {
        sim.add_node(Time((i as f64 / join_rate * 1e6) as u64));
    }
    sim.run_until(Time::from_secs(params.nodes as u64 / 100 + 30));

    let codec = Codec::new(params.params)?;
    let owner = KeyPair::from_secret_bytes(&[7; 32]);
    let start = sim.now();
    let window = params.spacing.as_micros() as u64 * params.files as u64;
    for _ in 0..params.crashes {
        if let Some(victim) = sim.random_live_node() {
            let at = Time(start.0 + rng.below(window.max(1)));
            sim.crash(&victim, at);
        }
    }
    let mut files = Vec::with_capacity(params.files);
    let mut originals = Vec::with_capacity(params.files);
    let mut running: Vec<(usize, Started<_>)> = Vec::new();
    for i in 0..params.files {
        let at = Time(start.0 + i as u64 * params.spacing.as_micros() as u64);
        sim.run_until(at);
        let len = 1 + rng.below(params.max_file.max(1) as u64) as usize;
        let bytes = rng.bytes(len);
        let name = format!("file-{i}");
        let file = SimFile::new(&owner, name.as_bytes(), &bytes, &codec, sim.unix_now());
        originals.push(bytes);
        let Some(origin) = sim.random_live_node() else {
            break;
        };
        if let Some(started) = sim.start(
            &origin,
            at,
            file.insert(cairn_pipeline::DEFAULT_MAX_FILE_DIVERSIONS),
        ) {
            running.push((i, started));
        }
        files.push(file);
    }
    let mut inserted = Vec::new();
    let mut insert_failures = Vec::new();
    let deadline = sim.now().plus(Duration::from_secs(120));
    for (i, started) in running {
        match sim.run_until_done(&started, deadline) {
            Some(Ok(salt)) => inserted.push((i, salt)),
            Some(Err(e)) => insert_failures.push((i, e.to_string())),
            None => insert_failures.push((i, "undecided".to_owned())),
        }
    }
    // Let the overlay notice the crashes and repair its leaf sets.
    sim.run_until(sim.now().plus(Duration::from_secs(60)));
    let mut read_back = 0;
    let mut read_failures = Vec::new();
    for &(i, salt) in &inserted {
        let Some(origin) = sim.random_live_node() else {
            break;
        };
        let deadline = sim.now().plus(Duration::from_secs(60));
        match lookup_block(&mut sim, &origin, &files[i], salt, &codec, deadline) {
            Ok(bytes) if bytes == originals[i] => read_back += 1,
            Ok(_) => read_failures.push((i, "other bytes".to_owned())),
            Err(e) => read_failures.push((i, e)),
        }
    }
    let stored_bytes = sim.holders().map(|(_, _, h)| h.store().used()).sum();
    Ok(WorkloadReport {
        inserted,
        insert_failures,
        read_back,
        read_failures,
        crashed: params.crashes,
        stored_bytes,
        simulated_seconds: sim.now().as_secs_f64(),
        stats: sim.stats().clone(),
        past: sim.past_stats().clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_block_inserted_with_all_nodes_up_reads_back_byte_equal() {
        let report = run_past_workload(&WorkloadParams::new(200, 40, 3)).unwrap();
        assert!(report.insert_failures.is_empty(), "{report:#?}");
        assert_eq!(report.inserted.len(), 40);
        assert_eq!(report.read_back, 40, "{:?}", report.read_failures);
        // Both ways of locating were used: from the leaf set, and routed.
        assert!(report.past.locates_local > 0, "{:?}", report.past);
        assert!(report.past.locates_routed > 0, "{:?}", report.past);
        assert_eq!(report.past.locates_failed, 0, "{:?}", report.past);
    }

    #[test]
    fn a_thousand_nodes_with_crashes_replay_exactly_from_their_seed() {
        let params = |seed| WorkloadParams {
            crashes: 30,
            ..WorkloadParams::new(1000, 60, seed)
        };
        let a = run_past_workload(&params(5)).unwrap();
        eprintln!("{:?} {:?} {:?}", a.insert_failures, a.read_failures, a.past);
        assert_eq!(a.crashed, 30);
        assert!(a.inserted.len() >= 50, "{a:#?}");
        assert!(
            a.past.asks_timed_out > 0,
            "some asks met a crashed node: {:?}",
            a.past
        );
        let b = run_past_workload(&params(5)).unwrap();
        assert_eq!(a, b);
        let c = run_past_workload(&params(6)).unwrap();
        assert_ne!(a, c, "another seed is another run");
    }
}
