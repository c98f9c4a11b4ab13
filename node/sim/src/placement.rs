//! PAST's headline experiment (Rowstron & Druschel, SOSP 2001, §5): fill a network of
//! nodes of unequal capacities with files until inserts fail, and follow the global
//! storage utilisation against the cumulative share of failed inserts, with and without
//! replica and file diversion. Behind `cairn sim placement` (`docs/placement.md`).
//!
//! Owns: [`Diversion`] (which of the two diversions run, and what "without" means),
//! [`PlacementParams`], [`run_placement`] and [`PlacementReport`].
//!
//! May use: [`crate::Sim`] with its PAST driver, [`crate::workload::SimFile`], and
//! `cairn_pipeline`'s number of file diversions. Every insert is the real placement
//! code: `BlockInsert` per block (in [`crate::SaltedInsert`], which retries a refused
//! block under salts 1..=3 at `PlacementKey::for_block`), and every holder answers with
//! `Holder::answer`, diverting under its `t_pri`/`t_div` through `ReplicaDiversion`.
//!
//! # The model, scaled down
//! `MemoryStore` keeps real bytes, so sizes are scaled down from PAST's ~1/420 for
//! capacities and further for files (PAST: 2,250 nodes of 27 MB on average; files from a
//! web-proxy trace, mean 10.5 kB, median 1.3 kB):
//! - capacities: PAST's truncated normal `d1` (mean 27 MB, σ 10.8 MB, within
//!   [2, 51] MB) scaled to a mean of [`PlacementParams::capacity_mean`] (default 32 KiB:
//!   σ 12.8 KiB within [2.4, 60.4] KiB);
//! - files: one block each, lognormal with the trace's spread (σ = 2.04, from its
//!   mean/median ratio of 8) around a median of 256 bytes, cut at 4 KiB: fragments of
//!   a few bytes to 1 KiB (4+2), about 190 of them per node when full. The ratio of a
//!   file to a node is thus ~15× coarser than in PAST, which makes every threshold bite
//!   earlier: the absolute utilisations are lower than the paper's; the comparison
//!   between the variants is the point.
//!
//! Deterministic: capacities, files and origins come from one generator seeded from the
//! seed, independent of outcomes, so every variant sees the same nodes and the same
//! sequence of files.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cairn_core::crypto::KeyPair;
use cairn_core::erasure::{Codec, ErasureParams};
use cairn_core::rng::Rng;
use cairn_overlay::Time;
use cairn_past::PastConfig;
use cairn_past::insert::InsertError;
use cairn_store::NodeStore;

use crate::past::{PastSetup, PastStats, SimFailure, Started};
use crate::workload::{ScenarioError, SimFile};
use crate::{Sim, SimConfig};

/// Which of PAST's two load-balancing mechanisms run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Diversion {
    /// Replica diversion (`t_pri` = 0.1, `t_div` = 0.05) and file diversion (salts 1..=3).
    Both,
    /// Replica diversion only: the thresholds above, no salt retries.
    Replica,
    /// File diversion only: `t_pri` = 1 (a node takes a fragment while it fits),
    /// `t_div` = 0 (no node takes a diverted one), salts 1..=3.
    File,
    /// Neither: `t_pri` = 1, `t_div` = 0, no salt retries (PAST's own "without").
    None,
}

impl Diversion {
    /// All four, with both first.
    pub const ALL: [Diversion; 4] = [
        Diversion::Both,
        Diversion::Replica,
        Diversion::File,
        Diversion::None,
    ];

    /// The holders' thresholds.
    pub fn config(self) -> PastConfig {
        let defaults = PastConfig::default();
        match self {
            Diversion::Both | Diversion::Replica => defaults,
            Diversion::File | Diversion::None => PastConfig {
                t_pri: 1.0,
                t_div: 0.0,
                ..defaults
            },
        }
    }

    /// The last salt a refused block is retried under.
    pub fn max_salt(self) -> u64 {
        match self {
            Diversion::Both | Diversion::File => cairn_pipeline::DEFAULT_MAX_FILE_DIVERSIONS,
            Diversion::Replica | Diversion::None => 0,
        }
    }

    /// What it means, for reports.
    pub fn describe(self) -> String {
        let c = self.config();
        format!(
            "t_pri = {}, t_div = {}, salts 0..={}",
            c.t_pri,
            c.t_div,
            self.max_salt()
        )
    }
}

impl fmt::Display for Diversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Diversion::Both => "both",
            Diversion::Replica => "replica",
            Diversion::File => "file",
            Diversion::None => "none",
        })
    }
}

impl FromStr for Diversion {
    type Err = String;
    fn from_str(text: &str) -> Result<Diversion, String> {
        Diversion::ALL
            .into_iter()
            .find(|d| d.to_string() == text)
            .ok_or_else(|| format!("{text:?} is not one of both, replica, file, none"))
    }
}

/// Parameters of [`run_placement`].
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementParams {
    /// Nodes (each by a real join).
    pub nodes: usize,
    /// Fixes every random choice.
    pub seed: u64,
    /// The erasure code of every block.
    pub params: ErasureParams,
    /// Mean node capacity in bytes; σ and the bounds keep PAST's `d1` ratios
    /// (σ = 0.4 × mean, within [0.074, 1.89] × mean).
    pub capacity_mean: u64,
    /// Median file size in bytes.
    pub file_median: f64,
    /// σ of the file size's logarithm.
    pub file_sigma: f64,
    /// Largest file in bytes (larger draws are drawn again).
    pub file_max: usize,
    /// Which diversions run.
    pub diversion: Diversion,
    /// Inserts in flight at once (each from a random node).
    pub in_flight: usize,
    /// Stop once this share of the inserts so far has failed.
    pub stop_failed: f64,
    /// Or once the files offered would take this many times the total capacity.
    pub max_offered: f64,
    /// A sample of (inserts, failed, utilisation) every this many inserts.
    pub sample_every: usize,
}

impl PlacementParams {
    /// The defaults of `cairn sim placement` for `nodes` nodes (see the module's model).
    pub fn new(nodes: usize, seed: u64, diversion: Diversion) -> PlacementParams {
        PlacementParams {
            nodes,
            seed,
            params: ErasureParams::DEFAULT,
            capacity_mean: 32 << 10,
            file_median: 256.0,
            file_sigma: 2.04,
            file_max: 4 << 10,
            diversion,
            in_flight: 32,
            stop_failed: 0.1,
            max_offered: 1.5,
            sample_every: 200,
        }
    }
}

/// One point of the curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlacementSample {
    /// Inserts decided so far.
    pub inserts: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Fragment bytes stored / total capacity, then.
    pub utilisation: f64,
}

impl PlacementSample {
    /// Failed / decided.
    pub fn failed_share(&self) -> f64 {
        if self.inserts == 0 {
            0.0
        } else {
            self.failed as f64 / self.inserts as f64
        }
    }
}

/// What [`run_placement`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementReport {
    /// The parameters.
    pub params: PlacementParams,
    /// Sum of the node capacities.
    pub total_capacity: u64,
    /// Smallest and largest node capacity drawn.
    pub capacity_range: (u64, u64),
    /// Inserts decided.
    pub inserts: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Blocks placed under a salt above 0 (file diversion).
    pub file_diverted: usize,
    /// The curve, in insert order; the last sample is the end.
    pub samples: Vec<PlacementSample>,
    /// The moment of the first failed insert.
    pub first_failure: Option<PlacementSample>,
    /// Why failed inserts failed: (reason, count), most frequent first.
    pub failure_reasons: Vec<(String, usize)>,
    /// PAST's counters (replica diversions among them).
    pub past: PastStats,
    /// Simulated seconds.
    pub simulated_seconds: f64,
}

impl PlacementReport {
    /// The end of the run.
    pub fn last(&self) -> PlacementSample {
        self.samples.last().copied().unwrap_or(PlacementSample {
            inserts: 0,
            failed: 0,
            utilisation: 0.0,
        })
    }

    /// Utilisation when the cumulative failed share first reached `share` (`None`: it
    /// never did).
    pub fn utilisation_at_failed_share(&self, share: f64) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.failed > 0 && s.failed_share() >= share)
            .map(|s| s.utilisation)
    }

    /// Cumulative failed share when utilisation first reached `utilisation` (`None`:
    /// it never did).
    pub fn failed_share_at_utilisation(&self, utilisation: f64) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.utilisation >= utilisation)
            .map(|s| s.failed_share())
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = 1.0 - rng.unit();
    let u2 = rng.unit();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// PAST's `d1` shape scaled to `mean`: normal with σ = 0.4 mean, redrawn outside
/// [0.074, 1.89] × mean.
fn capacity(rng: &mut Rng, mean: u64) -> u64 {
    let mean = mean as f64;
    loop {
        let c = mean + 0.4 * mean * normal(rng);
        if (0.074 * mean..=1.89 * mean).contains(&c) {
            return c as u64;
        }
    }
}

fn file_size(rng: &mut Rng, params: &PlacementParams) -> usize {
    loop {
        let size = (params.file_median.ln() + params.file_sigma * normal(rng)).exp();
        if size >= 1.0 && size <= params.file_max as f64 {
            return size as usize;
        }
    }
}

/// Builds the network, then inserts files (`in_flight` at a time, each from a random
/// node) until the stop rule holds; see the module's model.
pub fn run_placement(params: &PlacementParams) -> Result<PlacementReport, ScenarioError> {
    let diversion = params.diversion;
    let setup = PastSetup {
        config: diversion.config(),
        ..PastSetup::default()
    };
    let mut sim = Sim::new(SimConfig {
        seed: params.seed,
        past: Some(setup),
        ..SimConfig::default()
    })?;
    let codec = Codec::new(params.params)?;
    // Capacities, files and origins: one generator, the same for every variant.
    let mut rng = Rng::new(params.seed ^ 0x0070_a57e);
    let join_rate = (params.nodes as f64 / 100.0).clamp(50.0, 1000.0);
    let mut capacity_range = (u64::MAX, 0);
    let mut total_capacity = 0;
    for i in 0..params.nodes {
        let c = capacity(&mut rng, params.capacity_mean);
        capacity_range = (capacity_range.0.min(c), capacity_range.1.max(c));
        total_capacity += c;
        sim.add_storage_node(Time((i as f64 / join_rate * 1e6) as u64), c);
    }
    let built = Time((params.nodes as f64 / join_rate * 1e6) as u64);
    sim.run_until(built.plus(Duration::from_secs(40)));
    let nodes = sim.live_nodes();

    let owner = KeyPair::from_secret_bytes(&[0x9a; 32]);
    let utilisation = |sim: &Sim| {
        let used: u64 = sim.holders().map(|(_, _, h)| h.store().used()).sum();
        used as f64 / total_capacity.max(1) as f64
    };
    type Insert = Started<Result<u64, InsertError<SimFailure>>>;
    let mut running: VecDeque<Insert> = VecDeque::new();
    let (mut inserts, mut failed, mut file_diverted) = (0usize, 0usize, 0usize);
    let mut offered = 0u64;
    let mut files = 0usize;
    let mut samples = Vec::new();
    let mut first_failure = None;
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    let mut stopping = false;
    loop {
        while !stopping && running.len() < params.in_flight.max(1) {
            let size = file_size(&mut rng, params);
            let bytes = rng.bytes(size);
            let origin = nodes[rng.below(nodes.len() as u64) as usize];
            let name = format!("file-{files}");
            let file = SimFile::new(&owner, name.as_bytes(), &bytes, &codec, sim.unix_now());
            files += 1;
            offered += file.stored_bytes();
            if let Some(started) = sim.start(&origin, sim.now(), file.insert(diversion.max_salt()))
            {
                running.push_back(started);
            }
        }
        if running.is_empty() {
            break;
        }
        let deadline = sim.now().plus(Duration::from_secs(600));
        if !sim.run_until_finished(deadline) {
            // Nothing decided in ten simulated minutes: a bug, not a measurement.
            break;
        }
        let mut still = VecDeque::with_capacity(running.len());
        for started in running {
            let Some(outcome) = sim.take_output(&started) else {
                still.push_back(started);
                continue;
            };
            inserts += 1;
            match outcome {
                Ok(salt) => file_diverted += usize::from(salt > 0),
                Err(error) => {
                    failed += 1;
                    *reasons.entry(failure_reason(&error)).or_default() += 1;
                    if first_failure.is_none() {
                        first_failure = Some(PlacementSample {
                            inserts,
                            failed,
                            utilisation: utilisation(&sim),
                        });
                    }
                }
            }
            if inserts % params.sample_every.max(1) == 0 {
                samples.push(PlacementSample {
                    inserts,
                    failed,
                    utilisation: utilisation(&sim),
                });
            }
        }
        running = still;
        let share = failed as f64 / inserts.max(1) as f64;
        stopping = stopping
            || (inserts >= 100 && share >= params.stop_failed)
            || offered as f64 >= params.max_offered * total_capacity as f64;
    }
    samples.push(PlacementSample {
        inserts,
        failed,
        utilisation: utilisation(&sim),
    });
    let mut failure_reasons: Vec<(String, usize)> = reasons.into_iter().collect();
    failure_reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(PlacementReport {
        params: params.clone(),
        total_capacity,
        capacity_range,
        inserts,
        failed,
        file_diverted,
        samples,
        first_failure,
        failure_reasons,
        past: sim.past_stats().clone(),
        simulated_seconds: sim.now().as_secs_f64(),
    })
}

/// A failed insert's reason, coarsely: what its last salt's fragments met.
fn failure_reason(error: &InsertError<SimFailure>) -> String {
    match error {
        InsertError::Placement(failure) => {
            let full = failure
                .failures
                .iter()
                .filter(|(_, _, r)| {
                    matches!(
                        r,
                        cairn_past::insert::StoreFailure::Refused(
                            cairn_past::Refusal::Full { .. } | cairn_past::Refusal::NoRoom { .. }
                        )
                    )
                })
                .count();
            if full == failure.failures.len() {
                "refused for room".to_owned()
            } else {
                "refused or unreachable".to_owned()
            }
        }
        InsertError::Locate(_) => "locate failed".to_owned(),
        InsertError::Stalled(_) => "stalled".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn small(diversion: Diversion) -> PlacementParams {
        // Stops soon after the first failures: the test is about what comes before.
        PlacementParams {
            capacity_mean: 12 << 10,
            file_max: 2 << 10,
            sample_every: 50,
            stop_failed: 0.01,
            ..PlacementParams::new(100, 2, diversion)
        }
    }

    #[test]
    fn diversion_raises_utilisation_before_the_first_failed_insert() {
        let with = run_placement(&small(Diversion::Both)).unwrap();
        let without = run_placement(&small(Diversion::None)).unwrap();
        let first = |r: &PlacementReport| r.first_failure.unwrap().utilisation;
        eprintln!(
            "with: first failure at {:.3}, end {:?}; without: first failure at {:.3}, end {:?}",
            first(&with),
            with.last(),
            first(&without),
            without.last()
        );
        assert!(
            first(&with) > first(&without) + 0.1,
            "with diversion {:.3}, without {:.3}",
            first(&with),
            first(&without)
        );
        assert!(with.past.fragments_diverted > 0 && with.file_diverted > 0);
        assert_eq!(
            without.past.fragments_diverted + without.file_diverted as u64,
            0
        );
    }

    #[test]
    fn capacities_keep_past_d1_shape() {
        let mut rng = Rng::new(1);
        let draws: Vec<u64> = (0..10_000).map(|_| capacity(&mut rng, 1000)).collect();
        let mean = draws.iter().sum::<u64>() as f64 / draws.len() as f64;
        assert!((950.0..1050.0).contains(&mean), "{mean}");
        assert!(draws.iter().all(|&c| (74..=1890).contains(&c)));
    }
}
