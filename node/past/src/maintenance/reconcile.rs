//! One key's reconciliation, as its coordinator runs it: from the wide locate through
//! the holdings, the authority and the plan to every step carried out.
//!
//! Owns: [`KeyReconcile`] (the [`Operation`]), its outcome ([`Reconciled`], [`Done`],
//! [`Unsettled`], [`SeenHoldings`]) and the status cache's type ([`KnownStatuses`]).
//!
//! May use: [`super::planner`] (every decision of substance is there),
//! [`super::receipt_names`], `cairn_core::erasure` (regeneration), the wire types.
//!
//! # The rules (`docs/repair.md`, "Reconciling one key")
//! 1. **Holdings.** Locate the `wide` closest nodes (the code, hence `n`, is only known
//!    from a certificate) and ask each for its holdings; then ask the diverted holders
//!    their pointers name. A node that does not answer is not live.
//! 2. **Authority.** No referencing file: nothing authorises a repair, the key is left
//!    alone. It is settled only when every node asked answered and none holds anything
//!    under the key; fragments or pointers without a referencing file
//!    ([`Unsettled::Unreferenced`]) or nodes that did not answer
//!    ([`Unsettled::Unanswered`]) leave it unsettled, since it may be short of `n`.
//!    Otherwise, for up to [`MAX_FILES`] referencing files, one at a
//!    time: the statuses the driver still trusts ([`KnownStatuses`]), else a locate of
//!    the file's keepers and a `FileStatus` of each. A keeper set that cannot be
//!    located makes the authority unknown. [`decide_authority`] then says:
//!    - *Unknown*: nothing is done (not settled);
//!    - *Reclaimed*: `Forget` to every node holding anything under the key (settled);
//!    - *Live*: `Forget` to the nodes referencing a reclaimed file, then plan.
//!
//!    Statuses that show a live certificate and no tombstone are handed back
//!    ([`Reconciled::learnt`]) for the driver to reuse for a while; a tombstone is never
//!    cached, so a reclaim is always seen at once.
//! 3. **Plan** ([`plan`]) over the `n` closest that answered, and carry out every step
//!    at once: handoffs, releases and pointer drops are each one order to the node
//!    concerned (which checks it, [`super::orders`]); regeneration fetches `k` good
//!    fragments one index at a time (each checked against the agreed hash), decodes,
//!    re-encodes, checks that every index a holder reported hashes as the re-encoding
//!    says, and stores each missing index on its target with a `RepairStore` whose
//!    receipt must name exactly that fragment. Every fragment fetched or stored is
//!    paced ([`Command::Pace`]).
//! 4. **Outcome.** Settled when no index is stuck and every step succeeded. When the
//!    key needed nothing at all, the holdings digests seen are handed back
//!    ([`Reconciled::seen`]) for the slow pass's memory.
//!
//! The decode and re-encode happen inside [`Operation::handle`] (when the `k`-th
//! fragment's pace is answered): a driver on an async runtime runs `handle` where
//! blocking is allowed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cairn_core::erasure::{BlockSpec, Codec, ErasureParams, Fragment, Offer, fragment_hash};
use cairn_core::id::{BlockHash, FileId, FragmentHash, Id, NodeId, PlacementKey};

use super::planner::{
    Authority, FileStatus, Observed, Plan, Step, decide_authority, holdings_digest, plan,
};
use super::receipt_names;
use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{
    NodeAddress, PastRequest, PastResponse, RepairAuthority, RepairRequest, UnixSeconds,
    certificate_key,
};

/// At most this many referencing files have their keepers asked per key.
pub const MAX_FILES: usize = 4;

/// What certificate keepers said of files, as the driver still trusts it (answers
/// younger than its time to live): file → statuses. Shared, read-only, so that a batch
/// of keys costs one snapshot.
pub type KnownStatuses = Arc<BTreeMap<FileId, Vec<FileStatus>>>;

/// What one node that answered held under the key, as the slow pass remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenHoldings {
    /// The node.
    pub node: NodeId,
    /// Its [`holdings_digest`].
    pub digest: u64,
    /// Whether it held any fragment or pointer.
    pub held: bool,
}

/// What a reconcile did, for the driver's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// Fragments regenerated and stored with a checked receipt.
    pub regenerated: u64,
    /// Handoffs that completed.
    pub handed_off: u64,
    /// Surplus copies released (the holder counts its own deletion too).
    pub released: u64,
    /// Pointers dropped.
    pub pointers_dropped: u64,
    /// Fragments deleted by `Forget` of a key whose every file was reclaimed.
    pub forgotten: u64,
    /// Repair bytes this coordinator moved: fragments fetched, regenerated ones stored.
    pub repair_bytes: u64,
}

/// Why a key is not settled; `E` is the driver's failure.
#[derive(Debug, thiserror::Error)]
pub enum Unsettled<E> {
    /// The wide locate failed.
    #[error("locating the key's nodes failed: {0}")]
    Locate(E),
    /// No node that answered names a file referencing the key, and some nodes asked
    /// did not answer (or none was found): whether the key is held whole cannot be
    /// told, so it is not taken as settled.
    #[error("no node answered with a referencing file ({unanswered} asked did not answer)")]
    Unanswered {
        /// Nodes asked for their holdings that did not answer.
        unanswered: usize,
    },
    /// Fragments or pointers are held under the key but no node names a file
    /// referencing it (a put that failed between its fragment and its reference):
    /// nothing authorises their repair, so they may stay below `n`.
    #[error("fragments held without any referencing file: nothing authorises their repair")]
    Unreferenced,
    /// Some referencing file has neither certificate nor tombstone (a put in flight),
    /// or its keepers could not be located: nothing is repaired or deleted.
    #[error("no certificate or tombstone decides the key")]
    AuthorityUnknown,
    /// The certificate names a code that does not exist.
    #[error("the certificate's code k = {k}, m = {m} is not valid")]
    BadCode {
        /// Data fragments.
        k: u16,
        /// Parity fragments.
        m: u16,
    },
    /// Indexes that cannot be repaired now: fewer than `k` live, or no free
    /// responsible node.
    #[error("indexes {indexes:?} cannot be repaired now ({live} live)")]
    Stuck {
        /// The indexes.
        indexes: Vec<u16>,
        /// Indexes with a live good copy.
        live: usize,
    },
    /// The block could not be rebuilt (too few fragments fetched, or a re-encoding
    /// that disagrees with the holders).
    #[error("regeneration failed: {0}")]
    Regeneration(String),
    /// A step was not carried out.
    #[error("{step:?} failed: {reason}")]
    Step {
        /// The step.
        step: Step,
        /// Why.
        reason: String,
    },
    /// The machine stopped without deciding (a bug, reported rather than hung).
    #[error("the reconcile stalled")]
    Stalled,
}

/// What [`KeyReconcile`] decided and did.
#[derive(Debug)]
pub struct Reconciled<E> {
    /// The key.
    pub key: PlacementKey,
    /// Why it is not settled (empty: settled).
    pub problems: Vec<Unsettled<E>>,
    /// What was done.
    pub done: Done,
    /// Keeper statuses worth reusing (a live certificate, no tombstone).
    pub learnt: Vec<(FileId, Vec<FileStatus>)>,
    /// When the key needed nothing at all: what every node that answered holds.
    pub seen: Option<Vec<SeenHoldings>>,
}

impl<E> Reconciled<E> {
    fn new(key: PlacementKey) -> Reconciled<E> {
        Reconciled {
            key,
            problems: Vec::new(),
            done: Done::default(),
            learnt: Vec::new(),
            seen: None,
        }
    }

    /// Whether the key ended settled (nothing stuck, every step done).
    pub fn is_settled(&self) -> bool {
        self.problems.is_empty()
    }
}

/// A node that answered the holdings request.
#[derive(Debug)]
struct Holdings {
    address: NodeAddress,
    observed: Observed,
    references: Vec<FileId>,
    digest: u64,
    pointed: Vec<NodeAddress>,
}

impl Holdings {
    fn holds_anything(&self) -> bool {
        !self.observed.fragments.is_empty()
            || !self.observed.pointers.is_empty()
            || !self.references.is_empty()
    }
}

/// What an outstanding ask or pace is for.
#[derive(Debug)]
enum Pending {
    Holdings,
    Status,
    /// `Forget`; `count` when its deletions are counted (a reclaimed key).
    Forget {
        node: NodeId,
        count: bool,
    },
    Fetch {
        index: u16,
        expected: FragmentHash,
    },
    FetchPace,
    StorePace {
        request: RepairRequest,
        to: NodeAddress,
    },
    Store {
        index: u16,
        hash: FragmentHash,
        to: NodeAddress,
        len: u64,
    },
    Step(Step),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Locating,
    Holdings,
    Pointed,
    /// Locating the keepers of `files[file]`.
    Keepers,
    /// Asking them.
    Statuses,
    Forgetting,
    CarryingOut,
    Decided,
}

/// Regeneration in progress.
#[derive(Debug)]
struct Regeneration {
    params: ErasureParams,
    targets: Vec<(u16, NodeId)>,
    fetched: Vec<Fragment>,
    /// The next source to try: index, and position among its holders.
    next: (usize, usize),
}

/// Reconciles one key as its coordinator (see the module's rules).
#[derive(Debug)]
pub struct KeyReconcile<E> {
    key: PlacementKey,
    wide: u16,
    keepers: u16,
    now: UnixSeconds,
    known: KnownStatuses,
    ids: AskIds,
    stage: Stage,
    asked: BTreeMap<AskId, (NodeAddress, Pending)>,
    located: Vec<NodeAddress>,
    answers: Vec<Holdings>,
    /// Holdings asks that got no holdings back.
    unanswered: usize,
    references: Vec<FileId>,
    /// The files whose authority is asked, and which one is being asked.
    files: Vec<FileId>,
    file: usize,
    current: Vec<FileStatus>,
    statuses: Vec<(FileId, Vec<FileStatus>)>,
    /// Once the authority is live: its certificate and the code.
    live: Option<(Vec<u8>, u16, u16)>,
    plan: Option<Plan>,
    authority: Option<RepairAuthority>,
    regeneration: Option<Regeneration>,
    outcome: Reconciled<E>,
}

impl<E: fmt::Display + fmt::Debug> KeyReconcile<E> {
    /// Reconciles `key` at `now`: `wide` nodes are located around it (at least the
    /// largest `n` in use, plus spares), `keepers` nodes around each referencing file's
    /// certificate key, and `known` are the keeper statuses the driver still trusts.
    pub fn new(
        key: PlacementKey,
        wide: u16,
        keepers: u16,
        known: KnownStatuses,
        now: UnixSeconds,
    ) -> KeyReconcile<E> {
        KeyReconcile {
            key,
            wide,
            keepers,
            now,
            known,
            ids: AskIds::default(),
            stage: Stage::Locating,
            asked: BTreeMap::new(),
            located: Vec::new(),
            answers: Vec::new(),
            unanswered: 0,
            references: Vec::new(),
            files: Vec::new(),
            file: 0,
            current: Vec::new(),
            statuses: Vec::new(),
            live: None,
            plan: None,
            authority: None,
            regeneration: None,
            outcome: Reconciled::new(key),
        }
    }

    fn ask(&mut self, to: NodeAddress, request: PastRequest, pending: Pending) -> Command {
        let ask = self.ids.next_id();
        self.asked.insert(ask, (to, pending));
        Command::Ask { ask, to, request }
    }

    fn pace(&mut self, bytes: u64, to: NodeAddress, pending: Pending) -> Command {
        let ask = self.ids.next_id();
        self.asked.insert(ask, (to, pending));
        Command::Pace { ask, bytes }
    }

    fn finish(&mut self) -> Progress<Reconciled<E>> {
        self.stage = Stage::Decided;
        self.asked.clear();
        Progress::Done(std::mem::replace(
            &mut self.outcome,
            Reconciled::new(self.key),
        ))
    }

    fn fail(&mut self, problem: Unsettled<E>) -> Progress<Reconciled<E>> {
        self.outcome.problems.push(problem);
        self.finish()
    }

    fn holdings_answered(&mut self, to: NodeAddress, answer: Result<PastResponse, E>) {
        let Ok(PastResponse::Holdings {
            fragments,
            pointers,
            references,
        }) = answer
        else {
            self.unanswered += 1;
            return;
        };
        if self.answers.iter().any(|h| h.address.id == to.id) {
            return;
        }
        let pointer_ids: Vec<(u16, NodeId)> = pointers.iter().map(|(i, a)| (*i, a.id)).collect();
        let digest = holdings_digest(&fragments, &pointer_ids, &references);
        self.answers.push(Holdings {
            address: to,
            observed: Observed {
                node: to.id,
                fragments,
                pointers: pointer_ids,
            },
            references,
            digest,
            pointed: pointers.iter().map(|(_, a)| *a).collect(),
        });
    }

    /// Every located node answered: ask the diverted holders their pointers name.
    fn ask_pointed(&mut self) -> Progress<Reconciled<E>> {
        let mut pointed: Vec<NodeAddress> = self
            .answers
            .iter()
            .flat_map(|h| h.pointed.iter().copied())
            .collect();
        pointed.sort_by_key(|a| a.id);
        pointed.dedup_by_key(|a| a.id);
        let key = self.key;
        let commands: Vec<Command> = pointed
            .into_iter()
            .filter(|a| !self.answers.iter().any(|h| h.address.id == a.id))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|to| self.ask(to, PastRequest::Holdings { key }, Pending::Holdings))
            .collect();
        self.stage = Stage::Pointed;
        self.advance(commands)
    }

    fn start_authority(&mut self) -> Progress<Reconciled<E>> {
        let mut references: Vec<FileId> = self
            .answers
            .iter()
            .flat_map(|h| h.references.iter().copied())
            .collect();
        references.sort();
        references.dedup();
        if references.is_empty() {
            // Settled only when every node asked answered and none holds anything: a
            // key left with fragments no file references (a put that crashed between
            // the fragment and its reference), or one whose holders did not answer,
            // may be short of `n` and is looked at again.
            if self
                .answers
                .iter()
                .any(|h| !h.observed.fragments.is_empty() || !h.observed.pointers.is_empty())
            {
                self.outcome.problems.push(Unsettled::Unreferenced);
            }
            if self.unanswered > 0 || self.answers.is_empty() {
                self.outcome.problems.push(Unsettled::Unanswered {
                    unanswered: self.unanswered,
                });
            }
            return self.finish();
        }
        self.files = references.iter().take(MAX_FILES).copied().collect();
        self.references = references;
        self.file = 0;
        self.next_file()
    }

    /// The next file's statuses: known, or asked of its keepers.
    fn next_file(&mut self) -> Progress<Reconciled<E>> {
        while let Some(file) = self.files.get(self.file).copied() {
            match self.known.get(&file) {
                Some(statuses) => {
                    self.statuses.push((file, statuses.clone()));
                    self.file += 1;
                }
                None => {
                    self.stage = Stage::Keepers;
                    self.current.clear();
                    return Progress::Continue(vec![Command::Locate {
                        key: certificate_key(&file),
                        count: self.keepers,
                    }]);
                }
            }
        }
        self.decide()
    }

    fn file_done(&mut self) -> Progress<Reconciled<E>> {
        let Some(file) = self.files.get(self.file).copied() else {
            return self.decide();
        };
        let statuses = std::mem::take(&mut self.current);
        let live_only = statuses.iter().any(|s| s.certificate.is_some())
            && statuses.iter().all(|s| s.tombstone.is_none());
        if live_only {
            self.outcome.learnt.push((file, statuses.clone()));
        }
        self.statuses.push((file, statuses));
        self.file += 1;
        self.next_file()
    }

    fn forget(&mut self, reclaimed: &[(FileId, Vec<u8>)], live: bool) -> Vec<Command> {
        let key = self.key;
        let mut orders = Vec::new();
        for (file, reclaim) in reclaimed {
            for holdings in &self.answers {
                let concerned = if live {
                    holdings.references.contains(file)
                } else {
                    holdings.holds_anything()
                };
                if concerned {
                    orders.push((holdings.address, reclaim.clone()));
                }
            }
        }
        orders
            .into_iter()
            .map(|(to, reclaim)| {
                let request = PastRequest::Forget {
                    reclaim,
                    keys: vec![key],
                };
                self.ask(
                    to,
                    request,
                    Pending::Forget {
                        node: to.id,
                        count: !live,
                    },
                )
            })
            .collect()
    }

    fn decide(&mut self) -> Progress<Reconciled<E>> {
        match decide_authority(&self.statuses, self.now) {
            Authority::Unknown => self.fail(Unsettled::AuthorityUnknown),
            Authority::Reclaimed { reclaimed } => {
                tracing::info!(key = %self.key, "every file referencing the key was reclaimed: deleting");
                // With no certificate live, `carry_out` after the forgets only finishes.
                let commands = self.forget(&reclaimed, false);
                self.stage = Stage::Forgetting;
                self.advance(commands)
            }
            Authority::Live {
                certificate,
                body,
                reclaimed,
            } => {
                self.live = Some((certificate, body.k, body.m));
                let commands = self.forget(&reclaimed, true);
                self.stage = Stage::Forgetting;
                self.advance(commands)
            }
        }
    }

    fn carry_out(&mut self) -> Progress<Reconciled<E>> {
        let Some((certificate, k, m)) = self.live.take() else {
            // A reclaimed key: the forgets were all there was to do.
            return self.finish();
        };
        let Ok(params) = ErasureParams::new(k, m) else {
            return self.fail(Unsettled::BadCode { k, m });
        };
        let n = params.n();
        // Responsible: the n closest that answered, closest first.
        let responsible: Vec<NodeId> = self
            .located
            .iter()
            .map(|a| a.id)
            .filter(|id| self.answers.iter().any(|h| h.address.id == *id))
            .take(usize::from(n))
            .collect();
        let observed: Vec<Observed> = self.answers.iter().map(|h| h.observed.clone()).collect();
        let the_plan = plan(params.k(), n, &responsible, &observed);
        if !the_plan.conflicting.is_empty() {
            tracing::warn!(key = %self.key, "copies that disagree with the others: {:?}", the_plan.conflicting);
        }
        if !the_plan.stuck.is_empty() {
            tracing::warn!(key = %self.key, live = the_plan.live, "indexes that cannot be repaired now: {:?}", the_plan.stuck);
            self.outcome.problems.push(Unsettled::Stuck {
                indexes: the_plan.stuck.clone(),
                live: the_plan.live,
            });
        }
        if the_plan.steps.is_empty() {
            if the_plan.stuck.is_empty() {
                self.outcome.seen = Some(
                    self.answers
                        .iter()
                        .map(|h| SeenHoldings {
                            node: h.address.id,
                            digest: h.digest,
                            held: !h.observed.fragments.is_empty()
                                || !h.observed.pointers.is_empty(),
                        })
                        .collect(),
                );
            }
            return self.finish();
        }
        self.authority = Some(RepairAuthority {
            certificate,
            references: self.references.clone(),
        });
        self.stage = Stage::CarryingOut;
        let key = self.key;
        let mut commands = Vec::new();
        let mut targets = Vec::new();
        for step in the_plan.steps.clone() {
            let order = match &step {
                Step::Regenerate { index, to } => {
                    targets.push((*index, *to));
                    continue;
                }
                Step::Handoff { index, from, to } => {
                    match (self.address_of(from), self.address_of(to), &self.authority) {
                        (Some(from), Some(to), Some(authority)) => Some((
                            from,
                            PastRequest::Handoff {
                                key,
                                index: *index,
                                to,
                                authority: authority.clone(),
                            },
                        )),
                        _ => None,
                    }
                }
                Step::Release {
                    index,
                    node,
                    kept_by,
                } => match (
                    self.address_of(node),
                    self.address_of(kept_by),
                    &self.authority,
                ) {
                    (Some(node), Some(kept_by), Some(authority)) => Some((
                        node,
                        PastRequest::Release {
                            key,
                            index: *index,
                            kept_by,
                            authority: authority.clone(),
                        },
                    )),
                    _ => None,
                },
                Step::DropPointer { index, keeper } => self
                    .address_of(keeper)
                    .map(|keeper| (keeper, PastRequest::DropPointer { key, index: *index })),
            };
            match order {
                Some((to, request)) => commands.push(self.ask(to, request, Pending::Step(step))),
                None => self.outcome.problems.push(Unsettled::Step {
                    step,
                    reason: "a node without a known address".into(),
                }),
            }
        }
        self.plan = Some(the_plan);
        if !targets.is_empty() {
            self.regeneration = Some(Regeneration {
                params,
                targets,
                fetched: Vec::new(),
                next: (0, 0),
            });
            commands.extend(self.fetch_next());
        }
        self.advance(commands)
    }

    fn address_of(&self, id: &NodeId) -> Option<NodeAddress> {
        self.answers
            .iter()
            .find(|h| h.address.id == *id)
            .map(|h| h.address)
    }

    /// The next fetch of a good fragment, or the rebuild once `k` are in.
    fn fetch_next(&mut self) -> Vec<Command> {
        let Some(regeneration) = &self.regeneration else {
            return Vec::new();
        };
        let k = usize::from(regeneration.params.k());
        let fetched = regeneration.fetched.len();
        if fetched >= k {
            return self.rebuild();
        }
        let (mut index, mut position) = regeneration.next;
        let mut found = None;
        if let Some(the_plan) = &self.plan {
            while let Some(holders) = the_plan.sources.get(index) {
                let holder = holders.get(position).and_then(|id| self.address_of(id));
                let expected = the_plan.hashes.get(index).copied().flatten();
                match (holder, expected, u16::try_from(index)) {
                    (Some(holder), Some(expected), Ok(i)) => {
                        found = Some((holder, i, expected));
                        break;
                    }
                    _ if position + 1 < holders.len() => position += 1,
                    _ => {
                        index += 1;
                        position = 0;
                    }
                }
            }
        }
        if let Some(regeneration) = &mut self.regeneration {
            regeneration.next = (index, position);
        }
        match found {
            Some((holder, index, expected)) => {
                let key = self.key;
                vec![self.ask(
                    holder,
                    PastRequest::Fetch { key, index },
                    Pending::Fetch { index, expected },
                )]
            }
            None => {
                self.regeneration = None;
                self.outcome.problems.push(Unsettled::Regeneration(format!(
                    "only {fetched} of the {k} fragments needed could be fetched"
                )));
                Vec::new()
            }
        }
    }

    /// Decodes the `k` fragments, re-encodes, checks the re-encoding against every
    /// hash the holders agreed on, and paces each missing index's store.
    fn rebuild(&mut self) -> Vec<Command> {
        let (Some(regeneration), Some(the_plan)) = (self.regeneration.take(), &self.plan) else {
            return Vec::new();
        };
        let params = regeneration.params;
        let n = usize::from(params.n());
        let unknown = FragmentHash(Id::ZERO);
        let hashes: Vec<FragmentHash> = (0..n)
            .map(|i| the_plan.hashes.get(i).copied().flatten().unwrap_or(unknown))
            .collect();
        let encoded = (|| {
            let codec = Codec::new(params).map_err(|e| e.to_string())?;
            let spec = BlockSpec {
                hash: BlockHash(Id::ZERO),
                len: None,
                fragment_hashes: &hashes,
            };
            let offers = regeneration
                .fetched
                .into_iter()
                .map(|fragment| (fragment.index, Offer::Fragment(fragment)));
            let (decoded, _) = codec.decode(&spec, offers).map_err(|e| e.to_string())?;
            let encoded = codec.encode(&decoded.to_vec()).map_err(|e| e.to_string())?;
            // Every index a holder reported must be what this re-encoding gives: a bad
            // fragment among the k would show here (with more than k known).
            for (i, expected) in hashes.iter().enumerate() {
                if *expected != unknown && encoded.fragment_hashes().get(i) != Some(expected) {
                    return Err(format!(
                        "the re-encoding disagrees with the holders at index {i}"
                    ));
                }
            }
            Ok(encoded)
        })();
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(reason) => {
                tracing::warn!(key = %self.key, "regeneration failed: {reason}");
                self.outcome.problems.push(Unsettled::Regeneration(reason));
                return Vec::new();
            }
        };
        let Some(authority) = self.authority.clone() else {
            return Vec::new();
        };
        let mut commands = Vec::new();
        for (index, to) in regeneration.targets {
            let (Some(fragment), Some(target)) = (encoded.fragment(index), self.address_of(&to))
            else {
                self.outcome.problems.push(Unsettled::Step {
                    step: Step::Regenerate { index, to },
                    reason: "no such fragment or target".into(),
                });
                continue;
            };
            let bytes = fragment.bytes.to_vec();
            let hash = fragment_hash(index, &bytes);
            let len = bytes.len() as u64;
            let request = RepairRequest {
                authority: authority.clone(),
                key: self.key,
                index,
                hash,
                bytes,
            };
            commands.push(self.pace(
                len,
                target,
                Pending::StorePace {
                    request,
                    to: target,
                },
            ));
        }
        commands
    }

    fn answered(
        &mut self,
        to: NodeAddress,
        pending: Pending,
        answer: Result<PastResponse, E>,
    ) -> Vec<Command> {
        let key = self.key;
        match pending {
            Pending::Holdings => {
                self.holdings_answered(to, answer);
                Vec::new()
            }
            Pending::Status => {
                if let Ok(PastResponse::FileStatus {
                    certificate,
                    tombstone,
                }) = answer
                {
                    self.current.push(FileStatus {
                        certificate,
                        tombstone,
                    });
                }
                Vec::new()
            }
            Pending::Forget { node, count } => {
                match answer {
                    Ok(PastResponse::Reclaimed { fragments, .. }) if count => {
                        self.outcome.done.forgotten += fragments;
                    }
                    Ok(PastResponse::Reclaimed { .. }) => {}
                    other => tracing::debug!(%key, %node, "forget: {other:?}"),
                }
                Vec::new()
            }
            Pending::Fetch { index, expected } => {
                match answer {
                    Ok(PastResponse::Fragment { bytes })
                        if fragment_hash(index, &bytes) == expected =>
                    {
                        let len = bytes.len() as u64;
                        self.outcome.done.repair_bytes += len;
                        if let Some(regeneration) = &mut self.regeneration {
                            regeneration.fetched.push(Fragment { index, bytes });
                            regeneration.next = (usize::from(index) + 1, 0);
                        }
                        return vec![self.pace(len, to, Pending::FetchPace)];
                    }
                    other => {
                        let other = other.map(|r| match r {
                            PastResponse::Fragment { .. } => {
                                "a fragment with another hash".to_string()
                            }
                            r => format!("{r:?}"),
                        });
                        tracing::debug!(%key, index, holder = %to.id, "repair fetch: {other:?}");
                        if let Some(regeneration) = &mut self.regeneration {
                            regeneration.next.1 += 1;
                        }
                    }
                }
                self.fetch_next()
            }
            Pending::Store {
                index,
                hash,
                to,
                len,
            } => {
                match answer {
                    Ok(PastResponse::Stored { receipt, .. })
                        if receipt_names(&receipt, to.id, key, index, hash) =>
                    {
                        self.outcome.done.repair_bytes += len;
                        self.outcome.done.regenerated += 1;
                        tracing::info!(%key, index, to = %to.id, "fragment regenerated");
                    }
                    other => {
                        tracing::warn!(%key, index, to = %to.id, "regenerated fragment not stored: {other:?}");
                        self.outcome.problems.push(Unsettled::Step {
                            step: Step::Regenerate { index, to: to.id },
                            reason: format!("{other:?}"),
                        });
                    }
                }
                Vec::new()
            }
            Pending::Step(step) => {
                match (&step, answer) {
                    (_, Ok(PastResponse::Done)) => {
                        let done = &mut self.outcome.done;
                        match step {
                            Step::Handoff { .. } => done.handed_off += 1,
                            Step::Release { .. } => done.released += 1,
                            Step::DropPointer { .. } => done.pointers_dropped += 1,
                            Step::Regenerate { .. } => {}
                        }
                    }
                    (_, other) => {
                        tracing::debug!(%key, ?step, "maintenance step failed: {other:?}");
                        self.outcome.problems.push(Unsettled::Step {
                            step,
                            reason: match other {
                                Ok(response) => format!("{response:?}"),
                                Err(failure) => failure.to_string(),
                            },
                        });
                    }
                }
                Vec::new()
            }
            // Paces are answered through `paced`.
            Pending::FetchPace | Pending::StorePace { .. } => Vec::new(),
        }
    }

    fn paced(&mut self, pending: Pending) -> Vec<Command> {
        match pending {
            Pending::FetchPace => self.fetch_next(),
            Pending::StorePace { request, to } => {
                let (index, hash, len) = (request.index, request.hash, request.bytes.len() as u64);
                vec![self.ask(
                    to,
                    PastRequest::RepairStore(request),
                    Pending::Store {
                        index,
                        hash,
                        to,
                        len,
                    },
                )]
            }
            _ => Vec::new(),
        }
    }

    /// Moves on once the current stage has nothing outstanding.
    fn advance(&mut self, commands: Vec<Command>) -> Progress<Reconciled<E>> {
        if !self.asked.is_empty() || !commands.is_empty() {
            return Progress::Continue(commands);
        }
        match self.stage {
            Stage::Holdings => self.ask_pointed(),
            Stage::Pointed => self.start_authority(),
            Stage::Statuses => self.file_done(),
            Stage::Forgetting => self.carry_out(),
            Stage::CarryingOut => self.finish(),
            // Waiting for a locate.
            Stage::Locating | Stage::Keepers => Progress::Continue(Vec::new()),
            Stage::Decided => Progress::Continue(Vec::new()),
        }
    }
}

impl<E: fmt::Display + fmt::Debug> Operation for KeyReconcile<E> {
    type Output = Reconciled<E>;
    type Failure = E;

    fn start(&mut self) -> Progress<Reconciled<E>> {
        self.stage = Stage::Locating;
        Progress::Continue(vec![Command::Locate {
            key: self.key,
            count: self.wide,
        }])
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Reconciled<E>> {
        match input {
            Input::Located(located) => match (self.stage, located) {
                (Stage::Locating, Err(failure)) => self.fail(Unsettled::Locate(failure)),
                (Stage::Locating, Ok(nodes)) => {
                    self.located = nodes;
                    self.stage = Stage::Holdings;
                    let key = self.key;
                    let commands: Vec<Command> = self
                        .located
                        .clone()
                        .into_iter()
                        .map(|to| self.ask(to, PastRequest::Holdings { key }, Pending::Holdings))
                        .collect();
                    self.advance(commands)
                }
                // The keepers cannot be located: the authority is unknown.
                (Stage::Keepers, Err(_)) => self.fail(Unsettled::AuthorityUnknown),
                (Stage::Keepers, Ok(keepers)) => {
                    self.stage = Stage::Statuses;
                    let Some(file) = self.files.get(self.file).copied() else {
                        return self.decide();
                    };
                    let commands: Vec<Command> = keepers
                        .into_iter()
                        .map(|to| self.ask(to, PastRequest::FileStatus { file }, Pending::Status))
                        .collect();
                    self.advance(commands)
                }
                // A locate nobody asked for.
                _ => Progress::Continue(Vec::new()),
            },
            Input::Answered(ask, answer) => {
                let Some((to, pending)) = self.asked.remove(&ask) else {
                    return Progress::Continue(Vec::new());
                };
                let commands = self.answered(to, pending, answer);
                self.advance(commands)
            }
            Input::Paced(ask) => {
                let Some((_, pending)) = self.asked.remove(&ask) else {
                    return Progress::Continue(Vec::new());
                };
                let commands = self.paced(pending);
                self.advance(commands)
            }
        }
    }

    fn stalled(&mut self) -> Reconciled<E> {
        self.outcome.problems.push(Unsettled::Stalled);
        self.stage = Stage::Decided;
        std::mem::replace(&mut self.outcome, Reconciled::new(self.key))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::crypto::KeyPair;
    use cairn_store::NodeStore;

    use super::*;
    use crate::PastConfig;
    use crate::testing::{Behaviour, NOW, TestNet, certified_block, key, run, run_at};

    const MIB: u64 = 1 << 20;
    /// As the daemon asks by default: `2 · span + spares`.
    const WIDE: u16 = 20;

    fn keepers() -> u16 {
        u16::try_from(PastConfig::default().certificate_replicas + 2).unwrap()
    }

    fn reconcile(net: &TestNet, at: PlacementKey, known: KnownStatuses) -> Reconciled<String> {
        // Run by the key's coordinator: holders obey no one else.
        let coordinator = net.closest(&at.0, 1)[0].id;
        run_at(
            net,
            coordinator,
            KeyReconcile::new(at, WIDE, keepers(), known, NOW),
        )
    }

    #[test]
    fn a_dead_holders_index_is_regenerated_byte_equal_on_the_free_responsible_node() {
        let mut net = TestNet::new(&[64 * MIB; 10]);
        let owner = KeyPair::from_secret_bytes(&[70; 32]);
        let (_, _, fragments) = certified_block(&net, &owner, b"f", key(1), (4, 2), 40_000);
        let closest = net.closest(&key(1).0, 10);
        net.set(&closest[2].id, Behaviour::Down);

        let outcome = reconcile(&net, key(1), KnownStatuses::default());
        assert!(outcome.is_settled(), "{:?}", outcome.problems);
        assert_eq!(outcome.done.regenerated, 1);
        // The designated node for index 2 (now the third closest live) holds index 3:
        // the first free responsible node, the seventh closest, gets it.
        let (index, bytes) = net.held(&closest[6].id, &key(1)).pop().unwrap();
        assert_eq!((index, &bytes), (2, &fragments[2].2));
        // k fragments in, one out.
        assert_eq!(outcome.done.repair_bytes, 5 * bytes.len() as u64);
        assert!(outcome.seen.is_none(), "something was done");
        assert_eq!(
            outcome.learnt.len(),
            1,
            "a live certificate is worth reusing"
        );

        // Now settled with nothing to do; the statuses learnt are reused, not asked.
        let known: KnownStatuses = Arc::new(outcome.learnt.into_iter().collect());
        let again = reconcile(&net, key(1), known);
        assert!(again.is_settled(), "{:?}", again.problems);
        assert_eq!(again.done, Done::default());
        assert!(again.learnt.is_empty());
        let seen = again.seen.expect("a steady key's holdings are handed back");
        assert_eq!(seen.iter().filter(|s| s.held).count(), 6);

        // The dead holder comes back with its copy: the regenerated one, now on a node
        // beyond the six closest, is surplus and released (after the check).
        net.set(&closest[2].id, Behaviour::Honest);
        let back = reconcile(&net, key(1), KnownStatuses::default());
        assert!(back.is_settled(), "{:?}", back.problems);
        assert_eq!(back.done.released, 1);
        assert!(net.held(&closest[6].id, &key(1)).is_empty());
        assert_eq!(net.held(&closest[2].id, &key(1)).len(), 1);
    }

    #[test]
    fn a_node_that_joins_among_the_closest_receives_the_pushed_out_fragment() {
        // The closest node is away while the block is stored; it then joins, holding
        // nothing, and the seventh closest is no longer responsible.
        let mut net = TestNet::new(&[64 * MIB; 10]);
        let closest = net.closest(&key(2).0, 10);
        net.set(&closest[0].id, Behaviour::Down);
        let owner = KeyPair::from_secret_bytes(&[71; 32]);
        let (_, _, fragments) = certified_block(&net, &owner, b"g", key(2), (4, 2), 30_000);
        assert_eq!(net.held(&closest[6].id, &key(2))[0].0, 5);
        net.set(&closest[0].id, Behaviour::Honest);

        // A joiner that forges its receipt gets nothing, and the old copy stays.
        net.set(&closest[0].id, Behaviour::ForgesReceipts);
        let forged = reconcile(&net, key(2), KnownStatuses::default());
        assert!(
            matches!(
                &forged.problems[..],
                [Unsettled::Step {
                    step: Step::Handoff { index: 5, .. },
                    ..
                }]
            ),
            "{:?}",
            forged.problems
        );
        assert_eq!(net.held(&closest[6].id, &key(2)).len(), 1);

        net.set(&closest[0].id, Behaviour::Honest);
        let outcome = reconcile(&net, key(2), KnownStatuses::default());
        assert!(outcome.is_settled(), "{:?}", outcome.problems);
        assert_eq!(outcome.done.handed_off, 1);
        assert_eq!(outcome.done.regenerated, 0);
        assert_eq!(
            net.held(&closest[0].id, &key(2)),
            vec![(5, fragments[5].2.clone())]
        );
        assert!(
            net.held(&closest[6].id, &key(2)).is_empty(),
            "the old copy goes once received"
        );
        assert!(
            reconcile(&net, key(2), KnownStatuses::default())
                .seen
                .is_some()
        );
    }

    #[test]
    fn a_pointer_to_a_dead_holder_is_dropped_and_its_index_regenerated_on_the_keeper() {
        let mut net = TestNet::new(&[64 * MIB; 12]);
        let owner = KeyPair::from_secret_bytes(&[72; 32]);
        let (_, _, fragments) = certified_block(&net, &owner, b"h", key(3), (4, 2), 20_000);
        let closest = net.closest(&key(3).0, 12);
        // The fourth closest had diverted index 3 to the farthest node, which died.
        let keeper = net.node(&closest[3].id).holder.store();
        keeper.delete_fragment(&key(3), 3).unwrap();
        keeper.put_pointer(&key(3), 3, &closest[11].id).unwrap();
        net.set(&closest[11].id, Behaviour::Down);

        let outcome = reconcile(&net, key(3), KnownStatuses::default());
        assert!(outcome.is_settled(), "{:?}", outcome.problems);
        assert_eq!(
            (outcome.done.pointers_dropped, outcome.done.regenerated),
            (1, 1)
        );
        let keeper = net.node(&closest[3].id).holder.store();
        assert_eq!(keeper.get_pointer(&key(3), 3).unwrap(), None);
        assert_eq!(
            net.held(&closest[3].id, &key(3)),
            vec![(3, fragments[3].2.clone())]
        );
    }

    #[test]
    fn a_file_reclaimed_while_its_holders_were_away_is_forgotten_everywhere() {
        let net = TestNet::new(&[64 * MIB; 10]);
        let owner = KeyPair::from_secret_bytes(&[73; 32]);
        let (file, certificate, _) = certified_block(&net, &owner, b"r", key(4), (4, 2), 20_000);
        // Only the certificate's keepers saw the reclaim.
        let reclaim = crate::testing::reclaim(&owner, &certificate);
        for keeper in net.closest(&certificate_key(&file).0, usize::from(keepers())) {
            net.node(&keeper.id)
                .holder
                .reclaim(&reclaim, &certificate, &[], NOW)
                .unwrap();
        }
        let outcome = reconcile(&net, key(4), KnownStatuses::default());
        assert!(outcome.is_settled(), "{:?}", outcome.problems);
        assert_eq!(outcome.done.forgotten, 6);
        assert!(outcome.learnt.is_empty(), "a tombstone is never cached");
        for node in &net.nodes {
            assert!(
                node.holder
                    .store()
                    .fragments_under(&key(4))
                    .unwrap()
                    .is_empty()
            );
        }
    }

    /// Ten nodes and one certified block `(4, 2)` at `at`.
    fn ten_nodes_with_a_block(owner: u8, name: &[u8], at: PlacementKey) -> TestNet {
        let net = TestNet::new(&[64 * MIB; 10]);
        let owner = KeyPair::from_secret_bytes(&[owner; 32]);
        certified_block(&net, &owner, name, at, (4, 2), 20_000);
        net
    }

    #[test]
    fn too_few_fragments_or_no_authority_leave_the_key_unsettled_with_the_reason() {
        let mut net = ten_nodes_with_a_block(74, b"s", key(5));
        let closest = net.closest(&key(5).0, 10);
        for node in &closest[..3] {
            net.set(&node.id, Behaviour::Down);
        }
        let outcome = reconcile(&net, key(5), KnownStatuses::default());
        assert!(!outcome.is_settled());
        assert!(
            matches!(&outcome.problems[..], [Unsettled::Stuck { indexes, live: 3 }] if indexes == &[0, 1, 2]),
            "{:?}",
            outcome.problems
        );
        assert_eq!(outcome.done, Done::default());
        assert_eq!(
            outcome.problems[0].to_string(),
            "indexes [0, 1, 2] cannot be repaired now (3 live)"
        );

        // Fragments whose file has no certificate anywhere (a put in flight): nothing
        // is repaired or deleted.
        let stranger = KeyPair::from_secret_bytes(&[75; 32]);
        let (file, grant) = crate::testing::grant(&stranger, b"in flight");
        run(
            &net,
            crate::insert::BlockInsert::<String>::new(
                file,
                grant,
                key(6),
                crate::testing::fragments(6, 500),
            ),
        )
        .unwrap();
        let in_flight = reconcile(&net, key(6), KnownStatuses::default());
        assert!(
            matches!(&in_flight.problems[..], [Unsettled::AuthorityUnknown]),
            "{:?}",
            in_flight.problems
        );
        let held: usize = net
            .nodes
            .iter()
            .map(|n| n.holder.store().fragments_under(&key(6)).unwrap().len())
            .sum();
        assert_eq!(held, 6);
    }

    #[test]
    fn a_key_whose_holders_did_not_answer_or_whose_fragments_no_file_references_is_not_settled() {
        // Every holder of the block crashed a moment ago: the nodes that answer hold
        // nothing, and no referencing file is seen. That is not "nothing to do".
        let mut net = ten_nodes_with_a_block(76, b"t", key(8));
        let holders = net.closest(&key(8).0, 6);
        for node in &holders {
            net.set(&node.id, Behaviour::Silent);
        }
        let silent = reconcile(&net, key(8), KnownStatuses::default());
        assert!(
            matches!(
                &silent.problems[..],
                [Unsettled::Unanswered { unanswered: 6 }]
            ),
            "{:?}",
            silent.problems
        );
        assert!(silent.seen.is_none());
        for node in &holders {
            net.set(&node.id, Behaviour::Honest);
        }
        assert!(reconcile(&net, key(8), KnownStatuses::default()).is_settled());

        // Fragments that no file references: nothing may repair them, and the key is
        // not settled either.
        let lone = net.closest(&key(9).0, 1)[0];
        let (index, hash, bytes) = crate::testing::fragments(1, 300)[0].clone();
        net.node(&lone.id)
            .holder
            .store()
            .put_fragment(&key(9), index, &hash, &bytes)
            .unwrap();
        let orphan = reconcile(&net, key(9), KnownStatuses::default());
        assert!(
            matches!(&orphan.problems[..], [Unsettled::Unreferenced]),
            "{:?}",
            orphan.problems
        );

        // Every node answered and none holds anything: settled, nothing to keep.
        let gone = reconcile(&net, key(10), KnownStatuses::default());
        assert!(gone.is_settled(), "{:?}", gone.problems);
    }

    #[test]
    fn a_failed_locate_is_the_reason() {
        let mut op = KeyReconcile::<&str>::new(key(7), WIDE, 6, KnownStatuses::default(), NOW);
        assert!(matches!(op.start(), Progress::Continue(c) if c.len() == 1));
        let Progress::Done(outcome) = op.handle(Input::Located(Err("no route"))) else {
            panic!("undecided")
        };
        assert!(matches!(
            outcome.problems[..],
            [Unsettled::Locate("no route")]
        ));
    }
}
