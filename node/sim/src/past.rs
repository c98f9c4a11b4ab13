//! PAST in the simulator: every node a [`Holder`] over a [`MemoryStore`], and the
//! `cairn_past` client operations ([`Operation`]) driven through the simulator's one
//! event queue, as the daemon drives them over sockets (`cairn_daemon`'s `drive`).
//!
//! Owns: [`PastSetup`] (thresholds, capacity, timeouts), [`SimFailure`] (the driver's
//! failure fed back to an operation), [`PastStats`], [`Started`] (a handle on a running
//! operation's output), the generic entry point [`Sim::start`] ("run this operation
//! from node X") with [`Sim::run_until_done`], and [`SaltedInsert`] (a block's insert
//! with file diversion, the pipeline's retry under salts 1, 2, ...).
//!
//! May use: the parent's queue, clock, latency and loss model; `cairn_past`'s
//! machines and `Holder::answer`; `cairn_store::MemoryStore`.
//!
//! # How a command is carried out
//! - [`Command::Locate`] from node `o`: answered from `o`'s own leaf set when that
//!   surely covers the key (the daemon's `locate_in_leaf_set`), else routed through
//!   the simulated overlays as a real `Routed::Lookup` carrying
//!   [`PastRouted::Locate`]; the node it is delivered to answers with
//!   `Overlay::located_answer` (itself first, then the closest of its leaf set), and
//!   the answer travels back to `o` with latency and loss. `o`'s overlay checks it
//!   (`Overlay::check_located`): a rejected answer is dropped and counted, a
//!   suspicious one (the density test) routes the locate again through another first
//!   hop. A route given up, or no answer within [`PastSetup::locate_timeout`], is an
//!   `Err`.
//! - [`Command::Ask`]: a message to the node, with the latency and loss of any other
//!   message. A live node answers with [`Holder::answer`]; an [`Answer::Divert`] runs a
//!   [`ReplicaDiversion`] from that node (candidates from its own leaf set, as the
//!   daemon's `divert`), whose outcome is the answer, and keeps the pointer. With
//!   [`PastSetup::maintenance`], an [`Answer::Order`] runs an `OrderCheck` from that
//!   node and [`Holder::apply`]s its verdict (the daemon's `obey`), and a `Reconcile`
//!   or a `Summary` goes to the node's maintenance schedule. The answer travels back. A crashed
//!   node never answers: the origin's per-ask timer ([`PastSetup::ask_timeout`]) feeds
//!   `Err(SimFailure::Timeout)`, or with [`PastSetup::refuse_when_down`] the refusal
//!   comes back after a round trip (`SimFailure::Down`), as from a killed process's
//!   closed port.
//! - A routed locate that fails is routed again, [`PastSetup::locate_attempts`] times
//!   in all (the daemon's `locate`).
//! - [`Command::Pace`]: answered when the node's repair budget allows
//!   ([`crate::maintenance`]'s token bucket), at once without maintenance.
//! - An operation whose origin has crashed (or crashed and restarted: a new life) gets
//!   `Err(SimFailure::Stopped)` for every command, so it decides rather than hangs.
//!
//! Deterministic like the rest: operations, asks and locates live in `BTreeMap`s keyed
//! by numbers handed out in order (a locate's tag comes from its origin's overlay,
//! unguessable but fixed by the run's seed), and everything happens through the queue.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::crypto::KeyPair;
use cairn_core::id::{BlockHash, FileId, Id, NodeId, PlacementKey};
use cairn_overlay::{Event, LocatedVerdict, Time, confirmed_by_another_route};
use cairn_past::answer::Answer;
use cairn_past::authority::RingView;
use cairn_past::divert::{Diverted, ReplicaDiversion};
use cairn_past::insert::{BlockInsert, InsertError, OwnedFragments};
use cairn_past::maintenance::{Change, OrderCheck, orders::Verdict};
use cairn_past::operation::{AskId, Command, Input, Operation, Progress};
use cairn_past::{
    Holder, NodeAddress, PastConfig, PastRequest, PastResponse, PastRouted, Refusal, closest,
    closest_in_leaf_set,
};
use cairn_store::MemoryStore;

use crate::maintenance::{Job, MaintenanceSetup, NodeMaintenance};
use crate::{NodeState, Sim, SimEvent};

/// The Unix time the simulated clock starts at (receipts and grants carry Unix seconds).
pub const SIM_EPOCH_UNIX: u64 = 1_800_000_000;

/// Tags of PAST locates carry this bit, so the overlay's deliveries tell them apart
/// from the routing experiment's lookups.
const PAST_TAG: u64 = 1 << 63;

/// How the simulated nodes run PAST.
#[derive(Clone, Debug, PartialEq)]
pub struct PastSetup {
    /// The holders' thresholds (`t_pri`, `t_div`).
    pub config: PastConfig,
    /// Capacity of a node added by [`Sim::add_node`] (bytes of fragment bodies).
    pub capacity: u64,
    /// How long an origin waits for an answer to one ask.
    pub ask_timeout: Duration,
    /// How long an origin waits for a routed locate's answer.
    pub locate_timeout: Duration,
    /// Routed locates tried before the locate fails (the daemon's `locate` tries 3).
    pub locate_attempts: u32,
    /// A request to a node that is down is refused after a round trip (as a killed
    /// process's closed port refuses a connection on loopback) instead of timing out.
    pub refuse_when_down: bool,
    /// Run the daemon's maintenance on every node ([`crate::maintenance`]); `None`:
    /// maintenance orders are refused and nobody reconciles.
    pub maintenance: Option<MaintenanceSetup>,
}

impl Default for PastSetup {
    fn default() -> PastSetup {
        PastSetup {
            config: PastConfig::default(),
            capacity: 1 << 20,
            ask_timeout: Duration::from_secs(2),
            locate_timeout: Duration::from_secs(5),
            locate_attempts: 3,
            refuse_when_down: false,
            maintenance: None,
        }
    }
}

/// Why the simulator could not get an answer: what it feeds an operation in place of
/// one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimFailure {
    /// The node did not answer within the ask timeout (crashed, or a message was lost).
    #[error("node {0} did not answer in time")]
    Timeout(NodeId),
    /// The locate's route was given up, or its answer did not come in time.
    #[error("the locate of key {0} failed")]
    Locate(Id),
    /// The node is not one of the simulated nodes.
    #[error("node {0} is unknown to the simulator")]
    Unknown(NodeId),
    /// The operation's origin has crashed or left.
    #[error("the origin has stopped")]
    Stopped,
    /// The node is down and refused the connection ([`PastSetup::refuse_when_down`]).
    #[error("node {0} is down (connection refused)")]
    Down(NodeId),
}

/// Counters of the PAST traffic of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PastStats {
    /// Operations started (diversions included).
    pub operations: u64,
    /// Locates answered from the origin's leaf set.
    pub locates_local: u64,
    /// Locates routed through the overlay.
    pub locates_routed: u64,
    /// Locates that failed (route given up, or timed out).
    pub locates_failed: u64,
    /// Routed locates' answers the origin's overlay rejected (`check_located`).
    pub locate_answers_rejected: u64,
    /// Routed locates' answers that failed the density test: routed again elsewhere.
    pub locate_answers_suspicious: u64,
    /// Requests sent.
    pub asks: u64,
    /// Requests or answers lost by the loss model.
    pub messages_lost: u64,
    /// Requests that reached a crashed node.
    pub asks_to_dead: u64,
    /// Asks whose timer fired first.
    pub asks_timed_out: u64,
    /// Primary stores refused for room and diverted by their holder (attempts).
    pub diversions: u64,
    /// Of those, fragments a diversion placed.
    pub fragments_diverted: u64,
}

/// A running (or finished) operation whose output is a `T`: take it with
/// [`Sim::take_output`] or [`Sim::run_until_done`].
#[derive(Debug)]
pub struct Started<T> {
    id: u64,
    _output: PhantomData<fn() -> T>,
}

impl<T> Clone for Started<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Started<T> {}

/// One PAST node's state beside its overlay.
pub(crate) struct PastNode {
    pub(crate) holder: Holder<MemoryStore>,
    /// Its maintenance worker's state (reset by a restart, as a new process's).
    pub(crate) maintenance: NodeMaintenance,
}

impl PastNode {
    pub(crate) fn new(key: KeyPair, capacity: u64, config: PastConfig) -> PastNode {
        PastNode {
            holder: Holder::new(MemoryStore::new(capacity), Arc::new(key), config),
            maintenance: NodeMaintenance::default(),
        }
    }

    /// The node's process started again on its data: the store stays, the rest goes.
    pub(crate) fn restarted(&mut self) {
        self.maintenance = NodeMaintenance::default();
    }
}

/// An [`Operation`] with its output type erased, so that one map holds them all.
pub(crate) trait Driven {
    fn first(&mut self) -> Step;
    fn feed(&mut self, input: Input<SimFailure>) -> Step;
    fn give_up(&mut self) -> Box<dyn Any>;
}

pub(crate) enum Step {
    Continue(Vec<Command>),
    Done(Box<dyn Any>),
}

fn step<T: 'static>(progress: Progress<T>) -> Step {
    match progress {
        Progress::Continue(commands) => Step::Continue(commands),
        Progress::Done(output) => Step::Done(Box::new(output)),
    }
}

impl<O> Driven for O
where
    O: Operation<Failure = SimFailure>,
    O::Output: 'static,
{
    fn first(&mut self) -> Step {
        step(Operation::start(self))
    }
    fn feed(&mut self, input: Input<SimFailure>) -> Step {
        step(Operation::handle(self, input))
    }
    fn give_up(&mut self) -> Box<dyn Any> {
        Box::new(Operation::stalled(self))
    }
}

/// What happens to an operation's output.
pub(crate) enum Then {
    /// Kept for whoever started it ([`Sim::take_output`]).
    Keep,
    /// A replica diversion run by node `origin` for a store asked by `requester`: its
    /// outcome is the answer to that ask.
    AnswerStore {
        op: u64,
        ask: AskId,
        requester: u32,
        key: PlacementKey,
        index: u16,
    },
    /// An [`OrderCheck`] run by holder `origin` for an order asked by `requester`:
    /// applied to the holder's store, and the result is the answer to that ask.
    Obey { op: u64, ask: AskId, requester: u32 },
    /// A maintenance operation of node `origin`, whose outcome maintenance takes.
    Maintenance(Job),
}

struct RunningOp {
    origin: u32,
    /// The origin's life when it started: an operation outlives no crash.
    life: u32,
    op: Box<dyn Driven>,
    asks: BTreeSet<AskId>,
    /// The tag of the locate it waits for.
    locate: Option<u64>,
    then: Then,
}

/// What an operation waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    Locate(u64),
    Ask(AskId),
}

/// PAST's events in the one queue.
pub(crate) enum PastEvent {
    /// An operation's first step.
    Start { op: u64 },
    /// A request arrives at `to`.
    Ask {
        op: u64,
        ask: AskId,
        from: u32,
        to: u32,
        request: PastRequest,
    },
    /// An answer arrives at the origin `to`.
    Reply {
        op: u64,
        ask: AskId,
        to: u32,
        response: PastResponse,
    },
    /// A locate's answer arrives at the origin `to`, from `from` (`None`: the origin's
    /// own leaf set answered, nothing to check).
    Located {
        op: u64,
        tag: u64,
        to: u32,
        from: Option<NodeId>,
        nodes: Vec<NodeId>,
    },
    /// The driver grants a [`Command::Pace`] (when the node's repair budget allows).
    Paced { op: u64, ask: AskId },
    /// What `op` waits for failed (a timer, or at once).
    Fail {
        op: u64,
        what: Waiting,
        failure: SimFailure,
    },
}

/// A routed locate in flight.
#[derive(Clone, Copy)]
struct RoutedLocate {
    op: u64,
    key: Id,
    count: u16,
    attempt: u32,
}

/// The simulator's PAST state.
#[derive(Default)]
pub(crate) struct PastState {
    ops: BTreeMap<u64, RunningOp>,
    next_op: u64,
    /// Routed locates in flight: tag → operation, key, count and attempt.
    locates: BTreeMap<u64, RoutedLocate>,
    /// Suspicious answers an operation's locate has had so far (by operation).
    suspicious: BTreeMap<u64, Vec<Vec<NodeId>>>,
    finished: BTreeMap<u64, Box<dyn Any>>,
    newly_finished: u64,
    pub(crate) stats: PastStats,
    pub(crate) maintenance: crate::maintenance::MaintenanceStats,
}

impl Sim {
    /// The PAST counters of the run.
    pub fn past_stats(&self) -> &PastStats {
        &self.past.stats
    }

    /// What node `i` knows of the ring, as its holder's checks of authority see it:
    /// its leaf set.
    pub fn ring_members(&self, i: u32) -> Vec<NodeId> {
        let (left, right) = self.nodes[i as usize].overlay.leaf_set();
        left.into_iter().chain(right).collect()
    }

    /// What the node `id` knows of the ring ([`Sim::ring_members`]; empty if unknown).
    pub fn ring_of(&self, id: &NodeId) -> Vec<NodeId> {
        self.index
            .get(id)
            .map(|&i| self.ring_members(i))
            .unwrap_or_default()
    }

    /// The holder of node `id` (`None` without [`crate::SimConfig::past`]).
    pub fn holder(&self, id: &NodeId) -> Option<&Holder<MemoryStore>> {
        let &i = self.index.get(id)?;
        self.nodes[i as usize].past.as_ref().map(|p| &p.holder)
    }

    /// Every simulated node's holder, in the order the nodes were made (crashed ones
    /// included: their stores are still there, unreachable).
    pub fn holders(&self) -> impl Iterator<Item = (NodeId, NodeState, &Holder<MemoryStore>)> {
        self.nodes.iter().filter_map(|n| {
            n.past
                .as_ref()
                .map(|p| (n.overlay.id(), n.state, &p.holder))
        })
    }

    /// The address a simulated node "listens" at (made up from its number).
    pub fn address_of(&self, id: &NodeId) -> Option<NodeAddress> {
        self.index.get(id).map(|&i| self.address(i))
    }

    fn address(&self, node: u32) -> NodeAddress {
        let [_, a, b, c] = node.to_be_bytes();
        NodeAddress {
            id: self.nodes[node as usize].overlay.id(),
            addr: SocketAddr::from(([10, a, b, c], 7000)),
        }
    }

    /// The simulated clock as Unix seconds (for grants and receipts).
    pub fn unix_now(&self) -> u64 {
        SIM_EPOCH_UNIX + self.now.0 / 1_000_000
    }

    /// Runs `op` from node `origin`, starting at `at` (not before now): the generic
    /// entry point for any `cairn_past` operation. `None` if `origin` is not a
    /// simulated node.
    pub fn start<O>(&mut self, origin: &NodeId, at: Time, op: O) -> Option<Started<O::Output>>
    where
        O: Operation<Failure = SimFailure> + 'static,
        O::Output: 'static,
    {
        let &origin = self.index.get(origin)?;
        let id = self.register(origin, Box::new(op), Then::Keep);
        self.push(
            at.max(self.now),
            SimEvent::Past(Box::new(PastEvent::Start { op: id })),
        );
        Some(Started {
            id,
            _output: PhantomData,
        })
    }

    /// The output of a finished operation (once; `None` while it runs).
    pub fn take_output<T: 'static>(&mut self, started: &Started<T>) -> Option<T> {
        let output = self.past.finished.remove(&started.id)?;
        output.downcast::<T>().ok().map(|output| *output)
    }

    /// Runs events until some operation started with [`Sim::start`] finishes (true),
    /// or until `until` (false).
    pub fn run_until_finished(&mut self, until: Time) -> bool {
        let before = self.past.newly_finished;
        while self.past.newly_finished == before {
            if !self.step(until) {
                self.now = self.now.max(until);
                return false;
            }
        }
        true
    }

    /// Runs events until `started` has decided, and returns its output; `None` if it
    /// has not by `until`.
    pub fn run_until_done<T: 'static>(&mut self, started: &Started<T>, until: Time) -> Option<T> {
        loop {
            if self.past.finished.contains_key(&started.id) {
                return self.take_output(started);
            }
            if !self.run_until_finished(until) {
                return self.take_output(started);
            }
        }
    }

    pub(crate) fn register(&mut self, origin: u32, op: Box<dyn Driven>, then: Then) -> u64 {
        self.past.next_op += 1;
        self.past.stats.operations += 1;
        let id = self.past.next_op;
        let life = self.nodes[origin as usize].life;
        self.past.ops.insert(
            id,
            RunningOp {
                origin,
                life,
                op,
                asks: BTreeSet::new(),
                locate: None,
                then,
            },
        );
        id
    }

    pub(crate) fn launch(&mut self, id: u64) {
        let Some(mut running) = self.past.ops.remove(&id) else {
            return;
        };
        let step = running.op.first();
        self.carry_out(id, running, step);
    }

    fn carry_out(&mut self, id: u64, mut running: RunningOp, step: Step) {
        match step {
            Step::Done(output) => self.finish(running, id, output),
            Step::Continue(commands) => {
                for command in commands {
                    self.execute(id, &mut running, command);
                }
                if running.asks.is_empty() && running.locate.is_none() {
                    let output = running.op.give_up();
                    self.finish(running, id, output);
                } else {
                    self.past.ops.insert(id, running);
                }
            }
        }
    }

    /// Feeds `input` to `op` if it still waits for `what`.
    fn answer_op(&mut self, id: u64, what: Waiting, input: Input<SimFailure>) {
        let Some(mut running) = self.past.ops.remove(&id) else {
            return;
        };
        let waited = match what {
            Waiting::Ask(ask) => running.asks.remove(&ask),
            Waiting::Locate(tag) => {
                let waited = running.locate == Some(tag);
                if waited {
                    running.locate = None;
                    self.past.locates.remove(&tag);
                }
                waited
            }
        };
        if !waited {
            self.past.ops.insert(id, running);
            return;
        }
        let step = running.op.feed(input);
        self.carry_out(id, running, step);
    }

    fn finish(&mut self, running: RunningOp, id: u64, output: Box<dyn Any>) {
        if let Some(tag) = running.locate {
            self.past.locates.remove(&tag);
        }
        match running.then {
            Then::Keep => {
                self.past.finished.insert(id, output);
                self.past.newly_finished += 1;
            }
            Then::AnswerStore {
                op,
                ask,
                requester,
                key,
                index,
            } => {
                let at = running.origin;
                if !self.alive(at) {
                    return;
                }
                let response = match output.downcast::<Result<Diverted, Refusal>>() {
                    Ok(outcome) => match *outcome {
                        Ok(Diverted { receipt, to }) => {
                            self.past.stats.fragments_diverted += 1;
                            if let Some(past) = &self.nodes[at as usize].past {
                                let _ = past.holder.put_pointer(&key, index, &to.id);
                            }
                            PastResponse::Stored {
                                receipt,
                                diverted_to: Some(to),
                            }
                        }
                        Err(refusal) => PastResponse::Refused(refusal),
                    },
                    Err(_) => PastResponse::Refused(Refusal::Store("diversion lost".into())),
                };
                self.send_reply(at, requester, op, ask, response);
            }
            Then::Obey { op, ask, requester } => {
                let at = running.origin;
                if !self.op_alive(&running) {
                    return;
                }
                let response = match output.downcast::<Verdict>() {
                    Ok(verdict) => self.obeyed(at, *verdict),
                    Err(_) => PastResponse::Refused(Refusal::Store("order check lost".into())),
                };
                self.send_reply(at, requester, op, ask, response);
            }
            Then::Maintenance(job) => {
                if self.op_alive(&running) {
                    self.maintenance_done(running.origin, job, output);
                }
            }
        }
    }

    /// Whether the operation's origin is still in the life it started in.
    fn op_alive(&self, running: &RunningOp) -> bool {
        self.alive(running.origin) && self.nodes[running.origin as usize].life == running.life
    }

    /// The daemon's `obey` after the check: the change applied to the holder's store,
    /// and counted.
    fn obeyed(&mut self, node: u32, verdict: Verdict) -> PastResponse {
        let change = match verdict {
            Ok(change) => change,
            Err(refusal) => {
                self.maintenance_stats_mut().orders_refused += 1;
                return PastResponse::Refused(refusal);
            }
        };
        let Some(past) = &self.nodes[node as usize].past else {
            return PastResponse::Refused(Refusal::Store("no store".into()));
        };
        let applied = past.holder.apply(&change);
        let stats = self.maintenance_stats_mut();
        stats.orders_obeyed += 1;
        match (&change, &applied) {
            // The bytes went out whether or not the delete here worked.
            (Change::HandedOff { bytes, .. }, _) => stats.repair_bytes += bytes,
            (Change::Released { .. }, PastResponse::Done) => stats.fragments_released += 1,
            _ => {}
        }
        applied
    }

    /// Feeds `failure` to `op` at `at` if it still waits for `what` then (a timer).
    fn fail_at(&mut self, at: Time, op: u64, what: Waiting, failure: SimFailure) {
        let event = PastEvent::Fail { op, what, failure };
        self.push(at, SimEvent::Past(Box::new(event)));
    }

    fn fail_now(&mut self, op: u64, what: Waiting, failure: SimFailure) {
        self.fail_at(self.now, op, what, failure);
    }

    fn setup(&self) -> PastSetup {
        self.config.past.clone().unwrap_or_default()
    }

    fn execute(&mut self, id: u64, running: &mut RunningOp, command: Command) {
        let origin = running.origin;
        let alive = self.op_alive(running);
        match command {
            Command::Locate { key, count } => {
                let tag = self.fresh_past_tag(origin);
                running.locate = Some(tag);
                if !alive {
                    self.fail_now(id, Waiting::Locate(tag), SimFailure::Stopped);
                } else if let Some(nodes) = self.locate_in_leaf_set(origin, &key.0, count) {
                    self.past.stats.locates_local += 1;
                    let event = PastEvent::Located {
                        op: id,
                        tag,
                        to: origin,
                        from: None,
                        nodes,
                    };
                    self.push(self.now, SimEvent::Past(Box::new(event)));
                } else {
                    let routed = RoutedLocate {
                        op: id,
                        key: key.0,
                        count,
                        attempt: 1,
                    };
                    self.route_locate(tag, origin, routed);
                }
            }
            Command::Pace { ask, bytes } => {
                running.asks.insert(ask);
                let at = self.pace(origin, bytes);
                let event = PastEvent::Paced { op: id, ask };
                self.push(at, SimEvent::Past(Box::new(event)));
            }
            Command::Ask { ask, to, request } => {
                running.asks.insert(ask);
                self.past.stats.asks += 1;
                let Some(&target) = self.index.get(&to.id) else {
                    self.fail_now(id, Waiting::Ask(ask), SimFailure::Unknown(to.id));
                    return;
                };
                if !alive {
                    self.fail_now(id, Waiting::Ask(ask), SimFailure::Stopped);
                    return;
                }
                let at = self.now.plus(self.setup().ask_timeout);
                self.fail_at(at, id, Waiting::Ask(ask), SimFailure::Timeout(to.id));
                let event = PastEvent::Ask {
                    op: id,
                    ask,
                    from: origin,
                    to: target,
                    request,
                };
                self.transmit(origin, target, event);
            }
        }
    }

    /// A new tag for a locate of node `origin`: one of its overlay's unguessable tags
    /// (as the daemon's), marked with [`PAST_TAG`], and not one in flight.
    fn fresh_past_tag(&mut self, origin: u32) -> u64 {
        let overlay = &mut self.nodes[origin as usize].overlay;
        loop {
            let tag = PAST_TAG | overlay.fresh_tag();
            if !self.past.locates.contains_key(&tag) {
                return tag;
            }
        }
    }

    /// Routes a locate from `origin` under `tag`, failing it after the locate timeout.
    fn route_locate(&mut self, tag: u64, origin: u32, routed: RoutedLocate) {
        self.past.stats.locates_routed += 1;
        self.past.locates.insert(tag, routed);
        let payload = postcard::to_stdvec(&PastRouted::Locate {
            count: routed.count,
        })
        .unwrap_or_default();
        let at = self.now.plus(self.setup().locate_timeout);
        let failure = SimFailure::Locate(routed.key);
        self.fail_at(at, routed.op, Waiting::Locate(tag), failure);
        // Every retry goes through another first hop, as in the daemon's `locate`.
        let skip = u8::try_from(routed.attempt.saturating_sub(1)).unwrap_or(u8::MAX);
        self.feed(
            origin,
            Event::RouteDiverse {
                key: routed.key,
                tag,
                payload,
                skip,
            },
        );
    }

    /// A routed locate failed: tried again under a new tag while attempts are left (the
    /// daemon's `locate`); true if it was.
    fn retry_locate(&mut self, tag: u64) -> bool {
        let Some(routed) = self.past.locates.get(&tag).copied() else {
            return false;
        };
        let origin = match self.past.ops.get(&routed.op) {
            Some(running) if running.locate == Some(tag) && self.op_alive(running) => {
                running.origin
            }
            _ => return false,
        };
        if routed.attempt >= self.setup().locate_attempts {
            return false;
        }
        self.past.locates.remove(&tag);
        let next = self.fresh_past_tag(origin);
        if let Some(running) = self.past.ops.get_mut(&routed.op) {
            running.locate = Some(next);
        }
        let routed = RoutedLocate {
            attempt: routed.attempt + 1,
            ..routed
        };
        self.route_locate(next, origin, routed);
        true
    }

    /// Sends a PAST message from `from` to `to`: at once to oneself, else with the
    /// latency and loss of any message.
    fn transmit(&mut self, from: u32, to: u32, event: PastEvent) {
        if from == to {
            self.push(self.now, SimEvent::Past(Box::new(event)));
            return;
        }
        if self.config.loss > 0.0 && self.rng.unit() < self.config.loss {
            self.past.stats.messages_lost += 1;
            return;
        }
        let at = self.now.plus(self.latency_between(from, to));
        self.push(at, SimEvent::Past(Box::new(event)));
    }

    fn send_reply(&mut self, from: u32, to: u32, op: u64, ask: AskId, response: PastResponse) {
        let event = PastEvent::Reply {
            op,
            ask,
            to,
            response,
        };
        self.transmit(from, to, event);
    }

    /// The daemon's `locate_in_leaf_set`: the `count` closest to `key` from `node`'s
    /// own leaf set, when it surely holds them (the leaf set is not full, so the whole
    /// ring is in it, or none of them is at an edge of it).
    pub(crate) fn locate_in_leaf_set(
        &self,
        node: u32,
        key: &Id,
        count: u16,
    ) -> Option<Vec<NodeId>> {
        let sim_node = &self.nodes[node as usize];
        if sim_node.state != NodeState::Joined {
            return None;
        }
        let (left, right) = sim_node.overlay.leaf_set();
        let half = self.config.overlay.leaf_set_size / 2;
        closest_in_leaf_set(
            key,
            sim_node.overlay.id(),
            &left,
            &right,
            half,
            usize::from(count),
        )
    }

    /// The `count` nodes closest to `key` as node `from` would locate them: from its
    /// leaf set when that surely holds them, else the closest live nodes (where a
    /// routed locate ends), without a message: what a stat counted at one instant asks.
    pub fn locate_from(&self, from: &NodeId, key: &Id, count: usize) -> Vec<NodeId> {
        let local = self.index.get(from).and_then(|&node| {
            self.locate_in_leaf_set(node, key, u16::try_from(count).unwrap_or(u16::MAX))
        });
        local.unwrap_or_else(|| closest(key, self.live.iter().copied(), count))
    }

    /// A routed PAST locate was delivered at `node`: answer the origin with the closest
    /// of this node's leaf set and itself.
    pub(crate) fn deliver_past(
        &mut self,
        node: u32,
        key: Id,
        origin: NodeId,
        tag: u64,
        payload: &[u8],
    ) {
        let Ok(PastRouted::Locate { count }) = postcard::from_bytes(payload) else {
            return;
        };
        let (Some(&RoutedLocate { op, .. }), Some(&to)) =
            (self.past.locates.get(&tag), self.index.get(&origin))
        else {
            return;
        };
        let overlay = &self.nodes[node as usize].overlay;
        let from = Some(overlay.id());
        let nodes = overlay.located_answer(&key, usize::from(count));
        let event = PastEvent::Located {
            op,
            tag,
            to,
            from,
            nodes,
        };
        self.transmit(node, to, event);
    }

    /// Whether the answer to the routed locate `tag`, from `from` to its origin `to`,
    /// is taken: the origin's overlay checks it (`Overlay::check_located`), as the
    /// daemon's overlay task does. A rejected answer is dropped (the locate goes on
    /// waiting). A suspicious one is taken if an earlier route of the same locate
    /// returned the same set; else the locate is routed again through another first
    /// hop, or fails when its attempts are spent.
    fn located_passes(
        &mut self,
        tag: u64,
        to: u32,
        from: Option<NodeId>,
        nodes: &[NodeId],
    ) -> bool {
        let Some(from) = from else {
            return true; // the origin's own leaf set
        };
        let Some(&RoutedLocate { op, key, count, .. }) = self.past.locates.get(&tag) else {
            return false; // not (or no longer) waited for
        };
        let overlay = &self.nodes[to as usize].overlay;
        let verdict = overlay.check_located(&key, usize::from(count), from, nodes);
        match verdict {
            LocatedVerdict::Accept => true,
            LocatedVerdict::Reject(_) => {
                self.past.stats.locate_answers_rejected += 1;
                false
            }
            LocatedVerdict::Suspicious(_) => {
                self.past.stats.locate_answers_suspicious += 1;
                let seen = self.past.suspicious.entry(op).or_default();
                if confirmed_by_another_route(seen, nodes) {
                    return true;
                }
                seen.push(nodes.to_vec());
                if !self.retry_locate(tag) {
                    self.fail_now(op, Waiting::Locate(tag), SimFailure::Locate(key));
                }
                false
            }
        }
    }

    /// A routed PAST locate was given up by some node on its way.
    pub(crate) fn past_route_failed(&mut self, tag: u64) {
        if let Some(&RoutedLocate { op, key, .. }) = self.past.locates.get(&tag) {
            self.fail_now(op, Waiting::Locate(tag), SimFailure::Locate(key));
        }
    }

    pub(crate) fn is_past_tag(tag: u64) -> bool {
        tag & PAST_TAG != 0
    }

    pub(crate) fn dispatch_past(&mut self, event: PastEvent) {
        match event {
            PastEvent::Start { op } => self.launch(op),
            PastEvent::Ask {
                op,
                ask,
                from,
                to,
                request,
            } => self.receive_ask(op, ask, from, to, request),
            PastEvent::Reply {
                op,
                ask,
                to,
                response,
            } => {
                if self.alive(to) && self.past.ops.get(&op).is_some_and(|r| self.op_alive(r)) {
                    self.answer_op(op, Waiting::Ask(ask), Input::Answered(ask, Ok(response)));
                }
            }
            PastEvent::Located {
                op,
                tag,
                to,
                from,
                nodes,
            } => {
                if self.alive(to)
                    && self.past.ops.get(&op).is_some_and(|r| self.op_alive(r))
                    && self.located_passes(tag, to, from, &nodes)
                {
                    self.past.suspicious.remove(&op);
                    let nodes = nodes.iter().filter_map(|id| self.address_of(id)).collect();
                    self.answer_op(op, Waiting::Locate(tag), Input::Located(Ok(nodes)));
                }
            }
            PastEvent::Paced { op, ask } => {
                self.answer_op(op, Waiting::Ask(ask), Input::Paced(ask));
            }
            PastEvent::Fail { op, what, failure } => {
                let waiting = self.past.ops.get(&op).is_some_and(|r| match what {
                    Waiting::Ask(ask) => r.asks.contains(&ask),
                    Waiting::Locate(tag) => r.locate == Some(tag),
                });
                if !waiting {
                    return;
                }
                let input = match what {
                    Waiting::Ask(ask) => {
                        if matches!(failure, SimFailure::Timeout(_)) {
                            self.past.stats.asks_timed_out += 1;
                        }
                        Input::Answered(ask, Err(failure))
                    }
                    Waiting::Locate(tag) => {
                        self.past.stats.locates_failed += 1;
                        if self.retry_locate(tag) {
                            return;
                        }
                        self.past.suspicious.remove(&op);
                        Input::Located(Err(failure))
                    }
                };
                self.answer_op(op, what, input);
            }
        }
    }

    fn receive_ask(&mut self, op: u64, ask: AskId, from: u32, to: u32, request: PastRequest) {
        if !self.alive(to) {
            self.past.stats.asks_to_dead += 1;
            if self.setup().refuse_when_down {
                let id = self.nodes[to as usize].overlay.id();
                let at = self.now.plus(self.latency_between(to, from));
                self.fail_at(at, op, Waiting::Ask(ask), SimFailure::Down(id));
            }
            return;
        }
        let now = self.unix_now();
        let Some(past) = &self.nodes[to as usize].past else {
            return;
        };
        let members = self.ring_members(to);
        let ring = RingView {
            me: self.nodes[to as usize].overlay.id(),
            members: &members,
        };
        let asker = self.nodes[from as usize].overlay.id();
        let answer = past
            .holder
            .answer(request, asker, now, ring, |id| self.address_of(id));
        match answer {
            Answer::Reply(response) => self.send_reply(to, from, op, ask, response),
            Answer::Divert {
                request,
                size,
                free,
            } => {
                self.past.stats.diversions += 1;
                // The daemon's `divert`: candidates beyond the n closest, as this node
                // sees them; the (n+1)-th keeps a backup pointer.
                let overlay = &self.nodes[to as usize].overlay;
                let (left, right) = overlay.leaf_set();
                let (key, index) = (request.key, request.index);
                let diversion: ReplicaDiversion<SimFailure> = ReplicaDiversion::from_view(
                    request,
                    size,
                    free,
                    overlay.id(),
                    left.into_iter().chain(right),
                    |id| self.address_of(id),
                );
                let then = Then::AnswerStore {
                    op,
                    ask,
                    requester: from,
                    key,
                    index,
                };
                let id = self.register(to, Box::new(diversion), then);
                self.launch(id);
            }
            // The daemon's `obey`: checked with the node it concerns, then applied.
            Answer::Order(order) if self.setup().maintenance.is_some() => {
                // The nonce need not be secret here, only fresh: one per order.
                let nonce = Id::hash_parts(&[b"cairn/sim/nonce", &op.to_be_bytes()]).0;
                let check: OrderCheck<SimFailure> = OrderCheck::new(order, nonce);
                let then = Then::Obey {
                    op,
                    ask,
                    requester: from,
                };
                let id = self.register(to, Box::new(check), then);
                self.launch(id);
            }
            Answer::Order(_) => {
                let refusal = Refusal::Store("maintenance is off in this simulation".into());
                self.send_reply(to, from, op, ask, PastResponse::Refused(refusal));
            }
            Answer::Elsewhere(PastRequest::Reconcile { keys, .. })
                if self.setup().maintenance.is_some() =>
            {
                self.maintenance_nudged(to, keys);
                self.send_reply(to, from, op, ask, PastResponse::Done);
            }
            Answer::Elsewhere(PastRequest::Summary {
                from: holder,
                summary,
                list,
            }) if self.setup().maintenance.is_some() => {
                let response = self.maintenance_summary(to, holder, summary, list);
                self.send_reply(to, from, op, ask, response);
            }
            Answer::Elsewhere(other) => {
                let refusal = Refusal::Store(format!(
                    "the simulator does not carry out {}",
                    request_name(&other)
                ));
                self.send_reply(to, from, op, ask, PastResponse::Refused(refusal));
            }
        }
    }
}

fn request_name(request: &PastRequest) -> &'static str {
    match request {
        PastRequest::Reclaim { .. } => "reclaims",
        PastRequest::Handoff { .. } => "handoffs",
        PastRequest::Release { .. } => "releases",
        PastRequest::DropPointer { .. } => "pointer drops",
        PastRequest::Forget { .. } => "forgets",
        PastRequest::Reconcile { .. } => "reconciles",
        PastRequest::Summary { .. } => "summaries",
        _ => "this request",
    }
}

/// A block's insert with file diversion: [`BlockInsert`] at
/// `PlacementKey::for_block(block, salt)` for salt 0, then, while the block is refused
/// at its key ([`InsertError::Placement`], what the daemon's `is_placement_refusal`
/// accepts), salts 1 to `max_salt`: what `cairn_pipeline`'s put does per block, as
/// one operation. Its output is the salt the block was placed under.
#[derive(Debug)]
pub struct SaltedInsert {
    file: FileId,
    grant: Arc<Vec<u8>>,
    block: BlockHash,
    fragments: OwnedFragments,
    max_salt: u64,
    salt: u64,
    inner: BlockInsert<SimFailure>,
}

/// Bits of an [`AskId`] left to the inner insert; the salt goes above them, so that a
/// late answer to an earlier salt is told apart.
const SALT_SHIFT: u32 = 24;

impl SaltedInsert {
    /// Inserts `fragments` of `block` (of `file`, under `grant`), trying salts `0..=max_salt`.
    pub fn new(
        file: FileId,
        grant: Arc<Vec<u8>>,
        block: BlockHash,
        fragments: OwnedFragments,
        max_salt: u64,
    ) -> SaltedInsert {
        let inner = BlockInsert::new(
            file,
            Arc::clone(&grant),
            PlacementKey::for_block(&block, 0),
            Arc::clone(&fragments),
        );
        SaltedInsert {
            file,
            grant,
            block,
            fragments,
            max_salt,
            salt: 0,
            inner,
        }
    }

    /// The inner insert's progress as this operation's: asks renamed with the salt.
    fn outer(
        &self,
        progress: Progress<Result<(), InsertError<SimFailure>>>,
    ) -> Progress<Result<u64, InsertError<SimFailure>>> {
        match progress {
            Progress::Done(result) => Progress::Done(result.map(|()| self.salt)),
            Progress::Continue(commands) => Progress::Continue(
                commands
                    .into_iter()
                    .map(|command| match command {
                        Command::Ask { ask, to, request } => Command::Ask {
                            ask: AskId(((self.salt as u32) << SALT_SHIFT) | ask.0),
                            to,
                            request,
                        },
                        locate => locate,
                    })
                    .collect(),
            ),
        }
    }

    /// The next salt's insert and its first commands.
    fn next_salt(&mut self) -> Progress<Result<u64, InsertError<SimFailure>>> {
        self.salt += 1;
        self.inner = BlockInsert::new(
            self.file,
            Arc::clone(&self.grant),
            PlacementKey::for_block(&self.block, self.salt),
            Arc::clone(&self.fragments),
        );
        let progress = self.inner.start();
        self.drive(progress)
    }

    /// A refusal at this key moves on to the next salt while there is one.
    fn drive(
        &mut self,
        progress: Progress<Result<(), InsertError<SimFailure>>>,
    ) -> Progress<Result<u64, InsertError<SimFailure>>> {
        match progress {
            Progress::Done(Err(InsertError::Placement(failure))) if self.salt < self.max_salt => {
                tracing::debug!(block = %self.block, salt = self.salt, %failure, "diverting the block");
                self.next_salt()
            }
            other => self.outer(other),
        }
    }
}

impl Operation for SaltedInsert {
    type Output = Result<u64, InsertError<SimFailure>>;
    type Failure = SimFailure;

    fn start(&mut self) -> Progress<Self::Output> {
        let progress = self.inner.start();
        self.drive(progress)
    }

    fn handle(&mut self, input: Input<SimFailure>) -> Progress<Self::Output> {
        let input = match input {
            Input::Answered(ask, answer) => {
                if u64::from(ask.0 >> SALT_SHIFT) != self.salt {
                    return Progress::Continue(Vec::new());
                }
                Input::Answered(AskId(ask.0 & ((1 << SALT_SHIFT) - 1)), answer)
            }
            located => located,
        };
        let progress = self.inner.handle(input);
        self.drive(progress)
    }

    fn stalled(&mut self) -> Self::Output {
        Err(InsertError::Stalled(PlacementKey::for_block(
            &self.block,
            self.salt,
        )))
    }
}
