//! The node's maintenance and scrub workers: the driver of `past::maintenance`'s
//! machines. Every decision (what a key needs, whether an order may be obeyed) is
//! sans-IO in `cairn_past::maintenance`; this module decides only *when* to look, and
//! carries the machines out: it schedules, drives them ([`Node::drive_maintenance`]:
//! asks bounded by `call_timeout`, paces through the repair budget, `handle` on the
//! blocking pool), applies what they decide to the store, and counts it. See
//! `docs/repair.md`.
//!
//! Owns: [`MaintenanceConfig`], the maintenance task (one per node: debounced runs after
//! leaf-set changes, a slow pass, nudges from other holders) with the coordinator's
//! memory (settled digests, the keeper status cache), the driving of
//! [`KeyReconcile`] per key and of [`OrderCheck`] per order received, the `Reconcile`
//! and `Summary` handlers, the scrub task, and [`RateLimiter`]. The replication of
//! certificates and root records that the task runs is [`crate::records`]'.
//!
//! May use: [`super`] (the node, `ask`, `locate`, `drive_maintenance`), [`cairn_past`],
//! [`cairn_store`], [`cairn_core::id`].
//!
//! # Who does what
//! The live node closest to a key (in its own leaf-set view) **coordinates** it and
//! runs its [`KeyReconcile`]. Every other holder of a key only tells the coordinator
//! (`Reconcile`, batched per coordinator) when the key's neighbourhood changed, a scrub
//! dropped a fragment, or (on the slow pass) with a digest of what it holds, which the
//! coordinator compares with what it saw at its last settled reconcile.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{Node, unix_now};
use cairn_core::id::{FileId, Id, NodeId, PlacementKey};
use cairn_past::maintenance::{
    Change, FileStatus, KeyReconcile, KnownStatuses, Order, OrderCheck, affected_ranges,
    holdings_digest, summary_digest,
};
use cairn_past::{NodeAddress, PastRequest, PastResponse, Refusal, closest};
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
            call_timeout: Duration::from_secs(10),
            batch: 64,
        }
    }
}

/// A token bucket over bytes: `take(n)` waits until `n` bytes fit in the rate. One
/// burst of a second's worth is allowed.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: u64,
    next_free: tokio::sync::Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (0: unlimited).
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            bytes_per_sec,
            next_free: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` more may go.
    pub async fn take(&self, bytes: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        // Capped at an hour: a nonsense size must not stall (or overflow) the clock.
        let cost = Duration::try_from_secs_f64(bytes as f64 / self.bytes_per_sec as f64)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(3600));
        let wait_until = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            // Allow a burst of one second's worth.
            let start = (*next).max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
            *next = start.checked_add(cost).unwrap_or(start);
            *next
        };
        let now = Instant::now();
        if wait_until > now + Duration::from_secs(1) {
            tokio::time::sleep(wait_until - now - Duration::from_secs(1)).await;
        }
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

/// The memory of the coordinator: what each holder's digest of a key was when the
/// key was last reconciled to a settled state (and whether it held anything there),
/// the neighbourhood then, and what certificate keepers said lately.
#[derive(Default)]
struct Memory {
    digests: BTreeMap<(NodeId, PlacementKey), (u64, bool)>,
    responsible: HashMap<PlacementKey, u64>,
    statuses: StatusCache,
}

impl Memory {
    /// Bounds the memory: cleared when it grows past this many entries (it is only an
    /// optimisation; forgetting costs a reconcile).
    const MAX_ENTRIES: usize = 200_000;

    fn trim(&mut self) {
        if self.digests.len() > Self::MAX_ENTRIES {
            self.digests.clear();
        }
        if self.responsible.len() > Self::MAX_ENTRIES {
            self.responsible.clear();
        }
        self.statuses.expire();
    }
}

/// What the keepers said of a file, kept for [`StatusCache::TTL`] so that the blocks of
/// one file do not each ask again. Which answers are worth keeping (a live certificate,
/// no tombstone: a reclaim is always seen at once) is [`KeyReconcile`]'s decision; this
/// only keeps them, and hands each reconcile the ones still fresh.
#[derive(Default)]
struct StatusCache {
    known: KnownStatuses,
    learnt_at: HashMap<FileId, Instant>,
}

impl StatusCache {
    /// How long a keeper's "live certificate" answer is reused.
    const TTL: Duration = Duration::from_secs(5);

    /// The statuses still fresh (a shared snapshot: cheap per key).
    fn known(&mut self) -> KnownStatuses {
        self.expire();
        Arc::clone(&self.known)
    }

    fn learn(&mut self, learnt: Vec<(FileId, Vec<FileStatus>)>) {
        if learnt.is_empty() {
            return;
        }
        let now = Instant::now();
        let known = Arc::make_mut(&mut self.known);
        for (file, statuses) in learnt {
            known.insert(file, statuses);
            self.learnt_at.insert(file, now);
        }
    }

    fn expire(&mut self) {
        let stale: Vec<FileId> = self
            .learnt_at
            .iter()
            .filter(|(_, at)| at.elapsed() >= Self::TTL)
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

fn members_with_self(node: &Node) -> Vec<NodeId> {
    let view = node.overlay_view();
    let mut ids: Vec<NodeId> = view.members().chain(std::iter::once(node.id())).collect();
    ids.sort();
    ids.dedup();
    ids
}

fn ids_digest(ids: &[NodeId]) -> u64 {
    let parts: Vec<&[u8]> = ids.iter().map(|id| id.0.as_bytes().as_slice()).collect();
    let id = Id::hash_parts(&parts);
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_be_bytes(first)
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

    /// The coordinator of `key` in this node's view: the closest live node.
    fn coordinator_of(&self, key: &PlacementKey, members: &[NodeId]) -> NodeId {
        closest(&key.0, members.iter().copied(), 1)
            .first()
            .copied()
            .unwrap_or(self.id())
    }

    /// Groups `items` by the coordinator of their key; this node's own go to `mine`.
    fn by_coordinator<T>(
        &self,
        items: impl IntoIterator<Item = (PlacementKey, T)>,
        members: &[NodeId],
        mine: &mut Vec<(PlacementKey, T)>,
    ) -> BTreeMap<NodeId, Vec<(PlacementKey, T)>> {
        let mut grouped: BTreeMap<NodeId, Vec<(PlacementKey, T)>> = BTreeMap::new();
        for (key, item) in items {
            let coordinator = self.coordinator_of(&key, members);
            if coordinator == self.id() {
                mine.push((key, item));
            } else {
                grouped.entry(coordinator).or_default().push((key, item));
            }
        }
        grouped
    }

    /// Asks each key's coordinator to look at it (one request per coordinator); keys
    /// this node coordinates itself are returned.
    async fn nudge(&self, keys: Vec<PlacementKey>, members: &[NodeId]) -> Vec<PlacementKey> {
        let mut mine = Vec::new();
        let grouped = self.by_coordinator(keys.into_iter().map(|k| (k, ())), members, &mut mine);
        let mut tasks = JoinSet::new();
        for (coordinator, keys) in grouped {
            let Some(target) = self.address_of(&coordinator) else {
                continue;
            };
            let node = self.clone();
            let from = self.id();
            tasks.spawn(async move {
                // Chunked so that one request stays small.
                let keys: Vec<PlacementKey> = keys.into_iter().map(|(k, ())| k).collect();
                for chunk in keys.chunks(8192) {
                    let request = PastRequest::Reconcile {
                        from,
                        keys: chunk.to_vec(),
                    };
                    if let Err(e) = node.ask_bounded(&target, request).await {
                        tracing::debug!(to = %target.id, "reconcile nudge not delivered: {e}");
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        mine.into_iter().map(|(k, ())| k).collect()
    }

    /// The slow pass's summaries: for each coordinator, the digest of this node's list
    /// of keys it coordinates, and the list itself only when the coordinator does not
    /// know that digest. `sent` remembers what each coordinator acknowledged; a
    /// coordinator whose range this node no longer holds anything in gets the empty
    /// list once. Returns this node's own list.
    async fn send_summaries(
        &self,
        list: Vec<(PlacementKey, u64)>,
        members: &[NodeId],
        sent: &mut HashMap<NodeId, u64>,
    ) -> Vec<(PlacementKey, u64)> {
        let mut mine = Vec::new();
        let mut grouped = self.by_coordinator(list, members, &mut mine);
        for gone in sent.keys() {
            grouped.entry(*gone).or_default();
        }
        let mut tasks = JoinSet::new();
        for (coordinator, list) in grouped {
            let Some(target) = self.address_of(&coordinator) else {
                continue;
            };
            let summary = summary_digest(&list);
            let known_before = sent.get(&coordinator) == Some(&summary);
            let node = self.clone();
            let from = self.id();
            tasks.spawn(async move {
                if known_before {
                    let ask = PastRequest::Summary {
                        from,
                        summary,
                        list: None,
                    };
                    if let Ok(PastResponse::SummaryKnown { known: true }) =
                        node.ask_bounded(&target, ask).await
                    {
                        return (coordinator, Some(summary), list.is_empty());
                    }
                }
                let send = PastRequest::Summary {
                    from,
                    summary,
                    list: Some(list.clone()),
                };
                let acknowledged = matches!(
                    node.ask_bounded(&target, send).await,
                    Ok(PastResponse::Done)
                );
                (
                    coordinator,
                    acknowledged.then_some(summary),
                    list.is_empty(),
                )
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((coordinator, Some(_), true)) => {
                    sent.remove(&coordinator);
                }
                Ok((coordinator, Some(summary), false)) => {
                    sent.insert(coordinator, summary);
                }
                Ok((coordinator, None, _)) => {
                    sent.remove(&coordinator);
                }
                Err(e) => tracing::debug!("a summary task failed: {e}"),
            }
        }
        mine
    }

    /// Digests of what this node holds under `keys`.
    async fn own_digests(&self, keys: Vec<PlacementKey>) -> Vec<(PlacementKey, u64)> {
        self.blocking(move |node| {
            keys.into_iter()
                .filter_map(|key| {
                    let (fragments, pointers, references) =
                        node.inner.holder.holdings(&key).ok()?;
                    Some((key, holdings_digest(&fragments, &pointers, &references)))
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Keys held here (fragments) in the given ring ranges.
    async fn keys_in(&self, ranges: Vec<(PlacementKey, PlacementKey)>) -> Vec<PlacementKey> {
        self.blocking(move |node| {
            let mut keys = BTreeSet::new();
            for (start, end) in ranges {
                match node.store().placement_keys_in(&start, &end) {
                    Ok(found) => keys.extend(found),
                    Err(e) => tracing::warn!("listing keys for maintenance failed: {e}"),
                }
            }
            keys.into_iter().collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Reconciles one key as its coordinator ([`KeyReconcile`]): the machine decides,
    /// this counts what it did and remembers what it learnt. Returns whether the key
    /// ended settled.
    async fn reconcile(&self, key: PlacementKey, memory: &mut Memory) -> bool {
        let config = self.maintenance_config().clone();
        self.inner
            .counters
            .keys_reconciled
            .fetch_add(1, Ordering::Relaxed);
        // Ask wide first: `n` is only known from a certificate.
        let wide = u16::try_from(config.span * 2 + config.spares).unwrap_or(u16::MAX);
        let keepers =
            u16::try_from(self.inner.config.past.certificate_replicas + 2).unwrap_or(u16::MAX);
        let machine = KeyReconcile::new(key, wide, keepers, memory.statuses.known(), unix_now());
        let mut outcome = self.drive_maintenance(machine).await;
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
        memory.statuses.learn(std::mem::take(&mut outcome.learnt));
        if let Some(seen) = outcome.seen.take() {
            for holdings in seen {
                memory
                    .digests
                    .insert((holdings.node, key), (holdings.digest, holdings.held));
            }
            let members = members_with_self(self);
            memory
                .responsible
                .insert(key, neighbourhood_digest(&key, &members, &config));
            memory.trim();
        }
        for problem in &outcome.problems {
            tracing::debug!(%key, "not settled: {problem}");
        }
        outcome.is_settled()
    }

    /// A maintenance order to this node (`Handoff`, `Release`, `DropPointer`,
    /// `Forget`) that passed the local checks: checked with the node it concerns
    /// ([`OrderCheck`]), then applied to the store and counted.
    pub(crate) async fn obey(&self, order: Order) -> PastResponse {
        let change = match self.drive_maintenance(OrderCheck::new(order)).await {
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
            (Change::Forget { file, .. }, PastResponse::Reclaimed { fragments, .. }) => {
                tracing::info!(%file, fragments, "a missed reclaim carried out");
            }
            _ => {}
        }
        applied
    }

    /// `Reconcile`: queued for the maintenance task (dropped if its queue is full; the
    /// slow pass finds the key again).
    pub(crate) fn handle_reconcile(&self, keys: Vec<PlacementKey>) -> PastResponse {
        let _ = self.inner.maintenance_tx.try_send(Job::Nudged(keys));
        PastResponse::Done
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
                let known = self
                    .inner
                    .known_summaries
                    .lock()
                    .map(|map| map.get(&from) == Some(&summary))
                    .unwrap_or(false);
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

/// The keys of `from`'s list (or of this node's own, `from` being itself) that need
/// a look: a digest that differs from the one seen at the last settled reconcile, a
/// neighbourhood that changed since, or a key `from` held then and lists no more.
fn changed_keys(
    memory: &Memory,
    from: NodeId,
    list: &[(PlacementKey, u64)],
    members: &[NodeId],
    config: &MaintenanceConfig,
) -> Vec<PlacementKey> {
    let listed: BTreeMap<PlacementKey, u64> = list.iter().copied().collect();
    let mut changed: Vec<PlacementKey> = listed
        .iter()
        .filter(|(key, digest)| {
            memory.digests.get(&(from, **key)).map(|(d, _)| d) != Some(*digest)
                || memory.responsible.get(*key) != Some(&neighbourhood_digest(key, members, config))
        })
        .map(|(key, _)| *key)
        .collect();
    let low = (from, PlacementKey(Id([0; 32])));
    let high = (from, PlacementKey(Id([0xff; 32])));
    changed.extend(
        memory
            .digests
            .range(low..=high)
            .filter(|((_, key), (_, held))| *held && !listed.contains_key(key))
            .map(|((_, key), _)| *key),
    );
    changed
}

/// The maintenance task: debounced runs after leaf-set changes, the slow pass, nudges.
async fn maintenance_task(node: Node, mut jobs: mpsc::Receiver<Job>) {
    /// A key whose reconcile did not settle is tried again on this many slow passes.
    const RETRIES: u8 = 5;
    let config = node.maintenance_config().clone();
    let mut stop = node.inner.shutdown.subscribe();
    let mut memory = Memory::default();
    let mut sent: HashMap<NodeId, u64> = HashMap::new();
    let mut retry: BTreeMap<PlacementKey, u8> = BTreeMap::new();
    let mut seen_members = members_with_self(&node);
    let mut due: Option<tokio::time::Instant> = None;
    let mut slow = tokio::time::interval(config.period);
    slow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    slow.tick().await;
    // Keys to coordinate now.
    let mut pending: BTreeSet<PlacementKey> = BTreeSet::new();
    loop {
        let wake_at = due.unwrap_or_else(|| tokio::time::Instant::now() + config.period);
        let work = !pending.is_empty();
        tokio::select! {
            _ = stop.changed() => break,
            _ = node.inner.view_changed.notified() => {
                due = Some(tokio::time::Instant::now() + config.debounce);
            }
            _ = tokio::time::sleep_until(wake_at), if due.is_some() => {
                due = None;
                let members = members_with_self(&node);
                let ranges = affected_ranges(&seen_members, &members, config.span);
                seen_members = members.clone();
                if !ranges.is_empty() {
                    node.replicate_certificates(&members).await;
                    node.replicate_roots(&members).await;
                    let keys = node.keys_in(ranges).await;
                    tracing::debug!(keys = keys.len(), "leaf set changed: keys to look at");
                    pending.extend(node.nudge(keys, &members).await);
                }
            }
            _ = slow.tick() => {
                memory.trim();
                let members = members_with_self(&node);
                node.replicate_certificates(&members).await;
                node.replicate_roots(&members).await;
                let zero = PlacementKey(Id::ZERO);
                let keys = node.keys_in(vec![(zero, zero)]).await;
                let list = node.own_digests(keys).await;
                let mine = node.send_summaries(list, &members, &mut sent).await;
                pending.extend(changed_keys(&memory, node.id(), &mine, &members, &config));
                pending.extend(retry.keys().copied());
            }
            job = jobs.recv() => match job {
                None => break,
                Some(Job::Nudged(keys)) => pending.extend(keys),
                Some(Job::Listed { from, list, summary }) => {
                    let members = members_with_self(&node);
                    pending.extend(changed_keys(&memory, from, &list, &members, &config));
                    if let Ok(mut known) = node.inner.known_summaries.lock() {
                        if known.len() > Memory::MAX_ENTRIES {
                            known.clear();
                        }
                        known.insert(from, summary);
                    }
                }
                Some(Job::Changed(key)) => {
                    let members = members_with_self(&node);
                    pending.extend(node.nudge(vec![key], &members).await);
                }
            },
            _ = std::future::ready(()), if work => {
                for _ in 0..config.batch {
                    let Some(key) = pending.pop_first() else { break };
                    if node.is_stopped() {
                        break;
                    }
                    let settled = node.reconcile(key, &mut memory).await;
                    if settled {
                        retry.remove(&key);
                    } else {
                        let tries = retry.entry(key).or_insert(0);
                        *tries += 1;
                        if *tries > RETRIES {
                            tracing::debug!(%key, "reconcile given up until something changes");
                            retry.remove(&key);
                        }
                    }
                }
            }
        }
    }
}

/// A digest of the nodes a reconcile of `key` asks, as this node's view has them.
fn neighbourhood_digest(key: &PlacementKey, members: &[NodeId], config: &MaintenanceConfig) -> u64 {
    ids_digest(&closest(
        &key.0,
        members.iter().copied(),
        config.span * 2 + config.spares,
    ))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
