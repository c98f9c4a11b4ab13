//! A `DiskStore` killed (SIGKILL) in the middle of puts and deletes must reopen to a
//! consistent state: every listed fragment reads back and verifies, `used` is the sum
//! of the bodies, no temp file or orphan body remains, and a group put
//! (`put_fragments`) is there wholly or not at all.
//!
//! The parent test re-runs this test binary as a child (`--exact` on the child test,
//! with an environment variable naming the store directory); the child puts and
//! deletes in a loop until the parent kills it at a varying moment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::id::{Id, PlacementKey};
use cairn_store::{DiskStore, NodeStore, OfferedFragment, StoreError};
use cairn_tests::store::{fragment, key};

const CHILD_DIR_ENV: &str = "CAIRN_STORE_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "CAIRN_STORE_CRASH_CHILD_ROUND";
const CHILD_TEST: &str = "store_crash::crash_child_puts_until_killed";
const READY: &str = "CAIRN-CRASH-CHILD-READY";
const ROUNDS: u64 = 8;
/// The child stops by itself after this many operations (the parent kills it long before).
const CHILD_MAX_OPS: u64 = 5_000;
const CAPACITY: u64 = 8 << 20;
/// Fragments in a group put by the child (a 4+2 block).
const GROUP: u16 = 6;
/// Group keys are `key(GROUP_KEY_BASE + n)`, apart from the single-put keys `key(n / 6)`.
const GROUP_KEY_BASE: u64 = 1 << 40;

/// The placement key of the child's group put at operation `n`.
fn group_key(n: u64) -> PlacementKey {
    key(GROUP_KEY_BASE + n)
}

/// Deletes every fragment under `victim` in ascending index order, so a kill midway
/// leaves a suffix of its indexes (never a prefix, which is what a group put that
/// recorded its fragments one by one would leave).
fn delete_key(store: &DiskStore, victim: &PlacementKey) {
    for info in store.fragments_under(victim).unwrap() {
        store.delete_fragment(victim, info.index).unwrap();
    }
}

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
        // Sizes from 1 byte to ~192 KiB, so kills land in writes of every length.
        let len = 1 + (Id::hash(&n.to_be_bytes()).0[0] as usize) * 768;
        // Odd operations put a whole group of six under a key of its own; even ones
        // put one fragment, and every fourth deletes one, as single operations.
        let (k, put) = if op % 2 == 1 {
            let k = group_key(n);
            let group: Vec<_> = (0..GROUP)
                .map(|index| (index, fragment(n, index, len / 4)))
                .collect();
            let offered: Vec<OfferedFragment<'_>> = group
                .iter()
                .map(|(index, (bytes, hash))| OfferedFragment {
                    index: *index,
                    hash: *hash,
                    bytes,
                })
                .collect();
            (k, store.put_fragments(&k, &offered).map(drop))
        } else {
            let index = (n % 6) as u16;
            let k = key(n / 6);
            let (bytes, hash) = fragment(n, index, len);
            (k, store.put_fragment(&k, index, &hash, &bytes).map(drop))
        };
        match put {
            Ok(()) => {}
            Err(StoreError::Full { .. }) => {
                // Make room: delete what is under the next two keys clockwise.
                let next = store.placement_keys_in(&k, &k).unwrap();
                for victim in next.iter().take(2) {
                    delete_key(&store, victim);
                }
            }
            Err(other) => panic!("child put failed: {other}"),
        }
        if op % 4 == 2 {
            store
                .delete_fragment(&key((n - 2) / 6), ((n - 2) % 6) as u16)
                .unwrap();
        }
    }
}

/// Checks a reopened store the way a user would; returns how many fragments it holds
/// and how many of them came from group puts.
fn check_consistent(store: &DiskStore, group_keys: &HashSet<PlacementKey>) -> (u64, u64) {
    assert_eq!(
        std::fs::read_dir(store.temp_dir()).unwrap().count(),
        0,
        "temp files remain after open"
    );
    let everything = PlacementKey(Id::ZERO);
    let mut fragments = 0u64;
    let mut grouped = 0u64;
    let mut bytes = 0u64;
    for k in store.placement_keys_in(&everything, &everything).unwrap() {
        let listed = store.fragments_under(&k).unwrap();
        if group_keys.contains(&k) {
            // A group is recorded all at once and deleted from index 0 up, so what a
            // kill can leave is all six or a suffix ending at index 5.
            let indexes: Vec<u16> = listed.iter().map(|info| info.index).collect();
            let first = indexes.first().copied().unwrap_or(0);
            assert_eq!(
                indexes,
                (first..GROUP).collect::<Vec<u16>>(),
                "group put at {k:?} left part of itself"
            );
            grouped += listed.len() as u64;
        }
        for info in listed {
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
    (fragments, grouped)
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
    let group_keys: HashSet<PlacementKey> = (0..ROUNDS * CHILD_MAX_OPS).map(group_key).collect();
    let mut most_fragments = 0;
    let mut most_grouped = 0;
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
        let (fragments, grouped) = check_consistent(&store, &group_keys);
        assert_eq!(fragments, cleanup.fragments);
        most_fragments = most_fragments.max(fragments);
        most_grouped = most_grouped.max(grouped);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "crash test took too long"
        );
    }
    eprintln!(
        "crash rounds: {ROUNDS}, most fragments {most_fragments} ({most_grouped} from groups), \
         leftovers cleaned {cleaned}"
    );
    assert!(
        most_fragments > most_grouped && most_grouped > 0,
        "the child never stored both single and group puts: the test tested too little"
    );
}
