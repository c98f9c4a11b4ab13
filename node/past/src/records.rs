//! Records: the signed values a few nodes near a key keep for everyone, published and
//! found by one pair of machines over one trait. Two kinds exist: a file's
//! [`FileCertificate`] (at [`certificate_key`]) and a volume's [`RootRecord`] (at
//! [`root_key`]).
//!
//! Owns: [`Record`] (what a kind of record must say: where it lives, how it verifies,
//! its version, its requests), [`RecordPublish`], [`RecordFind`] and
//! [`RecordReplicate`] (the three [`Operation`]s), and their outcomes and errors.
//!
//! May use: `cairn_core::{crypto, id}` and this crate's wire types and checks.
//!
//! # The rules
//! - **Publish**: the record is verified before anything is sent; every replica (the
//!   `replicas` nodes closest to the record's key) is asked in parallel. A replica
//!   holding a higher version, or the same version with other bytes, answers
//!   [`Refusal::HeldRoot`] with the record it holds: once that record verifies, is about
//!   the same subject and is higher (or a rival of the same version), the publish fails
//!   with [`PublishError::Conflict`] even if others took the record, so a lost update
//!   is never silent. A conflict claimed without such a record (a bare
//!   [`Refusal::StaleRoot`], a forged or older record) counts as no answer and is
//!   reported ([`Published::unproven_conflicts`], [`ReplicaFailure::UnprovenConflict`]):
//!   one lying replica cannot make every publish fail. Otherwise it succeeds
//!   when a majority of the replicas that answered (and at least one) hold the record;
//!   unreachable replicas are caught up by maintenance.
//! - **Find**: every replica is asked in parallel (two more than keep the record: after
//!   a join a new closest node may not have it yet) and every answer verified: a forged
//!   record, or one about another subject, is counted and never believed. The highest
//!   version wins; between two valid records of one version (rivals: the owner's key
//!   signed both) the one with the smaller bytes wins, so every reader agrees. Fails
//!   only if no replica answered at all. A kind of record whose valid copies are all
//!   equally good ([`Record::FIRST_VALID_SUFFICES`]: file certificates) asks one
//!   replica at a time, closest first, and stops at the first valid one: a read costs
//!   one request when the closest keeper has the record.
//! - **Replicate** (maintenance, by every keeper of a record, for every record it
//!   holds): the keeper's own record is verified first, and one that does not (or that
//!   is about another subject than it is kept under) is never spread. Each of the
//!   other `replicas` nodes closest to the key, in the keeper's own view, is asked for
//!   its record in parallel; one that holds none, a lower version, or one that does not
//!   verify is given the keeper's. One that holds the same version or a higher one is
//!   left alone (a rival of the same version stays: holders refuse it anyway). A keeper
//!   that does not answer, or refuses, is skipped until the next pass.

use std::fmt;
use std::marker::PhantomData;

use cairn_core::crypto::{Certificate, FileCertificate, RootRecord, Signed};
use cairn_core::id::{FileId, NodeId, PlacementKey, VolumeKey};

use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{
    NodeAddress, PastRequest, PastResponse, Refusal, UnixSeconds, certificate_key, check_root,
    check_signed_certificate, closest, root_key,
};

/// A kind of record kept by the nodes closest to a key derived from its subject.
pub trait Record: Certificate + Clone + fmt::Debug {
    /// What the record is about (a file, a volume).
    type Subject: Copy + Eq + fmt::Debug + fmt::Display;

    /// Its name in messages ("file certificate").
    const NAME: &'static str;

    /// Whether a find asks the replicas one at a time, closest first, and stops at the
    /// first valid record, instead of asking all of them at once and taking the
    /// highest: true where every valid record of a subject is as good as another, so
    /// that a read costs one request when the closest keeper has the record.
    const FIRST_VALID_SUFFICES: bool;

    /// Where the records of `subject` live.
    fn placement_key(subject: &Self::Subject) -> PlacementKey;

    /// Parses and verifies a signed record (signature, signer, expiry at `now`).
    fn check(bytes: &[u8], now: UnixSeconds) -> Result<Signed<Self>, Refusal>;

    /// What this record is about.
    fn subject(&self) -> Self::Subject;

    /// Higher replaces lower.
    fn version(&self) -> u64;

    /// The request that asks a replica to keep `bytes`.
    fn put_request(bytes: Vec<u8>) -> PastRequest;

    /// The request that asks a replica for its record of `subject`.
    fn get_request(subject: Self::Subject) -> PastRequest;

    /// The record an answer to [`Record::get_request`] carries (`Ok(None)`: none
    /// kept), or the answer back if it is not of the right kind.
    fn held_in(answer: PastResponse) -> Result<Option<Vec<u8>>, PastResponse>;
}

impl Record for FileCertificate {
    type Subject = FileId;
    const NAME: &'static str = "file certificate";
    /// A file id's certificate is signed once, by the owner the id is derived from:
    /// any valid one serves a read, and every get starts with this find.
    const FIRST_VALID_SUFFICES: bool = true;

    fn placement_key(subject: &FileId) -> PlacementKey {
        certificate_key(subject)
    }

    fn check(bytes: &[u8], now: UnixSeconds) -> Result<Signed<Self>, Refusal> {
        check_signed_certificate(bytes, now)
    }

    fn subject(&self) -> FileId {
        self.file_id
    }

    /// A file id's certificates differ only if its owner signed several; the newest
    /// wins.
    fn version(&self) -> u64 {
        self.created_at
    }

    fn put_request(certificate: Vec<u8>) -> PastRequest {
        PastRequest::PutCertificate { certificate }
    }

    fn get_request(file: FileId) -> PastRequest {
        PastRequest::GetCertificate { file }
    }

    fn held_in(answer: PastResponse) -> Result<Option<Vec<u8>>, PastResponse> {
        match answer {
            PastResponse::Certificate { certificate } => Ok(certificate),
            other => Err(other),
        }
    }
}

impl Record for RootRecord {
    type Subject = VolumeKey;
    const NAME: &'static str = "root record";
    /// A stale replica must never win: every replica is heard.
    const FIRST_VALID_SUFFICES: bool = false;

    fn placement_key(subject: &VolumeKey) -> PlacementKey {
        root_key(subject)
    }

    fn check(bytes: &[u8], _now: UnixSeconds) -> Result<Signed<Self>, Refusal> {
        check_root(bytes)
    }

    fn subject(&self) -> VolumeKey {
        self.volume
    }

    fn version(&self) -> u64 {
        self.sequence
    }

    fn put_request(record: Vec<u8>) -> PastRequest {
        PastRequest::PutRoot { record }
    }

    fn get_request(volume: VolumeKey) -> PastRequest {
        PastRequest::GetRoot { volume }
    }

    fn held_in(answer: PastResponse) -> Result<Option<Vec<u8>>, PastResponse> {
        match answer {
            PastResponse::Root { record } => Ok(record),
            other => Err(other),
        }
    }
}

/// A replica's answer that was not the one asked for, or a refusal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaFailure {
    /// It refused the record.
    Refused(Refusal),
    /// It answered with something else.
    Unexpected(String),
    /// It claimed a conflict without a record that proves it (counted as no answer).
    UnprovenConflict(String),
}

impl fmt::Display for ReplicaFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaFailure::Refused(refusal) => write!(f, "{refusal}"),
            ReplicaFailure::Unexpected(what) => write!(f, "unexpected answer {what}"),
            ReplicaFailure::UnprovenConflict(why) => {
                write!(f, "claimed a conflict it could not prove: {why}")
            }
        }
    }
}

/// What a successful publish achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Replicas that now hold the record (stored it, or already held the same one).
    pub replicas: usize,
    /// Replicas asked.
    pub asked: usize,
    /// The version published.
    pub version: u64,
    /// Replicas that claimed a conflict without proving it (counted as not answering).
    pub unproven_conflicts: usize,
}

/// Why a publish failed; `E` is the driver's failure.
#[derive(Debug, thiserror::Error)]
pub enum PublishError<E> {
    /// The record itself does not verify: nothing was sent.
    #[error("the record does not verify: {0}")]
    Invalid(Refusal),
    /// A replica holds version `held`, at least the one published (or equal with
    /// other bytes): this update lost to another writer's, or is a replay.
    #[error("a replica holds version {held}, so version {offered} was not applied")]
    Conflict {
        /// The highest version a replica said it holds.
        held: u64,
        /// The version published.
        offered: u64,
    },
    /// Fewer than a majority of the replicas that answered stored it.
    #[error("only {stored} of the {reached} replicas that answered stored the record")]
    NotStored {
        /// Replicas that stored it.
        stored: usize,
        /// Replicas that answered.
        reached: usize,
        /// What the others said: node and why.
        failures: Vec<(NodeId, ReplicaFailure)>,
    },
    /// No replica could be reached (or none was found): the driver's last failure.
    #[error("no replica answered: {0}")]
    Unreached(E),
    /// The locate found no replica at all.
    #[error("no node was found near the record's key")]
    NoReplicas,
    /// The operation stopped without deciding (a bug, reported rather than hung).
    #[error("the publish stalled")]
    Stalled,
}

/// Publishes a signed record to its replicas (see the module's rules).
#[derive(Debug)]
pub struct RecordPublish<R: Record, E> {
    bytes: Vec<u8>,
    record: Result<Signed<R>, Refusal>,
    replicas: u16,
    ids: AskIds,
    asked: Vec<(AskId, NodeId)>,
    answers: usize,
    stored: usize,
    reached: usize,
    held_higher: Option<u64>,
    failures: Vec<(NodeId, ReplicaFailure)>,
    last_failure: Option<E>,
    /// When the record was checked (a conflict's record is checked at the same time).
    now: UnixSeconds,
    unproven: usize,
}

impl<R: Record, E> RecordPublish<R, E> {
    /// Publishes `bytes` (a [`Signed`] record) to the `replicas` nodes closest to its
    /// key, verified at `now` first.
    pub fn new(bytes: Vec<u8>, replicas: u16, now: UnixSeconds) -> Self {
        let record = R::check(&bytes, now);
        RecordPublish {
            bytes,
            record,
            replicas,
            ids: AskIds::default(),
            asked: Vec::new(),
            answers: 0,
            stored: 0,
            reached: 0,
            held_higher: None,
            failures: Vec::new(),
            last_failure: None,
            now,
            unproven: 0,
        }
    }

    /// What the record is about, if it verified (an invalid record is refused at
    /// [`Operation::start`] without asking anyone).
    pub fn subject(&self) -> Option<R::Subject> {
        self.record
            .as_ref()
            .ok()
            .map(|record| record.body.subject())
    }

    fn node_of(&self, ask: AskId) -> Option<NodeId> {
        self.asked.iter().find(|(a, _)| *a == ask).map(|(_, n)| *n)
    }

    fn decide(&mut self, version: u64) -> Result<Published, PublishError<E>> {
        if let Some(held) = self.held_higher {
            return Err(PublishError::Conflict {
                held,
                offered: version,
            });
        }
        if self.stored > 0 && self.stored * 2 > self.reached {
            return Ok(Published {
                replicas: self.stored,
                asked: self.asked.len(),
                version,
                unproven_conflicts: self.unproven,
            });
        }
        match (self.reached, self.last_failure.take()) {
            (0, Some(failure)) => Err(PublishError::Unreached(failure)),
            _ => Err(PublishError::NotStored {
                stored: self.stored,
                reached: self.reached,
                failures: std::mem::take(&mut self.failures),
            }),
        }
    }
}

impl<R: Record, E> Operation for RecordPublish<R, E> {
    type Output = Result<Published, PublishError<E>>;
    type Failure = E;

    fn start(&mut self) -> Progress<Self::Output> {
        match &self.record {
            Err(refusal) => Progress::Done(Err(PublishError::Invalid(refusal.clone()))),
            Ok(record) => Progress::Continue(vec![Command::Locate {
                key: R::placement_key(&record.body.subject()),
                count: self.replicas,
            }]),
        }
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Self::Output> {
        let version = match &self.record {
            Ok(record) => record.body.version(),
            Err(refusal) => return Progress::Done(Err(PublishError::Invalid(refusal.clone()))),
        };
        match input {
            // Never asked for.
            Input::Paced(_) => Progress::Continue(Vec::new()),
            Input::Located(Err(failure)) => Progress::Done(Err(PublishError::Unreached(failure))),
            Input::Located(Ok(nodes)) if nodes.is_empty() => {
                Progress::Done(Err(PublishError::NoReplicas))
            }
            Input::Located(Ok(nodes)) => {
                let mut commands = Vec::with_capacity(nodes.len());
                for to in nodes.into_iter().take(usize::from(self.replicas)) {
                    let ask = self.ids.next_id();
                    self.asked.push((ask, to.id));
                    commands.push(Command::Ask {
                        ask,
                        to,
                        request: R::put_request(self.bytes.clone()),
                    });
                }
                Progress::Continue(commands)
            }
            Input::Answered(ask, answer) => {
                let Some(node) = self.node_of(ask) else {
                    return Progress::Continue(Vec::new());
                };
                self.answers += 1;
                match answer {
                    Ok(PastResponse::Done) => {
                        self.stored += 1;
                        self.reached += 1;
                    }
                    Ok(PastResponse::Refused(
                        refusal @ (Refusal::StaleRoot { .. } | Refusal::HeldRoot { .. }),
                    )) => self.conflict_claimed(node, &refusal),
                    Ok(PastResponse::Refused(refusal)) => {
                        self.reached += 1;
                        self.failures.push((node, ReplicaFailure::Refused(refusal)));
                    }
                    Ok(other) => {
                        self.reached += 1;
                        self.failures
                            .push((node, ReplicaFailure::Unexpected(format!("{other:?}"))));
                    }
                    Err(failure) => self.last_failure = Some(failure),
                }
                if self.answers < self.asked.len() {
                    Progress::Continue(Vec::new())
                } else {
                    Progress::Done(self.decide(version))
                }
            }
        }
    }

    fn stalled(&mut self) -> Self::Output {
        Err(PublishError::Stalled)
    }
}

impl<R: Record, E> RecordPublish<R, E> {
    /// A replica refused the record as stale: believed only if it proves it (see
    /// [`Self::proven_conflict`]); otherwise counted as no answer.
    fn conflict_claimed(&mut self, node: NodeId, refusal: &Refusal) {
        match self.proven_conflict(refusal) {
            Ok(held) => {
                self.reached += 1;
                self.held_higher = Some(self.held_higher.map_or(held, |h| h.max(held)));
            }
            Err(why) => {
                tracing::warn!(%node, "a replica claimed a {} conflict it could not prove: {why}", R::NAME);
                self.unproven += 1;
                self.failures
                    .push((node, ReplicaFailure::UnprovenConflict(why)));
            }
        }
    }

    /// The version a conflict claim proves: its record must be a valid record of the
    /// same subject whose version is higher than the one published, or equal with
    /// other bytes (a rival). Anything else proves nothing, and says why.
    fn proven_conflict(&self, refusal: &Refusal) -> Result<u64, String> {
        let Ok(offered) = &self.record else {
            return Err("nothing was offered".into());
        };
        let Refusal::HeldRoot { record: held_bytes } = refusal else {
            return Err("no record was shown".into());
        };
        let held = R::check(held_bytes, self.now)
            .map_err(|refusal| format!("the record shown does not verify: {refusal}"))?;
        if held.body.subject() != offered.body.subject() {
            return Err(format!(
                "the record shown is about {}, not {}",
                held.body.subject(),
                offered.body.subject()
            ));
        }
        let (held_version, offered_version) = (held.body.version(), offered.body.version());
        let rival = held_version == offered_version && *held_bytes != self.bytes;
        if held_version > offered_version || rival {
            Ok(held_version)
        } else {
            Err(format!(
                "the record shown has version {held_version}, which does not supersede {offered_version}"
            ))
        }
    }
}

/// What [`RecordFind`] learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found<R> {
    /// The winning record (highest version, valid), if any replica holds one.
    pub record: Option<Signed<R>>,
    /// Replicas that answered.
    pub answered: usize,
    /// Replicas that answered with nothing or an older version than the winner's
    /// (maintenance catches them up).
    pub behind: Vec<NodeId>,
    /// Replicas that served a record that does not verify or is about another subject.
    pub forged: Vec<NodeId>,
    /// Replicas holding another valid record of the winner's version (the owner signed
    /// two): the smaller bytes win everywhere.
    pub rivals: Vec<NodeId>,
}

/// Why a find failed; `E` is the driver's failure.
#[derive(Debug, thiserror::Error)]
pub enum FindError<E> {
    /// No replica answered: the driver's last failure.
    #[error("no replica answered: {0}")]
    Unreached(E),
    /// The locate found no node at all.
    #[error("no node was found near the record's key")]
    NoReplicas,
    /// The operation stopped without deciding (a bug, reported rather than hung).
    #[error("the find stalled")]
    Stalled,
}

/// Finds the highest valid record of a subject (see the module's rules).
#[derive(Debug)]
pub struct RecordFind<R: Record, E> {
    subject: R::Subject,
    now: UnixSeconds,
    count: u16,
    ids: AskIds,
    asked: Vec<(AskId, NodeId)>,
    answers: usize,
    /// Each valid answer: node, version, bytes, record.
    valid: Vec<(NodeId, u64, Vec<u8>, Signed<R>)>,
    empty: Vec<NodeId>,
    forged: Vec<NodeId>,
    last_failure: Option<E>,
    /// Located nodes not asked yet (only where the first valid record suffices: those
    /// are asked one at a time).
    waiting: std::vec::IntoIter<NodeAddress>,
}

impl<R: Record, E> RecordFind<R, E> {
    /// Asks the `count` nodes closest to `subject`'s key, verifying at `now`.
    pub fn new(subject: R::Subject, count: u16, now: UnixSeconds) -> Self {
        RecordFind {
            subject,
            now,
            count,
            ids: AskIds::default(),
            asked: Vec::new(),
            answers: 0,
            valid: Vec::new(),
            empty: Vec::new(),
            forged: Vec::new(),
            last_failure: None,
            waiting: Vec::new().into_iter(),
        }
    }

    fn ask(&mut self, to: NodeAddress) -> Command {
        let ask = self.ids.next_id();
        self.asked.push((ask, to.id));
        Command::Ask {
            ask,
            to,
            request: R::get_request(self.subject),
        }
    }

    fn decide(&mut self) -> Result<Found<R>, FindError<E>> {
        let answered = self.valid.len() + self.empty.len() + self.forged.len();
        if answered == 0 {
            return Err(match self.last_failure.take() {
                Some(failure) => FindError::Unreached(failure),
                None => FindError::NoReplicas,
            });
        }
        // Highest version; among equals the smallest bytes, so every reader agrees.
        let best = self
            .valid
            .iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.2.cmp(&a.2)))
            .map(|(_, version, bytes, record)| (*version, bytes.clone(), record.clone()));
        let mut found = Found {
            record: None,
            answered,
            behind: self.empty.clone(),
            forged: self.forged.clone(),
            rivals: Vec::new(),
        };
        if let Some((version, bytes, record)) = best {
            for (node, v, b, _) in &self.valid {
                if *v < version {
                    found.behind.push(*node);
                } else if *b != bytes {
                    found.rivals.push(*node);
                }
            }
            found.record = Some(record);
        }
        Ok(found)
    }
}

impl<R: Record, E> Operation for RecordFind<R, E> {
    type Output = Result<Found<R>, FindError<E>>;
    type Failure = E;

    fn start(&mut self) -> Progress<Self::Output> {
        Progress::Continue(vec![Command::Locate {
            key: R::placement_key(&self.subject),
            count: self.count,
        }])
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Self::Output> {
        match input {
            // Never asked for.
            Input::Paced(_) => Progress::Continue(Vec::new()),
            Input::Located(Err(failure)) => Progress::Done(Err(FindError::Unreached(failure))),
            Input::Located(Ok(nodes)) if nodes.is_empty() => {
                Progress::Done(Err(FindError::NoReplicas))
            }
            Input::Located(Ok(mut nodes)) => {
                nodes.truncate(usize::from(self.count));
                self.waiting = nodes.into_iter();
                let now: Vec<NodeAddress> = if R::FIRST_VALID_SUFFICES {
                    self.waiting.next().into_iter().collect()
                } else {
                    self.waiting.by_ref().collect()
                };
                Progress::Continue(now.into_iter().map(|to| self.ask(to)).collect())
            }
            Input::Answered(ask, answer) => {
                let Some(node) = self.asked.iter().find(|(a, _)| *a == ask).map(|(_, n)| *n) else {
                    return Progress::Continue(Vec::new());
                };
                self.answers += 1;
                match answer.map(R::held_in) {
                    Ok(Ok(None)) => self.empty.push(node),
                    Ok(Ok(Some(bytes))) => match R::check(&bytes, self.now) {
                        Ok(record) if record.body.subject() == self.subject => {
                            let version = record.body.version();
                            self.valid.push((node, version, bytes, record));
                            if R::FIRST_VALID_SUFFICES {
                                return Progress::Done(self.decide());
                            }
                        }
                        _ => {
                            tracing::warn!(%node, subject = %self.subject, "a {} that does not verify was served; skipped", R::NAME);
                            self.forged.push(node);
                        }
                    },
                    // An answer of the wrong kind counts as not answered.
                    Ok(Err(other)) => {
                        tracing::debug!(%node, "answered a {} request with {other:?}", R::NAME);
                    }
                    Err(failure) => self.last_failure = Some(failure),
                }
                if self.answers < self.asked.len() {
                    Progress::Continue(Vec::new())
                } else if let Some(next) = self.waiting.next() {
                    Progress::Continue(vec![self.ask(next)])
                } else {
                    Progress::Done(self.decide())
                }
            }
        }
    }

    fn stalled(&mut self) -> Self::Output {
        Err(FindError::Stalled)
    }
}

/// What one record's replication did, keeper by keeper.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replicated {
    /// Keepers that held no record, a lower version or a damaged one, and took this
    /// node's.
    pub given: Vec<NodeId>,
    /// Keepers that already held this version or a higher one: left alone.
    pub current: Vec<NodeId>,
    /// Keepers that did not answer, answered something else, or refused the record:
    /// tried again on the next pass.
    pub skipped: Vec<NodeId>,
}

/// Why a record was not replicated at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicateError {
    /// The record held here does not verify, or is about another subject than the one
    /// it is kept under: it is never spread.
    #[error("the record held here is damaged: {0}")]
    Damaged(String),
    /// The operation stopped without deciding (a bug, reported rather than hung).
    #[error("the replication stalled")]
    Stalled,
}

/// Which request of a replication an answer belongs to.
#[derive(Clone, Copy, Debug)]
enum ReplicateStep {
    /// "Which record do you hold?"
    Get,
    /// "Keep mine."
    Put,
}

/// Keeps one record this node holds on the other nodes that should keep it (see the
/// module's rules). Asks no locate: the keepers are the closest in this node's own
/// view, given to [`RecordReplicate::from_view`].
#[derive(Debug)]
pub struct RecordReplicate<R: Record, E> {
    subject: R::Subject,
    bytes: Vec<u8>,
    /// This node's record, verified; the version it has.
    mine: Result<u64, String>,
    keepers: Vec<NodeAddress>,
    now: UnixSeconds,
    ids: AskIds,
    asked: Vec<(AskId, NodeAddress, ReplicateStep)>,
    outstanding: usize,
    done: Replicated,
    failure: PhantomData<fn(E)>,
}

impl<R: Record, E> RecordReplicate<R, E> {
    /// Replicates `bytes`, the record this node keeps for `subject`, to `keepers`
    /// (this node left out), verified at `now` first.
    pub fn new(
        subject: R::Subject,
        bytes: Vec<u8>,
        keepers: Vec<NodeAddress>,
        now: UnixSeconds,
    ) -> Self {
        let mine = match R::check(&bytes, now) {
            Ok(record) if record.body.subject() == subject => Ok(record.body.version()),
            Ok(record) => Err(format!(
                "the {} kept for {subject} is about {}",
                R::NAME,
                record.body.subject()
            )),
            Err(refusal) => Err(refusal.to_string()),
        };
        RecordReplicate {
            subject,
            bytes,
            mine,
            keepers,
            now,
            ids: AskIds::default(),
            asked: Vec::new(),
            outstanding: 0,
            done: Replicated::default(),
            failure: PhantomData,
        }
    }

    /// [`RecordReplicate::new`] towards the `replicas` nodes closest to the record's key
    /// among `members` (this node's view, itself included), but `me`; `address_of` gives
    /// their addresses (one without is left out).
    pub fn from_view(
        subject: R::Subject,
        bytes: Vec<u8>,
        now: UnixSeconds,
        me: NodeId,
        members: impl IntoIterator<Item = NodeId>,
        replicas: usize,
        address_of: impl Fn(&NodeId) -> Option<NodeAddress>,
    ) -> Self {
        let keepers = closest(&R::placement_key(&subject).0, members, replicas)
            .into_iter()
            .filter(|keeper| *keeper != me)
            .filter_map(|keeper| address_of(&keeper))
            .collect();
        RecordReplicate::new(subject, bytes, keepers, now)
    }

    fn ask(&mut self, to: NodeAddress, step: ReplicateStep) -> Command {
        let ask = self.ids.next_id();
        self.asked.push((ask, to, step));
        self.outstanding += 1;
        let request = match step {
            ReplicateStep::Get => R::get_request(self.subject),
            ReplicateStep::Put => R::put_request(self.bytes.clone()),
        };
        Command::Ask { ask, to, request }
    }

    /// Whether a keeper holding `theirs` already has this node's version or better.
    fn is_current(&self, theirs: &[u8], mine: u64) -> bool {
        match R::check(theirs, self.now) {
            Ok(record) => record.body.subject() == self.subject && record.body.version() >= mine,
            Err(_) => false,
        }
    }

    fn progress(&mut self, commands: Vec<Command>) -> Progress<Result<Replicated, ReplicateError>> {
        if self.outstanding == 0 {
            Progress::Done(Ok(std::mem::take(&mut self.done)))
        } else {
            Progress::Continue(commands)
        }
    }
}

impl<R: Record, E: fmt::Display> Operation for RecordReplicate<R, E> {
    type Output = Result<Replicated, ReplicateError>;
    type Failure = E;

    fn start(&mut self) -> Progress<Self::Output> {
        if let Err(damage) = &self.mine {
            tracing::warn!(subject = %self.subject, "the {} held here is damaged; not spread: {damage}", R::NAME);
            return Progress::Done(Err(ReplicateError::Damaged(damage.clone())));
        }
        let keepers = self.keepers.clone();
        let asks = keepers
            .into_iter()
            .map(|to| self.ask(to, ReplicateStep::Get))
            .collect();
        self.progress(asks)
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Self::Output> {
        let (ask, answer) = match input {
            Input::Answered(ask, answer) => (ask, answer),
            // Never asked for.
            Input::Located(_) | Input::Paced(_) => return Progress::Continue(Vec::new()),
        };
        let Some((to, step)) = self
            .asked
            .iter()
            .find(|(a, _, _)| *a == ask)
            .map(|(_, to, step)| (*to, *step))
        else {
            return Progress::Continue(Vec::new());
        };
        self.outstanding = self.outstanding.saturating_sub(1);
        let Ok(&mine) = self.mine.as_ref() else {
            return Progress::Done(Err(ReplicateError::Stalled));
        };
        let mut next = Vec::new();
        match (step, answer) {
            (ReplicateStep::Get, Ok(answer)) => match R::held_in(answer) {
                Ok(Some(theirs)) if self.is_current(&theirs, mine) => {
                    self.done.current.push(to.id);
                }
                Ok(_) => next.push(self.ask(to, ReplicateStep::Put)),
                Err(other) => {
                    tracing::debug!(keeper = %to.id, "answered a {} request with {other:?}", R::NAME);
                    self.done.skipped.push(to.id);
                }
            },
            (ReplicateStep::Put, Ok(PastResponse::Done)) => self.done.given.push(to.id),
            (ReplicateStep::Put, Ok(other)) => {
                tracing::debug!(keeper = %to.id, subject = %self.subject, "a keeper did not take the {}: {other:?}", R::NAME);
                self.done.skipped.push(to.id);
            }
            (_, Err(failure)) => {
                tracing::debug!(keeper = %to.id, subject = %self.subject, "a keeper did not answer: {failure}");
                self.done.skipped.push(to.id);
            }
        }
        self.progress(next)
    }

    fn stalled(&mut self) -> Self::Output {
        Err(ReplicateError::Stalled)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::net::SocketAddr;

    use cairn_core::crypto::KeyPair;
    use cairn_core::id::Id;

    use super::*;
    use crate::NodeAddress;

    const NOW: u64 = 1_800_000_000;

    fn key_pair(seed: u8) -> KeyPair {
        KeyPair::from_secret_bytes(&[seed; 32])
    }

    fn node(i: u8) -> NodeAddress {
        NodeAddress {
            id: NodeId(Id::hash(&[b'n', i])),
            addr: SocketAddr::from(([127, 0, 0, 1], 4000 + u16::from(i))),
        }
    }

    fn root(key: &KeyPair, sequence: u64, root: &[u8]) -> Vec<u8> {
        let record = RootRecord {
            volume: key.public_key().volume_key(),
            sequence,
            root: FileId(Id::hash(root)),
            time: NOW,
        };
        Signed::sign(key, record).unwrap().to_bytes().unwrap()
    }

    /// Starts `op`, answers its locate with `nodes` and returns the asks it made.
    fn locate<O: Operation>(
        op: &mut O,
        nodes: Vec<NodeAddress>,
    ) -> Vec<(AskId, NodeAddress, PastRequest)> {
        let Progress::Continue(first) = op.start() else {
            panic!("done before locating")
        };
        assert!(matches!(first.as_slice(), [Command::Locate { .. }]));
        let Progress::Continue(asks) = op.handle(Input::Located(Ok(nodes))) else {
            panic!("done before asking")
        };
        asks.into_iter()
            .map(|c| match c {
                Command::Ask { ask, to, request } => (ask, to, request),
                other => panic!("expected an ask, got {other:?}"),
            })
            .collect()
    }

    /// Feeds `answers` in order; returns the output once it is done.
    fn answer<O: Operation>(
        op: &mut O,
        answers: Vec<(AskId, Result<PastResponse, O::Failure>)>,
    ) -> O::Output {
        let count = answers.len();
        for (i, (ask, answer)) in answers.into_iter().enumerate() {
            match op.handle(Input::Answered(ask, answer)) {
                Progress::Done(output) => {
                    assert_eq!(i + 1, count, "decided before every replica answered");
                    return output;
                }
                Progress::Continue(more) => assert!(more.is_empty()),
            }
        }
        op.stalled()
    }

    #[test]
    fn a_publish_asks_every_replica_and_needs_a_majority_of_those_that_answered() {
        let volume = key_pair(1);
        let record = root(&volume, 3, b"a");
        let mut op = RecordPublish::<RootRecord, &str>::new(record.clone(), 4, NOW);
        let asks = locate(&mut op, (0..4).map(node).collect());
        assert_eq!(asks.len(), 4);
        assert!(asks.iter().all(|(_, _, r)| *r
            == PastRequest::PutRoot {
                record: record.clone()
            }));
        // Two stored, one unreachable, one refused: 2 of 3 answering is a majority.
        let out = answer(
            &mut op,
            vec![
                (asks[0].0, Ok(PastResponse::Done)),
                (asks[1].0, Err("unreachable")),
                (
                    asks[2].0,
                    Ok(PastResponse::Refused(Refusal::Store("disk".into()))),
                ),
                (asks[3].0, Ok(PastResponse::Done)),
            ],
        );
        assert_eq!(
            out.unwrap(),
            Published {
                replicas: 2,
                asked: 4,
                version: 3,
                unproven_conflicts: 0,
            }
        );

        // One of three answering is not.
        let mut op = RecordPublish::<RootRecord, &str>::new(record, 3, NOW);
        let asks = locate(&mut op, (0..3).map(node).collect());
        let out = answer(
            &mut op,
            vec![
                (asks[0].0, Ok(PastResponse::Done)),
                (asks[1].0, Ok(PastResponse::Refused(Refusal::DiskFull))),
                (asks[2].0, Ok(PastResponse::NotFound)),
            ],
        );
        match out {
            Err(PublishError::NotStored {
                stored: 1,
                reached: 3,
                failures,
            }) => {
                assert_eq!(failures.len(), 2);
                assert_eq!(
                    failures[0],
                    (node(1).id, ReplicaFailure::Refused(Refusal::DiskFull))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stale_replica_makes_the_publish_a_conflict_even_when_others_took_it() {
        let volume = key_pair(2);
        let mut op = RecordPublish::<RootRecord, &str>::new(root(&volume, 5, b"mine"), 3, NOW);
        let asks = locate(&mut op, (0..3).map(node).collect());
        let out = answer(
            &mut op,
            vec![
                (asks[0].0, Ok(PastResponse::Done)),
                (
                    asks[1].0,
                    Ok(PastResponse::Refused(Refusal::HeldRoot {
                        record: root(&volume, 7, b"theirs"),
                    })),
                ),
                (
                    asks[2].0,
                    Ok(PastResponse::Refused(Refusal::HeldRoot {
                        record: root(&volume, 6, b"older"),
                    })),
                ),
            ],
        );
        assert!(
            matches!(
                out,
                Err(PublishError::Conflict {
                    held: 7,
                    offered: 5
                })
            ),
            "{out:?}"
        );
    }

    #[test]
    fn a_forged_record_is_never_sent_and_an_unreachable_network_is_reported() {
        let volume = key_pair(3);
        let mut forged = root(&volume, 1, b"x");
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut op = RecordPublish::<RootRecord, &str>::new(forged, 4, NOW);
        assert!(matches!(
            op.start(),
            Progress::Done(Err(PublishError::Invalid(_)))
        ));

        let mut op = RecordPublish::<RootRecord, &str>::new(root(&volume, 1, b"x"), 2, NOW);
        let asks = locate(&mut op, (0..2).map(node).collect());
        let out = answer(
            &mut op,
            vec![(asks[0].0, Err("down")), (asks[1].0, Err("gone"))],
        );
        assert!(
            matches!(out, Err(PublishError::Unreached("gone"))),
            "{out:?}"
        );

        let mut op = RecordPublish::<RootRecord, &str>::new(root(&volume, 1, b"x"), 2, NOW);
        let _ = op.start();
        assert!(matches!(
            op.handle(Input::Located(Ok(Vec::new()))),
            Progress::Done(Err(PublishError::NoReplicas))
        ));
    }

    #[test]
    fn a_find_takes_the_highest_valid_record_and_names_stale_forged_and_rival_replicas() {
        let volume = key_pair(4);
        let subject = volume.public_key().volume_key();
        let old = root(&volume, 2, b"old");
        let new = root(&volume, 4, b"new");
        let rival = root(&volume, 4, b"rival");
        let mut forged = root(&volume, 9, b"forged");
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let other_volume = root(&key_pair(5), 10, b"elsewhere");
        let winner = new.clone().min(rival.clone());
        let loser = new.clone().max(rival.clone());

        let mut op = RecordFind::<RootRecord, &str>::new(subject, 7, NOW);
        let asks = locate(&mut op, (0..7).map(node).collect());
        assert!(
            asks.iter()
                .all(|(_, _, r)| *r == PastRequest::GetRoot { volume: subject })
        );
        let held = |record: Option<Vec<u8>>| Ok(PastResponse::Root { record });
        let out = answer(
            &mut op,
            vec![
                (asks[0].0, held(Some(old))),
                (asks[1].0, held(Some(winner.clone()))),
                (asks[2].0, held(Some(forged))),
                (asks[3].0, held(Some(loser))),
                (asks[4].0, held(None)),
                (asks[5].0, held(Some(other_volume))),
                (asks[6].0, Err("unreachable")),
            ],
        )
        .unwrap();
        assert_eq!(out.record.unwrap().to_bytes().unwrap(), winner);
        assert_eq!(out.answered, 6);
        assert_eq!(out.behind, vec![node(4).id, node(0).id]);
        assert_eq!(out.forged, vec![node(2).id, node(5).id]);
        assert_eq!(out.rivals, vec![node(3).id]);
    }

    #[test]
    fn a_find_that_reaches_nobody_fails_and_one_that_finds_nothing_does_not() {
        let subject = key_pair(6).public_key().volume_key();
        let mut op = RecordFind::<RootRecord, &str>::new(subject, 2, NOW);
        let asks = locate(&mut op, (0..2).map(node).collect());
        let out = answer(&mut op, vec![(asks[0].0, Err("a")), (asks[1].0, Err("b"))]);
        assert!(matches!(out, Err(FindError::Unreached("b"))));

        let mut op = RecordFind::<RootRecord, &str>::new(subject, 2, NOW);
        let asks = locate(&mut op, (0..2).map(node).collect());
        let out = answer(
            &mut op,
            vec![
                (asks[0].0, Ok(PastResponse::Root { record: None })),
                (asks[1].0, Err("b")),
            ],
        )
        .unwrap();
        assert!(out.record.is_none());
        assert_eq!(out.behind, vec![node(0).id]);
    }

    #[test]
    fn certificates_follow_the_same_rules() {
        let owner = key_pair(7);
        let certificate = |created_at: u64| {
            let body = FileCertificate {
                file_id: FileId::derive(b"f", &owner.public_key().0, 0),
                name_digest: Id::hash(b"f"),
                name_salt: 0,
                manifest_hash: cairn_core::id::ManifestHash(Id::hash(b"m")),
                manifest_salt: 0,
                manifest_fragments: Vec::new(),
                size: 1,
                k: 4,
                m: 2,
                created_at,
                expires_at: None,
                owner: owner.public_key(),
            };
            (
                body.file_id,
                Signed::sign(&owner, body).unwrap().to_bytes().unwrap(),
            )
        };
        let (file, older) = certificate(NOW - 10);
        let (_, newer) = certificate(NOW - 5);
        let mut op = RecordPublish::<FileCertificate, &str>::new(newer.clone(), 2, NOW);
        let asks = locate(&mut op, (0..2).map(node).collect());
        assert_eq!(
            asks[0].2,
            PastRequest::PutCertificate {
                certificate: newer.clone()
            }
        );
        let out = answer(
            &mut op,
            vec![
                (asks[0].0, Ok(PastResponse::Done)),
                (asks[1].0, Ok(PastResponse::Done)),
            ],
        );
        assert_eq!(out.unwrap().replicas, 2);

        // A certificate find asks one keeper at a time, closest first, and stops at
        // the first valid certificate. Wrong kinds of answer, forged ones and silent
        // keepers each lead to the next.
        let mut forged = older.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut op = RecordFind::<FileCertificate, &str>::new(file, 5, NOW);
        let first = locate(&mut op, (0..5).map(node).collect());
        assert_eq!(first.len(), 1, "one keeper asked at first");
        assert_eq!(
            (first[0].1, &first[0].2),
            (node(0), &PastRequest::GetCertificate { file })
        );
        let held = |certificate: Option<Vec<u8>>| Ok(PastResponse::Certificate { certificate });
        let mut ask = first[0].0;
        for (expected_next, answer) in [
            (node(1), Ok(PastResponse::Root { record: None })),
            (node(2), held(Some(forged))),
            (node(3), Err("unreachable")),
        ] {
            let Progress::Continue(next) = op.handle(Input::Answered(ask, answer)) else {
                panic!("decided before a valid certificate");
            };
            let [
                Command::Ask {
                    ask: next_ask, to, ..
                },
            ] = next.as_slice()
            else {
                panic!("expected one more ask, got {next:?}");
            };
            assert_eq!(*to, expected_next);
            ask = *next_ask;
        }
        let Progress::Done(out) = op.handle(Input::Answered(ask, held(Some(newer.clone())))) else {
            panic!("a valid certificate did not end the find");
        };
        let out = out.unwrap();
        assert_eq!(out.record.unwrap().to_bytes().unwrap(), newer);
        assert_eq!(out.answered, 2);
        assert_eq!(out.forged, vec![node(1).id]);
    }

    mod replicate {
        use cairn_store::NodeStore;

        use super::*;
        use crate::testing::{self, Behaviour, TestNet};

        /// A replication of `bytes` by `me` over `net`, towards the 4 closest to `key`.
        fn replicate<R: Record>(
            net: &TestNet,
            subject: R::Subject,
            bytes: Vec<u8>,
            me: NodeId,
        ) -> Result<Replicated, ReplicateError> {
            let everyone: Vec<NodeAddress> = net.nodes.iter().map(|n| n.address).collect();
            let op = RecordReplicate::<R, String>::from_view(
                subject,
                bytes,
                testing::NOW,
                me,
                everyone.iter().map(|n| n.id),
                4,
                |id| everyone.iter().find(|n| n.id == *id).copied(),
            );
            testing::run(net, op)
        }

        fn keepers(net: &TestNet, key: &PlacementKey) -> Vec<NodeId> {
            net.closest(&key.0, 4).iter().map(|n| n.id).collect()
        }

        fn root_sequence(net: &TestNet, node: &NodeId, volume: &VolumeKey) -> Option<u64> {
            let held = net.node(node).holder.get_root(volume).unwrap()?;
            Some(check_root(&held).unwrap().body.sequence)
        }

        #[test]
        fn keepers_that_lack_the_certificate_get_it_and_a_silent_one_is_skipped() {
            let mut net = TestNet::new(&[1 << 20; 8]);
            let (file, certificate) = testing::certificate(&key_pair(20), b"f", (2, 1));
            let keepers = keepers(&net, &certificate_key(&file));
            let me = keepers[1];
            net.node(&me)
                .holder
                .put_certificate(&certificate, testing::NOW)
                .unwrap();
            net.node(&keepers[3])
                .holder
                .put_certificate(&certificate, testing::NOW)
                .unwrap();
            net.set(&keepers[2], Behaviour::Silent);
            let done = replicate::<FileCertificate>(&net, file, certificate.clone(), me).unwrap();
            assert_eq!(done.given, vec![keepers[0]]);
            assert_eq!(done.current, vec![keepers[3]]);
            assert_eq!(done.skipped, vec![keepers[2]]);
            assert_eq!(
                net.node(&keepers[0]).holder.get_certificate(&file).unwrap(),
                Some(certificate)
            );
            // Nobody beyond the four closest was asked.
            let outside = net
                .nodes
                .iter()
                .filter(|n| !keepers.contains(&n.address.id))
                .filter(|n| n.holder.get_certificate(&file).unwrap().is_some())
                .count();
            assert_eq!(outside, 0);
        }

        #[test]
        fn a_keeper_with_a_higher_root_sequence_is_left_alone_and_lower_ones_are_raised() {
            let net = TestNet::new(&[1 << 20; 8]);
            let owner = key_pair(21);
            let volume = owner.public_key().volume_key();
            let keepers = keepers(&net, &root_key(&volume));
            let mine = root(&owner, 3, b"three");
            let me = keepers[0];
            net.node(&me).holder.put_root(&mine).unwrap();
            net.node(&keepers[1])
                .holder
                .put_root(&root(&owner, 5, b"five"))
                .unwrap();
            net.node(&keepers[2])
                .holder
                .put_root(&root(&owner, 1, b"one"))
                .unwrap();
            let done = replicate::<RootRecord>(&net, volume, mine, me).unwrap();
            assert_eq!(done.current, vec![keepers[1]]);
            let mut given = done.given.clone();
            given.sort();
            let mut expected = vec![keepers[2], keepers[3]];
            expected.sort();
            assert_eq!(given, expected);
            assert_eq!(root_sequence(&net, &keepers[1], &volume), Some(5));
            assert_eq!(root_sequence(&net, &keepers[2], &volume), Some(3));
            assert_eq!(root_sequence(&net, &keepers[3], &volume), Some(3));
        }

        #[test]
        fn a_damaged_or_misfiled_record_is_never_spread() {
            let net = TestNet::new(&[1 << 20; 6]);
            let owner = key_pair(22);
            let volume = owner.public_key().volume_key();
            let me = keepers(&net, &root_key(&volume))[0];
            let mut damaged = root(&owner, 2, b"x");
            let last = damaged.len() - 1;
            damaged[last] ^= 1;
            let out = replicate::<RootRecord>(&net, volume, damaged, me);
            assert!(matches!(out, Err(ReplicateError::Damaged(_))), "{out:?}");
            // A valid record kept under another volume's name.
            let other = key_pair(23).public_key().volume_key();
            let out = replicate::<RootRecord>(&net, other, root(&owner, 2, b"x"), me);
            assert!(matches!(out, Err(ReplicateError::Damaged(_))), "{out:?}");
            let spread = net
                .nodes
                .iter()
                .filter(|n| {
                    n.holder.get_root(&volume).unwrap().is_some()
                        || n.holder.get_root(&other).unwrap().is_some()
                })
                .count();
            assert_eq!(spread, 0);
        }

        #[test]
        fn a_keeper_holding_a_damaged_copy_gets_a_good_one() {
            let net = TestNet::new(&[1 << 20; 6]);
            let (file, certificate) = testing::certificate(&key_pair(24), b"g", (2, 1));
            let keepers = keepers(&net, &certificate_key(&file));
            // Damaged on the keeper's disk (a store keeps what it is given).
            let mut damaged = certificate.clone();
            let last = damaged.len() - 1;
            damaged[last] ^= 1;
            net.node(&keepers[1])
                .holder
                .store()
                .put_certificate(&file, &damaged)
                .unwrap();
            let done =
                replicate::<FileCertificate>(&net, file, certificate.clone(), keepers[0]).unwrap();
            assert!(done.given.contains(&keepers[1]), "{done:?}");
            assert_eq!(
                net.node(&keepers[1]).holder.get_certificate(&file).unwrap(),
                Some(certificate)
            );
        }
    }
}

/// A keeper that lies about conflicts, over [`crate::testing::TestNet`].
#[cfg(test)]
mod conflict_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::crypto::KeyPair;
    use cairn_core::id::{Id, VolumeKey};

    use super::*;
    use crate::testing::{Behaviour, NOW, TestNet, run};

    const KEEPERS: u16 = 4;

    fn root(key: &KeyPair, sequence: u64, dir: &[u8]) -> Vec<u8> {
        let record = RootRecord {
            volume: key.public_key().volume_key(),
            sequence,
            root: FileId(Id::hash(dir)),
            time: NOW,
        };
        Signed::sign(key, record).unwrap().to_bytes().unwrap()
    }

    fn publish(net: &TestNet, record: Vec<u8>) -> Result<Published, PublishError<String>> {
        run(
            net,
            RecordPublish::<RootRecord, String>::new(record, KEEPERS, NOW),
        )
    }

    fn keepers(net: &TestNet, volume: &VolumeKey) -> Vec<NodeId> {
        net.closest(&root_key(volume).0, usize::from(KEEPERS))
            .iter()
            .map(|n| n.id)
            .collect()
    }

    #[test]
    fn one_lying_keeper_cannot_make_a_publish_fail_and_is_counted() {
        let owner = KeyPair::from_secret_bytes(&[40; 32]);
        let volume = owner.public_key().volume_key();
        let mut net = TestNet::new(&[1 << 20; 8]);
        let liar = keepers(&net, &volume)[0];
        // Sequence 1 reaches every keeper while all are honest.
        assert_eq!(publish(&net, root(&owner, 1, b"one")).unwrap().replicas, 4);

        net.set(&liar, Behaviour::ClaimsRootConflicts);
        // The liar shows its (older) sequence 1 as the "newer" record: not believed.
        let published = publish(&net, root(&owner, 2, b"two")).unwrap();
        assert_eq!((published.replicas, published.unproven_conflicts), (3, 1));
        // A bare claim, from a keeper that holds nothing of a new volume, is not either.
        let other = KeyPair::from_secret_bytes(&[41; 32]);
        let other_volume = other.public_key().volume_key();
        let mut net = TestNet::new(&[1 << 20; 8]);
        let liar = keepers(&net, &other_volume)[0];
        net.set(&liar, Behaviour::ClaimsRootConflicts);
        let published = publish(&net, root(&other, 1, b"a")).unwrap();
        assert_eq!((published.replicas, published.unproven_conflicts), (3, 1));
    }

    #[test]
    fn a_proven_conflict_still_fails_the_publish_with_the_held_version() {
        let owner = KeyPair::from_secret_bytes(&[42; 32]);
        let volume = owner.public_key().volume_key();
        let mut net = TestNet::new(&[1 << 20; 8]);
        let liar = keepers(&net, &volume)[1];
        net.set(&liar, Behaviour::ClaimsRootConflicts);
        publish(&net, root(&owner, 5, b"five")).unwrap();
        // A replay of an older sequence loses to the honest keepers' proven record,
        // and so does a rival of the same sequence.
        for stale in [root(&owner, 4, b"four"), root(&owner, 5, b"rival")] {
            match publish(&net, stale) {
                Err(PublishError::Conflict { held: 5, .. }) => {}
                other => panic!("expected a conflict at 5, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_conflict_record_that_proves_nothing_is_named() {
        let owner = KeyPair::from_secret_bytes(&[43; 32]);
        let stranger = KeyPair::from_secret_bytes(&[44; 32]);
        let offered = root(&owner, 3, b"three");
        let op = RecordPublish::<RootRecord, String>::new(offered.clone(), 1, NOW);
        let claim = |record: Vec<u8>| op.proven_conflict(&Refusal::HeldRoot { record });
        let mut forged = root(&owner, 9, b"nine");
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(claim(forged).unwrap_err().contains("does not verify"));
        assert!(
            claim(root(&stranger, 9, b"x"))
                .unwrap_err()
                .contains("is about")
        );
        assert!(
            claim(root(&owner, 2, b"two"))
                .unwrap_err()
                .contains("does not supersede")
        );
        assert!(
            claim(offered).unwrap_err().contains("does not supersede"),
            "the same record"
        );
        assert_eq!(claim(root(&owner, 3, b"rival")), Ok(3));
        assert_eq!(claim(root(&owner, 8, b"eight")), Ok(8));
        assert!(
            op.proven_conflict(&Refusal::StaleRoot { held_sequence: 99 })
                .unwrap_err()
                .contains("no record")
        );
    }
}
