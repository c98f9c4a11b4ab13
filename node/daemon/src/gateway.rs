//! The gateway: what a node does for its local API. It puts, gets, describes and
//! reclaims whole files over the network, running the client pipeline
//! ([`cairn_pipeline`]) with [`NetworkFragments`] as its fragment store.
//!
//! Owns: [`NetworkFragments`] (with its put window of blocks in flight and its get
//! read-ahead, both tasks on the node's runtime), [`GatewayError`] and [`PlacementFailure`] (why a block
//! could not be placed: the message a user sees behind HTTP 507), and the file-level
//! operations [`Node::publish_certificate`], [`Node::find_certificate`],
//! [`Node::reclaim_file`] and [`Node::stat_file`], and the volume operations
//! [`Node::publish_root`] and [`Node::find_root`].
//!
//! Every receipt is checked here (signature, node, key, index, hash, file): a put
//! succeeds only with `n` valid receipts per block.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::{Node, unix_now};
use cairn_api::ReclaimReport;
use cairn_core::crypto::{FileCertificate, RootRecord, Signed};
use cairn_core::erasure::{BlockSpec, Codec, ErasureParams, Fragment, FragmentRef, Offer};
use cairn_core::id::{BlockHash, FileId, FragmentHash, Id, NodeId, PlacementKey, VolumeKey};
use cairn_core::manifest::{Manifest, manifest_placement_key};
use cairn_net::NetError;
pub use cairn_past::insert::PlacementFailure;
use cairn_past::insert::{BlockInsert, InsertError, OwnedFragments};
use cairn_past::lookup::{FetchFailure, FragmentLookup, LookupError};
use cairn_past::reclaim::{FileReclaim, ReclaimError, authorise_reclaim};
use cairn_past::records::{
    FindError, PublishError, Published, Record, RecordFind, RecordPublish, ReplicaFailure,
};
use cairn_past::survey::{BlockSurvey, FragmentHolders};
use cairn_past::{Refusal, check_reclaim};
use cairn_pipeline::{FailureKind, FragmentSink, FragmentSource, PendingBlock, StoreFailure};

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
    /// Routing to a key found nobody (after retries).
    #[error("no node answered for key {key} after {attempts} attempts")]
    Locate {
        /// The key.
        key: Id,
        /// Attempts made.
        attempts: u32,
    },
    /// A node could not be reached.
    #[error("node {node} is unreachable")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// Why.
        #[source]
        source: NetError,
    },
    /// A node did not answer within the time allowed (maintenance's `call_timeout`).
    #[error("node {node} did not answer in time ({after:?})")]
    Timeout {
        /// The node.
        node: NodeId,
        /// The time allowed.
        after: std::time::Duration,
    },
    /// A node answered something that makes no sense here.
    #[error("node {node} {what}")]
    Protocol {
        /// The node.
        node: NodeId,
        /// What it did.
        what: String,
    },
    /// A node refused.
    #[error("node {node} refused: {refusal}")]
    Refused {
        /// The node.
        node: NodeId,
        /// Its reason.
        refusal: Refusal,
    },
    /// A block could not be placed on `n` nodes.
    #[error(transparent)]
    Placement(#[from] PlacementFailure),
    /// A store receipt did not check out.
    #[error("node {node} sent a bad store receipt: {reason}")]
    BadReceipt {
        /// The node.
        node: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// A holder reported that its copy no longer matches its hash.
    #[error("node {node} reports its copy of fragment {index} is corrupt")]
    Corrupt {
        /// The node.
        node: NodeId,
        /// The fragment.
        index: u16,
    },
    /// No node keeps a certificate for the file.
    #[error("no node has a certificate for file {file}")]
    NotFound {
        /// The file.
        file: FileId,
    },
    /// The reclaim is not valid for this file.
    #[error("reclaim refused: {0}")]
    BadReclaim(String),
    /// Reading the file's manifest failed.
    #[error("reading the manifest of file {file}: {reason}")]
    Manifest {
        /// The file.
        file: FileId,
        /// Why.
        reason: String,
    },
    /// A task of the gateway failed.
    #[error("a gateway task failed: {0}")]
    Task(String),
    /// A replica of the volume's root holds sequence `held_sequence`, at least the one
    /// published (or equal with another record): this update lost to another writer's
    /// or is a replay.
    #[error(
        "a replica of volume {volume} holds sequence {held_sequence}, so sequence {offered} was not applied (another writer published first, or this is a replay)"
    )]
    RootConflict {
        /// The volume.
        volume: VolumeKey,
        /// The highest sequence a replica said it holds.
        held_sequence: u64,
        /// The sequence that was published.
        offered: u64,
    },
    /// Too few of the volume's replicas stored a new root record.
    #[error(
        "only {stored} of the {reached} replicas of volume {volume} that answered stored its root record (a majority is needed)"
    )]
    RootNotStored {
        /// The volume.
        volume: VolumeKey,
        /// Replicas that stored it (or already held it).
        stored: usize,
        /// Replicas that answered.
        reached: usize,
    },
}

/// What [`Node::publish_root`] achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RootPublished {
    /// Replicas that now hold the record (stored it, or already held the same one).
    pub replicas: usize,
    /// Replicas asked (the volume's `certificate_replicas` closest nodes).
    pub asked: usize,
    /// The sequence published.
    pub sequence: u64,
}

/// The upload a [`NetworkFragments`] stores fragments for.
#[derive(Clone, Debug)]
pub struct Upload {
    /// The owner's signed [`cairn_core::crypto::UploadGrant`] bytes.
    pub grant: Arc<Vec<u8>>,
    /// The file it grants.
    pub file: FileId,
}

/// How many blocks a put keeps in flight over the network by default
/// ([`FragmentSink::blocks_in_flight`]): while they wait for their `n` receipts (each
/// holder syncs), the pipeline reads and encodes the next. Measured on the 8-node
/// devnet (256 MiB puts): 4 beat 1, 2 and 8 (8 adds memory and contention on the
/// holders' disks without more throughput).
pub const DEFAULT_PUT_WINDOW: usize = 4;

/// The most prefetched blocks a [`NetworkFragments`] keeps waiting to be asked for;
/// an older one is dropped (its fetch aborted). `get` prefetches one block ahead.
const MAX_PREFETCHED_BLOCKS: usize = 4;

/// What one fetch of a block's fragments returns.
type FetchedFragments = Vec<Result<Option<Fragment>, GatewayError>>;

/// A block a [`NetworkFragments`] started storing and has not confirmed.
struct BlockInFlight {
    /// Its own copy of the fragments, kept until the block is confirmed so that a late
    /// placement refusal can be stored again at another key.
    fragments: OwnedFragments,
    /// The running store (`None` after a refusal, until a restart).
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

/// A fetch started by [`FragmentSource::prefetch`], waiting to be asked for.
struct Prefetched {
    key: PlacementKey,
    indexes: Vec<u16>,
    task: JoinHandle<FetchedFragments>,
}

/// The work a [`NetworkFragments`] (and its clones) runs in the background. Dropped
/// with the last clone: whatever is still running is aborted (a put or get that
/// failed half-way leaves nothing behind but fragments already stored).
#[derive(Default)]
struct Background {
    next_block: u64,
    blocks: HashMap<u64, BlockInFlight>,
    prefetched: VecDeque<Prefetched>,
}

impl Drop for Background {
    fn drop(&mut self) {
        for block in self.blocks.values() {
            if let Some(task) = &block.task {
                task.abort();
            }
        }
        for prefetched in &self.prefetched {
            prefetched.task.abort();
        }
    }
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("blocks_in_flight", &self.blocks.len())
            .field("prefetched", &self.prefetched.len())
            .finish()
    }
}

/// The client pipeline's view of the network: a blocking [`FragmentSink`] and
/// [`FragmentSource`] over a
/// running [`Node`]. Call it from a blocking thread (`spawn_blocking`), never from a
/// runtime thread.
///
/// A put keeps up to its window of blocks in flight (tasks on the runtime, each
/// holding its own copy of the block's `n` fragments: peak memory is the window's
/// fragments, `window × segment × n / k`, 6 MiB at 4 × 1 MiB, 4+2); a get's
/// [`FragmentSource::prefetch`] starts fetching the next block while the pipeline
/// decodes the current one.
#[derive(Clone, Debug)]
pub struct NetworkFragments {
    node: Node,
    runtime: Handle,
    upload: Option<Upload>,
    window: usize,
    background: Arc<Mutex<Background>>,
}

impl NetworkFragments {
    /// A store that reads through `node`; `upload` is needed to store fragments. A put
    /// through it keeps [`DEFAULT_PUT_WINDOW`] blocks in flight.
    pub fn new(node: Node, runtime: Handle, upload: Option<Upload>) -> NetworkFragments {
        NetworkFragments {
            node,
            runtime,
            upload,
            window: DEFAULT_PUT_WINDOW,
            background: Arc::default(),
        }
    }

    /// The same store with a put window of `window` blocks (at least 1: one block at a
    /// time, each confirmed before the next is read).
    pub fn with_window(mut self, window: usize) -> NetworkFragments {
        self.window = window.max(1);
        self
    }

    fn upload(&self) -> Result<&Upload, GatewayError> {
        self.upload.as_ref().ok_or_else(|| {
            GatewayError::BadReclaim("this store was opened for reading only".into())
        })
    }

    fn background(&self) -> MutexGuard<'_, Background> {
        crate::lock(&self.background)
    }

    /// Stores `fragments` at `key` in a task on the runtime.
    fn spawn_store(
        &self,
        key: PlacementKey,
        fragments: &OwnedFragments,
    ) -> Result<JoinHandle<Result<(), GatewayError>>, GatewayError> {
        let upload = self.upload()?.clone();
        let node = self.node.clone();
        let fragments = Arc::clone(fragments);
        Ok(self
            .runtime
            .spawn(async move { node.store_block(&upload, key, &fragments).await }))
    }
}

/// What the client pipeline does after a network failure: a block that could not be
/// placed on `n` nodes is diverted to another key, a holder's report that its copy is
/// corrupt counts the fragment corrupt, and anything else fails the put (or, in a get,
/// counts the fragment unavailable).
impl StoreFailure for GatewayError {
    fn kind(&self) -> FailureKind {
        match self {
            GatewayError::Placement(_) => FailureKind::Refused,
            GatewayError::Corrupt { .. } => FailureKind::Corrupt,
            // A single node's refusal is not the block's: the placement answers that.
            GatewayError::Stopped
            | GatewayError::Locate { .. }
            | GatewayError::Unreachable { .. }
            | GatewayError::Timeout { .. }
            | GatewayError::Protocol { .. }
            | GatewayError::Refused { .. }
            | GatewayError::BadReceipt { .. }
            | GatewayError::NotFound { .. }
            | GatewayError::BadReclaim(_)
            | GatewayError::Manifest { .. }
            | GatewayError::Task(_)
            | GatewayError::RootConflict { .. }
            | GatewayError::RootNotStored { .. } => FailureKind::Other,
        }
    }
}

impl FragmentSink for NetworkFragments {
    type Error = GatewayError;

    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), GatewayError> {
        self.put_block_fragments(key, &[(fragment, *hash)])
    }

    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), GatewayError> {
        let upload = self.upload()?;
        let owned = owned_fragments(fragments);
        self.runtime
            .block_on(self.node.store_block(upload, *key, &owned))
    }

    fn put_certificate(&self, certificate: &Signed<FileCertificate>) -> Result<(), GatewayError> {
        let bytes = certificate
            .to_bytes()
            .map_err(|e| GatewayError::BadReclaim(e.to_string()))?;
        self.runtime
            .block_on(self.node.publish_certificate(bytes))
            .map(|_| ())
    }

    fn blocks_in_flight(&self) -> usize {
        self.window
    }

    /// Copies the fragments (the pipeline reuses its buffer) and stores them in a task
    /// on the runtime; returns at once.
    fn start_block(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<PendingBlock, GatewayError> {
        let fragments = owned_fragments(fragments);
        let task = self.spawn_store(*key, &fragments)?;
        let mut background = self.background();
        let id = background.next_block;
        background.next_block += 1;
        background.blocks.insert(
            id,
            BlockInFlight {
                fragments,
                task: Some(task),
            },
        );
        Ok(PendingBlock(id))
    }

    fn finish_block(&self, pending: PendingBlock) -> Result<(), GatewayError> {
        let task = self
            .background()
            .blocks
            .get_mut(&pending.0)
            .and_then(|block| block.task.take());
        let Some(task) = task else {
            return Err(GatewayError::Task(format!(
                "block {} is not being stored",
                pending.0
            )));
        };
        let result = self
            .runtime
            .block_on(task)
            .unwrap_or_else(|e| Err(GatewayError::Task(e.to_string())));
        match &result {
            // The copy stays for a restart at another key.
            Err(error) if error.kind() == FailureKind::Refused => {}
            _ => {
                self.background().blocks.remove(&pending.0);
            }
        }
        result
    }

    fn restart_block(
        &self,
        pending: PendingBlock,
        new_key: &PlacementKey,
    ) -> Option<Result<PendingBlock, GatewayError>> {
        let fragments = self
            .background()
            .blocks
            .get(&pending.0)
            .map(|block| Arc::clone(&block.fragments));
        let Some(fragments) = fragments else {
            return Some(Err(GatewayError::Task(format!(
                "block {} has no copy to restart",
                pending.0
            ))));
        };
        let task = match self.spawn_store(*new_key, &fragments) {
            Ok(task) => task,
            Err(error) => return Some(Err(error)),
        };
        if let Some(block) = self.background().blocks.get_mut(&pending.0) {
            block.task = Some(task);
        }
        Some(Ok(pending))
    }
}

impl FragmentSource for NetworkFragments {
    type Error = GatewayError;

    fn get_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
    ) -> Result<Option<Fragment>, GatewayError> {
        self.get_block_fragments(key, &[index])
            .pop()
            .unwrap_or(Ok(None))
    }

    fn get_block_fragments(
        &self,
        key: &PlacementKey,
        indexes: &[u16],
    ) -> Vec<Result<Option<Fragment>, GatewayError>> {
        let prefetched = {
            let mut background = self.background();
            let found = background
                .prefetched
                .iter()
                .position(|p| p.key == *key && p.indexes == indexes);
            found.and_then(|position| background.prefetched.remove(position))
        };
        if let Some(prefetched) = prefetched {
            match self.runtime.block_on(prefetched.task) {
                Ok(fetched) => return fetched,
                // Fetched again below.
                Err(e) => tracing::warn!(%key, "a prefetch task failed: {e}"),
            }
        }
        self.runtime
            .block_on(self.node.fetch_fragments(*key, indexes))
    }

    /// Fetches in a task on the runtime; [`FragmentSource::get_block_fragments`] with
    /// the same arguments takes the result.
    fn prefetch(&self, key: &PlacementKey, indexes: &[u16]) {
        let node = self.node.clone();
        let (key, indexes) = (*key, indexes.to_vec());
        let wanted = indexes.clone();
        let task = self
            .runtime
            .spawn(async move { node.fetch_fragments(key, &wanted).await });
        let mut background = self.background();
        // Bounded: a prefetch never asked for is dropped, oldest first.
        while background.prefetched.len() >= MAX_PREFETCHED_BLOCKS {
            if let Some(stale) = background.prefetched.pop_front() {
                stale.task.abort();
            }
        }
        background
            .prefetched
            .push_back(Prefetched { key, indexes, task });
    }

    fn get_certificate(
        &self,
        file: &FileId,
    ) -> Result<Option<Signed<FileCertificate>>, GatewayError> {
        self.runtime.block_on(self.node.find_certificate(*file))
    }
}

/// One block of a file, as seen by `cairn stat`.
#[derive(Clone, Debug, Serialize)]
pub struct BlockStat {
    /// `"manifest"` or the block's position in the file.
    pub block: String,
    /// The block's placement key.
    pub key: PlacementKey,
    /// The placement salt (non-zero after file diversion).
    pub salt: u64,
    /// Where each fragment is.
    pub fragments: Vec<FragmentHolders>,
    /// How many of the `n` fragments have at least one live holder.
    pub live: usize,
}

/// What `cairn stat REF` shows.
#[derive(Clone, Debug, Serialize)]
pub struct FileStat {
    /// The certificate's fields.
    pub certificate: FileCertificate,
    /// Every block, the manifest block first.
    pub blocks: Vec<BlockStat>,
    /// `n` for every block.
    pub n: usize,
    /// Blocks with fewer than `k` live fragments (unreadable now).
    pub unreadable_blocks: usize,
    /// Blocks with fewer than `n` live fragments (degraded).
    pub degraded_blocks: usize,
}

impl Node {
    /// Stores one block's fragments: fragment `i` at the `i`-th closest node to `key`,
    /// each answering with a receipt that is checked ([`BlockInsert`]).
    pub(crate) async fn store_block(
        &self,
        upload: &Upload,
        key: PlacementKey,
        fragments: &OwnedFragments,
    ) -> Result<(), GatewayError> {
        let insert = BlockInsert::new(
            upload.file,
            Arc::clone(&upload.grant),
            key,
            Arc::clone(fragments),
        );
        match self.drive(insert).await {
            Ok(()) => Ok(()),
            Err(InsertError::Locate(error)) => Err(error),
            Err(InsertError::Placement(failure)) => {
                self.counters()
                    .placements_failed
                    .fetch_add(1, Ordering::Relaxed);
                Err(failure.into())
            }
            Err(stalled @ InsertError::Stalled(_)) => Err(GatewayError::Task(stalled.to_string())),
        }
    }

    /// Fetches fragments `indexes` of the block at `key` ([`FragmentLookup`]): one
    /// answer per index, in order.
    pub(crate) async fn fetch_fragments(
        &self,
        key: PlacementKey,
        indexes: &[u16],
    ) -> Vec<Result<Option<Fragment>, GatewayError>> {
        match self.drive(FragmentLookup::new(key, indexes)).await {
            Ok(found) => found
                .into_iter()
                .map(|result| result.map_err(fetch_error))
                .collect(),
            Err(LookupError::Locate(GatewayError::Locate { key, attempts })) => indexes
                .iter()
                .map(|_| Err(GatewayError::Locate { key, attempts }))
                .collect(),
            Err(error) => {
                let reason = error.to_string();
                indexes
                    .iter()
                    .map(|_| Err(GatewayError::Task(reason.clone())))
                    .collect()
            }
        }
    }

    /// Stores a signed certificate on the nodes closest to its certificate key
    /// ([`RecordPublish`]); returns how many keep it (a majority of those that
    /// answered, or an error).
    pub async fn publish_certificate(&self, certificate: Vec<u8>) -> Result<usize, GatewayError> {
        let replicas = self.config().past.certificate_replicas;
        let publish = RecordPublish::<FileCertificate, GatewayError>::new(
            certificate,
            u16::try_from(replicas).unwrap_or(u16::MAX),
            unix_now(),
        );
        let file = publish.subject();
        match self.drive(publish).await {
            Ok(published) => Ok(published.replicas),
            Err(error) => Err(self.publish_error(error, |_| match file {
                Some(file) => GatewayError::NotFound { file },
                None => GatewayError::Task("a certificate without a file".into()),
            })),
        }
    }

    /// The certificate of `file`: the newest valid one its keepers hold
    /// ([`RecordFind`]), `None` if none holds one.
    pub async fn find_certificate(
        &self,
        file: FileId,
    ) -> Result<Option<Signed<FileCertificate>>, GatewayError> {
        self.find_record::<FileCertificate>(file).await
    }

    /// Publishes a signed root record to the `certificate_replicas` nodes closest to
    /// its volume's [`cairn_past::root_key`] ([`RecordPublish`]).
    ///
    /// A lost update is never silent: if any replica holds a higher sequence (or the
    /// same sequence with another record), the publish fails with
    /// [`GatewayError::RootConflict`] even if other replicas took the record.
    /// Otherwise it succeeds when a majority of the replicas that answered (and at
    /// least one) hold the record afterwards; unreachable replicas are caught up by
    /// maintenance ([`super::maintenance`]'s root replication).
    pub async fn publish_root(&self, record: Vec<u8>) -> Result<RootPublished, GatewayError> {
        let replicas = self.config().past.certificate_replicas;
        let publish = RecordPublish::<RootRecord, GatewayError>::new(
            record,
            u16::try_from(replicas).unwrap_or(u16::MAX),
            unix_now(),
        );
        let volume = publish.subject();
        let outcome = self.drive(publish).await;
        self.count_unproven_conflicts(&outcome);
        match (outcome, volume) {
            (Ok(published), _) => Ok(RootPublished {
                replicas: published.replicas,
                asked: published.asked,
                sequence: published.version,
            }),
            (Err(PublishError::Conflict { held, offered }), Some(volume)) => {
                Err(GatewayError::RootConflict {
                    volume,
                    held_sequence: held,
                    offered,
                })
            }
            (Err(error), Some(volume)) => {
                Err(
                    self.publish_error(error, |(stored, reached)| GatewayError::RootNotStored {
                        volume,
                        stored,
                        reached,
                    }),
                )
            }
            (Err(error), None) => Err(self.publish_error(error, |_| {
                GatewayError::Task("a root record that names no volume".into())
            })),
        }
    }

    /// The highest valid root record of `volume` that the nodes closest to its
    /// [`cairn_past::root_key`] hold ([`RecordFind`]; `None` if none holds one). Fails only if no
    /// replica answered at all.
    pub async fn find_root(
        &self,
        volume: VolumeKey,
    ) -> Result<Option<Signed<RootRecord>>, GatewayError> {
        self.find_record::<RootRecord>(volume).await
    }

    /// The search for `subject`'s record among two more nodes than keep it: after a
    /// join, a new closest node may not have the record yet while the old keepers do.
    pub(crate) fn record_find<R: Record>(
        &self,
        subject: R::Subject,
    ) -> RecordFind<R, GatewayError> {
        let count = self.config().past.certificate_replicas + 2;
        RecordFind::new(
            subject,
            u16::try_from(count).unwrap_or(u16::MAX),
            unix_now(),
        )
    }

    /// Finds the best record of `subject` ([`Node::record_find`]).
    async fn find_record<R>(&self, subject: R::Subject) -> Result<Option<Signed<R>>, GatewayError>
    where
        R: Record + Send,
        R::Subject: Send,
    {
        match self.drive(self.record_find::<R>(subject)).await {
            Ok(found) => {
                if !found.forged.is_empty() || !found.rivals.is_empty() {
                    tracing::warn!(%subject, forged = ?found.forged, rivals = ?found.rivals, "replicas served a {} that lost", R::NAME);
                }
                Ok(found.record)
            }
            Err(FindError::Unreached(error)) => Err(error),
            Err(FindError::NoReplicas) => Ok(None),
            Err(FindError::Stalled) => {
                Err(GatewayError::Task(format!("finding a {} stalled", R::NAME)))
            }
        }
    }

    /// The gateway's error for a failed publish; `not_stored` makes the one for too few
    /// replicas (stored, reached) that did not refuse outright.
    /// Counts the replicas that claimed a conflict they could not prove.
    fn count_unproven_conflicts(&self, outcome: &Result<Published, PublishError<GatewayError>>) {
        let unproven = match outcome {
            Ok(published) => published.unproven_conflicts,
            Err(PublishError::NotStored { failures, .. }) => failures
                .iter()
                .filter(|(_, f)| matches!(f, ReplicaFailure::UnprovenConflict(_)))
                .count(),
            Err(_) => 0,
        };
        self.counters()
            .root_conflicts_unproven
            .fetch_add(unproven as u64, Ordering::Relaxed);
    }

    fn publish_error(
        &self,
        error: PublishError<GatewayError>,
        not_stored: impl FnOnce((usize, usize)) -> GatewayError,
    ) -> GatewayError {
        match error {
            PublishError::Invalid(refusal) => GatewayError::Refused {
                node: self.id(),
                refusal,
            },
            PublishError::Unreached(error) => error,
            PublishError::NotStored {
                stored,
                reached,
                failures,
            } => match failures.into_iter().next() {
                Some((node, ReplicaFailure::Refused(refusal))) if stored == 0 => {
                    GatewayError::Refused { node, refusal }
                }
                Some((node, ReplicaFailure::Unexpected(what))) if stored == 0 => {
                    GatewayError::Protocol {
                        node,
                        what: format!("answered a record with {what}"),
                    }
                }
                _ => not_stored((stored, reached)),
            },
            PublishError::NoReplicas => not_stored((0, 0)),
            PublishError::Conflict { held, offered } => GatewayError::Task(format!(
                "a replica holds version {held}, so version {offered} was not applied"
            )),
            PublishError::Stalled => GatewayError::Task("a publish stalled".into()),
        }
    }

    /// The manifest of a certified file, fetched and checked through the network
    /// (fragments against the certified hashes, the manifest against its hash).
    async fn manifest_of(
        &self,
        certificate: &Signed<FileCertificate>,
    ) -> Result<cairn_core::manifest::Manifest, GatewayError> {
        let body = &certificate.body;
        let file = body.file_id;
        let failed = |reason: String| GatewayError::Manifest { file, reason };
        let params = ErasureParams::new(body.k, body.m).map_err(|e| failed(e.to_string()))?;
        let codec = Codec::new(params).map_err(|e| failed(e.to_string()))?;
        let key = manifest_placement_key(&body.manifest_hash, body.manifest_salt);
        let indexes: Vec<u16> = codec.fetch_order().collect();
        let fetched = self.fetch_fragments(key, &indexes).await;
        let offers = indexes.iter().zip(fetched).map(|(index, result)| {
            let offer = match result {
                Ok(Some(fragment)) => Offer::Fragment(fragment),
                Ok(None) => Offer::Missing,
                Err(e) => Offer::Unavailable(e.to_string()),
            };
            (*index, offer)
        });
        let spec = BlockSpec {
            hash: BlockHash(body.manifest_hash.0),
            len: None,
            fragment_hashes: &body.manifest_fragments,
        };
        let (decoded, _) = codec
            .decode(&spec, offers)
            .map_err(|e| failed(e.to_string()))?;
        Manifest::from_block(&decoded.to_vec(), &body.manifest_hash, params)
            .map_err(|e| failed(e.to_string()))
    }

    /// Frees a file everywhere: every holder of every block (blocks another live file
    /// references are kept by their holders) and the certificate's keepers. The
    /// reclaim must be signed by the file's owner. Which nodes are told, in what order,
    /// and what counts as done is [`FileReclaim`]'s decision; this finds the
    /// certificate and the manifest it needs, and drives it.
    pub async fn reclaim_file(&self, reclaim: Vec<u8>) -> Result<ReclaimReport, GatewayError> {
        let order = check_reclaim(&reclaim).map_err(|e| GatewayError::BadReclaim(e.to_string()))?;
        let file = order.file_id;
        let certificate = self
            .find_certificate(file)
            .await?
            .ok_or(GatewayError::NotFound { file })?;
        // Checked before the manifest is fetched: a forged reclaim costs no more work.
        authorise_reclaim(&order, &certificate.body)
            .map_err(|e| GatewayError::BadReclaim(e.to_string()))?;
        let certificate_bytes = certificate
            .to_bytes()
            .map_err(|e| GatewayError::BadReclaim(e.to_string()))?;
        let manifest = self.manifest_of(&certificate).await?;
        let keepers =
            u16::try_from(self.config().past.certificate_replicas + 2).unwrap_or(u16::MAX);
        let reclaim = FileReclaim::new(reclaim, certificate_bytes, &manifest, keepers, unix_now());
        match self.drive(reclaim).await {
            Ok(done) => Ok(ReclaimReport {
                fragments_freed: done.fragments,
                bytes_freed: done.bytes,
                failures: done.failures,
            }),
            Err(ReclaimError::Refused(refusal)) => {
                Err(GatewayError::BadReclaim(refusal.to_string()))
            }
            Err(ReclaimError::Stalled) => Err(GatewayError::Task("the reclaim stalled".into())),
        }
    }

    /// Describes a file: its certificate, and for every block which node holds which
    /// fragment (checked against the manifest's hashes), and how many are live.
    pub async fn stat_file(&self, file: FileId) -> Result<FileStat, GatewayError> {
        let certificate = self
            .find_certificate(file)
            .await?
            .ok_or(GatewayError::NotFound { file })?;
        let manifest = self.manifest_of(&certificate).await?;
        let body = certificate.body.clone();
        let n = usize::from(manifest.params.n());
        let k = usize::from(manifest.params.k());
        let mut wanted: Vec<(String, PlacementKey, u64, Vec<FragmentHash>)> = vec![(
            "manifest".into(),
            manifest_placement_key(&body.manifest_hash, body.manifest_salt),
            body.manifest_salt,
            body.manifest_fragments.clone(),
        )];
        for (position, block) in manifest.blocks.iter().enumerate() {
            wanted.push((
                position.to_string(),
                block.placement_key(),
                block.salt,
                block.fragments.clone(),
            ));
        }
        let mut blocks = Vec::with_capacity(wanted.len());
        for (name, key, salt, hashes) in wanted {
            blocks.push(self.block_stat(name, key, salt, &hashes).await);
        }
        let unreadable_blocks = blocks.iter().filter(|b| b.live < k).count();
        let degraded_blocks = blocks.iter().filter(|b| b.live < n).count();
        Ok(FileStat {
            certificate: body,
            blocks,
            n,
            unreadable_blocks,
            degraded_blocks,
        })
    }

    /// Who holds which fragment of one block ([`BlockSurvey`]).
    async fn block_stat(
        &self,
        block: String,
        key: PlacementKey,
        salt: u64,
        hashes: &[FragmentHash],
    ) -> BlockStat {
        let survey = self.drive(BlockSurvey::new(key, hashes.to_vec())).await;
        BlockStat {
            block,
            key,
            salt,
            fragments: survey.fragments,
            live: survey.live,
        }
    }
}

/// An owned copy of a block's fragments, for requests that outlive the caller's buffer.
fn owned_fragments(fragments: &[(FragmentRef<'_>, FragmentHash)]) -> OwnedFragments {
    Arc::new(
        fragments
            .iter()
            .map(|(f, hash)| (f.index, *hash, f.bytes.to_vec()))
            .collect(),
    )
}

/// The gateway's error for a fragment a lookup could not get.
fn fetch_error(failure: FetchFailure<GatewayError>) -> GatewayError {
    match failure {
        FetchFailure::Corrupt { node, index } => GatewayError::Corrupt { node, index },
        FetchFailure::Refused { node, refusal } => GatewayError::Refused { node, refusal },
        FetchFailure::Protocol { node, what } => GatewayError::Protocol { node, what },
        FetchFailure::Failed(error) => error,
    }
}
