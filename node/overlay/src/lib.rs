//! Pastry routing (Rowstron & Druschel 2001) as a sans-IO state machine.
//!
//! Owns: one node's routing state (leaf set, routing table, neighbourhood set), the
//! overlay wire messages ([`OverlayMessage`]), join, keepalive and failure detection,
//! leaf-set and lazy routing-table repair, periodic proximity maintenance of the
//! routing table (row exchanges), graceful leave, hop-by-hop routing with
//! acknowledgements so that routes go around dead entries, and what makes leaf sets
//! converge under concurrent joins and failures (leaf-set pushes, and `Locate`: a route
//! to one's own id, answered by the closest node). `docs/overlay.md` walks through it.
//!
//! May use: [`cairn_core::id`] only (no tokio). It never reads a clock, a socket or a
//! random source: [`Overlay::handle`] is fed `(now, event)` and returns [`Action`]s
//! (messages to send, timers to set, deliveries, notifications). The simulator
//! (`cairn-sim`) and the real node (`cairn-daemon`) drive it the same way.
//!
//! Peers are named by [`NodeId`] only. The network layer keeps the address book that
//! maps an id to a socket address (learned from handshakes); when the real network
//! needs addresses carried in routing-state messages, they are added as new appended
//! message variants, never by changing existing ones.
//!
//! One rule keeps the state clean against stale or malformed messages: a node enters
//! this node's state only on direct evidence that it is alive, i.e. a message received
//! from it, or a reply to a probe this node sent it. Ids learned from others (rows,
//! leaf sets) are only *candidates*: they are probed first, and an id that does not
//! answer is remembered as dead for a while and never added.
//!
//! Where things are: this file holds the protocol ([`Overlay`] and what it does with
//! each [`Event`]); the state it keeps has a module per concept, each a plain data
//! structure with no protocol in it: `leaf_set` (`LeafSet`: the L/2 closest nodes each
//! side, range check, closest member to a key), `routing_table` (`RoutingTable`: rows
//! of slots by shared prefix and next digit, RTT preference, digit arithmetic) and
//! `neighbourhood` (`NeighbourhoodSet`: the M nodes of lowest RTT). The wire types
//! ([`OverlayMessage`], [`Routed`], [`TimerKind`]) are in `messages`. What keeps a
//! hostile peer from steering this node (docs/SECURITY.md) has modules too: `nonces`
//! (unguessable ping nonces, hop ids and lookup tags, from a seed the driver gives),
//! `located` (the checks of a locate's answer: from the closest node it names, well
//! formed, plausible, as dense as our leaf set) and `subnets` (the driver's subnet of
//! each node, for the limit of ids per subnet in the leaf set and each table row).
//! RTTs are only ever this node's own measurements: an `Announce` is measured, not
//! believed.

mod leaf_set;
mod located;
mod messages;
mod neighbourhood;
mod nonces;
mod routing_table;
mod subnets;

use std::cmp::Ordering;
use std::time::Duration;

use cairn_core::id::{Id, NodeId};
use leaf_set::{LeafSet, Side};
pub use located::{
    DENSITY_GAMMA, LocatedVerdict, MIN_DENSITY_GAPS, Rejection, Suspicion,
    confirmed_by_another_route,
};
pub use messages::{OverlayMessage, Routed, TimerKind};
use neighbourhood::NeighbourhoodSet;
pub use nonces::NonceSeed;
use nonces::Nonces;
use routing_table::{RoutingTable, shared_digits};
use subnets::SubnetBook;
pub use subnets::{DEFAULT_MAX_IDS_PER_SUBNET, Subnet};

/// Virtual or real time in microseconds since an arbitrary origin.
///
/// The overlay only compares and adds times; whoever drives it decides what zero is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    /// Time zero.
    pub const ZERO: Time = Time(0);

    /// `secs` seconds after zero.
    pub fn from_secs(secs: u64) -> Time {
        Time(secs.saturating_mul(1_000_000))
    }

    /// `self + duration`, saturating.
    pub fn plus(self, duration: Duration) -> Time {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(micros))
    }

    /// Microseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn micros_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Seconds since zero, as a float (for reports).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

/// Round-trip time in microseconds; [`RTT_UNKNOWN`] if never measured.
pub type RttMicros = u32;

/// The RTT of an entry admitted without a measurement: it loses every comparison.
pub const RTT_UNKNOWN: RttMicros = u32::MAX;

/// The tunable parameters of the overlay (the paper's b, L, M and the timers).
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Bits per digit, the paper's `b`: 1, 2, 4 or 8. Default 4.
    pub digit_bits: u8,
    /// Leaf-set size `L` (half on each side); even, at least 2. Default 16.
    pub leaf_set_size: usize,
    /// Neighbourhood-set size `M`: nodes closest by RTT. Default 16.
    pub neighbourhood_size: usize,
    /// Keepalive period: leaf-set members not heard from within it are pinged.
    pub tick: Duration,
    /// Consecutive unanswered keepalive periods after which a leaf member is dead.
    pub dead_after_misses: u8,
    /// How long a probe (ping of a candidate) may take before the candidate is dropped.
    pub probe_timeout: Duration,
    /// How long a forwarded route message may wait for the next hop's acknowledgement.
    pub route_ack_timeout: Duration,
    /// How many other next hops a route message tries after acknowledgement timeouts.
    pub route_retries: u8,
    /// Route messages with more hops than this are dropped (a guard against loops).
    pub max_hops: u8,
    /// Whether every node on a join's path sends all rows the joiner can use (rather
    /// than only row i from the i-th node, as in the paper).
    pub join_all_shared_rows: bool,
    /// Routing-table entries probed per tick (round robin), so that entries of dead
    /// nodes are found before a route has to time out on them.
    pub table_probes_per_tick: usize,
    /// Every this many ticks a joined node routes a [`Routed::Locate`] to its own id
    /// (0: only once, right after joining).
    pub locate_every_ticks: u32,
    /// Every this many ticks a node sends its leaf set to its two nearest neighbours.
    pub leaf_push_every_ticks: u32,
    /// How long a node declared dead is remembered (and ignored in gossip).
    pub dead_memory: Duration,
    /// Most dead nodes remembered at once.
    pub dead_memory_entries: usize,
    /// A join that has not reached the closest node within this time fails.
    pub join_timeout: Duration,
    /// Every this many ticks a joined node asks one routing-table entry for its row
    /// (rows in turn) and probes the ids it does not hold, so that a slot's occupant
    /// is replaced by a nearer node (periodic proximity maintenance; 0: never).
    pub row_exchange_every_ticks: u32,
    /// Most ids of one subnet (the driver's [`Subnet`]: an IPv4 /24 or IPv6 /48 in the
    /// daemon) in the leaf set, and in each routing-table row. At least 1; default
    /// [`DEFAULT_MAX_IDS_PER_SUBNET`]. Nodes whose subnet the driver never named are
    /// not counted. The daemon sets it to `usize::MAX` on loopback (devnets, tests:
    /// every node is 127.0.0.1).
    pub max_ids_per_subnet: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            digit_bits: 4,
            leaf_set_size: 16,
            neighbourhood_size: 16,
            tick: Duration::from_secs(10),
            dead_after_misses: 3,
            probe_timeout: Duration::from_secs(2),
            route_ack_timeout: Duration::from_millis(1000),
            route_retries: 8,
            max_hops: 40,
            join_all_shared_rows: false,
            table_probes_per_tick: 4,
            locate_every_ticks: 6,
            leaf_push_every_ticks: 3,
            dead_memory: Duration::from_secs(300),
            dead_memory_entries: 256,
            join_timeout: Duration::from_secs(20),
            row_exchange_every_ticks: 1,
            max_ids_per_subnet: DEFAULT_MAX_IDS_PER_SUBNET,
        }
    }
}

/// Why a [`Config`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `b` must divide 8 so that digits never straddle bytes.
    #[error("digit_bits (b) must be 1, 2, 4 or 8, got {got}")]
    DigitBits {
        /// The value given.
        got: u8,
    },
    /// `L` must be even and at least 2.
    #[error("leaf_set_size (L) must be even and at least 2, got {got}")]
    LeafSetSize {
        /// The value given.
        got: usize,
    },
    /// A node needs at least one miss before it is declared dead.
    #[error("dead_after_misses must be at least 1")]
    DeadAfterMisses,
    /// The keepalive period must be positive.
    #[error("tick must be longer than zero")]
    ZeroTick,
    /// A subnet must be allowed at least one id.
    #[error("max_ids_per_subnet must be at least 1")]
    ZeroIdsPerSubnet,
}

impl Config {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.digit_bits, 1 | 2 | 4 | 8) {
            return Err(ConfigError::DigitBits {
                got: self.digit_bits,
            });
        }
        if self.leaf_set_size < 2 || self.leaf_set_size % 2 != 0 {
            return Err(ConfigError::LeafSetSize {
                got: self.leaf_set_size,
            });
        }
        if self.dead_after_misses == 0 {
            return Err(ConfigError::DeadAfterMisses);
        }
        if self.tick.is_zero() {
            return Err(ConfigError::ZeroTick);
        }
        if self.max_ids_per_subnet == 0 {
            return Err(ConfigError::ZeroIdsPerSubnet);
        }
        Ok(())
    }

    fn half(&self) -> usize {
        self.leaf_set_size / 2
    }

    fn rows(&self) -> usize {
        256 / usize::from(self.digit_bits)
    }

    fn columns(&self) -> usize {
        1 << self.digit_bits
    }
}

/// What the overlay is fed.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Join the overlay through `bootstrap` (a node close in the network), or start a
    /// new overlay alone with `None`.
    Join {
        /// A known member of the overlay.
        bootstrap: Option<NodeId>,
    },
    /// A message arrived.
    Message {
        /// The sender, as authenticated by the transport.
        from: NodeId,
        /// The message.
        msg: OverlayMessage,
    },
    /// A timer set by [`Action::SetTimer`] fired.
    Timer(TimerKind),
    /// Route `payload` to the node responsible for `key`.
    Route {
        /// The destination key.
        key: Id,
        /// Handed back in [`Action::Deliver`].
        tag: u64,
        /// Opaque application bytes.
        payload: Vec<u8>,
    },
    /// Route like [`Event::Route`], but not through the first `skip` next hops a plain
    /// route would take: a redundant route through a different first hop (Castro et
    /// al.'s redundant routing), for a locate whose answer failed a check. Where fewer
    /// next hops exist it skips as many as leave one.
    RouteDiverse {
        /// The destination key.
        key: Id,
        /// Handed back in [`Action::Deliver`].
        tag: u64,
        /// Opaque application bytes.
        payload: Vec<u8>,
        /// How many of the plain route's first hops to pass over.
        skip: u8,
    },
    /// Leave the overlay gracefully.
    Leave,
    /// The driver has reason to think `node` is alive and reachable (it answered at a
    /// known address, e.g. a bootstrap node after a network partition healed): probe
    /// it, even if it was declared dead, and admit it if it answers. This is how two
    /// halves of a partitioned overlay find each other again.
    Suggest {
        /// The node.
        node: NodeId,
    },
}

/// What the overlay asks its driver to do, or tells it.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send `msg` to `to`.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: OverlayMessage,
    },
    /// Fire `Event::Timer(kind)` at `at`. Timers are never cancelled; stale ones are
    /// ignored when they fire.
    SetTimer {
        /// When.
        at: Time,
        /// Which.
        kind: TimerKind,
    },
    /// This node is responsible for `key`: the route ends here.
    Deliver {
        /// The key routed to.
        key: Id,
        /// The node that started the route.
        origin: NodeId,
        /// The origin's tag.
        tag: u64,
        /// Hops taken.
        hops: u8,
        /// The application bytes.
        payload: Vec<u8>,
    },
    /// A route could not go on (all next hops failed, or too many hops).
    RouteFailed {
        /// The key.
        key: Id,
        /// The origin's tag (for lookups; 0 for joins).
        tag: u64,
    },
    /// The join completed: this node has its state and has announced itself.
    Joined,
    /// The join did not reach the closest node in time; join again elsewhere.
    JoinFailed,
    /// `node` was declared dead (missed keepalives, or left).
    NodeDead(NodeId),
    /// The leaf set changed (placement re-checks what it is responsible for).
    LeafSetChanged,
}

/// A node held in the routing state, with the lowest RTT measured to it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: NodeId,
    rtt: RttMicros,
}

/// Liveness bookkeeping of one leaf-set member.
#[derive(Clone, Copy, Debug)]
struct Watch {
    id: NodeId,
    last_heard: Time,
    misses: u8,
    awaiting: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbePurpose {
    /// A candidate: admit it when it answers.
    Candidate,
    /// A keepalive of a leaf member.
    Keepalive,
    /// A periodic check of a routing-table entry: dropped from the table if silent.
    TableCheck,
    /// A node that announced itself: its RTT is measured here, never taken from it.
    Measure,
}

#[derive(Clone, Copy, Debug)]
struct Probe {
    id: NodeId,
    nonce: u64,
    sent: Time,
    purpose: ProbePurpose,
    /// 1 for the first ping; a candidate gets a second before it is given up.
    attempt: u8,
}

#[derive(Clone, Debug)]
struct PendingHop {
    hop_id: u64,
    to: NodeId,
    key: Id,
    hops: u8,
    body: Routed,
    tries: u8,
    excluded: Vec<NodeId>,
    /// Already sent to `to` a second time.
    resent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Joining {
        bootstrap: NodeId,
        reached_closest: bool,
    },
    Joined,
    Left,
}

/// One node's Pastry state machine.
#[derive(Clone, Debug)]
pub struct Overlay {
    config: Config,
    me: NodeId,
    phase: Phase,
    /// The L/2 numerically closest nodes on each side.
    leaf_set: LeafSet,
    /// Row r, column d: a node sharing r digits with us whose next digit is d.
    routing_table: RoutingTable,
    /// The M nodes of lowest measured RTT.
    neighbourhood: NeighbourhoodSet,
    watches: Vec<Watch>,
    probes: Vec<Probe>,
    probe_timer_at: Option<Time>,
    pending: Vec<PendingHop>,
    dead: Vec<(NodeId, Time)>,
    /// Ping nonces, hop ids and lookup tags: unguessable ([`Nonces`]).
    nonces: Nonces,
    /// The subnets the driver named, of the nodes held or being probed.
    subnets: SubnetBook,
    ticks: u32,
    ticking: bool,
    table_cursor: usize,
    locate_rounds: u32,
    /// Row exchanges started so far (chooses the row and the entry asked next).
    row_exchanges: u32,
    /// Outstanding proximity row requests: (asked node, row), oldest first, at most
    /// [`MAX_ROW_EXCHANGES`]. Only their answers make this node probe ids it does not
    /// need to fill a hole.
    row_exchange: Vec<(NodeId, u8)>,
    /// Recently probed candidates that won no place (a ring of at most
    /// [`OUTRANKED_MEMORY`]): row exchanges do not probe them again, which keeps the
    /// steady-state cost of maintenance to the ids that are new.
    /// Held as [`fingerprint`]s, 4 bytes rather than 32 each: full ids cost 40 MiB
    /// more peak memory per 10,000 simulated nodes. A collision only skips a probe.
    outranked: Vec<u32>,
    outranked_cursor: usize,
    /// Candidates not probed because [`MAX_CANDIDATE_PROBES`] were outstanding.
    candidate_probes_dropped: u64,
    /// Leaf-set and routing-table places refused because a subnet was at its limit.
    subnets_refused: u64,
}

/// Most probes of candidates (ids learnt second-hand) outstanding at once. Gossip can
/// name any number of ids that do not exist, each of which would be probed until it
/// times out; past this, new candidates are not probed (a join probes about a hundred;
/// liveness probes of nodes already held are not limited).
pub const MAX_CANDIDATE_PROBES: usize = 1024;

/// Most proximity row requests outstanding at once (the oldest is forgotten).
const MAX_ROW_EXCHANGES: usize = 8;

/// How many outranked candidates a node remembers (see `Overlay::outranked`).
const OUTRANKED_MEMORY: usize = 128;

impl Overlay {
    /// A node with id `me` that is not yet part of any overlay (feed it [`Event::Join`]).
    /// `seed` makes its nonces and tags: a secret the driver draws (the daemon from the
    /// operating system, the simulator from its seeded stream).
    pub fn new(config: Config, me: NodeId, seed: NonceSeed) -> Result<Overlay, ConfigError> {
        config.validate()?;
        Ok(Overlay {
            leaf_set: LeafSet::new(me, config.half()),
            routing_table: RoutingTable::new(me, config.digit_bits),
            neighbourhood: NeighbourhoodSet::new(config.neighbourhood_size),
            config,
            me,
            phase: Phase::Idle,
            watches: Vec::new(),
            probes: Vec::new(),
            probe_timer_at: None,
            candidate_probes_dropped: 0,
            subnets_refused: 0,
            pending: Vec::new(),
            dead: Vec::new(),
            nonces: Nonces::new(seed),
            subnets: SubnetBook::default(),
            ticks: 0,
            ticking: false,
            table_cursor: 0,
            locate_rounds: 0,
            row_exchanges: 0,
            row_exchange: Vec::new(),
            outranked: Vec::new(),
            outranked_cursor: 0,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the join has completed (and the node has not left).
    pub fn is_joined(&self) -> bool {
        self.phase == Phase::Joined
    }

    /// The leaf set: (counter-clockwise side, clockwise side), closest first on each.
    pub fn leaf_set(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        self.leaf_set.ids_by_side()
    }

    /// The routing-table entries as `(row, column, id)`.
    pub fn routing_table(&self) -> Vec<(usize, usize, NodeId)> {
        self.routing_table
            .entries()
            .map(|(r, c, entry)| (r, c, entry.id))
            .collect()
    }

    /// The neighbourhood set, lowest RTT first.
    pub fn neighbourhood(&self) -> Vec<NodeId> {
        self.neighbourhood.ids()
    }

    /// Routing-state entries: distinct leaf-set members + routing-table entries +
    /// neighbourhood-set entries (the paper's measure of state size).
    pub fn state_entries(&self) -> usize {
        self.leaf_set.len() + self.routing_table.len() + self.neighbourhood.len()
    }

    /// Every id this node holds in any of its tables (sorted, distinct).
    pub fn known_nodes(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .leaf_set
            .members()
            .chain(self.neighbourhood.members())
            .chain(self.routing_table.entries().map(|(_, _, e)| e))
            .map(|e| e.id)
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Feeds one event; returns what to do.
    pub fn handle(&mut self, now: Time, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.handle_into(now, event, &mut out);
        out
    }

    /// Feeds one event, appending what to do to `out` (lets a driver reuse a buffer).
    pub fn handle_into(&mut self, now: Time, event: Event, out: &mut Vec<Action>) {
        if self.phase == Phase::Left {
            return;
        }
        match event {
            Event::Join { bootstrap } => self.start_join(now, bootstrap, out),
            Event::Message { from, msg } => {
                if from != self.me {
                    self.on_message(now, from, msg, out);
                }
            }
            Event::Timer(kind) => self.on_timer(now, kind, out),
            Event::Route { key, tag, payload } => {
                let body = Routed::Lookup {
                    origin: self.me,
                    tag,
                    payload,
                };
                self.route(now, key, 0, body, Vec::new(), 0, out);
            }
            Event::RouteDiverse {
                key,
                tag,
                payload,
                skip,
            } => {
                let body = Routed::Lookup {
                    origin: self.me,
                    tag,
                    payload,
                };
                let passed_over = self.first_hops_to_skip(&key, skip);
                self.route(now, key, 0, body, passed_over, 0, out);
            }
            Event::Leave => self.leave(out),
            Event::Suggest { node } => self.suggested(now, node, out),
        }
    }

    /// The first `skip` next hops a route to `key` would try, in order, stopping
    /// before the one whose exclusion would leave no next hop (the route would then
    /// end here, at a node that is not the key's closest).
    fn first_hops_to_skip(&self, key: &Id, skip: u8) -> Vec<NodeId> {
        let mut skipped = Vec::new();
        for _ in 0..skip {
            let Some(hop) = self.next_hop(key, &skipped) else {
                break;
            };
            skipped.push(hop);
            if self.next_hop(key, &skipped).is_none() {
                skipped.pop();
                break;
            }
        }
        skipped
    }

    /// The driver's word on which subnet `node` is in (the daemon: the /24 or /48 of
    /// the address its handshake proved), given before the messages from it. Nodes of
    /// one subnet take at most [`Config::max_ids_per_subnet`] places in the leaf set
    /// and in each routing-table row. Kept while the node is held or probed.
    pub fn note_subnet(&mut self, node: NodeId, subnet: Subnet) {
        if node == self.me {
            return;
        }
        if self.subnets.len() >= subnets::SUBNET_MEMORY {
            self.forget_subnets_of_strangers();
        }
        self.subnets.note(node, subnet);
    }

    /// Whether `id` may take a leaf-set place as far as its subnet goes: its subnet has
    /// room, or `id` is nearer to this node than one of its subnet's members (which it
    /// then pushes out, see [`Self::admit`]).
    fn subnet_allows_leaf(&self, id: &NodeId) -> bool {
        let Some(subnet) = self.subnets.of(id) else {
            return true;
        };
        let same: Vec<NodeId> = self
            .leaf_set
            .distinct_members()
            .into_iter()
            .filter(|m| m != id && self.subnets.of(m) == Some(subnet))
            .collect();
        same.len() < self.config.max_ids_per_subnet
            || same
                .iter()
                .any(|m| ring_distance(&self.me.0, &m.0) > ring_distance(&self.me.0, &id.0))
    }

    /// Whether `id` may take its routing-table slot as far as its subnet goes: fewer
    /// than the limit of its subnet in its row, not counting the occupant it would
    /// replace. Why per row rather than per table: a route uses one entry of a row per
    /// hop, and ids cost nothing, so a subnet could otherwise take every slot of row 0
    /// (one id per first digit) and with it every first hop; per row it takes at most
    /// the limit out of 2^b − 1. A whole-table limit would be as strict for row 0 but
    /// would let one subnet crowd out the few entries of the deep rows.
    fn subnet_allows_row(&self, id: &NodeId) -> bool {
        let Some(subnet) = self.subnets.of(id) else {
            return true;
        };
        let Some((row, column)) = self.routing_table.slot_for(&id.0) else {
            return true;
        };
        let occupant = self.routing_table.get(row, column).map(|e| e.id);
        let same = self
            .routing_table
            .row_ids(row)
            .into_iter()
            .filter(|m| m != id && Some(*m) != occupant && self.subnets.of(m) == Some(subnet))
            .count();
        same < self.config.max_ids_per_subnet
    }

    /// After `id` entered the leaf set: if its subnet now has more members than the
    /// limit, the one furthest from this node leaves it (never `id`, by
    /// [`Self::subnet_allows_leaf`]).
    fn trim_subnet_in_leaf(&mut self, id: &NodeId) {
        let Some(subnet) = self.subnets.of(id) else {
            return;
        };
        let same: Vec<NodeId> = self
            .leaf_set
            .distinct_members()
            .into_iter()
            .filter(|m| self.subnets.of(m) == Some(subnet))
            .collect();
        if same.len() <= self.config.max_ids_per_subnet {
            return;
        }
        let me = self.me.0;
        if let Some(furthest) = same.into_iter().max_by_key(|m| ring_distance(&me, &m.0)) {
            self.leaf_set.remove(&furthest);
            self.subnets_refused += 1;
        }
    }

    /// Drops the subnets of nodes neither held nor being probed (each tick, and when
    /// the book is full), so the book stays the size of the routing state.
    fn forget_subnets_of_strangers(&mut self) {
        let keep: Vec<NodeId> = self
            .subnets
            .ids()
            .filter(|id| self.holds(id) || self.probes.iter().any(|p| p.id == *id))
            .collect();
        self.subnets.retain_only(&keep);
    }

    /// Whether `id` belongs in the leaf set: among the closest, and its subnet allows.
    fn wants_in_leaf(&self, id: &NodeId) -> bool {
        self.leaf_set.would_admit(id) && self.subnet_allows_leaf(id)
    }

    /// Places refused (or given up) because a subnet was at its limit.
    pub fn subnet_places_refused(&self) -> u64 {
        self.subnets_refused
    }

    /// What to make of `nodes`, the answer `from` (as the transport authenticated it)
    /// sent to this node's locate of the `count` nodes closest to `key`: see
    /// [`LocatedVerdict`] and the `located` module.
    pub fn check_located(
        &self,
        key: &Id,
        count: usize,
        from: NodeId,
        nodes: &[NodeId],
    ) -> LocatedVerdict {
        let known_dead = |id: &NodeId| self.is_dead(id);
        located::check(self.me, &self.leaf_set, known_dead, key, count, from, nodes)
    }

    /// The answer this node gives to a locate of the `count` nodes closest to `key`
    /// whose route ended here: the closest of itself and its leaf set, itself first
    /// (those closer than itself did not take the route, see the `located` module).
    pub fn located_answer(&self, key: &Id, count: usize) -> Vec<NodeId> {
        located::answer(self.me, &self.leaf_set, key, count)
    }

    fn suggested(&mut self, now: Time, node: NodeId, out: &mut Vec<Action>) {
        if node == self.me || self.holds(&node) {
            return;
        }
        if self
            .probes
            .iter()
            .any(|p| p.id == node && p.purpose == ProbePurpose::Candidate)
        {
            return;
        }
        // Forgotten as dead only once it answers (heard_from); until then gossip about
        // it is still ignored.
        self.send_probe(now, node, ProbePurpose::Candidate, out);
    }

    fn start_join(&mut self, now: Time, bootstrap: Option<NodeId>, out: &mut Vec<Action>) {
        if !self.ticking {
            self.ticking = true;
            out.push(Action::SetTimer {
                at: now.plus(self.config.tick),
                kind: TimerKind::Tick,
            });
        }
        match bootstrap {
            Some(bootstrap) if bootstrap != self.me => {
                self.phase = Phase::Joining {
                    bootstrap,
                    reached_closest: false,
                };
                let hop_id = self.nonce();
                let msg = OverlayMessage::Route {
                    hop_id,
                    key: self.me.0,
                    hops: 0,
                    body: Routed::Join { joiner: self.me },
                };
                out.push(Action::Send { to: bootstrap, msg });
                out.push(Action::SetTimer {
                    at: now.plus(self.config.join_timeout),
                    kind: TimerKind::JoinTimeout,
                });
            }
            _ => {
                self.phase = Phase::Joined;
                out.push(Action::Joined);
            }
        }
    }

    fn leave(&mut self, out: &mut Vec<Action>) {
        let mut told: Vec<NodeId> = self
            .leaf_set
            .members()
            .chain(self.neighbourhood.members())
            .map(|e| e.id)
            .collect();
        told.sort_unstable();
        told.dedup();
        for to in told {
            out.push(Action::Send {
                to,
                msg: OverlayMessage::Leave,
            });
        }
        self.phase = Phase::Left;
    }

    fn nonce(&mut self) -> u64 {
        self.nonces.next()
    }

    /// A fresh unguessable tag for a lookup this node starts ([`Event::Route`]): an
    /// answer that comes back outside the route (a PAST `Located`) is matched by it,
    /// so a stranger must not be able to guess it. Never 0.
    pub fn fresh_tag(&mut self) -> u64 {
        self.nonces.next()
    }

    fn is_dead(&self, id: &NodeId) -> bool {
        self.dead.iter().any(|(d, _)| d == id)
    }

    // ---- messages ----

    fn on_message(&mut self, now: Time, from: NodeId, msg: OverlayMessage, out: &mut Vec<Action>) {
        self.heard_from(now, from, out);
        match msg {
            OverlayMessage::Route {
                hop_id,
                key,
                hops,
                body,
            } => {
                out.push(Action::Send {
                    to: from,
                    msg: OverlayMessage::RouteAck { hop_id },
                });
                self.on_route(now, key, hops, body, out);
            }
            OverlayMessage::RouteAck { hop_id } => {
                self.pending
                    .retain(|p| !(p.hop_id == hop_id && p.to == from));
            }
            OverlayMessage::JoinReply {
                entries,
                neighbours,
                leaf_set,
            } => {
                let Phase::Joining { bootstrap, .. } = self.phase else {
                    return; // stale: only a joining node uses join state
                };
                // The sender itself is a candidate too (its RTT is not yet known).
                self.consider(now, from, out);
                let cap = self.config.rows() * self.config.columns();
                for id in entries.into_iter().take(cap) {
                    self.consider(now, id, out);
                }
                for id in neighbours.into_iter().take(self.config.neighbourhood_size) {
                    self.consider(now, id, out);
                }
                if let Some(leaf) = leaf_set {
                    for id in leaf.into_iter().take(self.config.leaf_set_size) {
                        self.consider(now, id, out);
                    }
                    self.phase = Phase::Joining {
                        bootstrap,
                        reached_closest: true,
                    };
                }
                self.maybe_joined(now, out);
            }
            OverlayMessage::Ping { nonce } => {
                out.push(Action::Send {
                    to: from,
                    msg: OverlayMessage::Pong { nonce },
                });
            }
            OverlayMessage::Pong { nonce } => {
                let Some(pos) = self
                    .probes
                    .iter()
                    .position(|p| p.nonce == nonce && p.id == from)
                else {
                    return;
                };
                let probe = self.probes.swap_remove(pos);
                let rtt = u32::try_from(now.micros_since(probe.sent)).unwrap_or(RTT_UNKNOWN - 1);
                let was_in_table = self.routing_table.contains(&from);
                let entered_leaf = self.admit(from, rtt, out);
                let joining = matches!(self.phase, Phase::Joining { .. });
                // A candidate that won a routing-table slot is told our RTT too: it
                // may place us in its own table, nearer than what it holds.
                let entered_table = !was_in_table && self.routing_table.contains(&from);
                if probe.purpose == ProbePurpose::Candidate
                    && (joining || entered_leaf || entered_table)
                    && self.holds(&from)
                {
                    out.push(Action::Send {
                        to: from,
                        msg: OverlayMessage::Announce { rtt_us: rtt },
                    });
                }
                if probe.purpose == ProbePurpose::Candidate && !self.holds(&from) {
                    self.remember_outranked(from);
                }
                self.maybe_joined(now, out);
            }
            OverlayMessage::Announce { rtt_us: _ } => {
                // The RTT it claims is ignored: a peer that reports a low one would win
                // routing-table slots (and so routes) it should not. It enters with an
                // unknown RTT, which loses every comparison, and is measured here.
                self.admit(from, RTT_UNKNOWN, out);
                self.measure(now, from, out);
            }
            OverlayMessage::LeafSetRequest => {
                let (left, right) = self.leaf_set();
                out.push(Action::Send {
                    to: from,
                    msg: OverlayMessage::LeafSet { left, right },
                });
            }
            OverlayMessage::LeafSet { left, right } => {
                let half = self.config.half();
                for id in left
                    .into_iter()
                    .take(half)
                    .chain(right.into_iter().take(half))
                {
                    self.consider(now, id, out);
                }
            }
            OverlayMessage::RowRequest { row } => {
                let row = usize::from(row);
                let entries = self.routing_table.row_ids(row);
                let msg = OverlayMessage::Row {
                    row: row as u8,
                    entries,
                };
                out.push(Action::Send { to: from, msg });
            }
            OverlayMessage::Row { row, entries } => {
                let asked = self.row_exchange.iter().position(|x| *x == (from, row));
                let exchange = asked.is_some();
                if let Some(pos) = asked {
                    self.row_exchange.remove(pos);
                }
                for id in entries.into_iter().take(self.config.columns()) {
                    if exchange {
                        self.consider_for_proximity(now, id, out);
                    } else {
                        self.consider(now, id, out);
                    }
                }
            }
            OverlayMessage::Leave => {
                self.declare_dead(now, from, out);
            }
        }
    }

    /// Pings an announcer `id` to learn its RTT, unless a ping to it is outstanding:
    /// if it is held without a measurement, or if it has a routing-table slot whose
    /// occupant it might beat (it did not get in with an unknown RTT). Its pong enters
    /// the RTT like any other (`admit`). Counted against [`MAX_CANDIDATE_PROBES`], as
    /// any id can announce itself.
    fn measure(&mut self, now: Time, id: NodeId, out: &mut Vec<Action>) {
        if self.probes.iter().any(|p| p.id == id) {
            return;
        }
        let unmeasured = self.holds(&id) && self.rtt_of(&id) == RTT_UNKNOWN;
        let contender = !self.holds(&id) && self.routing_table.slot_for(&id.0).is_some();
        if unmeasured || contender {
            self.send_probe(now, id, ProbePurpose::Measure, out);
        }
    }

    /// Any message from `from` shows it is alive.
    fn heard_from(&mut self, now: Time, from: NodeId, out: &mut Vec<Action>) {
        if let Some(pos) = self.dead.iter().position(|(d, _)| *d == from) {
            self.dead.swap_remove(pos);
        }
        if let Some(w) = self.watches.iter_mut().find(|w| w.id == from) {
            w.last_heard = now;
            w.misses = 0;
            w.awaiting = false;
        } else if self.wants_in_leaf(&from) {
            // A live node that belongs in the leaf set, heard directly: admit it now
            // (RTT unknown) so leaf sets converge without waiting for a probe.
            self.admit(from, RTT_UNKNOWN, out);
        }
    }

    /// Routes a [`Routed::Locate`] to this node's own id. The first hop is a row-0
    /// entry (a node elsewhere on the ring, in turn), not our own leaf set: if our
    /// leaf set is wrong, or we are part of a small ring that split off, the route
    /// from elsewhere still finds the nodes truly around us.
    fn locate_self(&mut self, now: Time, out: &mut Vec<Action>) {
        let body = Routed::Locate { requester: self.me };
        let far: Vec<NodeId> = self.routing_table.row_ids(0);
        if far.is_empty() {
            self.route(now, self.me.0, 0, body, vec![self.me], 0, out);
            return;
        }
        self.locate_rounds = self.locate_rounds.wrapping_add(1);
        let to = far[self.locate_rounds as usize % far.len()];
        let hop = PendingHop {
            hop_id: 0,
            to,
            key: self.me.0,
            hops: 0,
            body,
            tries: 0,
            excluded: vec![self.me],
            resent: false,
        };
        self.forward(now, hop, out);
    }

    fn maybe_joined(&mut self, now: Time, out: &mut Vec<Action>) {
        if let Phase::Joining {
            reached_closest: true,
            ..
        } = self.phase
            && !self
                .probes
                .iter()
                .any(|p| p.purpose == ProbePurpose::Candidate)
        {
            self.phase = Phase::Joined;
            out.push(Action::Joined);
            self.locate_self(now, out);
            // A cheap second join phase: one row exchange per row at once, so a new
            // node need not wait a round of ticks per row for nearer entries.
            if self.config.row_exchange_every_ticks > 0 {
                for _ in 0..self.routing_table.row_count().min(MAX_ROW_EXCHANGES) {
                    self.start_row_exchange(out);
                }
            }
            // Members that were themselves joining did not push their leaf sets to us,
            // and we did not push ours while it was being filled: show the finished
            // one to every member once, so concurrent joiners find each other.
            let (left, right) = self.leaf_set();
            let mut members: Vec<NodeId> = left.iter().chain(&right).copied().collect();
            members.sort_unstable();
            members.dedup();
            for to in members {
                let msg = OverlayMessage::LeafSet {
                    left: left.clone(),
                    right: right.clone(),
                };
                out.push(Action::Send { to, msg });
            }
        }
    }

    // ---- routing ----

    fn on_route(&mut self, now: Time, key: Id, hops: u8, body: Routed, out: &mut Vec<Action>) {
        if hops >= self.config.max_hops {
            out.push(Action::RouteFailed {
                key,
                tag: tag_of(&body),
            });
            return;
        }
        if let Routed::Join { joiner } = &body {
            let joiner = *joiner;
            if joiner == self.me {
                return;
            }
            let p = shared_digits(&self.me.0, &joiner.0, self.config.digit_bits);
            // The paper: the i-th node on the path gives row i. Optionally every node
            // gives all the rows the joiner shares with it: more candidates per slot
            // (better proximity) for more probes.
            let first_row = if self.config.join_all_shared_rows {
                0
            } else {
                usize::from(hops).min(p)
            };
            let entries: Vec<NodeId> = self
                .routing_table
                .ids_in_rows(first_row, p)
                .into_iter()
                .filter(|id| *id != joiner)
                .collect();
            let neighbours = if hops == 0 {
                self.neighbourhood()
            } else {
                Vec::new()
            };
            let is_last = self.next_hop(&key, &[joiner]).is_none();
            let leaf_set = is_last.then(|| {
                let (l, r) = self.leaf_set();
                let mut all: Vec<NodeId> =
                    l.into_iter().chain(r).filter(|id| *id != joiner).collect();
                all.push(self.me);
                all
            });
            out.push(Action::Send {
                to: joiner,
                msg: OverlayMessage::JoinReply {
                    entries,
                    neighbours,
                    leaf_set,
                },
            });
        }
        self.route(now, key, hops, body, Vec::new(), 0, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        now: Time,
        key: Id,
        hops: u8,
        body: Routed,
        mut excluded: Vec<NodeId>,
        tries: u8,
        out: &mut Vec<Action>,
    ) {
        if let Routed::Join { joiner: subject } | Routed::Locate { requester: subject } = &body
            && !excluded.contains(subject)
        {
            // A joiner (or locating node) is not a destination for its own route.
            excluded.push(*subject);
        }
        match self.next_hop(&key, &excluded) {
            None => match body {
                Routed::Lookup {
                    origin,
                    tag,
                    payload,
                } => {
                    out.push(Action::Deliver {
                        key,
                        origin,
                        tag,
                        hops,
                        payload,
                    });
                }
                Routed::Join { .. } => {
                    // The JoinReply with the leaf set was sent by `on_route` when this
                    // node saw itself as last; a retry that ends here sends it now.
                    if tries > 0 {
                        self.on_route_last_join(&body, out);
                    }
                }
                Routed::Locate { requester } => {
                    if requester != self.me {
                        let (left, right) = self.leaf_set();
                        let msg = OverlayMessage::LeafSet { left, right };
                        out.push(Action::Send { to: requester, msg });
                        self.consider(now, requester, out);
                    }
                }
            },
            Some(to) => {
                let hop = PendingHop {
                    hop_id: 0,
                    to,
                    key,
                    hops,
                    body,
                    tries,
                    excluded,
                    resent: false,
                };
                self.forward(now, hop, out);
            }
        }
    }

    /// Sends one hop and waits for its acknowledgement.
    fn forward(&mut self, now: Time, mut hop: PendingHop, out: &mut Vec<Action>) {
        hop.hop_id = self.nonce();
        let msg = OverlayMessage::Route {
            hop_id: hop.hop_id,
            key: hop.key,
            hops: hop.hops + 1,
            body: hop.body.clone(),
        };
        out.push(Action::Send { to: hop.to, msg });
        out.push(Action::SetTimer {
            at: now.plus(self.ack_timeout(&hop.to)),
            kind: TimerKind::RouteAck { hop_id: hop.hop_id },
        });
        self.pending.push(hop);
    }

    fn on_route_last_join(&mut self, body: &Routed, out: &mut Vec<Action>) {
        if let Routed::Join { joiner } = body {
            let (l, r) = self.leaf_set();
            let mut all: Vec<NodeId> = l.into_iter().chain(r).filter(|id| id != joiner).collect();
            all.push(self.me);
            out.push(Action::Send {
                to: *joiner,
                msg: OverlayMessage::JoinReply {
                    entries: Vec::new(),
                    neighbours: Vec::new(),
                    leaf_set: Some(all),
                },
            });
        }
    }

    /// The Pastry routing rule. `None`: this node is the destination.
    fn next_hop(&self, key: &Id, excluded: &[NodeId]) -> Option<NodeId> {
        let usable = |id: &NodeId| !excluded.contains(id);
        // 1. Within the leaf-set range: the numerically closest of leaf set and self.
        if self.leaf_set.covers(key) {
            // The closest usable member, unless this node is at least as close: then
            // the route ends here.
            let member = self.leaf_set.closest_to(key, usable)?;
            let ends_here =
                usable(&self.me) && key.cmp_closeness(&member.0, &self.me.0) != Ordering::Less;
            return (!ends_here).then_some(member);
        }
        // 2. The routing-table entry sharing one more digit.
        let b = self.config.digit_bits;
        let (p, column) = self.routing_table.slot_for(key)?;
        if let Some(e) = self.routing_table.get(p, column)
            && usable(&e.id)
        {
            return Some(e.id);
        }
        // 3. Rare case: any known node with at least as long a shared prefix that is
        //    numerically closer; prefer the longest prefix, then the closest.
        let mut best: Option<(usize, NodeId)> = None;
        let all = self
            .leaf_set
            .members()
            .chain(self.neighbourhood.members())
            .chain(self.routing_table.entries().map(|(_, _, e)| e));
        for e in all {
            if !usable(&e.id) {
                continue;
            }
            let q = shared_digits(&e.id.0, key, b);
            if q < p || key.cmp_closeness(&e.id.0, &self.me.0) != Ordering::Less {
                continue;
            }
            let better = match best {
                None => true,
                Some((bq, bid)) => {
                    q > bq || (q == bq && key.cmp_closeness(&e.id.0, &bid.0) == Ordering::Less)
                }
            };
            if better {
                best = Some((q, e.id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// How long to wait for `to`'s acknowledgement: twice its measured RTT plus a
    /// margin, capped by the configured timeout (which also applies when unmeasured).
    fn ack_timeout(&self, to: &NodeId) -> Duration {
        let rtt = self.rtt_of(to);
        let cap = self.config.route_ack_timeout;
        if rtt == RTT_UNKNOWN {
            return cap;
        }
        let adaptive = Duration::from_micros(u64::from(rtt) * 2) + Duration::from_millis(50);
        adaptive.min(cap)
    }

    fn rtt_of(&self, id: &NodeId) -> RttMicros {
        self.leaf_set
            .members()
            .chain(self.neighbourhood.members())
            .chain(self.routing_table.entry_of(id))
            .filter(|e| e.id == *id)
            .map(|e| e.rtt)
            .min()
            .unwrap_or(RTT_UNKNOWN)
    }

    // ---- timers ----

    fn on_timer(&mut self, now: Time, kind: TimerKind, out: &mut Vec<Action>) {
        match kind {
            TimerKind::Tick => self.tick(now, out),
            TimerKind::ProbeExpiry => self.expire_probes(now, out),
            TimerKind::RouteAck { hop_id } => self.route_ack_due(now, hop_id, out),
            TimerKind::JoinTimeout => {
                if let Phase::Joining {
                    reached_closest: false,
                    ..
                } = self.phase
                {
                    self.phase = Phase::Idle;
                    out.push(Action::JoinFailed);
                }
            }
        }
    }

    fn tick(&mut self, now: Time, out: &mut Vec<Action>) {
        out.push(Action::SetTimer {
            at: now.plus(self.config.tick),
            kind: TimerKind::Tick,
        });
        self.ticks = self.ticks.wrapping_add(1);
        let memory = self.config.dead_memory;
        self.dead.retain(|(_, at)| at.plus(memory) > now);
        self.forget_subnets_of_strangers();

        // Keep one watch per distinct leaf member.
        let members = self.leaf_set.distinct_members();
        self.watches
            .retain(|w| members.binary_search(&w.id).is_ok());
        for id in &members {
            if !self.watches.iter().any(|w| w.id == *id) {
                self.watches.push(Watch {
                    id: *id,
                    last_heard: now,
                    misses: 0,
                    awaiting: false,
                });
            }
        }
        let mut dead = Vec::new();
        let mut to_ping = Vec::new();
        let quiet = self.config.tick / 2;
        for w in &mut self.watches {
            if w.awaiting {
                w.misses += 1;
                if w.misses >= self.config.dead_after_misses {
                    dead.push(w.id);
                    continue;
                }
            }
            if w.last_heard.plus(quiet) <= now {
                w.awaiting = true;
                to_ping.push(w.id);
            }
        }
        for id in to_ping {
            self.send_probe(now, id, ProbePurpose::Keepalive, out);
        }
        for id in dead {
            self.declare_dead(now, id, out);
        }
        self.check_table_entries(now, out);
        if self.phase == Phase::Joined
            && self.config.row_exchange_every_ticks > 0
            && self.ticks % self.config.row_exchange_every_ticks == 0
        {
            self.start_row_exchange(out);
        }
        if self.phase == Phase::Joined
            && self.config.locate_every_ticks > 0
            && self.ticks % self.config.locate_every_ticks == 0
        {
            self.locate_self(now, out);
        }
        // A join probes ~100 candidates at once; do not keep that capacity for life.
        if self.probes.capacity() > 4 * self.probes.len().max(8) {
            self.probes.shrink_to_fit();
        }
        if self.pending.capacity() > 4 * self.pending.len().max(8) {
            self.pending.shrink_to_fit();
        }
        if self.ticks % self.config.leaf_push_every_ticks.max(1) == 0 {
            let (left, right) = self.leaf_set();
            let mut targets: Vec<NodeId> = left
                .first()
                .into_iter()
                .chain(right.first())
                .copied()
                .collect();
            targets.dedup();
            for to in targets {
                out.push(Action::Send {
                    to,
                    msg: OverlayMessage::LeafSet {
                        left: left.clone(),
                        right: right.clone(),
                    },
                });
            }
        }
    }

    /// Periodic proximity maintenance (the paper's and MSPastry's): ask an entry of
    /// row r for its row r, rows in turn. An entry of row r shares r digits with this
    /// node, so its row r has candidates for our row r; being near us (proximity) its
    /// entries are likely near us too. The answer's ids are probed and the lower RTT
    /// keeps each slot ([`RoutingTable::insert`]).
    fn start_row_exchange(&mut self, out: &mut Vec<Action>) {
        let rows = self.routing_table.row_count();
        if rows == 0 {
            return;
        }
        let turn = self.row_exchanges as usize;
        self.row_exchanges = self.row_exchanges.wrapping_add(1);
        let row = turn % rows;
        let Some(to) = self.routing_table.exchange_partner(row, turn / rows) else {
            return;
        };
        let Ok(row) = u8::try_from(row) else {
            return;
        };
        if self.row_exchange.len() >= MAX_ROW_EXCHANGES {
            self.row_exchange.remove(0);
        }
        self.row_exchange.push((to, row));
        out.push(Action::Send {
            to,
            msg: OverlayMessage::RowRequest { row },
        });
    }

    /// A candidate from a proximity row exchange: probed unless already held (its RTT
    /// is then known), being probed, remembered dead or recently outranked.
    fn consider_for_proximity(&mut self, now: Time, id: NodeId, out: &mut Vec<Action>) {
        if id == self.me || self.is_dead(&id) || self.holds(&id) {
            return;
        }
        if self.outranked.contains(&fingerprint(&id)) {
            return;
        }
        if self.probes.iter().any(|p| p.id == id) {
            return;
        }
        if self.routing_table.slot_for(&id.0).is_none() {
            return;
        }
        self.send_probe(now, id, ProbePurpose::Candidate, out);
    }

    fn remember_outranked(&mut self, id: NodeId) {
        let id = fingerprint(&id);
        if self.outranked.contains(&id) {
            return;
        }
        if self.outranked.len() < OUTRANKED_MEMORY {
            self.outranked.push(id);
        } else {
            self.outranked[self.outranked_cursor % OUTRANKED_MEMORY] = id;
            self.outranked_cursor = (self.outranked_cursor + 1) % OUTRANKED_MEMORY;
        }
    }

    /// Probes the next few routing-table entries (round robin over the table).
    fn check_table_entries(&mut self, now: Time, out: &mut Vec<Action>) {
        let columns = self.config.columns();
        let slots = self.routing_table.slot_positions();
        if slots == 0 || self.config.table_probes_per_tick == 0 {
            return;
        }
        let mut checked = 0;
        for _ in 0..slots {
            if checked >= self.config.table_probes_per_tick {
                break;
            }
            let cursor = self.table_cursor % slots;
            self.table_cursor = (cursor + 1) % slots;
            let (r, c) = (cursor / columns, cursor % columns);
            let Some(entry) = self.routing_table.get(r, c) else {
                continue;
            };
            let id = entry.id;
            checked += 1;
            if self.leaf_set.contains(&id) || self.probes.iter().any(|p| p.id == id) {
                continue; // leaf members have their own keepalives
            }
            self.send_probe(now, id, ProbePurpose::TableCheck, out);
        }
    }

    fn expire_probes(&mut self, now: Time, out: &mut Vec<Action>) {
        self.probe_timer_at = None;
        let timeout = self.config.probe_timeout;
        let mut failed = Vec::new();
        let mut retry = Vec::new();
        let mut silent_entries = Vec::new();
        self.probes.retain(|p| {
            let due = p.sent.plus(timeout) <= now;
            if due {
                match p.purpose {
                    // One lost ping must not bar a live node for minutes: ask twice.
                    ProbePurpose::Candidate if p.attempt < 2 => retry.push(p.id),
                    ProbePurpose::Candidate => failed.push(p.id),
                    ProbePurpose::TableCheck => silent_entries.push(p.id),
                    ProbePurpose::Keepalive | ProbePurpose::Measure => {}
                }
            }
            !due
        });
        for id in failed {
            self.remember_dead(now, id);
        }
        for id in retry {
            self.send_probe_attempt(now, id, ProbePurpose::Candidate, 2, out);
        }
        for id in silent_entries {
            if !self.leaf_set.contains(&id) {
                self.drop_from_table(id, out);
                self.neighbourhood.remove(&id);
                self.remember_dead(now, id);
            }
        }
        if let Some(earliest) = self.probes.iter().map(|p| p.sent).min() {
            let at = earliest.plus(timeout);
            self.probe_timer_at = Some(at);
            out.push(Action::SetTimer {
                at,
                kind: TimerKind::ProbeExpiry,
            });
        }
        self.maybe_joined(now, out);
    }

    fn route_ack_due(&mut self, now: Time, hop_id: u64, out: &mut Vec<Action>) {
        let Some(pos) = self.pending.iter().position(|p| p.hop_id == hop_id) else {
            return; // acknowledged
        };
        let mut hop = self.pending.swap_remove(pos);
        // A leaf member is most often the destination itself, and routing around the
        // closest node delivers to the wrong one: if only this message (or its ack)
        // was lost, a second try reaches it.
        if self.leaf_set.contains(&hop.to) && !hop.resent && hop.tries < self.config.route_retries {
            hop.resent = true;
            hop.tries += 1;
            self.forward(now, hop, out);
            return;
        }
        // Routing goes on around the silent node. A routing-table entry is dropped at
        // once (and its slot repaired lazily); a leaf member is left to the keepalives,
        // which decide with several misses, so one lost message cannot evict it.
        if !self.leaf_set.contains(&hop.to) {
            self.drop_from_table(hop.to, out);
            self.remember_dead(now, hop.to);
        }
        if hop.tries >= self.config.route_retries {
            out.push(Action::RouteFailed {
                key: hop.key,
                tag: tag_of(&hop.body),
            });
            return;
        }
        let mut excluded = hop.excluded;
        excluded.push(hop.to);
        self.route(
            now,
            hop.key,
            hop.hops,
            hop.body,
            excluded,
            hop.tries + 1,
            out,
        );
    }

    // ---- state changes ----

    fn send_probe(&mut self, now: Time, id: NodeId, purpose: ProbePurpose, out: &mut Vec<Action>) {
        let capped = |p: ProbePurpose| matches!(p, ProbePurpose::Candidate | ProbePurpose::Measure);
        if capped(purpose)
            && self.probes.iter().filter(|p| capped(p.purpose)).count() >= MAX_CANDIDATE_PROBES
        {
            self.candidate_probes_dropped += 1;
            return;
        }
        self.send_probe_attempt(now, id, purpose, 1, out);
    }

    /// Candidates not probed because [`MAX_CANDIDATE_PROBES`] were outstanding.
    pub fn candidate_probes_dropped(&self) -> u64 {
        self.candidate_probes_dropped
    }

    fn send_probe_attempt(
        &mut self,
        now: Time,
        id: NodeId,
        purpose: ProbePurpose,
        attempt: u8,
        out: &mut Vec<Action>,
    ) {
        let nonce = self.nonce();
        self.probes.push(Probe {
            id,
            nonce,
            sent: now,
            purpose,
            attempt,
        });
        out.push(Action::Send {
            to: id,
            msg: OverlayMessage::Ping { nonce },
        });
        if self.probe_timer_at.is_none() {
            let at = now.plus(self.config.probe_timeout);
            self.probe_timer_at = Some(at);
            out.push(Action::SetTimer {
                at,
                kind: TimerKind::ProbeExpiry,
            });
        }
    }

    /// A candidate learned second-hand: probe it if it could improve our state.
    fn consider(&mut self, now: Time, id: NodeId, out: &mut Vec<Action>) {
        if id == self.me || self.is_dead(&id) || self.leaf_set.contains(&id) {
            return;
        }
        if self
            .probes
            .iter()
            .any(|p| p.id == id && p.purpose == ProbePurpose::Candidate)
        {
            return;
        }
        // A node we already hold in the table may still belong in the leaf set (a
        // neighbour died and it moved up): that is worth a probe too.
        let wanted_in_leaf = self.wants_in_leaf(&id);
        if !wanted_in_leaf && self.holds(&id) {
            return;
        }
        let joining = matches!(self.phase, Phase::Joining { .. });
        if joining || wanted_in_leaf || self.routing_table.slot_free(&id) {
            self.send_probe(now, id, ProbePurpose::Candidate, out);
        }
    }

    fn holds(&self, id: &NodeId) -> bool {
        self.leaf_set.contains(id)
            || self.routing_table.contains(id)
            || self.neighbourhood.contains(id)
    }

    /// Puts a node known to be alive into every table it fits. Returns whether it
    /// newly entered the leaf set.
    fn admit(&mut self, id: NodeId, rtt: RttMicros, out: &mut Vec<Action>) -> bool {
        if id == self.me || self.phase == Phase::Left {
            return false;
        }
        if let Some(pos) = self.dead.iter().position(|(d, _)| *d == id) {
            self.dead.swap_remove(pos);
        }
        // Leaf set: among the closest, and at most the limit per subnet.
        let leaf_changed = if self.subnet_allows_leaf(&id) {
            let changed = self.leaf_set.insert(id, rtt);
            if changed {
                self.trim_subnet_in_leaf(&id);
            }
            changed
        } else {
            self.subnets_refused += u64::from(self.leaf_set.would_admit(&id));
            false
        };
        // Routing table: empty slot, or a lower RTT than the occupant; at most the
        // limit per subnet in a row.
        if self.subnet_allows_row(&id) {
            self.routing_table.insert(id, rtt);
        } else if !self.routing_table.contains(&id) {
            self.subnets_refused += 1;
        }
        // Neighbourhood set: the M lowest measured RTTs.
        self.neighbourhood.insert(id, rtt);
        if leaf_changed {
            out.push(Action::LeafSetChanged);
        }
        // Tell the newcomer who our neighbours are, so that concurrent joiners between
        // the same nodes find each other. A joining node's own leaf set is still
        // being filled: the members' pushes to it carry what it lacks.
        if leaf_changed && self.phase == Phase::Joined {
            let (left, right) = self.leaf_set();
            out.push(Action::Send {
                to: id,
                msg: OverlayMessage::LeafSet { left, right },
            });
        }
        leaf_changed
    }

    fn remember_dead(&mut self, now: Time, id: NodeId) {
        if self.is_dead(&id) {
            return;
        }
        if self.dead.len() >= self.config.dead_memory_entries {
            // Forget the oldest.
            if let Some(pos) = self
                .dead
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
            {
                self.dead.swap_remove(pos);
            }
        }
        if self.config.dead_memory_entries > 0 {
            self.dead.push((id, now));
        }
    }

    fn drop_from_table(&mut self, id: NodeId, out: &mut Vec<Action>) {
        let Some(row) = self.routing_table.remove(&id) else {
            return;
        };
        // Lazy repair: ask another node of the same row (or the next) for its row.
        if let Some(to) = self.routing_table.repair_source(row, &id) {
            out.push(Action::Send {
                to,
                msg: OverlayMessage::RowRequest { row: row as u8 },
            });
        }
    }

    fn declare_dead(&mut self, now: Time, id: NodeId, out: &mut Vec<Action>) {
        self.remember_dead(now, id);
        let was_on = self.leaf_set.remove(&id);
        self.neighbourhood.remove(&id);
        self.watches.retain(|w| w.id != id);
        self.probes.retain(|p| p.id != id);
        self.drop_from_table(id, out);
        out.push(Action::NodeDead(id));
        if was_on.left || was_on.right {
            out.push(Action::LeafSetChanged);
            // Repair: the live member furthest on that side knows the nodes beyond.
            let mut ask = Vec::new();
            let furthest = |side, other| {
                self.leaf_set
                    .furthest(side)
                    .or_else(|| self.leaf_set.furthest(other))
            };
            if was_on.right {
                ask.extend(furthest(Side::Right, Side::Left));
            }
            if was_on.left {
                ask.extend(furthest(Side::Left, Side::Right));
            }
            ask.dedup();
            for to in ask {
                out.push(Action::Send {
                    to,
                    msg: OverlayMessage::LeafSetRequest,
                });
            }
        }
    }
}

/// The distance between two ring points, the shorter way round.
fn ring_distance(a: &Id, b: &Id) -> Id {
    a.clockwise_to(b).min(b.clockwise_to(a))
}

/// The first 4 bytes of a node id: enough to tell apart the few hundred ids one node
/// remembers, where a rare collision costs nothing but a skipped probe.
fn fingerprint(id: &NodeId) -> u32 {
    let [a, b, c, d, ..] = id.0.0;
    u32::from_be_bytes([a, b, c, d])
}

fn tag_of(body: &Routed) -> u64 {
    match body {
        Routed::Lookup { tag, .. } => *tag,
        Routed::Join { .. } | Routed::Locate { .. } => 0,
    }
}

/// An estimate of how many nodes the whole overlay has, from one node's leaf set (left
/// and right sides, each closest first; `half` = L/2). When a side is not full the
/// leaf set already holds every node. Otherwise the `L` gaps between the farthest left
/// and the farthest right member span a fraction `f` of the ring, and with ids spread
/// uniformly each gap is about `1/N`, so `N ≈ L / f` (Pastry's own size estimate).
pub fn estimate_network_size(me: &Id, left: &[Id], right: &[Id], half: usize) -> f64 {
    let mut members: Vec<&Id> = left.iter().chain(right).filter(|id| *id != me).collect();
    members.sort_unstable();
    members.dedup();
    if left.len() < half || right.len() < half {
        return (members.len() + 1) as f64;
    }
    // The top 64 bits of a distance, as a fraction of the ring.
    let fraction = |id: Id| {
        let mut top = [0u8; 8];
        top.copy_from_slice(&id.0[..8]);
        u64::from_be_bytes(top) as f64 / 2f64.powi(64)
    };
    let far_left = left
        .iter()
        .map(|l| fraction(l.clockwise_to(me)))
        .fold(0.0, f64::max);
    let far_right = right
        .iter()
        .map(|r| fraction(me.clockwise_to(r)))
        .fold(0.0, f64::max);
    let span = far_left + far_right;
    if span <= 0.0 {
        return (members.len() + 1) as f64;
    }
    ((left.len() + right.len()) as f64 / span).max((members.len() + 1) as f64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn network_size_is_counted_when_small_and_estimated_from_leaf_spread_when_large() {
        // A small network: the leaf set holds everyone.
        let ids: Vec<Id> = (0..5u8).map(|i| Id::hash(&[i])).collect();
        assert_eq!(
            estimate_network_size(&ids[0], &ids[1..3], &ids[3..5], 8),
            5.0
        );
        // 4,096 evenly spaced ids: the estimate from one node's 16 neighbours is exact.
        let n = 4096u64;
        let at = |i: u64| {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(i.wrapping_mul(u64::MAX / n)).to_be_bytes());
            Id(bytes)
        };
        let me = at(100);
        let left: Vec<Id> = (92..100).rev().map(at).collect();
        let right: Vec<Id> = (101..109).map(at).collect();
        let estimate = estimate_network_size(&me, &left, &right, 8);
        assert!(
            (estimate - n as f64).abs() / (n as f64) < 0.01,
            "{estimate}"
        );
    }

    fn node(n: u8) -> NodeId {
        NodeId(Id::hash(&[n]))
    }

    /// The nonce seed of the overlays under test.
    const SEED: NonceSeed = [9; 32];

    #[test]
    fn ping_nonces_and_lookup_tags_are_unguessable_and_depend_on_the_seed() {
        let pings = |seed: NonceSeed| {
            let mut overlay = Overlay::new(Config::default(), node(1), seed).unwrap();
            overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
            let mut nonces = Vec::new();
            for n in 2..6u8 {
                let actions = overlay.handle(Time(1), Event::Suggest { node: node(n) });
                nonces.extend(actions.iter().filter_map(|a| match a {
                    Action::Send {
                        msg: OverlayMessage::Ping { nonce },
                        ..
                    } => Some(*nonce),
                    _ => None,
                }));
            }
            let tags: Vec<u64> = (0..4).map(|_| overlay.fresh_tag()).collect();
            (nonces, tags)
        };
        let (nonces, tags) = pings(SEED);
        assert_eq!(nonces.len(), 4);
        // Not a counter: a peer that saw one nonce cannot tell the next.
        for pair in nonces.windows(2).chain(tags.windows(2)) {
            assert!(pair[1].abs_diff(pair[0]) > 1 << 20, "{nonces:?} {tags:?}");
        }
        assert!(tags.iter().all(|t| *t != 0 && *t > 1 << 32), "{tags:?}");
        // Deterministic for one seed (the simulator replays), different for another.
        assert_eq!(pings(SEED), (nonces.clone(), tags.clone()));
        let (other_nonces, other_tags) = pings([3; 32]);
        assert_ne!(other_nonces, nonces);
        assert_ne!(other_tags, tags);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad_b = Config {
            digit_bits: 3,
            ..Config::default()
        };
        assert_eq!(
            Overlay::new(bad_b, node(1), SEED).err(),
            Some(ConfigError::DigitBits { got: 3 })
        );
        let odd_l = Config {
            leaf_set_size: 15,
            ..Config::default()
        };
        assert_eq!(odd_l.validate(), Err(ConfigError::LeafSetSize { got: 15 }));
    }

    #[test]
    fn gossip_of_made_up_ids_probes_at_most_the_cap_and_counts_the_rest() {
        let mut overlay = Overlay::new(Config::default(), node(1), SEED).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        let liar = node(2);
        let half = Config::default().half();
        let mut pings = 0;
        let mut made_up = 0u32;
        // Leaf sets full of ids nobody holds, none of which will ever answer.
        for round in 0..(MAX_CANDIDATE_PROBES / half + 20) {
            let ids: Vec<NodeId> = (0..half)
                .map(|_| {
                    made_up += 1;
                    NodeId(Id::hash(&made_up.to_be_bytes()))
                })
                .collect();
            let actions = overlay.handle(
                Time(round as u64),
                Event::Message {
                    from: liar,
                    msg: OverlayMessage::LeafSet {
                        left: ids,
                        right: Vec::new(),
                    },
                },
            );
            pings += actions
                .iter()
                .filter(|a| matches!(a, Action::Send { msg: OverlayMessage::Ping { .. }, to } if *to != liar))
                .count();
        }
        assert!(pings <= MAX_CANDIDATE_PROBES, "{pings} probes");
        assert!(overlay.probes.len() <= MAX_CANDIDATE_PROBES + 1);
        assert!(overlay.candidate_probes_dropped() > 0);
    }

    #[test]
    fn lone_node_delivers_everything_to_itself() {
        let mut overlay = Overlay::new(Config::default(), node(1), SEED).unwrap();
        let actions = overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        assert!(actions.contains(&Action::Joined));
        let key = Id::hash(b"k");
        let actions = overlay.handle(
            Time(5),
            Event::Route {
                key,
                tag: 7,
                payload: b"x".to_vec(),
            },
        );
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::Deliver {
                tag: 7,
                hops: 0,
                ..
            }
        )));
    }

    #[test]
    fn a_suggested_node_is_probed_even_when_dead_and_admitted_when_it_answers() {
        let mut overlay = Overlay::new(Config::default(), node(1), SEED).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        let other = node(2);
        overlay.handle(
            Time(10),
            Event::Message {
                from: other,
                msg: OverlayMessage::Leave,
            },
        );
        assert!(!overlay.known_nodes().contains(&other), "declared dead");
        let actions = overlay.handle(Time(20), Event::Suggest { node: other });
        let nonce = ping_to(&actions, other).expect("the suggested node is pinged");
        overlay.handle(
            Time(30),
            Event::Message {
                from: other,
                msg: OverlayMessage::Pong { nonce },
            },
        );
        assert!(overlay.known_nodes().contains(&other), "admitted again");
        // Suggesting a node already held sends nothing.
        assert!(
            overlay
                .handle(Time(40), Event::Suggest { node: other })
                .is_empty()
        );
    }

    #[test]
    fn gossiped_ids_are_probed_not_trusted() {
        let mut overlay = Overlay::new(Config::default(), node(1), SEED).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        let ghost = node(9);
        let actions = overlay.handle(
            Time(10),
            Event::Message {
                from: node(2),
                msg: OverlayMessage::LeafSet {
                    left: vec![ghost],
                    right: vec![],
                },
            },
        );
        // The sender (a direct contact) is admitted; the ghost is only pinged.
        assert!(overlay.known_nodes().contains(&node(2)));
        assert!(!overlay.known_nodes().contains(&ghost));
        assert!(actions.iter().any(
            |a| matches!(a, Action::Send { to, msg: OverlayMessage::Ping { .. } } if *to == ghost)
        ));
        // No answer: after the probe timeout the ghost is remembered dead, never added.
        let later = Time::ZERO.plus(Duration::from_secs(3));
        overlay.handle(later, Event::Timer(TimerKind::ProbeExpiry));
        assert!(!overlay.known_nodes().contains(&ghost));
        let actions = overlay.handle(
            later,
            Event::Message {
                from: node(2),
                msg: OverlayMessage::Row {
                    row: 200,
                    entries: vec![ghost; 1000],
                },
            },
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Send { to, .. } if *to == ghost))
        );
    }

    #[test]
    fn row_exchange_replaces_an_entry_by_a_nearer_probed_candidate() {
        let me = id_at(0x5000, 0);
        let mut overlay = Overlay::new(Config::default(), me, SEED).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        // A full leaf set (and neighbourhood set), so that the candidates below are
        // wanted for the routing table only. They keep talking, so none is declared
        // dead while the ticks go by.
        fn leaf_members_speak(overlay: &mut Overlay, at: Time) {
            for i in 1..=8u16 {
                for id in [id_at(0x5000 + i, 0), id_at(0x5000 - i, 0)] {
                    announce_measured(overlay, id, at, 1000);
                }
            }
        }
        leaf_members_speak(&mut overlay, Time::ZERO);
        let far = id_at(0x7100, 0);
        announce_measured(&mut overlay, far, Time::ZERO, 50_000);
        assert!(overlay.routing_table().contains(&(0, 7, far)));
        let pings_to = ping_to;
        // An unasked-for row does not make the node probe ids for occupied slots.
        let other = id_at(0x7300, 0);
        let msg = OverlayMessage::Row {
            row: 0,
            entries: vec![other],
        };
        let actions = overlay.handle(Time(1), Event::Message { from: far, msg });
        assert_eq!(pings_to(&actions, other), None);

        // Ticks ask entries for their rows, rows in turn: wait for a request for row 0.
        fn next_row_0_request(overlay: &mut Overlay, ticks: &mut u64) -> (NodeId, Time) {
            for _ in 0..8 {
                *ticks += 1;
                let at = Time::from_secs(10 * *ticks);
                leaf_members_speak(overlay, at);
                let actions = overlay.handle(at, Event::Timer(TimerKind::Tick));
                let request = actions.iter().find_map(|a| match a {
                    Action::Send {
                        to,
                        msg: OverlayMessage::RowRequest { row: 0 },
                    } => Some(*to),
                    _ => None,
                });
                if let Some(to) = request {
                    return (to, at);
                }
            }
            panic!("no row-0 exchange within 8 ticks");
        }
        let mut ticks = 0;
        let (partner, at) = next_row_0_request(&mut overlay, &mut ticks);
        assert!(
            overlay
                .routing_table()
                .iter()
                .any(|(r, _, id)| *r <= 1 && *id == partner)
        );
        // Its answer names a node for the occupied slot (0, 7): probed, not trusted.
        let near = id_at(0x7200, 0);
        let msg = OverlayMessage::Row {
            row: 0,
            entries: vec![near],
        };
        let actions = overlay.handle(at, Event::Message { from: partner, msg });
        let nonce = pings_to(&actions, near).expect("the candidate is probed");
        assert!(!overlay.known_nodes().contains(&near));
        // It answers in 2 ms, nearer than the occupant's 50 ms: it takes the slot and
        // is told our RTT, so it can place us too.
        let pong = OverlayMessage::Pong { nonce };
        let actions = overlay.handle(
            at.plus(Duration::from_millis(2)),
            Event::Message {
                from: near,
                msg: pong,
            },
        );
        assert!(overlay.routing_table().contains(&(0, 7, near)));
        assert!(!overlay.known_nodes().contains(&far));
        assert!(actions.iter().any(|a| matches!(
            a,
            Action::Send { to, msg: OverlayMessage::Announce { rtt_us: 2000 } } if *to == near
        )));

        // A later exchange names a slower node: probed once, it loses (30 ms against
        // 2 ms), and the next exchange naming it costs no probe.
        let slow = id_at(0x7400, 0);
        for round in 0..2 {
            let (partner, at) = next_row_0_request(&mut overlay, &mut ticks);
            let msg = OverlayMessage::Row {
                row: 0,
                entries: vec![slow],
            };
            let actions = overlay.handle(at, Event::Message { from: partner, msg });
            let nonce = pings_to(&actions, slow);
            if round == 1 {
                assert_eq!(nonce, None, "an outranked candidate is not probed again");
                break;
            }
            let pong = OverlayMessage::Pong {
                nonce: nonce.expect("a new candidate is probed"),
            };
            let from = slow;
            overlay.handle(
                at.plus(Duration::from_millis(30)),
                Event::Message { from, msg: pong },
            );
            assert!(overlay.routing_table().contains(&(0, 7, near)));
            assert!(!overlay.known_nodes().contains(&slow));
        }
    }

    /// An id whose first two bytes are `high`, the rest `low`.
    fn id_at(high: u16, low: u8) -> NodeId {
        let mut bytes = [low; 32];
        bytes[..2].copy_from_slice(&high.to_be_bytes());
        NodeId(Id(bytes))
    }

    fn next_hop_of(overlay: &mut Overlay, key: Id) -> Option<NodeId> {
        let actions = overlay.handle(
            Time(1),
            Event::Route {
                key,
                tag: 1,
                payload: vec![],
            },
        );
        route_sent_to(&actions)
    }

    /// Where `actions` send a route message, if anywhere.
    fn route_sent_to(actions: &[Action]) -> Option<NodeId> {
        actions.iter().find_map(|a| match a {
            Action::Send {
                to,
                msg: OverlayMessage::Route { .. },
            } => Some(*to),
            _ => None,
        })
    }

    /// The nonce of the ping `actions` send to `id`, if any.
    fn ping_to(actions: &[Action], id: NodeId) -> Option<u64> {
        actions.iter().find_map(|a| match a {
            Action::Send {
                to,
                msg: OverlayMessage::Ping { nonce },
            } if *to == id => Some(*nonce),
            _ => None,
        })
    }

    /// `id` announces itself to `overlay` at `at` (claiming an RTT of 1 µs) and
    /// answers the ping that measures it `rtt_us` later, if one is sent.
    fn announce_measured(overlay: &mut Overlay, id: NodeId, at: Time, rtt_us: u64) {
        let msg = OverlayMessage::Announce { rtt_us: 1 };
        let actions = overlay.handle(at, Event::Message { from: id, msg });
        if let Some(nonce) = ping_to(&actions, id) {
            let msg = OverlayMessage::Pong { nonce };
            overlay.handle(Time(at.0 + rtt_us), Event::Message { from: id, msg });
        }
    }

    /// Node 0x5000…, joined, with a full leaf set close around it: 8 each side, each
    /// measured at 1 ms.
    fn joined_with_full_leaf_set() -> Overlay {
        let me = id_at(0x5000, 0);
        let mut overlay = Overlay::new(Config::default(), me, SEED).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        for i in 1..=8u16 {
            for id in [id_at(0x5000 + i, 0), id_at(0x5000 - i, 0)] {
                announce_measured(&mut overlay, id, Time::ZERO, 1000);
            }
        }
        overlay
    }

    #[test]
    fn routing_rule_leaf_set_then_table_then_rare_case() {
        let mut overlay = joined_with_full_leaf_set();
        let (left, right) = overlay.leaf_set();
        assert_eq!((left.len(), right.len()), (8, 8));
        // 1. In the leaf-set range: the numerically closest member.
        assert_eq!(
            next_hop_of(&mut overlay, id_at(0x5003, 1).0),
            Some(id_at(0x5003, 0))
        );
        assert_eq!(next_hop_of(&mut overlay, id_at(0x5000, 1).0), None, "ours");
        // 3. Row 0 has no entry for digit 7: the rare case takes a known node with at
        //    least as long a prefix (0) that is numerically closer.
        let nearer = id_at(0x6800, 0);
        announce_measured(&mut overlay, nearer, Time::ZERO, 1000);
        assert_eq!(next_hop_of(&mut overlay, id_at(0x7800, 0).0), Some(nearer));
        // 2. Once row 0 has an entry for digit 7, that entry is used.
        let seven = id_at(0x7100, 0);
        announce_measured(&mut overlay, seven, Time::ZERO, 1000);
        assert_eq!(next_hop_of(&mut overlay, id_at(0x7800, 0).0), Some(seven));
        // A nearer candidate for the same slot replaces it; a farther one does not.
        let seven_near = id_at(0x7200, 0);
        announce_measured(&mut overlay, seven_near, Time::ZERO, 10);
        let seven_far = id_at(0x7300, 0);
        announce_measured(&mut overlay, seven_far, Time::ZERO, 90_000);
        assert_eq!(
            next_hop_of(&mut overlay, id_at(0x7800, 0).0),
            Some(seven_near)
        );
    }

    #[test]
    fn a_claimed_rtt_is_ignored_and_only_a_measured_one_wins_a_slot() {
        let mut overlay = joined_with_full_leaf_set();
        let seven = id_at(0x7100, 0);
        announce_measured(&mut overlay, seven, Time::ZERO, 5_000);
        // A liar claims 1 µs and answers the measuring ping after 40 ms: it stays out.
        let liar = id_at(0x7200, 0);
        let msg = OverlayMessage::Announce { rtt_us: 1 };
        let actions = overlay.handle(Time(10), Event::Message { from: liar, msg });
        assert!(!overlay.routing_table().contains(&(0, 7, liar)));
        let nonce = ping_to(&actions, liar).expect("the announcer is measured");
        // A pong with a guessed nonce (before the ping could arrive) counts for nothing.
        let guessed = OverlayMessage::Pong {
            nonce: nonce.wrapping_add(1),
        };
        overlay.handle(
            Time(11),
            Event::Message {
                from: liar,
                msg: guessed,
            },
        );
        assert!(overlay.routing_table().contains(&(0, 7, seven)));
        let msg = OverlayMessage::Pong { nonce };
        overlay.handle(Time(40_010), Event::Message { from: liar, msg });
        assert!(overlay.routing_table().contains(&(0, 7, seven)));
        // An honest node that claims a poor RTT but answers in 1 ms takes the slot.
        let near = id_at(0x7300, 0);
        let msg = OverlayMessage::Announce { rtt_us: 900_000 };
        let actions = overlay.handle(Time(50_000), Event::Message { from: near, msg });
        let nonce = ping_to(&actions, near).expect("measured");
        let msg = OverlayMessage::Pong { nonce };
        overlay.handle(Time(51_000), Event::Message { from: near, msg });
        assert!(overlay.routing_table().contains(&(0, 7, near)));
        // Once measured, announcing again costs no ping.
        let msg = OverlayMessage::Announce { rtt_us: 1 };
        let actions = overlay.handle(Time(60_000), Event::Message { from: near, msg });
        assert!(!actions.iter().any(|a| matches!(
            a,
            Action::Send {
                msg: OverlayMessage::Ping { .. },
                ..
            }
        )));
    }

    #[test]
    fn a_diverse_route_takes_another_first_hop_and_never_ends_here_for_lack_of_one() {
        let mut overlay = joined_with_full_leaf_set();
        let (seven, nearer) = (id_at(0x7100, 0), id_at(0x6800, 0));
        for id in [seven, nearer] {
            announce_measured(&mut overlay, id, Time::ZERO, 1000);
        }
        let key = id_at(0x7800, 0).0;
        let first_hop = |overlay: &mut Overlay, skip: u8| {
            let event = Event::RouteDiverse {
                key,
                tag: 5,
                payload: Vec::new(),
                skip,
            };
            let actions = overlay.handle(Time(1), event);
            assert!(
                !actions.iter().any(|a| matches!(a, Action::Deliver { .. })),
                "a far key is never delivered here"
            );
            route_sent_to(&actions)
        };
        assert_eq!(first_hop(&mut overlay, 0), Some(seven), "the plain route");
        let second = first_hop(&mut overlay, 1).expect("a second first hop");
        assert_ne!(second, seven);
        // Asking to skip more hops than there are still leaves one.
        assert!(first_hop(&mut overlay, 200).is_some());
    }

    /// Node 0x5000…, joined, alone, allowing `max` ids per subnet.
    fn joined_allowing_per_subnet(max: usize) -> Overlay {
        let config = Config {
            max_ids_per_subnet: max,
            ..Config::default()
        };
        let mut overlay = Overlay::new(config, id_at(0x5000, 0), SEED).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        overlay
    }

    /// `id`, of `subnet`, says hello (its subnet noted by the driver first).
    fn hello_from(overlay: &mut Overlay, id: NodeId, subnet: u64) {
        overlay.note_subnet(id, Subnet(subnet));
        announce_measured(overlay, id, Time::ZERO, 1000);
    }

    #[test]
    fn a_subnet_holds_at_most_the_limit_of_leaf_places_the_closest_of_it_kept() {
        let mut overlay = joined_allowing_per_subnet(2);
        // Four nodes of subnet 7 just clockwise of us, and others around.
        for i in [3u16, 4, 5, 6] {
            hello_from(&mut overlay, id_at(0x5000 + i, 0), 7);
        }
        let members = |overlay: &Overlay| {
            let (left, right) = overlay.leaf_set();
            let mut all: Vec<NodeId> = left.into_iter().chain(right).collect();
            all.sort_unstable();
            all.dedup();
            all
        };
        let subnet_7 = [0x5001u16, 0x5003, 0x5004, 0x5005, 0x5006].map(|h| id_at(h, 0));
        let of_7 = |overlay: &Overlay| {
            members(overlay)
                .into_iter()
                .filter(|id| subnet_7.contains(id))
                .collect::<Vec<_>>()
        };
        assert_eq!(of_7(&overlay), vec![id_at(0x5003, 0), id_at(0x5004, 0)]);
        assert!(overlay.subnet_places_refused() >= 2);
        // A nearer node of subnet 7 pushes out the furthest of it.
        hello_from(&mut overlay, id_at(0x5001, 0), 7);
        assert_eq!(of_7(&overlay), vec![id_at(0x5001, 0), id_at(0x5003, 0)]);
        // Other subnets, and nodes whose subnet nobody named, are not limited by it.
        for i in [7u16, 8, 9] {
            hello_from(&mut overlay, id_at(0x5000 + i, 0), 100 + u64::from(i));
        }
        announce_measured(&mut overlay, id_at(0x500a, 0), Time::ZERO, 1000);
        for i in [7u16, 8, 9, 10] {
            assert!(members(&overlay).contains(&id_at(0x5000 + i, 0)), "{i}");
        }
        // The pushed-out node does not get back in by speaking again.
        let msg = OverlayMessage::LeafSetRequest;
        overlay.handle(
            Time(5),
            Event::Message {
                from: id_at(0x5004, 0),
                msg,
            },
        );
        assert!(!members(&overlay).contains(&id_at(0x5004, 0)));
    }

    #[test]
    fn a_subnet_holds_at_most_the_limit_of_slots_in_a_routing_table_row() {
        let mut overlay = joined_allowing_per_subnet(2);
        // Row 0 (first digits 1, 2, 3 differ from our 5): three nodes of subnet 9.
        for high in [0x1100u16, 0x2100, 0x3100] {
            hello_from(&mut overlay, id_at(high, 0), 9);
        }
        let row_0_of_9: Vec<NodeId> = overlay
            .routing_table()
            .into_iter()
            .filter(|(r, _, _)| *r == 0)
            .map(|(_, _, id)| id)
            .filter(|id| [id_at(0x1100, 0), id_at(0x2100, 0), id_at(0x3100, 0)].contains(id))
            .collect();
        assert_eq!(row_0_of_9.len(), 2, "{row_0_of_9:?}");
        assert!(!overlay.routing_table().contains(&(0, 3, id_at(0x3100, 0))));
        // Another subnet takes the free slot.
        hello_from(&mut overlay, id_at(0x3200, 0), 4);
        assert!(overlay.routing_table().contains(&(0, 3, id_at(0x3200, 0))));
        // A nearer node of subnet 9 may take the slot of one of its own: the row then
        // holds no more of it than before.
        overlay.note_subnet(id_at(0x1200, 0), Subnet(9));
        announce_measured(&mut overlay, id_at(0x1200, 0), Time::ZERO, 10);
        assert!(overlay.routing_table().contains(&(0, 1, id_at(0x1200, 0))));
        let config = Config {
            max_ids_per_subnet: 0,
            ..Config::default()
        };
        assert_eq!(config.validate(), Err(ConfigError::ZeroIdsPerSubnet));
    }

    #[test]
    fn the_subnet_book_stays_bounded_however_many_strangers_are_named() {
        let mut overlay = joined_allowing_per_subnet(2);
        for n in 0..(subnets::SUBNET_MEMORY as u32 + 500) {
            overlay.note_subnet(NodeId(Id::hash(&n.to_be_bytes())), Subnet(u64::from(n)));
        }
        assert!(overlay.subnets.len() <= subnets::SUBNET_MEMORY);
        // A tick forgets the nodes that are neither held nor probed.
        overlay.handle(Time::from_secs(10), Event::Timer(TimerKind::Tick));
        assert_eq!(overlay.subnets.len(), 0);
    }
}
