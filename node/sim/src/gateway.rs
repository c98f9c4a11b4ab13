//! The gateway's side of a churn run in the simulator: what node 0 does for the
//! bench's client, carried out over the simulator's queue.
//!
//! Owns: the put of a file as `PUT /v1/files` and the client do it ([`put_file`]: the
//! real pipeline's `put_unsigned` into a sink whose blocks are `BlockInsert`s from the
//! gateway, then the owner's certificate published with `RecordPublish`), the stat of
//! a file as the gateway's `stat_file` counts live fragments ([`file_stat`]: the
//! certificate, the manifest, and each block's `BlockSurvey` driven at one instant),
//! and [`FileRead`], a read of a whole file as `GET /v1/files/{ref}` does it (an
//! [`Operation`], with the get's waits for a block out of reach; [`read_file`]).
//!
//! May use: [`crate::Sim`] and its PAST driver, `cairn_pipeline`'s put,
//! `cairn_past`'s operations, `cairn_core`'s keys, erasure code and manifests.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::crypto::{FileCertificate, KeyPair, Signed, UploadGrant};
use cairn_core::erasure::DecodeError;
use cairn_core::erasure::{BlockSpec, Codec, ErasureParams, Fragment, FragmentRef, Offer};
use cairn_core::id::{BlockHash, FileId, FragmentHash, NodeId, PlacementKey};
use cairn_core::manifest::{Manifest, manifest_placement_key};
use cairn_past::answer::Answer;
use cairn_past::authority::RingView;
use cairn_past::insert::{BlockInsert, InsertError};
use cairn_past::lookup::{FetchFailure, Fetched, FragmentLookup};
use cairn_past::operation::{AskId, Command, Input, Operation, Progress};
use cairn_past::records::{FindError, RecordFind, RecordPublish};
use cairn_past::survey::BlockSurvey;
use cairn_past::{UnixSeconds, certificate_key, check_signed_certificate};
use cairn_pipeline::{
    BlockRetry, FailureKind, FileIdentity, FragmentSink, PutOptions, StoreFailure, put_unsigned,
};

use cairn_overlay::Time;

use crate::Sim;
use crate::churn_report::{BlockLive, FileSample};
use crate::past::SimFailure;

/// A file stored before the churn.
pub(crate) struct StoredFile {
    /// Its id.
    pub(crate) file: FileId,
    /// Its certificate's body.
    pub(crate) certificate: FileCertificate,
    /// Its manifest.
    pub(crate) manifest: Manifest,
}

/// Why a block could not be stored through the simulated gateway.
#[derive(Debug, thiserror::Error)]
enum SinkError {
    /// The block's `n` fragments could not be placed at this key.
    #[error("{0}")]
    Refused(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl StoreFailure for SinkError {
    fn kind(&self) -> FailureKind {
        match self {
            SinkError::Refused(_) => FailureKind::Refused,
            SinkError::Other(_) => FailureKind::Other,
        }
    }
}

/// The gateway's `NetworkFragments` for a put, over the simulator: each block a
/// [`BlockInsert`] from the gateway, run to its end (one block at a time).
struct SimSink<'a> {
    sim: RefCell<&'a mut Sim>,
    gateway: NodeId,
    file: FileId,
    grant: Arc<Vec<u8>>,
}

impl FragmentSink for SimSink<'_> {
    type Error = SinkError;

    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), SinkError> {
        self.put_block_fragments(key, &[(fragment, *hash)])
    }

    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), SinkError> {
        let owned = Arc::new(
            fragments
                .iter()
                .map(|(f, hash)| (f.index, *hash, f.bytes.to_vec()))
                .collect(),
        );
        let insert: BlockInsert<SimFailure> =
            BlockInsert::new(self.file, Arc::clone(&self.grant), *key, owned);
        let mut sim = self.sim.borrow_mut();
        let now = sim.now();
        let deadline = now.plus(Duration::from_secs(120));
        let started = sim
            .start(&self.gateway, now, insert)
            .ok_or_else(|| SinkError::Other("the gateway is not simulated".into()))?;
        match sim.run_until_done(&started, deadline) {
            Some(Ok(())) => Ok(()),
            Some(Err(InsertError::Placement(failure))) => {
                Err(SinkError::Refused(failure.to_string()))
            }
            Some(Err(other)) => Err(SinkError::Other(other.to_string())),
            None => Err(SinkError::Other("the insert did not finish".into())),
        }
    }

    fn put_certificate(&self, _: &Signed<FileCertificate>) -> Result<(), SinkError> {
        Err(SinkError::Other(
            "certificates are published by the caller".into(),
        ))
    }
}

/// Puts file `index` through the gateway as `PUT /v1/files` and the client do: the
/// pipeline stores the blocks and the manifest under the owner's grant, the owner
/// signs the certificate, and the gateway publishes it to its keepers.
pub(crate) fn put_file(
    sim: &mut Sim,
    gateway: &NodeId,
    owner: &KeyPair,
    index: usize,
    data: &[u8],
    params: ErasureParams,
) -> Result<StoredFile, String> {
    let now = sim.unix_now();
    let name = format!("churn-{index}");
    let grant = UploadGrant::new(
        name.as_bytes(),
        index as u64,
        owner.public_key(),
        now,
        // The API client's grant lifetime.
        24 * 3600,
    );
    let identity = FileIdentity::from(&grant);
    let grant_bytes = Signed::sign(owner, grant)
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())?;
    let mut options = PutOptions::new(params, now);
    options.name_salt = index as u64;
    let sink = SimSink {
        sim: RefCell::new(&mut *sim),
        gateway: *gateway,
        file: identity.file_id,
        grant: Arc::new(grant_bytes),
    };
    let unsigned = put_unsigned(data, &identity, &options, &sink).map_err(|e| e.to_string())?;
    drop(sink);
    let signed = Signed::sign(owner, unsigned.certificate.clone())
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())?;
    let replicas = sim
        .holder(gateway)
        .map_or(4, |h| h.config().certificate_replicas);
    let publish = RecordPublish::<FileCertificate, SimFailure>::new(
        signed,
        u16::try_from(replicas).unwrap_or(u16::MAX),
        sim.unix_now(),
    );
    let started = sim
        .start(gateway, sim.now(), publish)
        .ok_or("the gateway is not simulated")?;
    let deadline = sim.now().plus(Duration::from_secs(60));
    match sim.run_until_done(&started, deadline) {
        Some(Ok(_)) => Ok(StoredFile {
            file: identity.file_id,
            certificate: unsigned.certificate,
            manifest: unsigned.manifest,
        }),
        Some(Err(e)) => Err(format!("publishing the certificate: {e}")),
        None => Err("publishing the certificate did not finish".into()),
    }
}

/// The gateway's stat of every file at this instant.
pub(crate) fn stat_all(sim: &Sim, gateway: &NodeId, files: &[StoredFile]) -> Vec<FileSample> {
    files.iter().map(|f| file_stat(sim, gateway, f)).collect()
}

/// The gateway's `stat_file` at this instant: the certificate from the first of its
/// keepers (as the gateway locates them) that is up and holds it, the manifest
/// readable (at least `k` live fragments), then per block the fragments that have a
/// live holder, as `block_stat` counts them.
pub(crate) fn file_stat(sim: &Sim, gateway: &NodeId, file: &StoredFile) -> FileSample {
    let body = &file.certificate;
    let n = usize::from(body.k) + usize::from(body.m);
    let replicas = sim
        .holder(gateway)
        .map_or(4, |h| h.config().certificate_replicas);
    let keepers = sim.locate_from(gateway, &certificate_key(&file.file).0, replicas + 2);
    let certified = keepers.iter().any(|id| {
        sim.is_up(id)
            && sim
                .holder(id)
                .and_then(|h| h.get_certificate(&file.file).ok().flatten())
                .is_some_and(|bytes| check_signed_certificate(&bytes, sim.unix_now()).is_ok())
    });
    if !certified {
        return Err(format!("no node has a certificate for file {}", file.file));
    }
    let manifest_key = manifest_placement_key(&body.manifest_hash, body.manifest_salt);
    let manifest_live = block_live(sim, gateway, &manifest_key, &body.manifest_fragments);
    if manifest_live < usize::from(body.k) {
        return Err(format!(
            "reading the manifest of file {}: {manifest_live} of {n} fragments live",
            file.file
        ));
    }
    let mut blocks = vec![BlockLive {
        name: "manifest".into(),
        key: manifest_key.to_string(),
        live: manifest_live,
    }];
    for (position, entry) in file.manifest.blocks.iter().enumerate() {
        let key = entry.placement_key();
        blocks.push(BlockLive {
            name: position.to_string(),
            key: key.to_string(),
            live: block_live(sim, gateway, &key, &entry.fragments),
        });
    }
    Ok(blocks)
}

/// Fragments of the block at `key` with a live holder, as the gateway's stat counts
/// them: `cairn_past`'s [`BlockSurvey`] (the `n + LOOKUP_SPARES` closest the gateway
/// locates, asked for their holdings, and the holders their pointers name), driven at
/// one instant: its locate answered from the gateway's view ([`Sim::locate_from`]), each
/// request answered by the node's holder if it is up and failing if it is down.
fn block_live(sim: &Sim, gateway: &NodeId, key: &PlacementKey, hashes: &[FragmentHash]) -> usize {
    let mut survey: BlockSurvey<SimFailure> = BlockSurvey::new(*key, hashes.to_vec());
    let mut inputs = VecDeque::new();
    let mut progress = survey.start();
    // A survey asks `n + LOOKUP_SPARES` nodes and each pointer's holder once; the bound
    // only guards against one that would never end.
    for _ in 0..10_000 {
        match progress {
            Progress::Done(found) => return found.live,
            Progress::Continue(commands) => {
                for command in commands {
                    inputs.push_back(instant_answer(sim, gateway, command));
                }
            }
        }
        let Some(input) = inputs.pop_front() else {
            return 0;
        };
        progress = survey.handle(input);
    }
    0
}

/// The answer to `command` of an operation run by `gateway` at this very instant.
fn instant_answer(sim: &Sim, gateway: &NodeId, command: Command) -> Input<SimFailure> {
    match command {
        Command::Locate { key, count } => {
            let nodes = sim
                .locate_from(gateway, &key.0, usize::from(count))
                .iter()
                .filter_map(|id| sim.address_of(id))
                .collect();
            Input::Located(Ok(nodes))
        }
        Command::Ask { ask, to, request } => {
            let answer = match sim.holder(&to.id) {
                Some(holder) if sim.is_up(&to.id) => {
                    let members = sim.ring_of(&to.id);
                    let ring = RingView {
                        me: to.id,
                        members: &members,
                    };
                    match holder.answer(request, *gateway, sim.unix_now(), ring, |id| {
                        sim.address_of(id)
                    }) {
                        Answer::Reply(response) => Ok(response),
                        _ => Err(SimFailure::Unknown(to.id)),
                    }
                }
                _ => Err(SimFailure::Down(to.id)),
            };
            Input::Answered(ask, answer)
        }
        Command::Pace { ask, .. } => Input::Paced(ask),
    }
}

/// What one fetched fragment offers the decoder (kept so that a decode can be retried
/// with more fragments).
#[derive(Clone, Debug)]
enum Got {
    Fragment(Fragment),
    Missing,
    Corrupt(String),
    Unavailable(String),
}

impl Got {
    fn from_fetched(fetched: Fetched<SimFailure>) -> Got {
        match fetched {
            Ok(Some(fragment)) => Got::Fragment(fragment),
            Ok(None) => Got::Missing,
            Err(FetchFailure::Corrupt { node, index }) => {
                Got::Corrupt(format!("node {node} reports fragment {index} corrupt"))
            }
            Err(other) => Got::Unavailable(other.to_string()),
        }
    }

    fn offer(&self) -> Offer {
        match self {
            Got::Fragment(fragment) => Offer::Fragment(fragment.clone()),
            Got::Missing => Offer::Missing,
            Got::Corrupt(why) => Offer::ReportedCorrupt(why.clone()),
            Got::Unavailable(why) => Offer::Unavailable(why.clone()),
        }
    }
}

/// Which block a [`FileRead`] fetches: the manifest, or a data block by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Manifest,
    Block(usize),
}

/// Where a [`FileRead`] stands.
#[derive(Debug)]
enum Stage {
    /// Finding the certificate.
    Certificate(RecordFind<FileCertificate, SimFailure>),
    /// Fetching fragments of a block: the first `k` of the fetch order, then (only if
    /// those do not decode) the rest.
    Fetching {
        part: Part,
        lookup: FragmentLookup<SimFailure>,
        indexes: Vec<u16>,
        got: Vec<(u16, Got)>,
    },
    Done,
}

/// A read of a whole file through the gateway, as `GET /v1/files/{ref}` does it: the
/// certificate from its keepers (closest first, the first valid one), checked; then the
/// manifest block and every data block in order, each by a [`FragmentLookup`] of the
/// first `k` indexes of the fetch order and, only if those do not decode, one of the
/// other `m` (the pipeline's `block_offers`); every block decoded and checked against
/// its hash. A block with fewer than `k` good fragments, some missing or unreachable, is
/// waited out as the gateway's get does ([`BlockRetry::NETWORK`]: the read ends with
/// [`ReadOutcome::Wait`], and its continuation is started after the wait; [`read_file`]
/// does that). Fails as the gateway's get does: no certificate, or a block that does
/// not decode after the waits.
#[derive(Debug)]
pub struct FileRead {
    file: FileId,
    now: UnixSeconds,
    stage: Stage,
    /// Bumped with each sub-operation: the high bits of its asks' ids, so that a late
    /// answer to an earlier one is told apart.
    round: u32,
    certificate: Option<FileCertificate>,
    codec: Option<Codec>,
    manifest: Option<Manifest>,
    /// How a block out of reach is waited for (the gateway's: [`BlockRetry::NETWORK`]).
    retry: BlockRetry,
    /// Fetches of the current block so far, after the first.
    attempt: u8,
    /// The block to fetch first when this read goes on after a wait.
    resume: Option<Part>,
}

/// What a [`FileRead`] came to.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Every block read and checked, or why not.
    Done(Result<(), String>),
    /// A block was out of reach (fewer than `k` good fragments, some missing or
    /// unreachable): the gateway waits `after`, then `then` goes on from that block.
    Wait {
        /// The wait.
        after: Duration,
        /// The rest of the read.
        then: Box<FileRead>,
    },
}

/// Bits of an [`AskId`] left to the sub-operation; the round goes above them.
const ROUND_SHIFT: u32 = 20;

impl FileRead {
    /// A read of `file` at `now` (Unix seconds: the certificate's expiry is judged then).
    pub fn new(file: FileId, now: UnixSeconds) -> FileRead {
        FileRead {
            file,
            now,
            stage: Stage::Done,
            round: 0,
            certificate: None,
            codec: None,
            manifest: None,
            retry: BlockRetry::NETWORK,
            attempt: 0,
            resume: None,
        }
    }

    /// This read waiting out a block that is out of reach ([`BlockRetry`]): `None`
    /// once it has waited `retry.retries` times for this block.
    fn wait(&mut self, part: Part) -> Option<ReadOutcome> {
        if self.attempt >= self.retry.retries {
            return None;
        }
        // The pipeline's `BlockRetry::wait`: the first wait, doubled each time.
        let after = self.retry.first_wait.saturating_mul(
            1u32.checked_shl(u32::from(self.attempt))
                .unwrap_or(u32::MAX),
        );
        let mut then = std::mem::replace(self, FileRead::new(self.file, self.now));
        then.attempt += 1;
        then.resume = Some(part);
        then.stage = Stage::Done;
        Some(ReadOutcome::Wait {
            after,
            then: Box::new(then),
        })
    }

    fn outer(&self, commands: Vec<Command>) -> Vec<Command> {
        commands
            .into_iter()
            .map(|command| match command {
                Command::Ask { ask, to, request } => Command::Ask {
                    ask: AskId((self.round << ROUND_SHIFT) | ask.0),
                    to,
                    request,
                },
                Command::Pace { ask, bytes } => Command::Pace {
                    ask: AskId((self.round << ROUND_SHIFT) | ask.0),
                    bytes,
                },
                locate => locate,
            })
            .collect()
    }

    fn fail(&mut self, why: String) -> Progress<ReadOutcome> {
        self.stage = Stage::Done;
        Progress::Done(ReadOutcome::Done(Err(why)))
    }

    /// Starts fetching `indexes` of `part`.
    fn fetch(
        &mut self,
        part: Part,
        indexes: Vec<u16>,
        got: Vec<(u16, Got)>,
    ) -> Progress<ReadOutcome> {
        let Some(key) = self.key_of(part) else {
            return self.fail("the manifest lists no such block".into());
        };
        self.round += 1;
        let mut lookup = FragmentLookup::new(key, &indexes);
        let progress = lookup.start();
        self.stage = Stage::Fetching {
            part,
            lookup,
            indexes,
            got,
        };
        self.on_fetch(progress)
    }

    fn key_of(&self, part: Part) -> Option<PlacementKey> {
        match part {
            Part::Manifest => {
                let body = self.certificate.as_ref()?;
                Some(manifest_placement_key(
                    &body.manifest_hash,
                    body.manifest_salt,
                ))
            }
            Part::Block(position) => Some(
                self.manifest
                    .as_ref()?
                    .blocks
                    .get(position)?
                    .placement_key(),
            ),
        }
    }

    /// The first `k` indexes of the fetch order, and the others.
    fn batches(&self) -> (Vec<u16>, Vec<u16>) {
        let Some(codec) = &self.codec else {
            return (Vec::new(), Vec::new());
        };
        let order: Vec<u16> = codec.fetch_order().collect();
        let first = usize::from(codec.params().k()).min(order.len());
        (order[..first].to_vec(), order[first..].to_vec())
    }

    fn on_fetch(
        &mut self,
        progress: Progress<
            Result<Vec<Fetched<SimFailure>>, cairn_past::lookup::LookupError<SimFailure>>,
        >,
    ) -> Progress<ReadOutcome> {
        let fetched = match progress {
            Progress::Continue(commands) => return Progress::Continue(self.outer(commands)),
            Progress::Done(fetched) => fetched,
        };
        let Stage::Fetching {
            part,
            indexes,
            mut got,
            ..
        } = std::mem::replace(&mut self.stage, Stage::Done)
        else {
            return self.fail("a fetch ended outside its stage".into());
        };
        match fetched {
            Ok(results) => got.extend(
                indexes
                    .iter()
                    .copied()
                    .zip(results.into_iter().map(Got::from_fetched)),
            ),
            Err(error) => {
                let why = error.to_string();
                got.extend(indexes.iter().map(|&i| (i, Got::Unavailable(why.clone()))));
            }
        }
        let (first, rest) = self.batches();
        match self.decode(part, &got) {
            Ok(()) => self.next_part(part),
            Err(_) if got.len() <= first.len() && !rest.is_empty() => self.fetch(part, rest, got),
            Err((why, worth_waiting)) => match worth_waiting.then(|| self.wait(part)).flatten() {
                Some(wait) => Progress::Done(wait),
                None => self.fail(why),
            },
        }
    }

    /// Decodes `part` from what was fetched; a decoded manifest is kept. An error says
    /// why, and whether waiting may help (fewer than `k` good fragments, some of them
    /// missing or unreachable rather than corrupt: the pipeline's `decode_block`).
    fn decode(&mut self, part: Part, got: &[(u16, Got)]) -> Result<(), (String, bool)> {
        let (Some(codec), Some(body)) = (&self.codec, &self.certificate) else {
            return Err(("no certificate".into(), false));
        };
        let worth_waiting = |e: &DecodeError| {
            matches!(e, DecodeError::NotEnoughFragments { missing, unavailable, .. }
                if missing + unavailable > 0)
        };
        let offers = got.iter().map(|(index, got)| (*index, got.offer()));
        match part {
            Part::Manifest => {
                let spec = BlockSpec {
                    hash: BlockHash(body.manifest_hash.0),
                    len: None,
                    fragment_hashes: &body.manifest_fragments,
                };
                let (decoded, _) = codec.decode(&spec, offers).map_err(|e| {
                    let why = format!(
                        "the manifest of file {} could not be fetched: {e}",
                        body.file_id
                    );
                    (why, worth_waiting(&e))
                })?;
                let manifest =
                    Manifest::from_block(&decoded.to_vec(), &body.manifest_hash, codec.params())
                        .map_err(|e| {
                            let why =
                                format!("the manifest of file {} is invalid: {e}", body.file_id);
                            (why, false)
                        })?;
                if manifest.file_size != body.size
                    || manifest.params.k() != body.k
                    || manifest.params.m() != body.m
                {
                    return Err(("the manifest disagrees with the certificate".into(), false));
                }
                self.manifest = Some(manifest);
                Ok(())
            }
            Part::Block(position) => {
                let invalid = |why: &str| (why.to_string(), false);
                let manifest = self.manifest.as_ref().ok_or(invalid("no manifest"))?;
                let entry = manifest
                    .blocks
                    .get(position)
                    .ok_or(invalid("no such block"))?;
                let len = manifest
                    .block_len(position)
                    .ok_or(invalid("a block without a length"))?;
                let spec = BlockSpec {
                    hash: entry.hash,
                    len: Some(len),
                    fragment_hashes: &entry.fragments,
                };
                codec.decode(&spec, offers).map(|_| ()).map_err(|e| {
                    let why = format!(
                        "block {position} of file {} could not be rebuilt: {e}",
                        body.file_id
                    );
                    (why, worth_waiting(&e))
                })
            }
        }
    }

    /// After `part` decoded: the next block, or done.
    fn next_part(&mut self, part: Part) -> Progress<ReadOutcome> {
        let next = match part {
            Part::Manifest => 0,
            Part::Block(position) => position + 1,
        };
        let blocks = self.manifest.as_ref().map_or(0, |m| m.blocks.len());
        if next >= blocks {
            self.stage = Stage::Done;
            return Progress::Done(ReadOutcome::Done(Ok(())));
        }
        // Each block is waited for afresh (the pipeline's `decode_block`).
        self.attempt = 0;
        let (first, _) = self.batches();
        self.fetch(Part::Block(next), first, Vec::new())
    }

    fn on_certificate(
        &mut self,
        progress: Progress<
            Result<cairn_past::records::Found<FileCertificate>, FindError<SimFailure>>,
        >,
    ) -> Progress<ReadOutcome> {
        let found = match progress {
            Progress::Continue(commands) => return Progress::Continue(self.outer(commands)),
            Progress::Done(found) => found,
        };
        let signed = match found {
            Ok(found) => found.record,
            Err(FindError::NoReplicas) => None,
            Err(error) => return self.fail(error.to_string()),
        };
        let Some(signed) = signed else {
            return self.fail(format!(
                "no file {} is stored in this network (no node has its certificate)",
                self.file
            ));
        };
        let body = match signed.verify() {
            Ok(body) if body.file_id == self.file => body.clone(),
            Ok(_) => return self.fail("the certificate is for another file".into()),
            Err(e) => return self.fail(format!("the certificate does not verify: {e}")),
        };
        if let Err(e) = body.check_time(self.now) {
            return self.fail(format!("the certificate: {e}"));
        }
        let codec = ErasureParams::new(body.k, body.m).and_then(Codec::new);
        match codec {
            Ok(codec) => self.codec = Some(codec),
            Err(e) => return self.fail(format!("the certificate's code: {e}")),
        }
        self.certificate = Some(body);
        let (first, _) = self.batches();
        self.fetch(Part::Manifest, first, Vec::new())
    }
}

impl Operation for FileRead {
    type Output = ReadOutcome;
    type Failure = SimFailure;

    fn start(&mut self) -> Progress<Self::Output> {
        if let Some(part) = self.resume.take() {
            let (first, _) = self.batches();
            return self.fetch(part, first, Vec::new());
        }
        // The gateway's `find_record`: the keepers and two more.
        let count = u16::try_from(cairn_past::PastConfig::default().certificate_replicas + 2)
            .unwrap_or(u16::MAX);
        let mut find = RecordFind::new(self.file, count, self.now);
        let progress = find.start();
        self.stage = Stage::Certificate(find);
        self.on_certificate(progress)
    }

    fn handle(&mut self, input: Input<SimFailure>) -> Progress<Self::Output> {
        let input = match input {
            Input::Answered(ask, answer) => {
                if ask.0 >> ROUND_SHIFT != self.round {
                    return Progress::Continue(Vec::new());
                }
                Input::Answered(AskId(ask.0 & ((1 << ROUND_SHIFT) - 1)), answer)
            }
            Input::Paced(ask) => Input::Paced(AskId(ask.0 & ((1 << ROUND_SHIFT) - 1))),
            located => located,
        };
        match &mut self.stage {
            Stage::Certificate(find) => {
                let progress = find.handle(input);
                self.on_certificate(progress)
            }
            Stage::Fetching { lookup, .. } => {
                let progress = lookup.handle(input);
                self.on_fetch(progress)
            }
            Stage::Done => Progress::Continue(Vec::new()),
        }
    }

    fn stalled(&mut self) -> Self::Output {
        ReadOutcome::Done(Err(format!("the read of file {} stalled", self.file)))
    }
}

/// A read of `file` from `gateway` starting at `at`, run to its end with its waits
/// (at most `until`): `Ok` or why not, and when it ended. The final reads of a churn
/// run go this way; the readers drive the same [`ReadOutcome`]s between other events.
pub fn read_file(
    sim: &mut Sim,
    gateway: &NodeId,
    file: FileId,
    at: Time,
    until: Time,
) -> Result<(), String> {
    let mut read = FileRead::new(file, sim.unix_now());
    let mut at = at;
    // Each wait is one of the bounded retries of one block; the bound only guards
    // against a read that would never end.
    for _ in 0..64 {
        let started = sim
            .start(gateway, at, read)
            .ok_or("the gateway is not simulated")?;
        match sim.run_until_done(&started, until) {
            Some(ReadOutcome::Done(result)) => return result,
            Some(ReadOutcome::Wait { after, then }) => {
                read = *then;
                at = sim.now().plus(after);
            }
            None => return Err("the read did not finish".into()),
        }
    }
    Err("the read waited too often".into())
}
