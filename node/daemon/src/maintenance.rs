//! The node's maintenance and scrub workers: the driver of `past::maintenance`'s
//! machines. Every decision is sans-IO in `cairn_past::maintenance`: *when* to look at
//! which key is [`MaintenanceSchedule`]'s (debounce, slow pass, summaries, nudges,
//! retries, the coordinator's memory, the keeper status cache), *what* a key needs is
//! [`KeyReconcile`]'s, whether an order may be obeyed is [`OrderCheck`]'s. This module
//! only carries them out: it feeds the schedule (view changes, timers from its
//! `next_wake`, requests from other holders) and does what it asks (store listings on
//! the blocking pool, requests bounded by `call_timeout`, each reconcile driven by
//! [`Node::drive_maintenance`]), applies orders to the store, and counts. See
//! `docs/repair.md`.
//!
//! Owns: [`MaintenanceConfig`] (and its mapping onto [`ScheduleConfig`]), the schedule
//! shared by the maintenance task and the request handlers ([`SharedSchedule`]: the
//! `Summary` handler answers from it), the maintenance task, the `Reconcile` and
//! `Summary` handlers, the obeying of orders, the scrub task, and [`RateLimiter`]. The
//! replication of certificates and root records that the task runs is
//! [`crate::records`]'.
//!
//! May use: [`super`] (the node, `ask`, `drive_maintenance`), [`cairn_past`],
//! [`cairn_store`], [`cairn_core::id`].
//!
//! # Who does what
//! The live node closest to a key (in its own leaf-set view) **coordinates** it and
//! runs its [`KeyReconcile`]. Every other holder of a key only tells the coordinator
//! (`Reconcile`, batched per coordinator) when the key's neighbourhood changed, a scrub
//! dropped a fragment, or (on the slow pass) with a digest of what it holds, which the
//! coordinator compares with what it saw at its last settled reconcile.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{GatewayError, Node, unix_now};
use cairn_core::id::{Id, NodeId, PlacementKey};
use cairn_past::maintenance::{
    Change, KeyReconcile, MAX_NUDGE_KEYS, MaintenanceSchedule, Order, OrderCheck, ScheduleAction,
    ScheduleConfig, held_digests, held_keys_in,
};
use cairn_past::operation::RepairBudget;
use cairn_past::{NodeAddress, PastRequest, PastResponse, Refusal};
use cairn_store::{NodeStore, StoreError};

/// How maintenance and scrubbing run.
#[derive(Clone, Debug)]
pub struct MaintenanceConfig {
    /// Whether the workers run at all.
    pub enabled: bool,
    /// Wait this long after the last leaf-set change before looking (changes come in
    /// bursts: a death is seen by several neighbours, a join moves several leaf sets).
    pub debounce: Duration,
    /// The slow pass: every key held is summarised to its coordinator this often.
    pub period: Duration,
    /// Nodes asked beyond the `n` closest (they may hold copies a join displaced).
    pub spares: usize,
    /// How many nodes on each side of a node that came or went have keys affected
    /// (at least the largest `n` in use; a larger `n` is caught by the slow pass).
    pub span: usize,
    /// Most bytes of repair traffic (fragments fetched, regenerated, handed off) per
    /// second that this node starts.
    pub repair_bytes_per_sec: u64,
    /// How often the scrub re-reads every fragment (0: never).
    pub scrub_period: Duration,
    /// Most bytes the scrub reads per second.
    pub scrub_bytes_per_sec: u64,
    /// How often the collection pass looks for fragments of uploads never certified
    /// (0: never; [`crate::admission`]).
    pub collect_period: Duration,
    /// Every network call of maintenance gives up after this long.
    pub call_timeout: Duration,
    /// Most keys a node coordinates before it looks at new events again.
    pub batch: usize,
}

impl Default for MaintenanceConfig {
    fn default() -> MaintenanceConfig {
        MaintenanceConfig {
            enabled: true,
            debounce: Duration::from_secs(2),
            period: Duration::from_secs(30),
            spares: 4,
            span: 8,
            repair_bytes_per_sec: 50 << 20,
            scrub_period: Duration::from_secs(3600),
            scrub_bytes_per_sec: 20 << 20,
            collect_period: Duration::from_secs(600),
            call_timeout: Duration::from_secs(10),
            batch: 64,
        }
    }
}

/// The node's repair budget ([`RepairBudget`], the arithmetic the simulator uses too):
/// `take(n)` waits until `n` bytes fit in the rate. One burst of a second's worth is
/// allowed.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    epoch: tokio::time::Instant,
    budget: std::sync::Mutex<RepairBudget>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (0: unlimited).
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec,
            epoch: tokio::time::Instant::now(),
            budget: std::sync::Mutex::new(RepairBudget::default()),
        }
    }

    /// Waits until `bytes` more may go.
    pub async fn take(&self, bytes: u64) {
        let wake_at = {
            let mut budget = self
                .budget
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            budget.take(self.epoch.elapsed(), self.bytes_per_sec, bytes)
        };
        tokio::time::sleep_until(self.epoch + wake_at).await;
    }
}

/// What the maintenance task is told.
pub(crate) enum Job {
    /// Keys a holder asks this node to look at (something changed).
    Nudged(Vec<PlacementKey>),
    /// A holder's whole list for this coordinator (the slow pass), and its summary.
    Listed {
        from: NodeId,
        list: Vec<(PlacementKey, u64)>,
        summary: u64,
    },
    /// A key whose local holdings changed (the scrub dropped a fragment).
    Changed(PlacementKey),
}

impl MaintenanceConfig {
    /// What the schedule needs of it (`certificate_replicas` from the PAST config).
    pub fn schedule_config(&self, certificate_replicas: usize) -> ScheduleConfig {
        ScheduleConfig {
            debounce: self.debounce,
            period: self.period,
            span: self.span,
            spares: self.spares,
            batch: self.batch,
            certificate_replicas,
            ..ScheduleConfig::default()
        }
    }
}

/// The node's [`MaintenanceSchedule`] and the epoch of its time: shared by the
/// maintenance task and the `Summary` handler (which answers whether a summary is
/// known from it). Never locked across an await.
pub(crate) struct SharedSchedule {
    epoch: tokio::time::Instant,
    schedule: std::sync::Mutex<MaintenanceSchedule>,
}

impl SharedSchedule {
    pub(crate) fn new(id: NodeId, config: &super::NodeConfig) -> SharedSchedule {
        let schedule_config = config
            .maintenance
            .schedule_config(config.past.certificate_replicas);
        SharedSchedule {
            epoch: tokio::time::Instant::now(),
            schedule: std::sync::Mutex::new(MaintenanceSchedule::new(id, schedule_config)),
        }
    }

    /// Runs `f` on the schedule with the time now (since the node started).
    fn with<T>(&self, f: impl FnOnce(&mut MaintenanceSchedule, Duration) -> T) -> T {
        let now = self.epoch.elapsed();
        // A panic inside the schedule is a bug that already surfaced; its state is
        // still the best there is.
        let mut schedule = self
            .schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut schedule, now)
    }

    /// The instant of a schedule time.
    fn instant(&self, at: Duration) -> tokio::time::Instant {
        self.epoch.checked_add(at).unwrap_or(self.epoch)
    }
}

/// The members of the node's leaf-set view.
fn view_members(node: &Node) -> Vec<NodeId> {
    node.overlay_view().members().collect()
}

impl Node {
    /// Starts the maintenance and scrub tasks (if enabled).
    pub(crate) fn start_maintenance(&self, jobs: mpsc::Receiver<Job>) {
        let config = &self.inner.config.maintenance;
        if !config.enabled {
            return;
        }
        let tasks = &self.inner.tasks;
        tasks.spawn("maintenance", maintenance_task(self.clone(), jobs));
        if !config.scrub_period.is_zero() {
            tasks.spawn("the scrub", scrub_task(self.clone()));
        }
        if !config.collect_period.is_zero() {
            tasks.spawn(
                "the collection of uncertified uploads",
                crate::admission::collect_task(self.clone()),
            );
        }
    }

    fn maintenance_config(&self) -> &MaintenanceConfig {
        &self.inner.config.maintenance
    }

    /// `ask` bounded by the maintenance call timeout.
    async fn ask_bounded(
        &self,
        to: &NodeAddress,
        request: PastRequest,
    ) -> Result<PastResponse, String> {
        match tokio::time::timeout(
            self.maintenance_config().call_timeout,
            self.ask(to, request),
        )
        .await
        {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("node {} did not answer in time", to.id)),
        }
    }

    /// Runs `work` on the blocking pool (store work waits for its sync).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Node) -> T + Send + 'static,
    ) -> Result<T, String> {
        let node = self.clone();
        tokio::task::spawn_blocking(move || work(&node))
            .await
            .map_err(|e| format!("a store task failed: {e}"))
    }

    fn schedule<T>(&self, f: impl FnOnce(&mut MaintenanceSchedule, Duration) -> T) -> T {
        self.inner.schedule.with(f)
    }

    /// Carries out what the schedule decided: the requests to other nodes at once
    /// (their answers fed back), then the rest in order.
    async fn carry_out(&self, actions: Vec<ScheduleAction>) {
        let mut sends = JoinSet::new();
        let mut rest = Vec::new();
        for action in actions {
            match action {
                ScheduleAction::Nudge { coordinator, keys } => {
                    let node = self.clone();
                    sends.spawn(async move {
                        let target = node.address_of(&coordinator)?;
                        let request = PastRequest::Reconcile {
                            from: node.id(),
                            keys,
                        };
                        if let Err(e) = node.ask_bounded(&target, request).await {
                            tracing::debug!(to = %coordinator, "reconcile nudge not delivered: {e}");
                        }
                        None
                    });
                }
                ScheduleAction::SendSummary {
                    coordinator,
                    summary,
                    list,
                } => {
                    let node = self.clone();
                    sends.spawn(async move {
                        let request = PastRequest::Summary {
                            from: node.id(),
                            summary,
                            list,
                        };
                        let answer = match node.address_of(&coordinator) {
                            Some(target) => node.ask_bounded(&target, request).await.ok(),
                            None => None,
                        };
                        Some((coordinator, summary, answer))
                    });
                }
                other => rest.push(other),
            }
        }
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok(Some((coordinator, summary, answer))) => self.schedule(|schedule, _| {
                    schedule.summary_answered(coordinator, summary, answer.as_ref());
                }),
                Ok(None) => {}
                Err(e) => tracing::debug!("a maintenance request task failed: {e}"),
            }
        }
        for action in rest {
            if self.is_stopped() {
                return;
            }
            match action {
                ScheduleAction::ReplicateRecords { members } => {
                    self.replicate_certificates(&members).await;
                    self.replicate_roots(&members).await;
                }
                ScheduleAction::ListHeldKeys { ranges } => {
                    let keys = self.keys_in(ranges).await;
                    self.schedule(|schedule, _| schedule.held_keys_listed(keys));
                }
                ScheduleAction::DigestHoldings => {
                    let list = self
                        .blocking(|node| held_digests(&node.inner.holder))
                        .await
                        .unwrap_or_default();
                    self.schedule(|schedule, _| schedule.holdings_digested(list));
                }
                ScheduleAction::Reconcile { key } => self.reconcile(key).await,
                // Sent above.
                ScheduleAction::Nudge { .. } | ScheduleAction::SendSummary { .. } => {}
            }
        }
    }

    /// Keys held here (fragments) in the given ring ranges.
    async fn keys_in(&self, ranges: Vec<(PlacementKey, PlacementKey)>) -> Vec<PlacementKey> {
        self.blocking(move |node| held_keys_in(&node.inner.holder, &ranges))
            .await
            .unwrap_or_default()
    }

    /// Reconciles one key as its coordinator ([`KeyReconcile`], built by the schedule):
    /// the machine decides, this counts what it did and hands the outcome back.
    async fn reconcile(&self, key: PlacementKey) {
        self.inner
            .counters
            .keys_reconciled
            .fetch_add(1, Ordering::Relaxed);
        let machine: KeyReconcile<GatewayError> =
            self.schedule(|schedule, now| schedule.key_reconcile(key, now, unix_now()));
        let outcome = self.drive_maintenance(machine).await;
        let counters = &self.inner.counters;
        let done = outcome.done;
        for (counter, add) in [
            (&counters.repair_bytes, done.repair_bytes),
            (&counters.fragments_regenerated, done.regenerated),
            (&counters.fragments_handed_off, done.handed_off),
            (&counters.fragments_forgotten, done.forgotten),
        ] {
            counter.fetch_add(add, Ordering::Relaxed);
        }
        for problem in &outcome.problems {
            tracing::debug!(%key, "not settled: {problem}");
        }
        self.schedule(|schedule, now| schedule.reconciled(now, &outcome));
    }

    /// A maintenance order to this node (`Handoff`, `Release`, `DropPointer`) that
    /// passed the local checks: checked in this node's own view and with the node it
    /// concerns ([`OrderCheck`], over a fresh random nonce), then applied to the store
    /// and counted. At most [`MAX_ORDERS_PER_PEER`] orders of one sender, and
    /// [`MAX_ORDERS_PER_KEY`] about one key, are checked at a time ([`OrderSlots`]).
    pub(crate) async fn obey(&self, order: Order) -> PastResponse {
        let Some(_slot) = self.inner.order_slots.take(order.from, order.key) else {
            self.inner
                .counters
                .orders_refused_busy
                .fetch_add(1, Ordering::Relaxed);
            return PastResponse::Refused(Refusal::Store(format!(
                "too many orders of {} or about {} are being checked here",
                order.from, order.key
            )));
        };
        let check = OrderCheck::new(order, cairn_core::crypto::random_bytes());
        let change = match self.drive_maintenance(check).await {
            Ok(change) => change,
            Err(refusal) => return PastResponse::Refused(refusal),
        };
        let applied = {
            let change = change.clone();
            self.blocking(move |node| node.inner.holder.apply(&change))
                .await
                .unwrap_or_else(|e| PastResponse::Refused(Refusal::Store(e)))
        };
        let counters = &self.inner.counters;
        match (&change, &applied) {
            (
                Change::HandedOff {
                    key,
                    index,
                    to,
                    bytes,
                },
                _,
            ) => {
                // The bytes went out whether or not the delete here worked.
                counters.repair_bytes.fetch_add(*bytes, Ordering::Relaxed);
                tracing::info!(%key, index, %to, "fragment handed off");
            }
            (
                Change::Released {
                    key,
                    index,
                    kept_by,
                },
                PastResponse::Done,
            ) => {
                counters.fragments_released.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%key, index, %kept_by, "surplus copy released");
            }
            _ => {}
        }
        applied
    }

    /// `Reconcile`: queued for the maintenance task (dropped if its queue is full; the
    /// slow pass finds the key again). A nudge naming more than [`MAX_NUDGE_KEYS`] keys
    /// is refused: no honest holder sends one.
    pub(crate) fn handle_reconcile(&self, keys: Vec<PlacementKey>) -> PastResponse {
        let counters = &self.inner.counters;
        if keys.len() > MAX_NUDGE_KEYS {
            counters.nudges_refused.fetch_add(1, Ordering::Relaxed);
            return PastResponse::Refused(Refusal::Store(format!(
                "a nudge names at most {MAX_NUDGE_KEYS} keys, not {}",
                keys.len()
            )));
        }
        let count = keys.len() as u64;
        if self
            .inner
            .maintenance_tx
            .try_send(Job::Nudged(keys))
            .is_err()
        {
            counters
                .nudged_keys_dropped
                .fetch_add(count, Ordering::Relaxed);
        }
        PastResponse::Done
    }

    /// Keys that nudges and summaries named and maintenance dropped: its queue was
    /// full, or [`cairn_past::maintenance::MAX_PENDING_KEYS`] keys waited already.
    pub(crate) fn maintenance_keys_dropped(&self) -> u64 {
        let queued = self
            .inner
            .counters
            .nudged_keys_dropped
            .load(Ordering::Relaxed);
        queued + self.schedule(|schedule, _| schedule.pending_dropped())
    }

    /// `Summary`: known or not; a list is queued for the maintenance task, which
    /// remembers the summary once it has looked at the list.
    pub(crate) fn handle_summary(
        &self,
        from: NodeId,
        summary: u64,
        list: Option<Vec<(PlacementKey, u64)>>,
    ) -> PastResponse {
        match list {
            None => {
                let known = self.schedule(|schedule, _| schedule.summary_known(from, summary));
                PastResponse::SummaryKnown { known }
            }
            Some(list) => match self.inner.maintenance_tx.try_send(Job::Listed {
                from,
                list,
                summary,
            }) {
                Ok(()) => PastResponse::Done,
                Err(_) => PastResponse::Refused(Refusal::Store(
                    "maintenance is busy; send the list again later".into(),
                )),
            },
        }
    }
}

/// The maintenance task: feeds the schedule (view changes, requests from holders, its
/// own timers) and carries out what it decides.
async fn maintenance_task(node: Node, mut jobs: mpsc::Receiver<Job>) {
    let stop = node.inner.tasks.token().clone();
    let members = view_members(&node);
    node.schedule(|schedule, now| schedule.start(now, members));
    loop {
        let wake = node
            .schedule(|schedule, _| schedule.next_wake())
            .map(|at| node.inner.schedule.instant(at));
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = node.inner.view_changed.notified() => {
                let members = view_members(&node);
                node.schedule(|schedule, now| schedule.view_changed(now, members));
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                let actions = node.schedule(|schedule, now| schedule.poll(now));
                node.carry_out(actions).await;
            }
            job = jobs.recv() => match job {
                None => break,
                Some(Job::Nudged(keys)) => node.schedule(|schedule, _| schedule.nudged(keys)),
                Some(Job::Listed { from, list, summary }) => node.schedule(|schedule, _| {
                    schedule.summary_listed(from, summary, &list);
                }),
                Some(Job::Changed(key)) => node.schedule(|schedule, _| schedule.key_changed(key)),
            },
        }
    }
}

/// The scrub: re-reads every fragment on a slow period at a bounded rate; a corrupt
/// one is deleted and its key handed to maintenance.
async fn scrub_task(node: Node) {
    let config = node.maintenance_config().clone();
    let limiter = RateLimiter::new(config.scrub_bytes_per_sec);
    // Ends when the node's token is cancelled (it is spawned as the node's task).
    loop {
        tokio::time::sleep(config.scrub_period).await;
        let zero = PlacementKey(Id::ZERO);
        let keys = node.keys_in(vec![(zero, zero)]).await;
        for key in keys {
            if node.is_stopped() {
                return;
            }
            let infos = node
                .blocking(move |node| node.store().fragments_under(&key))
                .await;
            let Ok(Ok(infos)) = infos else { continue };
            for info in infos {
                limiter.take(info.len).await;
                let index = info.index;
                let read = node
                    .blocking(move |node| node.store().get_fragment(&key, index))
                    .await;
                node.inner
                    .counters
                    .scrub_bytes
                    .fetch_add(info.len, Ordering::Relaxed);
                if let Ok(Err(StoreError::Corrupt { detail, .. })) = read {
                    tracing::warn!(%key, index, "scrub: corrupt fragment dropped: {detail}");
                    let _ = node
                        .blocking(move |node| node.store().delete_fragment(&key, index))
                        .await;
                    node.inner
                        .counters
                        .scrub_corrupt
                        .fetch_add(1, Ordering::Relaxed);
                    let _ = node.inner.maintenance_tx.try_send(Job::Changed(key));
                }
            }
        }
    }
}

/// At most this many maintenance orders of one sender are checked at a time (an
/// honest coordinator sends one per holder and key it reconciles, a few at once).
pub const MAX_ORDERS_PER_PEER: usize = 8;

/// At most this many maintenance orders about one key are checked at a time, whoever
/// sent them (an honest coordinator sends a holder one or two per key).
pub const MAX_ORDERS_PER_KEY: usize = 4;

/// The maintenance orders being checked, per sender and per key: each costs a locate
/// and a round trip, so neither one peer nor one key may have many at once.
#[derive(Debug, Default)]
pub(crate) struct OrderSlots {
    in_flight: std::sync::Mutex<(HashMap<NodeId, usize>, HashMap<PlacementKey, usize>)>,
}

impl OrderSlots {
    /// A slot for an order of `from` about `key`, if both have one left; it is given
    /// back when dropped.
    pub(crate) fn take(&self, from: NodeId, key: PlacementKey) -> Option<OrderSlot<'_>> {
        let mut in_flight = crate::lock(&self.in_flight);
        let (peers, keys) = &mut *in_flight;
        if peers.get(&from).copied().unwrap_or(0) >= MAX_ORDERS_PER_PEER
            || keys.get(&key).copied().unwrap_or(0) >= MAX_ORDERS_PER_KEY
        {
            return None;
        }
        *peers.entry(from).or_default() += 1;
        *keys.entry(key).or_default() += 1;
        Some(OrderSlot {
            slots: self,
            from,
            key,
        })
    }
}

/// One order's place in [`OrderSlots`].
pub(crate) struct OrderSlot<'a> {
    slots: &'a OrderSlots,
    from: NodeId,
    key: PlacementKey,
}

impl Drop for OrderSlot<'_> {
    fn drop(&mut self) {
        fn give_back<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, at: &K) {
            if let Some(count) = counts.get_mut(at) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(at);
                }
            }
        }
        let mut in_flight = crate::lock(&self.slots.in_flight);
        let (peers, keys) = &mut *in_flight;
        give_back(peers, &self.from);
        give_back(keys, &self.key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Instant;

    #[test]
    fn order_slots_are_bounded_per_sender_and_per_key_and_given_back() {
        let slots = OrderSlots::default();
        let peer = |n: u8| NodeId(Id([n; 32]));
        let key = |n: u8| PlacementKey(Id([n; 32]));
        // One sender, many keys: the sender's cap.
        let held: Vec<_> = (0..MAX_ORDERS_PER_PEER)
            .map(|i| slots.take(peer(1), key(i as u8)).unwrap())
            .collect();
        assert!(slots.take(peer(1), key(100)).is_none());
        assert!(slots.take(peer(2), key(100)).is_some());
        drop(held);
        assert!(slots.take(peer(1), key(100)).is_some());
        // One key, many senders: the key's cap.
        let held: Vec<_> = (0..MAX_ORDERS_PER_KEY)
            .map(|i| slots.take(peer(10 + i as u8), key(7)).unwrap())
            .collect();
        assert!(slots.take(peer(50), key(7)).is_none());
        drop(held);
        assert!(slots.take(peer(50), key(7)).is_some());
        assert!(
            crate::lock(&slots.in_flight).0.is_empty(),
            "nothing kept once given back"
        );
    }

    #[tokio::test]
    async fn the_rate_limiter_lets_a_second_of_burst_through_then_waits() {
        let limiter = RateLimiter::new(2000);
        let started = Instant::now();
        limiter.take(1000).await;
        limiter.take(1000).await;
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "the burst waits"
        );
        limiter.take(1000).await;
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "3000 bytes at 2000 B/s with a 1 s burst take half a second"
        );
        let unlimited = RateLimiter::new(0);
        let started = Instant::now();
        unlimited.take(u64::MAX).await;
        assert!(started.elapsed() < Duration::from_millis(100));
    }
}
