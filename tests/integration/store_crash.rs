//! A `DiskStore` killed (SIGKILL) in the middle of puts and deletes must reopen to a
//! consistent state: every listed fragment reads back and verifies, `used` is the sum
//! of the bodies, no temp file or orphan body remains.
//!
//! The parent test re-runs this test binary as a child (`--exact` on the child test,
//! with an environment variable naming the store directory); the child puts and
//! deletes in a loop until the parent kills it at a varying moment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_node::id::{Id, PlacementKey};
use cairn_node::store::{DiskStore, FragmentStorage, StoreError};
use cairn_tests::store::{fragment, key};

const CHILD_DIR_ENV: &str = "CAIRN_STORE_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "CAIRN_STORE_CRASH_CHILD_ROUND";
const CHILD_TEST: &str = "store_crash::crash_child_puts_until_killed";
const READY: &str = "CAIRN-CRASH-CHILD-READY";
const ROUNDS: u64 = 8;
/// The child stops by itself after this many operations (the parent kills it long before).
const CHILD_MAX_OPS: u64 = 5_000;
const CAPACITY: u64 = 8 << 20;

/// Not a test of its own: the body of the child process. Without the environment
/// variable (a normal test run) it returns at once.
#[test]
fn crash_child_puts_until_killed() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV).unwrap().parse().unwrap();
    let store = DiskStore::open(&dir, CAPACITY).unwrap();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{READY}").unwrap();
    stdout.flush().unwrap();
    for op in 0..CHILD_MAX_OPS {
        let n = round * CHILD_MAX_OPS + op;
        let index = (n % 6) as u16;
        let k = key(n / 6);
        // Sizes from 1 byte to ~192 KiB, so kills land in writes of every length.
        let len = 1 + (Id::hash(&n.to_be_bytes()).0[0] as usize) * 768;
        let (bytes, hash) = fragment(n, index, len);
        match store.put_fragment(&k, index, &hash, &bytes) {
            Ok(_) => {}
            Err(StoreError::Full { .. }) => {
                // Make room: delete what is under the next two keys clockwise.
                let next = store.placement_keys_in(&k, &k).unwrap();
                for victim in next.iter().take(2) {
                    for info in store.fragments_under(victim).unwrap() {
                        store.delete_fragment(victim, info.index).unwrap();
                    }
                }
            }
            Err(other) => panic!("child put failed: {other}"),
        }
        if op % 4 == 3 {
            store
                .delete_fragment(&key((n - 2) / 6), ((n - 2) % 6) as u16)
                .unwrap();
        }
    }
}

/// Checks a reopened store the way a user would; returns how many fragments it holds.
fn check_consistent(store: &DiskStore) -> u64 {
    assert_eq!(
        std::fs::read_dir(store.temp_dir()).unwrap().count(),
        0,
        "temp files remain after open"
    );
    let everything = PlacementKey(Id::ZERO);
    let mut fragments = 0u64;
    let mut bytes = 0u64;
    for k in store.placement_keys_in(&everything, &everything).unwrap() {
        for info in store.fragments_under(&k).unwrap() {
            let body = store
                .get_fragment(&k, info.index)
                .unwrap_or_else(|e| panic!("listed fragment unreadable after crash: {e}"))
                .expect("listed fragment missing");
            assert_eq!(body.len() as u64, info.len);
            fragments += 1;
            bytes += info.len;
        }
    }
    assert_eq!(
        store.used(),
        bytes,
        "accounting differs from the sum of the bodies"
    );
    assert_eq!(
        count_files(store.bodies_dir()),
        fragments,
        "orphan body files remain"
    );
    fragments
}

fn count_files(dir: &Path) -> u64 {
    let mut count = 0;
    for fan in std::fs::read_dir(dir).unwrap() {
        let fan = fan.unwrap().path();
        count += std::fs::read_dir(&fan).unwrap().count() as u64;
    }
    count
}

#[test]
fn a_put_killed_midway_leaves_the_old_or_the_new_state() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut most_fragments = 0;
    let mut cleaned = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the child to have opened the store (bounded: it prints a few lines).
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .take(50)
            .any(|line| line.is_ok_and(|l| l.trim_end().ends_with(READY)));
        assert!(ready, "round {round}: child never opened the store");
        // A varying moment: 2..80 ms into the loop of ~1-20 ms puts.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let delay = 2 + (u64::from(nanos) ^ round.wrapping_mul(0x9e37_79b9)) % 78;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        drop(lines);

        let store = DiskStore::open(dir.path(), CAPACITY).unwrap();
        let cleanup = store.open_cleanup();
        cleaned += cleanup.temp_files_removed + cleanup.orphan_bodies_removed;
        // Bodies are durable before their records: a crash never leaves a record
        // without its body (open would drop it, hiding the loss, so check here).
        assert_eq!(
            cleanup.lost_records_removed, 0,
            "round {round}: a record outlived its body"
        );
        let fragments = check_consistent(&store);
        assert_eq!(fragments, cleanup.fragments);
        most_fragments = most_fragments.max(fragments);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "crash test took too long"
        );
    }
    eprintln!(
        "crash rounds: {ROUNDS}, most fragments {most_fragments}, leftovers cleaned {cleaned}"
    );
    assert!(
        most_fragments > 0,
        "the child never stored anything: the test tested nothing"
    );
}
