//! The store: one shared suite run against both `MemoryStore` and `DiskStore` (and its
//! group-put part also against a `DiskStore` syncing one body at a time), then what
//! only the disk store has (reopen, corruption on disk, cleanup at open).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;

use cairn_core::id::{FileId, FragmentHash, Id, NodeId, PlacementKey, VolumeKey};
use cairn_store::{
    DiskStore, MemoryStore, NodeStore, OfferedFragment, PutOutcome, StoreError, record_bytes,
};
use cairn_tests::store::{fragment, key, key_at};
use tempfile::TempDir;

/// A store under test, with whatever keeps it alive (a temp dir for the disk store).
struct Fixture<S> {
    store: S,
    dir: Option<TempDir>,
}

fn memory(capacity: u64) -> Fixture<MemoryStore> {
    Fixture {
        store: MemoryStore::new(capacity),
        dir: None,
    }
}

fn disk(capacity: u64) -> Fixture<DiskStore> {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        store: DiskStore::open(dir.path(), capacity).unwrap(),
        dir: Some(dir),
    }
}

/// A disk store that writes and syncs a group's bodies one after another.
fn disk_one_sync_thread(capacity: u64) -> Fixture<DiskStore> {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        store: DiskStore::open(dir.path(), capacity)
            .unwrap()
            .with_sync_threads(1),
        dir: Some(dir),
    }
}

impl<S: NodeStore> Fixture<S> {
    /// For a disk store: that the files under `bodies/` are exactly the fragments listed
    /// under `keys` and that `tmp/` is empty (a refused or undone put leaves no file).
    fn assert_files_match(&self, keys: &[PlacementKey]) {
        let Some(dir) = &self.dir else { return };
        let listed: usize = keys
            .iter()
            .map(|k| self.store.fragments_under(k).unwrap().len())
            .sum();
        let mut bodies = 0;
        for fan in fs::read_dir(dir.path().join("bodies")).unwrap() {
            bodies += fs::read_dir(fan.unwrap().path()).unwrap().count();
        }
        assert_eq!(
            bodies, listed,
            "body files differ from the fragments listed"
        );
        assert_eq!(count_entries(&dir.path().join("tmp")), 0, "temp files left");
    }
}

fn count_entries(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

/// A block's worth of fragments: `(bytes, hash)` for indexes `0..lens.len()`.
fn block(seed: u64, lens: &[usize]) -> Vec<(Vec<u8>, FragmentHash)> {
    lens.iter()
        .zip(0u16..)
        .map(|(&len, index)| fragment(seed, index, len))
        .collect()
}

/// The group offered for `block`'s fragments at `indexes`.
fn offer<'a>(block: &'a [(Vec<u8>, FragmentHash)], indexes: &[u16]) -> Vec<OfferedFragment<'a>> {
    indexes
        .iter()
        .map(|&index| {
            let (bytes, hash) = &block[usize::from(index)];
            OfferedFragment {
                index,
                hash: *hash,
                bytes,
            }
        })
        .collect()
}

/// What a user checks after a refused group: the same bytes used, and the same
/// fragments listed (and, on disk, the same files).
fn assert_unchanged<S: NodeStore>(f: &Fixture<S>, k: &PlacementKey, used: u64, indexes: &[u16]) {
    assert_eq!(
        f.store.used(),
        used,
        "a refused group changed the accounting"
    );
    let listed: Vec<u16> = f
        .store
        .fragments_under(k)
        .unwrap()
        .iter()
        .map(|info| info.index)
        .collect();
    assert_eq!(listed, indexes, "a refused group changed what is stored");
    f.assert_files_match(&[*k]);
}

/// Group puts (`put_fragments`): all or nothing, exact accounting, idempotent.
mod group_suite {
    use super::*;

    const LENS: [usize; 6] = [4096, 4096, 1, 0, 70_001, 4096];

    pub fn a_group_stores_all<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let k = key(1);
        let b = block(1, &LENS);
        let outcomes = f
            .store
            .put_fragments(&k, &offer(&b, &[0, 1, 2, 3, 4, 5]))
            .unwrap();
        let expected: Vec<PutOutcome> = LENS
            .iter()
            .map(|&len| PutOutcome::Stored { bytes: len as u64 })
            .collect();
        assert_eq!(outcomes, expected);
        assert_eq!(f.store.used(), LENS.iter().sum::<usize>() as u64);
        for (index, (bytes, hash)) in (0u16..).zip(&b) {
            assert_eq!(
                f.store.get_fragment(&k, index).unwrap().as_ref(),
                Some(bytes)
            );
            assert_eq!(
                f.store.fragment_info(&k, index).unwrap().unwrap().hash,
                *hash
            );
        }
        assert_eq!(f.store.fragments_under(&k).unwrap().len(), 6);
        f.assert_files_match(&[k]);
        // An empty group is a no-op.
        assert_eq!(f.store.put_fragments(&key(2), &[]).unwrap(), vec![]);
        assert_eq!(f.store.used(), LENS.iter().sum::<usize>() as u64);
    }

    pub fn a_group_with_one_bad_hash_changes_nothing<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let k = key(1);
        let b = block(1, &LENS);
        f.store.put_fragments(&k, &offer(&b, &[0])).unwrap();
        let used = f.store.used();
        let mut group = offer(&b, &[1, 2, 3, 4, 5]);
        let wrong = FragmentHash(Id::hash(b"not fragment 4"));
        group[3].hash = wrong;
        let err = f.store.put_fragments(&k, &group).unwrap_err();
        match err {
            StoreError::HashMismatch {
                index: 4,
                expected,
                actual,
                ..
            } => assert_eq!((expected, actual), (wrong, b[4].1)),
            other => panic!("expected HashMismatch for index 4, got {other:?}"),
        }
        assert_unchanged(&f, &k, used, &[0]);
    }

    pub fn a_group_with_one_conflict_changes_nothing<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let k = key(1);
        let stored = block(1, &LENS);
        let offered = block(2, &LENS);
        f.store.put_fragments(&k, &offer(&stored, &[2])).unwrap();
        let used = f.store.used();
        // Fragment 2 differs from what is stored: the whole group is refused.
        let err = f
            .store
            .put_fragments(&k, &offer(&offered, &[0, 1, 2, 3, 4, 5]))
            .unwrap_err();
        match err {
            StoreError::Conflict {
                index: 2,
                stored: s,
                offered: o,
                ..
            } => assert_eq!((s, o), (stored[2].1, offered[2].1)),
            other => panic!("expected Conflict for index 2, got {other:?}"),
        }
        assert_unchanged(&f, &k, used, &[2]);
        // The same index twice in one group with different bytes is a conflict too.
        let mut twice = offer(&offered, &[0, 1]);
        twice.push(offer(&stored, &[1])[0]);
        let err = f.store.put_fragments(&k, &twice).unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { index: 1, .. }),
            "{err:?}"
        );
        assert_unchanged(&f, &k, used, &[2]);
    }

    pub fn a_group_over_capacity_changes_nothing<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let lens = [300, 300, 300, 100];
        let b = block(1, &lens);
        let k = key(1);
        // Fragment 0 is stored; the other three need 700 and only 699 are free.
        let f = make(300 + 699);
        f.store.put_fragments(&k, &offer(&b, &[0])).unwrap();
        let err = f
            .store
            .put_fragments(&k, &offer(&b, &[0, 1, 2, 3]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Full {
                    needed: 700,
                    free: 699,
                    capacity: 999
                }
            ),
            "{err:?}"
        );
        assert_unchanged(&f, &k, 300, &[0]);
        // One byte more and the same group fits exactly; fragment 0 is not recounted.
        let f = make(300 + 700);
        f.store.put_fragments(&k, &offer(&b, &[0])).unwrap();
        let outcomes = f
            .store
            .put_fragments(&k, &offer(&b, &[0, 1, 2, 3]))
            .unwrap();
        assert_eq!(
            outcomes,
            vec![
                PutOutcome::AlreadyStored,
                PutOutcome::Stored { bytes: 300 },
                PutOutcome::Stored { bytes: 300 },
                PutOutcome::Stored { bytes: 100 },
            ]
        );
        assert_eq!((f.store.used(), f.store.free()), (1000, 0));
        // Full, a group of what is already stored still succeeds and adds nothing.
        assert_eq!(
            f.store.put_fragments(&k, &offer(&b, &[3, 1])).unwrap(),
            vec![PutOutcome::AlreadyStored; 2]
        );
        assert_eq!(f.store.used(), 1000);
        f.assert_files_match(&[k]);
    }

    pub fn a_group_reput_is_idempotent<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let k = key(1);
        let b = block(1, &LENS);
        let total = LENS.iter().sum::<usize>() as u64;
        f.store.put_fragments(&k, &offer(&b, &[0, 1, 2])).unwrap();
        // Half already there, half new: only the new half is counted.
        let outcomes = f
            .store
            .put_fragments(&k, &offer(&b, &[0, 1, 2, 3, 4, 5]))
            .unwrap();
        assert_eq!(outcomes[..3], [PutOutcome::AlreadyStored; 3]);
        assert_eq!(outcomes[4], PutOutcome::Stored { bytes: 70_001 });
        assert_eq!(f.store.used(), total);
        // All there: nothing changes.
        assert_eq!(
            f.store
                .put_fragments(&k, &offer(&b, &[0, 1, 2, 3, 4, 5]))
                .unwrap(),
            vec![PutOutcome::AlreadyStored; 6]
        );
        assert_eq!(f.store.used(), total);
        // The same new fragment twice in one group is stored and counted once.
        let other = key(2);
        assert_eq!(
            f.store.put_fragments(&other, &offer(&b, &[4, 4])).unwrap(),
            vec![
                PutOutcome::Stored { bytes: 70_001 },
                PutOutcome::AlreadyStored
            ]
        );
        assert_eq!(f.store.used(), total + 70_001);
        f.assert_files_match(&[k, other]);
    }

    pub fn concurrent_groups_are_counted_once<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 22);
        // Four threads put overlapping groups of the same three blocks, each group in
        // a different index order (so their lock orders would differ if not sorted).
        let blocks: Vec<_> = (0..3u64).map(|n| (key(n), block(n, &LENS))).collect();
        let orders: [&[u16]; 4] = [
            &[0, 1, 2, 3, 4, 5],
            &[5, 4, 3],
            &[3, 0, 5, 1],
            &[2, 4, 1, 0],
        ];
        std::thread::scope(|scope| {
            for order in orders {
                let (store, blocks) = (&f.store, &blocks);
                scope.spawn(move || {
                    for round in 0..3 {
                        for (k, b) in blocks.iter().cycle().skip(round).take(3) {
                            store.put_fragments(k, &offer(b, order)).unwrap();
                        }
                    }
                });
            }
        });
        for (k, b) in &blocks {
            for (index, (bytes, _)) in (0u16..).zip(b) {
                assert_eq!(
                    f.store.get_fragment(k, index).unwrap().as_ref(),
                    Some(bytes)
                );
            }
        }
        assert_eq!(f.store.used(), 3 * LENS.iter().sum::<usize>() as u64);
        let keys: Vec<PlacementKey> = blocks.iter().map(|(k, _)| *k).collect();
        f.assert_files_match(&keys);
    }
}

/// Runs every group-put check as its own test against one implementation.
macro_rules! group_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn a_group_stores_all() {
                group_suite::a_group_stores_all($make);
            }
            #[test]
            fn a_group_with_one_bad_hash_changes_nothing() {
                group_suite::a_group_with_one_bad_hash_changes_nothing($make);
            }
            #[test]
            fn a_group_with_one_conflict_changes_nothing() {
                group_suite::a_group_with_one_conflict_changes_nothing($make);
            }
            #[test]
            fn a_group_over_capacity_changes_nothing() {
                group_suite::a_group_over_capacity_changes_nothing($make);
            }
            #[test]
            fn a_group_reput_is_idempotent() {
                group_suite::a_group_reput_is_idempotent($make);
            }
            #[test]
            fn concurrent_groups_are_counted_once() {
                group_suite::concurrent_groups_are_counted_once($make);
            }
        }
    };
}

/// The behaviour both implementations must share. Each check gets a fresh store.
mod suite {
    use super::*;

    pub fn round_trip_and_info<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let k = key(1);
        for (index, len) in [(0u16, 0usize), (1, 1), (2, 4096), (3, 70_001)] {
            let (bytes, hash) = fragment(7, index, len);
            let outcome = f.store.put_fragment(&k, index, &hash, &bytes).unwrap();
            assert_eq!(outcome, PutOutcome::Stored { bytes: len as u64 });
            assert_eq!(f.store.get_fragment(&k, index).unwrap(), Some(bytes));
            let info = f.store.fragment_info(&k, index).unwrap().unwrap();
            assert_eq!((info.index, info.hash, info.len), (index, hash, len as u64));
        }
        assert_eq!(f.store.used(), 70_001 + 4096 + 1);
        assert_eq!(f.store.get_fragment(&k, 4).unwrap(), None);
        assert_eq!(f.store.get_fragment(&key(2), 0).unwrap(), None);
        assert_eq!(f.store.fragment_info(&key(2), 0).unwrap(), None);
    }

    pub fn capacity_refusal_changes_nothing<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1000);
        let (a, ha) = fragment(1, 0, 600);
        let (b, hb) = fragment(2, 1, 401);
        f.store.put_fragment(&key(1), 0, &ha, &a).unwrap();
        assert_eq!(
            (f.store.used(), f.store.free(), f.store.capacity()),
            (600, 400, 1000)
        );

        let err = f.store.put_fragment(&key(1), 1, &hb, &b).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Full {
                    needed: 401,
                    free: 400,
                    capacity: 1000
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            (f.store.used(), f.store.free()),
            (600, 400),
            "refusal changed accounting"
        );
        assert_eq!(
            f.store.get_fragment(&key(1), 1).unwrap(),
            None,
            "refused fragment stored"
        );
        assert_eq!(f.store.fragments_under(&key(1)).unwrap().len(), 1);

        // Exactly the free space fits; then nothing more does.
        let (c, hc) = fragment(3, 1, 400);
        f.store.put_fragment(&key(1), 1, &hc, &c).unwrap();
        assert_eq!((f.store.used(), f.store.free()), (1000, 0));
        let (d, hd) = fragment(4, 2, 1);
        let err = f.store.put_fragment(&key(1), 2, &hd, &d).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Full {
                    needed: 1,
                    free: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        // Re-putting what is already stored is not refused when full: it adds nothing.
        assert_eq!(
            f.store.put_fragment(&key(1), 0, &ha, &a).unwrap(),
            PutOutcome::AlreadyStored
        );
        assert_eq!(f.store.used(), 1000);
    }

    pub fn wrong_expected_hash_is_refused<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let (bytes, hash) = fragment(1, 3, 1000);
        let wrong = FragmentHash(Id::hash(b"something else"));
        let err = f
            .store
            .put_fragment(&key(1), 3, &wrong, &bytes)
            .unwrap_err();
        match err {
            StoreError::HashMismatch {
                index: 3,
                expected,
                actual,
                ..
            } => {
                assert_eq!((expected, actual), (wrong, hash));
            }
            other => panic!("expected HashMismatch, got {other:?}"),
        }
        // The index is part of the hash: fragment 3's bytes cannot pass as fragment 4.
        let err = f.store.put_fragment(&key(1), 4, &hash, &bytes).unwrap_err();
        assert!(
            matches!(err, StoreError::HashMismatch { index: 4, .. }),
            "{err:?}"
        );
        assert_eq!(f.store.used(), 0);
        assert!(f.store.fragments_under(&key(1)).unwrap().is_empty());
    }

    pub fn reput_is_idempotent_and_conflicts_refused<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let (bytes, hash) = fragment(1, 0, 5000);
        assert_eq!(
            f.store.put_fragment(&key(1), 0, &hash, &bytes).unwrap(),
            PutOutcome::Stored { bytes: 5000 }
        );
        assert_eq!(
            f.store.put_fragment(&key(1), 0, &hash, &bytes).unwrap(),
            PutOutcome::AlreadyStored
        );
        assert_eq!(f.store.used(), 5000, "re-put counted twice");

        let (other, other_hash) = fragment(2, 0, 300);
        let err = f
            .store
            .put_fragment(&key(1), 0, &other_hash, &other)
            .unwrap_err();
        match err {
            StoreError::Conflict {
                index: 0,
                stored,
                offered,
                ..
            } => {
                assert_eq!((stored, offered), (hash, other_hash));
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(f.store.get_fragment(&key(1), 0).unwrap(), Some(bytes));
        assert_eq!(f.store.used(), 5000);
    }

    pub fn delete_frees_exactly_its_bytes<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(10_000);
        let (a, ha) = fragment(1, 0, 3000);
        let (b, hb) = fragment(2, 1, 2500);
        f.store.put_fragment(&key(1), 0, &ha, &a).unwrap();
        f.store.put_fragment(&key(1), 1, &hb, &b).unwrap();
        assert_eq!((f.store.used(), f.store.free()), (5500, 4500));

        assert_eq!(f.store.delete_fragment(&key(1), 0).unwrap(), Some(3000));
        assert_eq!((f.store.used(), f.store.free()), (2500, 7500));
        assert_eq!(f.store.get_fragment(&key(1), 0).unwrap(), None);
        assert_eq!(
            f.store.delete_fragment(&key(1), 0).unwrap(),
            None,
            "second delete"
        );
        assert_eq!(f.store.used(), 2500);
        assert_eq!(f.store.get_fragment(&key(1), 1).unwrap(), Some(b));

        // The freed space is usable again, and the fragment can come back.
        assert_eq!(
            f.store.put_fragment(&key(1), 0, &ha, &a).unwrap(),
            PutOutcome::Stored { bytes: 3000 }
        );
        assert_eq!(f.store.used(), 5500);
    }

    pub fn listing_by_key_and_ring_range<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let low = key_at(0x10, 1);
        let mid = key_at(0x80, 2);
        let high = key_at(0xf0, 3);
        // A key sharing all but the last byte with `mid`, to catch sloppy prefix scans.
        let mut near = mid;
        near.0.0[31] ^= 1;
        for (k, indices) in [
            (low, &[0u16][..]),
            (mid, &[5, 0, 300, 2]),
            (high, &[1]),
            (near, &[9]),
        ] {
            for &index in indices {
                let (bytes, hash) = fragment(index.into(), index, 10 + usize::from(index));
                f.store.put_fragment(&k, index, &hash, &bytes).unwrap();
            }
        }
        let under: Vec<u16> = f
            .store
            .fragments_under(&mid)
            .unwrap()
            .iter()
            .map(|i| i.index)
            .collect();
        assert_eq!(
            under,
            vec![0, 2, 5, 300],
            "by ascending index, only this key"
        );
        let info = f.store.fragments_under(&mid).unwrap()[3];
        assert_eq!((info.len, info.hash), (310, fragment(300, 300, 310).1));
        assert!(f.store.fragments_under(&key(99)).unwrap().is_empty());

        let (first, second) = if mid < near { (mid, near) } else { (near, mid) };
        // Range ends at `top ‖ 0…0`: below every stored key with that top byte.
        let point = |top: u8| {
            let mut id = Id::ZERO;
            id.0[0] = top;
            id.into()
        };
        let range = |s, e| f.store.placement_keys_in(&point(s), &point(e)).unwrap();
        assert_eq!(range(0x00, 0x80), vec![low]);
        assert_eq!(range(0x00, 0x81), vec![low, first, second]);
        assert_eq!(range(0x11, 0xff), vec![first, second, high]);
        // Wrapping: clockwise from 0xe0 past the top of the ring to 0x20.
        assert_eq!(range(0xe0, 0x20), vec![high, low]);
        // start == end is the whole ring, clockwise from start.
        assert_eq!(range(0x40, 0x40), vec![first, second, high, low]);
        assert!(range(0x20, 0x70).is_empty());
        // The end is exclusive, the start inclusive.
        assert_eq!(f.store.placement_keys_in(&low, &mid).unwrap(), vec![low]);
    }

    pub fn concurrent_puts_are_counted_once<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        // Four threads put the same 24 fragments (each in a different order) and
        // delete a third of them; whoever wins, each is stored and counted once.
        let fragments: Vec<_> = (0..24u16)
            .map(|i| {
                (
                    key(u64::from(i % 5)),
                    i,
                    fragment(u64::from(i), i, 1000 + usize::from(i)),
                )
            })
            .collect();
        std::thread::scope(|scope| {
            for thread in 0..4usize {
                let (store, fragments) = (&f.store, &fragments);
                scope.spawn(move || {
                    for step in 0..fragments.len() {
                        let (k, index, (bytes, hash)) =
                            &fragments[(step * 7 + thread * 5) % fragments.len()];
                        store.put_fragment(k, *index, hash, bytes).unwrap();
                        if index % 3 == 0 {
                            store.delete_fragment(k, *index).unwrap();
                        }
                    }
                });
            }
        });
        let mut expected = 0;
        for (k, index, (bytes, _)) in &fragments {
            if let Some(stored) = f.store.get_fragment(k, *index).unwrap() {
                assert_eq!(&stored, bytes);
                expected += bytes.len() as u64;
            } else {
                assert_eq!(
                    index % 3,
                    0,
                    "fragment {index} was never deleted, yet is gone"
                );
            }
        }
        assert_eq!(f.store.used(), expected);
    }

    pub fn reads_racing_deletes_never_report_corruption<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        // Reads interleaved with puts and deletes of the same fragment see the whole
        // fragment or nothing. (The narrowest window, a delete landing between a read's
        // index lookup and its file open, is rarely hit by this loop.)
        let f = make(1 << 20);
        let (bytes, hash) = fragment(1, 0, 8192);
        let k = key(1);
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..20 {
                    f.store.put_fragment(&k, 0, &hash, &bytes).unwrap();
                    f.store.delete_fragment(&k, 0).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) && reads < 100_000 {
                match f.store.get_fragment(&k, 0) {
                    Ok(Some(read)) => assert_eq!(read, bytes),
                    Ok(None) => {}
                    Err(err) => panic!("read racing a delete failed: {err}"),
                }
                reads += 1;
            }
        });
        assert_eq!(f.store.used(), 0);
    }

    pub fn certificates_pointers_and_roots<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let file = FileId(Id::hash(b"file"));
        assert_eq!(f.store.get_certificate(&file).unwrap(), None);
        f.store
            .put_certificate(&file, b"signed certificate v1")
            .unwrap();
        assert_eq!(
            f.store.get_certificate(&file).unwrap().unwrap(),
            b"signed certificate v1"
        );
        f.store.put_certificate(&file, b"v2").unwrap();
        assert_eq!(f.store.get_certificate(&file).unwrap().unwrap(), b"v2");
        assert!(f.store.delete_certificate(&file).unwrap());
        assert!(!f.store.delete_certificate(&file).unwrap());
        assert_eq!(f.store.get_certificate(&file).unwrap(), None);

        let holder_a = NodeId(Id::hash(b"a"));
        let holder_b = NodeId(Id::hash(b"b"));
        f.store.put_pointer(&key(1), 4, &holder_a).unwrap();
        f.store.put_pointer(&key(1), 1, &holder_b).unwrap();
        f.store.put_pointer(&key(2), 0, &holder_b).unwrap();
        assert_eq!(f.store.get_pointer(&key(1), 4).unwrap(), Some(holder_a));
        assert_eq!(f.store.get_pointer(&key(1), 2).unwrap(), None);
        assert_eq!(
            f.store.pointers_under(&key(1)).unwrap(),
            vec![(1, holder_b), (4, holder_a)]
        );
        assert!(f.store.delete_pointer(&key(1), 4).unwrap());
        assert!(!f.store.delete_pointer(&key(1), 4).unwrap());
        assert_eq!(
            f.store.pointers_under(&key(1)).unwrap(),
            vec![(1, holder_b)]
        );

        let volume = VolumeKey(Id::hash(b"volume"));
        assert_eq!(f.store.get_root(&volume).unwrap(), None);
        f.store.put_root(&volume, b"root seq 1").unwrap();
        f.store.put_root(&volume, b"root seq 2").unwrap();
        assert_eq!(f.store.get_root(&volume).unwrap().unwrap(), b"root seq 2");

        // Each record held counts its key, a version byte and its payload.
        let pointers = 2 * record_bytes(34, 32);
        assert_eq!(
            f.store.used(),
            pointers + record_bytes(32, b"root seq 2".len())
        );
    }

    pub fn references_and_tombstones<S: NodeStore>(make: fn(u64) -> Fixture<S>) {
        let f = make(1 << 20);
        let (a, b, c) = (
            FileId(Id::hash(b"a")),
            FileId(Id::hash(b"b")),
            FileId(Id::hash(b"c")),
        );
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(f.store.references(&key(1)).unwrap(), vec![]);
        f.store.add_reference(&key(1), &a).unwrap();
        f.store.add_reference(&key(1), &a).unwrap();
        f.store.add_reference(&key(1), &b).unwrap();
        f.store.add_reference(&key(2), &c).unwrap();
        assert_eq!(
            f.store.references(&key(1)).unwrap(),
            both,
            "added twice, listed once"
        );
        assert_eq!(f.store.references(&key(2)).unwrap(), vec![c]);
        assert_eq!(f.store.remove_reference(&key(1), &a).unwrap(), 1);
        assert_eq!(
            f.store.remove_reference(&key(1), &a).unwrap(),
            1,
            "removing an absent reference changes nothing"
        );
        assert_eq!(f.store.remove_reference(&key(1), &c).unwrap(), 1);
        assert_eq!(f.store.remove_reference(&key(1), &b).unwrap(), 0);
        assert_eq!(f.store.references(&key(1)).unwrap(), vec![]);
        assert_eq!(f.store.references(&key(2)).unwrap(), vec![c]);

        assert!(!f.store.is_reclaimed(&a).unwrap());
        assert_eq!(f.store.get_tombstone(&a).unwrap(), None);
        f.store.put_certificate(&a, b"certificate of a").unwrap();
        f.store.add_reference(&key(3), &a).unwrap();
        f.store.put_tombstone(&a, b"reclaim of a").unwrap();
        assert!(f.store.is_reclaimed(&a).unwrap());
        assert!(!f.store.is_reclaimed(&b).unwrap());
        assert_eq!(f.store.get_tombstone(&a).unwrap().unwrap(), b"reclaim of a");
        // A reclaimed id is never stored again...
        let err = f.store.put_certificate(&a, b"again").unwrap_err();
        assert!(
            matches!(err, StoreError::Reclaimed { file } if file == a),
            "{err:?}"
        );
        let err = f.store.add_reference(&key(4), &a).unwrap_err();
        assert!(
            matches!(err, StoreError::Reclaimed { file } if file == a),
            "{err:?}"
        );
        assert_eq!(f.store.references(&key(4)).unwrap(), vec![]);
        // ...while what it had stays until the reclaim removes it.
        assert_eq!(
            f.store.get_certificate(&a).unwrap().unwrap(),
            b"certificate of a"
        );
        assert_eq!(f.store.remove_reference(&key(3), &a).unwrap(), 0);
        assert!(f.store.delete_certificate(&a).unwrap());
        f.store.put_certificate(&b, b"certificate of b").unwrap();
        f.store.add_reference(&key(3), &b).unwrap();
        // Metadata counts: references, the tombstone and b's certificate.
        let references = 2 * record_bytes(64, 0);
        let tombstone = record_bytes(32, b"reclaim of a".len());
        let certificate = record_bytes(32, b"certificate of b".len());
        assert_eq!(f.store.used(), references + tombstone + certificate);
    }
}

/// Runs every check of the shared suite as its own test against one implementation.
macro_rules! shared_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn round_trip_and_info() {
                suite::round_trip_and_info($make);
            }
            #[test]
            fn capacity_refusal_changes_nothing() {
                suite::capacity_refusal_changes_nothing($make);
            }
            #[test]
            fn wrong_expected_hash_is_refused() {
                suite::wrong_expected_hash_is_refused($make);
            }
            #[test]
            fn reput_is_idempotent_and_conflicts_refused() {
                suite::reput_is_idempotent_and_conflicts_refused($make);
            }
            #[test]
            fn delete_frees_exactly_its_bytes() {
                suite::delete_frees_exactly_its_bytes($make);
            }
            #[test]
            fn listing_by_key_and_ring_range() {
                suite::listing_by_key_and_ring_range($make);
            }
            #[test]
            fn concurrent_puts_are_counted_once() {
                suite::concurrent_puts_are_counted_once($make);
            }
            #[test]
            fn reads_racing_deletes_never_report_corruption() {
                suite::reads_racing_deletes_never_report_corruption($make);
            }
            #[test]
            fn certificates_pointers_and_roots() {
                suite::certificates_pointers_and_roots($make);
            }
            #[test]
            fn references_and_tombstones() {
                suite::references_and_tombstones($make);
            }
        }
    };
}

shared_suite!(memory_store, memory);
shared_suite!(disk_store, disk);
group_suite!(memory_store_groups, memory);
group_suite!(disk_store_groups, disk);
group_suite!(disk_store_groups_one_sync_thread, disk_one_sync_thread);

#[test]
fn memory_store_reports_corruption_instead_of_bytes() {
    let store = MemoryStore::new(1 << 20);
    let (bytes, hash) = fragment(1, 2, 1000);
    store.put_fragment(&key(1), 2, &hash, &bytes).unwrap();
    assert!(store.corrupt_fragment(&key(1), 2, 500, 0x01));
    let err = store.get_fragment(&key(1), 2).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { key: k, index: 2, .. } if k == key(1)),
        "{err:?}"
    );
}

#[test]
fn disk_store_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let file = FileId(Id::hash(b"file"));
    let volume = VolumeKey(Id::hash(b"volume"));
    let holder = NodeId(Id::hash(b"holder"));
    let mut expected = Vec::new();
    {
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        for i in 0..6u16 {
            let (bytes, hash) = fragment(u64::from(i), i, 1000 * usize::from(i) + 1);
            store
                .put_fragment(&key(u64::from(i % 2)), i, &hash, &bytes)
                .unwrap();
            expected.push((key(u64::from(i % 2)), i, bytes));
        }
        store.delete_fragment(&key(0), 4).unwrap();
        expected.retain(|(_, i, _)| *i != 4);
        store.put_certificate(&file, b"cert").unwrap();
        store.put_root(&volume, b"root").unwrap();
        store.put_pointer(&key(5), 3, &holder).unwrap();
    }
    let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
    let cleanup = store.open_cleanup();
    assert_eq!(
        (
            cleanup.temp_files_removed,
            cleanup.orphan_bodies_removed,
            cleanup.lost_records_removed
        ),
        (0, 0, 0),
        "a clean close leaves nothing to clean"
    );
    assert_eq!(cleanup.fragments, 5);
    for (k, i, bytes) in &expected {
        assert_eq!(store.get_fragment(k, *i).unwrap().as_ref(), Some(bytes));
    }
    let bodies: u64 = expected.iter().map(|(_, _, b)| b.len() as u64).sum();
    let metadata = record_bytes(32, 4) + record_bytes(32, 4) + record_bytes(34, 32);
    let total = bodies + metadata;
    assert_eq!(
        store.used(),
        total,
        "bodies and metadata, recounted at open"
    );
    assert_eq!(store.free(), (1 << 20) - total);
    assert_eq!(store.get_fragment(&key(0), 4).unwrap(), None);
    assert_eq!(store.get_certificate(&file).unwrap().unwrap(), b"cert");
    assert_eq!(store.get_root(&volume).unwrap().unwrap(), b"root");
    assert_eq!(store.get_pointer(&key(5), 3).unwrap(), Some(holder));
    drop(store);

    // Reopened with less capacity than is used: nothing lost, no room for more.
    let store = DiskStore::open(dir.path(), 100).unwrap();
    assert_eq!((store.used(), store.free()), (total, 0));
    let (bytes, hash) = fragment(9, 9, 1);
    let err = store.put_fragment(&key(9), 9, &hash, &bytes).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Full {
                needed: 1,
                free: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn disk_store_keeps_references_and_tombstones_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, gone, reclaimed) = (
        FileId(Id::hash(b"kept")),
        FileId(Id::hash(b"gone")),
        FileId(Id::hash(b"reclaimed")),
    );
    {
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        store.add_reference(&key(1), &kept).unwrap();
        store.add_reference(&key(1), &gone).unwrap();
        store.add_reference(&key(2), &reclaimed).unwrap();
        assert_eq!(store.remove_reference(&key(1), &gone).unwrap(), 1);
        store.put_tombstone(&reclaimed, b"reclaim").unwrap();
    }
    let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.references(&key(1)).unwrap(), vec![kept]);
    assert_eq!(store.references(&key(2)).unwrap(), vec![reclaimed]);
    assert!(store.is_reclaimed(&reclaimed).unwrap());
    assert_eq!(
        store.get_tombstone(&reclaimed).unwrap().unwrap(),
        b"reclaim"
    );
    assert!(!store.is_reclaimed(&kept).unwrap());
    assert!(matches!(
        store.put_certificate(&reclaimed, b"again"),
        Err(StoreError::Reclaimed { .. })
    ));
    let metadata = 2 * record_bytes(64, 0) + record_bytes(32, b"reclaim".len());
    assert_eq!(
        store.used(),
        metadata,
        "references and the tombstone, recounted"
    );
}

#[test]
fn disk_store_detects_a_flipped_byte_truncation_and_a_missing_body() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
    let mut hashes = Vec::new();
    for i in 0..4u16 {
        let (bytes, hash) = fragment(1, i, 20_000);
        store.put_fragment(&key(1), i, &hash, &bytes).unwrap();
        hashes.push(bytes);
    }

    let flipped = store.body_path(&key(1), 0).unwrap().unwrap();
    let mut body = fs::read(&flipped).unwrap();
    body[12_345] ^= 0x40;
    fs::write(&flipped, &body).unwrap();
    let err = store.get_fragment(&key(1), 0).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { key: k, index: 0, .. } if k == key(1)),
        "{err:?}"
    );

    let truncated = store.body_path(&key(1), 1).unwrap().unwrap();
    fs::write(&truncated, &hashes[1][..19_999]).unwrap();
    let err = store.get_fragment(&key(1), 1).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { index: 1, .. }),
        "{err:?}"
    );

    let missing = store.body_path(&key(1), 2).unwrap().unwrap();
    fs::remove_file(&missing).unwrap();
    let err = store.get_fragment(&key(1), 2).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { index: 2, .. }),
        "{err:?}"
    );

    // The untouched fragment still reads.
    assert_eq!(
        store.get_fragment(&key(1), 3).unwrap().as_ref(),
        Some(&hashes[3])
    );
    drop(store);

    // At open, the record without a body is dropped and no longer counted; the
    // corrupt ones stay (for repair to find) and still refuse to be read.
    let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.open_cleanup().lost_records_removed, 1);
    assert_eq!(store.used(), 3 * 20_000);
    assert_eq!(store.get_fragment(&key(1), 2).unwrap(), None);
    assert!(matches!(
        store.get_fragment(&key(1), 0),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn disk_store_open_removes_temp_files_and_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let (orphan_path, stranger_path, temp_dir) = {
        let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
        let (bytes, hash) = fragment(1, 0, 1000);
        store.put_fragment(&key(1), 0, &hash, &bytes).unwrap();
        let kept = store.body_path(&key(1), 0).unwrap().unwrap();
        // An orphan: a body renamed into place whose record never made it (as a
        // crash between the rename and the index flush leaves it).
        store
            .put_fragment(&key(2), 0, &fragment(2, 0, 500).1, &fragment(2, 0, 500).0)
            .unwrap();
        let orphan = store.body_path(&key(2), 0).unwrap().unwrap();
        let orphan_bytes = fs::read(&orphan).unwrap();
        store.delete_fragment(&key(2), 0).unwrap();
        fs::write(&orphan, orphan_bytes).unwrap();
        // A half-written temp file, and a file the store did not make.
        fs::write(store.temp_dir().join("half.tmp"), b"half a fragm").unwrap();
        let stranger = kept.with_file_name("notes.txt");
        fs::write(&stranger, b"not ours").unwrap();
        (orphan, stranger, store.temp_dir().to_path_buf())
    };
    let store = DiskStore::open(dir.path(), 1 << 20).unwrap();
    let cleanup = store.open_cleanup();
    assert_eq!(
        (cleanup.temp_files_removed, cleanup.orphan_bodies_removed),
        (1, 1)
    );
    assert!(!orphan_path.exists());
    assert!(
        stranger_path.exists(),
        "files the store did not make are left alone"
    );
    assert_eq!(fs::read_dir(&temp_dir).unwrap().count(), 0);
    assert_eq!(store.used(), 1000);
    assert_eq!(store.get_fragment(&key(2), 0).unwrap(), None);
}

#[test]
fn disk_store_refuses_a_second_open_of_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = DiskStore::open(dir.path(), 1 << 20).unwrap();
    let second = DiskStore::open(dir.path(), 1 << 20);
    assert!(
        second.is_err(),
        "two stores on one directory would corrupt it"
    );
}
