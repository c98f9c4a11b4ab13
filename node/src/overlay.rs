//! Pastry routing (Rowstron & Druschel 2001) as a sans-IO state machine.
//!
//! Owns: one node's routing state (leaf set, routing table, neighbourhood set), the
//! overlay wire messages ([`OverlayMessage`]), join, keepalive and failure detection,
//! leaf-set and lazy routing-table repair, graceful leave, hop-by-hop routing with
//! acknowledgements so that routes go around dead entries, and what makes leaf sets
//! converge under concurrent joins and failures (leaf-set pushes, and `Locate`: a route
//! to one's own id, answered by the closest node). `docs/overlay.md` walks through it.
//!
//! May use: [`crate::id`] only. It never reads a clock, a socket or a random source:
//! [`Overlay::handle`] is fed `(now, event)` and returns [`Action`]s (messages to send,
//! timers to set, deliveries, notifications). The simulator ([`crate::sim`]) and the
//! real node drive it the same way.
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

use std::cmp::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::id::{Id, NodeId};

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

/// Digit `i` of `id` with `b`-bit digits (b divides 8).
fn digit(id: &Id, i: usize, b: u8) -> usize {
    let bit = i * usize::from(b);
    let byte = id.0[bit / 8];
    let shift = 8 - usize::from(b) - bit % 8;
    usize::from((byte >> shift) & ((1u16 << b) - 1) as u8)
}

/// Leading `b`-bit digits shared by `a` and `c`.
fn shared_digits(a: &Id, c: &Id, b: u8) -> usize {
    for (i, (x, y)) in a.0.iter().zip(c.0.iter()).enumerate() {
        let diff = x ^ y;
        if diff != 0 {
            let bits = i * 8 + diff.leading_zeros() as usize;
            return bits / usize::from(b);
        }
    }
    256 / usize::from(b)
}

/// What a routed message carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Routed {
    /// A new node's join, routed to its own id.
    Join {
        /// The joining node.
        joiner: NodeId,
    },
    /// An application message for whichever node is responsible for the key.
    Lookup {
        /// The node that started the route.
        origin: NodeId,
        /// The origin's tag, handed back at delivery (e.g. a request number).
        tag: u64,
        /// Opaque application bytes.
        payload: Vec<u8>,
    },
    /// A member routes this to its own id: the live node closest to it (other than
    /// itself) answers with its leaf set. Repairs a leaf set that went wrong, e.g.
    /// after a join that ended at a node whose own state was still incomplete.
    Locate {
        /// The node whose neighbours are wanted.
        requester: NodeId,
    },
}

/// The overlay's wire protocol. Variants are only ever appended, never reordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverlayMessage {
    /// A message routed towards `key`, one hop. The receiver answers [`Self::RouteAck`].
    Route {
        /// The sender's number for this hop, echoed in the acknowledgement.
        hop_id: u64,
        /// Where the message is going.
        key: Id,
        /// Hops taken so far.
        hops: u8,
        /// What it carries.
        body: Routed,
    },
    /// The next hop received [`Self::Route`] `hop_id`.
    RouteAck {
        /// The hop acknowledged.
        hop_id: u64,
    },
    /// A node on a join's path gives the joiner the routing state it can use.
    JoinReply {
        /// Ids from the rows of the sender's routing table that the joiner shares.
        entries: Vec<NodeId>,
        /// The bootstrap node's neighbourhood set (first hop only; else empty).
        neighbours: Vec<NodeId>,
        /// The sender's leaf set: set only by the last node (the closest to the joiner).
        leaf_set: Option<Vec<NodeId>>,
    },
    /// Liveness probe; answered by [`Self::Pong`] with the same nonce.
    Ping {
        /// Echoed in the reply.
        nonce: u64,
    },
    /// Reply to [`Self::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// "I exist and you are in my state": sent by a node that measured its RTT to you.
    Announce {
        /// The RTT the sender measured to the receiver.
        rtt_us: RttMicros,
    },
    /// Ask for the receiver's leaf set; answered by [`Self::LeafSet`].
    LeafSetRequest,
    /// A node's leaf set (an answer, or a periodic push to its nearest neighbours).
    LeafSet {
        /// Counter-clockwise side, closest first.
        left: Vec<NodeId>,
        /// Clockwise side, closest first.
        right: Vec<NodeId>,
    },
    /// Ask for one row of the receiver's routing table (lazy hole repair).
    RowRequest {
        /// The row wanted.
        row: u8,
    },
    /// One row of the sender's routing table.
    Row {
        /// The row number.
        row: u8,
        /// The ids in that row.
        entries: Vec<NodeId>,
    },
    /// The sender is leaving the overlay for good.
    Leave,
}

/// Kinds of timers the overlay asks its driver to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Periodic maintenance: keepalives, failure detection, leaf-set pushes.
    Tick,
    /// Expire probes that went unanswered.
    ProbeExpiry,
    /// The acknowledgement of forwarded hop `hop_id` is due.
    RouteAck {
        /// The hop.
        hop_id: u64,
    },
    /// A join has had its time.
    JoinTimeout,
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
    /// Leave the overlay gracefully.
    Leave,
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
    /// Counter-clockwise leaf-set half, closest first.
    left: Vec<Entry>,
    /// Clockwise leaf-set half, closest first.
    right: Vec<Entry>,
    /// Routing table rows; a row is allocated (given `columns` slots) only when used.
    rows: Vec<Vec<Option<Entry>>>,
    /// Neighbourhood set, lowest RTT first.
    neighbours: Vec<Entry>,
    watches: Vec<Watch>,
    probes: Vec<Probe>,
    probe_timer_at: Option<Time>,
    pending: Vec<PendingHop>,
    dead: Vec<(NodeId, Time)>,
    next_nonce: u64,
    ticks: u32,
    ticking: bool,
    table_cursor: usize,
    locate_rounds: u32,
}

impl Overlay {
    /// A node with id `me` that is not yet part of any overlay (feed it [`Event::Join`]).
    pub fn new(config: Config, me: NodeId) -> Result<Overlay, ConfigError> {
        config.validate()?;
        Ok(Overlay {
            config,
            me,
            phase: Phase::Idle,
            left: Vec::new(),
            right: Vec::new(),
            rows: Vec::new(),
            neighbours: Vec::new(),
            watches: Vec::new(),
            probes: Vec::new(),
            probe_timer_at: None,
            pending: Vec::new(),
            dead: Vec::new(),
            next_nonce: 1,
            ticks: 0,
            ticking: false,
            table_cursor: 0,
            locate_rounds: 0,
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
        (
            self.left.iter().map(|e| e.id).collect(),
            self.right.iter().map(|e| e.id).collect(),
        )
    }

    /// The routing-table entries as `(row, column, id)`.
    pub fn routing_table(&self) -> Vec<(usize, usize, NodeId)> {
        let mut out = Vec::new();
        for (r, row) in self.rows.iter().enumerate() {
            for (c, slot) in row.iter().enumerate() {
                if let Some(entry) = slot {
                    out.push((r, c, entry.id));
                }
            }
        }
        out
    }

    /// The neighbourhood set, lowest RTT first.
    pub fn neighbourhood(&self) -> Vec<NodeId> {
        self.neighbours.iter().map(|e| e.id).collect()
    }

    /// Routing-state entries: distinct leaf-set members + routing-table entries +
    /// neighbourhood-set entries (the paper's measure of state size).
    pub fn state_entries(&self) -> usize {
        let mut leaf: Vec<NodeId> = self.left.iter().chain(&self.right).map(|e| e.id).collect();
        leaf.sort_unstable();
        leaf.dedup();
        leaf.len() + self.routing_table().len() + self.neighbours.len()
    }

    /// Every id this node holds in any of its tables (sorted, distinct).
    pub fn known_nodes(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .left
            .iter()
            .chain(&self.right)
            .chain(&self.neighbours)
            .map(|e| e.id)
            .chain(self.routing_table().into_iter().map(|(_, _, id)| id))
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
            Event::Leave => self.leave(out),
        }
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
            .left
            .iter()
            .chain(&self.right)
            .chain(&self.neighbours)
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
        let n = self.next_nonce;
        self.next_nonce += 1;
        n
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
                let entered_leaf = self.admit(from, rtt, out);
                let joining = matches!(self.phase, Phase::Joining { .. });
                if probe.purpose == ProbePurpose::Candidate
                    && (joining || entered_leaf)
                    && self.holds(&from)
                {
                    out.push(Action::Send {
                        to: from,
                        msg: OverlayMessage::Announce { rtt_us: rtt },
                    });
                }
                self.maybe_joined(now, out);
            }
            OverlayMessage::Announce { rtt_us } => {
                self.admit(from, rtt_us, out);
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
                let entries = self
                    .rows
                    .get(row)
                    .map(|r| r.iter().flatten().map(|e| e.id).collect())
                    .unwrap_or_default();
                let msg = OverlayMessage::Row {
                    row: row as u8,
                    entries,
                };
                out.push(Action::Send { to: from, msg });
            }
            OverlayMessage::Row { entries, .. } => {
                for id in entries.into_iter().take(self.config.columns()) {
                    self.consider(now, id, out);
                }
            }
            OverlayMessage::Leave => {
                self.declare_dead(now, from, out);
            }
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
        } else if self.leaf_wants(&from) {
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
        let far: Vec<NodeId> = self
            .rows
            .first()
            .map(|row| row.iter().flatten().map(|e| e.id).collect())
            .unwrap_or_default();
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
                .rows
                .iter()
                .take(p + 1)
                .skip(first_row)
                .flat_map(|row| row.iter().flatten().map(|e| e.id))
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
        if self.in_leaf_range(key) {
            let mut best = usable(&self.me).then_some(self.me);
            for e in self.left.iter().chain(&self.right) {
                if usable(&e.id)
                    && best.is_none_or(|b| key.cmp_closeness(&e.id.0, &b.0) == Ordering::Less)
                {
                    best = Some(e.id);
                }
            }
            return best.filter(|b| *b != self.me);
        }
        // 2. The routing-table entry sharing one more digit.
        let b = self.config.digit_bits;
        let p = shared_digits(&self.me.0, key, b);
        if p >= self.config.rows() {
            return None;
        }
        if let Some(Some(e)) = self.rows.get(p).and_then(|row| row.get(digit(key, p, b)))
            && usable(&e.id)
        {
            return Some(e.id);
        }
        // 3. Rare case: any known node with at least as long a shared prefix that is
        //    numerically closer; prefer the longest prefix, then the closest.
        let mut best: Option<(usize, NodeId)> = None;
        let all = self
            .left
            .iter()
            .chain(&self.right)
            .chain(&self.neighbours)
            .chain(self.rows.iter().flat_map(|r| r.iter().flatten()));
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
        let b = self.config.digit_bits;
        let r = shared_digits(&self.me.0, &id.0, b);
        let in_table = self
            .rows
            .get(r)
            .and_then(|row| row.get(digit(&id.0, r, b)))
            .and_then(|slot| slot.filter(|e| e.id == *id));
        self.left
            .iter()
            .chain(&self.right)
            .chain(&self.neighbours)
            .chain(in_table.iter())
            .filter(|e| e.id == *id)
            .map(|e| e.rtt)
            .min()
            .unwrap_or(RTT_UNKNOWN)
    }

    fn in_leaf_range(&self, key: &Id) -> bool {
        let half = self.config.half();
        let cw = self.me.0.clockwise_to(key);
        let ccw = key.clockwise_to(&self.me.0);
        let right_cover = if self.right.len() < half {
            Id::MAX
        } else {
            self.right
                .last()
                .map_or(Id::MAX, |e| self.me.0.clockwise_to(&e.id.0))
        };
        let left_cover = if self.left.len() < half {
            Id::MAX
        } else {
            self.left
                .last()
                .map_or(Id::MAX, |e| e.id.0.clockwise_to(&self.me.0))
        };
        cw <= right_cover || ccw <= left_cover
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

        // Keep one watch per distinct leaf member.
        let mut members: Vec<NodeId> = self.left.iter().chain(&self.right).map(|e| e.id).collect();
        members.sort_unstable();
        members.dedup();
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

    /// Probes the next few routing-table entries (round robin over the table).
    fn check_table_entries(&mut self, now: Time, out: &mut Vec<Action>) {
        let columns = self.config.columns();
        let slots = self.rows.len() * columns;
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
            let Some(Some(entry)) = self.rows.get(r).and_then(|row| row.get(c)) else {
                continue;
            };
            let id = entry.id;
            checked += 1;
            if self.in_leaf(&id) || self.probes.iter().any(|p| p.id == id) {
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
                    ProbePurpose::Keepalive => {}
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
            if !self.in_leaf(&id) {
                self.drop_from_table(id, out);
                self.neighbours.retain(|e| e.id != id);
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
        if self.in_leaf(&hop.to) && !hop.resent && hop.tries < self.config.route_retries {
            hop.resent = true;
            hop.tries += 1;
            self.forward(now, hop, out);
            return;
        }
        // Routing goes on around the silent node. A routing-table entry is dropped at
        // once (and its slot repaired lazily); a leaf member is left to the keepalives,
        // which decide with several misses, so one lost message cannot evict it.
        if !self.in_leaf(&hop.to) {
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
        self.send_probe_attempt(now, id, purpose, 1, out);
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
        if id == self.me || self.is_dead(&id) || self.in_leaf(&id) {
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
        let wanted_in_leaf = self.leaf_wants(&id);
        if !wanted_in_leaf && self.holds(&id) {
            return;
        }
        let joining = matches!(self.phase, Phase::Joining { .. });
        if joining || wanted_in_leaf || self.slot_free(&id) {
            self.send_probe(now, id, ProbePurpose::Candidate, out);
        }
    }

    fn holds(&self, id: &NodeId) -> bool {
        self.in_leaf(id) || self.in_table(id) || self.neighbours.iter().any(|e| e.id == *id)
    }

    fn in_leaf(&self, id: &NodeId) -> bool {
        self.left.iter().chain(&self.right).any(|e| e.id == *id)
    }

    fn in_table(&self, id: &NodeId) -> bool {
        let b = self.config.digit_bits;
        let r = shared_digits(&self.me.0, &id.0, b);
        matches!(
            self.rows.get(r).and_then(|row| row.get(digit(&id.0, r, b))),
            Some(Some(e)) if e.id == *id
        )
    }

    fn slot_free(&self, id: &NodeId) -> bool {
        let b = self.config.digit_bits;
        let r = shared_digits(&self.me.0, &id.0, b);
        r < self.config.rows()
            && !matches!(
                self.rows.get(r).and_then(|row| row.get(digit(&id.0, r, b))),
                Some(Some(_))
            )
    }

    fn leaf_wants(&self, id: &NodeId) -> bool {
        if *id == self.me {
            return false;
        }
        let half = self.config.half();
        let cw = self.me.0.clockwise_to(&id.0);
        let ccw = id.0.clockwise_to(&self.me.0);
        let wants_right = !self.right.iter().any(|e| e.id == *id)
            && (self.right.len() < half
                || self
                    .right
                    .last()
                    .is_some_and(|e| cw < self.me.0.clockwise_to(&e.id.0)));
        let wants_left = !self.left.iter().any(|e| e.id == *id)
            && (self.left.len() < half
                || self
                    .left
                    .last()
                    .is_some_and(|e| ccw < e.id.0.clockwise_to(&self.me.0)));
        wants_right || wants_left
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
        let half = self.config.half();
        let me = self.me.0;
        let mut leaf_changed = false;
        // Clockwise side.
        if let Some(e) = self.right.iter_mut().find(|e| e.id == id) {
            e.rtt = e.rtt.min(rtt);
        } else {
            let cw = me.clockwise_to(&id.0);
            let pos = self
                .right
                .partition_point(|e| me.clockwise_to(&e.id.0) < cw);
            if pos < half {
                self.right.insert(pos, Entry { id, rtt });
                self.right.truncate(half);
                leaf_changed = true;
            }
        }
        // Counter-clockwise side.
        if let Some(e) = self.left.iter_mut().find(|e| e.id == id) {
            e.rtt = e.rtt.min(rtt);
        } else {
            let ccw = id.0.clockwise_to(&me);
            let pos = self
                .left
                .partition_point(|e| e.id.0.clockwise_to(&me) < ccw);
            if pos < half {
                self.left.insert(pos, Entry { id, rtt });
                self.left.truncate(half);
                leaf_changed = true;
            }
        }
        // Routing table: empty slot, or a lower RTT than the occupant.
        let b = self.config.digit_bits;
        let r = shared_digits(&me, &id.0, b);
        if r < self.config.rows() {
            if self.rows.len() <= r {
                self.rows.resize_with(r + 1, Vec::new);
            }
            let columns = self.config.columns();
            let row = &mut self.rows[r];
            if row.is_empty() {
                row.resize(columns, None);
            }
            let slot = &mut row[digit(&id.0, r, b)];
            match slot {
                Some(e) if e.id == id => e.rtt = e.rtt.min(rtt),
                Some(e) if e.rtt <= rtt => {}
                _ => *slot = Some(Entry { id, rtt }),
            }
        }
        // Neighbourhood set: the M lowest measured RTTs.
        if rtt != RTT_UNKNOWN && self.config.neighbourhood_size > 0 {
            if let Some(pos) = self.neighbours.iter().position(|e| e.id == id) {
                self.neighbours.remove(pos);
            }
            let pos = self
                .neighbours
                .partition_point(|e| (e.rtt, e.id) < (rtt, id));
            if pos < self.config.neighbourhood_size {
                self.neighbours.insert(pos, Entry { id, rtt });
                self.neighbours.truncate(self.config.neighbourhood_size);
            }
        }
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
        let b = self.config.digit_bits;
        let r = shared_digits(&self.me.0, &id.0, b);
        let column = digit(&id.0, r, b);
        let Some(slot) = self.rows.get_mut(r).and_then(|row| row.get_mut(column)) else {
            return;
        };
        if !matches!(slot, Some(e) if e.id == id) {
            return;
        }
        *slot = None;
        // Lazy repair: ask another node of the same row (or the next) for its row.
        let ask = [r, r + 1].into_iter().find_map(|row_no| {
            self.rows.get(row_no).and_then(|row| {
                row.iter()
                    .flatten()
                    .find(|e| e.id != id)
                    .map(|e| (row_no, e.id))
            })
        });
        // A node of row r + 1 shares r + 1 digits with us, so its row r fits us too.
        if let Some((_, to)) = ask {
            out.push(Action::Send {
                to,
                msg: OverlayMessage::RowRequest { row: r as u8 },
            });
        }
    }

    fn declare_dead(&mut self, now: Time, id: NodeId, out: &mut Vec<Action>) {
        self.remember_dead(now, id);
        let was_right = self.right.iter().any(|e| e.id == id);
        let was_left = self.left.iter().any(|e| e.id == id);
        self.right.retain(|e| e.id != id);
        self.left.retain(|e| e.id != id);
        self.neighbours.retain(|e| e.id != id);
        self.watches.retain(|w| w.id != id);
        self.probes.retain(|p| p.id != id);
        self.drop_from_table(id, out);
        out.push(Action::NodeDead(id));
        if was_left || was_right {
            out.push(Action::LeafSetChanged);
            // Repair: the live member furthest on that side knows the nodes beyond.
            let mut ask = Vec::new();
            if was_right {
                ask.extend(self.right.last().or(self.left.last()).map(|e| e.id));
            }
            if was_left {
                ask.extend(self.left.last().or(self.right.last()).map(|e| e.id));
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

fn tag_of(body: &Routed) -> u64 {
    match body {
        Routed::Lookup { tag, .. } => *tag,
        Routed::Join { .. } | Routed::Locate { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn node(n: u8) -> NodeId {
        NodeId(Id::hash(&[n]))
    }

    #[test]
    fn digits_for_every_b() {
        let id = Id::hash(b"digits");
        for i in 0..64 {
            assert_eq!(digit(&id, i, 4), usize::from(id.digit(i)));
        }
        assert_eq!(digit(&id, 0, 8), usize::from(id.0[0]));
        assert_eq!(digit(&id, 0, 1), usize::from(id.0[0] >> 7));
        let other = id.with_digit(9, id.digit(9) ^ 1);
        assert_eq!(shared_digits(&id, &other, 4), 9);
        assert_eq!(shared_digits(&id, &other, 4), id.shared_prefix_len(&other));
        assert_eq!(shared_digits(&id, &id, 2), 128);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad_b = Config {
            digit_bits: 3,
            ..Config::default()
        };
        assert_eq!(
            Overlay::new(bad_b, node(1)).err(),
            Some(ConfigError::DigitBits { got: 3 })
        );
        let odd_l = Config {
            leaf_set_size: 15,
            ..Config::default()
        };
        assert_eq!(odd_l.validate(), Err(ConfigError::LeafSetSize { got: 15 }));
    }

    #[test]
    fn lone_node_delivers_everything_to_itself() {
        let mut overlay = Overlay::new(Config::default(), node(1)).unwrap();
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
    fn gossiped_ids_are_probed_not_trusted() {
        let mut overlay = Overlay::new(Config::default(), node(1)).unwrap();
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
    fn wire_encoding_is_pinned() {
        // Variant index (postcard varint) then fields: Ping = 3, nonce 300 = ac 02.
        let bytes = postcard::to_stdvec(&OverlayMessage::Ping { nonce: 300 }).unwrap();
        assert_eq!(bytes, [0x03, 0xac, 0x02]);
        let bytes = postcard::to_stdvec(&OverlayMessage::Leave).unwrap();
        assert_eq!(bytes, [0x0a]);
        let msg = OverlayMessage::RowRequest { row: 2 };
        let bytes = postcard::to_stdvec(&msg).unwrap();
        assert_eq!(bytes, [0x08, 0x02]);
        assert_eq!(postcard::from_bytes::<OverlayMessage>(&bytes).unwrap(), msg);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = postcard::from_bytes::<OverlayMessage>(&bytes);
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
        actions.iter().find_map(|a| match a {
            Action::Send {
                to,
                msg: OverlayMessage::Route { .. },
            } => Some(*to),
            _ => None,
        })
    }

    #[test]
    fn routing_rule_leaf_set_then_table_then_rare_case() {
        let me = id_at(0x5000, 0);
        let mut overlay = Overlay::new(Config::default(), me).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        // A full leaf set close around us: 8 each side.
        for i in 1..=8u16 {
            for id in [id_at(0x5000 + i, 0), id_at(0x5000 - i, 0)] {
                let msg = OverlayMessage::Announce { rtt_us: 1000 };
                overlay.handle(Time::ZERO, Event::Message { from: id, msg });
            }
        }
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
        let msg = OverlayMessage::Announce { rtt_us: 1000 };
        overlay.handle(Time::ZERO, Event::Message { from: nearer, msg });
        assert_eq!(next_hop_of(&mut overlay, id_at(0x7800, 0).0), Some(nearer));
        // 2. Once row 0 has an entry for digit 7, that entry is used.
        let seven = id_at(0x7100, 0);
        let msg = OverlayMessage::Announce { rtt_us: 1000 };
        overlay.handle(Time::ZERO, Event::Message { from: seven, msg });
        assert_eq!(next_hop_of(&mut overlay, id_at(0x7800, 0).0), Some(seven));
        // A nearer candidate for the same slot replaces it; a farther one does not.
        let seven_near = id_at(0x7200, 0);
        let msg = OverlayMessage::Announce { rtt_us: 10 };
        overlay.handle(
            Time::ZERO,
            Event::Message {
                from: seven_near,
                msg,
            },
        );
        let seven_far = id_at(0x7300, 0);
        let msg = OverlayMessage::Announce { rtt_us: 90_000 };
        overlay.handle(
            Time::ZERO,
            Event::Message {
                from: seven_far,
                msg,
            },
        );
        assert_eq!(
            next_hop_of(&mut overlay, id_at(0x7800, 0).0),
            Some(seven_near)
        );
    }
}
