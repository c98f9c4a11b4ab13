//! A rogue node against a running network: a peer with its own key, speaking the real
//! protocol over the real transport, that never joined the overlay, tries to make the
//! holders of a file delete it. Every holder refuses, the file reads byte-equal, and
//! each refusal is counted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cairn_core::crypto::{KeyPair, ReclaimCertificate, Signed};
use cairn_core::id::{Difficulty, NodeId, PlacementKey};
use cairn_core::rng::Rng;
use cairn_daemon::{Wire, unix_now};
use cairn_net::{NetConfig, Peer, Transport};
use cairn_past::{NodeAddress, PastRequest, PastResponse, Refusal, RepairAuthority};
use cairn_testkit::Cluster;
use cairn_testkit::fixtures::{get, owner, put};

#[test]
fn a_rogue_peer_cannot_make_holders_release_hand_off_or_forget_a_file() {
    let mut cluster = Cluster::start(8);
    let client = cluster.api(0);
    let me = owner(41);
    let data = Rng::new(41).bytes(3 << 20);
    let file = put(&client, &me, &data, 41);
    let certificate = client.certificate(&file).unwrap().unwrap();
    let stat = client.stat(&file).unwrap();
    let n = usize::from(stat.k + stat.m);
    // Every fragment of every block, with its holder: what `stat` shows anyone.
    let mut targets: Vec<(PlacementKey, u16, usize)> = Vec::new();
    for block in &stat.blocks {
        let key: PlacementKey = block.key.parse().unwrap();
        for (index, holders) in block.holders.iter().enumerate() {
            for holder in holders {
                let id: NodeId = holder.parse().unwrap();
                let node = cluster.index_of(&id).unwrap();
                targets.push((key, u16::try_from(index).unwrap(), node));
            }
        }
    }
    assert_eq!(targets.len(), stat.blocks.len() * n);

    let rogue_key = Arc::new(KeyPair::from_secret_bytes(&[0xee; 32]));
    let authority = RepairAuthority {
        certificate: certificate.to_bytes().unwrap(),
        references: vec![file],
    };
    // A reclaim the rogue signs: it cannot sign as the owner.
    let forged = Signed::sign(
        &rogue_key,
        ReclaimCertificate {
            owner: rogue_key.public_key(),
            ..ReclaimCertificate::of(&certificate.body, unix_now())
        },
    )
    .unwrap()
    .to_bytes()
    .unwrap();
    let peers: Vec<(Peer, NodeAddress)> = (0..8)
        .map(|i| {
            let address = cluster.node(i).address();
            (
                Peer {
                    id: address.id,
                    addr: address.addr,
                },
                address,
            )
        })
        .collect();

    let answers = cluster.block_on(async {
        let (rogue, _incoming) = Transport::<Wire>::bind(
            Arc::clone(&rogue_key),
            "127.0.0.1:0".parse().unwrap(),
            None,
            // The test cluster's keys are fixed bytes that solve no key puzzle.
            NetConfig {
                key_difficulty: Difficulty::NONE,
                ..NetConfig::default()
            },
        )
        .await
        .unwrap();
        let myself = NodeAddress {
            id: rogue_key.public_key().node_id(),
            addr: rogue.local_addr(),
        };
        let mut answers = Vec::new();
        for &(key, index, node) in &targets {
            let (peer, _) = &peers[node];
            let other = peers[(node + 1) % peers.len()].1;
            for request in [
                // "I keep it": the rogue, then an honest node that holds another index.
                PastRequest::Release {
                    key,
                    index,
                    kept_by: myself,
                    authority: authority.clone(),
                },
                PastRequest::Release {
                    key,
                    index,
                    kept_by: other,
                    authority: authority.clone(),
                },
                // "Hand it to me."
                PastRequest::Handoff {
                    key,
                    index,
                    to: myself,
                    authority: authority.clone(),
                },
                PastRequest::DropPointer { key, index },
                PastRequest::Forget {
                    reclaim: forged.clone(),
                    keys: vec![key],
                },
            ] {
                answers.push(rogue.request(peer, Wire::Past(request)).await);
            }
        }
        answers
    });

    for answer in &answers {
        match answer {
            // A pointer drop with no pointer is nothing to refuse.
            Ok(Wire::PastReply(PastResponse::Done)) => {}
            Ok(Wire::PastReply(PastResponse::Refused(
                Refusal::NotAuthorised(_) | Refusal::Certificate(_),
            ))) => {}
            other => panic!("a rogue request was not refused: {other:?}"),
        }
    }
    let unauthorised: u64 = (0..8)
        .map(|i| {
            cluster
                .node(i)
                .counters()
                .requests_unauthorised
                .load(Ordering::Relaxed)
        })
        .sum();
    assert_eq!(
        unauthorised,
        3 * targets.len() as u64,
        "every release and handoff counted as unauthorised"
    );
    // Every holder kept its fragment, and the file reads byte-equal.
    let after = client.stat(&file).unwrap();
    assert_eq!(after.degraded_blocks, 0);
    for block in &after.blocks {
        assert_eq!(block.live, n, "block {} lost a fragment", block.block);
    }
    assert!(get(&client, &file) == data);
}
