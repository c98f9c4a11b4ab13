//! [`DiskStore`]: the durable store of a real node. sled holds the index (and the
//! small records); fragment bodies live in files. `docs/store.md` has the
//! measurements that chose this layout over bodies inside sled.
//!
//! # Layout of a store directory
//!
//! ```text
//! DIR/index/                  sled database, trees `fragments-1`, `certificates-1`,
//!                             `pointers-1`, `roots-1`, `references-1`, `tombstones-1`,
//!                             `charges-1`
//! DIR/bodies/ab/<key>-<index>-<hash>   one file per fragment body (raw bytes),
//!                             fanned out by the first byte of the placement key
//! DIR/tmp/                    bodies being written; anything here at open is debris
//! ```
//!
//! Keys in sled are big-endian (`placement key ‖ index_be16`), so a prefix scan lists
//! the fragments under one placement key and a range scan lists a stretch of the ring
//! in order. Every value starts with a version byte ([`RECORD_VERSION`]).
//!
//! # Crash safety
//!
//! A put writes the body to `tmp/`, `fdatasync`s it, renames it into `bodies/`, fsyncs
//! that directory, and only then inserts the index record and flushes sled. So an index
//! record never exists without its durable body; a crash at any point leaves either no
//! record (the old state, plus maybe a temp file or an orphan body) or the whole new
//! fragment. A group put ([`NodeStore::put_fragments`]) does each step for the
//! whole group before the next (all bodies synced, all renamed, each directory synced
//! once) and inserts the records with one `sled::Batch`, which sled applies atomically
//! across a crash: after a crash the group is wholly there or wholly absent. A delete removes the record (flushed) before the file. [`DiskStore::open`]
//! removes temp files and orphan bodies, drops records whose body is missing (logging
//! them: that fragment is lost and repair must regenerate it), and recomputes `used`
//! as the sum of the recorded lengths and of the metadata records, so the accounting
//! is exact after a crash too. It also drops charges whose fragment is not recorded (a
//! put that crashed between its charge and its fragment, or a lost fragment) and sums
//! the rest per owner.
//!
//! # Full disk
//!
//! ENOSPC on a body write is [`StoreError::DiskFull`] and the put is undone. The index
//! must never meet ENOSPC (sled 0.34 then refuses every write until reopened), so puts
//! are refused while [`DEFAULT_DISK_HEADROOM`] bytes are still free; if it meets it
//! anyway, fragments it still records keep their bodies (see `write_fragments`).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{
    CHARGE_KEY_LEN, CHARGE_PAYLOAD_LEN, Charge, ChargeCursor, FragmentInfo, NodeStore,
    OfferedFragment, PutOutcome, StoreError, check_offered_group, check_read, check_record_room,
    plan_group, record_bytes, ring_intervals,
};
use cairn_core::id::{
    FileId, FragmentHash, ID_BYTES, Id, NodeId, OwnerKey, PlacementKey, VolumeKey,
};

/// The first byte of every value this store writes; bump it when a format changes.
pub const RECORD_VERSION: u8 = 1;

const FRAGMENTS_TREE: &str = "fragments-1";
const CERTIFICATES_TREE: &str = "certificates-1";
const POINTERS_TREE: &str = "pointers-1";
const ROOTS_TREE: &str = "roots-1";
/// Keys `placement key ‖ file id`, values just the version byte: a prefix scan lists
/// the files that reference one block.
const REFERENCES_TREE: &str = "references-1";
/// Keys file ids, values `version ‖ reclaim certificate bytes`.
const TOMBSTONES_TREE: &str = "tombstones-1";
/// Keys `placement key ‖ index_be16 ‖ owner key` (a prefix scan by fragment key lists
/// a fragment's charges), values `version ‖ file id ‖ len_be64 ‖ grant expiry_be64`
/// (0: the upload is certified).
const CHARGES_TREE: &str = "charges-1";
/// Bytes of a reference key: placement key, file id.
const REFERENCE_KEY_LEN: usize = 2 * ID_BYTES;

/// Bytes of a fragment index record: version, hash, length.
const FRAGMENT_RECORD_LEN: usize = 1 + ID_BYTES + 8;
/// Bytes of a fragment key: placement key, index.
const FRAGMENT_KEY_LEN: usize = ID_BYTES + 2;
/// Puts and deletes of the same fragment are serialised by one of this many locks.
const LOCK_STRIPES: usize = 64;

/// How long [`DiskStore::open`] waits for sled's lock on the index. sled lets go of it
/// from its background threads a moment after the last handle is dropped, so a store
/// reopened in the same process (a node restarted in place, a test) can find it still
/// held; another process holding the store open still fails, after this long.
const INDEX_LOCK_PATIENCE: Duration = Duration::from_secs(5);
/// How many threads `fdatasync` a group's bodies at once unless
/// [`DiskStore::with_sync_threads`] says otherwise: a 4+2 block's six fragments all at
/// once (`docs/store.md` has the measurement).
pub const DEFAULT_SYNC_THREADS: usize = 6;
/// The most threads one group put uses, whatever is asked.
const MAX_SYNC_THREADS: usize = 16;
/// Bytes the store keeps free on its file system for the sled index unless
/// [`DiskStore::with_disk_headroom`] says otherwise.
///
/// Why (the full-disk case, found by `tests/integration/store_full_disk.rs`): sled
/// 0.34 latches the first I/O error of its log. Once one index write meets ENOSPC
/// (a body took the last free block, then the record needed one more), every later
/// index write fails, deletes included, so the store could not even free space until
/// it was reopened. A put whose bodies would leave less than this free is therefore
/// refused with [`StoreError::DiskFull`] before anything is written, and small records
/// (certificates, pointers, roots) may use only half of it, so deletes always find
/// room. 1 MiB is ~10^4 fragment records, far more than one flush writes.
pub const DEFAULT_DISK_HEADROOM: u64 = 1 << 20;

/// What [`DiskStore::open`] found and cleaned up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenCleanup {
    /// Files left in `tmp/` by interrupted puts, removed.
    pub temp_files_removed: u64,
    /// Body files without an index record (a put interrupted after its rename, or a
    /// delete after its record was removed), removed.
    pub orphan_bodies_removed: u64,
    /// Index records whose body file was missing, removed (those fragments are lost).
    pub lost_records_removed: u64,
    /// Fragments in the store after cleanup.
    pub fragments: u64,
}

/// Why [`DiskStore::write_fragments`] failed, and what of the group it had to leave
/// stored.
#[derive(Debug)]
struct WriteFailed {
    error: StoreError,
    /// Bytes of the group still recorded and kept (0 unless the index refused the undo).
    kept: u64,
}

impl WriteFailed {
    /// A failure after which nothing of the group is stored.
    fn undone(error: StoreError) -> WriteFailed {
        WriteFailed { error, kept: 0 }
    }
}

/// The durable [`NodeStore`]: sled index plus one file per fragment body.
#[derive(Debug)]
pub struct DiskStore {
    dir: PathBuf,
    bodies: PathBuf,
    tmp: PathBuf,
    db: sled::Db,
    fragments: sled::Tree,
    certificates: sled::Tree,
    pointers: sled::Tree,
    roots: sled::Tree,
    references: sled::Tree,
    tombstones: sled::Tree,
    charges: sled::Tree,
    /// Bytes charged per owner (the sum of its charges; owners at zero are absent).
    owners: Mutex<BTreeMap<OwnerKey, u64>>,
    /// Held while checking for a tombstone and writing what it forbids (a certificate
    /// or a reference), and while writing a tombstone, so none slips in after one.
    reclaim_lock: Mutex<()>,
    capacity: u64,
    /// Bytes of bodies and metadata records stored, plus bytes reserved by puts in
    /// progress.
    used: Mutex<u64>,
    stripes: Vec<Mutex<()>>,
    temp_sequence: AtomicU64,
    /// Threads writing and syncing one group's bodies at once.
    sync_threads: usize,
    /// Bytes kept free on the file system for the index (0: no check).
    disk_headroom: u64,
    /// File-system bytes of bodies being written by puts in progress (not yet visible
    /// in the file system's free count, or only partly), so concurrent puts do not all
    /// spend the same free space.
    bodies_in_flight: AtomicU64,
    cleanup: OpenCleanup,
}

impl DiskStore {
    /// Opens (creating if needed) the store in `dir`, holding at most `capacity` bytes
    /// of fragment bodies. Cleans up after any crash (see the module docs) and logs
    /// what it removed. Fails if another process has the store open (sled's lock).
    pub fn open(dir: impl AsRef<Path>, capacity: u64) -> Result<DiskStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let bodies = dir.join("bodies");
        let tmp = dir.join("tmp");
        for path in [&dir, &bodies, &tmp] {
            fs::create_dir_all(path).map_err(|e| StoreError::io("creating directory", path, e))?;
        }
        let mut created_fanout = false;
        for byte in 0..=255u8 {
            let path = bodies.join(format!("{byte:02x}"));
            match fs::create_dir(&path) {
                Ok(()) => created_fanout = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io("creating directory", &path, e)),
            }
        }
        if created_fanout {
            sync_dir(&bodies)?;
            sync_dir(&dir)?;
        }

        let db = open_index(&dir.join("index"))?;
        let open_tree = |name: &'static str| {
            db.open_tree(name)
                .map_err(|e| StoreError::index("opening a tree", e))
        };
        let mut store = DiskStore {
            fragments: open_tree(FRAGMENTS_TREE)?,
            certificates: open_tree(CERTIFICATES_TREE)?,
            pointers: open_tree(POINTERS_TREE)?,
            roots: open_tree(ROOTS_TREE)?,
            references: open_tree(REFERENCES_TREE)?,
            tombstones: open_tree(TOMBSTONES_TREE)?,
            charges: open_tree(CHARGES_TREE)?,
            owners: Mutex::new(BTreeMap::new()),
            reclaim_lock: Mutex::new(()),
            db,
            dir,
            bodies,
            tmp,
            capacity,
            used: Mutex::new(0),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            temp_sequence: AtomicU64::new(0),
            sync_threads: DEFAULT_SYNC_THREADS,
            disk_headroom: DEFAULT_DISK_HEADROOM,
            bodies_in_flight: AtomicU64::new(0),
            cleanup: OpenCleanup::default(),
        };
        let (cleanup, used, owners) = store.recover()?;
        store.cleanup = cleanup;
        *store.used.get_mut().unwrap_or_else(|p| p.into_inner()) = used;
        *store.owners.get_mut().unwrap_or_else(|p| p.into_inner()) = owners;
        if cleanup.temp_files_removed + cleanup.orphan_bodies_removed + cleanup.lost_records_removed
            > 0
        {
            warn!(
                dir = %store.dir.display(),
                temp_files_removed = cleanup.temp_files_removed,
                orphan_bodies_removed = cleanup.orphan_bodies_removed,
                lost_records_removed = cleanup.lost_records_removed,
                "store opened after an unclean stop: removed leftovers"
            );
        }
        if used > capacity {
            warn!(
                used,
                capacity, "store holds more than its capacity; refusing puts until it shrinks"
            );
        }
        info!(
            dir = %store.dir.display(),
            fragments = cleanup.fragments,
            used,
            capacity,
            "store opened"
        );
        Ok(store)
    }

    /// Sets how many threads `fdatasync` the bodies of one
    /// [`NodeStore::put_fragments`] group at once, once all are written (default
    /// [`DEFAULT_SYNC_THREADS`]; 1 means one after another; at most 16 are used).
    /// Durability is the same either way: the call returns once every body is synced.
    pub fn with_sync_threads(mut self, threads: usize) -> DiskStore {
        self.sync_threads = threads.clamp(1, MAX_SYNC_THREADS);
        self
    }

    /// Sets how many bytes puts leave free on the store's file system for the index
    /// (default [`DEFAULT_DISK_HEADROOM`], which says why). 0 turns the check off: the
    /// file system's own ENOSPC is then the only limit besides the capacity, and an
    /// index write meeting it leaves the index refusing writes until the store is
    /// reopened (tests use 0 to provoke ENOSPC on body writes).
    pub fn with_disk_headroom(mut self, bytes: u64) -> DiskStore {
        self.disk_headroom = bytes;
        self
    }

    /// Refuses with [`StoreError::DiskFull`] unless the file system keeps `headroom`
    /// bytes free after bodies of `lens` bytes (each rounded up to whole blocks) and
    /// those of puts in progress. On success returns the bytes it added to
    /// `bodies_in_flight`, which the caller gives back when its writes are done.
    fn reserve_disk(
        &self,
        lens: impl Iterator<Item = u64>,
        headroom: u64,
        operation: &'static str,
    ) -> Result<u64, StoreError> {
        if self.disk_headroom == 0 {
            return Ok(0);
        }
        let stat = rustix::fs::statvfs(&self.dir)
            .map_err(|e| StoreError::io("checking free space in", &self.dir, e.into()))?;
        let block = stat.f_frsize.max(1);
        let needed: u64 = lens.map(|len| len.div_ceil(block) * block).sum();
        let available = stat.f_bavail.saturating_mul(block);
        let in_flight = self.bodies_in_flight.fetch_add(needed, Ordering::SeqCst);
        if available.saturating_sub(in_flight) < needed.saturating_add(headroom) {
            self.bodies_in_flight.fetch_sub(needed, Ordering::SeqCst);
            return Err(StoreError::DiskFull {
                operation,
                path: self.dir.clone(),
            });
        }
        Ok(needed)
    }

    /// What [`DiskStore::open`] cleaned up.
    pub fn open_cleanup(&self) -> OpenCleanup {
        self.cleanup
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where bodies are written before being renamed into place (empty after open).
    pub fn temp_dir(&self) -> &Path {
        &self.tmp
    }

    /// The directory holding every body file (in per-byte subdirectories).
    pub fn bodies_dir(&self) -> &Path {
        &self.bodies
    }

    /// The body file of a stored fragment (for diagnostics and corruption tests).
    pub fn body_path(&self, key: &PlacementKey, index: u16) -> Result<Option<PathBuf>, StoreError> {
        Ok(self
            .record(key, index)?
            .map(|info| self.body_file(key, &info)))
    }

    fn body_file(&self, key: &PlacementKey, info: &FragmentInfo) -> PathBuf {
        self.bodies
            .join(format!("{:02x}", key.0.0[0]))
            .join(body_name(key, info.index, &info.hash))
    }

    /// The body file's bytes, or `None` if the file does not exist.
    fn read_body(
        &self,
        key: &PlacementKey,
        info: &FragmentInfo,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.body_file(key, info);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("reading a body", path, e)),
        }
    }

    fn stripe_slot(key: &PlacementKey, index: u16) -> usize {
        (usize::from(key.0.0[0]) ^ usize::from(key.0.0[1]) << 8 ^ usize::from(index)) % LOCK_STRIPES
    }

    fn stripe(&self, key: &PlacementKey, index: u16) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.stripes[Self::stripe_slot(key, index)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The locks of every fragment of a group, each taken once and in ascending slot
    /// order, so two groups (or a group and a single put) can never deadlock.
    fn stripes(
        &self,
        key: &PlacementKey,
        indexes: impl Iterator<Item = u16>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let mut slots: Vec<usize> = indexes.map(|index| Self::stripe_slot(key, index)).collect();
        slots.sort_unstable();
        slots.dedup();
        slots
            .into_iter()
            .map(|slot| self.stripes[slot].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    fn used_lock(&self) -> MutexGuard<'_, u64> {
        // Updates of the counter are single arithmetic steps; poisoning cannot tear them.
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, key: &PlacementKey, index: u16) -> Result<Option<FragmentInfo>, StoreError> {
        let value = self
            .fragments
            .get(fragment_key(key, index))
            .map_err(|e| StoreError::index("reading a fragment record", e))?;
        value.map(|v| decode_fragment_record(index, &v)).transpose()
    }

    fn flush(&self, operation: &'static str) -> Result<(), StoreError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StoreError::index(operation, e))
    }

    /// Writes the bodies durably into place, then records them in the index with one
    /// sled batch and one flush. On failure undoes what it did (temp files, renamed
    /// bodies, records), so the running store is as before; the one exception (the
    /// index refusing the undo too) is in [`WriteFailed::kept`].
    fn write_fragments(
        &self,
        key: &PlacementKey,
        new: &[(FragmentInfo, &[u8])],
    ) -> Result<(), WriteFailed> {
        let temps: Vec<PathBuf> = new
            .iter()
            .map(|(info, _)| {
                let sequence = self.temp_sequence.fetch_add(1, Ordering::Relaxed);
                self.tmp.join(format!(
                    "{}-{:04x}-{sequence}.tmp",
                    hex(&key.0.0),
                    info.index
                ))
            })
            .collect();
        let bodies: Vec<PathBuf> = new
            .iter()
            .map(|(info, _)| self.body_file(key, info))
            .collect();

        let jobs: Vec<(&Path, &[u8])> = temps
            .iter()
            .zip(new)
            .map(|(temp, (_, bytes))| (temp.as_path(), *bytes))
            .collect();
        if let Err(err) = write_all_synced(&jobs, self.sync_threads) {
            // Best effort: whatever is left is removed at the next open anyway.
            for temp in &temps {
                let _ = fs::remove_file(temp);
            }
            return Err(WriteFailed::undone(err));
        }
        for (renamed, (temp, body)) in temps.iter().zip(&bodies).enumerate() {
            if let Err(e) = fs::rename(temp, body) {
                for body in &bodies[..renamed] {
                    let _ = fs::remove_file(body);
                }
                for temp in &temps[renamed..] {
                    let _ = fs::remove_file(temp);
                }
                return Err(WriteFailed::undone(StoreError::io(
                    "renaming a body into",
                    body,
                    e,
                )));
            }
        }

        let mut directories: Vec<&Path> = bodies
            .iter()
            .map(|body| body.parent().unwrap_or(&self.bodies))
            .collect();
        directories.sort_unstable();
        directories.dedup();
        let recorded = directories
            .iter()
            .try_for_each(|directory| sync_dir(directory))
            .and_then(|()| {
                let mut batch = sled::Batch::default();
                for (info, _) in new {
                    batch.insert(
                        &fragment_key(key, info.index)[..],
                        &encode_fragment_record(info)[..],
                    );
                }
                self.fragments
                    .apply_batch(batch)
                    .map_err(|e| StoreError::index("recording fragments", e))?;
                self.flush("flushing fragment records")
            });
        if let Err(err) = recorded {
            // Undo so the running store stays consistent; if the records did reach the
            // disk, the next open drops them as lost (their bodies are gone), keeping
            // `used` exact either way.
            let mut undo = sled::Batch::default();
            for (info, _) in new {
                undo.remove(&fragment_key(key, info.index)[..]);
            }
            if self.fragments.apply_batch(undo).is_ok() {
                for body in &bodies {
                    let _ = fs::remove_file(body);
                }
                return Err(WriteFailed::undone(err));
            }
            // Full disk, found by tests/integration/store_full_disk.rs: sled 0.34 latches
            // the ENOSPC of the flush, so the undo is refused too and the records may
            // still be in the running index. Removing their bodies would leave records
            // pointing at nothing (reads `Corrupt`, `used` short of the index). So keep
            // the body of every fragment still recorded (it stays stored and counted)
            // and remove the others.
            let mut failed = WriteFailed::undone(err);
            for ((info, _), body) in new.iter().zip(&bodies) {
                match self.record(key, info.index) {
                    Ok(Some(recorded)) if recorded.hash == info.hash => failed.kept += info.len,
                    _ => {
                        let _ = fs::remove_file(body);
                    }
                }
            }
            warn!(
                key = ?key,
                kept_bytes = failed.kept,
                error = %failed.error,
                "the index refused a put and its undo; recorded fragments kept"
            );
            return Err(failed);
        }
        Ok(())
    }

    /// Crash recovery at open: returns what was cleaned, the bytes stored (bodies and
    /// metadata) and the bytes charged per owner.
    #[allow(clippy::type_complexity)]
    fn recover(&self) -> Result<(OpenCleanup, u64, BTreeMap<OwnerKey, u64>), StoreError> {
        let mut cleanup = OpenCleanup::default();

        for entry in read_dir(&self.tmp)? {
            let path = entry
                .map_err(|e| StoreError::io("listing", &self.tmp, e))?
                .path();
            remove_path(&path)?;
            cleanup.temp_files_removed += 1;
        }

        // Bodies on disk: keep those the index records with the same hash.
        let mut present: HashSet<(PlacementKey, u16)> = HashSet::new();
        for fan in read_dir(&self.bodies)? {
            let fan = fan
                .map_err(|e| StoreError::io("listing", &self.bodies, e))?
                .path();
            if !fan.is_dir() {
                continue;
            }
            for entry in read_dir(&fan)? {
                let path = entry
                    .map_err(|e| StoreError::io("listing", &fan, e))?
                    .path();
                let Some((key, index, hash)) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_body_name)
                else {
                    warn!(path = %path.display(), "unknown file among fragment bodies; left alone");
                    continue;
                };
                match self.record(&key, index)? {
                    Some(info) if info.hash == hash => {
                        present.insert((key, index));
                    }
                    _ => {
                        remove_path(&path)?;
                        cleanup.orphan_bodies_removed += 1;
                    }
                }
            }
        }

        // Records: drop those without a body, and sum the rest.
        let mut used = 0u64;
        let mut lost = Vec::new();
        for item in self.fragments.iter() {
            let (k, v) = item.map_err(|e| StoreError::index("scanning fragment records", e))?;
            let (key, index) = decode_fragment_key(&k)?;
            let info = decode_fragment_record(index, &v)?;
            if present.contains(&(key, index)) {
                used += info.len;
                cleanup.fragments += 1;
            } else {
                warn!(key = ?key, index, "fragment body missing at open; record dropped (fragment lost)");
                lost.push(k);
            }
        }
        for k in &lost {
            self.fragments
                .remove(k)
                .map_err(|e| StoreError::index("dropping a lost record", e))?;
        }
        cleanup.lost_records_removed = lost.len() as u64;

        // Metadata records count against the capacity too.
        for tree in [
            &self.certificates,
            &self.pointers,
            &self.roots,
            &self.references,
            &self.tombstones,
        ] {
            for item in tree.iter() {
                let (k, v) = item.map_err(|e| StoreError::index("summing metadata", e))?;
                used += stored_bytes(&k, &v);
            }
        }
        // Charges: drop those whose fragment is gone, sum the rest per owner.
        let mut owners: BTreeMap<OwnerKey, u64> = BTreeMap::new();
        let mut orphans = Vec::new();
        for item in self.charges.iter() {
            let (k, v) = item.map_err(|e| StoreError::index("scanning charges", e))?;
            let cursor = decode_charge_key(&k)?;
            let held = self
                .fragments
                .contains_key(fragment_key(&cursor.key, cursor.index))
                .map_err(|e| StoreError::index("reading a fragment record", e))?;
            if held {
                let charge = decode_charge(cursor.owner, &v)?;
                *owners.entry(charge.owner).or_insert(0) += charge.len;
                used += stored_bytes(&k, &v);
            } else {
                orphans.push(k);
            }
        }
        for k in &orphans {
            self.charges
                .remove(k)
                .map_err(|e| StoreError::index("dropping a charge without a fragment", e))?;
        }
        owners.retain(|_, bytes| *bytes > 0);
        if !lost.is_empty() || !orphans.is_empty() {
            self.flush("flushing after dropping lost records")?;
        }
        Ok((cleanup, used, owners))
    }

    /// Writes a metadata record (durable on return), counting it against the
    /// capacity (refused when it does not fit, unless `admit` is [`Admit::Always`]);
    /// returns the value it replaced.
    fn put_small(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        payload: &[u8],
        what: &'static str,
        admit: Admit,
        sync: Sync,
    ) -> Result<Option<sled::IVec>, StoreError> {
        let mut value = Vec::with_capacity(1 + payload.len());
        value.push(RECORD_VERSION);
        value.extend_from_slice(payload);
        let new_bytes = record_bytes(key.len(), payload.len());
        let old_bytes = tree
            .get(key)
            .map_err(|e| StoreError::index("reading a record", e))?
            .map_or(0, |old| stored_bytes(key, &old));
        {
            let mut used = self.used_lock();
            if admit == Admit::WithinCapacity {
                check_record_room(old_bytes, new_bytes, *used, self.capacity)?;
            }
            // Reserved in full until the insert says what it replaced.
            *used = used.saturating_add(new_bytes);
        }
        // Full disk: small records may use only half the index headroom, so the
        // other half stays for deletes (see DEFAULT_DISK_HEADROOM).
        let reserved = match self.reserve_disk(
            std::iter::once(new_bytes),
            self.disk_headroom / 2,
            "reserving index headroom for a record in",
        ) {
            Ok(reserved) => reserved,
            Err(e) => {
                self.unaccount(new_bytes);
                return Err(e);
            }
        };
        let stored = match tree.insert(key, value) {
            Ok(previous) => {
                self.unaccount(previous.as_ref().map_or(0, |old| stored_bytes(key, old)));
                match sync {
                    Sync::Now => self.flush(what).map(|()| previous),
                    Sync::WithTheNextFlush => Ok(previous),
                }
            }
            Err(e) => {
                self.unaccount(new_bytes);
                Err(StoreError::index(what, e))
            }
        };
        self.bodies_in_flight.fetch_sub(reserved, Ordering::SeqCst);
        stored
    }

    /// Takes `bytes` off `used` (a record removed or replaced).
    fn unaccount(&self, bytes: u64) {
        let mut used = self.used_lock();
        *used = used.saturating_sub(bytes);
    }

    fn owners_lock(&self) -> MutexGuard<'_, BTreeMap<OwnerKey, u64>> {
        // Updates are single map operations; poisoning cannot tear them.
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves `owner`'s usage from `old` to `new` bytes, forgetting an owner at zero.
    fn charge_owner(&self, owner: OwnerKey, old: u64, new: u64) {
        let mut owners = self.owners_lock();
        let usage = owners.entry(owner).or_insert(0);
        *usage = usage.saturating_sub(old).saturating_add(new);
        if *usage == 0 {
            owners.remove(&owner);
        }
    }

    /// Removes the charges of a fragment (no flush: the caller flushes).
    fn remove_charges_of(&self, key: &PlacementKey, index: u16) -> Result<(), StoreError> {
        for item in self.charges.scan_prefix(fragment_key(key, index)) {
            let (k, _) = item.map_err(|e| StoreError::index("listing charges", e))?;
            let removed = self
                .charges
                .remove(&k)
                .map_err(|e| StoreError::index("removing a charge", e))?;
            if let Some(old) = removed {
                self.forget_charge(&k, &old)?;
            }
        }
        Ok(())
    }

    /// Accounts a removed charge record.
    fn forget_charge(&self, k: &[u8], old: &[u8]) -> Result<(), StoreError> {
        self.unaccount(stored_bytes(k, old));
        let cursor = decode_charge_key(k)?;
        let charge = decode_charge(cursor.owner, old)?;
        self.charge_owner(charge.owner, charge.len, 0);
        Ok(())
    }

    fn reclaim_guard(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.reclaim_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`StoreError::Reclaimed`] if `file` has a tombstone.
    fn refuse_reclaimed(&self, file: &FileId) -> Result<(), StoreError> {
        let reclaimed = self
            .tombstones
            .contains_key(file.as_bytes())
            .map_err(|e| StoreError::index("reading a tombstone", e))?;
        if reclaimed {
            return Err(StoreError::Reclaimed { file: *file });
        }
        Ok(())
    }

    fn get_small(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let value = tree
            .get(key)
            .map_err(|e| StoreError::index("reading a record", e))?;
        value
            .map(|v| strip_version(name, &v).map(<[u8]>::to_vec))
            .transpose()
    }

    /// Removes a metadata record (durable on return); returns the value removed.
    fn delete_small(
        &self,
        tree: &sled::Tree,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<sled::IVec>, StoreError> {
        let removed = tree.remove(key).map_err(|e| StoreError::index(what, e))?;
        if let Some(old) = &removed {
            self.unaccount(stored_bytes(key, old));
            self.flush(what)?;
        }
        Ok(removed)
    }
}

impl NodeStore for DiskStore {
    fn put_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
        expected: &FragmentHash,
        bytes: &[u8],
    ) -> Result<PutOutcome, StoreError> {
        // One path for one fragment and for a group: a group of one costs what a
        // single put always did (one body sync, one directory sync, one flush).
        let offered = OfferedFragment {
            index,
            hash: *expected,
            bytes,
        };
        let outcomes = self.put_fragments(key, &[offered])?;
        // A group of one has exactly one outcome; the fallback is never taken.
        Ok(outcomes
            .first()
            .copied()
            .unwrap_or(PutOutcome::AlreadyStored))
    }

    /// Group commit: checks everything, then writes every new body, `fdatasync`s them
    /// (on up to [`DiskStore::with_sync_threads`] threads at once), renames them all,
    /// fsyncs each directory touched once, and records them in one sled batch with
    /// one flush. See the module docs for why a crash leaves all or nothing.
    fn put_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[OfferedFragment<'_>],
    ) -> Result<Vec<PutOutcome>, StoreError> {
        check_offered_group(key, fragments)?;
        let _serialised = self.stripes(key, fragments.iter().map(|f| f.index));
        let plan = plan_group(key, fragments, |index| {
            Ok(self.record(key, index)?.map(|info| info.hash))
        })?;
        if plan.new.is_empty() {
            return Ok(plan.outcomes);
        }
        let reserved_disk;
        {
            let mut used = self.used_lock();
            let free = self.capacity.saturating_sub(*used);
            if plan.needed > free {
                return Err(StoreError::Full {
                    needed: plan.needed,
                    free,
                    capacity: self.capacity,
                });
            }
            // Full disk: refuse while the index still has room (DEFAULT_DISK_HEADROOM).
            reserved_disk = self.reserve_disk(
                plan.new.iter().map(|&p| fragments[p].bytes.len() as u64),
                self.disk_headroom,
                "reserving room for new bodies in",
            )?;
            *used += plan.needed; // reserved until the writes succeed or fail
        }
        let new: Vec<(FragmentInfo, &[u8])> = plan
            .new
            .iter()
            .map(|&position| {
                let f = &fragments[position];
                let info = FragmentInfo {
                    index: f.index,
                    hash: f.hash,
                    len: f.bytes.len() as u64,
                };
                (info, f.bytes)
            })
            .collect();
        let written = self.write_fragments(key, &new);
        self.bodies_in_flight
            .fetch_sub(reserved_disk, Ordering::SeqCst);
        if let Err(failed) = written {
            *self.used_lock() -= plan.needed - failed.kept;
            return Err(failed.error);
        }
        Ok(plan.outcomes)
    }

    fn get_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(info) = self.record(key, index)? else {
            return Ok(None);
        };
        let bytes = match self.read_body(key, &info)? {
            Some(bytes) => bytes,
            None => {
                // The body vanished after the record was read: a delete racing this
                // read, or a lost file. Look again with puts and deletes of this
                // fragment held off, so only a real loss is reported.
                let _serialised = self.stripe(key, index);
                let Some(info) = self.record(key, index)? else {
                    return Ok(None);
                };
                match self.read_body(key, &info)? {
                    Some(bytes) => bytes,
                    None => {
                        return Err(StoreError::Corrupt {
                            key: *key,
                            index,
                            detail: format!(
                                "body file {} is missing",
                                self.body_file(key, &info).display()
                            ),
                        });
                    }
                }
            }
        };
        check_read(key, &info, &bytes)?;
        Ok(Some(bytes))
    }

    fn fragment_info(
        &self,
        key: &PlacementKey,
        index: u16,
    ) -> Result<Option<FragmentInfo>, StoreError> {
        self.record(key, index)
    }

    fn delete_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<u64>, StoreError> {
        let _serialised = self.stripe(key, index);
        let Some(info) = self.record(key, index)? else {
            return Ok(None);
        };
        self.fragments
            .remove(fragment_key(key, index))
            .map_err(|e| StoreError::index("removing a fragment record", e))?;
        // A crash before the flush below leaves charges without their fragment, which
        // the next open drops.
        self.remove_charges_of(key, index)?;
        self.flush("flushing a fragment removal")?;
        *self.used_lock() -= info.len;
        let path = self.body_file(key, &info);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // The record is gone, so the fragment is deleted; the file is an orphan
            // that the next open removes.
            Err(e) => warn!(path = %path.display(), error = %e, "could not remove a deleted body"),
        }
        Ok(Some(info.len))
    }

    fn fragments_under(&self, key: &PlacementKey) -> Result<Vec<FragmentInfo>, StoreError> {
        self.fragments
            .scan_prefix(key.as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(|e| StoreError::index("listing fragments", e))?;
                let (_, index) = decode_fragment_key(&k)?;
                decode_fragment_record(index, &v)
            })
            .collect()
    }

    fn placement_keys_in(
        &self,
        start: &PlacementKey,
        end: &PlacementKey,
    ) -> Result<Vec<PlacementKey>, StoreError> {
        let mut keys: Vec<PlacementKey> = Vec::new();
        for (low, high) in ring_intervals(start, end) {
            let low = fragment_key(&low, 0);
            let items = match high {
                Some(high) => self.fragments.range(low..fragment_key(&high, 0)),
                None => self.fragments.range(low..),
            };
            for item in items {
                let (k, _) = item.map_err(|e| StoreError::index("listing placement keys", e))?;
                let (key, _) = decode_fragment_key(&k)?;
                if keys.last() != Some(&key) {
                    keys.push(key);
                }
            }
        }
        Ok(keys)
    }

    fn put_certificate(&self, file: &FileId, signed: &[u8]) -> Result<(), StoreError> {
        let _reclaim = self.reclaim_guard();
        self.refuse_reclaimed(file)?;
        self.put_small(
            &self.certificates,
            file.as_bytes(),
            signed,
            "storing a certificate",
            Admit::WithinCapacity,
            Sync::Now,
        )
        .map(drop)
    }

    fn get_certificate(&self, file: &FileId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_small(&self.certificates, CERTIFICATES_TREE, file.as_bytes())
    }

    fn delete_certificate(&self, file: &FileId) -> Result<bool, StoreError> {
        self.delete_small(
            &self.certificates,
            file.as_bytes(),
            "deleting a certificate",
        )
        .map(|removed| removed.is_some())
    }

    fn certificate_files(
        &self,
        after: Option<&FileId>,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        let start: Vec<u8> = after.map_or_else(Vec::new, |f| f.as_bytes().to_vec());
        let mut files = Vec::new();
        for entry in self.certificates.range(start..) {
            let (key, _) = entry.map_err(|e| StoreError::index("listing certificates", e))?;
            let Ok(bytes) = <[u8; 32]>::try_from(key.as_ref()) else {
                continue;
            };
            let file = FileId(Id(bytes));
            if Some(&file) == after {
                continue;
            }
            files.push(file);
            if files.len() >= limit {
                break;
            }
        }
        Ok(files)
    }

    fn put_pointer(
        &self,
        key: &PlacementKey,
        index: u16,
        holder: &NodeId,
    ) -> Result<(), StoreError> {
        self.put_small(
            &self.pointers,
            &fragment_key(key, index),
            holder.as_bytes(),
            "storing a pointer",
            Admit::WithinCapacity,
            Sync::Now,
        )
        .map(drop)
    }

    fn get_pointer(&self, key: &PlacementKey, index: u16) -> Result<Option<NodeId>, StoreError> {
        self.get_small(&self.pointers, POINTERS_TREE, &fragment_key(key, index))?
            .map(|payload| decode_node(&payload))
            .transpose()
    }

    fn delete_pointer(&self, key: &PlacementKey, index: u16) -> Result<bool, StoreError> {
        self.delete_small(
            &self.pointers,
            &fragment_key(key, index),
            "deleting a pointer",
        )
        .map(|removed| removed.is_some())
    }

    fn pointers_under(&self, key: &PlacementKey) -> Result<Vec<(u16, NodeId)>, StoreError> {
        self.pointers
            .scan_prefix(key.as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(|e| StoreError::index("listing pointers", e))?;
                let (_, index) = decode_fragment_key(&k)?;
                Ok((index, decode_node(strip_version(POINTERS_TREE, &v)?)?))
            })
            .collect()
    }

    fn add_reference(&self, key: &PlacementKey, file: &FileId) -> Result<(), StoreError> {
        let _reclaim = self.reclaim_guard();
        self.refuse_reclaimed(file)?;
        let reference = reference_key(key, file);
        let present = self
            .references
            .contains_key(reference)
            .map_err(|e| StoreError::index("reading a reference", e))?;
        if present {
            return Ok(());
        }
        self.put_small(
            &self.references,
            &reference,
            &[],
            "storing a reference",
            Admit::WithinCapacity,
            Sync::Now,
        )
        .map(drop)
    }

    fn remove_reference(&self, key: &PlacementKey, file: &FileId) -> Result<usize, StoreError> {
        self.delete_small(
            &self.references,
            &reference_key(key, file),
            "removing a reference",
        )?;
        Ok(self.references(key)?.len())
    }

    fn references(&self, key: &PlacementKey) -> Result<Vec<FileId>, StoreError> {
        self.references
            .scan_prefix(key.as_bytes())
            .map(|item| {
                let (k, v) = item.map_err(|e| StoreError::index("listing references", e))?;
                strip_version(REFERENCES_TREE, &v)?;
                decode_reference_key(&k)
            })
            .collect()
    }

    fn put_tombstone(&self, file: &FileId, reclaim: &[u8]) -> Result<(), StoreError> {
        let _reclaim = self.reclaim_guard();
        // Never refused for room: the reclaim it starts frees room.
        self.put_small(
            &self.tombstones,
            file.as_bytes(),
            reclaim,
            "storing a tombstone",
            Admit::Always,
            Sync::Now,
        )
        .map(drop)
    }

    fn get_tombstone(&self, file: &FileId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_small(&self.tombstones, TOMBSTONES_TREE, file.as_bytes())
    }

    fn put_root(&self, volume: &VolumeKey, signed: &[u8]) -> Result<(), StoreError> {
        self.put_small(
            &self.roots,
            volume.as_bytes(),
            signed,
            "storing a root record",
            Admit::WithinCapacity,
            Sync::Now,
        )
        .map(drop)
    }

    fn get_root(&self, volume: &VolumeKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_small(&self.roots, ROOTS_TREE, volume.as_bytes())
    }

    fn root_volumes(
        &self,
        after: Option<&VolumeKey>,
        limit: usize,
    ) -> Result<Vec<VolumeKey>, StoreError> {
        let start: Vec<u8> = after.map_or_else(Vec::new, |v| v.as_bytes().to_vec());
        let mut volumes = Vec::new();
        for entry in self.roots.range(start..) {
            if volumes.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(|e| StoreError::index("listing root records", e))?;
            let Ok(bytes) = <[u8; 32]>::try_from(key.as_ref()) else {
                continue;
            };
            let volume = VolumeKey(Id(bytes));
            if Some(&volume) != after {
                volumes.push(volume);
            }
        }
        Ok(volumes)
    }

    fn put_charge(
        &self,
        key: &PlacementKey,
        index: u16,
        charge: &Charge,
    ) -> Result<(), StoreError> {
        let k = charge_key(key, index, &charge.owner);
        // The owner's usage follows what the insert replaced, so two puts racing on
        // one charge still leave it exact.
        let previous = self.put_small(
            &self.charges,
            &k,
            &encode_charge(charge),
            "storing a charge",
            Admit::WithinCapacity,
            // Not flushed on its own: the fragment it charges (or the reference
            // that follows) is written next and flushed, and sled's log keeps the
            // order, so the charge is durable before them, never after.
            Sync::WithTheNextFlush,
        )?;
        let old = previous
            .map(|old| decode_charge(charge.owner, &old))
            .transpose()?
            .map_or(0, |old| old.len);
        self.charge_owner(charge.owner, old, charge.len);
        Ok(())
    }

    fn delete_charge(
        &self,
        key: &PlacementKey,
        index: u16,
        owner: &OwnerKey,
    ) -> Result<bool, StoreError> {
        let k = charge_key(key, index, owner);
        let removed = self
            .charges
            .remove(k)
            .map_err(|e| StoreError::index("removing a charge", e))?;
        match removed {
            Some(old) => {
                self.forget_charge(&k, &old)?;
                self.flush("removing a charge")?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn charges(&self, key: &PlacementKey, index: u16) -> Result<Vec<Charge>, StoreError> {
        self.charges
            .scan_prefix(fragment_key(key, index))
            .map(|item| {
                let (k, v) = item.map_err(|e| StoreError::index("listing charges", e))?;
                decode_charge(decode_charge_key(&k)?.owner, &v)
            })
            .collect()
    }

    fn charges_after(
        &self,
        after: Option<&ChargeCursor>,
        limit: usize,
    ) -> Result<Vec<(ChargeCursor, Charge)>, StoreError> {
        let start: Vec<u8> =
            after.map_or_else(Vec::new, |c| charge_key(&c.key, c.index, &c.owner).to_vec());
        let mut listed = Vec::new();
        for item in self.charges.range(start..) {
            if listed.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| StoreError::index("listing charges", e))?;
            let cursor = decode_charge_key(&k)?;
            if Some(&cursor) != after {
                listed.push((cursor, decode_charge(cursor.owner, &v)?));
            }
        }
        Ok(listed)
    }

    fn owner_usage(&self, owner: &OwnerKey) -> u64 {
        self.owners_lock().get(owner).copied().unwrap_or(0)
    }

    fn owners_charged(&self) -> usize {
        self.owners_lock().len()
    }

    fn used(&self) -> u64 {
        *self.used_lock()
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// Whether a metadata write is flushed at once, or rides on the next flush (sled's log
/// keeps the order of writes, so it is durable before anything written after it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    Now,
    WithTheNextFlush,
}

/// Whether a metadata write may be refused for want of room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admit {
    WithinCapacity,
    Always,
}

/// What a record counts against the capacity: its key and its value (version byte
/// and payload), the same as [`record_bytes`] of key and payload.
fn stored_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() as u64).saturating_add(value.len() as u64)
}

/// `placement key ‖ index_be16 ‖ owner`: a prefix scan by fragment key lists a
/// fragment's charges.
fn charge_key(key: &PlacementKey, index: u16, owner: &OwnerKey) -> [u8; CHARGE_KEY_LEN] {
    let mut out = [0u8; CHARGE_KEY_LEN];
    out[..FRAGMENT_KEY_LEN].copy_from_slice(&fragment_key(key, index));
    out[FRAGMENT_KEY_LEN..].copy_from_slice(owner.as_bytes());
    out
}

fn decode_charge_key(bytes: &[u8]) -> Result<ChargeCursor, StoreError> {
    let bad = || StoreError::BadRecord {
        tree: CHARGES_TREE,
        detail: format!("key of {} bytes, expected {CHARGE_KEY_LEN}", bytes.len()),
    };
    if bytes.len() != CHARGE_KEY_LEN {
        return Err(bad());
    }
    let (key, index) = decode_fragment_key(&bytes[..FRAGMENT_KEY_LEN])?;
    let owner: [u8; ID_BYTES] = bytes[FRAGMENT_KEY_LEN..].try_into().map_err(|_| bad())?;
    Ok(ChargeCursor {
        key,
        index,
        owner: OwnerKey(Id(owner)),
    })
}

/// `file ‖ len_be64 ‖ expiry_be64` (0: certified), without the version byte.
fn encode_charge(charge: &Charge) -> [u8; CHARGE_PAYLOAD_LEN] {
    let mut out = [0u8; CHARGE_PAYLOAD_LEN];
    out[..ID_BYTES].copy_from_slice(charge.file.as_bytes());
    out[ID_BYTES..ID_BYTES + 8].copy_from_slice(&charge.len.to_be_bytes());
    out[ID_BYTES + 8..].copy_from_slice(&charge.uncertified_until.unwrap_or(0).to_be_bytes());
    out
}

fn decode_charge(owner: OwnerKey, value: &[u8]) -> Result<Charge, StoreError> {
    let payload = strip_version(CHARGES_TREE, value)?;
    let bad = || StoreError::BadRecord {
        tree: CHARGES_TREE,
        detail: format!(
            "record of {} bytes, expected {}",
            value.len(),
            1 + CHARGE_PAYLOAD_LEN
        ),
    };
    if payload.len() != CHARGE_PAYLOAD_LEN {
        return Err(bad());
    }
    let file: [u8; ID_BYTES] = payload[..ID_BYTES].try_into().map_err(|_| bad())?;
    let len: [u8; 8] = payload[ID_BYTES..ID_BYTES + 8]
        .try_into()
        .map_err(|_| bad())?;
    let until: [u8; 8] = payload[ID_BYTES + 8..].try_into().map_err(|_| bad())?;
    let until = u64::from_be_bytes(until);
    Ok(Charge {
        owner,
        file: FileId(Id(file)),
        len: u64::from_be_bytes(len),
        uncertified_until: (until != 0).then_some(until),
    })
}

/// `placement key ‖ index_be16`: big-endian, so keys sort by ring position, then index.
fn fragment_key(key: &PlacementKey, index: u16) -> [u8; FRAGMENT_KEY_LEN] {
    let mut out = [0u8; FRAGMENT_KEY_LEN];
    out[..ID_BYTES].copy_from_slice(key.as_bytes());
    out[ID_BYTES..].copy_from_slice(&index.to_be_bytes());
    out
}

fn decode_fragment_key(bytes: &[u8]) -> Result<(PlacementKey, u16), StoreError> {
    let bad = || StoreError::BadRecord {
        tree: FRAGMENTS_TREE,
        detail: format!("key of {} bytes, expected {FRAGMENT_KEY_LEN}", bytes.len()),
    };
    let key: [u8; ID_BYTES] = bytes
        .get(..ID_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    let index: [u8; 2] = bytes
        .get(ID_BYTES..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Ok((PlacementKey(Id(key)), u16::from_be_bytes(index)))
}

/// `placement key ‖ file id`: a prefix scan by placement key lists a block's files.
fn reference_key(key: &PlacementKey, file: &FileId) -> [u8; REFERENCE_KEY_LEN] {
    let mut out = [0u8; REFERENCE_KEY_LEN];
    out[..ID_BYTES].copy_from_slice(key.as_bytes());
    out[ID_BYTES..].copy_from_slice(file.as_bytes());
    out
}

/// The file id of a reference key.
fn decode_reference_key(bytes: &[u8]) -> Result<FileId, StoreError> {
    let file: [u8; ID_BYTES] = bytes
        .get(ID_BYTES..)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| StoreError::BadRecord {
            tree: REFERENCES_TREE,
            detail: format!("key of {} bytes, expected {REFERENCE_KEY_LEN}", bytes.len()),
        })?;
    Ok(FileId(Id(file)))
}

/// `version ‖ hash ‖ len_be64`.
fn encode_fragment_record(info: &FragmentInfo) -> [u8; FRAGMENT_RECORD_LEN] {
    let mut out = [0u8; FRAGMENT_RECORD_LEN];
    out[0] = RECORD_VERSION;
    out[1..1 + ID_BYTES].copy_from_slice(info.hash.as_bytes());
    out[1 + ID_BYTES..].copy_from_slice(&info.len.to_be_bytes());
    out
}

fn decode_fragment_record(index: u16, bytes: &[u8]) -> Result<FragmentInfo, StoreError> {
    let payload = strip_version(FRAGMENTS_TREE, bytes)?;
    let bad = || StoreError::BadRecord {
        tree: FRAGMENTS_TREE,
        detail: format!(
            "record of {} bytes, expected {FRAGMENT_RECORD_LEN}",
            bytes.len()
        ),
    };
    if bytes.len() != FRAGMENT_RECORD_LEN {
        return Err(bad());
    }
    let hash: [u8; ID_BYTES] = payload[..ID_BYTES].try_into().map_err(|_| bad())?;
    let len: [u8; 8] = payload[ID_BYTES..].try_into().map_err(|_| bad())?;
    Ok(FragmentInfo {
        index,
        hash: FragmentHash(Id(hash)),
        len: u64::from_be_bytes(len),
    })
}

fn strip_version<'a>(tree: &'static str, bytes: &'a [u8]) -> Result<&'a [u8], StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, rest)) => Ok(rest),
        Some((version, _)) => Err(StoreError::BadRecord {
            tree,
            detail: format!("unknown version byte {version}"),
        }),
        None => Err(StoreError::BadRecord {
            tree,
            detail: "empty value".into(),
        }),
    }
}

fn decode_node(bytes: &[u8]) -> Result<NodeId, StoreError> {
    let id: [u8; ID_BYTES] = bytes.try_into().map_err(|_| StoreError::BadRecord {
        tree: POINTERS_TREE,
        detail: format!("holder of {} bytes, expected {ID_BYTES}", bytes.len()),
    })?;
    Ok(NodeId(Id(id)))
}

fn body_name(key: &PlacementKey, index: u16, hash: &FragmentHash) -> String {
    format!(
        "{}-{index:04x}-{}",
        hex(key.as_bytes()),
        hex(hash.as_bytes())
    )
}

/// Reads a name [`body_name`] wrote, and only such a name: lowercase hex of exactly
/// the right lengths (`u8::from_str_radix` alone would also take `+f` and `F`, so a
/// stray file could stand for a recorded body whose own file is missing).
fn parse_body_name(name: &str) -> Option<(PlacementKey, u16, FragmentHash)> {
    let mut parts = name.split('-');
    let key = unhex_id(parts.next()?)?;
    let index_text = parts.next()?;
    if index_text.len() != 4 || !is_lower_hex(index_text) {
        return None;
    }
    let index = u16::from_str_radix(index_text, 16).ok()?;
    let hash = unhex_id(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some((PlacementKey(key), index, FragmentHash(hash)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unhex_id(text: &str) -> Option<Id> {
    if text.len() != ID_BYTES * 2 || !is_lower_hex(text) {
        return None;
    }
    let mut out = [0u8; ID_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(Id(out))
}

/// Writes each `(path, bytes)`, then `fdatasync`s them all, on up to `threads`
/// threads at once. All writes come first (copying into the page cache is quick and
/// stays on this thread), so every body is there before the first sync and concurrent
/// syncs can share journal commits; the helper threads only wait. (Writing and syncing
/// file by file on each thread measured the same within this disk's noise; see
/// `docs/store.md`.) Returns the first error.
fn write_all_synced(jobs: &[(&Path, &[u8])], threads: usize) -> Result<(), StoreError> {
    let files = jobs
        .iter()
        .map(|(path, bytes)| {
            let mut file = File::create(path).map_err(|e| StoreError::io("creating", *path, e))?;
            file.write_all(bytes)
                .map_err(|e| StoreError::io("writing", *path, e))?;
            Ok((file, *path))
        })
        .collect::<Result<Vec<(File, &Path)>, StoreError>>()?;
    let threads = threads.clamp(1, MAX_SYNC_THREADS).min(files.len());
    // Syncer t syncs files t, t + threads, ...; this thread is syncer 0.
    let sync_share = |t: usize| {
        files
            .iter()
            .skip(t)
            .step_by(threads.max(1))
            .try_for_each(|(file, path)| {
                file.sync_data()
                    .map_err(|e| StoreError::io("syncing", *path, e))
            })
    };
    if threads <= 1 {
        return sync_share(0);
    }
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads)
            .map(|t| scope.spawn(move || sync_share(t)))
            .collect();
        let mut result = sync_share(0);
        for helper in helpers {
            let helped = match helper.join() {
                Ok(helped) => helped,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            result = result.and(helped);
        }
        result
    })
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| StoreError::io("syncing directory", path, e))
}

fn read_dir(path: &Path) -> Result<fs::ReadDir, StoreError> {
    fs::read_dir(path).map_err(|e| StoreError::io("listing", path, e))
}

fn remove_path(path: &Path) -> Result<(), StoreError> {
    let result = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("removing", path, e)),
    }
}

/// Opens sled's index at `path`, waiting up to [`INDEX_LOCK_PATIENCE`] for its lock.
fn open_index(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + INDEX_LOCK_PATIENCE;
    loop {
        match sled::Config::new().path(path).open() {
            // sled reports a held lock only in its message ("could not acquire lock").
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened.map_err(|e| StoreError::index("opening the index", e)),
        }
    }
}

/// The decoders of this store's on-disk records, each beside the encoder it inverts,
/// for the fuzz targets (`node/fuzz-targets`, feature `fuzzing`). The small records
/// (certificates, root records, tombstones) are `version ‖ signed bytes`: after
/// [`strip_version`] they are `cairn_core::crypto::Signed` values.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::{Charge, ChargeCursor, FragmentInfo, StoreError};
    use cairn_core::id::{FileId, FragmentHash, NodeId, OwnerKey, PlacementKey};

    /// A fragment record's key: `placement key ‖ index_be16`.
    pub fn fragment_key(key: &PlacementKey, index: u16) -> Vec<u8> {
        super::fragment_key(key, index).to_vec()
    }

    /// Reads a fragment record's key.
    pub fn decode_fragment_key(bytes: &[u8]) -> Result<(PlacementKey, u16), StoreError> {
        super::decode_fragment_key(bytes)
    }

    /// A reference's key: `placement key ‖ file id`.
    pub fn reference_key(key: &PlacementKey, file: &FileId) -> Vec<u8> {
        super::reference_key(key, file).to_vec()
    }

    /// Reads the file id of a reference's key.
    pub fn decode_reference_key(bytes: &[u8]) -> Result<FileId, StoreError> {
        super::decode_reference_key(bytes)
    }

    /// A fragment record: `version ‖ hash ‖ len_be64`.
    pub fn encode_fragment_record(info: &FragmentInfo) -> Vec<u8> {
        super::encode_fragment_record(info).to_vec()
    }

    /// Reads a fragment record (its index comes from the key).
    pub fn decode_fragment_record(index: u16, bytes: &[u8]) -> Result<FragmentInfo, StoreError> {
        super::decode_fragment_record(index, bytes)
    }

    /// The payload of any value after its version byte.
    pub fn strip_version(bytes: &[u8]) -> Result<&[u8], StoreError> {
        super::strip_version(super::POINTERS_TREE, bytes)
    }

    /// Reads a pointer's holder (the payload of a pointer record).
    pub fn decode_node(bytes: &[u8]) -> Result<NodeId, StoreError> {
        super::decode_node(bytes)
    }

    /// A charge's key: `placement key ‖ index_be16 ‖ owner`.
    pub fn charge_key(key: &PlacementKey, index: u16, owner: &OwnerKey) -> Vec<u8> {
        super::charge_key(key, index, owner).to_vec()
    }

    /// Reads a charge's key.
    pub fn decode_charge_key(bytes: &[u8]) -> Result<ChargeCursor, StoreError> {
        super::decode_charge_key(bytes)
    }

    /// A charge record's payload (after the version byte): `file ‖ len ‖ expiry`.
    pub fn encode_charge(charge: &Charge) -> Vec<u8> {
        super::encode_charge(charge).to_vec()
    }

    /// Reads a charge record (version byte included; the owner comes from the key).
    pub fn decode_charge(owner: OwnerKey, value: &[u8]) -> Result<Charge, StoreError> {
        super::decode_charge(owner, value)
    }

    /// The file name of a fragment body.
    pub fn body_name(key: &PlacementKey, index: u16, hash: &FragmentHash) -> String {
        super::body_name(key, index, hash)
    }

    /// Reads a fragment body's file name, as [`super::DiskStore::open`] does.
    pub fn parse_body_name(name: &str) -> Option<(PlacementKey, u16, FragmentHash)> {
        super::parse_body_name(name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Pins the on-disk encodings: changing them needs a new version byte or tree name.
    #[test]
    fn record_and_key_encodings_are_pinned() {
        let key = PlacementKey(Id([0xab; 32]));
        let k = fragment_key(&key, 0x0102);
        assert_eq!(&k[..32], &[0xab; 32]);
        assert_eq!(&k[32..], &[0x01, 0x02]);
        let info = FragmentInfo {
            index: 0x0102,
            hash: FragmentHash(Id([0x11; 32])),
            len: 0x0304,
        };
        let record = encode_fragment_record(&info);
        assert_eq!(record[0], 1, "version byte");
        assert_eq!(&record[1..33], &[0x11; 32], "hash");
        assert_eq!(
            &record[33..],
            &[0, 0, 0, 0, 0, 0, 0x03, 0x04],
            "length, big-endian"
        );
        assert_eq!(decode_fragment_record(0x0102, &record).unwrap(), info);
        let mut future = record;
        future[0] = 2;
        assert!(matches!(
            decode_fragment_record(1, &future),
            Err(StoreError::BadRecord { .. })
        ));
        assert!(matches!(
            decode_fragment_record(1, &record[..40]),
            Err(StoreError::BadRecord { .. })
        ));
    }

    #[test]
    fn reference_keys_are_pinned() {
        let key = PlacementKey(Id([0xab; 32]));
        let file = FileId(Id([0xcd; 32]));
        let k = reference_key(&key, &file);
        assert_eq!(&k[..32], &[0xab; 32], "placement key first: prefix scans");
        assert_eq!(&k[32..], &[0xcd; 32]);
        assert_eq!(decode_reference_key(&k).unwrap(), file);
        assert!(matches!(
            decode_reference_key(&k[..40]),
            Err(StoreError::BadRecord { .. })
        ));
        let mut long = k.to_vec();
        long.push(0);
        assert!(decode_reference_key(&long).is_err());
    }

    #[test]
    fn body_names_round_trip_and_reject_strangers() {
        let key = PlacementKey(Id([0x5a; 32]));
        let hash = FragmentHash(Id([0xc3; 32]));
        let name = body_name(&key, 7, &hash);
        assert_eq!(parse_body_name(&name), Some((key, 7, hash)));
        assert_eq!(parse_body_name("notes.txt"), None);
        assert_eq!(parse_body_name(&format!("{name}-x")), None);
    }

    /// Found by the `disk_records` fuzz target (`fuzz/corpus/disk_records/`): names
    /// with an upper-case digit or a `+` parsed to a fragment whose own file is named
    /// otherwise, so at open a stray file could keep a record whose body is missing.
    #[test]
    fn body_names_other_than_the_one_written_are_strangers() {
        let key = PlacementKey(Id([0x5a; 32]));
        let hash = FragmentHash(Id([0xe6; 32]));
        let name = body_name(&key, 3, &hash);
        assert_eq!(parse_body_name(&name), Some((key, 3, hash)));
        let upper = name.replacen("e6", "E6", 1);
        assert_eq!(parse_body_name(&upper), None, "{upper}");
        let plus_in_id = name.replacen("5a", "+a", 1);
        assert_eq!(parse_body_name(&plus_in_id), None, "{plus_in_id}");
        let plus_in_index = name.replacen("-0003-", "-+003-", 1);
        assert_eq!(parse_body_name(&plus_in_index), None, "{plus_in_index}");
    }

    #[test]
    fn enospc_becomes_disk_full() {
        let err = StoreError::io("writing", "/x", io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
        let err = StoreError::io(
            "writing",
            "/x",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    }
}
