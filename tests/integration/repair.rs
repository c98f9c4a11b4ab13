//! Churn survival on real nodes (loopback, in this process): regeneration after the
//! loss of `m` holders, handoff to a node that joins between holders, scrubbing of a
//! fragment corrupted on disk, and no resurrection of a file reclaimed while a holder
//! was down. Repair times are printed (`--nocapture` shows them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_api::client::{ApiClient, ClientError};
use cairn_core::erasure::fragment_hash;
use cairn_core::id::{FileId, NodeId, PlacementKey};
use cairn_core::rng::Rng;
use cairn_daemon::{NodeConfig, unix_now};
use cairn_past::{PastRequest, PastResponse, closest};
use cairn_store::NodeStore;
use cairn_testkit::fixtures::{get, node_key, owner, put};
use cairn_testkit::{Cluster, wait_until};

const GIB: u64 = 1 << 30;

/// Every repair wait gives up after this long.
const REPAIR_DEADLINE: Duration = Duration::from_secs(30);

/// Short maintenance periods, so that a test sees repair within seconds.
fn fast(_: usize, config: &mut NodeConfig) {
    config.maintenance.debounce = Duration::from_millis(400);
    config.maintenance.period = Duration::from_secs(2);
    config.maintenance.call_timeout = Duration::from_secs(3);
    config.maintenance.scrub_period = Duration::from_secs(3600);
}

/// The placement key of `block` ("manifest" or a position) of `file`.
fn key_of(client: &ApiClient, file: &FileId, block: &str) -> PlacementKey {
    let stat = client.stat(file).unwrap();
    stat.blocks
        .iter()
        .find(|b| b.block == block)
        .unwrap()
        .key
        .parse()
        .unwrap()
}

/// What every live node holds under `key`, from its own store: (node index, indexes).
fn held(cluster: &Cluster, key: &PlacementKey) -> Vec<(usize, Vec<u16>)> {
    cluster
        .live()
        .map(|(i, node)| {
            let indexes = node
                .store()
                .fragments_under(key)
                .unwrap()
                .iter()
                .map(|f| f.index)
                .collect();
            (i, indexes)
        })
        .filter(|(_, indexes): &(usize, Vec<u16>)| !indexes.is_empty())
        .collect()
}

/// Waits (at most [`REPAIR_DEADLINE`]) until `check` holds; how long it took.
fn wait_for<T, O: std::fmt::Display>(what: &str, check: impl FnMut() -> Result<T, O>) -> Duration {
    wait_until(REPAIR_DEADLINE, what, check).unwrap().took
}

/// `Ok` when `holds`, else what was seen (for conditions that are plain booleans).
fn holds(holds: bool, seen: impl std::fmt::Display) -> Result<(), String> {
    if holds { Ok(()) } else { Err(seen.to_string()) }
}

/// A fetch answer in a few words (a fragment's bytes would fill the screen).
fn answer_kind(answer: &PastResponse) -> String {
    match answer {
        PastResponse::Fragment { bytes } => format!("a fragment of {} bytes", bytes.len()),
        other => format!("{other:?}"),
    }
}

/// `Ok` when every block of `file` has all 6 fragments live; else what the stat says.
fn fully_redundant(client: &ApiClient, file: &FileId) -> Result<(), String> {
    let stat = client.stat(file).map_err(|e| format!("stat failed: {e}"))?;
    let live: Vec<usize> = stat.blocks.iter().map(|b| b.live).collect();
    holds(
        stat.degraded_blocks == 0 && live.iter().all(|l| *l == 6),
        format!(
            "{} degraded blocks, live fragments per block {live:?}",
            stat.degraded_blocks
        ),
    )
}

/// `Ok` when the sum of `counter` over the live nodes reaches `at_least`.
fn counted(
    cluster: &Cluster,
    counter: impl Fn(&cairn_daemon::Counters) -> &std::sync::atomic::AtomicU64,
    at_least: u64,
) -> Result<(), String> {
    let sum = counter_sum(cluster, counter);
    holds(sum >= at_least, format!("the count is {sum}"))
}

fn counter_sum(
    cluster: &Cluster,
    counter: impl Fn(&cairn_daemon::Counters) -> &std::sync::atomic::AtomicU64,
) -> u64 {
    cluster
        .live()
        .map(|(_, n)| counter(n.counters()).load(Ordering::Relaxed))
        .sum()
}

fn repair_bytes(cluster: &Cluster) -> u64 {
    counter_sum(cluster, |c| &c.repair_bytes)
}

#[test]
fn the_fragments_of_m_killed_holders_are_regenerated_on_live_responsible_nodes() {
    let mut cluster = Cluster::builder(10).configure(fast).start();
    let client = cluster.api(0);
    let data = Rng::new(31).bytes((3 << 20) + 17);
    let file = put(&client, &owner(1), &data, 1);
    let key = key_of(&client, &file, "1");
    let victims: Vec<usize> = held(&cluster, &key)
        .iter()
        .map(|(i, _)| *i)
        .filter(|i| *i != 0)
        .take(2)
        .collect();
    assert_eq!(victims.len(), 2, "two holders of block 1 besides node 0");
    let killed_at = Instant::now();
    for victim in &victims {
        cluster.kill(*victim);
    }
    let kills_took = killed_at.elapsed();
    assert!(
        held(&cluster, &key).len() == 4,
        "right after the kills, 4 live nodes hold block 1"
    );
    let took = wait_for("every block back to 6 live fragments", || {
        fully_redundant(&client, &file)
    });
    println!(
        "repair after killing m = 2 holders: full redundancy {:?} after the first kill \
         (the kills themselves took {kills_took:?}; the wait {took:?})",
        killed_at.elapsed()
    );
    // Each fragment on a live node among the 6 closest, one index per node.
    let live_ids: Vec<NodeId> = cluster.live().map(|(_, n)| n.id()).collect();
    let responsible = closest(&key.0, live_ids, 6);
    let now_held = held(&cluster, &key);
    let mut indexes: Vec<u16> = now_held.iter().flat_map(|(_, x)| x.clone()).collect();
    indexes.sort();
    assert_eq!(indexes, (0..6).collect::<Vec<u16>>(), "{now_held:?}");
    for (i, _) in &now_held {
        assert!(
            responsible.contains(&cluster.id(*i)),
            "node {i} holds a fragment but is not among the 6 closest"
        );
    }
    assert!(get(&client, &file) == data, "the file reads back");
    // The coordinator counts once the receipt is back, just after the store.
    wait_for(
        "at least block 1's two fragments counted as regenerated",
        || counted(&cluster, |c| &c.fragments_regenerated, 2),
    );
    assert!(repair_bytes(&cluster) > 0, "repair traffic is counted");
}

#[test]
fn a_node_joining_between_holders_receives_its_fragment_before_the_old_copy_goes() {
    let mut cluster = Cluster::builder(8).configure(fast).start();
    let client = cluster.api(0);
    let data = Rng::new(32).bytes(300_000);
    let file = put(&client, &owner(2), &data, 2);
    let key = key_of(&client, &file, "0");
    let live_ids: Vec<NodeId> = cluster.live().map(|(_, n)| n.id()).collect();
    let ranked = closest(&key.0, live_ids.iter().copied(), 8);
    // The sixth closest is pushed out by any new node closer to the key than it.
    let evicted = cluster.index_of(&ranked[5]).unwrap();
    let evicted_indexes = held(&cluster, &key)
        .into_iter()
        .find(|(i, _)| *i == evicted)
        .map(|(_, x)| x)
        .unwrap_or_default();
    assert_eq!(
        evicted_indexes.len(),
        1,
        "the sixth closest holds one index"
    );
    let index = evicted_indexes[0];
    let seed = (100..100_000)
        .find(|seed| {
            let id = node_key(*seed).public_key().node_id();
            // Between two holders: closer than the fifth, farther than the closest.
            key.0.cmp_closeness(&id.0, &ranked[4].0).is_lt()
                && key.0.cmp_closeness(&id.0, &ranked[0].0).is_gt()
        })
        .unwrap();
    let started = Instant::now();
    let joined = cluster.start_extra(&node_key(seed), |_| {});
    let mut polls = 0;
    let took = wait_for(
        "the joined node holds the index and the old copy is gone",
        || {
            polls += 1;
            let now = held(&cluster, &key);
            let holders_of_index: Vec<usize> = now
                .iter()
                .filter(|(_, x)| x.contains(&index))
                .map(|(i, _)| *i)
                .collect();
            assert!(
                !holders_of_index.is_empty(),
                "at poll {polls} nobody held fragment {index}: {now:?}"
            );
            holds(
                holders_of_index == vec![joined],
                format!("fragment {index} is on {holders_of_index:?}"),
            )
        },
    );
    println!(
        "handoff to a joining node: done {took:?} after it joined ({:?} after its start), {polls} polls",
        started.elapsed()
    );
    fully_redundant(&client, &file).unwrap();
    wait_for("the handoff counted by its coordinator", || {
        counted(&cluster, |c| &c.fragments_handed_off, 1)
    });
    assert!(get(&client, &file) == data, "the file reads back");
}

#[test]
fn a_fragment_corrupted_on_disk_is_found_by_the_scrub_and_regenerated() {
    let mut cluster = Cluster::builder(8)
        .configure(|i, c| {
            fast(i, c);
            c.maintenance.scrub_period = Duration::from_secs(1);
        })
        .start();
    let client = cluster.api(0);
    let data = Rng::new(33).bytes((1 << 20) + 5);
    let file = put(&client, &owner(3), &data, 3);
    let key = key_of(&client, &file, "0");
    let (victim, indexes) = held(&cluster, &key)
        .into_iter()
        .find(|(i, _)| *i != 0)
        .unwrap();
    let index = indexes[0];
    let node = cluster.node(victim).clone();
    let good = node.store().get_fragment(&key, index).unwrap().unwrap();
    let good_hash = fragment_hash(index, &good);
    let body = node.store().body_path(&key, index).unwrap().unwrap();
    let mut bytes = std::fs::read(&body).unwrap();
    bytes[7] ^= 0x10;
    std::fs::write(&body, bytes).unwrap();
    let asker = cluster.node(0).clone();
    let address = node.address();
    let took = wait_for("the corrupt fragment is regenerated on its holder", || {
        let answer = cluster
            .block_on(asker.ask(&address, PastRequest::Fetch { key, index }))
            .unwrap();
        let corrupt_found = node.counters().scrub_corrupt.load(Ordering::Relaxed);
        holds(
            matches!(answer, PastResponse::Fragment { ref bytes } if fragment_hash(index, bytes) == good_hash)
                && corrupt_found >= 1,
            format!(
                "{corrupt_found} corrupt fragments found; the holder answered {}",
                answer_kind(&answer)
            ),
        )
    });
    println!("scrub + regeneration of a corrupted fragment: {took:?}");
    fully_redundant(&client, &file).unwrap();
    assert!(repair_bytes(&cluster) > 0);
    assert!(get(&client, &file) == data);
}

#[test]
fn a_holder_restarted_with_fragments_of_a_file_reclaimed_meanwhile_does_not_revive_them() {
    let mut cluster = Cluster::builder(8).configure(fast).start();
    let client = cluster.api(0);
    let me = owner(4);
    let data = Rng::new(34).bytes(500_000);
    let file = put(&client, &me, &data, 4);
    let keys = [
        key_of(&client, &file, "manifest"),
        key_of(&client, &file, "0"),
    ];
    let (stale, _) = held(&cluster, &keys[1])
        .into_iter()
        .find(|(i, _)| *i != 0)
        .unwrap();
    cluster.kill(stale);
    let report = client.remove(&file, &me, unix_now()).unwrap();
    assert!(report.bytes_freed > 0);
    // The node is down: its store still holds the file's fragments and reference.
    {
        let store =
            cairn_store::DiskStore::open(cluster.data_dir(stale).join("store"), GIB).unwrap();
        assert!(!store.fragments_under(&keys[1]).unwrap().is_empty());
        assert_eq!(store.references(&keys[1]).unwrap(), vec![file]);
    }
    cluster.restart(stale);
    let took = wait_for("the stale fragments are deleted", || {
        for key in &keys {
            for (i, indexes) in held(&cluster, key) {
                assert_eq!(
                    i, stale,
                    "node {i} holds {indexes:?} of a reclaimed file: it was copied"
                );
            }
        }
        let left: Vec<_> = keys.iter().map(|key| held(&cluster, key)).collect();
        holds(
            left.iter().all(Vec::is_empty),
            format!("still held: {left:?}"),
        )
    });
    println!("stale fragments of a reclaimed file deleted {took:?} after the restart");
    wait_for("the deletion counted by its coordinator", || {
        counted(&cluster, |c| &c.fragments_forgotten, 1)
    });
    assert!(
        cluster.node(stale).store().is_reclaimed(&file).unwrap(),
        "the restarted node now remembers the reclaim"
    );
    // A couple more maintenance periods: nothing comes back. (Not a wait: this quiet
    // time is what the assertion below is about.)
    std::thread::sleep(Duration::from_secs(3));
    for key in &keys {
        assert!(held(&cluster, key).is_empty(), "fragments came back");
    }
    match client.get(&file, &mut Vec::new()) {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("a reclaimed file must stay gone: {other:?}"),
    }
}

#[test]
fn a_fragment_lost_without_any_event_is_restored_by_the_slow_pass() {
    // No leaf-set change and no scrub: only the digests of the slow pass can notice.
    let mut cluster = Cluster::builder(8).configure(fast).start();
    let client = cluster.api(0);
    let data = Rng::new(35).bytes(400_000);
    let file = put(&client, &owner(5), &data, 5);
    let key = key_of(&client, &file, "0");
    // Let the first slow passes look at both keys (manifest, block) and remember
    // what each holder had, so that the loss below is seen as a change.
    wait_for("both keys were reconciled", || {
        counted(&cluster, |c| &c.keys_reconciled, 2)
    });
    // ...and until those first passes are over: no key reconciled for 3 s (longer
    // than a period of 2 s).
    let (mut last, mut since) = (u64::MAX, Instant::now());
    wait_for("the first slow passes to go quiet for 3 s", || {
        let now = counter_sum(&cluster, |c| &c.keys_reconciled);
        if now != last {
            (last, since) = (now, Instant::now());
        }
        holds(
            since.elapsed() >= Duration::from_secs(3),
            format!("{now} keys reconciled, the last {:?} ago", since.elapsed()),
        )
    });
    let reconciled = counter_sum(&cluster, |c| &c.keys_reconciled);
    // Not a wait: with nothing changing, nothing may happen during these 3 s.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        counter_sum(&cluster, |c| &c.keys_reconciled),
        reconciled,
        "with nothing changing, the slow pass exchanges summaries and looks at no key"
    );
    let (victim, indexes) = held(&cluster, &key)
        .into_iter()
        .find(|(i, _)| *i != 0)
        .unwrap();
    let before = counter_sum(&cluster, |c| &c.fragments_regenerated);
    cluster
        .node(victim)
        .store()
        .delete_fragment(&key, indexes[0])
        .unwrap();
    let took = wait_for("the lost fragment is back", || {
        let now = held(&cluster, &key);
        holds(
            now.iter().any(|(i, x)| *i == victim && x == &indexes),
            format!("held: {now:?}"),
        )
    });
    println!("slow pass: a silently lost fragment restored after {took:?} (period 2 s)");
    wait_for("the regeneration counted by its coordinator", || {
        counted(&cluster, |c| &c.fragments_regenerated, before + 1)
    });
    fully_redundant(&client, &file).unwrap();
}

#[test]
fn a_pointer_whose_diverted_holder_died_is_dropped_and_its_fragment_regenerated() {
    let mut cluster = Cluster::builder(8).configure(fast).start();
    let client = cluster.api(0);
    let me = owner(6);
    let data = Rng::new(36).bytes(200_000);
    let salt = 6;
    let file = put(&client, &me, &data, salt);
    let key = key_of(&client, &file, "0");
    let live_ids: Vec<NodeId> = cluster.live().map(|(_, n)| n.id()).collect();
    let ranked = closest(&key.0, live_ids, 8);
    // A responsible holder (not node 0) diverts its fragment to a node outside the 6
    // closest, as a full node would: the copy moves there, a pointer stays here.
    let keeper = (0..6)
        .map(|r| cluster.index_of(&ranked[r]).unwrap())
        .find(|i| *i != 0)
        .unwrap();
    let diverted = cluster.index_of(&ranked[6]).unwrap();
    let keeper_node = cluster.node(keeper).clone();
    let index = keeper_node.store().fragments_under(&key).unwrap()[0].index;
    let bytes = keeper_node
        .store()
        .get_fragment(&key, index)
        .unwrap()
        .unwrap();
    let grant = cairn_core::crypto::Signed::sign(
        &me,
        cairn_core::crypto::UploadGrant::new(
            cairn_testkit::fixtures::TEST_FILE_NAME.as_bytes(),
            salt,
            me.public_key(),
            unix_now() - 10,
            3600,
        ),
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    let to = cluster.node(diverted).address();
    let request = PastRequest::StoreDiverted(cairn_past::StoreRequest {
        grant,
        key,
        index,
        hash: fragment_hash(index, &bytes),
        bytes,
        replicas: 6,
    });
    let stored = cluster.block_on(keeper_node.ask(&to, request)).unwrap();
    assert!(matches!(stored, PastResponse::Stored { .. }), "{stored:?}");
    let pointer = PastRequest::PutPointer {
        key,
        index,
        holder: to,
    };
    let kept = cluster
        .block_on(keeper_node.ask(&keeper_node.address(), pointer))
        .unwrap();
    assert_eq!(kept, PastResponse::Done);
    keeper_node.store().delete_fragment(&key, index).unwrap();
    fully_redundant(&client, &file).expect("the diverted copy counts");

    cluster.kill(diverted);
    let took = wait_for(
        "the keeper holds the fragment again, without the pointer",
        || {
            let has_fragment = keeper_node
                .store()
                .fragments_under(&key)
                .unwrap()
                .iter()
                .any(|f| f.index == index);
            let pointer = keeper_node.store().get_pointer(&key, index).unwrap();
            holds(
                has_fragment && pointer.is_none(),
                format!("fragment held: {has_fragment}, pointer: {pointer:?}"),
            )
        },
    );
    println!("dead diverted holder: pointer dropped and fragment regenerated after {took:?}");
    // The dead node may have held a fragment of the other block too: its repair is the
    // ordinary one, and may finish a moment later.
    wait_for("every block fully redundant", || {
        fully_redundant(&client, &file)
    });
    assert!(get(&client, &file) == data);
}

#[test]
fn a_files_certificate_outlives_its_first_keepers() {
    let mut cluster = Cluster::builder(10).configure(fast).start();
    let client = cluster.api(0);
    let me = owner(9);
    let data = Rng::new(77).bytes(300_000);
    let file = put(&client, &me, &data, 1);
    let keepers = |cluster: &Cluster| -> Vec<usize> {
        cluster
            .live()
            .filter(|(_, n)| n.store().get_certificate(&file).ok().flatten().is_some())
            .map(|(i, _)| i)
            .collect()
    };
    let first: Vec<usize> = keepers(&cluster).into_iter().filter(|i| *i != 0).collect();
    assert!(
        first.len() >= 3,
        "the certificate has its keepers: {first:?}"
    );
    // Two keepers crash; the others hand the certificate to the new closest nodes.
    cluster.kill(first[0]);
    cluster.kill(first[1]);
    wait_for("the certificate re-replicated to 4 live keepers", || {
        let now = keepers(&cluster);
        holds(now.len() >= 4, format!("kept by {now:?}"))
    });
    // Then the remaining first keepers crash too: the file still reads.
    for i in &first[2..] {
        cluster.kill(*i);
    }
    assert!(
        get(&client, &file) == data,
        "the file outlived all its first keepers"
    );
}
