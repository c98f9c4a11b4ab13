//! [`MemoryStore`]: the in-memory twin of [`super::DiskStore`], for the simulator and
//! tests. Same semantics (hash checks, exact accounting, idempotent puts, corruption
//! detected on read), nothing durable past the value's lifetime.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use super::{
    CHARGE_KEY_LEN, CHARGE_PAYLOAD_LEN, Charge, ChargeCursor, FragmentInfo, NodeStore,
    OfferedFragment, PutOutcome, StoreError, check_offered, check_offered_group, check_read,
    check_record_room, plan_group, record_bytes, ring_intervals,
};
use cairn_core::id::{
    FileId, FragmentHash, ID_BYTES, Id, NodeId, OwnerKey, PlacementKey, VolumeKey,
};

/// Bytes of the record of a certificate, root record or tombstone of `len` bytes.
fn keyed_by_id(len: usize) -> u64 {
    record_bytes(ID_BYTES, len)
}
const POINTER_BYTES: usize = ID_BYTES + 2;
const REFERENCE_BYTES: usize = 2 * ID_BYTES;

#[derive(Debug, Default)]
struct Inner {
    fragments: BTreeMap<(PlacementKey, u16), (FragmentInfo, Vec<u8>)>,
    certificates: BTreeMap<FileId, Vec<u8>>,
    pointers: BTreeMap<(PlacementKey, u16), NodeId>,
    roots: BTreeMap<VolumeKey, Vec<u8>>,
    references: BTreeSet<(PlacementKey, FileId)>,
    tombstones: BTreeMap<FileId, Vec<u8>>,
    charges: BTreeMap<ChargeCursor, Charge>,
    owner_usage: BTreeMap<OwnerKey, u64>,
    /// Fragment bodies plus metadata records (see the crate docs).
    used: u64,
}

/// Whether a metadata write may be refused for want of room.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Admit {
    WithinCapacity,
    Always,
}

/// Accounts a metadata record going from `old` to `new` bytes in `used`, refusing
/// growth past `capacity` unless `admit` is [`Admit::Always`].
fn account(
    used: &mut u64,
    (old, new): (u64, u64),
    capacity: u64,
    admit: Admit,
) -> Result<(), StoreError> {
    if admit == Admit::WithinCapacity {
        check_record_room(old, new, *used, capacity)?;
    }
    *used = used.saturating_sub(old).saturating_add(new);
    Ok(())
}

/// Stores (or replaces) a record of opaque bytes keyed by an id (a certificate, a
/// tombstone, a root record), accounting it in `used`.
fn put_id_record<K: Ord>(
    map: &mut BTreeMap<K, Vec<u8>>,
    used: &mut u64,
    key: K,
    value: &[u8],
    (capacity, admit): (u64, Admit),
) -> Result<(), StoreError> {
    let old = map.get(&key).map_or(0, |v| keyed_by_id(v.len()));
    account(used, (old, keyed_by_id(value.len())), capacity, admit)?;
    map.insert(key, value.to_vec());
    Ok(())
}

impl Inner {
    fn account(
        &mut self,
        old: u64,
        new: u64,
        capacity: u64,
        admit: Admit,
    ) -> Result<(), StoreError> {
        account(&mut self.used, (old, new), capacity, admit)
    }

    /// Moves `owner`'s usage from `old` to `new` bytes, forgetting an owner at zero.
    fn charge_owner(&mut self, owner: OwnerKey, old: u64, new: u64) {
        let usage = self.owner_usage.entry(owner).or_insert(0);
        *usage = usage.saturating_sub(old).saturating_add(new);
        if *usage == 0 {
            self.owner_usage.remove(&owner);
        }
    }

    fn remove_charge(&mut self, cursor: &ChargeCursor) -> bool {
        let Some(old) = self.charges.remove(cursor) else {
            return false;
        };
        self.charge_owner(old.owner, old.len, 0);
        self.used = self
            .used
            .saturating_sub(record_bytes(CHARGE_KEY_LEN, CHARGE_PAYLOAD_LEN));
        true
    }

    fn references_under(&self, key: &PlacementKey) -> impl Iterator<Item = FileId> + '_ {
        self.references
            .range((*key, FileId(Id::ZERO))..=(*key, FileId(Id::MAX)))
            .map(|(_, file)| *file)
    }
}

/// A [`NodeStore`] held in memory.
#[derive(Debug)]
pub struct MemoryStore {
    capacity: u64,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store that holds at most `capacity` bytes of fragment bodies.
    pub fn new(capacity: u64) -> MemoryStore {
        MemoryStore {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Flips the bits of `mask` in byte `offset` of a stored body, as disk rot would,
    /// so the simulator and tests can check that corruption is detected. Returns false
    /// if there is no such fragment or byte.
    pub fn corrupt_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
        offset: usize,
        mask: u8,
    ) -> bool {
        let mut inner = self.lock();
        match inner
            .fragments
            .get_mut(&(*key, index))
            .and_then(|(_, body)| body.get_mut(offset))
        {
            Some(byte) => {
                *byte ^= mask;
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated (every
        // update is a single map operation plus its counter), so poisoning is ignored.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl NodeStore for MemoryStore {
    fn put_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
        expected: &FragmentHash,
        bytes: &[u8],
    ) -> Result<PutOutcome, StoreError> {
        check_offered(key, index, expected, bytes)?;
        let mut inner = self.lock();
        if let Some((stored, _)) = inner.fragments.get(&(*key, index)) {
            if stored.hash == *expected {
                return Ok(PutOutcome::AlreadyStored);
            }
            return Err(StoreError::Conflict {
                key: *key,
                index,
                stored: stored.hash,
                offered: *expected,
            });
        }
        let needed = bytes.len() as u64;
        let free = self.capacity.saturating_sub(inner.used);
        if needed > free {
            return Err(StoreError::Full {
                needed,
                free,
                capacity: self.capacity,
            });
        }
        let info = FragmentInfo {
            index,
            hash: *expected,
            len: needed,
        };
        inner
            .fragments
            .insert((*key, index), (info, bytes.to_vec()));
        inner.used += needed;
        Ok(PutOutcome::Stored { bytes: needed })
    }

    /// Atomic: checked and inserted under one lock, so no other call sees half a group.
    fn put_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[OfferedFragment<'_>],
    ) -> Result<Vec<PutOutcome>, StoreError> {
        check_offered_group(key, fragments)?;
        let mut inner = self.lock();
        let plan = plan_group(key, fragments, |index| {
            Ok(inner
                .fragments
                .get(&(*key, index))
                .map(|(info, _)| info.hash))
        })?;
        let free = self.capacity.saturating_sub(inner.used);
        if plan.needed > free {
            return Err(StoreError::Full {
                needed: plan.needed,
                free,
                capacity: self.capacity,
            });
        }
        for &position in &plan.new {
            let f = &fragments[position];
            let info = FragmentInfo {
                index: f.index,
                hash: f.hash,
                len: f.bytes.len() as u64,
            };
            inner
                .fragments
                .insert((*key, f.index), (info, f.bytes.to_vec()));
        }
        inner.used += plan.needed;
        Ok(plan.outcomes)
    }

    fn get_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.lock();
        match inner.fragments.get(&(*key, index)) {
            None => Ok(None),
            Some((info, body)) => {
                check_read(key, info, body)?;
                Ok(Some(body.clone()))
            }
        }
    }

    fn fragment_info(
        &self,
        key: &PlacementKey,
        index: u16,
    ) -> Result<Option<FragmentInfo>, StoreError> {
        Ok(self
            .lock()
            .fragments
            .get(&(*key, index))
            .map(|(info, _)| *info))
    }

    fn delete_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<u64>, StoreError> {
        let mut inner = self.lock();
        let removed = inner.fragments.remove(&(*key, index));
        let charged: Vec<ChargeCursor> = inner
            .charges
            .range(fragment_charges(key, index))
            .map(|(cursor, _)| *cursor)
            .collect();
        for cursor in &charged {
            inner.remove_charge(cursor);
        }
        Ok(removed.map(|(info, _)| {
            inner.used -= info.len;
            info.len
        }))
    }

    fn fragments_under(&self, key: &PlacementKey) -> Result<Vec<FragmentInfo>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .fragments
            .range((*key, 0)..=(*key, u16::MAX))
            .map(|(_, (info, _))| *info)
            .collect())
    }

    fn placement_keys_in(
        &self,
        start: &PlacementKey,
        end: &PlacementKey,
    ) -> Result<Vec<PlacementKey>, StoreError> {
        let inner = self.lock();
        let mut keys: Vec<PlacementKey> = Vec::new();
        for (low, high) in ring_intervals(start, end) {
            let upper = high.unwrap_or(PlacementKey(Id::MAX));
            for ((key, _), _) in inner.fragments.range((low, 0)..=(upper, u16::MAX)) {
                let in_range = high.is_none_or(|high| *key < high);
                if in_range && keys.last() != Some(key) {
                    keys.push(*key);
                }
            }
        }
        Ok(keys)
    }

    fn put_certificate(&self, file: &FileId, signed: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.tombstones.contains_key(file) {
            return Err(StoreError::Reclaimed { file: *file });
        }
        let inner = &mut *inner;
        let room = (self.capacity, Admit::WithinCapacity);
        put_id_record(
            &mut inner.certificates,
            &mut inner.used,
            *file,
            signed,
            room,
        )
    }

    fn get_certificate(&self, file: &FileId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().certificates.get(file).cloned())
    }

    fn delete_certificate(&self, file: &FileId) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let removed = inner.certificates.remove(file);
        if let Some(c) = &removed {
            inner.account(keyed_by_id(c.len()), 0, self.capacity, Admit::Always)?;
        }
        Ok(removed.is_some())
    }

    fn certificate_files(
        &self,
        after: Option<&FileId>,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        let inner = self.lock();
        let range = match after {
            Some(after) => inner.certificates.range((
                std::ops::Bound::Excluded(*after),
                std::ops::Bound::Unbounded,
            )),
            None => inner.certificates.range(..),
        };
        Ok(range.map(|(file, _)| *file).take(limit).collect())
    }

    fn put_pointer(
        &self,
        key: &PlacementKey,
        index: u16,
        holder: &NodeId,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let bytes = record_bytes(POINTER_BYTES, ID_BYTES);
        let old = if inner.pointers.contains_key(&(*key, index)) {
            bytes
        } else {
            0
        };
        inner.account(old, bytes, self.capacity, Admit::WithinCapacity)?;
        inner.pointers.insert((*key, index), *holder);
        Ok(())
    }

    fn get_pointer(&self, key: &PlacementKey, index: u16) -> Result<Option<NodeId>, StoreError> {
        Ok(self.lock().pointers.get(&(*key, index)).copied())
    }

    fn delete_pointer(&self, key: &PlacementKey, index: u16) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let removed = inner.pointers.remove(&(*key, index)).is_some();
        if removed {
            let bytes = record_bytes(POINTER_BYTES, ID_BYTES);
            inner.account(bytes, 0, self.capacity, Admit::Always)?;
        }
        Ok(removed)
    }

    fn pointers_under(&self, key: &PlacementKey) -> Result<Vec<(u16, NodeId)>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .pointers
            .range((*key, 0)..=(*key, u16::MAX))
            .map(|((_, index), holder)| (*index, *holder))
            .collect())
    }

    fn add_reference(&self, key: &PlacementKey, file: &FileId) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.tombstones.contains_key(file) {
            return Err(StoreError::Reclaimed { file: *file });
        }
        if !inner.references.contains(&(*key, *file)) {
            let bytes = record_bytes(REFERENCE_BYTES, 0);
            inner.account(0, bytes, self.capacity, Admit::WithinCapacity)?;
            inner.references.insert((*key, *file));
        }
        Ok(())
    }

    fn remove_reference(&self, key: &PlacementKey, file: &FileId) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        if inner.references.remove(&(*key, *file)) {
            let bytes = record_bytes(REFERENCE_BYTES, 0);
            inner.account(bytes, 0, self.capacity, Admit::Always)?;
        }
        Ok(inner.references_under(key).count())
    }

    fn references(&self, key: &PlacementKey) -> Result<Vec<FileId>, StoreError> {
        Ok(self.lock().references_under(key).collect())
    }

    fn put_tombstone(&self, file: &FileId, reclaim: &[u8]) -> Result<(), StoreError> {
        let inner = &mut *self.lock();
        let room = (self.capacity, Admit::Always);
        put_id_record(&mut inner.tombstones, &mut inner.used, *file, reclaim, room)
    }

    fn get_tombstone(&self, file: &FileId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().tombstones.get(file).cloned())
    }

    fn put_root(&self, volume: &VolumeKey, signed: &[u8]) -> Result<(), StoreError> {
        let inner = &mut *self.lock();
        let room = (self.capacity, Admit::WithinCapacity);
        put_id_record(&mut inner.roots, &mut inner.used, *volume, signed, room)
    }

    fn get_root(&self, volume: &VolumeKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().roots.get(volume).cloned())
    }

    fn root_volumes(
        &self,
        after: Option<&VolumeKey>,
        limit: usize,
    ) -> Result<Vec<VolumeKey>, StoreError> {
        let inner = self.lock();
        let range = match after {
            Some(after) => inner.roots.range((
                std::ops::Bound::Excluded(*after),
                std::ops::Bound::Unbounded,
            )),
            None => inner.roots.range(..),
        };
        Ok(range.map(|(volume, _)| *volume).take(limit).collect())
    }

    fn put_charge(
        &self,
        key: &PlacementKey,
        index: u16,
        charge: &Charge,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let cursor = ChargeCursor {
            key: *key,
            index,
            owner: charge.owner,
        };
        let bytes = record_bytes(CHARGE_KEY_LEN, CHARGE_PAYLOAD_LEN);
        let old = inner.charges.get(&cursor).copied();
        inner.account(
            old.map_or(0, |_| bytes),
            bytes,
            self.capacity,
            Admit::WithinCapacity,
        )?;
        inner.charge_owner(charge.owner, old.map_or(0, |c| c.len), charge.len);
        inner.charges.insert(cursor, *charge);
        Ok(())
    }

    fn delete_charge(
        &self,
        key: &PlacementKey,
        index: u16,
        owner: &OwnerKey,
    ) -> Result<bool, StoreError> {
        let cursor = ChargeCursor {
            key: *key,
            index,
            owner: *owner,
        };
        Ok(self.lock().remove_charge(&cursor))
    }

    fn charges(&self, key: &PlacementKey, index: u16) -> Result<Vec<Charge>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .charges
            .range(fragment_charges(key, index))
            .map(|(_, charge)| *charge)
            .collect())
    }

    fn charges_after(
        &self,
        after: Option<&ChargeCursor>,
        limit: usize,
    ) -> Result<Vec<(ChargeCursor, Charge)>, StoreError> {
        let inner = self.lock();
        let range = match after {
            Some(after) => inner.charges.range((
                std::ops::Bound::Excluded(*after),
                std::ops::Bound::Unbounded,
            )),
            None => inner.charges.range(..),
        };
        Ok(range.take(limit).map(|(c, charge)| (*c, *charge)).collect())
    }

    fn owner_usage(&self, owner: &OwnerKey) -> u64 {
        self.lock().owner_usage.get(owner).copied().unwrap_or(0)
    }

    fn owners_charged(&self) -> usize {
        self.lock().owner_usage.len()
    }

    fn used(&self) -> u64 {
        self.lock().used
    }

    fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// The range of charge cursors of one fragment.
fn fragment_charges(key: &PlacementKey, index: u16) -> std::ops::RangeInclusive<ChargeCursor> {
    let at = |owner| ChargeCursor {
        key: *key,
        index,
        owner,
    };
    at(OwnerKey(Id::ZERO))..=at(OwnerKey(Id::MAX))
}
