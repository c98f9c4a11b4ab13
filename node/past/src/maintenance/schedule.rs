//! When a node looks at which key, sans-IO: the maintenance schedule that the daemon's
//! maintenance task and the simulator both drive (`docs/repair.md`, "Who coordinates"
//! and "When a key is looked at").
//!
//! Owns: [`MaintenanceSchedule`] with its configuration ([`ScheduleConfig`]) and its
//! actions ([`ScheduleAction`]): the debounce of leaf-set changes, the slow pass and
//! its summaries (what each coordinator acknowledged, what each holder listed), the
//! grouping of keys by coordinator, the coordinator's memory (holdings digests and
//! neighbourhood at the last settled reconcile), the keeper status cache, the keys
//! waiting to be reconciled, and the retries of unsettled keys.
//!
//! May use: [`super::planner`] (digests, [`affected_ranges`]), [`super::reconcile`]
//! (to build a [`KeyReconcile`] and read its outcome), [`crate::closest`], the wire
//! types. No clock: time is a [`Duration`] since an epoch the driver picks (the daemon:
//! its start; the simulator: its time zero), and it must never go backwards. No store:
//! what the node holds comes in as answers to [`ScheduleAction::ListHeldKeys`] and
//! [`ScheduleAction::DigestHoldings`].
//!
//! # Driving it
//! One schedule per node. The driver
//! 1. creates it with [`MaintenanceSchedule::new`] and calls
//!    [`start`](MaintenanceSchedule::start) with the leaf-set members once the node has
//!    joined (that view is the baseline: it triggers nothing);
//! 2. feeds every event as it happens:
//!    - the leaf-set view changed: [`view_changed`](MaintenanceSchedule::view_changed)
//!      with the new members (with or without this node);
//!    - a `Reconcile { keys }` request came in: [`nudged`](MaintenanceSchedule::nudged);
//!    - a `Summary` with a list came in:
//!      [`summary_listed`](MaintenanceSchedule::summary_listed); without a list, answer
//!      `SummaryKnown { known: summary_known(from, summary) }`
//!      ([`summary_known`](MaintenanceSchedule::summary_known));
//!    - this node's holdings of a key changed outside maintenance (the scrub dropped a
//!      fragment): [`key_changed`](MaintenanceSchedule::key_changed);
//! 3. calls [`poll`](MaintenanceSchedule::poll) after every input and whenever
//!    [`next_wake`](MaintenanceSchedule::next_wake) comes due (a wake time at or before
//!    now means "at once"), and carries out each action it returns, in order:
//!    - [`ScheduleAction::ReplicateRecords`]: make sure the certificates and root
//!      records this node keeps are on their current keepers among `members` (the
//!      daemon's `replicate_certificates` and `replicate_roots`; may be skipped by a
//!      driver that has no records);
//!    - [`ScheduleAction::ListHeldKeys`]: list the keys this node holds fragments under
//!      in the ranges (`NodeStore::placement_keys_in`; [`held_keys_in`] does it) and
//!      answer with [`held_keys_listed`](MaintenanceSchedule::held_keys_listed) (an
//!      empty list if the store failed);
//!    - [`ScheduleAction::DigestHoldings`]: the [`holdings_digest`] of every key this
//!      node holds ([`held_digests`] does it), answered with
//!      [`holdings_digested`](MaintenanceSchedule::holdings_digested);
//!    - [`ScheduleAction::Nudge`]: send `Reconcile { from: me, keys }` to the
//!      coordinator (the answer does not matter);
//!    - [`ScheduleAction::SendSummary`]: send `Summary { from: me, summary, list }` to
//!      the coordinator and hand its answer (`None`: no answer, or the node could not
//!      be reached) to [`summary_answered`](MaintenanceSchedule::summary_answered);
//!    - [`ScheduleAction::Reconcile`]: build the machine with
//!      [`key_reconcile`](MaintenanceSchedule::key_reconcile) when it starts (it takes
//!      the keeper statuses fresh at that moment), drive it, and hand its outcome to
//!      [`reconciled`](MaintenanceSchedule::reconciled). At most
//!      [`ScheduleConfig::batch`] reconciles are handed out before outcomes come back;
//!      every one handed out must be reported, or its key is never handed out again.
//!
//! Answers may come in any order and later than other inputs; an answer to a summary
//! that a later slow pass replaced is ignored.
//!
//! # Retries
//! A key whose reconcile did not settle is looked at again after `debounce`, then after
//! twice as long each time up to `period`, and then every `period` for as long as it
//! stays unsettled: it is never given up. At most [`ScheduleConfig::retry_cap`] keys wait
//! for a retry; beyond that the ones due farthest in the future are dropped (a
//! rate-limited debug line counts them) and only a later change or listing brings them
//! back.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::id::{FileId, Id, NodeId, PlacementKey};
use cairn_store::NodeStore;

use super::planner::{FileStatus, affected_ranges, holdings_digest, summary_digest};
use super::reconcile::{KeyReconcile, KnownStatuses, Reconciled};
use crate::{Holder, PastResponse, UnixSeconds, closest};

/// Most keys in one `Reconcile` nudge (a request stays small; a holder refuses a
/// nudge that names more).
pub const MAX_NUDGE_KEYS: usize = 8192;

/// Most keys waiting to be reconciled. Any holder may nudge any key, so past this new
/// keys are dropped and counted ([`MaintenanceSchedule::pending_dropped`]); the slow
/// pass brings back the ones that matter.
pub const MAX_PENDING_KEYS: usize = 200_000;

/// How the schedule runs (the daemon's `MaintenanceConfig` maps onto it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Act on a leaf-set change this long after the first one (changes come in bursts,
    /// and every change within the wait is acted on with it; later ones do not push it
    /// back, since under steady churn changes never stop long enough for a quiet
    /// period); also the first retry of an unsettled key.
    pub debounce: Duration,
    /// The slow pass: every key held is summarised to its coordinator this often; also
    /// the longest wait between retries of an unsettled key. Must not be zero.
    pub period: Duration,
    /// How many nodes on each side of a node that came or went have keys affected.
    pub span: usize,
    /// Nodes asked beyond `2 · span` around a key (copies a join displaced).
    pub spares: usize,
    /// Most reconciles handed out before their outcomes come back.
    pub batch: usize,
    /// How many nodes keep a certificate (the keepers asked for a file's status are two
    /// more).
    pub certificate_replicas: usize,
    /// Most unsettled keys waiting for a retry.
    pub retry_cap: usize,
}

impl Default for ScheduleConfig {
    fn default() -> ScheduleConfig {
        ScheduleConfig {
            debounce: Duration::from_secs(2),
            period: Duration::from_secs(30),
            span: 8,
            spares: 4,
            batch: 64,
            certificate_replicas: crate::PastConfig::default().certificate_replicas,
            retry_cap: 100_000,
        }
    }
}

/// What the driver is to do (see the module's "Driving it").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScheduleAction {
    /// Keep the records this node keeps on their current keepers among `members`.
    ReplicateRecords {
        /// The members of the view, this node included.
        members: Vec<NodeId>,
    },
    /// List the keys held here in these clockwise ranges (`start == end`: the whole
    /// ring); answer with [`MaintenanceSchedule::held_keys_listed`].
    ListHeldKeys {
        /// The ranges `[start, end)`.
        ranges: Vec<(PlacementKey, PlacementKey)>,
    },
    /// Digest every key held here; answer with
    /// [`MaintenanceSchedule::holdings_digested`].
    DigestHoldings,
    /// Send `Reconcile { keys }` to `coordinator`.
    Nudge {
        /// The coordinator of every key.
        coordinator: NodeId,
        /// At most [`MAX_NUDGE_KEYS`].
        keys: Vec<PlacementKey>,
    },
    /// Send `Summary { summary, list }` to `coordinator`; answer with
    /// [`MaintenanceSchedule::summary_answered`].
    SendSummary {
        /// The coordinator of every key listed.
        coordinator: NodeId,
        /// The [`summary_digest`] of the list.
        summary: u64,
        /// The list, or `None` when only the digest is sent (the coordinator
        /// acknowledged that summary last time).
        list: Option<Vec<(PlacementKey, u64)>>,
    },
    /// Reconcile `key` as its coordinator ([`MaintenanceSchedule::key_reconcile`]) and
    /// report with [`MaintenanceSchedule::reconciled`].
    Reconcile {
        /// The key.
        key: PlacementKey,
    },
}

/// The keys held in `ranges` (`start == end`: the whole ring), as
/// [`ScheduleAction::ListHeldKeys`] asks. A range whose listing fails is logged and
/// skipped.
pub fn held_keys_in<S: NodeStore>(
    holder: &Holder<S>,
    ranges: &[(PlacementKey, PlacementKey)],
) -> Vec<PlacementKey> {
    let mut keys = BTreeSet::new();
    for (start, end) in ranges {
        match holder.store().placement_keys_in(start, end) {
            Ok(found) => keys.extend(found),
            Err(e) => tracing::warn!("listing keys for maintenance failed: {e}"),
        }
    }
    keys.into_iter().collect()
}

/// The [`holdings_digest`] of every key held, as [`ScheduleAction::DigestHoldings`]
/// asks. Keys whose holdings cannot be read are left out.
pub fn held_digests<S: NodeStore>(holder: &Holder<S>) -> Vec<(PlacementKey, u64)> {
    let zero = PlacementKey(Id::ZERO);
    held_keys_in(holder, &[(zero, zero)])
        .into_iter()
        .filter_map(|key| {
            let (fragments, pointers, references) = holder.holdings(&key).ok()?;
            Some((key, holdings_digest(&fragments, &pointers, &references)))
        })
        .collect()
}

/// Most entries in each map of the coordinator's memory and in the summaries known; a
/// map that grows past it is cleared (it is only an optimisation: forgetting costs a
/// reconcile).
const MAX_MEMORY_ENTRIES: usize = 200_000;

/// How long a keeper's "live certificate" answer is reused.
pub const STATUS_TTL: Duration = Duration::from_secs(5);

/// Shortest wait before a retry (a zero `debounce` must not spin).
const MIN_RETRY: Duration = Duration::from_millis(100);

/// At most one log line per this long about retries dropped by the cap.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// The memory of the coordinator: each holder's digest of a key at the key's last
/// settled reconcile (and whether it held anything then), and the neighbourhood then.
#[derive(Debug, Default)]
struct Memory {
    digests: BTreeMap<(NodeId, PlacementKey), (u64, bool)>,
    neighbourhoods: HashMap<PlacementKey, u64>,
}

impl Memory {
    fn trim(&mut self) {
        if self.digests.len() > MAX_MEMORY_ENTRIES {
            self.digests.clear();
        }
        if self.neighbourhoods.len() > MAX_MEMORY_ENTRIES {
            self.neighbourhoods.clear();
        }
    }
}

/// What the keepers said of a file, kept for [`STATUS_TTL`] so that the blocks of one
/// file do not each ask again. Which answers are worth keeping is [`KeyReconcile`]'s
/// decision; this keeps them and hands each reconcile the ones still fresh.
#[derive(Debug, Default)]
struct StatusCache {
    known: KnownStatuses,
    learnt_at: HashMap<FileId, Duration>,
}

impl StatusCache {
    /// The statuses still fresh at `now` (a shared snapshot: cheap per key).
    fn known(&mut self, now: Duration) -> KnownStatuses {
        self.expire(now);
        Arc::clone(&self.known)
    }

    fn learn(&mut self, now: Duration, learnt: &[(FileId, Vec<FileStatus>)]) {
        if learnt.is_empty() {
            return;
        }
        let known = Arc::make_mut(&mut self.known);
        for (file, statuses) in learnt {
            known.insert(*file, statuses.clone());
            self.learnt_at.insert(*file, now);
        }
    }

    fn expire(&mut self, now: Duration) {
        let stale: Vec<FileId> = self
            .learnt_at
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) >= STATUS_TTL)
            .map(|(file, _)| *file)
            .collect();
        if stale.is_empty() {
            return;
        }
        let known = Arc::make_mut(&mut self.known);
        for file in stale {
            known.remove(&file);
            self.learnt_at.remove(&file);
        }
    }
}

/// A summary sent and not answered yet.
#[derive(Debug)]
struct Outstanding {
    summary: u64,
    /// Whether the list is empty (a coordinator this node no longer holds keys of).
    empty: bool,
    /// While only the digest went: the list, sent if the digest is not known.
    list: Option<Vec<(PlacementKey, u64)>>,
}

/// A key that did not settle.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// Unsettled outcomes in a row.
    failures: u32,
    /// When it is looked at again; `None` while it waits to be or is reconciled.
    due: Option<Duration>,
}

/// The maintenance schedule of one node (see the module's "Driving it").
#[derive(Debug)]
pub struct MaintenanceSchedule {
    me: NodeId,
    config: ScheduleConfig,
    /// The latest view, this node included, sorted.
    members: Vec<NodeId>,
    /// The view the last acted-on change was compared with.
    acted_on: Vec<NodeId>,
    /// When the debounced leaf-set change is acted on.
    change_due: Option<Duration>,
    /// When the next slow pass starts.
    slow_due: Option<Duration>,
    memory: Memory,
    statuses: StatusCache,
    /// As a holder: the summary each coordinator acknowledged last.
    sent: HashMap<NodeId, u64>,
    /// As a holder: summaries of the current slow pass not answered yet.
    outstanding: HashMap<NodeId, Outstanding>,
    /// As a coordinator: the summary each holder listed last.
    known_summaries: HashMap<NodeId, u64>,
    /// Keys to reconcile, not handed out yet (at most [`MAX_PENDING_KEYS`]).
    pending: BTreeSet<PlacementKey>,
    /// Keys dropped because `pending` was full, since the start.
    pending_dropped: u64,
    /// Keys handed out and not reported yet.
    in_flight: BTreeSet<PlacementKey>,
    /// Keys asked for again while in flight: pending once reported.
    again: BTreeSet<PlacementKey>,
    retries: BTreeMap<PlacementKey, Retry>,
    /// The retries waiting, by when they are due.
    retry_due: BTreeSet<(Duration, PlacementKey)>,
    /// Retries dropped by the cap since the last log line, and when that was.
    dropped: (u64, Option<Duration>),
    /// Actions decided by an input, handed out by the next poll.
    outbox: Vec<ScheduleAction>,
}

impl MaintenanceSchedule {
    /// The schedule of node `me`. It does nothing on its own until
    /// [`Self::start`].
    pub fn new(me: NodeId, config: ScheduleConfig) -> MaintenanceSchedule {
        MaintenanceSchedule {
            me,
            config,
            members: vec![me],
            acted_on: vec![me],
            change_due: None,
            slow_due: None,
            memory: Memory::default(),
            statuses: StatusCache::default(),
            sent: HashMap::new(),
            outstanding: HashMap::new(),
            known_summaries: HashMap::new(),
            pending: BTreeSet::new(),
            pending_dropped: 0,
            in_flight: BTreeSet::new(),
            again: BTreeSet::new(),
            retries: BTreeMap::new(),
            retry_due: BTreeSet::new(),
            dropped: (0, None),
            outbox: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ScheduleConfig {
        &self.config
    }

    /// Starts at `now` with the view `members` as the baseline (nothing is looked at
    /// for it); the first slow pass comes a `period` later.
    pub fn start(&mut self, now: Duration, members: impl IntoIterator<Item = NodeId>) {
        self.members = self.with_me(members);
        self.acted_on = self.members.clone();
        self.change_due = None;
        self.slow_due = Some(now.saturating_add(self.config.period));
    }

    /// The leaf-set view is now `members`: acted on `debounce` after the first change
    /// not yet acted on, together with every change until then. (Waiting for a quiet
    /// `debounce` instead left repair to the slow pass under steady churn: in a small
    /// network every death and join changes every leaf set, so the wait kept moving;
    /// `cairn sim churn` showed it.)
    pub fn view_changed(&mut self, now: Duration, members: impl IntoIterator<Item = NodeId>) {
        self.members = self.with_me(members);
        if self.change_due.is_none() {
            self.change_due = Some(now.saturating_add(self.config.debounce));
        }
    }

    /// A holder asks this node, as their coordinator, to look at `keys`.
    pub fn nudged(&mut self, keys: impl IntoIterator<Item = PlacementKey>) {
        for key in keys {
            self.add_pending(key);
        }
    }

    /// This node's holdings of `key` changed outside maintenance: its coordinator is
    /// told (or it is queued here, if this node coordinates it).
    pub fn key_changed(&mut self, key: PlacementKey) {
        self.nudge_coordinators(vec![key]);
    }

    /// A holder's slow-pass list for this node (as their coordinator) and its summary:
    /// the keys that changed since their last settled reconcile are queued, and the
    /// summary is remembered.
    pub fn summary_listed(&mut self, from: NodeId, summary: u64, list: &[(PlacementKey, u64)]) {
        let changed = self.changed_keys(from, list);
        self.nudged(changed);
        if self.known_summaries.len() > MAX_MEMORY_ENTRIES {
            self.known_summaries.clear();
        }
        self.known_summaries.insert(from, summary);
    }

    /// Whether `from`'s last list had this summary (the answer to a `Summary` without
    /// a list).
    pub fn summary_known(&self, from: NodeId, summary: u64) -> bool {
        self.known_summaries.get(&from) == Some(&summary)
    }

    /// The answer to [`ScheduleAction::ListHeldKeys`]: each key's coordinator is
    /// nudged; the keys this node coordinates are queued.
    pub fn held_keys_listed(&mut self, keys: Vec<PlacementKey>) {
        tracing::debug!(keys = keys.len(), "leaf set changed: keys to look at");
        self.nudge_coordinators(keys);
    }

    /// The answer to [`ScheduleAction::DigestHoldings`]: one summary per coordinator
    /// (only its digest when that coordinator acknowledged it last time; a coordinator
    /// this node no longer holds anything of gets the empty list once), and this
    /// node's own keys that changed are queued.
    pub fn holdings_digested(&mut self, list: Vec<(PlacementKey, u64)>) {
        let mut mine = Vec::new();
        let mut grouped = self.by_coordinator(list, &mut mine);
        for gone in self.sent.keys() {
            grouped.entry(*gone).or_default();
        }
        self.outstanding.clear();
        for (coordinator, list) in grouped {
            let summary = summary_digest(&list);
            let digest_only = self.sent.get(&coordinator) == Some(&summary);
            self.outbox.push(ScheduleAction::SendSummary {
                coordinator,
                summary,
                list: (!digest_only).then(|| list.clone()),
            });
            self.outstanding.insert(
                coordinator,
                Outstanding {
                    summary,
                    empty: list.is_empty(),
                    list: digest_only.then_some(list),
                },
            );
        }
        let changed = self.changed_keys(self.me, &mine);
        self.nudged(changed);
    }

    /// The answer of `coordinator` to a [`ScheduleAction::SendSummary`] of `summary`
    /// (`None`: no answer). A digest it does not know (or that went unanswered) is
    /// followed by the list; a list it acknowledged is remembered as sent.
    pub fn summary_answered(
        &mut self,
        coordinator: NodeId,
        summary: u64,
        answer: Option<&PastResponse>,
    ) {
        let Some(outstanding) = self
            .outstanding
            .remove(&coordinator)
            .filter(|o| o.summary == summary)
        else {
            return; // an answer to a summary a later pass replaced
        };
        match (outstanding.list, answer) {
            (Some(_), Some(PastResponse::SummaryKnown { known: true })) => {
                if outstanding.empty {
                    self.sent.remove(&coordinator);
                }
            }
            (Some(list), _) => {
                self.outbox.push(ScheduleAction::SendSummary {
                    coordinator,
                    summary,
                    list: Some(list),
                });
                self.outstanding.insert(
                    coordinator,
                    Outstanding {
                        summary,
                        empty: outstanding.empty,
                        list: None,
                    },
                );
            }
            (None, Some(PastResponse::Done)) if !outstanding.empty => {
                self.sent.insert(coordinator, summary);
            }
            (None, _) => {
                self.sent.remove(&coordinator);
            }
        }
    }

    /// The machine that reconciles `key` (for [`ScheduleAction::Reconcile`]), with the
    /// keeper statuses still fresh at `now`; `unix_now` checks certificates' expiry.
    pub fn key_reconcile<E: fmt::Display + fmt::Debug>(
        &mut self,
        key: PlacementKey,
        now: Duration,
        unix_now: UnixSeconds,
    ) -> KeyReconcile<E> {
        let wide = u16::try_from(self.wide()).unwrap_or(u16::MAX);
        let keepers =
            u16::try_from(self.config.certificate_replicas.saturating_add(2)).unwrap_or(u16::MAX);
        KeyReconcile::new(key, wide, keepers, self.known_statuses(now), unix_now)
    }

    /// The keeper statuses learnt less than [`STATUS_TTL`] before `now` (what
    /// [`Self::key_reconcile`] hands a reconcile).
    pub fn known_statuses(&mut self, now: Duration) -> KnownStatuses {
        self.statuses.known(now)
    }

    /// The outcome of a reconcile: what it learnt is kept, a settled key's holdings
    /// are remembered, and an unsettled key is retried later (see "Retries").
    pub fn reconciled<E>(&mut self, now: Duration, outcome: &Reconciled<E>) {
        let key = outcome.key;
        self.in_flight.remove(&key);
        if self.again.remove(&key) {
            self.pending.insert(key);
        }
        self.statuses.learn(now, &outcome.learnt);
        if let Some(seen) = &outcome.seen {
            for holdings in seen {
                self.memory
                    .digests
                    .insert((holdings.node, key), (holdings.digest, holdings.held));
            }
            let neighbourhood = self.neighbourhood_digest(&key);
            self.memory.neighbourhoods.insert(key, neighbourhood);
            self.memory.trim();
        }
        if outcome.is_settled() {
            if let Some(Retry { due: Some(due), .. }) = self.retries.remove(&key) {
                self.retry_due.remove(&(due, key));
            }
            return;
        }
        let retry = self.retries.entry(key).or_insert(Retry {
            failures: 0,
            due: None,
        });
        if let Some(due) = retry.due.take() {
            self.retry_due.remove(&(due, key));
        }
        retry.failures = retry.failures.saturating_add(1);
        if self.pending.contains(&key) {
            return; // looked at again at once anyway; the next outcome sets the wait
        }
        let failures = retry.failures;
        let due = now.saturating_add(self.backoff(failures));
        if let Some(retry) = self.retries.get_mut(&key) {
            retry.due = Some(due);
        }
        self.retry_due.insert((due, key));
        self.cap_retries(now);
    }

    /// What is due at `now`, in the order to carry it out.
    pub fn poll(&mut self, now: Duration) -> Vec<ScheduleAction> {
        let mut actions = Vec::new();
        if self.change_due.is_some_and(|due| due <= now) {
            self.change_due = None;
            let ranges = affected_ranges(&self.acted_on, &self.members, self.config.span);
            self.acted_on = self.members.clone();
            if !ranges.is_empty() {
                actions.push(ScheduleAction::ReplicateRecords {
                    members: self.members.clone(),
                });
                actions.push(ScheduleAction::ListHeldKeys { ranges });
            }
        }
        if self.slow_due.is_some_and(|due| due <= now) {
            self.slow_due = Some(now.saturating_add(self.config.period));
            self.memory.trim();
            self.statuses.expire(now);
            actions.push(ScheduleAction::ReplicateRecords {
                members: self.members.clone(),
            });
            actions.push(ScheduleAction::DigestHoldings);
        }
        while let Some((due, key)) = self.retry_due.first().copied() {
            if due > now {
                break;
            }
            self.retry_due.pop_first();
            if let Some(retry) = self.retries.get_mut(&key) {
                retry.due = None;
            }
            self.add_pending(key);
        }
        actions.append(&mut self.outbox);
        while self.in_flight.len() < self.config.batch.max(1) {
            let Some(key) = self.pending.pop_first() else {
                break;
            };
            self.in_flight.insert(key);
            actions.push(ScheduleAction::Reconcile { key });
        }
        actions
    }

    /// When [`Self::poll`] has something to do next: a time at or before now means at
    /// once; `None`, nothing until the next input.
    pub fn next_wake(&self) -> Option<Duration> {
        let ready = !self.outbox.is_empty()
            || (!self.pending.is_empty() && self.in_flight.len() < self.config.batch.max(1));
        if ready {
            return Some(Duration::ZERO);
        }
        [
            self.change_due,
            self.slow_due,
            self.retry_due.first().map(|(due, _)| *due),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// How many unsettled keys wait for a retry.
    pub fn retries_waiting(&self) -> usize {
        self.retry_due.len()
    }

    /// How many keys wait to be reconciled or are being reconciled.
    pub fn keys_pending(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    /// How many keys were dropped because [`MAX_PENDING_KEYS`] waited already.
    pub fn pending_dropped(&self) -> u64 {
        self.pending_dropped
    }

    fn with_me(&self, members: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = members.into_iter().chain([self.me]).collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The nodes a reconcile locates around a key.
    fn wide(&self) -> usize {
        self.config
            .span
            .saturating_mul(2)
            .saturating_add(self.config.spares)
    }

    /// The wait before the retry after `failures` unsettled outcomes in a row:
    /// `debounce`, doubling, at most `period`.
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.config
            .debounce
            .saturating_mul(1 << doublings)
            .min(self.config.period)
            .max(MIN_RETRY)
    }

    /// Keeps at most `retry_cap` retries waiting: the farthest due go.
    fn cap_retries(&mut self, now: Duration) {
        while self.retry_due.len() > self.config.retry_cap {
            let Some((_, key)) = self.retry_due.pop_last() else {
                break;
            };
            self.retries.remove(&key);
            self.dropped.0 += 1;
        }
        let (count, logged) = self.dropped;
        if count > 0 && logged.is_none_or(|at| now.saturating_sub(at) >= DROP_LOG_EVERY) {
            tracing::debug!(
                dropped = count,
                cap = self.config.retry_cap,
                "unsettled keys dropped from the retries (too many waiting)"
            );
            self.dropped = (0, Some(now));
        }
    }

    fn add_pending(&mut self, key: PlacementKey) {
        if let Some(retry) = self.retries.get_mut(&key)
            && let Some(due) = retry.due.take()
        {
            self.retry_due.remove(&(due, key));
        }
        if self.in_flight.contains(&key) {
            self.again.insert(key);
        } else if self.pending.len() < MAX_PENDING_KEYS || self.pending.contains(&key) {
            self.pending.insert(key);
        } else {
            self.pending_dropped += 1;
        }
    }

    /// The coordinator of `key` in this node's view: the closest member.
    fn coordinator_of(&self, key: &PlacementKey) -> NodeId {
        closest(&key.0, self.members.iter().copied(), 1)
            .first()
            .copied()
            .unwrap_or(self.me)
    }

    /// Groups `items` by the coordinator of their key; this node's own go to `mine`.
    fn by_coordinator<T>(
        &self,
        items: impl IntoIterator<Item = (PlacementKey, T)>,
        mine: &mut Vec<(PlacementKey, T)>,
    ) -> BTreeMap<NodeId, Vec<(PlacementKey, T)>> {
        let mut grouped: BTreeMap<NodeId, Vec<(PlacementKey, T)>> = BTreeMap::new();
        for (key, item) in items {
            let coordinator = self.coordinator_of(&key);
            if coordinator == self.me {
                mine.push((key, item));
            } else {
                grouped.entry(coordinator).or_default().push((key, item));
            }
        }
        grouped
    }

    /// Each key's coordinator is nudged (in chunks); this node's own are queued.
    fn nudge_coordinators(&mut self, keys: Vec<PlacementKey>) {
        let mut mine = Vec::new();
        let grouped = self.by_coordinator(keys.into_iter().map(|k| (k, ())), &mut mine);
        for (coordinator, keys) in grouped {
            let keys: Vec<PlacementKey> = keys.into_iter().map(|(k, ())| k).collect();
            for chunk in keys.chunks(MAX_NUDGE_KEYS) {
                self.outbox.push(ScheduleAction::Nudge {
                    coordinator,
                    keys: chunk.to_vec(),
                });
            }
        }
        self.nudged(mine.into_iter().map(|(k, ())| k));
    }

    /// A digest of the nodes a reconcile of `key` asks, as this node's view has them.
    fn neighbourhood_digest(&self, key: &PlacementKey) -> u64 {
        ids_digest(&closest(&key.0, self.members.iter().copied(), self.wide()))
    }

    /// The keys of `from`'s list (or of this node's own, `from` being itself) that
    /// need a look: a digest that differs from the one seen at the last settled
    /// reconcile, a neighbourhood that changed since, or a key `from` held then and
    /// lists no more.
    fn changed_keys(&self, from: NodeId, list: &[(PlacementKey, u64)]) -> Vec<PlacementKey> {
        let listed: BTreeMap<PlacementKey, u64> = list.iter().copied().collect();
        let mut changed: Vec<PlacementKey> = listed
            .iter()
            .filter(|(key, digest)| {
                self.memory.digests.get(&(from, **key)).map(|(d, _)| d) != Some(*digest)
                    || self.memory.neighbourhoods.get(*key) != Some(&self.neighbourhood_digest(key))
            })
            .map(|(key, _)| *key)
            .collect();
        let low = (from, PlacementKey(Id([0; 32])));
        let high = (from, PlacementKey(Id([0xff; 32])));
        changed.extend(
            self.memory
                .digests
                .range(low..=high)
                .filter(|((_, key), (_, held))| *held && !listed.contains_key(key))
                .map(|((_, key), _)| *key),
        );
        changed
    }
}

/// A digest of a list of node ids.
fn ids_digest(ids: &[NodeId]) -> u64 {
    let parts: Vec<&[u8]> = ids.iter().map(|id| id.0.as_bytes().as_slice()).collect();
    let id = Id::hash_parts(&parts);
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::maintenance::{Done, SeenHoldings, Unsettled};
    use crate::testing::key;

    const SECOND: Duration = Duration::from_secs(1);

    fn node(n: u8) -> NodeId {
        NodeId(Id::hash(&[b'n', n]))
    }

    /// A ring of 24 nodes; the schedule belongs to the first.
    fn ring() -> Vec<NodeId> {
        (0..24).map(node).collect()
    }

    fn config() -> ScheduleConfig {
        ScheduleConfig {
            debounce: 2 * SECOND,
            period: 30 * SECOND,
            span: 2,
            spares: 1,
            batch: 64,
            certificate_replicas: 3,
            retry_cap: 100,
        }
    }

    fn started(config: ScheduleConfig) -> MaintenanceSchedule {
        let mut schedule = MaintenanceSchedule::new(node(0), config);
        schedule.start(Duration::ZERO, ring());
        schedule
    }

    fn coordinator(members: &[NodeId], at: &PlacementKey) -> NodeId {
        closest(&at.0, members.iter().copied(), 1)[0]
    }

    /// Keys coordinated by `by` (in the view `members`), the first `count` of a run.
    fn keys_of(by: NodeId, members: &[NodeId], count: usize) -> Vec<PlacementKey> {
        (0..=255)
            .map(key)
            .chain((0..=255).map(|n| PlacementKey(Id::hash(&[b'x', n]))))
            .filter(|k| coordinator(members, k) == by)
            .take(count)
            .collect()
    }

    fn outcome(at: PlacementKey, settled: bool, seen: &[(NodeId, u64)]) -> Reconciled<String> {
        Reconciled {
            key: at,
            problems: if settled {
                Vec::new()
            } else {
                vec![Unsettled::AuthorityUnknown]
            },
            done: Done::default(),
            learnt: Vec::new(),
            seen: settled.then(|| {
                seen.iter()
                    .map(|(node, digest)| SeenHoldings {
                        node: *node,
                        digest: *digest,
                        held: true,
                    })
                    .collect()
            }),
        }
    }

    fn reconciles(actions: &[ScheduleAction]) -> Vec<PlacementKey> {
        actions
            .iter()
            .filter_map(|a| match a {
                ScheduleAction::Reconcile { key } => Some(*key),
                _ => None,
            })
            .collect()
    }

    fn summaries(actions: &[ScheduleAction]) -> BTreeMap<NodeId, (u64, Option<usize>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                ScheduleAction::SendSummary {
                    coordinator,
                    summary,
                    list,
                } => Some((*coordinator, (*summary, list.as_ref().map(Vec::len)))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_view_change_is_acted_on_after_the_debounce_with_the_keys_of_the_ranges_it_touches() {
        let mut schedule = started(config());
        let before = ring();
        let after: Vec<NodeId> = before.iter().copied().filter(|n| *n != node(7)).collect();
        // Node 7 went, then node 9: both are acted on together, `debounce` after the
        // first; the second does not push the wait back (under churn changes never
        // stop).
        schedule.view_changed(SECOND, before.iter().copied().filter(|n| *n != node(7)));
        let after: Vec<NodeId> = after.into_iter().filter(|n| *n != node(9)).collect();
        schedule.view_changed(2 * SECOND, after.clone());
        assert_eq!(
            schedule.poll(2 * SECOND + SECOND / 2),
            Vec::new(),
            "still debouncing"
        );
        assert_eq!(schedule.next_wake(), Some(3 * SECOND));
        let mut sorted = after.clone();
        sorted.sort();
        let acted = schedule.poll(3 * SECOND);
        let mut before_sorted = before.clone();
        before_sorted.sort();
        assert_eq!(
            acted,
            vec![
                ScheduleAction::ReplicateRecords {
                    members: sorted.clone()
                },
                ScheduleAction::ListHeldKeys {
                    ranges: affected_ranges(&before_sorted, &sorted, 2)
                },
            ]
        );
        assert_eq!(schedule.poll(5 * SECOND), Vec::new(), "acted on once");

        // The keys held there: nudges grouped per coordinator, this node's own queued.
        let (a, b) = (node(3), node(11));
        let (for_a, for_b, mine) = (
            keys_of(a, &after, 3),
            keys_of(b, &after, 2),
            keys_of(node(0), &after, 2),
        );
        let held: Vec<PlacementKey> = [&for_a, &for_b, &mine]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        schedule.held_keys_listed(held);
        assert_eq!(schedule.next_wake(), Some(Duration::ZERO), "at once");
        let actions = schedule.poll(5 * SECOND);
        let mut nudges: BTreeMap<NodeId, BTreeSet<PlacementKey>> = BTreeMap::new();
        for action in &actions {
            if let ScheduleAction::Nudge { coordinator, keys } = action {
                assert!(
                    nudges
                        .insert(*coordinator, keys.iter().copied().collect())
                        .is_none(),
                    "one nudge per coordinator"
                );
            }
        }
        assert_eq!(
            nudges,
            BTreeMap::from([
                (a, for_a.into_iter().collect()),
                (b, for_b.into_iter().collect())
            ])
        );
        let mut own = reconciles(&actions);
        own.sort();
        let mut mine = mine;
        mine.sort();
        assert_eq!(own, mine, "this node's own keys are reconciled here");
    }

    #[test]
    fn keys_nudged_past_the_pending_cap_are_dropped_and_counted() {
        let mut schedule = started(config());
        let keys =
            (0..MAX_PENDING_KEYS as u64 + 10).map(|n| PlacementKey(Id::hash(&n.to_be_bytes())));
        schedule.nudged(keys);
        assert_eq!(schedule.keys_pending(), MAX_PENDING_KEYS);
        assert_eq!(schedule.pending_dropped(), 10);
        // A key already waiting is not a new one.
        let first = *schedule.pending.first().unwrap();
        schedule.nudged([first]);
        assert_eq!(schedule.pending_dropped(), 10);
    }

    #[test]
    fn reconciles_are_handed_out_a_batch_at_a_time_and_a_key_nudged_meanwhile_is_looked_at_again() {
        let mut schedule = started(ScheduleConfig {
            batch: 2,
            ..config()
        });
        schedule.nudged([key(1), key(2), key(3)]);
        let first = reconciles(&schedule.poll(SECOND));
        assert_eq!(first.len(), 2);
        assert_eq!(
            reconciles(&schedule.poll(SECOND)),
            Vec::new(),
            "the batch is out"
        );
        schedule.nudged([first[0]]);
        schedule.reconciled(SECOND, &outcome(first[0], true, &[]));
        let next = reconciles(&schedule.poll(SECOND));
        assert_eq!(next.len(), 1);
        schedule.reconciled(SECOND, &outcome(first[1], true, &[]));
        schedule.reconciled(SECOND, &outcome(next[0], true, &[]));
        let last = reconciles(&schedule.poll(SECOND));
        let mut all: Vec<PlacementKey> = first.iter().chain(&next).chain(&last).copied().collect();
        all.sort();
        let mut expected = vec![key(1), key(2), key(3), first[0]];
        expected.sort();
        assert_eq!(
            all, expected,
            "every key once, and the one nudged in flight again"
        );
    }

    #[test]
    fn a_slow_pass_sends_only_the_digest_of_a_summary_the_coordinator_acknowledged() {
        let mut schedule = started(config());
        let members = ring();
        let (a, b) = (node(5), node(9));
        let list_a: Vec<(PlacementKey, u64)> = keys_of(a, &members, 2)
            .into_iter()
            .map(|k| (k, 1))
            .collect();
        let list_b: Vec<(PlacementKey, u64)> = keys_of(b, &members, 3)
            .into_iter()
            .map(|k| (k, 2))
            .collect();
        let list: Vec<(PlacementKey, u64)> = list_a.iter().chain(&list_b).copied().collect();

        assert_eq!(schedule.next_wake(), Some(30 * SECOND));
        let pass = schedule.poll(30 * SECOND);
        assert_eq!(
            pass,
            vec![
                ScheduleAction::ReplicateRecords {
                    members: {
                        let mut m = members.clone();
                        m.sort();
                        m
                    }
                },
                ScheduleAction::DigestHoldings
            ]
        );
        schedule.holdings_digested(list.clone());
        let sent = summaries(&schedule.poll(30 * SECOND));
        let (sa, sb) = (summary_digest(&list_a), summary_digest(&list_b));
        assert_eq!(
            sent,
            BTreeMap::from([(a, (sa, Some(2))), (b, (sb, Some(3)))]),
            "never acknowledged: the lists go"
        );
        schedule.summary_answered(a, sa, Some(&PastResponse::Done));
        schedule.summary_answered(b, sb, None);

        // Next pass, nothing changed: `a` gets the digest only, `b` the list again.
        assert_eq!(
            schedule.poll(60 * SECOND).last(),
            Some(&ScheduleAction::DigestHoldings)
        );
        schedule.holdings_digested(list.clone());
        let sent = summaries(&schedule.poll(60 * SECOND));
        assert_eq!(sent, BTreeMap::from([(a, (sa, None)), (b, (sb, Some(3)))]));
        // `a` lost it (restarted, say): the list follows.
        schedule.summary_answered(a, sa, Some(&PastResponse::SummaryKnown { known: false }));
        schedule.summary_answered(b, sb, Some(&PastResponse::Done));
        assert_eq!(
            summaries(&schedule.poll(60 * SECOND)),
            BTreeMap::from([(a, (sa, Some(2)))])
        );
        schedule.summary_answered(a, sa, Some(&PastResponse::Done));

        // This node no longer holds anything `b` coordinates: `b` gets the empty list
        // once, then nothing.
        schedule.poll(90 * SECOND);
        schedule.holdings_digested(list_a.clone());
        let sent = summaries(&schedule.poll(90 * SECOND));
        let empty = summary_digest(&[]);
        assert_eq!(
            sent,
            BTreeMap::from([(a, (sa, None)), (b, (empty, Some(0)))])
        );
        schedule.summary_answered(a, sa, Some(&PastResponse::SummaryKnown { known: true }));
        schedule.summary_answered(b, empty, Some(&PastResponse::Done));
        schedule.poll(120 * SECOND);
        schedule.holdings_digested(list_a);
        assert_eq!(
            summaries(&schedule.poll(120 * SECOND)),
            BTreeMap::from([(a, (sa, None))])
        );
    }

    #[test]
    fn a_listed_key_is_looked_at_again_only_if_its_digest_changed_since_it_settled() {
        let mut schedule = started(config());
        let members = ring();
        let holder = node(4);
        let keys = keys_of(node(0), &members, 2);
        let (k1, k2) = (keys[0], keys[1]);
        schedule.summary_listed(holder, 77, &[(k1, 10), (k2, 20)]);
        assert!(schedule.summary_known(holder, 77));
        assert!(!schedule.summary_known(holder, 78));
        let mut first = reconciles(&schedule.poll(SECOND));
        first.sort();
        let mut both = vec![k1, k2];
        both.sort();
        assert_eq!(first, both, "never settled: both are looked at");
        schedule.reconciled(SECOND, &outcome(k1, true, &[(holder, 10)]));
        schedule.reconciled(SECOND, &outcome(k2, true, &[(holder, 20)]));

        schedule.summary_listed(holder, 78, &[(k1, 10), (k2, 21)]);
        assert_eq!(
            reconciles(&schedule.poll(2 * SECOND)),
            vec![k2],
            "only the changed one"
        );
        schedule.reconciled(2 * SECOND, &outcome(k2, true, &[(holder, 21)]));

        // A key the holder held at the settled reconcile and lists no more.
        schedule.summary_listed(holder, 79, &[(k2, 21)]);
        assert_eq!(reconciles(&schedule.poll(3 * SECOND)), vec![k1]);
    }

    #[test]
    fn an_unsettled_key_is_retried_with_growing_waits_and_never_given_up() {
        let mut schedule = started(ScheduleConfig {
            period: 30 * SECOND,
            ..config()
        });
        let stuck = key(9);
        schedule.nudged([stuck]);
        let mut now = SECOND;
        assert_eq!(reconciles(&schedule.poll(now)), vec![stuck]);
        let mut waits = Vec::new();
        for _ in 0..12 {
            schedule.reconciled(now, &outcome(stuck, false, &[]));
            let retry_at = schedule.retry_due.first().unwrap().0;
            assert!(
                schedule.next_wake().unwrap() <= retry_at,
                "the driver wakes for it"
            );
            assert_eq!(
                reconciles(&schedule.poll(retry_at - Duration::from_millis(1))),
                Vec::new()
            );
            let retried = schedule.poll(retry_at);
            assert_eq!(
                reconciles(&retried),
                vec![stuck],
                "retried after {} failures",
                waits.len() + 1
            );
            waits.push((retry_at - now).as_secs());
            now = retry_at;
        }
        assert_eq!(waits, vec![2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30, 30]);

        // Settled at last: no more retries.
        schedule.reconciled(now, &outcome(stuck, true, &[]));
        assert_eq!(schedule.retries_waiting(), 0);
        let slow = schedule.next_wake().unwrap();
        assert!(reconciles(&schedule.poll(slow)).is_empty());
    }

    #[test]
    fn the_retries_waiting_are_bounded_and_the_farthest_due_go_first() {
        let mut schedule = started(ScheduleConfig {
            retry_cap: 3,
            ..config()
        });
        let keys: Vec<PlacementKey> = (10..15).map(key).collect();
        schedule.nudged(keys.clone());
        assert_eq!(reconciles(&schedule.poll(SECOND)).len(), 5);
        // Failures one second apart: the later ones are due later.
        for (i, at) in keys.iter().enumerate() {
            let now = SECOND * (2 + u32::try_from(i).unwrap());
            schedule.reconciled(now, &outcome(*at, false, &[]));
        }
        assert_eq!(schedule.retries_waiting(), 3);
        let mut retried = Vec::new();
        for _ in 0..3 {
            let due = schedule.retry_due.first().unwrap().0;
            retried.extend(reconciles(&schedule.poll(due)));
        }
        assert_eq!(
            retried,
            keys[..3].to_vec(),
            "the three due soonest are kept"
        );
    }

    #[test]
    fn keeper_statuses_are_reused_until_their_ttl_of_the_schedules_time() {
        let mut schedule = started(config());
        let file = FileId(Id::hash(b"file"));
        let statuses = vec![FileStatus::default()];
        let mut learnt = outcome(key(1), true, &[]);
        learnt.learnt = vec![(file, statuses.clone())];
        schedule.reconciled(10 * SECOND, &learnt);
        assert_eq!(
            schedule
                .known_statuses(10 * SECOND + STATUS_TTL - Duration::from_millis(1))
                .get(&file),
            Some(&statuses)
        );
        assert!(schedule.known_statuses(10 * SECOND + STATUS_TTL).is_empty());
    }

    #[test]
    fn the_neighbourhood_changing_brings_a_settled_key_back() {
        let mut schedule = started(config());
        let members = ring();
        let holder = node(4);
        let mine = keys_of(node(0), &members, 1)[0];
        schedule.summary_listed(holder, 1, &[(mine, 10)]);
        assert_eq!(reconciles(&schedule.poll(SECOND)), vec![mine]);
        schedule.reconciled(SECOND, &outcome(mine, true, &[(holder, 10)]));
        schedule.summary_listed(holder, 1, &[(mine, 10)]);
        assert_eq!(
            reconciles(&schedule.poll(SECOND)),
            Vec::new(),
            "nothing changed"
        );
        // One of the nodes a reconcile asks is gone.
        let near = closest(&mine.0, members.iter().copied(), 5);
        let after: Vec<NodeId> = members.iter().copied().filter(|n| *n != near[1]).collect();
        schedule.view_changed(2 * SECOND, after);
        schedule.summary_listed(holder, 1, &[(mine, 10)]);
        assert_eq!(reconciles(&schedule.poll(2 * SECOND)), vec![mine]);
    }
}
