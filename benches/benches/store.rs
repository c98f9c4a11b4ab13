//! Where should fragment bodies live: inside sled, or in files with sled as the index?
//!
//! Every variant does durable puts (a put returns only once the bytes are on disk):
//!
//! - `sled-bodies`: one sled insert of `version ‖ hash ‖ body`, then `flush()`.
//! - `file-bodies`: write the body to a temp file, `fdatasync`, rename into place,
//!   fsync the directory, then insert `version ‖ hash ‖ len` into sled and `flush()`.
//! - `file-bodies-noflush`: as `file-bodies` without the sled flush (what a layout
//!   whose body files are the truth, with the index rebuilt at open, would cost).
//! - `DiskStore`: the store as built (`file-bodies`, plus hashing the fragment on put).
//!
//! The disk of this machine is shared and fsync-bound rates swing several-fold from
//! minute to minute, so the variants are interleaved: each repetition runs one batch
//! of every variant in turn, and medians compare like with like. Reads fetch a body
//! and re-hash it, as the store does on every read. After the puts, the bytes the
//! variant occupies on disk are reported against the bytes stored.
//!
//! A second part measures group commit (`put_fragments`): a 4+2 block's six 256 KiB
//! fragments stored as six `put_fragment` calls, as one group with its bodies synced
//! one after another, and as one group with the six syncs concurrent (the default),
//! interleaved in the same way, each round starting from the next variant.
//!
//! Run: `cargo bench -p cairn-benches --bench store` (`CAIRN_BENCH_QUICK=1` for a smoke
//! run; `-- layouts` or `-- group` for one part only).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_benches::{Measurement, machine_note, quick, test_bytes};
use cairn_core::id::{FragmentHash, Id, PlacementKey};
use cairn_store::{DEFAULT_SYNC_THREADS, DiskStore, NodeStore, OfferedFragment, fragment_hash};

const SIZES: [usize; 3] = [64 * 1024, 256 * 1024, 1024 * 1024];

/// One way of storing fragment bodies durably.
trait Layout {
    fn name(&self) -> &'static str;
    fn put(&mut self, n: u64, hash: &Id, body: &[u8]);
    fn get(&mut self, n: u64) -> usize;
}

fn key_for(n: u64) -> [u8; 34] {
    let mut key = [0u8; 34];
    key[..32].copy_from_slice(&Id::hash(&n.to_be_bytes()).0);
    key
}

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn verify(hash: &[u8], body: &[u8]) {
    assert_eq!(&Id::hash_parts(&[&0u16.to_be_bytes(), body]).0[..], hash);
}

struct SledBodies {
    db: sled::Db,
    tree: sled::Tree,
}

impl Layout for SledBodies {
    fn name(&self) -> &'static str {
        "sled-bodies"
    }
    fn put(&mut self, n: u64, hash: &Id, body: &[u8]) {
        let mut value = Vec::with_capacity(33 + body.len());
        value.push(1);
        value.extend_from_slice(&hash.0);
        value.extend_from_slice(body);
        self.tree.insert(key_for(n), value).unwrap();
        self.db.flush().unwrap();
    }
    fn get(&mut self, n: u64) -> usize {
        let value = self.tree.get(key_for(n)).unwrap().unwrap();
        verify(&value[1..33], &value[33..]);
        value.len() - 33
    }
}

struct FileBodies {
    db: sled::Db,
    tree: sled::Tree,
    bodies: PathBuf,
    tmp: PathBuf,
    flush_index: bool,
}

impl Layout for FileBodies {
    fn name(&self) -> &'static str {
        if self.flush_index {
            "file-bodies"
        } else {
            "file-bodies-noflush"
        }
    }
    fn put(&mut self, n: u64, hash: &Id, body: &[u8]) {
        let name = format!("{n:016x}");
        let tmp_path = self.tmp.join(&name);
        let mut file = File::create(&tmp_path).unwrap();
        file.write_all(body).unwrap();
        file.sync_data().unwrap();
        drop(file);
        fs::rename(&tmp_path, self.bodies.join(&name)).unwrap();
        fsync_dir(&self.bodies);
        let mut value = Vec::with_capacity(41);
        value.push(1);
        value.extend_from_slice(&hash.0);
        value.extend_from_slice(&(body.len() as u64).to_be_bytes());
        self.tree.insert(key_for(n), value).unwrap();
        if self.flush_index {
            self.db.flush().unwrap();
        }
    }
    fn get(&mut self, n: u64) -> usize {
        let value = self.tree.get(key_for(n)).unwrap().unwrap();
        let body = fs::read(self.bodies.join(format!("{n:016x}"))).unwrap();
        verify(&value[1..33], &body);
        body.len()
    }
}

struct Store {
    store: DiskStore,
}

impl Layout for Store {
    fn name(&self) -> &'static str {
        "DiskStore"
    }
    fn put(&mut self, n: u64, hash: &Id, body: &[u8]) {
        let key = PlacementKey(Id::hash(&n.to_be_bytes()));
        self.store
            .put_fragment(&key, 0, &FragmentHash(*hash), body)
            .unwrap();
    }
    fn get(&mut self, n: u64) -> usize {
        let key = PlacementKey(Id::hash(&n.to_be_bytes()));
        self.store.get_fragment(&key, 0).unwrap().unwrap().len()
    }
}

fn open_sled(dir: &Path) -> (sled::Db, sled::Tree) {
    let db = sled::open(dir.join("db")).unwrap();
    let tree = db.open_tree("fragments-1").unwrap();
    (db, tree)
}

fn file_bodies(dir: &Path, flush_index: bool) -> FileBodies {
    let (db, tree) = open_sled(dir);
    let bodies = dir.join("bodies");
    let tmp = dir.join("tmp");
    fs::create_dir(&bodies).unwrap();
    fs::create_dir(&tmp).unwrap();
    FileBodies {
        db,
        tree,
        bodies,
        tmp,
        flush_index,
    }
}

/// Bytes allocated on disk under `path` (blocks, not apparent sizes).
fn disk_usage(path: &Path) -> u64 {
    let meta = fs::symlink_metadata(path).unwrap();
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            total += disk_usage(&entry.unwrap().path());
        }
    }
    total
}

fn measurement(name: String, bytes: u64, ops: u64, mut seconds: Vec<f64>) -> Measurement {
    seconds.sort_by(f64::total_cmp);
    let m = Measurement {
        name,
        bytes,
        ops,
        seconds,
    };
    m.report();
    m
}

/// Fragments per group (a 4+2 block) and their size (a 1 MiB block at k = 4).
const GROUP: u16 = 6;
const GROUP_FRAGMENT: usize = 256 * 1024;

/// One way of storing a block's fragments with a [`DiskStore`].
struct GroupVariant {
    name: String,
    store: DiskStore,
    grouped: bool,
}

impl GroupVariant {
    fn put_block(&self, n: u64, fragments: &[OfferedFragment<'_>]) {
        let key = PlacementKey(Id::hash(&n.to_be_bytes()));
        if self.grouped {
            self.store.put_fragments(&key, fragments).unwrap();
        } else {
            for f in fragments {
                self.store
                    .put_fragment(&key, f.index, &f.hash, f.bytes)
                    .unwrap();
            }
        }
    }
}

fn group_commit(quick: bool) {
    let (blocks, reps) = if quick {
        (2u64, 3usize)
    } else {
        (4u64, 9usize)
    };
    let bodies: Vec<Vec<u8>> = (0..GROUP)
        .map(|index| test_bytes(GROUP_FRAGMENT, u64::from(index) + 100))
        .collect();
    let fragments: Vec<OfferedFragment<'_>> = bodies
        .iter()
        .zip(0u16..)
        .map(|(bytes, index)| OfferedFragment {
            index,
            hash: fragment_hash(index, bytes),
            bytes,
        })
        .collect();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let open = |i: usize| DiskStore::open(dirs[i].path(), u64::MAX).unwrap();
    let variants = [
        GroupVariant {
            name: format!("{GROUP} single puts"),
            store: open(0),
            grouped: false,
        },
        GroupVariant {
            name: "group, 1 sync thread".into(),
            store: open(1).with_sync_threads(1),
            grouped: true,
        },
        GroupVariant {
            name: format!("group, {DEFAULT_SYNC_THREADS} sync threads"),
            store: open(2).with_sync_threads(DEFAULT_SYNC_THREADS),
            grouped: true,
        },
    ];
    let mut seconds = vec![Vec::new(); variants.len()];
    let mut counter = 0u64;
    // One warm-up round, then `reps` timed ones, every variant in turn, starting from
    // a different one each round (a first try showed the order itself moving rates).
    for rep in 0..=reps {
        for turn in 0..variants.len() {
            let which = (turn + rep) % variants.len();
            let (variant, seconds) = (&variants[which], &mut seconds[which]);
            let start = Instant::now();
            for n in counter..counter + blocks {
                variant.put_block(n, &fragments);
            }
            if rep > 0 {
                seconds.push(start.elapsed().as_secs_f64());
            }
        }
        counter += blocks;
    }
    let block_bytes = GROUP_FRAGMENT as u64 * u64::from(GROUP);
    for (variant, seconds) in variants.iter().zip(seconds) {
        measurement(
            format!(
                "DiskStore {} ({GROUP} x {} KiB blocks)",
                variant.name,
                GROUP_FRAGMENT / 1024
            ),
            block_bytes * blocks,
            blocks,
            seconds,
        );
    }
}

fn main() {
    println!("{}", machine_note());
    let parts: Vec<String> = std::env::args().skip(1).collect();
    let wants = |part: &str| {
        let named = ["layouts", "group"];
        !parts.iter().any(|p| named.contains(&p.as_str())) || parts.iter().any(|p| p == part)
    };
    if wants("group") {
        group_commit(quick());
    }
    if wants("layouts") {
        layouts();
    }
}

/// Bodies in sled or in files: the measurement behind the layout.
fn layouts() {
    // Puts per batch: enough to amortise noise, few enough to keep the run short.
    let (puts, reps) = if quick() {
        (4u64, 3usize)
    } else {
        (16u64, 9usize)
    };

    for size in SIZES {
        let body = test_bytes(size, size as u64);
        let hash = Id::hash_parts(&[&0u16.to_be_bytes(), &body]);
        let label = format!("{} KiB", size / 1024);
        let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let (db, tree) = open_sled(dirs[0].path());
        let mut layouts: Vec<Box<dyn Layout>> = vec![
            Box::new(SledBodies { db, tree }),
            Box::new(file_bodies(dirs[1].path(), true)),
            Box::new(file_bodies(dirs[2].path(), false)),
            Box::new(Store {
                store: DiskStore::open(dirs[3].path(), u64::MAX).unwrap(),
            }),
        ];
        let mut put_seconds = vec![Vec::new(); layouts.len()];
        let mut counter = 0u64;
        // One warm-up batch, then `reps` timed ones, every layout in turn.
        for rep in 0..=reps {
            let first = counter;
            for (layout, seconds) in layouts.iter_mut().zip(&mut put_seconds) {
                let start = Instant::now();
                for n in first..first + puts {
                    layout.put(n, &hash, &body);
                }
                if rep > 0 {
                    seconds.push(start.elapsed().as_secs_f64());
                }
            }
            counter += puts;
        }
        let stored = counter;
        for (layout, seconds) in layouts.iter().zip(put_seconds) {
            measurement(
                format!("{} put {label}", layout.name()),
                size as u64 * puts,
                puts,
                seconds,
            );
        }
        let mut get_seconds = vec![Vec::new(); layouts.len()];
        for rep in 0..reps {
            for (layout, seconds) in layouts.iter_mut().zip(&mut get_seconds) {
                let start = Instant::now();
                for i in 0..puts {
                    let n = (rep as u64 * puts + i) % stored;
                    assert_eq!(layout.get(n), size);
                }
                seconds.push(start.elapsed().as_secs_f64());
            }
        }
        for (layout, seconds) in layouts.iter().zip(get_seconds) {
            measurement(
                format!("{} get+verify {label}", layout.name()),
                size as u64 * puts,
                puts,
                seconds,
            );
        }
        drop(layouts);
        for (dir, name) in dirs.iter().zip([
            "sled-bodies",
            "file-bodies",
            "file-bodies-noflush",
            "DiskStore",
        ]) {
            let on_disk = disk_usage(dir.path());
            let logical = stored * size as u64;
            println!(
                "{name:<22} {label}: {} MB on disk for {} MB stored ({:.2}x)",
                on_disk / 1_000_000,
                logical / 1_000_000,
                on_disk as f64 / logical as f64
            );
        }
    }
}
