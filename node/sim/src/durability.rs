//! Durability under churn at scale: a deterministic simulation of fragment placement,
//! failure detection and repair, to compare erasure coding with replication at the same
//! storage overhead (Weatherspoon & Kubiatowicz, "Erasure Coding vs. Replication", 2002).
//!
//! Owns: the durability model behind `cairn sim durability` ([`run_durability`]): nodes
//! on the id ring with exponential sessions, blocks placed on the n closest live nodes
//! of their key, detection after a delay, naive regeneration (read k fragments, write
//! one) limited by a per-node repair bandwidth, handoff to joining nodes, and the
//! measures (durability, repair bytes, time below full redundancy). `docs/durability.md`
//! describes the model and its results.
//!
//! May use: [`cairn_core::id`] and [`cairn_core::rng::Rng`] only. Placement is the rule
//! of `cairn_past::closest` (the n numerically closest live ids to the key) computed by
//! a walk of a sorted ring, since sorting every node for every repair would not scale;
//! a test checks that the two agree. Sans-IO and deterministic: virtual time, one seeded
//! generator, no `HashMap` iteration, ties in the event queue broken by a sequence
//! number, so the same parameters give the same report, bit for bit.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use cairn_core::id::Id;
use cairn_core::rng::Rng;

/// How a block is made redundant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `copies` whole copies of the block; any one is enough.
    Replication {
        /// Copies kept (r).
        copies: u8,
    },
    /// Reed-Solomon: `data` fragments of block/`data` bytes plus `parity` more; any
    /// `data` of them rebuild the block.
    Erasure {
        /// Data fragments (k).
        data: u8,
        /// Parity fragments (m).
        parity: u8,
    },
}

impl Scheme {
    /// Fragments (or replicas) stored per block: n.
    pub fn fragments(&self) -> usize {
        match *self {
            Scheme::Replication { copies } => usize::from(copies),
            Scheme::Erasure { data, parity } => usize::from(data) + usize::from(parity),
        }
    }

    /// Fragments needed to read the block: k (1 for replication).
    pub fn needed(&self) -> usize {
        match *self {
            Scheme::Replication { .. } => 1,
            Scheme::Erasure { data, .. } => usize::from(data),
        }
    }

    /// Bytes stored per byte of data: n / k.
    pub fn overhead(&self) -> f64 {
        self.fragments() as f64 / self.needed().max(1) as f64
    }

    /// Size of one fragment (or replica) of a block of `block_bytes`.
    pub fn fragment_bytes(&self, block_bytes: u64) -> u64 {
        block_bytes.div_ceil(self.needed().max(1) as u64)
    }
}

impl fmt::Display for Scheme {
    /// `r3` for three replicas, `4+2` for erasure coding with k = 4, m = 2.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Scheme::Replication { copies } => write!(f, "r{copies}"),
            Scheme::Erasure { data, parity } => write!(f, "{data}+{parity}"),
        }
    }
}

/// Why a scheme's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a scheme is `rN` (N replicas, 1..=64) or `K+M` (K >= 1, K + M <= 64), got {text:?}")]
pub struct SchemeParseError {
    /// The text that was given.
    pub text: String,
}

impl FromStr for Scheme {
    type Err = SchemeParseError;

    fn from_str(text: &str) -> Result<Scheme, SchemeParseError> {
        let refuse = || SchemeParseError {
            text: text.to_owned(),
        };
        let trimmed = text.trim();
        let scheme = if let Some(copies) = trimmed.strip_prefix('r') {
            Scheme::Replication {
                copies: copies.parse().map_err(|_| refuse())?,
            }
        } else if let Some((data, parity)) = trimmed.split_once('+') {
            Scheme::Erasure {
                data: data.trim().parse().map_err(|_| refuse())?,
                parity: parity.trim().parse().map_err(|_| refuse())?,
            }
        } else {
            return Err(refuse());
        };
        let n = scheme.fragments();
        if scheme.needed() == 0 || n == 0 || n > MAX_FRAGMENTS {
            return Err(refuse());
        }
        Ok(scheme)
    }
}

/// Most fragments per block the model accepts (counts are kept in a `u8`).
pub const MAX_FRAGMENTS: usize = 64;

/// One configuration of the durability experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct DurabilityParams {
    /// Live nodes at the start (a new empty node joins for each permanent departure).
    pub nodes: usize,
    /// Blocks stored at the start.
    pub blocks: usize,
    /// Bytes per block (a fragment is `block_bytes / k`, a replica `block_bytes`).
    pub block_bytes: u64,
    /// Virtual time simulated.
    pub duration: Duration,
    /// Mean session length (exponential); `None`: no node ever leaves.
    pub mean_session: Option<Duration>,
    /// Fraction of departures that are transient: the node comes back with its data.
    pub transient_fraction: f64,
    /// Mean downtime of a transient departure (exponential).
    pub mean_downtime: Duration,
    /// Delay before a departed node is declared dead and its fragments regenerated
    /// (the overlay declares a leaf-set member dead after 3 missed 10 s keepalives).
    pub detect_after: Duration,
    /// Repair bandwidth of one node, bytes per second: a regenerating node downloads
    /// the k fragments (or the replica) it needs at this rate, one repair at a time.
    pub repair_bandwidth: f64,
    /// Redundancy scheme.
    pub scheme: Scheme,
    /// Seed of every random choice.
    pub seed: u64,
}

impl DurabilityParams {
    /// A configuration with the defaults of `cairn sim durability`: 1 MiB blocks, no
    /// transient departures, detection after 30 s, 1 MB/s of repair bandwidth per node.
    pub fn new(
        nodes: usize,
        blocks: usize,
        duration: Duration,
        mean_session: Option<Duration>,
        scheme: Scheme,
        seed: u64,
    ) -> DurabilityParams {
        DurabilityParams {
            nodes,
            blocks,
            block_bytes: 1 << 20,
            duration,
            mean_session,
            transient_fraction: 0.0,
            mean_downtime: Duration::from_secs(600),
            detect_after: Duration::from_secs(30),
            repair_bandwidth: 1e6,
            scheme,
            seed,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurabilityError {
    /// Fewer nodes than fragments per block: a block could not be placed.
    #[error("{nodes} nodes cannot hold the {fragments} fragments of a block")]
    TooFewNodes {
        /// Nodes asked for.
        nodes: usize,
        /// Fragments per block.
        fragments: usize,
    },
    /// The scheme needs at least one fragment to read and at most [`MAX_FRAGMENTS`].
    #[error("scheme {scheme} is outside 1..={MAX_FRAGMENTS} fragments")]
    BadScheme {
        /// The scheme given.
        scheme: Scheme,
    },
    /// A quantity that must be positive was not.
    #[error("{what} must be positive, got {value}")]
    NotPositive {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// The transient fraction is a probability.
    #[error("the transient fraction must be in [0, 1], got {got}")]
    TransientFraction {
        /// The value given.
        got: f64,
    },
}

/// What one configuration measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DurabilityReport {
    /// The configuration.
    pub params: DurabilityParams,
    /// Blocks that lost more than n - k fragments at some moment.
    pub lost_blocks: usize,
    /// Blocks surviving / blocks.
    pub durability: f64,
    /// Virtual seconds until the first loss, if any.
    pub first_loss_seconds: Option<f64>,
    /// Node departures (sessions that ended).
    pub departures: u64,
    /// Departures that were transient (the node came back with its data, unless the
    /// run ended first).
    pub transient_departures: u64,
    /// Transient nodes that came back.
    pub returns: u64,
    /// New empty nodes that joined.
    pub joins: u64,
    /// Fragments regenerated.
    pub repairs: u64,
    /// Bytes read to regenerate them (a whole block per fragment: naive regeneration).
    pub repair_bytes: u64,
    /// Repairs abandoned because the departed holder came back first.
    pub cancelled_repairs: u64,
    /// Fragments handed to a joining node that became one of the n closest.
    pub handoffs: u64,
    /// Bytes moved by those handoffs (one fragment each).
    pub handoff_bytes: u64,
    /// Bytes stored at the start: blocks × n × fragment size.
    pub stored_bytes: u64,
    /// `repair_bytes / stored_bytes` over the whole run.
    pub repair_per_stored_byte: f64,
    /// The same per virtual hour.
    pub repair_per_stored_byte_per_hour: f64,
    /// `handoff_bytes / stored_bytes` over the whole run.
    pub handoff_per_stored_byte: f64,
    /// Fraction of block-time with fewer than n live fragments (a lost block counts
    /// until its loss).
    pub degraded_fraction: f64,
    /// Fraction of block-time with fewer than k live fragments, data not lost (some on
    /// transiently absent nodes): the block could not be read then.
    pub unavailable_fraction: f64,
    /// Smallest live fragment count any surviving block had at any moment.
    pub min_live_fragments: usize,
    /// Mean time from a fragment's loss (its holder leaving) to its regeneration.
    pub mean_repair_seconds: f64,
    /// Longest such time.
    pub max_repair_seconds: f64,
    /// Events processed (a measure of the work done).
    pub events: u64,
}

/// Runs one configuration from its seed to the end of its duration.
pub fn run_durability(params: &DurabilityParams) -> Result<DurabilityReport, DurabilityError> {
    let mut world = run_world(params)?;
    let end = params.duration.as_secs_f64();
    Ok(world.report(end))
}

fn run_world(params: &DurabilityParams) -> Result<World, DurabilityError> {
    validate(params)?;
    let mut world = World::new(params);
    let end = params.duration.as_secs_f64();
    while let Some(next) = world.queue.peek() {
        if next.at > end {
            break;
        }
        let Some(Queued { at, event, .. }) = world.queue.pop() else {
            break;
        };
        world.events += 1;
        world.handle(at, event);
    }
    Ok(world)
}

fn validate(params: &DurabilityParams) -> Result<(), DurabilityError> {
    let n = params.scheme.fragments();
    if params.scheme.needed() == 0 || n == 0 || n > MAX_FRAGMENTS {
        return Err(DurabilityError::BadScheme {
            scheme: params.scheme,
        });
    }
    if params.nodes < n {
        return Err(DurabilityError::TooFewNodes {
            nodes: params.nodes,
            fragments: n,
        });
    }
    let positive = [
        ("blocks", params.blocks as f64),
        ("block size", params.block_bytes as f64),
        ("repair bandwidth", params.repair_bandwidth),
        (
            "mean session",
            params.mean_session.map_or(1.0, |s| s.as_secs_f64()),
        ),
        ("mean downtime", params.mean_downtime.as_secs_f64()),
    ];
    for (what, value) in positive {
        if value.is_nan() || value <= 0.0 {
            return Err(DurabilityError::NotPositive { what, value });
        }
    }
    if !(0.0..=1.0).contains(&params.transient_fraction) {
        return Err(DurabilityError::TransientFraction {
            got: params.transient_fraction,
        });
    }
    Ok(())
}

/// A point of the ring: the top 128 bits of an [`Id`]. Among the few thousand ids of a
/// run two never share them, so ordering by it is ordering by the id.
type Point = u128;

fn point_of(id: &Id) -> Point {
    let mut top = [0u8; 16];
    top.copy_from_slice(&id.as_bytes()[..16]);
    Point::from_be_bytes(top)
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Up,
    /// Away with its data; comes back.
    Down,
    /// Gone with its data.
    Dead,
}

struct Node {
    point: Point,
    state: NodeState,
    /// Changes on every departure and return, so that stale events are ignored.
    epoch: u32,
    /// (block, fragment index) this node was given; entries whose fragment has since
    /// moved are skipped when read.
    holdings: Vec<(u32, u8)>,
    /// Repairs this node is the target of: (block, index, task).
    targeted: Vec<(u32, u8, u64)>,
    /// When this node's repair link is free again (repairs queue behind each other).
    repair_free_at: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    Idle,
    /// Regeneration onto `target`, done at the `RepairDone` event carrying `task`.
    Queued {
        target: u32,
        epoch: u32,
        task: u64,
    },
    /// No sources or no target at the last try; a `Retry` event is pending.
    Waiting,
}

#[derive(Clone, Copy)]
struct Fragment {
    holder: u32,
    /// When its holder left (for repair latency).
    missing_since: f64,
    repair: Repair,
}

struct Block {
    point: Point,
    live: u8,
    lost: bool,
    changed_at: f64,
    degraded_seconds: f64,
    unavailable_seconds: f64,
    min_live: u8,
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Depart { node: u32, epoch: u32 },
    Return { node: u32, epoch: u32 },
    Detect { node: u32, epoch: u32 },
    RepairDone { block: u32, index: u8, task: u64 },
    Retry { block: u32, index: u8 },
}

struct Queued {
    at: f64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Queued) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Queued) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed: the earliest event (then the first queued) is the heap's greatest.
    fn cmp(&self, other: &Queued) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct World {
    n: usize,
    k: usize,
    block_bytes: u64,
    fragment_bytes: u64,
    mean_session: Option<f64>,
    transient_fraction: f64,
    mean_downtime: f64,
    detect_after: f64,
    repair_bandwidth: f64,
    params: DurabilityParams,
    rng: Rng,
    queue: BinaryHeap<Queued>,
    seq: u64,
    next_task: u64,
    nodes: Vec<Node>,
    /// Live (up) nodes by ring point.
    ring: BTreeMap<Point, u32>,
    blocks: Vec<Block>,
    /// `blocks × n` fragments, block-major.
    fragments: Vec<Fragment>,
    /// (point, block) sorted by point: which blocks a joining node may take over.
    by_point: Vec<(Point, u32)>,
    scratch: Vec<u32>,
    lost_blocks: usize,
    first_loss: Option<f64>,
    departures: u64,
    transient_departures: u64,
    returns: u64,
    joins: u64,
    repairs: u64,
    repair_bytes: u64,
    cancelled_repairs: u64,
    handoffs: u64,
    handoff_bytes: u64,
    repair_seconds_total: f64,
    repair_seconds_max: f64,
    events: u64,
}

fn exponential(rng: &mut Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.unit()).ln()
}

impl World {
    fn new(params: &DurabilityParams) -> World {
        let n = params.scheme.fragments();
        let mut world = World {
            n,
            k: params.scheme.needed(),
            block_bytes: params.block_bytes,
            fragment_bytes: params.scheme.fragment_bytes(params.block_bytes),
            mean_session: params.mean_session.map(|s| s.as_secs_f64()),
            transient_fraction: params.transient_fraction,
            mean_downtime: params.mean_downtime.as_secs_f64(),
            detect_after: params.detect_after.as_secs_f64(),
            repair_bandwidth: params.repair_bandwidth,
            params: params.clone(),
            rng: Rng::new(params.seed),
            queue: BinaryHeap::new(),
            seq: 0,
            next_task: 0,
            nodes: Vec::with_capacity(params.nodes),
            ring: BTreeMap::new(),
            blocks: Vec::with_capacity(params.blocks),
            fragments: Vec::with_capacity(params.blocks * n),
            by_point: Vec::with_capacity(params.blocks),
            scratch: Vec::new(),
            lost_blocks: 0,
            first_loss: None,
            departures: 0,
            transient_departures: 0,
            returns: 0,
            joins: 0,
            repairs: 0,
            repair_bytes: 0,
            cancelled_repairs: 0,
            handoffs: 0,
            handoff_bytes: 0,
            repair_seconds_total: 0.0,
            repair_seconds_max: 0.0,
            events: 0,
        };
        for _ in 0..params.nodes {
            world.add_node(0.0);
        }
        let mut closest = Vec::with_capacity(n);
        for b in 0..params.blocks {
            let point = world.fresh_point();
            world.nearest(point, n, |_| false, &mut closest);
            let block = b as u32;
            for (index, &holder) in closest.iter().enumerate() {
                world.fragments.push(Fragment {
                    holder,
                    missing_since: 0.0,
                    repair: Repair::Idle,
                });
                world.nodes[holder as usize]
                    .holdings
                    .push((block, index as u8));
            }
            world.blocks.push(Block {
                point,
                live: n as u8,
                lost: false,
                changed_at: 0.0,
                degraded_seconds: 0.0,
                unavailable_seconds: 0.0,
                min_live: n as u8,
            });
            world.by_point.push((point, block));
        }
        world.by_point.sort_unstable();
        world
    }

    /// A random ring point not yet used by a node or a block.
    fn fresh_point(&mut self) -> Point {
        loop {
            let point = point_of(&self.rng.id());
            // A clash among 2^128 points is (practically) impossible; checking is cheap.
            if !self.ring.contains_key(&point) {
                return point;
            }
        }
    }

    fn schedule(&mut self, at: f64, event: Event) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            event,
        });
    }

    fn schedule_departure(&mut self, node: u32, now: f64) {
        if let Some(mean) = self.mean_session {
            let at = now + exponential(&mut self.rng, mean);
            let epoch = self.nodes[node as usize].epoch;
            self.schedule(at, Event::Depart { node, epoch });
        }
    }

    fn add_node(&mut self, now: f64) -> u32 {
        let point = self.fresh_point();
        let node = self.nodes.len() as u32;
        self.nodes.push(Node {
            point,
            state: NodeState::Up,
            epoch: 0,
            holdings: Vec::new(),
            targeted: Vec::new(),
            repair_free_at: now,
        });
        self.ring.insert(point, node);
        self.schedule_departure(node, now);
        node
    }

    /// The `count` live nodes closest to `key`, closest first, skipping those `skip`
    /// refuses: the rule of `past::closest`, by walking the ring both ways from `key`.
    fn nearest(
        &self,
        key: Point,
        count: usize,
        mut skip: impl FnMut(u32) -> bool,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        let mut clockwise = self
            .ring
            .range(key..)
            .chain(self.ring.range(..key))
            .peekable();
        let mut counter = self
            .ring
            .range(..key)
            .rev()
            .chain(self.ring.range(key..).rev())
            .peekable();
        // The first i clockwise and the first j counter-clockwise nodes are distinct
        // while i + j <= the ring's size.
        for _ in 0..self.ring.len() {
            if out.len() == count {
                break;
            }
            let take_clockwise = match (clockwise.peek(), counter.peek()) {
                (Some(&(&cw, _)), Some(&(&ccw, _))) => {
                    let d_cw = cw.wrapping_sub(key);
                    let d_ccw = key.wrapping_sub(ccw);
                    d_cw < d_ccw || (d_cw == d_ccw && cw < ccw)
                }
                (Some(_), None) => true,
                _ => false,
            };
            let next = if take_clockwise {
                clockwise.next()
            } else {
                counter.next()
            };
            let Some((_, &node)) = next else { break };
            if !skip(node) {
                out.push(node);
            }
        }
    }

    fn fragment(&self, block: u32, index: u8) -> &Fragment {
        &self.fragments[block as usize * self.n + usize::from(index)]
    }

    fn fragment_mut(&mut self, block: u32, index: u8) -> &mut Fragment {
        &mut self.fragments[block as usize * self.n + usize::from(index)]
    }

    fn block_fragments(&self, block: u32) -> &[Fragment] {
        let start = block as usize * self.n;
        &self.fragments[start..start + self.n]
    }

    fn live_count(&self, block: u32) -> usize {
        self.block_fragments(block)
            .iter()
            .filter(|f| f.holder != NONE && self.nodes[f.holder as usize].state == NodeState::Up)
            .count()
    }

    /// Recounts a block's fragments after a change, accumulating the time it spent in
    /// its previous state, and declares it lost when fewer than k fragments exist.
    fn refresh(&mut self, block: u32, now: f64) {
        let (n, k) = (self.n, self.k);
        let mut live = 0usize;
        let mut existing = 0usize;
        for f in self.block_fragments(block) {
            if f.holder == NONE {
                continue;
            }
            match self.nodes[f.holder as usize].state {
                NodeState::Up => {
                    live += 1;
                    existing += 1;
                }
                NodeState::Down => existing += 1,
                NodeState::Dead => {}
            }
        }
        let b = &mut self.blocks[block as usize];
        if b.lost {
            return;
        }
        let elapsed = now - b.changed_at;
        if usize::from(b.live) < n {
            b.degraded_seconds += elapsed;
        }
        if usize::from(b.live) < k {
            b.unavailable_seconds += elapsed;
        }
        b.changed_at = now;
        b.live = live as u8;
        b.min_live = b.min_live.min(live as u8);
        if existing < k {
            b.lost = true;
            self.lost_blocks += 1;
            self.first_loss.get_or_insert(now);
        }
    }

    fn handle(&mut self, now: f64, event: Event) {
        match event {
            Event::Depart { node, epoch } => self.depart(node, epoch, now),
            Event::Return { node, epoch } => self.come_back(node, epoch, now),
            Event::Detect { node, epoch } => self.detect(node, epoch, now),
            Event::RepairDone { block, index, task } => {
                self.repair_done(block, index, task, now);
            }
            Event::Retry { block, index } => {
                if self.fragment(block, index).repair == Repair::Waiting {
                    self.start_repair(block, index, now);
                }
            }
        }
    }

    fn depart(&mut self, node: u32, epoch: u32, now: f64) {
        let x = &mut self.nodes[node as usize];
        if x.state != NodeState::Up || x.epoch != epoch {
            return;
        }
        x.epoch += 1;
        let epoch = x.epoch;
        let point = x.point;
        self.ring.remove(&point);
        self.departures += 1;
        let transient = self.transient_fraction > 0.0 && self.rng.unit() < self.transient_fraction;
        if transient {
            self.nodes[node as usize].state = NodeState::Down;
            self.transient_departures += 1;
            let back = now + exponential(&mut self.rng, self.mean_downtime);
            self.schedule(back, Event::Return { node, epoch });
        } else {
            self.nodes[node as usize].state = NodeState::Dead;
            let joiner = self.add_node(now);
            self.joins += 1;
            self.hand_off_to(joiner, now);
        }
        self.schedule(now + self.detect_after, Event::Detect { node, epoch });
        let holdings = std::mem::take(&mut self.nodes[node as usize].holdings);
        for &(block, index) in &holdings {
            if self.fragment(block, index).holder == node {
                self.fragment_mut(block, index).missing_since = now;
                self.refresh(block, now);
            }
        }
        self.nodes[node as usize].holdings = holdings;
    }

    /// The node is declared dead: its fragments are regenerated elsewhere, and the
    /// repairs it was the target of go to another node.
    fn detect(&mut self, node: u32, epoch: u32, now: f64) {
        let x = &self.nodes[node as usize];
        if x.epoch != epoch || x.state == NodeState::Up {
            return;
        }
        let dead = x.state == NodeState::Dead;
        let holdings = std::mem::take(&mut self.nodes[node as usize].holdings);
        for &(block, index) in &holdings {
            let f = *self.fragment(block, index);
            if f.holder == node && f.repair == Repair::Idle && !self.blocks[block as usize].lost {
                self.start_repair(block, index, now);
            }
        }
        if !dead {
            self.nodes[node as usize].holdings = holdings;
        }
        let targeted = std::mem::take(&mut self.nodes[node as usize].targeted);
        for (block, index, task) in targeted {
            if matches!(self.fragment(block, index).repair,
                Repair::Queued { task: t, .. } if t == task)
            {
                self.start_repair(block, index, now);
            }
        }
    }

    /// Chooses the closest live node that holds no fragment of the block and is not
    /// already regenerating one, and queues the regeneration on its repair link.
    fn start_repair(&mut self, block: u32, index: u8, now: f64) {
        if self.blocks[block as usize].lost {
            return;
        }
        let mut chosen = std::mem::take(&mut self.scratch);
        if self.live_count(block) >= self.k {
            let start = block as usize * self.n;
            let fragments = &self.fragments[start..start + self.n];
            let nodes = &self.nodes;
            let busy = |node: u32| {
                fragments.iter().any(|f| {
                    (f.holder == node && nodes[node as usize].state != NodeState::Dead)
                        || matches!(f.repair, Repair::Queued { target, .. } if target == node)
                })
            };
            self.nearest(self.blocks[block as usize].point, 1, busy, &mut chosen);
        } else {
            chosen.clear();
        }
        let target = chosen.first().copied();
        self.scratch = chosen;
        let Some(target) = target else {
            // Too few live sources (some may come back) or no free node: try again.
            self.fragment_mut(block, index).repair = Repair::Waiting;
            self.schedule(now + self.detect_after, Event::Retry { block, index });
            return;
        };
        self.next_task += 1;
        let task = self.next_task;
        // Naive regeneration: a whole block's bytes per fragment (k fragments of
        // block/k, or one replica).
        let transfer = self.block_bytes as f64 / self.repair_bandwidth;
        let t = &mut self.nodes[target as usize];
        let done = t.repair_free_at.max(now) + transfer;
        t.repair_free_at = done;
        t.targeted.push((block, index, task));
        let epoch = t.epoch;
        self.fragment_mut(block, index).repair = Repair::Queued {
            target,
            epoch,
            task,
        };
        self.schedule(done, Event::RepairDone { block, index, task });
    }

    fn repair_done(&mut self, block: u32, index: u8, task: u64, now: f64) {
        if self.blocks[block as usize].lost {
            return;
        }
        let f = *self.fragment(block, index);
        let Repair::Queued {
            target,
            epoch,
            task: current,
        } = f.repair
        else {
            return;
        };
        if current != task {
            return;
        }
        let t = &self.nodes[target as usize];
        if t.state != NodeState::Up || t.epoch != epoch || self.live_count(block) < self.k {
            // The target left mid-transfer, or the sources did: start again.
            self.start_repair(block, index, now);
            return;
        }
        let t = &mut self.nodes[target as usize];
        t.holdings.push((block, index));
        if let Some(at) = t.targeted.iter().position(|&(_, _, x)| x == task) {
            t.targeted.swap_remove(at);
        }
        let fragment = self.fragment_mut(block, index);
        fragment.holder = target;
        fragment.repair = Repair::Idle;
        let took = now - fragment.missing_since;
        self.repairs += 1;
        self.repair_bytes += self.block_bytes;
        self.repair_seconds_total += took;
        self.repair_seconds_max = self.repair_seconds_max.max(took);
        self.refresh(block, now);
    }

    /// A transient node is back with its data: what was not regenerated meanwhile is
    /// live again (and its pending repair dropped); the rest it discards.
    fn come_back(&mut self, node: u32, epoch: u32, now: f64) {
        let x = &mut self.nodes[node as usize];
        if x.state != NodeState::Down || x.epoch != epoch {
            return;
        }
        x.state = NodeState::Up;
        x.epoch += 1;
        let point = x.point;
        self.ring.insert(point, node);
        self.returns += 1;
        self.schedule_departure(node, now);
        let mut holdings = std::mem::take(&mut self.nodes[node as usize].holdings);
        holdings.retain(|&(block, index)| self.fragment(block, index).holder == node);
        holdings.sort_unstable();
        holdings.dedup();
        for &(block, index) in &holdings {
            let fragment = self.fragment_mut(block, index);
            if fragment.repair != Repair::Idle {
                fragment.repair = Repair::Idle;
                self.cancelled_repairs += 1;
            }
            self.refresh(block, now);
        }
        self.nodes[node as usize].holdings = holdings;
        self.hand_off_to(node, now);
    }

    /// A node (re)joined: for each block whose n closest live nodes now include it and
    /// of which it holds nothing, a live holder outside the n closest hands it its
    /// fragment (the design's handoff; the old holder's copy goes once it is received).
    fn hand_off_to(&mut self, node: u32, now: f64) {
        let n = self.n;
        let point = self.nodes[node as usize].point;
        let candidates: Vec<u32> = if self.ring.len() <= 2 * n + 1 {
            self.by_point.iter().map(|&(_, b)| b).collect()
        } else {
            let low = self
                .ring
                .range(..point)
                .rev()
                .chain(self.ring.range(point..).rev())
                .nth(n - 1)
                .map_or(point, |(&p, _)| p);
            let high = self
                .ring
                .range(point.wrapping_add(1)..)
                .chain(self.ring.range(..point))
                .nth(n - 1)
                .map_or(point, |(&p, _)| p);
            let from = self.by_point.partition_point(|&(p, _)| p < low);
            let to = self.by_point.partition_point(|&(p, _)| p <= high);
            if low <= high {
                self.by_point[from..to].iter().map(|&(_, b)| b).collect()
            } else {
                self.by_point[from..]
                    .iter()
                    .chain(&self.by_point[..to])
                    .map(|&(_, b)| b)
                    .collect()
            }
        };
        let mut closest = std::mem::take(&mut self.scratch);
        for block in candidates {
            if self.blocks[block as usize].lost {
                continue;
            }
            self.nearest(
                self.blocks[block as usize].point,
                n,
                |_| false,
                &mut closest,
            );
            if !closest.contains(&node) {
                continue;
            }
            let fragments = self.block_fragments(block);
            if fragments.iter().any(|f| f.holder == node) {
                continue;
            }
            let outsider = fragments.iter().position(|f| {
                f.holder != NONE
                    && self.nodes[f.holder as usize].state == NodeState::Up
                    && !closest.contains(&f.holder)
            });
            let Some(index) = outsider else { continue };
            let index = index as u8;
            self.fragment_mut(block, index).holder = node;
            self.nodes[node as usize].holdings.push((block, index));
            self.handoffs += 1;
            self.handoff_bytes += self.fragment_bytes;
            self.refresh(block, now);
        }
        self.scratch = closest;
    }

    fn report(&mut self, end: f64) -> DurabilityReport {
        for block in 0..self.blocks.len() as u32 {
            self.refresh(block, end);
        }
        let blocks = self.blocks.len();
        let stored = blocks as u64 * self.n as u64 * self.fragment_bytes;
        let block_time = blocks as f64 * end;
        let share = |x: f64| {
            if block_time > 0.0 {
                x / block_time
            } else {
                0.0
            }
        };
        let hours = end / 3600.0;
        let repair_per_stored = self.repair_bytes as f64 / stored.max(1) as f64;
        DurabilityReport {
            params: self.params.clone(),
            lost_blocks: self.lost_blocks,
            durability: (blocks - self.lost_blocks) as f64 / blocks.max(1) as f64,
            first_loss_seconds: self.first_loss,
            departures: self.departures,
            transient_departures: self.transient_departures,
            returns: self.returns,
            joins: self.joins,
            repairs: self.repairs,
            repair_bytes: self.repair_bytes,
            cancelled_repairs: self.cancelled_repairs,
            handoffs: self.handoffs,
            handoff_bytes: self.handoff_bytes,
            stored_bytes: stored,
            repair_per_stored_byte: repair_per_stored,
            repair_per_stored_byte_per_hour: if hours > 0.0 {
                repair_per_stored / hours
            } else {
                0.0
            },
            handoff_per_stored_byte: self.handoff_bytes as f64 / stored.max(1) as f64,
            degraded_fraction: share(self.blocks.iter().map(|b| b.degraded_seconds).sum()),
            unavailable_fraction: share(self.blocks.iter().map(|b| b.unavailable_seconds).sum()),
            min_live_fragments: self
                .blocks
                .iter()
                .filter(|b| !b.lost)
                .map(|b| usize::from(b.min_live))
                .min()
                .unwrap_or(0),
            mean_repair_seconds: if self.repairs > 0 {
                self.repair_seconds_total / self.repairs as f64
            } else {
                0.0
            },
            max_repair_seconds: self.repair_seconds_max,
            events: self.events,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use cairn_core::id::NodeId;

    fn scheme(text: &str) -> Scheme {
        text.parse().unwrap()
    }

    fn tiny(scheme_text: &str, session: Option<Duration>, seed: u64) -> DurabilityParams {
        DurabilityParams::new(
            200,
            500,
            Duration::from_secs(6 * 3600),
            session,
            scheme(scheme_text),
            seed,
        )
    }

    fn minutes(m: u64) -> Option<Duration> {
        Some(Duration::from_secs(60 * m))
    }

    /// No node holds two fragments of one block, every fragment of a surviving block
    /// is on a node that exists or is being regenerated, and holdings list it.
    fn check_invariants(world: &World) {
        for block in 0..world.blocks.len() as u32 {
            if world.blocks[block as usize].lost {
                continue;
            }
            let mut holders: Vec<u32> = world
                .block_fragments(block)
                .iter()
                .filter(|f| f.holder != NONE)
                .filter(|f| world.nodes[f.holder as usize].state != NodeState::Dead)
                .map(|f| f.holder)
                .collect();
            let count = holders.len();
            holders.sort_unstable();
            holders.dedup();
            assert_eq!(
                holders.len(),
                count,
                "block {block} has two fragments on one node"
            );
            assert!(
                count >= world.k,
                "surviving block {block} has {count} fragments"
            );
            for (index, f) in world.block_fragments(block).iter().enumerate() {
                let node = &world.nodes[f.holder as usize];
                let end = world.params.duration.as_secs_f64();
                if node.state == NodeState::Dead && f.repair == Repair::Idle {
                    // Only a departure not yet detected goes unrepaired.
                    assert!(f.missing_since > end - world.detect_after);
                } else if node.state != NodeState::Dead {
                    assert!(node.holdings.contains(&(block, index as u8)));
                }
            }
        }
    }

    #[test]
    fn schemes_parse_print_and_measure() {
        assert_eq!(scheme("r3"), Scheme::Replication { copies: 3 });
        assert_eq!(scheme("4+2"), Scheme::Erasure { data: 4, parity: 2 });
        for text in ["r2", "4+4", "6+12", "4+2", "1+0"] {
            assert_eq!(scheme(text).to_string(), text);
        }
        assert_eq!(scheme("4+4").overhead(), 2.0);
        assert_eq!(scheme("r3").overhead(), 3.0);
        assert_eq!(scheme("4+2").fragment_bytes(1 << 20), 1 << 18);
        assert_eq!(scheme("r2").fragment_bytes(1 << 20), 1 << 20);
        for bad in ["", "r", "r0", "0+4", "4+", "x3", "40+30", "r65", "4-2"] {
            assert!(bad.parse::<Scheme>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_impossible_configurations() {
        let mut p = tiny("8+8", None, 1);
        p.nodes = 15;
        assert_eq!(
            run_durability(&p),
            Err(DurabilityError::TooFewNodes {
                nodes: 15,
                fragments: 16
            })
        );
        let mut p = tiny("4+2", minutes(60), 1);
        p.repair_bandwidth = 0.0;
        assert!(matches!(
            run_durability(&p),
            Err(DurabilityError::NotPositive {
                what: "repair bandwidth",
                ..
            })
        ));
        let mut p = tiny("4+2", minutes(60), 1);
        p.transient_fraction = 1.5;
        assert!(run_durability(&p).is_err());
    }

    #[test]
    fn placement_walk_agrees_with_past_closest() {
        let mut p = tiny("4+2", None, 7);
        p.nodes = 50;
        p.blocks = 1;
        let world = World::new(&p);
        let id_of = |point: Point| {
            let mut bytes = [0u8; 32];
            bytes[..16].copy_from_slice(&point.to_be_bytes());
            Id(bytes)
        };
        let all: Vec<NodeId> = world.ring.keys().map(|&p| NodeId(id_of(p))).collect();
        let mut rng = Rng::new(99);
        let mut out = Vec::new();
        // Random keys, and the ring's ends, where the walk wraps around.
        let mut keys: Vec<Point> = (0..200).map(|_| point_of(&rng.id())).collect();
        keys.extend([0, Point::MAX, *world.ring.keys().next().unwrap()]);
        for key in keys {
            for count in [1, 6, 16, 50] {
                world.nearest(key, count, |_| false, &mut out);
                let walked: Vec<NodeId> = out
                    .iter()
                    .map(|&n| NodeId(id_of(world.nodes[n as usize].point)))
                    .collect();
                let expected = cairn_past::closest(&id_of(key), all.iter().copied(), count);
                assert_eq!(walked, expected, "key {key:x}, count {count}");
            }
        }
    }

    #[test]
    fn without_churn_nothing_is_lost_or_repaired() {
        for text in ["r3", "4+2"] {
            let report = run_durability(&tiny(text, None, 3)).unwrap();
            assert_eq!(report.durability, 1.0);
            assert_eq!(report.lost_blocks, 0);
            assert_eq!(report.departures, 0);
            assert_eq!(report.repairs, 0);
            assert_eq!(report.repair_bytes, 0);
            assert_eq!(report.handoff_bytes, 0);
            assert_eq!(report.degraded_fraction, 0.0);
            assert_eq!(report.min_live_fragments, scheme(text).fragments());
            assert_eq!(
                report.stored_bytes,
                500 * scheme(text).fragments() as u64 * { scheme(text).fragment_bytes(1 << 20) }
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let mut p = tiny("4+4", minutes(30), 11);
        p.transient_fraction = 0.3;
        let a = run_durability(&p).unwrap();
        let b = run_durability(&p).unwrap();
        assert_eq!(a, b);
        p.seed = 12;
        let c = run_durability(&p).unwrap();
        assert_ne!(a.departures, 0);
        assert_ne!(
            (a.departures, a.repair_bytes),
            (c.departures, c.repair_bytes)
        );
    }

    #[test]
    fn placement_stays_consistent_under_churn() {
        for text in ["r2", "4+2", "6+12"] {
            let mut p = tiny(text, minutes(20), 5);
            p.transient_fraction = 0.4;
            p.mean_downtime = Duration::from_secs(120);
            let world = run_world(&p).unwrap();
            assert!(
                world.departures > 100,
                "{text}: {} departures",
                world.departures
            );
            assert!(world.repairs > 0 && world.handoffs > 0);
            check_invariants(&world);
        }
    }

    #[test]
    fn repair_traffic_grows_with_churn() {
        let mean_repair = |session: u64| -> f64 {
            (1..=3)
                .map(|seed| {
                    run_durability(&tiny("4+2", minutes(session), seed))
                        .unwrap()
                        .repair_per_stored_byte
                })
                .sum::<f64>()
                / 3.0
        };
        let (slow, medium, fast) = (mean_repair(480), mean_repair(120), mean_repair(30));
        assert!(slow > 0.0);
        assert!(medium > 2.0 * slow, "{slow} {medium}");
        assert!(fast > 2.0 * medium, "{medium} {fast}");
    }

    #[test]
    fn at_equal_overhead_coding_loses_less_than_replication_at_high_churn() {
        // Ample bandwidth, sessions of 10 minutes: a replica set of 2 dies whenever both
        // holders leave within a detection delay of each other; 4+4 needs 5 of 8 to.
        let lost = |text: &str| -> usize {
            (1..=3)
                .map(|seed| {
                    run_durability(&tiny(text, minutes(10), seed))
                        .unwrap()
                        .lost_blocks
                })
                .sum()
        };
        let (replicated, coded) = (lost("r2"), lost("4+4"));
        assert!(replicated > 0);
        assert!(coded < replicated, "r2 lost {replicated}, 4+4 lost {coded}");
    }

    #[test]
    fn transient_departures_destroy_nothing_and_slow_detection_saves_repairs() {
        let run = |detect_secs: u64| {
            let mut p = tiny("4+2", minutes(30), 8);
            p.transient_fraction = 1.0;
            p.mean_downtime = Duration::from_secs(60);
            p.detect_after = Duration::from_secs(detect_secs);
            run_durability(&p).unwrap()
        };
        let (eager, patient) = (run(10), run(1800));
        assert_eq!(eager.durability, 1.0);
        assert_eq!(patient.durability, 1.0);
        assert_eq!(eager.joins, 0);
        assert!(eager.returns > 100);
        assert!(eager.cancelled_repairs > 0);
        assert!(
            patient.repairs * 4 < eager.repairs,
            "{} repairs with slow detection, {} with fast",
            patient.repairs,
            eager.repairs
        );
    }

    #[test]
    fn less_bandwidth_means_slower_repairs() {
        let run = |bandwidth: f64| {
            let mut p = tiny("4+4", minutes(60), 4);
            p.repair_bandwidth = bandwidth;
            run_durability(&p).unwrap()
        };
        let (fast, slow) = (run(1e8), run(2e4));
        assert!(fast.repairs > 0);
        assert!(slow.mean_repair_seconds > fast.mean_repair_seconds + 30.0);
        assert!(slow.degraded_fraction > fast.degraded_fraction);
    }
}
