//! PAST over fragments: what a storage node does with the fragments, certificates and
//! pointers it is asked to keep, and the rules of placement.
//!
//! Owns: the PAST wire requests and answers ([`PastRequest`], [`PastResponse`],
//! [`Refusal`]), placement arithmetic ([`closest`], [`certificate_key`], [`root_key`], the replica
//! diversion thresholds in [`PastConfig`]), [`Holder`], which answers one request
//! against the local store ([`Holder::answer`]), and every decision a node makes when
//! it asks others, each an [`operation::Operation`]: inserting a block
//! ([`insert::BlockInsert`]), looking fragments up ([`lookup::FragmentLookup`]),
//! diverting a replica ([`divert::ReplicaDiversion`]), publishing, finding and
//! replicating certificates and root records ([`records`]), reclaiming a file and
//! passing a reclaim on to diverted copies ([`reclaim`]), surveying who holds a block's
//! fragments ([`survey::BlockSurvey`], what `cairn stat` shows), and maintenance
//! ([`maintenance`]).
//! Sans-IO: no sockets, no clock (`now` is passed in), no tasks; the daemon
//! (`cairn-daemon`) and the simulator (`cairn-sim`) carry out the commands the machines
//! return, and the unit tests drive them over a network of holders in one process.
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`], [`cairn_core::erasure`],
//! [`cairn_core::codec::bytes`] (the fast serde form of payloads) and [`cairn_store`].
//! No tokio, no network: the daemon and the simulator drive it.
//!
//! # The rules every node enforces
//! - A fragment is stored only under a valid, unexpired [`UploadGrant`] signed by the
//!   owner of the file id it names, and only if its bytes hash to the hash offered.
//!   The grant comes first because a put streams: the file certificate, which covers
//!   the manifest hash, can only be signed at the end.
//! - A certificate is stored only if its signature, owner and file id check out.
//! - A reclaim is obeyed only if it is signed by the owner of the certificate it
//!   comes with; a reclaimed file id is remembered (a tombstone) and never stored again.
//! - A volume's root record is stored only if it is signed by the volume's key and its
//!   sequence is higher than the one held; the same record again is accepted
//!   (idempotent), and a lower sequence, or the same sequence with other bytes, is
//!   refused with [`Refusal::HeldRoot`], which carries the signed record held. That
//!   refusal is how a writer learns that its update lost, and the record is its proof:
//!   a publisher believes a conflict only once the record verifies and is higher (or a
//!   rival of the same sequence). A bare claim ([`Refusal::StaleRoot`], or a record
//!   that proves nothing) counts as no answer, so one lying keeper cannot make every
//!   publish fail.
//!
//! - Every byte stored is charged to an owner ([`admission`]): the grant's signer for a
//!   put, the certificate's for a repair store. A node may cap each owner's bytes
//!   ([`PastConfig::owner_quota`]; a put over it is refused with [`Refusal::OverQuota`]),
//!   and a fragment whose upload was never certified is collected once its grant has
//!   expired and [`PastConfig::uncertified_grace`] has passed ([`Holder::settle_upload`]).
//! - Offered bytes are hashed before anything else: no receipt or reference is made
//!   for bytes that were not checked, even when a fragment of that hash is held.
//!
//! # Replica diversion (PAST §3.3, per fragment)
//! A node asked to store a fragment of `size` bytes with `free` bytes free accepts it if
//! `size / free <= t_pri`; otherwise it answers [`Refusal::NoRoom`] and the daemon
//! diverts the fragment to a leaf-set node outside the `n` closest, which accepts only
//! if `size / free <= t_div` ([`PastRequest::StoreDiverted`]). The diverting node keeps
//! a pointer, and the `(n+1)`-th closest node keeps a backup pointer, so a lookup that
//! reaches either finds the diverted holder.
//!
//! # Repair (see `docs/repair.md` and [`maintenance`])
//! A repair store ([`PastRequest::RepairStore`]) has no owner's grant behind it: it
//! carries a valid file certificate of one of the files that reference the key, and the
//! holder refuses it for a file it knows was reclaimed, and when it already holds
//! another index of the key (one index per node).

pub mod admission;
pub mod answer;
pub mod authority;
pub mod divert;
pub mod insert;
pub mod lookup;
pub mod maintenance;
pub mod operation;
pub mod reclaim;
pub mod records;
pub mod survey;
#[cfg(test)]
mod testing;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use std::sync::Mutex;

use cairn_core::crypto::{
    FileCertificate, KeyPair, ReclaimCertificate, RootRecord, Signed, StoreReceipt, UploadGrant,
};
use cairn_core::id::{FileId, FragmentHash, Id, NodeId, OwnerKey, PlacementKey, VolumeKey};
use cairn_store::{Charge, ChargeCursor, NodeStore, StoreError};

use admission::UploadVerdict;

/// PAST's thresholds and the number of certificate replicas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PastConfig {
    /// A node accepts a fragment as one of the `n` closest if `size / free <= t_pri`.
    /// PAST's default 0.1: a node keeps room for fragments whose owners have no choice.
    pub t_pri: f64,
    /// A node accepts a diverted fragment only if `size / free <= t_div` (0.05 in PAST:
    /// stricter, so that diversion does not fill the nodes that still have room).
    pub t_div: f64,
    /// How many of the nodes closest to [`certificate_key`] keep a file's certificate
    /// (and how many of those closest to [`root_key`] keep a volume's root record).
    pub certificate_replicas: usize,
    /// The longest grant lifetime a node accepts (seconds); longer ones are refused so
    /// that a leaked grant stops working soon.
    pub max_grant_lifetime: u64,
    /// The most bytes one owner may have charged on this node (`None`: no limit, the
    /// default; see `docs/SECURITY.md` for why). Repair stores are counted but never
    /// refused by it: the data was admitted when it was put, and refusing its repair
    /// would only lose it.
    pub owner_quota: Option<u64>,
    /// Seconds after its grant expires that a fragment of an upload with no certificate
    /// is kept ([`admission::DEFAULT_UNCERTIFIED_GRACE`]).
    pub uncertified_grace: u64,
}

impl Default for PastConfig {
    fn default() -> PastConfig {
        PastConfig {
            t_pri: 0.1,
            t_div: 0.05,
            certificate_replicas: 4,
            max_grant_lifetime: 7 * 24 * 3600,
            owner_quota: None,
            uncertified_grace: admission::DEFAULT_UNCERTIFIED_GRACE,
        }
    }
}

/// A node and the address it can be reached at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddress {
    /// The node's id (proven by the transport's handshake when it is contacted).
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// One fragment offered for storage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRequest {
    /// The owner's [`UploadGrant`], in [`Signed::to_bytes`] form.
    pub grant: Vec<u8>,
    /// The block's placement key.
    pub key: PlacementKey,
    /// The fragment's index in its block.
    pub index: u16,
    /// `fragment_hash(index, bytes)`, checked by the receiver.
    pub hash: FragmentHash,
    /// The fragment.
    #[serde(with = "cairn_core::codec::bytes")]
    pub bytes: Vec<u8>,
    /// `n`, the block's fragment count: a full node diverts outside the `n` closest.
    pub replicas: u16,
}

/// What one node asks another, directly (not routed). Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PastRequest {
    /// Store a fragment as one of the `n` closest nodes to its key.
    Store(StoreRequest),
    /// Store a fragment that a full node diverts to you (stricter threshold `t_div`).
    StoreDiverted(StoreRequest),
    /// Send fragment `index` of the block at `key` (or a pointer to whoever has it).
    Fetch {
        /// The block's placement key.
        key: PlacementKey,
        /// The fragment wanted.
        index: u16,
    },
    /// List what you hold under `key`: fragments, pointers, referencing files.
    Holdings {
        /// The placement key.
        key: PlacementKey,
    },
    /// Keep a backup pointer: fragment `index` of `key` was diverted to `holder`.
    PutPointer {
        /// The placement key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// Who holds it.
        holder: NodeAddress,
    },
    /// Keep this file certificate ([`Signed::to_bytes`] form).
    PutCertificate {
        /// The signed certificate.
        certificate: Vec<u8>,
    },
    /// Send the certificate of `file`, if you keep it.
    GetCertificate {
        /// The file.
        file: FileId,
    },
    /// Free what `file` stored under `keys`, and forget its certificate.
    Reclaim {
        /// The owner's [`ReclaimCertificate`], signed.
        reclaim: Vec<u8>,
        /// The file's certificate, signed: proves who the owner is.
        certificate: Vec<u8>,
        /// The placement keys of the file's blocks that this node may hold.
        keys: Vec<PlacementKey>,
    },
    /// Store a fragment regenerated or handed off by maintenance (no grant: a file
    /// certificate of a referencing file authorises it).
    RepairStore(RepairRequest),
    /// Push your copy of fragment `index` of `key` to `to` (under `authority`), and
    /// delete it once `to` has signed a receipt for it.
    Handoff {
        /// The placement key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// The responsible node that should hold it.
        to: NodeAddress,
        /// The certificate and references a repair store carries.
        authority: RepairAuthority,
    },
    /// Drop your copy of fragment `index` of `key`: `kept_by` holds it (check first).
    Release {
        /// The placement key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// The responsible node holding the same fragment.
        kept_by: NodeAddress,
        /// A referencing file's certificate: says how many nodes are responsible.
        authority: RepairAuthority,
    },
    /// Drop your pointer for fragment `index` of `key` if its holder no longer has it.
    DropPointer {
        /// The placement key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
    },
    /// What you know of `file`: its certificate, or its tombstone.
    FileStatus {
        /// The file.
        file: FileId,
    },
    /// `file` was reclaimed (the owner's signed [`ReclaimCertificate`]) while you were
    /// away: forget its references under `keys`, its certificate, and the fragments no
    /// other file references.
    Forget {
        /// The owner's reclaim certificate, signed.
        reclaim: Vec<u8>,
        /// The keys to forget the file's references under.
        keys: Vec<PlacementKey>,
    },
    /// "You coordinate these keys; something changed under each (a leaf-set change,
    /// a fragment the scrub dropped): look."
    Reconcile {
        /// The sender (not trusted for anything).
        from: NodeId,
        /// The keys.
        keys: Vec<PlacementKey>,
    },
    /// The slow pass's compact summary: `summary` digests the whole list of what the
    /// sender holds among the keys you coordinate ([`maintenance::summary_digest`]).
    /// Without `list`, it asks whether you still know that summary
    /// ([`PastResponse::SummaryKnown`]); with it, `list` is that whole list (key and
    /// [`maintenance::holdings_digest`], possibly empty) and you look at what changed.
    Summary {
        /// The sender (only used to remember digests; not trusted for anything else).
        from: NodeId,
        /// The digest of the list.
        summary: u64,
        /// The list, when the summary is not known.
        list: Option<Vec<(PlacementKey, u64)>>,
    },
    /// Keep this signed [`RootRecord`] ([`Signed::to_bytes`] form) if its sequence is
    /// higher than the one you hold ([`Holder::put_root`]).
    PutRoot {
        /// The signed root record.
        record: Vec<u8>,
    },
    /// Send the root record of `volume`, if you keep one.
    GetRoot {
        /// The volume.
        volume: VolumeKey,
    },
    /// Prove that you hold fragment `index` of `key`: answer with
    /// [`authority::possession_proof`] over `nonce` and the fragment's bytes.
    Prove {
        /// The placement key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// The asker's fresh random nonce.
        nonce: [u8; 32],
    },
}

/// What authorises a repair store: a referencing file's certificate and the key's
/// references (recorded by the receiver).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairAuthority {
    /// A signed [`FileCertificate`] of one of `references`.
    pub certificate: Vec<u8>,
    /// The files that reference the key.
    pub references: Vec<FileId>,
}

/// One fragment stored by maintenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairRequest {
    /// Why the receiver may store it.
    pub authority: RepairAuthority,
    /// The block's placement key.
    pub key: PlacementKey,
    /// The fragment's index.
    pub index: u16,
    /// `fragment_hash(index, bytes)`, checked by the receiver.
    pub hash: FragmentHash,
    /// The fragment.
    #[serde(with = "cairn_core::codec::bytes")]
    pub bytes: Vec<u8>,
}

/// Why a node refused a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The upload grant is malformed, forged, expired or too long-lived.
    #[error("upload grant refused: {0}")]
    Grant(String),
    /// The certificate (or reclaim) is malformed, forged, or not the owner's.
    #[error("certificate refused: {0}")]
    Certificate(String),
    /// The fragment's bytes do not hash to the hash offered.
    #[error("the fragment's bytes do not match its hash")]
    HashMismatch,
    /// Another fragment is already stored under this key and index.
    #[error("another fragment is stored under this key and index")]
    Conflict,
    /// Too little room for a primary replica (`size / free > t_pri`): divert it.
    #[error("no room: {size} bytes offered, {free} free (over the primary threshold)")]
    NoRoom {
        /// Bytes offered.
        size: u64,
        /// Bytes free.
        free: u64,
    },
    /// Too little room even for a diverted replica, or no diversion target took it.
    #[error("full: {size} bytes offered, {free} free")]
    Full {
        /// Bytes offered.
        size: u64,
        /// Bytes free.
        free: u64,
    },
    /// The node's disk is full (whatever its configured capacity says).
    #[error("the node's disk is full")]
    DiskFull,
    /// The file was reclaimed; its id is not stored again.
    #[error("file {0} was reclaimed")]
    Reclaimed(FileId),
    /// The local store failed.
    #[error("the node's store failed: {0}")]
    Store(String),
    /// A root record whose signature does not check out, or that is not signed by its
    /// volume's key.
    #[error("root record refused: {0}")]
    RootRecord(String),
    /// This node holds a root record of the volume with sequence `held_sequence`, which
    /// is higher than the one offered, or equal with other bytes: the offered record is
    /// stale or a replay (a lost update, for its writer).
    #[error("this node holds sequence {held_sequence} of the volume; the record offered is stale")]
    StaleRoot {
        /// The sequence held here.
        held_sequence: u64,
    },
    /// This node holds `record`, a signed root record of the volume whose sequence is
    /// higher than the one offered, or equal with other bytes: the offered record is
    /// stale or a replay. Unlike [`Refusal::StaleRoot`] it carries its proof, which the
    /// publisher verifies before it believes the conflict.
    #[error("this node holds a newer (or rival) root record of the volume")]
    HeldRoot {
        /// The record held, [`Signed::to_bytes`] form.
        record: Vec<u8>,
    },
    /// The asker has no authority for this request in this node's own view of the
    /// ring ([`authority`]): not the key's coordinator, a target that is not
    /// responsible, a store at a key this node is not responsible for.
    #[error("not authorised: {0}")]
    NotAuthorised(String),
    /// The owner has `used` bytes charged on this node; `size` more would pass the
    /// per-owner quota this node's operator set ([`PastConfig::owner_quota`]).
    #[error(
        "owner {owner} is over its quota on this node: {used} bytes stored, {size} offered, quota {quota}"
    )]
    OverQuota {
        /// The owner (the grant's signer).
        owner: OwnerKey,
        /// Bytes charged to it here.
        used: u64,
        /// Bytes offered.
        size: u64,
        /// The quota.
        quota: u64,
    },
}

impl Refusal {
    /// The sequence a [`Refusal::HeldRoot`]'s record names (decoded, not verified),
    /// or a [`Refusal::StaleRoot`]'s: for messages and the API's 409.
    pub fn claimed_root_sequence(&self) -> Option<u64> {
        match self {
            Refusal::StaleRoot { held_sequence } => Some(*held_sequence),
            Refusal::HeldRoot { record } => Signed::<RootRecord>::from_bytes(record)
                .ok()
                .map(|r| r.body.sequence),
            _ => None,
        }
    }
}

/// What a node answers. Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PastResponse {
    /// Stored; the signed [`StoreReceipt`] of the node that holds it, and where it
    /// went if it was diverted.
    Stored {
        /// The receipt, [`Signed::to_bytes`] form.
        receipt: Vec<u8>,
        /// The node the fragment was diverted to, if it was.
        diverted_to: Option<NodeAddress>,
    },
    /// The request was refused.
    Refused(Refusal),
    /// The fragment's bytes (checked against the store's hash as they were read).
    Fragment {
        /// The bytes.
        #[serde(with = "cairn_core::codec::bytes")]
        bytes: Vec<u8>,
    },
    /// Not here; the fragment was diverted to `holder`.
    Pointer {
        /// Who holds it.
        holder: NodeAddress,
    },
    /// Not here and no pointer.
    NotFound,
    /// Here, but it no longer matches its hash (the holder will not serve it).
    Corrupt,
    /// What the node holds under a key.
    Holdings {
        /// Fragments: index and hash.
        fragments: Vec<(u16, FragmentHash)>,
        /// Pointers to diverted fragments: index and holder.
        pointers: Vec<(u16, NodeAddress)>,
        /// Files that reference the block.
        references: Vec<FileId>,
    },
    /// A certificate, if kept.
    Certificate {
        /// [`Signed::to_bytes`] form.
        certificate: Option<Vec<u8>>,
    },
    /// Done (pointers and certificates).
    Done,
    /// A reclaim was carried out.
    Reclaimed {
        /// Fragments deleted.
        fragments: u64,
        /// Bytes freed.
        bytes: u64,
    },
    /// What a node knows of a file.
    FileStatus {
        /// Its certificate, if kept ([`Signed::to_bytes`] form).
        certificate: Option<Vec<u8>>,
        /// Its reclaim certificate, if the file was reclaimed.
        tombstone: Option<Vec<u8>>,
    },
    /// Whether the coordinator still knows a holder's summary
    /// ([`PastRequest::Summary`]; if not, the holder sends its list).
    SummaryKnown {
        /// Known and unchanged.
        known: bool,
    },
    /// The root record of a volume, if kept ([`Signed::to_bytes`] form, as stored: the
    /// asker verifies it).
    Root {
        /// The signed record.
        record: Option<Vec<u8>>,
    },
    /// The answer to [`PastRequest::Prove`].
    Possession {
        /// [`authority::possession_proof`] of the fragment held.
        proof: Id,
    },
}

/// What is routed to a placement key (`cairn_overlay::Routed::Lookup`'s payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PastRouted {
    /// "Who are the `count` live nodes closest to this key?" The node responsible
    /// answers the origin directly with that list, closest first.
    Locate {
        /// How many.
        count: u16,
    },
}

/// The `count` ids closest to `key` among `candidates`, closest first (ties cannot
/// happen between distinct ids; duplicates are dropped).
pub fn closest(
    key: &Id,
    candidates: impl IntoIterator<Item = NodeId>,
    count: usize,
) -> Vec<NodeId> {
    let mut ids: Vec<NodeId> = candidates.into_iter().collect();
    ids.sort_by(|a, b| key.cmp_closeness(&a.0, &b.0));
    ids.dedup();
    ids.truncate(count);
    ids
}

/// The `count` nodes closest to `key` among `me` and its leaf set (`left` and `right`,
/// each closest to `me` first, at most `half` each), when the leaf set is sure to hold
/// them: Pastry's first routing step, which would deliver a locate to a leaf-set member
/// that answers from the same knowledge. Sure when the leaf set is not full (the whole
/// network is in it), or when none of the `count` closest is at an edge of the leaf set
/// (any closer node would lie inside its range, hence in it). `None`: route instead.
pub fn closest_in_leaf_set(
    key: &Id,
    me: NodeId,
    left: &[NodeId],
    right: &[NodeId],
    half: usize,
    count: usize,
) -> Option<Vec<NodeId>> {
    let whole_ring = left.len() < half || right.len() < half;
    let ranked = closest(key, left.iter().chain(right).copied().chain([me]), count);
    let edges = [left.last(), right.last()];
    if !whole_ring && ranked.iter().any(|id| edges.contains(&Some(id))) {
        return None;
    }
    Some(ranked)
}

/// Where a file's certificate lives: the nodes closest to this key.
pub fn certificate_key(file: &FileId) -> PlacementKey {
    PlacementKey(Id::hash_parts(&[b"cairn/certificate", file.0.as_bytes()]))
}

/// Where a volume's root record lives: the nodes closest to
/// `SHA-256("root" ‖ volume key bytes)`.
pub fn root_key(volume: &VolumeKey) -> PlacementKey {
    PlacementKey(Id::hash_parts(&[b"root", volume.0.as_bytes()]))
}

/// Whether `size` bytes fit under threshold `t` with `free` bytes free (`size/free <= t`).
pub fn admits(size: u64, free: u64, t: f64) -> bool {
    free > 0 && size <= free && (size as f64) <= t * free as f64
}

/// Unix seconds, for receipts: the caller passes the time in.
pub type UnixSeconds = u64;

/// Answers PAST requests from the local store. Holds no network state: pointers come
/// back as node ids and the daemon adds addresses.
pub struct Holder<S> {
    store: S,
    identity: Arc<KeyPair>,
    config: PastConfig,
    /// Serialises root-record updates: the compare (sequence held) and the swap must
    /// not interleave with another update, or two records of one sequence could both
    /// be accepted.
    root_updates: Mutex<()>,
}

impl<S: NodeStore> Holder<S> {
    /// A holder over `store`, signing receipts with `identity` (the node's key).
    pub fn new(store: S, identity: Arc<KeyPair>, config: PastConfig) -> Holder<S> {
        Holder {
            store,
            identity,
            config,
            root_updates: Mutex::new(()),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.identity.public_key().node_id()
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The thresholds.
    pub fn config(&self) -> &PastConfig {
        &self.config
    }

    /// Checks `request`'s grant and bytes and stores the fragment; returns the signed
    /// receipt bytes. `diverted` selects the threshold (`t_div` instead of `t_pri`).
    /// A fragment already stored is answered with a fresh receipt (puts are retried).
    pub fn store_fragment(
        &self,
        request: &StoreRequest,
        diverted: bool,
        now: UnixSeconds,
    ) -> Result<Vec<u8>, Refusal> {
        let grant = self.check_grant(&request.grant, now)?;
        check_offered_bytes(request.index, &request.hash, &request.bytes)?;
        let file = grant.file_id;
        if self.store.is_reclaimed(&file).map_err(store_refusal)? {
            return Err(Refusal::Reclaimed(file));
        }
        let size = request.bytes.len() as u64;
        let offered = admission::upload_charge(&grant, size);
        let held = self.held_charge(&request.key, request.index, &offered.owner)?;
        if held.is_none() {
            // A retried put of a fragment already charged to this owner is free.
            let used = self.store.owner_usage(&offered.owner);
            admission::check_quota(offered.owner, used, size, self.config.owner_quota)?;
        }
        let already = self
            .store
            .fragment_info(&request.key, request.index)
            .map_err(store_refusal)?;
        match already {
            Some(info) if info.hash == request.hash => {}
            Some(_) => return Err(Refusal::Conflict),
            None => {
                let free = self.store.free();
                let threshold = if diverted {
                    self.config.t_div
                } else {
                    self.config.t_pri
                };
                if !admits(size, free, threshold) {
                    return Err(if diverted {
                        Refusal::Full { size, free }
                    } else {
                        Refusal::NoRoom { size, free }
                    });
                }
            }
        }
        self.put_charged(
            &request.key,
            request.index,
            (&request.hash, &request.bytes),
            already.is_none(),
            held,
            offered,
        )?;
        self.store
            .add_reference(&request.key, &file)
            .map_err(store_refusal)?;
        self.receipt(file, request.key, request.index, request.hash, now)
    }

    /// `owner`'s charge on fragment `index` of `key`, if any.
    fn held_charge(
        &self,
        key: &PlacementKey,
        index: u16,
        owner: &OwnerKey,
    ) -> Result<Option<Charge>, Refusal> {
        Ok(self
            .store
            .charges(key, index)
            .map_err(store_refusal)?
            .into_iter()
            .find(|charge| charge.owner == *owner))
    }

    /// Charges the fragment (the merge of `held` and `offered`), then stores its bytes
    /// if `new`. The charge comes first so that a crash never leaves bytes charged to
    /// nobody; a refused put gives the charge back as it was.
    fn put_charged(
        &self,
        key: &PlacementKey,
        index: u16,
        (hash, bytes): (&FragmentHash, &[u8]),
        new: bool,
        held: Option<Charge>,
        offered: Charge,
    ) -> Result<(), Refusal> {
        let charge = admission::merge_charge(held, offered);
        if held != Some(charge) {
            self.store
                .put_charge(key, index, &charge)
                .map_err(store_refusal)?;
        }
        if !new {
            return Ok(());
        }
        let Err(error) = self.store.put_fragment(key, index, hash, bytes) else {
            return Ok(());
        };
        let restored = match held {
            Some(held) => self.store.put_charge(key, index, &held),
            None => self
                .store
                .delete_charge(key, index, &charge.owner)
                .map(drop),
        };
        if let Err(e) = restored {
            tracing::warn!(%key, index, "a refused put's charge was not given back: {e}");
        }
        Err(store_refusal(error))
    }

    /// This node's signed receipt for fragment `index` (hashing to `hash`) of `key`,
    /// stored for `file`.
    fn receipt(
        &self,
        file: FileId,
        key: PlacementKey,
        index: u16,
        hash: FragmentHash,
        now: UnixSeconds,
    ) -> Result<Vec<u8>, Refusal> {
        let receipt = StoreReceipt {
            node: self.identity.public_key().node_id(),
            file_id: file,
            placement_key: key,
            index,
            fragment_hash: hash,
            stored_at: now,
        };
        Signed::sign(&self.identity, receipt)
            .and_then(|signed| signed.to_bytes())
            .map_err(|e| Refusal::Store(format!("signing the receipt failed: {e}")))
    }

    fn check_grant(&self, bytes: &[u8], now: UnixSeconds) -> Result<UploadGrant, Refusal> {
        let refuse = |e: String| Refusal::Grant(e);
        let signed = Signed::<UploadGrant>::from_bytes(bytes).map_err(|e| refuse(e.to_string()))?;
        let grant = signed.verify().map_err(|e| refuse(e.to_string()))?;
        grant.check_time(now).map_err(|e| refuse(e.to_string()))?;
        if grant.expires_at.saturating_sub(grant.issued_at) > self.config.max_grant_lifetime {
            return Err(refuse(format!(
                "it lives {} s, longer than the {} s this node accepts",
                grant.expires_at.saturating_sub(grant.issued_at),
                self.config.max_grant_lifetime
            )));
        }
        Ok(grant.clone())
    }

    /// Records that fragment `index` of `key` was diverted to `holder`.
    pub fn put_pointer(&self, key: &PlacementKey, index: u16, holder: &NodeId) -> PastResponse {
        match self.store.put_pointer(key, index, holder) {
            Ok(()) => PastResponse::Done,
            Err(e) => PastResponse::Refused(store_refusal(e)),
        }
    }

    /// Fragment `index` of `key`: its bytes, or the node it was diverted to
    /// (`Err(holder)`), or nothing. The store re-hashes every read, so damaged bytes
    /// are answered [`PastResponse::Corrupt`], never served.
    pub fn fetch(&self, key: &PlacementKey, index: u16) -> Result<PastResponse, NodeId> {
        match self.store.get_fragment(key, index) {
            Ok(Some(bytes)) => Ok(PastResponse::Fragment { bytes }),
            Ok(None) => match self.store.get_pointer(key, index) {
                Ok(Some(holder)) => Err(holder),
                Ok(None) => Ok(PastResponse::NotFound),
                Err(e) => Ok(PastResponse::Refused(store_refusal(e))),
            },
            Err(StoreError::Corrupt { .. }) => Ok(PastResponse::Corrupt),
            Err(e) => Ok(PastResponse::Refused(store_refusal(e))),
        }
    }

    /// What is held under `key`: fragments, pointers (as ids), referencing files.
    #[allow(clippy::type_complexity)]
    pub fn holdings(
        &self,
        key: &PlacementKey,
    ) -> Result<(Vec<(u16, FragmentHash)>, Vec<(u16, NodeId)>, Vec<FileId>), Refusal> {
        let fragments = self
            .store
            .fragments_under(key)
            .map_err(store_refusal)?
            .into_iter()
            .map(|info| (info.index, info.hash))
            .collect();
        let pointers = self.store.pointers_under(key).map_err(store_refusal)?;
        let references = self.store.references(key).map_err(store_refusal)?;
        Ok((fragments, pointers, references))
    }

    /// Verifies and keeps a file certificate.
    pub fn put_certificate(&self, bytes: &[u8], now: UnixSeconds) -> Result<(), Refusal> {
        let body = check_certificate(bytes, now)?;
        if self
            .store
            .is_reclaimed(&body.file_id)
            .map_err(store_refusal)?
        {
            return Err(Refusal::Reclaimed(body.file_id));
        }
        self.store
            .put_certificate(&body.file_id, bytes)
            .map_err(store_refusal)
    }

    /// The certificate of `file`, if kept.
    pub fn get_certificate(&self, file: &FileId) -> Result<Option<Vec<u8>>, Refusal> {
        self.store.get_certificate(file).map_err(store_refusal)
    }

    /// Deletes every fragment and pointer under `key` (a block no live file references
    /// any more), counting what was freed and whom diverted copies went to.
    fn free_block(&self, key: &PlacementKey, done: &mut Reclaimed) -> Result<(), Refusal> {
        for info in self.store.fragments_under(key).map_err(store_refusal)? {
            if let Some(freed) = self
                .store
                .delete_fragment(key, info.index)
                .map_err(store_refusal)?
            {
                done.fragments += 1;
                done.bytes += freed;
            }
        }
        for (index, holder) in self.store.pointers_under(key).map_err(store_refusal)? {
            self.store
                .delete_pointer(key, index)
                .map_err(store_refusal)?;
            done.diverted_to.push((*key, holder));
        }
        Ok(())
    }

    /// Carries out an owner's reclaim: drops `file`'s reference from each key, deletes
    /// the fragments (and pointers) of blocks no other file references, forgets the
    /// certificate and remembers the file id as reclaimed. Returns fragments and
    /// bytes freed, and the holders of diverted copies whose pointers were dropped (the
    /// caller passes the reclaim on to them).
    pub fn reclaim(
        &self,
        reclaim: &[u8],
        certificate: &[u8],
        keys: &[PlacementKey],
        now: UnixSeconds,
    ) -> Result<Reclaimed, Refusal> {
        let certified = check_certificate(certificate, now)?;
        let order = check_reclaim(reclaim)?;
        reclaim::authorise_reclaim(&order, &certified)?;
        let file = certified.file_id;
        self.store
            .put_tombstone(&file, reclaim)
            .map_err(store_refusal)?;
        let mut done = Reclaimed::default();
        for key in keys {
            if !self
                .store
                .references(key)
                .map_err(store_refusal)?
                .contains(&file)
            {
                continue;
            }
            if self
                .store
                .remove_reference(key, &file)
                .map_err(store_refusal)?
                > 0
            {
                continue; // another live file uses this block
            }
            self.free_block(key, &mut done)?;
        }
        self.store
            .delete_certificate(&file)
            .map_err(store_refusal)?;
        Ok(done)
    }
}

impl<S: NodeStore> Holder<S> {
    /// Stores a fragment for maintenance: the certificate must check out and name one
    /// of the references, the file must not be reclaimed here, the index must fit the
    /// certificate's `n`, and this node must hold no other index of the key. Records
    /// the references (those not reclaimed here) and signs a receipt for the
    /// certificate's file.
    pub fn repair_fragment(
        &self,
        request: &RepairRequest,
        now: UnixSeconds,
    ) -> Result<Vec<u8>, Refusal> {
        let certified = check_certificate(&request.authority.certificate, now)?;
        check_offered_bytes(request.index, &request.hash, &request.bytes)?;
        let file = certified.file_id;
        if !request.authority.references.contains(&file) {
            return Err(Refusal::Certificate(format!(
                "file {file} is not among the key's references"
            )));
        }
        if self.store.is_reclaimed(&file).map_err(store_refusal)? {
            return Err(Refusal::Reclaimed(file));
        }
        if u32::from(request.index) >= u32::from(certified.k) + u32::from(certified.m) {
            return Err(Refusal::Certificate(format!(
                "index {} is beyond the certificate's n = {}",
                request.index,
                u32::from(certified.k) + u32::from(certified.m)
            )));
        }
        let held = self
            .store
            .fragments_under(&request.key)
            .map_err(store_refusal)?;
        let size = request.bytes.len() as u64;
        let new = match held.iter().find(|info| info.index == request.index) {
            Some(info) if info.hash == request.hash => false,
            Some(_) => return Err(Refusal::Conflict),
            None if !held.is_empty() => return Err(Refusal::Conflict),
            None => {
                let free = self.store.free();
                if !admits(size, free, self.config.t_pri) {
                    return Err(Refusal::NoRoom { size, free });
                }
                true
            }
        };
        let offered = admission::repair_charge(&certified, size);
        let held_charge = self.held_charge(&request.key, request.index, &offered.owner)?;
        self.put_charged(
            &request.key,
            request.index,
            (&request.hash, &request.bytes),
            new,
            held_charge,
            offered,
        )?;
        for reference in &request.authority.references {
            match self.store.add_reference(&request.key, reference) {
                Ok(()) | Err(StoreError::Reclaimed { .. }) => {}
                Err(e) => return Err(store_refusal(e)),
            }
        }
        self.receipt(file, request.key, request.index, request.hash, now)
    }

    /// Carries out the collection pass's verdict on the charge at `at`
    /// ([`admission::uncertified_verdict`]): marks it certified, or removes it and,
    /// when it was the fragment's last charge, deletes the fragment (and the file's
    /// reference, once nothing is left under the key). A charge whose fragment is gone
    /// is removed whatever the verdict.
    pub fn settle_upload(
        &self,
        at: &ChargeCursor,
        verdict: UploadVerdict,
    ) -> Result<Settled, Refusal> {
        let (key, index) = (&at.key, at.index);
        let Some(charge) = self.held_charge(key, index, &at.owner)? else {
            return Ok(Settled::Kept);
        };
        let held = self
            .store
            .fragment_info(key, index)
            .map_err(store_refusal)?;
        let verdict = if held.is_none() {
            UploadVerdict::Collect
        } else {
            verdict
        };
        match verdict {
            UploadVerdict::Keep => Ok(Settled::Kept),
            UploadVerdict::Certified => {
                let certified = Charge {
                    uncertified_until: None,
                    ..charge
                };
                self.store
                    .put_charge(key, index, &certified)
                    .map_err(store_refusal)?;
                Ok(Settled::Certified)
            }
            UploadVerdict::Collect => {
                self.store
                    .delete_charge(key, index, &at.owner)
                    .map_err(store_refusal)?;
                if held.is_none()
                    || !self
                        .store
                        .charges(key, index)
                        .map_err(store_refusal)?
                        .is_empty()
                {
                    return Ok(Settled::ChargeCollected);
                }
                let bytes = self
                    .store
                    .delete_fragment(key, index)
                    .map_err(store_refusal)?
                    .unwrap_or(0);
                if self
                    .store
                    .fragments_under(key)
                    .map_err(store_refusal)?
                    .is_empty()
                {
                    self.store
                        .remove_reference(key, &charge.file)
                        .map_err(store_refusal)?;
                }
                Ok(Settled::FragmentCollected { bytes })
            }
        }
    }

    /// What this node knows of `file`: its certificate and its tombstone.
    pub fn file_status(&self, file: &FileId) -> Result<PastResponse, Refusal> {
        Ok(PastResponse::FileStatus {
            certificate: self.store.get_certificate(file).map_err(store_refusal)?,
            tombstone: self.store.get_tombstone(file).map_err(store_refusal)?,
        })
    }

    /// Carries out a reclaim this node missed: checks the reclaim (its signature, and
    /// that it binds the file id to its signer, so no certificate is needed), remembers
    /// the file as reclaimed, forgets its certificate and its references under `keys`,
    /// and deletes the fragments and pointers of keys no other file references.
    pub fn forget(&self, reclaim: &[u8], keys: &[PlacementKey]) -> Result<Reclaimed, Refusal> {
        let file = check_reclaim(reclaim)?.file_id;
        self.store
            .put_tombstone(&file, reclaim)
            .map_err(store_refusal)?;
        let mut done = Reclaimed::default();
        for key in keys {
            let references = self.store.references(key).map_err(store_refusal)?;
            let left = if references.contains(&file) {
                self.store
                    .remove_reference(key, &file)
                    .map_err(store_refusal)?
            } else {
                references.len()
            };
            if left > 0 {
                continue;
            }
            self.free_block(key, &mut done)?;
        }
        self.store
            .delete_certificate(&file)
            .map_err(store_refusal)?;
        Ok(done)
    }
}

/// What [`Holder::settle_upload`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Nothing changed.
    Kept,
    /// The charge is now certified.
    Certified,
    /// The charge was removed; the fragment stays (other owners are charged for it,
    /// or it was already gone).
    ChargeCollected,
    /// The charge was the fragment's last, and the fragment was deleted.
    FragmentCollected {
        /// Bytes freed.
        bytes: u64,
    },
}

/// What [`Holder::put_root`] did with an acceptable record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootStored {
    /// The record was newer than anything held and is now kept.
    Stored,
    /// The very same record was already kept (a retried publish).
    AlreadyHeld,
}

impl<S: NodeStore> Holder<S> {
    /// Verifies a signed root record (signature by the volume's key) and keeps it if
    /// its sequence is higher than the one held. The same record again is
    /// [`RootStored::AlreadyHeld`]; a lower sequence, or the same sequence with other
    /// bytes, is refused with [`Refusal::HeldRoot`] (the record held). An unverified record is never
    /// stored. A held record that no longer decodes or verifies (damaged on disk)
    /// counts as nothing held.
    pub fn put_root(&self, bytes: &[u8]) -> Result<RootStored, Refusal> {
        let offered = check_root(bytes)?;
        let volume = offered.body.volume;
        let _update = self
            .root_updates
            .lock()
            .map_err(|_| Refusal::Store("the root-update lock is poisoned".into()))?;
        let held = self.store.get_root(&volume).map_err(store_refusal)?;
        if let Some(held_bytes) = held {
            match check_root(&held_bytes) {
                Ok(held) if held.body.sequence > offered.body.sequence => {
                    return Err(Refusal::HeldRoot { record: held_bytes });
                }
                Ok(held) if held.body.sequence == offered.body.sequence => {
                    return if held_bytes == bytes {
                        Ok(RootStored::AlreadyHeld)
                    } else {
                        Err(Refusal::HeldRoot { record: held_bytes })
                    };
                }
                Ok(_) => {}
                Err(refusal) => {
                    tracing::warn!(%volume, "the root record held here does not verify ({refusal}); replacing it");
                }
            }
        }
        self.store.put_root(&volume, bytes).map_err(store_refusal)?;
        Ok(RootStored::Stored)
    }

    /// The root record of `volume` as stored here (the asker verifies it).
    pub fn get_root(&self, volume: &VolumeKey) -> Result<Option<Vec<u8>>, Refusal> {
        self.store.get_root(volume).map_err(store_refusal)
    }
}

/// Parses and verifies a signed root record: the signature must be the volume key's.
pub fn check_root(bytes: &[u8]) -> Result<Signed<RootRecord>, Refusal> {
    let refuse = |e: String| Refusal::RootRecord(e);
    let signed = Signed::<RootRecord>::from_bytes(bytes).map_err(|e| refuse(e.to_string()))?;
    signed.verify().map_err(|e| refuse(e.to_string()))?;
    Ok(signed)
}

/// Parses and verifies a signed reclaim certificate (signature by the owner it names).
pub fn check_reclaim(bytes: &[u8]) -> Result<ReclaimCertificate, Refusal> {
    let signed = Signed::<ReclaimCertificate>::from_bytes(bytes)
        .map_err(|e| Refusal::Certificate(e.to_string()))?;
    let order = signed
        .verify()
        .map_err(|e| Refusal::Certificate(e.to_string()))?;
    Ok(order.clone())
}

/// What [`Holder::reclaim`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Fragments deleted.
    pub fragments: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Diverted copies whose pointers were dropped: the key and the holder, to which
    /// the reclaim is passed on.
    pub diverted_to: Vec<(PlacementKey, NodeId)>,
}

/// Parses and verifies a signed file certificate (signature, owner, file id, expiry).
pub fn check_certificate(bytes: &[u8], now: UnixSeconds) -> Result<FileCertificate, Refusal> {
    check_signed_certificate(bytes, now).map(|signed| signed.body)
}

/// [`check_certificate`], keeping the signature (what a reader hands on).
pub fn check_signed_certificate(
    bytes: &[u8],
    now: UnixSeconds,
) -> Result<Signed<FileCertificate>, Refusal> {
    let refuse = |e: String| Refusal::Certificate(e);
    let signed = Signed::<FileCertificate>::from_bytes(bytes).map_err(|e| refuse(e.to_string()))?;
    let body = signed.verify().map_err(|e| refuse(e.to_string()))?;
    body.check_time(now).map_err(|e| refuse(e.to_string()))?;
    Ok(signed)
}

/// Refuses bytes that do not hash to the hash offered with them. Checked before the
/// store is looked at: a holder that already keeps a fragment of that hash would
/// otherwise answer with a receipt (and record a reference) for bytes it never saw,
/// which is how a stranger could buy a receipt for someone else's fragment by naming
/// its hash.
fn check_offered_bytes(index: u16, hash: &FragmentHash, bytes: &[u8]) -> Result<(), Refusal> {
    if cairn_core::erasure::fragment_hash(index, bytes) == *hash {
        Ok(())
    } else {
        Err(Refusal::HashMismatch)
    }
}

fn store_refusal(error: StoreError) -> Refusal {
    match error {
        StoreError::HashMismatch { .. } => Refusal::HashMismatch,
        StoreError::Conflict { .. } => Refusal::Conflict,
        StoreError::Full { needed, free, .. } => Refusal::Full { size: needed, free },
        StoreError::DiskFull { .. } => Refusal::DiskFull,
        other => Refusal::Store(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use cairn_core::erasure::fragment_hash;
    use cairn_store::MemoryStore;

    const NOW: u64 = 1_800_000_000;
    /// What a put adds to `used` besides the fragment: its reference and its charge.
    const PUT_METADATA: u64 = 65 + 115;

    fn key_pair(seed: u8) -> KeyPair {
        KeyPair::from_secret_bytes(&[seed; 32])
    }

    fn holder(capacity: u64) -> Holder<MemoryStore> {
        Holder::new(
            MemoryStore::new(capacity),
            Arc::new(key_pair(200)),
            PastConfig::default(),
        )
    }

    fn grant(owner: &KeyPair, name: &[u8], lifetime: u64) -> Vec<u8> {
        let body = UploadGrant::new(name, 0, owner.public_key(), NOW - 1, lifetime);
        Signed::sign(owner, body).unwrap().to_bytes().unwrap()
    }

    fn request(grant: Vec<u8>, key: PlacementKey, index: u16, len: usize) -> StoreRequest {
        let bytes = vec![index as u8 ^ 0x5a; len];
        StoreRequest {
            grant,
            key,
            index,
            hash: fragment_hash(index, &bytes),
            bytes,
            replicas: 6,
        }
    }

    fn key(n: u8) -> PlacementKey {
        PlacementKey(Id::hash(&[n]))
    }

    #[test]
    fn thresholds_follow_size_over_free() {
        assert!(admits(10, 100, 0.1));
        assert!(!admits(11, 100, 0.1));
        assert!(!admits(1, 0, 0.1), "nothing fits in no room");
        assert!(!admits(200, 100, 10.0), "never more than is free");
    }

    #[test]
    fn closest_orders_by_ring_distance_and_drops_duplicates() {
        let ids: Vec<NodeId> = (0..20u8).map(|i| NodeId(Id::hash(&[i, 1]))).collect();
        let target = Id::hash(b"target");
        let mut doubled = ids.clone();
        doubled.extend(ids.iter().copied());
        let picked = closest(&target, doubled, 6);
        assert_eq!(picked.len(), 6);
        let mut all = ids.clone();
        all.sort_by_key(|id| target.distance(&id.0));
        assert_eq!(picked, all[..6].to_vec());
    }

    #[test]
    fn a_fragment_is_stored_only_under_a_valid_grant_and_gets_a_receipt() {
        let holder = holder(1 << 20);
        let owner = key_pair(1);
        let good = request(grant(&owner, b"f", 3600), key(1), 0, 1000);
        let receipt = holder.store_fragment(&good, false, NOW).unwrap();
        let receipt = Signed::<StoreReceipt>::from_bytes(&receipt).unwrap();
        let body = receipt.verify().unwrap();
        assert_eq!(body.node, key_pair(200).public_key().node_id());
        assert_eq!((body.placement_key, body.index), (key(1), 0));
        assert_eq!(body.fragment_hash, good.hash);
        // Stored again (a retried put): a fresh receipt, counted once.
        holder.store_fragment(&good, false, NOW).unwrap();
        assert_eq!(holder.store().used(), 1000 + PUT_METADATA);

        // Another key's signature on my grant; an expired grant; a grant for a week+.
        let mut forged = Signed::sign(
            &key_pair(9),
            UploadGrant::new(b"f", 0, owner.public_key(), NOW, 60),
        )
        .unwrap();
        forged.signer = owner.public_key();
        let cases = [
            forged.to_bytes().unwrap(),
            grant(&owner, b"f", 1),
            grant(&owner, b"f", 30 * 24 * 3600),
            vec![1, 2, 3],
        ];
        for bad in cases {
            let refused = holder.store_fragment(&request(bad, key(2), 0, 10), false, NOW);
            assert!(matches!(refused, Err(Refusal::Grant(_))), "{refused:?}");
        }
        // Bytes that are not what their hash says; another fragment at the same index.
        let mut wrong = request(grant(&owner, b"f", 3600), key(3), 1, 100);
        wrong.bytes[0] ^= 1;
        assert_eq!(
            holder.store_fragment(&wrong, false, NOW),
            Err(Refusal::HashMismatch)
        );
        let other = request(grant(&owner, b"f", 3600), key(1), 0, 999);
        assert_eq!(
            holder.store_fragment(&other, false, NOW),
            Err(Refusal::Conflict)
        );
        assert_eq!(
            holder.store().used(),
            1000 + PUT_METADATA,
            "no refusal stored anything"
        );
    }

    #[test]
    fn bytes_that_do_not_match_an_already_held_hash_get_no_receipt_and_no_reference() {
        let holder = holder(1 << 20);
        let owner = key_pair(1);
        let good = request(grant(&owner, b"f", 3600), key(1), 0, 1000);
        holder.store_fragment(&good, false, NOW).unwrap();
        // Another owner names the hash held, with junk bytes, under its own grant.
        let stranger = key_pair(2);
        let mut junk = request(grant(&stranger, b"g", 3600), key(1), 0, 1000);
        junk.bytes = vec![0; 1000];
        assert_eq!(
            holder.store_fragment(&junk, false, NOW),
            Err(Refusal::HashMismatch)
        );
        let stranger_file = FileId::derive(b"g", &stranger.public_key().0, 0);
        assert!(
            !holder
                .store()
                .references(&key(1))
                .unwrap()
                .contains(&stranger_file),
            "no reference for bytes never checked"
        );
        // The same through a repair store, under a valid certificate.
        let (file, certificate) = crate::testing::certificate(&owner, b"f", (4, 2));
        let repair = RepairRequest {
            authority: RepairAuthority {
                certificate,
                references: vec![file],
            },
            key: key(1),
            index: 0,
            hash: good.hash,
            bytes: vec![0; 1000],
        };
        assert_eq!(
            holder.repair_fragment(&repair, NOW),
            Err(Refusal::HashMismatch)
        );
        assert_eq!(holder.store().used(), 1000 + PUT_METADATA);
    }

    #[test]
    fn a_grant_issued_beyond_the_clock_skew_is_refused_and_stores_nothing() {
        let holder = holder(1 << 20);
        let owner = key_pair(1);
        let issued_in = |ahead: u64| {
            let body = UploadGrant::new(b"f", 0, owner.public_key(), NOW + ahead, 3600);
            Signed::sign(&owner, body).unwrap().to_bytes().unwrap()
        };
        let skew = cairn_core::crypto::GRANT_CLOCK_SKEW;
        let refused =
            holder.store_fragment(&request(issued_in(skew + 1), key(1), 0, 10), false, NOW);
        match refused {
            Err(Refusal::Grant(reason)) => assert!(reason.contains("issued at"), "{reason}"),
            other => panic!("expected a grant refusal, got {other:?}"),
        }
        assert_eq!(holder.store().used(), 0);
        // A clock behind the owner's by less than the skew still takes it.
        assert!(
            holder
                .store_fragment(&request(issued_in(skew), key(1), 0, 10), false, NOW)
                .is_ok()
        );
    }

    #[test]
    fn a_full_node_asks_for_diversion_and_refuses_diverted_fragments_sooner() {
        let holder = holder(100_000);
        let owner = key_pair(1);
        // 8 KB of 100 KB free: under t_pri (0.1), over t_div (0.05).
        let fragment = request(grant(&owner, b"f", 3600), key(1), 0, 8_000);
        assert_eq!(
            holder.store_fragment(&fragment, true, NOW),
            Err(Refusal::Full {
                size: 8_000,
                free: 100_000
            })
        );
        assert!(holder.store_fragment(&fragment, false, NOW).is_ok());
        let big = request(grant(&owner, b"f", 3600), key(2), 0, 20_000);
        assert_eq!(
            holder.store_fragment(&big, false, NOW),
            Err(Refusal::NoRoom {
                size: 20_000,
                free: 92_000 - PUT_METADATA
            })
        );
    }

    #[test]
    fn reclaim_needs_the_owner_keeps_shared_blocks_and_names_diverted_copies() {
        let holder = holder(1 << 20);
        let owner = key_pair(1);
        let certificate = |name: &[u8]| {
            let body = FileCertificate {
                file_id: FileId::derive(name, &owner.public_key().0, 0),
                name_digest: Id::hash(name),
                name_salt: 0,
                manifest_hash: cairn_core::id::ManifestHash(Id::hash(name)),
                manifest_salt: 0,
                manifest_fragments: Vec::new(),
                size: 1,
                k: 4,
                m: 2,
                created_at: NOW,
                expires_at: None,
                owner: owner.public_key(),
            };
            Signed::sign(&owner, body).unwrap()
        };
        let (a, b) = (certificate(b"a"), certificate(b"b"));
        // Both files use the block at key 1; only `a` uses key 2, where fragment 1
        // was diverted to another node.
        for name in [b"a", b"b"] {
            holder
                .store_fragment(
                    &request(grant(&owner, name, 3600), key(1), 0, 500),
                    false,
                    NOW,
                )
                .unwrap();
        }
        holder
            .store_fragment(
                &request(grant(&owner, b"a", 3600), key(2), 0, 300),
                false,
                NOW,
            )
            .unwrap();
        let elsewhere = NodeId(Id::hash(b"elsewhere"));
        holder.put_pointer(&key(2), 1, &elsewhere);
        let (a_bytes, b_bytes) = (a.to_bytes().unwrap(), b.to_bytes().unwrap());
        let reclaim = crate::testing::reclaim;
        let thief = key_pair(66);
        let refused = holder.reclaim(&reclaim(&thief, &a_bytes), &a_bytes, &[key(1)], NOW);
        assert!(matches!(refused, Err(Refusal::Certificate(_))));

        let done = holder
            .reclaim(&reclaim(&owner, &a_bytes), &a_bytes, &[key(1), key(2)], NOW)
            .unwrap();
        assert_eq!(
            (done.fragments, done.bytes),
            (1, 300),
            "only key 2 was a's alone"
        );
        assert_eq!(done.diverted_to, vec![(key(2), elsewhere)]);
        assert!(holder.store().get_fragment(&key(1), 0).unwrap().is_some());
        // The reclaimed file id is never stored again.
        let again = holder.store_fragment(
            &request(grant(&owner, b"a", 3600), key(4), 0, 10),
            false,
            NOW,
        );
        assert_eq!(again, Err(Refusal::Reclaimed(a.body.file_id)));
        let done = holder
            .reclaim(&reclaim(&owner, &b_bytes), &b_bytes, &[key(1)], NOW)
            .unwrap();
        assert_eq!(done.bytes, 500);
        let tombstones: u64 = [&a_bytes, &b_bytes]
            .iter()
            .map(|certificate| cairn_store::record_bytes(32, reclaim(&owner, certificate).len()))
            .sum();
        assert_eq!(
            holder.store().used(),
            tombstones,
            "only the tombstones are left"
        );
    }

    fn repair(certificate: Vec<u8>, references: Vec<FileId>, index: u16) -> RepairRequest {
        let bytes = vec![index as u8 ^ 0x33; 700];
        RepairRequest {
            authority: RepairAuthority {
                certificate,
                references,
            },
            key: key(9),
            index,
            hash: fragment_hash(index, &bytes),
            bytes,
        }
    }

    #[test]
    fn an_owner_over_its_quota_is_refused_and_its_bytes_are_counted() {
        let config = PastConfig {
            owner_quota: Some(1_500),
            ..PastConfig::default()
        };
        let holder = Holder::new(MemoryStore::new(1 << 20), Arc::new(key_pair(200)), config);
        let (alice, bob) = (key_pair(1), key_pair(2));
        let first = request(grant(&alice, b"f", 3600), key(1), 0, 1000);
        holder.store_fragment(&first, false, NOW).unwrap();
        assert_eq!(
            holder.store().owner_usage(&alice.public_key().owner_key()),
            1000
        );
        let refused = holder.store_fragment(
            &request(grant(&alice, b"f", 3600), key(2), 0, 600),
            false,
            NOW,
        );
        assert_eq!(
            refused,
            Err(Refusal::OverQuota {
                owner: alice.public_key().owner_key(),
                used: 1000,
                size: 600,
                quota: 1_500
            })
        );
        assert!(refused.unwrap_err().to_string().contains("over its quota"));
        assert!(holder.store().fragments_under(&key(2)).unwrap().is_empty());
        // A retried put is not charged twice; another owner has its own quota.
        holder.store_fragment(&first, false, NOW).unwrap();
        holder
            .store_fragment(
                &request(grant(&bob, b"g", 3600), key(2), 0, 600),
                false,
                NOW,
            )
            .unwrap();
        assert_eq!(
            holder.store().owner_usage(&bob.public_key().owner_key()),
            600
        );
        // Repair is counted but not refused: the data was admitted when it was put.
        let (file, cert) = crate::testing::certificate(&alice, b"h", (4, 2));
        holder
            .repair_fragment(&repair(cert, vec![file], 1), NOW)
            .unwrap();
        assert_eq!(
            holder.store().owner_usage(&alice.public_key().owner_key()),
            1700
        );
        assert_eq!(
            holder.store().charges(&key(9), 1).unwrap()[0].uncertified_until,
            None
        );
    }

    #[test]
    fn settling_an_upload_collects_uncertified_fragments_and_keeps_certified_ones() {
        let holder = holder(1 << 20);
        let (alice, bob) = (key_pair(1), key_pair(2));
        let at = |key: PlacementKey, owner: &KeyPair| ChargeCursor {
            key,
            index: 0,
            owner: owner.public_key().owner_key(),
        };
        let junk = request(grant(&alice, b"junk", 3600), key(1), 0, 1000);
        holder.store_fragment(&junk, false, NOW).unwrap();
        let kept = request(grant(&alice, b"kept", 3600), key(2), 0, 1000);
        holder.store_fragment(&kept, false, NOW).unwrap();
        let charge = holder.store().charges(&key(1), 0).unwrap()[0];
        assert_eq!(
            charge.uncertified_until,
            Some(NOW - 1 + 3600),
            "the grant's expiry"
        );

        assert_eq!(
            holder.settle_upload(&at(key(1), &alice), UploadVerdict::Collect),
            Ok(Settled::FragmentCollected { bytes: 1000 })
        );
        assert!(holder.store().fragments_under(&key(1)).unwrap().is_empty());
        assert!(holder.store().references(&key(1)).unwrap().is_empty());
        assert_eq!(
            holder.settle_upload(&at(key(2), &alice), UploadVerdict::Certified),
            Ok(Settled::Certified)
        );
        assert_eq!(
            holder.store().charges(&key(2), 0).unwrap()[0].uncertified_until,
            None
        );
        assert_eq!(
            holder.store().used(),
            1000 + PUT_METADATA,
            "only the certified put is left"
        );

        // A fragment two owners paid for stays until the last charge goes.
        let shared = request(grant(&alice, b"s", 3600), key(3), 0, 500);
        holder.store_fragment(&shared, false, NOW).unwrap();
        let mut by_bob = shared.clone();
        by_bob.grant = grant(&bob, b"t", 3600);
        holder.store_fragment(&by_bob, false, NOW).unwrap();
        assert_eq!(
            holder.settle_upload(&at(key(3), &alice), UploadVerdict::Collect),
            Ok(Settled::ChargeCollected)
        );
        assert!(holder.store().get_fragment(&key(3), 0).unwrap().is_some());
        assert_eq!(
            holder.settle_upload(&at(key(3), &bob), UploadVerdict::Keep),
            Ok(Settled::Kept)
        );
    }

    #[test]
    fn a_repair_store_needs_a_referencing_certificate_and_keeps_one_index_per_node() {
        let holder = holder(1 << 20);
        let owner = key_pair(1);
        let (file, cert) = crate::testing::certificate(&owner, b"f", (4, 2));
        let (other, other_cert) = crate::testing::certificate(&owner, b"g", (4, 2));
        // The certificate must be of a referencing file, and check out.
        assert!(matches!(
            holder.repair_fragment(&repair(other_cert.clone(), vec![file], 1), NOW),
            Err(Refusal::Certificate(_))
        ));
        let mut forged = cert.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            holder.repair_fragment(&repair(forged, vec![file], 1), NOW),
            Err(Refusal::Certificate(_))
        ));
        assert!(
            matches!(
                holder.repair_fragment(&repair(cert.clone(), vec![file], 6), NOW),
                Err(Refusal::Certificate(_))
            ),
            "index 6 is beyond n = 6"
        );
        let receipt = holder
            .repair_fragment(&repair(cert.clone(), vec![file, other], 1), NOW)
            .unwrap();
        let receipt = Signed::<StoreReceipt>::from_bytes(&receipt).unwrap();
        assert_eq!(receipt.verify().unwrap().file_id, file);
        assert_eq!(holder.store().references(&key(9)).unwrap(), {
            let mut both = vec![file, other];
            both.sort();
            both
        });
        // Again: a fresh receipt; another index of the same key: refused.
        assert!(
            holder
                .repair_fragment(&repair(cert.clone(), vec![file], 1), NOW)
                .is_ok()
        );
        assert_eq!(
            holder.repair_fragment(&repair(cert.clone(), vec![file], 2), NOW),
            Err(Refusal::Conflict)
        );
        // A file reclaimed here is never repaired here.
        let reclaim = crate::testing::reclaim(&owner, &other_cert);
        holder.store().put_tombstone(&other, &reclaim).unwrap();
        let mut elsewhere = repair(other_cert, vec![other], 0);
        elsewhere.key = key(10);
        assert_eq!(
            holder.repair_fragment(&elsewhere, NOW),
            Err(Refusal::Reclaimed(other))
        );
    }

    #[test]
    fn forget_needs_the_owner_and_frees_blocks_no_other_file_uses() {
        let holder = holder(1 << 20);
        let owner = key_pair(1);
        let (file, cert) = crate::testing::certificate(&owner, b"f", (4, 2));
        holder.put_certificate(&cert, NOW).unwrap();
        holder
            .repair_fragment(&repair(cert.clone(), vec![file], 0), NOW)
            .unwrap();
        let order = |signer: &KeyPair| crate::testing::reclaim(signer, &cert);
        assert!(matches!(
            holder.forget(&order(&key_pair(66)), &[key(9)]),
            Err(Refusal::Certificate(_))
        ));
        let done = holder.forget(&order(&owner), &[key(9)]).unwrap();
        assert_eq!((done.fragments, done.bytes), (1, 700));
        assert!(holder.store().is_reclaimed(&file).unwrap());
        assert_eq!(holder.get_certificate(&file).unwrap(), None);
        match holder.file_status(&file).unwrap() {
            PastResponse::FileStatus {
                certificate: None,
                tombstone: Some(_),
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn repair_messages_are_appended_after_the_first_ones() {
        let file = FileId(Id::ZERO);
        let tag = |request: &PastRequest| postcard::to_stdvec(request).unwrap()[0];
        assert_eq!(tag(&PastRequest::GetCertificate { file }), 6);
        assert_eq!(
            tag(&PastRequest::DropPointer {
                key: key(1),
                index: 0
            }),
            11
        );
        assert_eq!(tag(&PastRequest::FileStatus { file }), 12);
        assert_eq!(
            tag(&PastRequest::Reconcile {
                from: NodeId(Id::ZERO),
                keys: Vec::new(),
            }),
            14
        );
        assert_eq!(
            tag(&PastRequest::Summary {
                from: NodeId(Id::ZERO),
                summary: 0,
                list: None,
            }),
            15
        );
        let answer = PastResponse::FileStatus {
            certificate: None,
            tombstone: None,
        };
        assert_eq!(postcard::to_stdvec(&answer).unwrap(), vec![10, 0, 0]);
    }

    fn signed_root(key: &KeyPair, sequence: u64, root: &[u8]) -> Vec<u8> {
        let record = RootRecord {
            volume: key.public_key().volume_key(),
            sequence,
            root: FileId(Id::hash(root)),
            time: NOW,
        };
        Signed::sign(key, record).unwrap().to_bytes().unwrap()
    }

    fn held_sequence(holder: &Holder<MemoryStore>, key: &KeyPair) -> Option<u64> {
        let bytes = holder.get_root(&key.public_key().volume_key()).unwrap()?;
        Some(check_root(&bytes).unwrap().body.sequence)
    }

    #[test]
    fn root_key_is_the_hash_of_root_and_the_volume_key() {
        let volume = key_pair(4).public_key().volume_key();
        let mut bytes = b"root".to_vec();
        bytes.extend_from_slice(volume.0.as_bytes());
        assert_eq!(root_key(&volume).0, Id::hash(&bytes));
        assert_ne!(root_key(&volume).0, certificate_key(&FileId(volume.0)).0);
    }

    #[test]
    fn a_holder_keeps_only_the_highest_root_and_names_it_when_refusing() {
        let holder = holder(1 << 20);
        let owner = key_pair(4);
        assert_eq!(held_sequence(&holder, &owner), None);
        let first = signed_root(&owner, 1, b"dir 1");
        assert_eq!(holder.put_root(&first), Ok(RootStored::Stored));
        assert_eq!(holder.put_root(&first), Ok(RootStored::AlreadyHeld));
        let second = signed_root(&owner, 2, b"dir 2");
        assert_eq!(holder.put_root(&second), Ok(RootStored::Stored));
        assert_eq!(held_sequence(&holder, &owner), Some(2));
        assert_eq!(
            holder.get_root(&owner.public_key().volume_key()).unwrap(),
            Some(second.clone())
        );
        // A replay of sequence 1, and another record claiming sequence 2.
        assert_eq!(
            holder.put_root(&first),
            Err(Refusal::HeldRoot {
                record: second.clone()
            })
        );
        let rival = signed_root(&owner, 2, b"another dir 2");
        let refused = holder.put_root(&rival).unwrap_err();
        assert_eq!(
            refused,
            Refusal::HeldRoot {
                record: second.clone()
            }
        );
        assert_eq!(refused.claimed_root_sequence(), Some(2));
        assert_eq!(
            holder.get_root(&owner.public_key().volume_key()).unwrap(),
            Some(second),
            "a refused record changes nothing"
        );
        // Volumes are independent.
        let other = key_pair(5);
        assert_eq!(
            holder.put_root(&signed_root(&other, 1, b"x")),
            Ok(RootStored::Stored)
        );
        assert_eq!(held_sequence(&holder, &owner), Some(2));
    }

    #[test]
    fn a_root_record_not_signed_by_its_volume_key_is_never_stored() {
        let holder = holder(1 << 20);
        let owner = key_pair(4);
        let mallory = key_pair(9);
        // Mallory signs a record naming the owner's volume.
        let record = RootRecord {
            volume: owner.public_key().volume_key(),
            sequence: 99,
            root: FileId(Id::hash(b"evil")),
            time: NOW,
        };
        let by_mallory = Signed::sign(&mallory, record.clone()).unwrap();
        let refused = holder.put_root(&by_mallory.to_bytes().unwrap());
        assert!(
            matches!(refused, Err(Refusal::RootRecord(_))),
            "{refused:?}"
        );
        // ...or pastes her signature under the owner's name.
        let mut pasted = by_mallory;
        pasted.signer = owner.public_key();
        let refused = holder.put_root(&pasted.to_bytes().unwrap());
        assert!(
            matches!(refused, Err(Refusal::RootRecord(_))),
            "{refused:?}"
        );
        // ...or sends garbage.
        let refused = holder.put_root(&[1, 4, 0]);
        assert!(
            matches!(refused, Err(Refusal::RootRecord(_))),
            "{refused:?}"
        );
        assert_eq!(held_sequence(&holder, &owner), None);
    }

    #[test]
    fn a_damaged_root_record_on_disk_is_replaced_by_a_valid_one() {
        let holder = holder(1 << 20);
        let owner = key_pair(4);
        let volume = owner.public_key().volume_key();
        let mut damaged = signed_root(&owner, 50, b"dir");
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        holder.store().put_root(&volume, &damaged).unwrap();
        assert_eq!(
            holder.put_root(&signed_root(&owner, 3, b"dir 3")),
            Ok(RootStored::Stored)
        );
        assert_eq!(held_sequence(&holder, &owner), Some(3));
    }

    #[test]
    fn root_messages_are_appended_after_the_others() {
        let tag = |request: &PastRequest| postcard::to_stdvec(request).unwrap()[0];
        assert_eq!(tag(&PastRequest::PutRoot { record: vec![] }), 16);
        let volume = VolumeKey(Id::ZERO);
        assert_eq!(tag(&PastRequest::GetRoot { volume }), 17);
        let answer = PastResponse::Root { record: None };
        assert_eq!(postcard::to_stdvec(&answer).unwrap(), vec![12, 0]);
        let refusal = PastResponse::Refused(Refusal::StaleRoot { held_sequence: 7 });
        assert_eq!(postcard::to_stdvec(&refusal).unwrap(), vec![1, 10, 7]);
    }
}
