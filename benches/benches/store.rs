//! Where should fragment bodies live: inside sled, or in files with sled as the index?
//!
//! Both layouts do durable puts (the put returns only once the bytes are on disk):
//!
//! - `sled-bodies`: one sled insert of `hash ‖ body`, then `flush()`.
//! - `file-bodies`: write the body to a temp file, `fdatasync`, rename into place,
//!   fsync the directory, then insert `hash ‖ len` into sled and `flush()`.
//!
//! Reads: fetch the body and re-hash it (as the store does on every read).
//! At the end, the chosen layout is measured through `cairn_node::store::DiskStore`.
//!
//! Run: `cargo bench -p cairn-benches --bench store` (`CAIRN_BENCH_QUICK=1` for a smoke run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use cairn_benches::{machine_note, measure, quick, test_bytes};
use cairn_node::id::{FragmentHash, Id, PlacementKey};
use cairn_node::store::{DiskStore, FragmentStorage};

const SIZES: [usize; 3] = [64 * 1024, 256 * 1024, 1024 * 1024];

fn key_for(n: u64) -> Vec<u8> {
    let mut key = Id::hash(&n.to_be_bytes()).0.to_vec();
    key.extend_from_slice(&0u16.to_be_bytes());
    key
}

fn fsync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

fn main() {
    println!("{}", machine_note());
    // Puts per repetition: enough to amortise noise, few enough to keep the run short.
    let (puts, reps) = if quick() {
        (4u64, 3usize)
    } else {
        (32u64, 7usize)
    };

    for size in SIZES {
        let body = test_bytes(size, size as u64);
        let hash = Id::hash_parts(&[&0u16.to_be_bytes(), &body]);
        let label = format!("{} KiB", size / 1024);
        let bytes_per_rep = size as u64 * puts;

        // --- sled holds the bodies -----------------------------------------------------
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("fragments-1").unwrap();
        let mut counter = 0u64;
        measure(
            &format!("sled-bodies put+flush {label}"),
            bytes_per_rep,
            puts,
            reps,
            || {
                for _ in 0..puts {
                    counter += 1;
                    let mut value = Vec::with_capacity(33 + size);
                    value.push(1);
                    value.extend_from_slice(&hash.0);
                    value.extend_from_slice(&body);
                    tree.insert(key_for(counter), value).unwrap();
                    db.flush().unwrap();
                }
            },
        );
        let stored = counter;
        let mut read_counter = 0u64;
        measure(
            &format!("sled-bodies get+verify {label}"),
            bytes_per_rep,
            puts,
            reps,
            || {
                for _ in 0..puts {
                    read_counter = read_counter % stored + 1;
                    let value = tree.get(key_for(read_counter)).unwrap().unwrap();
                    let got = Id::hash_parts(&[&0u16.to_be_bytes(), &value[33..]]);
                    assert_eq!(&got.0[..], &value[1..33]);
                }
            },
        );
        drop(tree);
        drop(db);
        drop(dir);

        // --- files hold the bodies, sled the index ---------------------------------------
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("fragments-1").unwrap();
        let bodies = dir.path().join("bodies");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&bodies).unwrap();
        fs::create_dir(&tmp).unwrap();
        let mut counter = 0u64;
        measure(
            &format!("file-bodies put+sync+flush {label}"),
            bytes_per_rep,
            puts,
            reps,
            || {
                for _ in 0..puts {
                    counter += 1;
                    let name = format!("{counter:016x}");
                    let tmp_path = tmp.join(&name);
                    let mut file = File::create(&tmp_path).unwrap();
                    file.write_all(&body).unwrap();
                    file.sync_data().unwrap();
                    drop(file);
                    fs::rename(&tmp_path, bodies.join(&name)).unwrap();
                    fsync_dir(&bodies);
                    let mut value = Vec::with_capacity(41);
                    value.push(1);
                    value.extend_from_slice(&hash.0);
                    value.extend_from_slice(&(size as u64).to_be_bytes());
                    tree.insert(key_for(counter), value).unwrap();
                    db.flush().unwrap();
                }
            },
        );
        let stored = counter;
        let mut read_counter = 0u64;
        measure(
            &format!("file-bodies get+verify {label}"),
            bytes_per_rep,
            puts,
            reps,
            || {
                for _ in 0..puts {
                    read_counter = read_counter % stored + 1;
                    let value = tree.get(key_for(read_counter)).unwrap().unwrap();
                    let body = fs::read(bodies.join(format!("{read_counter:016x}"))).unwrap();
                    let got = Id::hash_parts(&[&0u16.to_be_bytes(), &body]);
                    assert_eq!(&got.0[..], &value[1..33]);
                }
            },
        );
        drop(tree);
        drop(db);
        drop(dir);

        // --- the store as built (the chosen layout behind the API) ----------------------
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), u64::MAX).unwrap();
        let expected = FragmentHash(hash);
        let mut counter = 0u64;
        measure(
            &format!("DiskStore put_fragment {label}"),
            bytes_per_rep,
            puts,
            reps,
            || {
                for _ in 0..puts {
                    counter += 1;
                    let key = PlacementKey(Id::hash(&counter.to_be_bytes()));
                    store.put_fragment(&key, 0, &expected, &body).unwrap();
                }
            },
        );
        let stored = counter;
        let mut read_counter = 0u64;
        measure(
            &format!("DiskStore get_fragment {label}"),
            bytes_per_rep,
            puts,
            reps,
            || {
                for _ in 0..puts {
                    read_counter = read_counter % stored + 1;
                    let key = PlacementKey(Id::hash(&read_counter.to_be_bytes()));
                    let body = store.get_fragment(&key, 0).unwrap().unwrap();
                    assert_eq!(body.len(), size);
                }
            },
        );
    }
}
