//! Real nodes on loopback (in this process): PAST insert, lookup and reclaim through
//! the local API, with failures, diversion and forgeries.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_api::client::{ApiClient, ClientError};
use cairn_core::crypto::{FileCertificate, KeyPair, ReclaimCertificate, Signed, UploadGrant};
use cairn_core::erasure::{ErasureParams, fragment_hash};
use cairn_core::id::{BlockHash, FileId, Id, NodeId, PlacementKey};
use cairn_core::rng::Rng;
use cairn_daemon::unix_now;
use cairn_past::{PastRequest, PastResponse, Refusal, StoreRequest, closest};
use cairn_store::NodeStore;
use cairn_testkit::Cluster;
use cairn_testkit::fixtures::{get, node_key, owner, put};

const GIB: u64 = 1 << 30;

/// The ids of the nodes holding a verified copy of `block`'s fragments.
fn holders(client: &ApiClient, file: &FileId, block: &str) -> Vec<NodeId> {
    let stat = client.stat(file).unwrap();
    let block = stat.blocks.iter().find(|b| b.block == block).unwrap();
    let mut ids: Vec<NodeId> = block
        .holders
        .iter()
        .flatten()
        .map(|id| id.parse().unwrap())
        .collect();
    ids.dedup();
    ids
}

#[test]
fn sixteen_nodes_store_and_serve_files_of_every_size_from_another_node() {
    // A leaf set of 8 does not cover 16 nodes: locates are routed through the overlay.
    let mut cluster = Cluster::builder(16)
        .configure(|_, c| c.overlay.leaf_set_size = 8)
        .start();
    let writer = cluster.api(0);
    let reader = cluster.api(9);
    let me = owner(1);
    for (i, size) in [0usize, 1, (1 << 20) + 1, 64 << 20].into_iter().enumerate() {
        let data = Rng::new(i as u64).bytes(size);
        let file = put(&writer, &me, &data, i as u64);
        assert!(
            get(&reader, &file) == data,
            "{size} bytes came back different"
        );
        let stat = reader.stat(&file).unwrap();
        assert_eq!(stat.size, size as u64);
        assert_eq!(
            stat.degraded_blocks, 0,
            "{size} bytes: every block has n live fragments"
        );
        for block in &stat.blocks {
            assert_eq!(block.live, 6, "block {} of a {size}-byte file", block.block);
        }
    }
    for i in [0, 9] {
        let routed = cluster.node(i).counters().locates.load(Ordering::Relaxed);
        assert!(
            routed > 0,
            "node {i} routed its locates through the overlay"
        );
    }
}

#[test]
fn every_file_survives_the_loss_of_m_holders_and_a_restarted_node_serves_again() {
    let mut cluster = Cluster::start(12);
    let client = cluster.api(0);
    let me = owner(2);
    let files: Vec<(FileId, Vec<u8>)> = (0..3u64)
        .map(|i| {
            let data = Rng::new(100 + i).bytes((3 << 20) + 5);
            (put(&client, &me, &data, i), data)
        })
        .collect();
    let (first, _) = &files[0];
    let block_holders: Vec<usize> = holders(&client, first, "1")
        .iter()
        .filter_map(|id| cluster.index_of(id))
        .filter(|i| *i != 0)
        .collect();
    assert!(
        block_holders.len() >= 5,
        "block 1 has its holders: {block_holders:?}"
    );
    let (a, b, c) = (block_holders[0], block_holders[1], block_holders[2]);

    // m = 2 holders of block 1 crash: every file still reads back.
    cluster.kill(a);
    cluster.kill(b);
    for (file, data) in &files {
        assert!(
            get(&client, file) == *data,
            "a file was lost with 2 nodes down"
        );
    }

    // `a` comes back on its data dir; then `b` stays down and `c` crashes too, so
    // block 1 is readable only if `a` serves its fragment again.
    cluster.restart(a);
    cluster.kill(c);
    for (file, data) in &files {
        assert!(
            get(&client, file) == *data,
            "the restarted node did not serve"
        );
    }
    let a_id = node_key(a).public_key().node_id();
    assert!(
        holders(&client, first, "1").contains(&a_id),
        "stat shows the restarted node holding its fragment again"
    );
}

const TINY_CAPACITY: u64 = 100 << 10;

/// The indexes of the 5 of 10 nodes that are next to each other on the ring: they get
/// almost no room (an arc of 6 closest nodes can then hold 1 to 5 of them).
fn tiny_nodes() -> Vec<usize> {
    let mut by_position: Vec<usize> = (0..10).collect();
    by_position.sort_by_key(|i| node_key(*i).public_key().node_id());
    by_position.truncate(5);
    by_position
}

fn tiny_among_closest(key: &PlacementKey, ids: &[NodeId], tiny: &[NodeId]) -> usize {
    closest(&key.0, ids.iter().copied(), 6)
        .iter()
        .filter(|id| tiny.contains(id))
        .count()
}

/// A 64 KiB file whose block key (salt 0, and salt 1) has the wanted number of tiny
/// nodes among its 6 closest: `want(t0, t1)`.
fn content_where(want: impl Fn(usize, usize) -> bool) -> Vec<u8> {
    let ids: Vec<NodeId> = (0..10)
        .map(|i| node_key(i).public_key().node_id())
        .collect();
    let tiny: Vec<NodeId> = tiny_nodes().iter().map(|i| ids[*i]).collect();
    for seed in 0..20_000u64 {
        let data = Rng::new(seed).bytes(64 << 10);
        let hash = BlockHash(Id::hash(&data));
        let t0 = tiny_among_closest(&PlacementKey::for_block(&hash, 0), &ids, &tiny);
        let t1 = tiny_among_closest(&PlacementKey::for_block(&hash, 1), &ids, &tiny);
        if want(t0, t1) {
            return data;
        }
    }
    panic!("no content with the wanted placement in 20,000 seeds");
}

#[test]
fn full_nodes_divert_replicas_then_files_and_a_full_network_says_why() {
    // Fragments of a 64 KiB block are 16 KiB: a tiny node (100 KiB) has no room for
    // one (16/100 > t_pri = 0.1) and refuses diverted ones; big nodes take anything.
    let tiny = tiny_nodes();
    let mut cluster = Cluster::builder(10)
        .configure(|i, config| {
            if tiny.contains(&i) {
                config.capacity = TINY_CAPACITY;
            }
        })
        .start();
    let client = cluster.api(0);
    let me = owner(3);
    let diverted = |cluster: &Cluster| -> u64 {
        cluster
            .live()
            .map(|(_, n)| {
                n.counters()
                    .fragments_diverted
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    };

    // Replica diversion: two or more tiny nodes among the 6 closest, so a big node
    // lies outside them and takes their fragments; they keep pointers.
    let data = content_where(|t0, _| t0 >= 2);
    let file = put(&client, &me, &data, 1);
    let stat = client.stat(&file).unwrap();
    let block = stat.blocks.iter().find(|b| b.block == "0").unwrap();
    assert_eq!(block.salt, 0, "replica diversion keeps the key");
    assert!(
        block.pointers.iter().any(|p| !p.is_empty()),
        "the full nodes keep pointers to the diverted fragments: {block:?}"
    );
    assert_eq!(block.live, 6, "every fragment has a holder: {block:?}");
    assert!(diverted(&cluster) >= 2, "fragments went the diverted path");
    assert!(get(&client, &file) == data);

    // File diversion: one tiny node among the 6 closest and only tiny ones outside,
    // so its fragment cannot be diverted; the block moves to salt 1, where it fits.
    let data = content_where(|t0, t1| t0 == 1 && t1 >= 2);
    let file = put(&client, &me, &data, 2);
    let stat = client.stat(&file).unwrap();
    let block = stat.blocks.iter().find(|b| b.block == "0").unwrap();
    assert_eq!(
        block.salt, 1,
        "the block was stored under a new salt: {block:?}"
    );
    assert_eq!(block.live, 6);
    assert!(get(&client, &file) == data);

    // Reclaiming every file frees every copy, the diverted ones included.
    let first = FileId::from_name_digest(
        &Id::hash(cairn_testkit::fixtures::TEST_FILE_NAME.as_bytes()),
        &me.public_key().0,
        1,
    );
    for file in [first, file] {
        let report = client.remove(&file, &me, unix_now()).unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    // `used` counts metadata too (the tombstones stay): count the fragments.
    let everywhere = cairn_core::id::PlacementKey(Id::ZERO);
    let fragments: usize = cluster
        .live()
        .flat_map(|(_, n)| {
            let keys = n
                .store()
                .placement_keys_in(&everywhere, &everywhere)
                .unwrap();
            keys.iter()
                .map(|key| n.store().fragments_under(key).unwrap().len())
                .collect::<Vec<_>>()
        })
        .sum();
    assert_eq!(fragments, 0, "every fragment, diverted or not, was freed");
    drop(cluster);

    // A network of only tiny nodes cannot place a 64 KiB file at any salt.
    let mut full = Cluster::builder(8).capacity(TINY_CAPACITY).start();
    let client = full.api(0);
    let data = Rng::new(7).bytes(64 << 10);
    let error = client
        .put(
            &mut &data[..],
            "too big",
            1,
            &me,
            Some(ErasureParams::DEFAULT),
            unix_now(),
        )
        .unwrap_err();
    match error {
        ClientError::Api { status, message } => {
            assert_eq!(status, 507, "{message}");
            assert!(
                message.contains("no room") || message.contains("full"),
                "{message}"
            );
            assert!(
                message.contains("attempts") || message.contains("salt"),
                "{message}"
            );
        }
        other => panic!("expected 507, got {other}"),
    }
}

#[test]
fn bad_holders_are_bypassed_and_forgeries_refused() {
    let mut cluster = Cluster::start(8);
    let client = cluster.api(0);
    let me = owner(4);
    let data = Rng::new(5).bytes((2 << 20) + 77);
    let file = put(&client, &me, &data, 1);
    let held: Vec<usize> = holders(&client, &file, "0")
        .iter()
        .filter_map(|id| cluster.index_of(id))
        .filter(|i| *i != 0)
        .collect();

    // A Byzantine holder serves flipped bits; another has a corrupted body on disk.
    cluster.node(held[0]).tamper_with_served_fragments(true);
    let victim = cluster.node(held[1]);
    let stat = client.stat(&file).unwrap();
    let key: PlacementKey = stat
        .blocks
        .iter()
        .find(|b| b.block == "0")
        .unwrap()
        .key
        .parse()
        .unwrap();
    let index = victim.store().fragments_under(&key).unwrap()[0].index;
    let body = victim.store().body_path(&key, index).unwrap().unwrap();
    let mut bytes = std::fs::read(&body).unwrap();
    bytes[0] ^= 0x40;
    std::fs::write(&body, bytes).unwrap();
    assert!(
        get(&client, &file) == data,
        "both bad holders were bypassed"
    );
    let asker = cluster.node(0).clone();
    let victim_address = victim.address();
    let answer = cluster
        .block_on(asker.ask(&victim_address, PastRequest::Fetch { key, index }))
        .unwrap();
    assert_eq!(
        answer,
        PastResponse::Corrupt,
        "a corrupt copy is never served"
    );

    // Forgeries, sent straight to a node as another node (or a client) would.
    let target = cluster.node(3).address();
    let ask = |request: PastRequest| cluster.block_on(asker.ask(&target, request)).unwrap();
    let bytes = Rng::new(9).bytes(1000);
    let hash = fragment_hash(0, &bytes);
    let key = PlacementKey(Id::hash(b"forgery test"));
    let store = |grant: Vec<u8>, hash, bytes: Vec<u8>| {
        PastRequest::Store(StoreRequest {
            grant,
            key,
            index: 0,
            hash,
            bytes,
            replicas: 6,
        })
    };
    let grant_by = |signer: &KeyPair, owner: &KeyPair, lifetime| {
        let body = UploadGrant::new(b"forged", 1, owner.public_key(), unix_now() - 10, lifetime);
        let mut signed = Signed::sign(signer, body).unwrap();
        signed.signer = owner.public_key();
        signed.to_bytes().unwrap()
    };
    let thief = owner(66);
    let refused = |answer: PastResponse| matches!(answer, PastResponse::Refused(_));
    // A grant in my name signed by someone else.
    assert!(matches!(
        ask(store(grant_by(&thief, &me, 3600), hash, bytes.clone())),
        PastResponse::Refused(Refusal::Grant(_))
    ));
    // Bytes that do not match their hash, under a valid grant.
    let good_grant = grant_by(&me, &me, 3600);
    let mut wrong = bytes.clone();
    wrong[3] ^= 1;
    assert_eq!(
        ask(store(good_grant.clone(), hash, wrong)),
        PastResponse::Refused(Refusal::HashMismatch)
    );
    // An expired grant.
    assert!(refused(ask(store(
        grant_by(&me, &me, 5),
        hash,
        bytes.clone()
    ))));
    // And the honest request is stored, with a receipt.
    assert!(matches!(
        ask(store(good_grant, hash, bytes)),
        PastResponse::Stored { .. }
    ));

    // A certificate altered after signing.
    let certificate = cluster
        .block_on(asker.find_certificate(file))
        .unwrap()
        .unwrap();
    let mut altered: Signed<FileCertificate> = certificate.clone();
    altered.body.size += 1;
    assert!(matches!(
        ask(PastRequest::PutCertificate {
            certificate: altered.to_bytes().unwrap()
        }),
        PastResponse::Refused(Refusal::Certificate(_))
    ));

    // A reclaim signed by someone other than the owner: the client will not make one,
    // and the API and a node asked directly refuse it; the file stays readable.
    let error = client.remove(&file, &thief, unix_now()).unwrap_err();
    assert!(matches!(error, ClientError::NotOwner { .. }), "{error}");
    let forged = Signed::sign(
        &thief,
        ReclaimCertificate {
            owner: thief.public_key(),
            ..ReclaimCertificate::of(&certificate.body, unix_now())
        },
    )
    .unwrap();
    let deleted = ureq::Agent::new_with_defaults()
        .delete(format!("{}/v1/files/cairn:f:{file}", client.base()))
        .header(
            cairn_api::RECLAIM_HEADER,
            cairn_api::encode_hex(&forged.to_bytes().unwrap()),
        )
        .call();
    assert!(
        matches!(deleted, Err(ureq::Error::StatusCode(403))),
        "{deleted:?}"
    );
    assert!(matches!(
        ask(PastRequest::Reclaim {
            reclaim: forged.to_bytes().unwrap(),
            certificate: certificate.to_bytes().unwrap(),
            keys: vec![key],
        }),
        PastResponse::Refused(Refusal::Certificate(_))
    ));
    cluster.node(held[0]).tamper_with_served_fragments(false);
    assert!(get(&client, &file) == data);
}

#[test]
fn reclaim_frees_the_space_but_keeps_blocks_another_file_uses() {
    let mut cluster = Cluster::start(8);
    let client = cluster.api(0);
    let me = owner(5);
    let used = |cluster: &Cluster| -> u64 { cluster.live().map(|(_, n)| n.store().used()).sum() };
    let data = Rng::new(11).bytes((2 << 20) + 3);
    let first = put(&client, &me, &data, 1);
    let after_one = used(&cluster);
    // The same bytes again under another file id share the data blocks.
    let second = put(&client, &me, &data, 2);
    let report = client.remove(&first, &me, unix_now()).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(get(&client, &second) == data, "the shared blocks were kept");
    match client.get(&first, &mut Vec::new()) {
        Err(ClientError::Api { status: 404, .. }) => {}
        other => panic!("a reclaimed file must be gone: {other:?}"),
    }
    let report = client.remove(&second, &me, unix_now()).unwrap();
    assert!(report.bytes_freed > 0);
    assert!(
        used(&cluster) < after_one / 10,
        "reclaiming both frees the blocks ({} bytes still used of {after_one})",
        used(&cluster)
    );
}

#[test]
fn malformed_frames_close_one_connection_and_the_api_explains_mistakes() {
    let mut cluster = Cluster::start(6);
    let client = cluster.api(2);
    let addr = cluster.node(2).advertised();
    // Garbage, an oversized length prefix, and a truncated frame.
    for bytes in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        vec![0, 0, 0, 100, 1, 2],
    ] {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = stream.write_all(&bytes);
    }
    let me = owner(6);
    let data = Rng::new(12).bytes(300_000);
    let file = put(&client, &me, &data, 1);
    assert!(get(&client, &file) == data, "the node kept serving");

    // A mistyped reference is a 400, an unknown one a 404, both with a message.
    let status = |path: &str| {
        let agent = ureq::Agent::new_with_defaults();
        match agent.get(format!("{}{path}", client.base())).call() {
            Ok(response) => response.status().as_u16(),
            Err(ureq::Error::StatusCode(code)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(status("/v1/files/cairn:f:notbase32!"), 400);
    let unknown = FileId(Id::hash(b"nobody stored this"));
    assert_eq!(status(&format!("/v1/files/cairn:f:{unknown}")), 404);
    match client.stat(&unknown) {
        Err(ClientError::Api {
            status: 404,
            message,
        }) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_api_with_a_token_refuses_requests_without_it_and_never_listens_openly_without_one() {
    let cluster = Cluster::start(1);
    let node = cluster.node(0).clone();
    let open = cluster.block_on(cairn_daemon::http::serve(
        node.clone(),
        cairn_daemon::http::ApiConfig {
            listen: ([0, 0, 0, 0], 0).into(),
            token: None,
        },
    ));
    assert!(open.is_err(), "an API on 0.0.0.0 needs a token");
    let server = cluster
        .block_on(cairn_daemon::http::serve(
            node,
            cairn_daemon::http::ApiConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                token: Some("s3cret".into()),
            },
        ))
        .unwrap();
    let address = server.addr.to_string();
    match ApiClient::new(&address, None).status() {
        Err(ClientError::Api {
            status: 401,
            message,
        }) => {
            assert!(message.contains("CAIRN_API_TOKEN"), "{message}")
        }
        other => panic!("expected 401: {other:?}"),
    }
    assert!(matches!(
        ApiClient::new(&address, Some("wrong".into())).status(),
        Err(ClientError::Api { status: 401, .. })
    ));
    let status = ApiClient::new(&address, Some("s3cret".into()))
        .status()
        .unwrap();
    assert!(status.joined);
}

#[test]
fn a_node_whose_bootstrap_never_answers_gives_up_with_the_reason() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut config = cairn_daemon::NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap(), GIB);
    config.bootstrap = vec![dead_addr];
    config.join_patience = Duration::from_secs(1);
    config.net.key_difficulty = cairn_daemon::LOCAL_KEY_DIFFICULTY;
    let started = runtime.block_on(cairn_daemon::Node::start(config));
    let Err(error) = started else {
        panic!("a node joined through an address where nothing listens");
    };
    let text = error.to_string();
    assert!(
        text.contains("could not join") && text.contains(&dead_addr.to_string()),
        "{text}"
    );
}
