//! A `DiskStore` on a file system that really runs out of space: an 8 MiB tmpfs,
//! mounted for the test, with the store's capacity set far beyond it. Puts (single
//! and groups) go on until the file system refuses, at ever smaller sizes down to one
//! byte; then the test checks what a user would: the refusal is a typed `DiskFull`
//! naming the operation and the path, everything stored before reads back and
//! verifies, `used()` is exactly the sum of the bodies, no temp file or orphan body
//! is left, deleting frees room for new puts, and a reopen finds the same store.
//!
//! Mounting needs root (as here and on CI); without it the test says `skipped:` on
//! stderr and returns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use cairn_core::id::{FileId, FragmentHash, Id, PlacementKey};
use cairn_store::{DiskStore, NodeStore, OfferedFragment, StoreError};
use cairn_tests::store::{fragment, key};
use tempfile::TempDir;

/// Size of the tmpfs: small, so filling it takes a few dozen puts.
const TMPFS_SIZE: &str = "8m";
/// The store's capacity: far beyond the tmpfs, so the file system refuses first.
const CAPACITY: u64 = 1 << 30;
/// The first put size; each refusal halves it, down to one byte.
const FIRST_LEN: usize = 200_003;
/// Fragments in a group put (a 4+2 block).
const GROUP: u16 = 6;
/// Bound on the fill loop (it ends after ~100 puts: 8 MiB / 200 KB plus a few per halving).
const MAX_PUTS: u64 = 2_000;

/// A tmpfs mounted on a fresh temp dir, unmounted when dropped (on every path,
/// panics included). Declare it before the store so the store is dropped first.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("could not run mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path();
        let unmounted = |lazy: bool| {
            let mut umount = Command::new("umount");
            if lazy {
                umount.arg("-l");
            }
            umount.arg(path).status().is_ok_and(|s| s.success())
        };
        if !unmounted(false) && !unmounted(true) {
            eprintln!(
                "could not unmount the tmpfs at {}: unmount it by hand",
                path.display()
            );
        }
        // The TempDir field is dropped after this, removing the (now empty) mount point.
    }
}

/// Whether `path` is a mount point now, per `/proc/self/mounts`.
fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    let path = path.to_str().unwrap();
    mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(path))
}

/// A fragment the store accepted, as the test put it.
struct Stored {
    key: PlacementKey,
    index: u16,
    bytes: Vec<u8>,
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

fn count_bodies(store: &DiskStore) -> usize {
    fs::read_dir(store.bodies_dir())
        .unwrap()
        .map(|fan| count_files(&fan.unwrap().path()))
        .sum()
}

/// What a user would check: every fragment the store accepted reads back (re-verified
/// by the store) with the bytes put, nothing else is listed, `used()` is the sum of
/// the bodies, and no temp file or orphan body is left.
fn assert_consistent(store: &DiskStore, stored: &[Stored], when: &str) {
    for s in stored {
        let body = store
            .get_fragment(&s.key, s.index)
            .unwrap_or_else(|e| panic!("{when}: fragment {} unreadable: {e}", s.index));
        assert_eq!(
            body.as_deref(),
            Some(&s.bytes[..]),
            "{when}: fragment {} of {:?} lost or changed",
            s.index,
            s.key
        );
    }
    let everything = PlacementKey(Id::ZERO);
    let listed: usize = store
        .placement_keys_in(&everything, &everything)
        .unwrap()
        .iter()
        .map(|k| store.fragments_under(k).unwrap().len())
        .sum();
    assert_eq!(listed, stored.len(), "{when}: fragments listed");
    let bytes: u64 = stored.iter().map(|s| s.bytes.len() as u64).sum();
    // The only metadata these tests write is certificates; each counts in `used`.
    let certificates: u64 = store
        .certificate_files(None, usize::MAX)
        .unwrap()
        .iter()
        .map(|file| {
            let held = store.get_certificate(file).unwrap().unwrap_or_default();
            cairn_store::record_bytes(32, held.len())
        })
        .sum();
    assert_eq!(
        store.used(),
        bytes + certificates,
        "{when}: used() against the bodies and certificates"
    );
    assert_eq!(count_files(store.temp_dir()), 0, "{when}: temp files left");
    assert_eq!(count_bodies(store), stored.len(), "{when}: body files");
}

/// Puts one fragment (`group == false`) or a group of six under `key(seed)`; on
/// success, appends what was stored.
fn put(
    store: &DiskStore,
    seed: u64,
    len: usize,
    group: bool,
    stored: &mut Vec<Stored>,
) -> Result<(), StoreError> {
    let k = key(seed);
    let fragments: Vec<(u16, Vec<u8>, FragmentHash)> = if group {
        (0..GROUP)
            .map(|index| {
                let (bytes, hash) = fragment(seed, index, len.div_ceil(usize::from(GROUP)));
                (index, bytes, hash)
            })
            .collect()
    } else {
        let (bytes, hash) = fragment(seed, 0, len);
        vec![(0, bytes, hash)]
    };
    if group {
        let offered: Vec<OfferedFragment<'_>> = fragments
            .iter()
            .map(|(index, bytes, hash)| OfferedFragment {
                index: *index,
                hash: *hash,
                bytes,
            })
            .collect();
        store.put_fragments(&k, &offered)?;
    } else {
        let (index, bytes, hash) = &fragments[0];
        store.put_fragment(&k, *index, hash, bytes)?;
    }
    stored.extend(fragments.into_iter().map(|(index, bytes, _)| Stored {
        key: k,
        index,
        bytes,
    }));
    Ok(())
}

/// Mounts the tmpfs, or says why the test is skipped.
fn mount_or_skip() -> Option<Tmpfs> {
    match Tmpfs::mount(TMPFS_SIZE) {
        Ok(tmpfs) => {
            assert!(
                is_mounted(tmpfs.path()),
                "mount said ok but nothing is mounted"
            );
            eprintln!(
                "tmpfs of {TMPFS_SIZE} mounted at {}",
                tmpfs.path().display()
            );
            Some(tmpfs)
        }
        Err(why) => {
            eprintln!("skipped: needs a tmpfs mount (run as root): {why}");
            None
        }
    }
}

/// Unmounts and checks that nothing is left mounted.
fn unmount(tmpfs: Tmpfs) {
    let mount_point = tmpfs.path().to_path_buf();
    drop(tmpfs);
    assert!(!is_mounted(&mount_point), "the tmpfs is still mounted");
}

/// Puts (single and groups alternating) until the store refuses a one-byte put,
/// halving the size at each refusal. Returns what was stored and every refusal; any
/// error other than `DiskFull` fails the test.
fn fill(store: &DiskStore) -> (Vec<Stored>, Vec<StoreError>) {
    let mut stored: Vec<Stored> = Vec::new();
    let mut refusals: Vec<StoreError> = Vec::new();
    let mut len = FIRST_LEN;
    for seed in 1..=MAX_PUTS {
        let group = seed % 2 == 0 && len >= usize::from(GROUP);
        match put(store, seed, len, group, &mut stored) {
            Ok(()) => {}
            Err(err @ StoreError::DiskFull { .. }) => {
                refusals.push(err);
                if len == 1 {
                    eprintln!(
                        "full after {seed} puts: {} fragments, {} bytes; {} refusals, the last: {}",
                        stored.len(),
                        store.used(),
                        refusals.len(),
                        refusals[refusals.len() - 1]
                    );
                    return (stored, refusals);
                }
                len /= 2;
            }
            Err(other) => panic!("a put on a full disk failed with {other:?}, not DiskFull"),
        }
    }
    panic!("the tmpfs never filled up in {MAX_PUTS} puts");
}

/// Deletes a third of `stored`, puts again (single and group), reopens the store on
/// the same file system, and checks it each time.
fn free_put_and_reopen(mut store: DiskStore, stored: &mut Vec<Stored>) {
    let victims: Vec<Stored> = stored.drain(..stored.len() / 3).collect();
    for v in &victims {
        let freed = store.delete_fragment(&v.key, v.index).unwrap();
        assert_eq!(freed, Some(v.bytes.len() as u64));
    }
    assert_consistent(&store, stored, "after deleting a third");
    put(&store, MAX_PUTS + 1, 100_000, false, stored).unwrap();
    put(&store, MAX_PUTS + 2, 100_000, true, stored).unwrap();
    assert_consistent(&store, stored, "after putting again");

    // Reopen on the full-then-freed file system: the same store, nothing to clean.
    let dir = store.dir().to_path_buf();
    drop(store);
    store = DiskStore::open(&dir, CAPACITY).unwrap();
    let cleanup = store.open_cleanup();
    assert_eq!(
        (
            cleanup.temp_files_removed,
            cleanup.orphan_bodies_removed,
            cleanup.lost_records_removed
        ),
        (0, 0, 0),
        "reopen found debris: {cleanup:?}"
    );
    assert_eq!(cleanup.fragments, stored.len() as u64);
    assert_consistent(&store, stored, "after reopening");
    put(&store, MAX_PUTS + 3, 100_000, true, stored).unwrap();
    assert_consistent(&store, stored, "after a put on the reopened store");
}

/// The store as shipped (default index headroom): puts are refused with `DiskFull`
/// while the index still has room, so certificates are refused too and deletes and
/// new puts keep working.
#[test]
fn a_full_file_system_refuses_cleanly_and_loses_nothing() {
    let Some(tmpfs) = mount_or_skip() else {
        return;
    };
    let dir = tmpfs.path().join("store");
    let store = DiskStore::open(&dir, CAPACITY).unwrap();
    let (mut stored, refusals) = fill(&store);
    for err in &refusals {
        let StoreError::DiskFull { operation, path } = err else {
            unreachable!("fill returns only DiskFull");
        };
        assert!(path.starts_with(&dir), "{err}: path outside the store");
        let message = err.to_string();
        assert!(
            message.contains(operation) && message.contains(&*path.to_string_lossy()),
            "message does not name the operation and path: {message}"
        );
    }
    assert_consistent(&store, &stored, "after filling");

    // Index-only records on the full disk: refused before sled meets ENOSPC (which
    // would leave it refusing every write, deletes included, until reopened).
    let certificate = [7u8; 1000];
    let refused = (0..10_000u64).find_map(|n| {
        let file = FileId(Id::hash(&n.to_be_bytes()));
        store.put_certificate(&file, &certificate).err()
    });
    match refused {
        Some(StoreError::DiskFull { .. }) => {}
        other => panic!("certificates on a full disk: expected DiskFull, got {other:?}"),
    }
    assert_consistent(&store, &stored, "after refusing a certificate");

    free_put_and_reopen(store, &mut stored);
    unmount(tmpfs);
}

/// With the headroom check off, the file system itself refuses: ENOSPC on a body
/// write (single or group) is `DiskFull` naming the write and the temp file, and the
/// put is undone. The index lives on another file system (a symlink), so that only
/// body writes can meet ENOSPC here; the index meeting it is the next test.
#[test]
fn enospc_on_a_body_write_undoes_the_put() {
    let Some(tmpfs) = mount_or_skip() else {
        return;
    };
    let index_elsewhere = tempfile::tempdir().unwrap();
    let dir = tmpfs.path().join("store");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(index_elsewhere.path(), dir.join("index")).unwrap();
    let store = DiskStore::open(&dir, CAPACITY)
        .unwrap()
        .with_disk_headroom(0);
    let (mut stored, refusals) = fill(&store);
    for err in &refusals {
        let StoreError::DiskFull { operation, path } = err else {
            unreachable!("fill returns only DiskFull");
        };
        assert!(
            *operation == "writing" || *operation == "creating",
            "{err}: not refused by a body write"
        );
        assert!(path.starts_with(store.temp_dir()), "{err}: not a temp file");
    }
    assert_consistent(&store, &stored, "after filling");
    free_put_and_reopen(store, &mut stored);
    unmount(tmpfs);
}

/// Fills the rest of the file system under `dir` with a file of whole 4 KiB pages
/// (another program's data); returns it and its length.
fn fill_with_filler(dir: &Path) -> (fs::File, u64) {
    let path = dir.join("filler");
    let mut filler = fs::File::create(&path).unwrap();
    let page = [0x5au8; 4096];
    let mut len = 0u64;
    // Bounded: the tmpfs holds 2048 pages.
    for _ in 0..4096 {
        if filler.write_all(&page).is_err() {
            break;
        }
        len += 4096;
    }
    filler.set_len(len).unwrap(); // drop any partly written page
    assert!(
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&page)
            .is_err(),
        "the filler did not fill the file system"
    );
    (filler, len)
}

/// The index itself meets ENOSPC (headroom check off, the disk filled by someone
/// else): a put whose body took the last free page, and whose index flush then found
/// none, fails with `DiskFull`; the running store stays consistent (sled refuses the
/// undo, so a fragment it recorded keeps its body), and a reopen after space is freed
/// is consistent too, with no record left without its body.
#[test]
fn enospc_in_the_index_leaves_the_store_consistent() {
    let Some(tmpfs) = mount_or_skip() else {
        return;
    };
    let dir = tmpfs.path().join("store");
    let store = DiskStore::open(&dir, CAPACITY)
        .unwrap()
        .with_disk_headroom(0);
    let mut stored = Vec::new();
    for seed in 1..=10 {
        put(&store, seed, 10_000, seed % 2 == 0, &mut stored).unwrap();
    }
    let (filler, mut filler_len) = fill_with_filler(tmpfs.path());

    // Free one page at a time and put a one-byte fragment into it, until the index
    // flush after a body finds no page left (sled fills a page every few dozen puts).
    let mut failed = None;
    for seed in 100..2_100u64 {
        filler_len -= 4096;
        filler.set_len(filler_len).unwrap();
        match put(&store, seed, 1, false, &mut stored) {
            Ok(()) => {}
            Err(err @ StoreError::DiskFull { .. }) => {
                failed = Some((seed, err));
                break;
            }
            Err(other) => panic!("expected DiskFull, got {other:?}"),
        }
    }
    let (seed, err) = failed.expect("the index never met ENOSPC");
    eprintln!("index refused after {} fragments: {err}", stored.len());
    assert!(
        matches!(&err, StoreError::DiskFull { path, .. } if path.ends_with("(sled index)")),
        "{err}: not refused by the index"
    );
    // The put failed; if the index kept its record, the body must be there too.
    let failed_key = key(seed);
    let kept = store.fragment_info(&failed_key, 0).unwrap().is_some();
    eprintln!(
        "the failed put's record is {}",
        if kept {
            "still in the index (body kept)"
        } else {
            "gone (put undone)"
        }
    );
    if kept {
        stored.push(Stored {
            key: failed_key,
            index: 0,
            bytes: fragment(seed, 0, 1).0,
        });
    }
    assert_consistent(&store, &stored, "after the index met ENOSPC");

    // Someone frees space; reopen: no record without its body, the rest as before.
    drop(filler);
    fs::remove_file(tmpfs.path().join("filler")).unwrap();
    drop(store);
    let store = DiskStore::open(&dir, CAPACITY).unwrap();
    let cleanup = store.open_cleanup();
    assert_eq!(cleanup.lost_records_removed, 0, "{cleanup:?}");
    assert_eq!(cleanup.temp_files_removed, 0, "{cleanup:?}");
    if kept && store.fragment_info(&failed_key, 0).unwrap().is_none() {
        // Its record never reached the disk (the flush failed): the body was an
        // orphan, removed at open. The put had failed, so nothing acknowledged is lost.
        assert_eq!(cleanup.orphan_bodies_removed, 1, "{cleanup:?}");
        stored.pop();
    }
    assert_consistent(&store, &stored, "after reopening");
    free_put_and_reopen(store, &mut stored);
    unmount(tmpfs);
}
