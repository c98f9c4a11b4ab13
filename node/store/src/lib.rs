//! The durable local store: fragments, certificates, pointers and root records.
//!
//! Owns: the [`NodeStore`] trait (the narrow API every higher layer uses), its
//! two implementations, [`MemoryStore`] (for the simulator and tests) and
//! [`DiskStore`] (sled as the index, fragment bodies in files; see `docs/store.md`
//! for the measurements behind that layout), capacity accounting, and [`StoreError`].
//! With the `fuzzing` feature, `disk_records` exposes the disk store's record codecs
//! to the fuzz targets (`node/fuzz-targets`).
//!
//! May use: [`cairn_core::id`] (ids and hashing), [`cairn_core::erasure::fragment_hash`],
//! `sled`, `std::fs`, `tracing`. It does not use `crypto`: certificates and root
//! records are opaque signed bytes here, verified by the typed layer above before they
//! are stored and after they are read.
//!
//! # What is durable, and when a receipt may be signed
//!
//! Every mutating call returns only once its effect is on disk (for [`DiskStore`]:
//! the body file is `fdatasync`ed and renamed, its directory fsynced, and the sled
//! index flushed). A node signs a store receipt for a fragment **only after
//! [`NodeStore::put_fragment`] (or [`NodeStore::put_fragments`] for a
//! group) has returned `Ok`**; a receipt signed earlier could promise a fragment that
//! a crash then loses.
//!
//! # Group commit
//!
//! [`NodeStore::put_fragments`] stores the fragments of one placement key (a
//! block's `n` fragments) as one unit: every check passes before anything is written,
//! and [`DiskStore`] pays the directory fsync and the index flush once per group
//! instead of once per fragment. All or nothing: a refused group changes nothing, and
//! a crash leaves either none of its index records or all of them.
//!
//! # Block references and tombstones (for reclaim)
//!
//! A block may belong to several files (equal blocks have equal placement keys), so a
//! node records which files use each placement key it holds fragments of
//! ([`NodeStore::add_reference`]); a reclaim removes its file's references and
//! frees a block only when none remain. A reclaimed file gets a tombstone holding its
//! reclaim certificate, and its id is never stored again. Both are metadata only: a
//! reference neither requires nor protects a fragment body, so they are written apart
//! from fragments (each call durable on return), and a crash between a fragment and
//! its reference leaves at worst an unreferenced fragment or a reference to a block
//! not (yet) held, which reclaim and repair treat as such.
//!
//! # What the capacity counts
//!
//! [`NodeStore::used`] is the exact sum of the lengths of the fragment bodies stored
//! plus the bytes of every metadata record: certificates, pointers, root records,
//! references, tombstones and charges, each counted as [`record_bytes`] of its key and
//! payload (what the index holds: key, version byte, payload). Index and file system
//! overhead are not counted. A put that would take `used` past `capacity` is refused
//! with [`StoreError::Full`] and changes nothing: fragments, certificates, pointers,
//! roots, references and charges alike. Tombstones alone are counted but never refused:
//! a reclaim writes its tombstone before the deletes that free the room, so refusing
//! it on a full node would keep the node full. (Before issue 11 metadata was not
//! counted at all, so a peer could fill a node's index with certificates or pointers
//! without ever being refused.)
//!
//! # Accounting per owner (charges)
//!
//! Every fragment stored for an owner is *charged* to that owner: a [`Charge`] names
//! the owner (the signer of the upload grant, or of the certificate a repair store
//! carries), the file, the bytes, and, until the upload is known to be certified, when
//! its grant expires. [`NodeStore::owner_usage`] is the sum of an owner's charges,
//! kept exact across restarts; `cairn_past::admission` decides quotas and collects the
//! fragments of uploads never certified from it. A fragment may be charged to several
//! owners (each paid for storing it); deleting the fragment deletes its charges. The
//! charge is written before the fragment, so a crash between them leaves a charge
//! without a fragment, which [`DiskStore::open`] drops, and never bytes charged to
//! nobody.

mod disk;
mod memory;

#[cfg(feature = "fuzzing")]
pub use disk::fuzzing as disk_records;

use std::io;
use std::path::PathBuf;

use cairn_core::id::{FileId, FragmentHash, Id, NodeId, OwnerKey, PlacementKey, VolumeKey};

pub use disk::{
    DEFAULT_DISK_HEADROOM, DEFAULT_SYNC_THREADS, DiskStore, OpenCleanup, RECORD_VERSION,
};
pub use memory::MemoryStore;

/// The hash a fragment must have, `SHA-256(index_be16 ‖ bytes)`: the erasure layer's
/// definition, re-exported because every put is checked against it.
pub use cairn_core::erasure::fragment_hash;

/// What one stored fragment is, as listed (without its body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInfo {
    /// The fragment's index within its block (0..n).
    pub index: u16,
    /// The hash recorded at put time, re-checked on every read.
    pub hash: FragmentHash,
    /// Body length in bytes (what it counts against the capacity).
    pub len: u64,
}

/// The outcome of a successful [`NodeStore::put_fragment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The fragment was new and is now durable; `used` grew by `bytes`.
    Stored {
        /// Bytes added to `used`.
        bytes: u64,
    },
    /// The same fragment (same key, index and hash) was already stored; nothing changed.
    AlreadyStored,
}

/// Who a stored fragment is accounted to ([`NodeStore::put_charge`]), and whether the
/// upload that stored it is known to be certified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    /// The owner whose grant (or, for a repair store, whose certificate) the fragment
    /// was stored under.
    pub owner: OwnerKey,
    /// The file it was stored for.
    pub file: FileId,
    /// Bytes accounted to the owner: the fragment's length.
    pub len: u64,
    /// While no certificate is known for the upload, when the grant it was stored
    /// under expires (unix seconds); `None` once the upload is known to be certified
    /// (a repair store is from the start: it carries a certificate).
    pub uncertified_until: Option<u64>,
}

/// A position in the listing of every charge ([`NodeStore::charges_after`]): the
/// fragment and the owner of a charge. Charges list in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChargeCursor {
    /// The fragment's placement key.
    pub key: PlacementKey,
    /// The fragment's index.
    pub index: u16,
    /// The owner charged.
    pub owner: OwnerKey,
}

/// The bytes a metadata record counts against the capacity: its key, a version byte
/// and its payload, as the index holds it. One definition for both stores, so their
/// `used` agree.
pub fn record_bytes(key_len: usize, payload_len: usize) -> u64 {
    (key_len as u64)
        .saturating_add(1)
        .saturating_add(payload_len as u64)
}

/// Bytes of a charge's key (placement key, index, owner) and payload (file, length,
/// grant expiry), for [`record_bytes`].
pub(crate) const CHARGE_KEY_LEN: usize = 2 * cairn_core::id::ID_BYTES + 2;
pub(crate) const CHARGE_PAYLOAD_LEN: usize = cairn_core::id::ID_BYTES + 16;

/// Checks that growing the metadata from `old` to `new` bytes fits in `free`; shrinking
/// always fits. The caller then adds `new` and subtracts `old`.
pub(crate) fn check_record_room(
    old: u64,
    new: u64,
    used: u64,
    capacity: u64,
) -> Result<(), StoreError> {
    let needed = new.saturating_sub(old);
    let free = capacity.saturating_sub(used);
    if needed > free {
        return Err(StoreError::Full {
            needed,
            free,
            capacity,
        });
    }
    Ok(())
}

/// One fragment offered to [`NodeStore::put_fragments`]: its index within the
/// block, the hash the caller expects (`fragment_hash(index, bytes)`), and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedFragment<'a> {
    /// The fragment's index within its block.
    pub index: u16,
    /// What the bytes must hash to; checked before anything is stored.
    pub hash: FragmentHash,
    /// The fragment's body.
    pub bytes: &'a [u8],
}

/// Everything that can go wrong in the store. Variants carry what a log line or an
/// operator needs to see what happened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Storing `needed` more bytes would pass the capacity; nothing was changed.
    #[error("store full: {needed} bytes needed, {free} free of {capacity}")]
    Full {
        /// Bytes the refused put would have added.
        needed: u64,
        /// Bytes free when it was refused.
        free: u64,
        /// The configured capacity.
        capacity: u64,
    },
    /// The bytes offered do not hash to what the caller said they are; nothing stored.
    #[error("fragment {index} of {key:?}: bytes hash to {actual:?}, caller expected {expected:?}")]
    HashMismatch {
        /// Placement key of the fragment.
        key: PlacementKey,
        /// Fragment index.
        index: u16,
        /// The hash the caller passed.
        expected: FragmentHash,
        /// `SHA-256(index_be16 ‖ bytes)` of the bytes offered.
        actual: FragmentHash,
    },
    /// A different fragment is already stored under this key and index; nothing changed.
    #[error(
        "fragment {index} of {key:?}: already stored with hash {stored:?}, offered {offered:?}"
    )]
    Conflict {
        /// Placement key of the fragment.
        key: PlacementKey,
        /// Fragment index.
        index: u16,
        /// The hash already stored.
        stored: FragmentHash,
        /// The hash of the fragment offered.
        offered: FragmentHash,
    },
    /// A stored fragment no longer matches the hash recorded at put time (bit rot, a
    /// truncated or missing body file). Its bytes are never returned.
    #[error("fragment {index} of {key:?} is corrupt on disk: {detail}")]
    Corrupt {
        /// Placement key of the fragment.
        key: PlacementKey,
        /// Fragment index.
        index: u16,
        /// What was found (hash mismatch, wrong length, missing body).
        detail: String,
    },
    /// The file system is out of space: a write met ENOSPC, or (`DiskStore`) the put
    /// would have left less than the index headroom free. Nothing stored earlier was
    /// lost; the refused write left no trace.
    #[error("disk full while {operation} {path}")]
    DiskFull {
        /// What the store was doing.
        operation: &'static str,
        /// The file it was writing.
        path: PathBuf,
    },
    /// Any other I/O failure, with the operation and the path it concerned.
    #[error("I/O error while {operation} {path}")]
    Io {
        /// What the store was doing.
        operation: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The sled index failed.
    #[error("index (sled) error while {operation}")]
    Index {
        /// What the store was doing.
        operation: &'static str,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// The file was reclaimed (a tombstone records it): its id is never stored again,
    /// so neither its certificate nor a reference to it is accepted.
    #[error("file {file} was reclaimed; nothing is stored for it again")]
    Reclaimed {
        /// The file.
        file: FileId,
    },
    /// An index record could not be decoded (unknown version byte or wrong length).
    #[error("undecodable record in tree {tree}: {detail}")]
    BadRecord {
        /// The sled tree it came from.
        tree: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl StoreError {
    /// Wraps an I/O error, turning ENOSPC into [`StoreError::DiskFull`].
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.kind() == io::ErrorKind::StorageFull {
            StoreError::DiskFull { operation, path }
        } else {
            StoreError::Io {
                operation,
                path,
                source,
            }
        }
    }

    /// Wraps a sled error; sled's own I/O errors on a full disk become [`StoreError::DiskFull`].
    pub(crate) fn index(operation: &'static str, source: sled::Error) -> Self {
        match source {
            sled::Error::Io(ref err) if err.kind() == io::ErrorKind::StorageFull => {
                StoreError::DiskFull {
                    operation,
                    path: PathBuf::from("(sled index)"),
                }
            }
            source => StoreError::Index { operation, source },
        }
    }
}

/// The store's narrow API: what the placement and repair layers, the node daemon and
/// the simulator use. Both [`MemoryStore`] and [`DiskStore`] implement it and pass the
/// same test suite.
///
/// All methods take `&self`; implementations synchronise internally so one store can
/// be shared between tasks. Every mutation is durable when it returns (see the module
/// docs for when that matters).
pub trait NodeStore: Send + Sync {
    /// Stores fragment `index` of the block placed at `key`, after checking that
    /// `fragment_hash(index, bytes) == *expected`.
    ///
    /// Returns only once the fragment is durable: a store receipt may be signed after
    /// this returns `Ok`, never before. Re-putting the same fragment is a no-op
    /// ([`PutOutcome::AlreadyStored`], not counted twice). Refused, changing nothing,
    /// with [`StoreError::HashMismatch`], [`StoreError::Conflict`] (another fragment
    /// under the same key and index) or [`StoreError::Full`].
    fn put_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
        expected: &FragmentHash,
        bytes: &[u8],
    ) -> Result<PutOutcome, StoreError>;

    /// Stores several fragments of the block placed at `key` as one group: a block's
    /// `n` fragments in one call, so a durable store syncs once per group instead of
    /// once per fragment. Returns one [`PutOutcome`] per offered fragment, in order.
    ///
    /// **All or nothing.** Every fragment is checked first: its hash
    /// ([`StoreError::HashMismatch`]), what is already stored under its index
    /// ([`StoreError::Conflict`]; an equal fragment is [`PutOutcome::AlreadyStored`]),
    /// and the sum of the new bytes against the free space ([`StoreError::Full`],
    /// whose `needed` is that sum). If any check fails the whole group is refused and
    /// nothing changes. An index offered twice in one group counts once (the second is
    /// `AlreadyStored`, or a `Conflict` if the hashes differ). Returns only once every
    /// fragment is durable. An I/O failure midway is undone (nothing of the group
    /// stays stored or counted); a crash leaves none or all of the group.
    ///
    /// The default implementation runs the checks, then [`Self::put_fragment`] one
    /// fragment after another: all or nothing against refusals only while nothing else
    /// writes the store, and an I/O failure midway leaves the fragments before it
    /// stored. [`MemoryStore`] and [`DiskStore`] override it with the full contract.
    fn put_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[OfferedFragment<'_>],
    ) -> Result<Vec<PutOutcome>, StoreError> {
        check_offered_group(key, fragments)?;
        let plan = plan_group(key, fragments, |index| {
            Ok(self.fragment_info(key, index)?.map(|info| info.hash))
        })?;
        let free = self.free();
        if plan.needed > free {
            return Err(StoreError::Full {
                needed: plan.needed,
                free,
                capacity: self.capacity(),
            });
        }
        fragments
            .iter()
            .map(|f| self.put_fragment(key, f.index, &f.hash, f.bytes))
            .collect()
    }

    /// The fragment's bytes, re-checked against the hash recorded at put time;
    /// `Ok(None)` if it is not stored, [`StoreError::Corrupt`] if it no longer verifies.
    fn get_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<Vec<u8>>, StoreError>;

    /// What is stored for this fragment (hash and length), without reading the body.
    fn fragment_info(
        &self,
        key: &PlacementKey,
        index: u16,
    ) -> Result<Option<FragmentInfo>, StoreError>;

    /// Deletes a fragment and its charges, freeing exactly its length (and its
    /// charges' records); returns the fragment bytes freed (`None` if it was not
    /// stored).
    fn delete_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<u64>, StoreError>;

    /// Every fragment stored under `key`, by ascending index.
    fn fragments_under(&self, key: &PlacementKey) -> Result<Vec<FragmentInfo>, StoreError>;

    /// The distinct placement keys with at least one fragment stored in the clockwise
    /// ring range from `start` (inclusive) to `end` (exclusive), in clockwise order
    /// from `start`. The range wraps past the top of the ring when `end < start`;
    /// `start == end` means the whole ring.
    fn placement_keys_in(
        &self,
        start: &PlacementKey,
        end: &PlacementKey,
    ) -> Result<Vec<PlacementKey>, StoreError>;

    /// Stores (or replaces) the opaque signed certificate bytes of `file`; refused with
    /// [`StoreError::Reclaimed`] if `file` has a tombstone.
    fn put_certificate(&self, file: &FileId, signed: &[u8]) -> Result<(), StoreError>;
    /// The certificate bytes of `file`, if stored.
    fn get_certificate(&self, file: &FileId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Deletes the certificate of `file`; returns whether there was one.
    fn delete_certificate(&self, file: &FileId) -> Result<bool, StoreError>;
    /// The files whose certificates are kept here, at most `limit`, in id order from
    /// `after` (exclusive; `None`: from the start), for maintenance passes.
    fn certificate_files(
        &self,
        after: Option<&FileId>,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError>;

    /// Records that fragment `index` of `key` was diverted to `holder`.
    fn put_pointer(
        &self,
        key: &PlacementKey,
        index: u16,
        holder: &NodeId,
    ) -> Result<(), StoreError>;
    /// The node a diverted fragment was handed to, if any.
    fn get_pointer(&self, key: &PlacementKey, index: u16) -> Result<Option<NodeId>, StoreError>;
    /// Forgets a pointer; returns whether there was one.
    fn delete_pointer(&self, key: &PlacementKey, index: u16) -> Result<bool, StoreError>;
    /// Every pointer under `key`, by ascending index.
    fn pointers_under(&self, key: &PlacementKey) -> Result<Vec<(u16, NodeId)>, StoreError>;

    /// Records that `file` uses the block placed at `key`, so a reclaim of another file
    /// keeps the block (see "Block references" in the module docs). Idempotent; refused
    /// with [`StoreError::Reclaimed`] if `file` has a tombstone.
    fn add_reference(&self, key: &PlacementKey, file: &FileId) -> Result<(), StoreError>;
    /// Forgets that `file` uses the block at `key` (nothing if it was not recorded);
    /// returns how many files still reference the block.
    fn remove_reference(&self, key: &PlacementKey, file: &FileId) -> Result<usize, StoreError>;
    /// The files that reference the block at `key`, in ascending order.
    fn references(&self, key: &PlacementKey) -> Result<Vec<FileId>, StoreError>;

    /// Records that `file` was reclaimed, keeping the opaque signed reclaim certificate
    /// (checked by the caller) as its proof. From then on the file's certificate and
    /// references are refused ([`StoreError::Reclaimed`]). Replaces an earlier
    /// tombstone of the same file. Does not delete the certificate, references or
    /// fragments: the caller reclaims those, and can resume after a crash because the
    /// certificate (which names the manifest) is still there.
    fn put_tombstone(&self, file: &FileId, reclaim: &[u8]) -> Result<(), StoreError>;
    /// The reclaim certificate bytes of `file`'s tombstone, if it was reclaimed.
    fn get_tombstone(&self, file: &FileId) -> Result<Option<Vec<u8>>, StoreError>;
    /// Whether `file` was reclaimed.
    fn is_reclaimed(&self, file: &FileId) -> Result<bool, StoreError> {
        Ok(self.get_tombstone(file)?.is_some())
    }

    /// Stores (or replaces) the opaque signed root record of `volume`. The caller has
    /// checked the signature and that the sequence number is higher.
    fn put_root(&self, volume: &VolumeKey, signed: &[u8]) -> Result<(), StoreError>;
    /// The root record of `volume`, if stored.
    fn get_root(&self, volume: &VolumeKey) -> Result<Option<Vec<u8>>, StoreError>;
    /// The volumes whose root records are kept here, at most `limit`, in key order from
    /// `after` (exclusive; `None`: from the start), for maintenance passes.
    fn root_volumes(
        &self,
        after: Option<&VolumeKey>,
        limit: usize,
    ) -> Result<Vec<VolumeKey>, StoreError>;

    /// Charges fragment `index` of `key` to `charge.owner`, replacing that owner's
    /// earlier charge on the fragment (see "Accounting per owner" in the module docs):
    /// [`NodeStore::owner_usage`] moves by the difference. Written before the fragment
    /// it charges. Counted as metadata; refused with [`StoreError::Full`] if it does
    /// not fit. Not synced on its own: it is durable once anything written after it
    /// is (the fragment, or the reference a store adds next), never after them.
    fn put_charge(&self, key: &PlacementKey, index: u16, charge: &Charge)
    -> Result<(), StoreError>;
    /// Removes `owner`'s charge on a fragment; returns whether there was one.
    fn delete_charge(
        &self,
        key: &PlacementKey,
        index: u16,
        owner: &OwnerKey,
    ) -> Result<bool, StoreError>;
    /// The charges on fragment `index` of `key`, by owner.
    fn charges(&self, key: &PlacementKey, index: u16) -> Result<Vec<Charge>, StoreError>;
    /// At most `limit` charges in [`ChargeCursor`] order from `after` (exclusive;
    /// `None`: from the start), for passes that page through them.
    fn charges_after(
        &self,
        after: Option<&ChargeCursor>,
        limit: usize,
    ) -> Result<Vec<(ChargeCursor, Charge)>, StoreError>;
    /// Bytes charged to `owner` here.
    fn owner_usage(&self, owner: &OwnerKey) -> u64;
    /// How many owners have bytes charged here.
    fn owners_charged(&self) -> usize;

    /// Bytes of fragment bodies and metadata records stored (see "What the capacity
    /// counts" in the module docs).
    fn used(&self) -> u64;
    /// The configured limit on [`NodeStore::used`].
    fn capacity(&self) -> u64;
    /// `capacity - used` (0 if a reopen with a smaller capacity left it over).
    fn free(&self) -> u64 {
        self.capacity().saturating_sub(self.used())
    }
}

/// True if `key` lies in the clockwise ring range `[start, end)`, the range
/// [`NodeStore::placement_keys_in`] lists (`start == end`: the whole ring).
pub fn in_ring_range(key: &PlacementKey, start: &PlacementKey, end: &PlacementKey) -> bool {
    match start.cmp(end) {
        std::cmp::Ordering::Less => start <= key && key < end,
        std::cmp::Ordering::Greater => key >= start || key < end,
        std::cmp::Ordering::Equal => true,
    }
}

/// The ring range `[start, end)` as at most two ascending linear intervals, in
/// clockwise order; `None` as an upper bound means "to the top of the ring".
pub(crate) fn ring_intervals(
    start: &PlacementKey,
    end: &PlacementKey,
) -> Vec<(PlacementKey, Option<PlacementKey>)> {
    if start < end {
        vec![(*start, Some(*end))]
    } else if start == end && *start == PlacementKey(Id::ZERO) {
        vec![(*start, None)]
    } else {
        // Wraps: from start to the top, then from zero up to end.
        vec![(*start, None), (PlacementKey(Id::ZERO), Some(*end))]
    }
}

/// Checks a fragment against the caller's expected hash before storing it.
pub(crate) fn check_offered(
    key: &PlacementKey,
    index: u16,
    expected: &FragmentHash,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let actual = fragment_hash(index, bytes);
    if actual != *expected {
        return Err(StoreError::HashMismatch {
            key: *key,
            index,
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

/// What a group put will do, decided before anything is written.
#[derive(Debug)]
pub(crate) struct GroupPlan {
    /// One outcome per offered fragment, in order.
    pub outcomes: Vec<PutOutcome>,
    /// Positions (in the offered slice) of the fragments to write: new, each index once.
    pub new: Vec<usize>,
    /// Sum of the lengths of the new fragments.
    pub needed: u64,
}

/// Checks the hash of every fragment of a group (before any lock is taken: hashing a
/// block's fragments takes milliseconds).
pub(crate) fn check_offered_group(
    key: &PlacementKey,
    fragments: &[OfferedFragment<'_>],
) -> Result<(), StoreError> {
    fragments
        .iter()
        .try_for_each(|f| check_offered(key, f.index, &f.hash, f.bytes))
}

/// Checks a group whose hashes [`check_offered_group`] passed against what `stored`
/// says is under each index and against earlier fragments of the same group, and
/// decides what is new. Capacity is left to the caller, which knows how its counter
/// is locked.
pub(crate) fn plan_group(
    key: &PlacementKey,
    fragments: &[OfferedFragment<'_>],
    mut stored: impl FnMut(u16) -> Result<Option<FragmentHash>, StoreError>,
) -> Result<GroupPlan, StoreError> {
    let mut plan = GroupPlan {
        outcomes: Vec::with_capacity(fragments.len()),
        new: Vec::with_capacity(fragments.len()),
        needed: 0,
    };
    // Indexes this group adds, with their hash; a group is a block's n fragments, so a
    // linear search is cheaper than a map.
    let mut adding: Vec<(u16, FragmentHash)> = Vec::with_capacity(fragments.len());
    for (position, f) in fragments.iter().enumerate() {
        let already = match adding.iter().find(|(index, _)| *index == f.index) {
            Some((_, hash)) => Some(*hash),
            None => stored(f.index)?,
        };
        match already {
            Some(hash) if hash == f.hash => plan.outcomes.push(PutOutcome::AlreadyStored),
            Some(hash) => {
                return Err(StoreError::Conflict {
                    key: *key,
                    index: f.index,
                    stored: hash,
                    offered: f.hash,
                });
            }
            None => {
                let bytes = f.bytes.len() as u64;
                plan.outcomes.push(PutOutcome::Stored { bytes });
                plan.new.push(position);
                plan.needed += bytes;
                adding.push((f.index, f.hash));
            }
        }
    }
    Ok(plan)
}

/// Checks a body read back against the hash and length recorded at put time.
pub(crate) fn check_read(
    key: &PlacementKey,
    info: &FragmentInfo,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if bytes.len() as u64 != info.len {
        return Err(StoreError::Corrupt {
            key: *key,
            index: info.index,
            detail: format!("body is {} bytes, {} were stored", bytes.len(), info.len),
        });
    }
    let actual = fragment_hash(info.index, bytes);
    if actual != info.hash {
        return Err(StoreError::Corrupt {
            key: *key,
            index: info.index,
            detail: format!("body hashes to {actual:?}, {:?} was stored", info.hash),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> PlacementKey {
        PlacementKey(Id([byte; 32]))
    }

    #[test]
    fn ring_range_membership_wraps() {
        assert!(in_ring_range(&key(5), &key(3), &key(9)));
        assert!(!in_ring_range(&key(9), &key(3), &key(9)));
        assert!(in_ring_range(&key(0xf0), &key(0xe0), &key(0x10)));
        assert!(in_ring_range(&key(0x01), &key(0xe0), &key(0x10)));
        assert!(!in_ring_range(&key(0x20), &key(0xe0), &key(0x10)));
        assert!(in_ring_range(&key(0x20), &key(0x20), &key(0x20)));
    }

    #[test]
    fn ring_intervals_cover_the_range_in_clockwise_order() {
        assert_eq!(
            ring_intervals(&key(3), &key(9)),
            vec![(key(3), Some(key(9)))]
        );
        assert_eq!(
            ring_intervals(&key(9), &key(3)),
            vec![(key(9), None), (key(0), Some(key(3)))]
        );
        assert_eq!(ring_intervals(&key(0), &key(0)), vec![(key(0), None)]);
        assert_eq!(
            ring_intervals(&key(7), &key(7)),
            vec![(key(7), None), (key(0), Some(key(7)))]
        );
    }

    fn check_root_listing(store: &dyn NodeStore) {
        #![allow(clippy::unwrap_used)]
        let volume = |b: u8| VolumeKey(Id([b; 32]));
        assert_eq!(store.root_volumes(None, 10).unwrap(), Vec::new());
        for b in [9, 3, 7] {
            store.put_root(&volume(b), &[b]).unwrap();
        }
        store.put_root(&volume(3), b"replaced").unwrap();
        assert_eq!(
            store.root_volumes(None, 10).unwrap(),
            vec![volume(3), volume(7), volume(9)]
        );
        assert_eq!(
            store.root_volumes(None, 2).unwrap(),
            vec![volume(3), volume(7)]
        );
        assert_eq!(
            store.root_volumes(Some(&volume(3)), 10).unwrap(),
            vec![volume(7), volume(9)]
        );
        assert_eq!(
            store.root_volumes(Some(&volume(9)), 10).unwrap(),
            Vec::new()
        );
        assert_eq!(store.root_volumes(None, 0).unwrap(), Vec::new());
    }

    /// Metadata counts in `used` exactly, is refused when it does not fit (tombstones
    /// excepted), and gives its room back when removed.
    fn check_metadata_accounting(store: &dyn NodeStore) {
        #![allow(clippy::unwrap_used)]
        let file = FileId(Id([1; 32]));
        let id_record = |len: usize| record_bytes(32, len);
        store.put_certificate(&file, &[7; 100]).unwrap();
        assert_eq!(store.used(), id_record(100));
        store.put_certificate(&file, &[7; 40]).unwrap();
        assert_eq!(store.used(), id_record(40), "a replaced record counts once");
        store.put_pointer(&key(1), 3, &NodeId(Id([2; 32]))).unwrap();
        store.put_root(&VolumeKey(Id([3; 32])), &[1; 60]).unwrap();
        store.add_reference(&key(1), &file).unwrap();
        store.add_reference(&key(1), &file).unwrap();
        let all = id_record(40) + record_bytes(34, 32) + id_record(60) + record_bytes(64, 0);
        assert_eq!(store.used(), all);

        // The capacity is 1000 bytes: a 900-byte certificate does not fit.
        let big = FileId(Id([4; 32]));
        assert!(matches!(
            store.put_certificate(&big, &[0; 900]),
            Err(StoreError::Full { .. })
        ));
        assert!(matches!(
            store.put_root(&VolumeKey(Id([5; 32])), &[0; 900]),
            Err(StoreError::Full { .. })
        ));
        assert_eq!(store.get_certificate(&big).unwrap(), None);
        assert_eq!(store.used(), all, "a refused record changes nothing");
        // A fragment meets the same count: 1000 - all bytes are free.
        let body = vec![9u8; (1000 - all + 1) as usize];
        assert!(matches!(
            store.put_fragment(&key(2), 0, &fragment_hash(0, &body), &body),
            Err(StoreError::Full { .. })
        ));
        // A tombstone is counted but never refused: the reclaim it starts frees room.
        store.put_tombstone(&big, &[0; 900]).unwrap();
        assert_eq!(store.used(), all + id_record(900));

        store.delete_certificate(&file).unwrap();
        store.delete_pointer(&key(1), 3).unwrap();
        store.remove_reference(&key(1), &file).unwrap();
        assert_eq!(store.used(), id_record(60) + id_record(900));
    }

    #[test]
    fn both_stores_count_metadata_against_the_capacity() {
        #![allow(clippy::unwrap_used)]
        check_metadata_accounting(&MemoryStore::new(1000));
        let dir = tempfile::tempdir().unwrap();
        let used = {
            let store = DiskStore::open(dir.path(), 1000).unwrap();
            check_metadata_accounting(&store);
            store.used()
        };
        let reopened = DiskStore::open(dir.path(), 1000).unwrap();
        assert_eq!(reopened.used(), used, "the count is rebuilt at open");
    }

    /// Charges sum per owner, follow replacement and deletion of their fragment, and
    /// page in cursor order.
    fn check_charges(store: &dyn NodeStore) {
        #![allow(clippy::unwrap_used)]
        let (alice, bob) = (OwnerKey(Id([0xa1; 32])), OwnerKey(Id([0xb0; 32])));
        let put = |k: u8, index: u16, len: usize| {
            let body = vec![k; len];
            store
                .put_fragment(&key(k), index, &fragment_hash(index, &body), &body)
                .unwrap();
        };
        let charge = |owner, len, until| Charge {
            owner,
            file: FileId(Id([0xf0; 32])),
            len,
            uncertified_until: until,
        };
        store
            .put_charge(&key(1), 0, &charge(alice, 100, Some(50)))
            .unwrap();
        put(1, 0, 100);
        store
            .put_charge(&key(2), 1, &charge(alice, 30, None))
            .unwrap();
        put(2, 1, 30);
        store
            .put_charge(&key(2), 1, &charge(bob, 30, Some(9)))
            .unwrap();
        assert_eq!(store.owner_usage(&alice), 130);
        assert_eq!(store.owner_usage(&bob), 30);
        assert_eq!(store.owners_charged(), 2);
        // Replacing alice's charge on one fragment: counted once.
        store
            .put_charge(&key(1), 0, &charge(alice, 100, None))
            .unwrap();
        assert_eq!(store.owner_usage(&alice), 130);
        assert_eq!(
            store.charges(&key(2), 1).unwrap(),
            vec![charge(alice, 30, None), charge(bob, 30, Some(9))]
        );
        let first = store.charges_after(None, 2).unwrap();
        assert_eq!(first.len(), 2);
        let rest = store.charges_after(Some(&first[1].0), 10).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0.owner, bob);
        assert!(first[0].0 < first[1].0 && first[1].0 < rest[0].0);

        // Deleting the fragment deletes its charges and their usage.
        store.delete_fragment(&key(2), 1).unwrap();
        assert_eq!(store.owner_usage(&alice), 100);
        assert_eq!(store.owner_usage(&bob), 0);
        assert_eq!(store.owners_charged(), 1);
        assert!(store.charges(&key(2), 1).unwrap().is_empty());
        assert!(store.delete_charge(&key(1), 0, &alice).unwrap());
        assert_eq!(store.owner_usage(&alice), 0);
        assert_eq!(store.used(), 100, "charges' records gave their room back");
        store
            .put_charge(&key(1), 0, &charge(alice, 100, None))
            .unwrap();
    }

    #[test]
    fn both_stores_charge_fragments_to_owners() {
        #![allow(clippy::unwrap_used)]
        check_charges(&MemoryStore::new(1 << 20));
        let dir = tempfile::tempdir().unwrap();
        let alice = OwnerKey(Id([0xa1; 32]));
        let used = {
            let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
            check_charges(&store);
            // A charge written before a crash that lost its fragment's put.
            let orphan = Charge {
                owner: alice,
                file: FileId(Id([1; 32])),
                len: 5,
                uncertified_until: None,
            };
            store.put_charge(&key(7), 0, &orphan).unwrap();
            assert_eq!(store.owner_usage(&alice), 105);
            store.used() - record_bytes(CHARGE_KEY_LEN, CHARGE_PAYLOAD_LEN)
        };
        let reopened = DiskStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            reopened.owner_usage(&alice),
            100,
            "the orphan charge is dropped"
        );
        assert!(reopened.charges(&key(7), 0).unwrap().is_empty());
        assert_eq!(reopened.used(), used);
    }

    #[test]
    fn both_stores_list_their_root_records_in_order_from_a_cursor() {
        #![allow(clippy::unwrap_used)]
        check_root_listing(&MemoryStore::new(1 << 20));
        let dir = tempfile::tempdir().unwrap();
        check_root_listing(&DiskStore::open(dir.path(), 1 << 20).unwrap());
    }
}
