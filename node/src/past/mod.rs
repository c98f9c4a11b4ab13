//! PAST over fragments: what a storage node does with the fragments, certificates and
//! pointers it is asked to keep, and the rules of placement.
//!
//! Owns: the PAST wire requests and answers ([`PastRequest`], [`PastResponse`],
//! [`Refusal`]), placement arithmetic ([`closest`], [`certificate_key`], the replica
//! diversion thresholds in [`PastConfig`]), and [`Holder`], which answers one request
//! against the local store. Sans-IO: no sockets, no clock (`now` is passed in), no
//! tasks; the daemon ([`crate::daemon`]) moves the messages and decides whom to ask.
//!
//! May use: [`crate::id`], [`crate::crypto`], [`crate::erasure`], [`crate::store`], and
//! [`crate::net::bytes`] (the fast serde form of payloads).
//!
//! # The rules every node enforces
//! - A fragment is stored only under a valid, unexpired [`UploadGrant`] signed by the
//!   owner of the file id it names, and only if its bytes hash to the hash offered.
//!   The grant comes first because a put streams: the file certificate, which covers
//!   the manifest hash, can only be signed at the end.
//! - A certificate is stored only if its signature, owner and file id check out.
//! - A reclaim is obeyed only if it is signed by the owner of the certificate it
//!   comes with; a reclaimed file id is remembered (a tombstone) and never stored again.
//!
//! # Replica diversion (PAST §3.3, per fragment)
//! A node asked to store a fragment of `size` bytes with `free` bytes free accepts it if
//! `size / free <= t_pri`; otherwise it answers [`Refusal::NoRoom`] and the daemon
//! diverts the fragment to a leaf-set node outside the `n` closest, which accepts only
//! if `size / free <= t_div` ([`PastRequest::StoreDiverted`]). The diverting node keeps
//! a pointer, and the `(n+1)`-th closest node keeps a backup pointer, so a lookup that
//! reaches either finds the diverted holder.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::crypto::{
    FileCertificate, KeyPair, ReclaimCertificate, Signed, StoreReceipt, UploadGrant,
};
use crate::id::{FileId, FragmentHash, Id, NodeId, PlacementKey};
use crate::store::{FragmentStorage, StoreError};

/// PAST's thresholds and the number of certificate replicas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PastConfig {
    /// A node accepts a fragment as one of the `n` closest if `size / free <= t_pri`.
    /// PAST's default 0.1: a node keeps room for fragments whose owners have no choice.
    pub t_pri: f64,
    /// A node accepts a diverted fragment only if `size / free <= t_div` (0.05 in PAST:
    /// stricter, so that diversion does not fill the nodes that still have room).
    pub t_div: f64,
    /// How many of the nodes closest to [`certificate_key`] keep a file's certificate.
    pub certificate_replicas: usize,
    /// The longest grant lifetime a node accepts (seconds); longer ones are refused so
    /// that a leaked grant stops working soon.
    pub max_grant_lifetime: u64,
}

impl Default for PastConfig {
    fn default() -> PastConfig {
        PastConfig {
            t_pri: 0.1,
            t_div: 0.05,
            certificate_replicas: 4,
            max_grant_lifetime: 7 * 24 * 3600,
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
    #[serde(with = "crate::net::bytes")]
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
        #[serde(with = "crate::net::bytes")]
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
}

/// What is routed to a placement key ([`crate::overlay::Routed::Lookup`]'s payload).
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

/// Where a file's certificate lives: the nodes closest to this key.
pub fn certificate_key(file: &FileId) -> PlacementKey {
    PlacementKey(Id::hash_parts(&[b"cairn/certificate", file.0.as_bytes()]))
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
}

impl<S: FragmentStorage> Holder<S> {
    /// A holder over `store`, signing receipts with `identity` (the node's key).
    pub fn new(store: S, identity: Arc<KeyPair>, config: PastConfig) -> Holder<S> {
        Holder {
            store,
            identity,
            config,
        }
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
        let file = grant.file_id;
        if self.store.is_reclaimed(&file).map_err(store_refusal)? {
            return Err(Refusal::Reclaimed(file));
        }
        let size = request.bytes.len() as u64;
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
                self.store
                    .put_fragment(&request.key, request.index, &request.hash, &request.bytes)
                    .map_err(store_refusal)?;
            }
        }
        self.store
            .add_reference(&request.key, &file)
            .map_err(store_refusal)?;
        self.receipt(file, request, now)
    }

    fn receipt(
        &self,
        file: FileId,
        request: &StoreRequest,
        now: UnixSeconds,
    ) -> Result<Vec<u8>, Refusal> {
        let receipt = StoreReceipt {
            node: self.identity.public_key().node_id(),
            file_id: file,
            placement_key: request.key,
            index: request.index,
            fragment_hash: request.hash,
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
        let signed = Signed::<ReclaimCertificate>::from_bytes(reclaim)
            .map_err(|e| Refusal::Certificate(e.to_string()))?;
        let order = signed
            .verify()
            .map_err(|e| Refusal::Certificate(e.to_string()))?;
        if order.file_id != certified.file_id || order.owner != certified.owner {
            return Err(Refusal::Certificate(format!(
                "the reclaim of file {} is not signed by that file's owner",
                order.file_id
            )));
        }
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
        }
        self.store
            .delete_certificate(&file)
            .map_err(store_refusal)?;
        Ok(done)
    }
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
    let refuse = |e: String| Refusal::Certificate(e);
    let signed = Signed::<FileCertificate>::from_bytes(bytes).map_err(|e| refuse(e.to_string()))?;
    let body = signed.verify().map_err(|e| refuse(e.to_string()))?;
    body.check_time(now).map_err(|e| refuse(e.to_string()))?;
    Ok(body.clone())
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
