//! Volume root records over the network (publish, lost updates, readers that take the
//! highest valid replica, survival when keepers die) and ranged reads of files, all
//! through the local API on real nodes (loopback, in this process).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::time::Duration;

use cairn_api::client::{ApiClient, ClientError};
use cairn_core::crypto::{KeyPair, RootRecord, Signed};
use cairn_core::id::{FileId, Id, NodeId, Reference, VolumeKey};
use cairn_daemon::{NodeConfig, unix_now};
use cairn_past::{PastRequest, PastResponse, Refusal, closest, root_key};
use cairn_store::NodeStore;
use cairn_testkit::fixtures::{owner, put};
use cairn_testkit::{Cluster, wait_until};

/// How many nodes keep a root record (`PastConfig::default().certificate_replicas`).
const KEEPERS: usize = 4;

fn dir(name: &str) -> FileId {
    FileId(Id::hash(name.as_bytes()))
}

fn signed(key: &KeyPair, volume: VolumeKey, sequence: u64, root: FileId) -> Vec<u8> {
    let record = RootRecord {
        volume,
        sequence,
        root,
        time: unix_now(),
    };
    Signed::sign(key, record).unwrap().to_bytes().unwrap()
}

/// The indexes of the live nodes that should keep `volume`'s root, closest first.
fn keepers(cluster: &Cluster, volume: &VolumeKey) -> Vec<usize> {
    let ids: Vec<NodeId> = cluster.live().map(|(i, _)| cluster.id(i)).collect();
    closest(&root_key(volume).0, ids, KEEPERS)
        .iter()
        .map(|id| cluster.index_of(id).unwrap())
        .collect()
}

/// The sequence node `i` keeps for `volume`, read from its own store.
fn kept_sequence(cluster: &Cluster, i: usize, volume: &VolumeKey) -> Option<u64> {
    let bytes = cluster.node(i).store().get_root(volume).unwrap()?;
    Some(
        Signed::<RootRecord>::from_bytes(&bytes)
            .unwrap()
            .body
            .sequence,
    )
}

/// `PUT /v1/roots` with raw bytes; the HTTP status.
fn put_raw(client: &ApiClient, body: &[u8]) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .put(format!("{}/v1/roots", client.base()))
        .send(body)
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn root_records_keep_the_highest_sequence_and_refuse_lost_updates() {
    let mut cluster = Cluster::start(6);
    let client = cluster.api(0);
    let alice = owner(41);
    let volume = alice.public_key().volume_key();
    let now = unix_now();

    assert_eq!(client.get_root(&volume).unwrap(), None, "never published");

    let first = client.publish_root(&alice, 1, dir("v1"), now).unwrap();
    assert_eq!(first.sequence, 1);
    assert_eq!(first.replicas, KEEPERS, "every keeper is live: {first:?}");
    let second = client.publish_root(&alice, 2, dir("v2"), now).unwrap();
    assert_eq!(second.sequence, 2);
    let read = client.get_root(&volume).unwrap().unwrap();
    assert_eq!(
        (read.sequence, read.root, read.volume),
        (2, dir("v2"), volume)
    );
    for i in keepers(&cluster, &volume) {
        assert_eq!(kept_sequence(&cluster, i, &volume), Some(2), "keeper {i}");
    }

    // A replay of sequence 1, and a rival record claiming sequence 2: both lost.
    let replay = client.publish_root(&alice, 1, dir("v1"), now);
    assert!(
        matches!(replay, Err(ClientError::RootConflict { held_sequence: 2 })),
        "{replay:?}"
    );
    let rival = client.publish_root(&alice, 2, dir("another v2"), now);
    assert!(
        matches!(rival, Err(ClientError::RootConflict { held_sequence: 2 })),
        "{rival:?}"
    );
    assert_eq!(client.get_root(&volume).unwrap().unwrap().root, dir("v2"));

    // Mallory signs a record for Alice's volume: 403 at the API...
    let mallory = owner(42);
    let forged = signed(&mallory, volume, 9, dir("evil"));
    assert_eq!(put_raw(&client, &forged), 403);
    assert_eq!(put_raw(&client, b"not a record"), 400);
    // ...and refused by a keeper asked directly.
    let keeper = keepers(&cluster, &volume)[0];
    let asker = cluster.node(if keeper == 0 { 1 } else { 0 });
    let target = asker.address_of(&cluster.id(keeper)).unwrap();
    let answer = cluster
        .block_on(asker.ask(&target, PastRequest::PutRoot { record: forged }))
        .unwrap();
    assert!(
        matches!(answer, PastResponse::Refused(Refusal::RootRecord(_))),
        "{answer:?}"
    );
    assert_eq!(kept_sequence(&cluster, keeper, &volume), Some(2));

    // Readers take the highest valid replica: one keeper is behind (sequence 1, put
    // straight into its store), another holds a forged sequence 100.
    let holders = keepers(&cluster, &volume);
    let stale = signed(&alice, volume, 1, dir("v1"));
    cluster
        .node(holders[0])
        .store()
        .put_root(&volume, &stale)
        .unwrap();
    let mut forged_high =
        Signed::<RootRecord>::from_bytes(&signed(&mallory, volume, 100, dir("x"))).unwrap();
    forged_high.signer = alice.public_key();
    cluster
        .node(holders[1])
        .store()
        .put_root(&volume, &forged_high.to_bytes().unwrap())
        .unwrap();
    for reader in [0, holders[0], holders[1]] {
        let client = cluster.api(reader);
        let read = client.get_root(&volume).unwrap().unwrap();
        assert_eq!(read.sequence, 2, "read through node {reader}");
        assert_eq!(read.root, dir("v2"));
    }

    // One keeper is ahead (sequence 5 reached it, not the others): readers see 5, and
    // a writer still at 3 learns that its update lost.
    let ahead = signed(&alice, volume, 5, dir("v5"));
    cluster
        .node(holders[2])
        .store()
        .put_root(&volume, &ahead)
        .unwrap();
    assert_eq!(client.get_root(&volume).unwrap().unwrap().sequence, 5);
    let behind = client.publish_root(&alice, 3, dir("v3"), now);
    assert!(
        matches!(behind, Err(ClientError::RootConflict { held_sequence: 5 })),
        "{behind:?}"
    );
    let message = behind.unwrap_err().to_string();
    assert!(message.contains("sequence 5"), "{message}");

    // Another volume is independent, and the API's JSON names the record.
    let bob = owner(43);
    let bob_volume = bob.public_key().volume_key();
    assert_eq!(client.get_root(&bob_volume).unwrap(), None);
    client.publish_root(&bob, 1, dir("bob"), now).unwrap();
    let url = format!(
        "{}/v1/roots/{}",
        client.base(),
        Reference::Volume(bob_volume)
    );
    let text = ureq::get(&url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["sequence"], 1);
    assert_eq!(json["root"], dir("bob").to_string());
}

#[test]
fn ranged_reads_answer_exactly_the_bytes_asked_for() {
    let mut cluster = Cluster::start(6);
    let client = cluster.api(0);
    let alice = owner(44);
    // Four 1 MiB blocks (the default segment) and a short fifth one.
    let seg: u64 = 1 << 20;
    let data: Vec<u8> = (0..4 * seg + 1234)
        .map(|i| (i * 31 + i / 4099) as u8)
        .collect();
    let size = data.len() as u64;
    let file = put(&client, &alice, &data, 0);

    let cases: [(u64, Option<u64>); 10] = [
        (100, Some(1000)),            // inside one block
        (seg - 10, Some(20)),         // across a boundary
        (seg - 1, Some(2 * seg + 2)), // across two boundaries
        (3 * seg + 5, None),          // to the end
        (size - 1, Some(10)),         // running past the end: clamped
        (size, None),                 // at the end: empty
        (size + 100, Some(5)),        // beyond the end: empty
        (seg, Some(0)),               // length 0
        (0, None),                    // the whole file
        (4 * seg, Some(1234)),        // exactly the last block
    ];
    for (offset, length) in cases {
        let mut reader = client.open_range(&file, offset, length).unwrap();
        let start = offset.min(size) as usize;
        let end = length
            .map_or(size, |l| (offset + l).min(size))
            .max(start as u64) as usize;
        assert_eq!(reader.file_size(), size);
        assert_eq!(reader.len(), (end - start) as u64, "{offset} {length:?}");
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert!(got == data[start..end], "bytes of {offset} {length:?}");
    }

    // When the network cannot supply verified bytes, the reader fails; it never
    // ends short as if the range were done. 4+2 on 6 nodes: 3 dead is too many.
    for i in [3, 4, 5] {
        cluster.kill(i);
    }
    match client.open_range(&file, seg + 7, Some(2 * seg)) {
        Err(e) => eprintln!("open failed as it may: {e}"),
        Ok(mut reader) => {
            let mut got = Vec::new();
            let result = reader.read_to_end(&mut got);
            assert!(
                result.is_err(),
                "{} bytes read as if complete with 3 of 6 nodes dead",
                got.len()
            );
        }
    }
}

/// Short maintenance periods, so that re-replication shows within seconds.
fn fast(_: usize, config: &mut NodeConfig) {
    config.maintenance.debounce = Duration::from_millis(400);
    config.maintenance.period = Duration::from_secs(2);
    config.maintenance.call_timeout = Duration::from_secs(3);
}

#[test]
fn a_root_record_outlives_its_keepers_one_death_at_a_time() {
    let mut cluster = Cluster::builder(8).configure(fast).start();
    let alice = owner(45);
    let volume = alice.public_key().volume_key();
    let client = cluster.api(0);
    client
        .publish_root(&alice, 7, dir("kept"), unix_now())
        .unwrap();
    // Kill the closest keeper three times over (never node 0, whose API we read).
    for round in 0..3 {
        let victim = keepers(&cluster, &volume)
            .into_iter()
            .find(|&i| i != 0)
            .unwrap();
        cluster.kill(victim);
        wait_until(
            Duration::from_secs(20),
            &format!("round {round}: every keeper to hold the root"),
            || {
                let now_keepers = keepers(&cluster, &volume);
                let holding = now_keepers
                    .iter()
                    .filter(|&&i| kept_sequence(&cluster, i, &volume) == Some(7))
                    .count();
                if holding == now_keepers.len() {
                    Ok(())
                } else {
                    Err(format!(
                        "only {holding} of the keepers {now_keepers:?} hold the root"
                    ))
                }
            },
        )
        .unwrap();
    }
    let read = client.get_root(&volume).unwrap().unwrap();
    assert_eq!((read.sequence, read.root), (7, dir("kept")));
}
