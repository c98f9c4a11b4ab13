//! The planner of a key's maintenance, sans-IO: given what the nodes near a key hold,
//! decide what to regenerate, hand off, release and forget.
//!
//! Owns: [`plan`] (the reconciliation planner) with its input ([`Observed`]) and output
//! ([`Plan`], [`Step`]); [`decide_authority`] (which certificate, if any, authorises
//! repairing a key, and which referencing files were reclaimed); [`holdings_digest`]
//! and [`summary_digest`] (the compact summaries holders send their coordinator);
//! [`affected_ranges`] (which ring ranges a membership change touches). Pure
//! functions: [`super::reconcile::KeyReconcile`] feeds them what the nodes answered.
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`] (certificate checks), the crate
//! root (PAST's request types and [`crate::check_certificate`]).
//!
//! # The goal, per key
//! Every index `0..n` held with the agreed hash by some live responsible node (the `n`
//! closest live nodes), or by a live diverted holder a pointer names; one index per
//! node; no copies left on nodes that are no longer responsible once a responsible node
//! holds the same index.

use std::collections::{BTreeMap, BTreeSet};

use cairn_core::crypto::{FileCertificate, ReclaimCertificate, Signed};
use cairn_core::id::{FileId, FragmentHash, Id, NodeId, PlacementKey};

use crate::{UnixSeconds, check_certificate};

/// What one node answered when asked for its holdings of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The node.
    pub node: NodeId,
    /// Fragments it holds: index and hash.
    pub fragments: Vec<(u16, FragmentHash)>,
    /// Pointers it keeps to diverted fragments: index and holder.
    pub pointers: Vec<(u16, NodeId)>,
}

/// One thing to do for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No live node holds `index`: rebuild it from `k` others and store it on `to`.
    Regenerate {
        /// The fragment.
        index: u16,
        /// A responsible node holding no index of the key.
        to: NodeId,
    },
    /// Only `from`, no longer responsible, holds `index`: it pushes its copy to `to`
    /// and deletes its own only once `to` has signed a receipt.
    Handoff {
        /// The fragment.
        index: u16,
        /// The node that holds it.
        from: NodeId,
        /// A responsible node holding no index of the key.
        to: NodeId,
    },
    /// `node` holds a surplus copy of `index` that `kept_by` (responsible) also holds:
    /// `node` is no longer responsible, or is responsible but not designated for
    /// `index` while `kept_by` is (or is closer). It may drop its copy (after checking
    /// `kept_by` itself).
    Release {
        /// The fragment.
        index: u16,
        /// The node with the surplus copy.
        node: NodeId,
        /// The responsible node that keeps it.
        kept_by: NodeId,
    },
    /// `keeper`'s pointer for `index` names a holder that does not hold it (dead, or
    /// the copy is gone): the pointer is dropped.
    DropPointer {
        /// The fragment.
        index: u16,
        /// The node keeping the pointer.
        keeper: NodeId,
    },
}

/// What [`plan`] decided for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The agreed hash of every index (the one most holders report), `None` where no
    /// live node holds the index.
    pub hashes: Vec<Option<FragmentHash>>,
    /// Nodes holding a good copy of each index, responsible nodes first (where to
    /// fetch from when regenerating).
    pub sources: Vec<Vec<NodeId>>,
    /// What to do, in order.
    pub steps: Vec<Step>,
    /// Indexes with at least one live good copy.
    pub live: usize,
    /// Copies whose hash disagrees with the agreed one (node, index): never used.
    pub conflicting: Vec<(NodeId, u16)>,
    /// Indexes missing that cannot be rebuilt now (fewer than `k` live) or placed
    /// (no responsible node is free).
    pub stuck: Vec<u16>,
}

impl Plan {
    /// Whether nothing needs doing.
    pub fn is_settled(&self) -> bool {
        self.steps.is_empty() && self.stuck.is_empty()
    }
}

/// Plans the reconciliation of one key with `n = k + m` fragments. `responsible` are the
/// `n` closest live nodes, closest first (nodes that did not answer must be left out);
/// `observed` is every answer (responsible nodes, the spares beyond them, and the
/// holders pointers name). Indexes `>= n` are ignored.
pub fn plan(k: u16, n: u16, responsible: &[NodeId], observed: &[Observed]) -> Plan {
    let n_usize = usize::from(n);
    let is_responsible = |id: &NodeId| responsible.contains(id);
    // The agreed hash per index: the most reported (ties: the smallest, so every
    // coordinator agrees).
    let mut tally: Vec<BTreeMap<FragmentHash, usize>> = vec![BTreeMap::new(); n_usize];
    for seen in observed {
        for (index, hash) in &seen.fragments {
            if let Some(counts) = tally.get_mut(usize::from(*index)) {
                *counts.entry(*hash).or_default() += 1;
            }
        }
    }
    let hashes: Vec<Option<FragmentHash>> = tally
        .iter()
        .map(|counts| {
            let best = counts.values().copied().max()?;
            counts
                .iter()
                .find(|(_, c)| **c == best)
                .map(|(hash, _)| *hash)
        })
        .collect();
    let mut holders: Vec<Vec<NodeId>> = vec![Vec::new(); n_usize];
    let mut conflicting = Vec::new();
    let mut occupied: BTreeSet<NodeId> = BTreeSet::new();
    for seen in observed {
        for (index, hash) in &seen.fragments {
            let slot = usize::from(*index);
            if slot >= n_usize {
                continue;
            }
            occupied.insert(seen.node);
            if hashes[slot] == Some(*hash) {
                if !holders[slot].contains(&seen.node) {
                    holders[slot].push(seen.node);
                }
            } else {
                conflicting.push((seen.node, *index));
            }
        }
    }
    // Pointers: live when the named holder answered with a good copy of that index.
    let mut steps = Vec::new();
    let mut diverted: BTreeSet<(u16, NodeId)> = BTreeSet::new();
    let mut pointed = vec![false; n_usize];
    for seen in observed {
        for (index, holder) in &seen.pointers {
            let slot = usize::from(*index);
            if slot >= n_usize {
                continue;
            }
            if holders[slot].contains(holder) {
                diverted.insert((*index, *holder));
                pointed[slot] = true;
                if is_responsible(&seen.node) {
                    occupied.insert(seen.node);
                }
            } else {
                steps.push(Step::DropPointer {
                    index: *index,
                    keeper: seen.node,
                });
            }
        }
    }
    let mut free: Vec<NodeId> = responsible
        .iter()
        .filter(|id| !occupied.contains(id))
        .copied()
        .collect();
    let live = holders.iter().filter(|h| !h.is_empty()).count();
    let mut stuck = Vec::new();
    let mut handed: BTreeSet<(u16, NodeId)> = BTreeSet::new();
    let mut no_room = false;
    for index in 0..n {
        let slot = usize::from(index);
        let held_in_place = holders[slot].iter().any(&is_responsible);
        if held_in_place || pointed[slot] {
            continue;
        }
        // Prefer the node designated for this index, if it is free.
        let target = match responsible.get(slot).filter(|id| free.contains(id)) {
            Some(id) => Some(*id),
            None => free.first().copied(),
        };
        let Some(to) = target else {
            no_room = true;
            stuck.push(index);
            continue;
        };
        if let Some(from) = holders[slot].first().copied() {
            handed.insert((index, from));
            steps.push(Step::Handoff { index, from, to });
        } else if live >= usize::from(k) {
            steps.push(Step::Regenerate { index, to });
        } else {
            stuck.push(index);
            continue;
        }
        free.retain(|id| *id != to);
    }
    // Two responsible nodes holding one index (a node came back with a copy that was
    // regenerated while it was away) leave no responsible node free for a missing index
    // when every one holds something: the copy on the node not designated for that index
    // is released, and the next reconcile (the key is not settled) places the missing
    // index there. Only then, and only while the block can be rebuilt: below `k` nothing
    // is deleted.
    let make_room = no_room && live >= usize::from(k);
    for (slot, nodes) in holders.iter().enumerate().filter(|_| make_room) {
        let index = u16::try_from(slot).unwrap_or(u16::MAX);
        let in_place: Vec<NodeId> = responsible
            .iter()
            .filter(|id| nodes.contains(id))
            .copied()
            .collect();
        let Some(first) = in_place.first().copied() else {
            continue;
        };
        let kept_by = responsible
            .get(slot)
            .filter(|id| in_place.contains(id))
            .copied()
            .unwrap_or(first);
        for node in in_place.iter().filter(|id| **id != kept_by) {
            steps.push(Step::Release {
                index,
                node: *node,
                kept_by,
            });
        }
    }
    // Surplus copies outside the responsible set (not diverted, not being handed off).
    for (slot, nodes) in holders.iter().enumerate() {
        let index = u16::try_from(slot).unwrap_or(u16::MAX);
        let Some(kept_by) = nodes.iter().find(|id| is_responsible(id)).copied() else {
            continue;
        };
        for node in nodes.iter().filter(|id| !is_responsible(id)) {
            if !diverted.contains(&(index, *node)) && !handed.contains(&(index, *node)) {
                steps.push(Step::Release {
                    index,
                    node: *node,
                    kept_by,
                });
            }
        }
    }
    let mut sources = holders;
    for nodes in &mut sources {
        nodes.sort_by_key(|id| !is_responsible(id));
    }
    Plan {
        hashes,
        sources,
        steps,
        live,
        conflicting,
        stuck,
    }
}

/// What one certificate keeper answered about a file ([`crate::PastResponse::FileStatus`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStatus {
    /// The signed certificate it keeps, if any.
    pub certificate: Option<Vec<u8>>,
    /// The signed reclaim certificate of its tombstone, if the file was reclaimed.
    pub tombstone: Option<Vec<u8>>,
}

/// Whether a key may be repaired, and under which certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authority {
    /// A referencing file is live: repair under its certificate.
    Live {
        /// The certificate (signed bytes), checked.
        certificate: Vec<u8>,
        /// Its body.
        body: Box<FileCertificate>,
        /// Referencing files that were reclaimed: their references are forgotten.
        reclaimed: Vec<(FileId, Vec<u8>)>,
    },
    /// Every referencing file was reclaimed: the key's fragments are deleted.
    Reclaimed {
        /// Each file and its signed reclaim certificate.
        reclaimed: Vec<(FileId, Vec<u8>)>,
    },
    /// No certificate and no tombstone for some referencing file (a put still in
    /// flight, or the keepers are unreachable): leave the key alone.
    Unknown,
}

/// Decides from the keepers' answers whether a key may be repaired. A valid tombstone
/// beats a certificate (a keeper that was down during the reclaim still serves the old
/// certificate): it binds the file id to its signer, so only the file's owner can have
/// signed it, with or without a certificate at hand.
pub fn decide_authority(answers: &[(FileId, Vec<FileStatus>)], now: UnixSeconds) -> Authority {
    let mut live: Option<(Vec<u8>, FileCertificate)> = None;
    let mut reclaimed = Vec::new();
    let mut unknown = false;
    for (file, statuses) in answers {
        let certificate = statuses.iter().find_map(|s| {
            let bytes = s.certificate.as_ref()?;
            let body = check_certificate(bytes, now).ok()?;
            (body.file_id == *file).then(|| (bytes.clone(), body))
        });
        let tombstone = statuses.iter().find_map(|s| {
            let bytes = s.tombstone.as_ref()?;
            let signed = Signed::<ReclaimCertificate>::from_bytes(bytes).ok()?;
            let order = signed.verify().ok()?;
            (order.file_id == *file).then(|| bytes.clone())
        });
        match (certificate, tombstone) {
            (_, Some(reclaim)) => reclaimed.push((*file, reclaim)),
            (Some(found), None) => {
                if live.is_none() {
                    live = Some(found);
                }
            }
            (None, None) => unknown = true,
        }
    }
    match live {
        Some((certificate, body)) => Authority::Live {
            certificate,
            body: Box::new(body),
            reclaimed,
        },
        None if !unknown && !reclaimed.is_empty() => Authority::Reclaimed { reclaimed },
        None => Authority::Unknown,
    }
}

/// A compact summary of what a node holds under a key (fragments, pointers, files):
/// equal holdings give equal digests. Never 0 (0 means "changed, look").
pub fn holdings_digest(
    fragments: &[(u16, FragmentHash)],
    pointers: &[(u16, NodeId)],
    references: &[FileId],
) -> u64 {
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(fragments.len() + pointers.len() + 1);
    for (index, hash) in fragments {
        let mut part = index.to_be_bytes().to_vec();
        part.extend_from_slice(hash.0.as_bytes());
        parts.push(part);
    }
    parts.push(b"|".to_vec());
    for (index, holder) in pointers {
        let mut part = index.to_be_bytes().to_vec();
        part.extend_from_slice(holder.0.as_bytes());
        parts.push(part);
    }
    parts.push(b"|".to_vec());
    for file in references {
        parts.push(file.0.as_bytes().to_vec());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let id = Id::hash_parts(&refs);
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_be_bytes(first).max(1)
}

/// The digest of a holder's whole list of `(key, holdings digest)` for one
/// coordinator (sorted by key): the slow pass sends only this when it is unchanged.
pub fn summary_digest(list: &[(PlacementKey, u64)]) -> u64 {
    let parts: Vec<Vec<u8>> = list
        .iter()
        .map(|(key, digest)| {
            let mut part = key.0.as_bytes().to_vec();
            part.extend_from_slice(&digest.to_be_bytes());
            part
        })
        .collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let id = Id::hash_parts(&refs);
    let mut first = [0u8; 8];
    first.copy_from_slice(&id.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// The clockwise ring ranges `[start, end)` holding every key whose `span` closest
/// nodes changed between `before` and `after` (each a node set including the caller).
/// A key whose `span` closest include a node that came or went lies within `span`
/// nodes of it on the ring; when the ring is too small for that to narrow anything,
/// one whole-ring range (`start == end`) is returned.
pub fn affected_ranges(
    before: &[NodeId],
    after: &[NodeId],
    span: usize,
) -> Vec<(PlacementKey, PlacementKey)> {
    let before_set: BTreeSet<NodeId> = before.iter().copied().collect();
    let after_set: BTreeSet<NodeId> = after.iter().copied().collect();
    let changed: Vec<NodeId> = before_set
        .symmetric_difference(&after_set)
        .copied()
        .collect();
    if changed.is_empty() {
        return Vec::new();
    }
    let ring: Vec<NodeId> = before_set.union(&after_set).copied().collect();
    if ring.len() <= 2 * span + 1 {
        let zero = PlacementKey(Id::ZERO);
        return vec![(zero, zero)];
    }
    let len = ring.len();
    changed
        .iter()
        .filter_map(|id| ring.iter().position(|x| x == id))
        .map(|at| {
            let start = ring[(at + len - span) % len];
            let end = ring[(at + span + 1) % len];
            (PlacementKey(start.0), PlacementKey(end.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::testing::reclaim;
    use cairn_core::crypto::KeyPair;
    use cairn_store::in_ring_range;

    fn node(i: u8) -> NodeId {
        NodeId(Id::hash(&[b'n', i]))
    }

    fn hash(index: u16) -> FragmentHash {
        FragmentHash(Id::hash(&index.to_be_bytes()))
    }

    fn holds(i: u8, indexes: &[u16]) -> Observed {
        Observed {
            node: node(i),
            fragments: indexes.iter().map(|x| (*x, hash(*x))).collect(),
            pointers: Vec::new(),
        }
    }

    fn six() -> Vec<NodeId> {
        (0..6).map(node).collect()
    }

    #[test]
    fn a_settled_key_needs_nothing() {
        let observed: Vec<Observed> = (0..6).map(|i| holds(i, &[u16::from(i)])).collect();
        let plan = plan(4, 6, &six(), &observed);
        assert!(plan.is_settled(), "{plan:?}");
        assert_eq!(plan.live, 6);
    }

    #[test]
    fn missing_indexes_are_regenerated_on_free_responsible_nodes() {
        // Nodes 2 and 5 died; 6 and 7 are now among the six closest and hold nothing.
        let responsible = vec![node(0), node(1), node(3), node(4), node(6), node(7)];
        let observed = vec![
            holds(0, &[0]),
            holds(1, &[1]),
            holds(3, &[3]),
            holds(4, &[4]),
            holds(6, &[]),
            holds(7, &[]),
        ];
        let plan = plan(4, 6, &responsible, &observed);
        assert_eq!(
            plan.steps,
            vec![
                Step::Regenerate {
                    index: 2,
                    to: node(6)
                },
                Step::Regenerate {
                    index: 5,
                    to: node(7)
                },
            ]
        );
        assert_eq!(plan.live, 4);
    }

    #[test]
    fn a_duplicate_on_two_responsible_nodes_is_released_so_a_missing_index_finds_room() {
        // Node 3 came back holding index 2, which was regenerated on node 2 while it was
        // away; index 3 is missing and every responsible node holds something.
        let observed = vec![
            holds(0, &[0]),
            holds(1, &[1]),
            holds(2, &[2]),
            holds(3, &[2]),
            holds(4, &[4]),
            holds(5, &[5]),
        ];
        let first = plan(4, 6, &six(), &observed);
        assert_eq!(
            first.steps,
            vec![Step::Release {
                index: 2,
                node: node(3),
                kept_by: node(2)
            }],
            "the designated holder of index 2 keeps it"
        );
        assert_eq!(first.stuck, vec![3]);
        assert!(!first.is_settled());
        // Once released, node 3 is free and gets its own index back.
        let mut after = observed.clone();
        after[3] = holds(3, &[]);
        let second = plan(4, 6, &six(), &after);
        assert_eq!(
            second.steps,
            vec![Step::Regenerate {
                index: 3,
                to: node(3)
            }]
        );
    }

    #[test]
    fn the_designated_node_gets_its_index_back_when_it_is_free() {
        // Node 2's copy was corrupt and dropped: it is free and designated for index 2.
        let observed: Vec<Observed> = (0..6)
            .map(|i| {
                if i == 2 {
                    holds(i, &[])
                } else {
                    holds(i, &[u16::from(i)])
                }
            })
            .collect();
        let plan = plan(4, 6, &six(), &observed);
        assert_eq!(
            plan.steps,
            vec![Step::Regenerate {
                index: 2,
                to: node(2)
            }]
        );
    }

    #[test]
    fn a_node_pushed_out_by_a_join_hands_its_fragment_off() {
        // Node 9 joined among the six closest; node 5 (index 5) is now seventh.
        let responsible = vec![node(0), node(1), node(9), node(2), node(3), node(4)];
        let mut observed: Vec<Observed> = (0..6).map(|i| holds(i, &[u16::from(i)])).collect();
        observed.push(holds(9, &[]));
        let plan = plan(4, 6, &responsible, &observed);
        assert_eq!(
            plan.steps,
            vec![Step::Handoff {
                index: 5,
                from: node(5),
                to: node(9)
            }]
        );
        // Once node 9 holds it, node 5's copy is surplus.
        observed[6] = holds(9, &[5]);
        let plan = super::plan(4, 6, &responsible, &observed);
        assert_eq!(
            plan.steps,
            vec![Step::Release {
                index: 5,
                node: node(5),
                kept_by: node(9)
            }]
        );
    }

    #[test]
    fn pointers_count_while_their_holder_answers_and_are_dropped_after() {
        let mut observed: Vec<Observed> = (0..6)
            .map(|i| {
                if i == 3 {
                    holds(i, &[])
                } else {
                    holds(i, &[u16::from(i)])
                }
            })
            .collect();
        observed[3].pointers.push((3, node(20)));
        let mut with_holder = observed.clone();
        with_holder.push(holds(20, &[3]));
        let plan_alive = plan(4, 6, &six(), &with_holder);
        assert!(plan_alive.is_settled(), "{plan_alive:?}");
        // The diverted holder is gone: drop the pointer, regenerate on the keeper.
        let plan_dead = plan(4, 6, &six(), &observed);
        assert_eq!(
            plan_dead.steps,
            vec![
                Step::DropPointer {
                    index: 3,
                    keeper: node(3)
                },
                Step::Regenerate {
                    index: 3,
                    to: node(3)
                },
            ]
        );
    }

    #[test]
    fn too_few_live_fragments_are_reported_stuck_and_odd_hashes_ignored() {
        let mut observed = vec![
            holds(0, &[0]),
            holds(1, &[1]),
            holds(2, &[2]),
            holds(4, &[0]),
        ];
        observed.push(Observed {
            node: node(3),
            fragments: vec![(0, hash(99))],
            pointers: Vec::new(),
        });
        let plan = plan(4, 6, &six(), &observed);
        assert_eq!(plan.conflicting, vec![(node(3), 0)]);
        assert_eq!(plan.live, 3);
        assert_eq!(plan.stuck, vec![3, 4, 5]);
        assert!(plan.steps.is_empty());
    }

    #[test]
    fn authority_follows_certificates_and_tombstones() {
        let owner = KeyPair::from_secret_bytes(&[1; 32]);
        let (file, cert) = crate::testing::certificate(&owner, b"f", (4, 2));
        let kept = FileStatus {
            certificate: Some(cert.clone()),
            tombstone: None,
        };
        let gone = FileStatus {
            certificate: None,
            tombstone: Some(reclaim(&owner, &cert)),
        };
        let nothing = FileStatus::default();
        let live = decide_authority(&[(file, vec![nothing.clone(), kept.clone()])], 10);
        assert!(matches!(live, Authority::Live { ref certificate, .. } if *certificate == cert));
        // A stale keeper still serves the certificate: the owner's tombstone wins.
        let stale = decide_authority(&[(file, vec![kept.clone(), gone.clone()])], 10);
        assert!(matches!(stale, Authority::Reclaimed { .. }), "{stale:?}");
        // A tombstone signed by someone else does not beat the owner's certificate.
        let thief = KeyPair::from_secret_bytes(&[7; 32]);
        let forged = FileStatus {
            certificate: None,
            tombstone: Some(reclaim(&thief, &cert)),
        };
        let kept_anyway = decide_authority(&[(file, vec![kept, forged])], 10);
        assert!(matches!(kept_anyway, Authority::Live { .. }));
        // Nothing known of the file (a put in flight): leave it alone.
        assert_eq!(
            decide_authority(&[(file, vec![nothing])], 10),
            Authority::Unknown
        );
        let (other, other_cert) = crate::testing::certificate(&owner, b"g", (4, 2));
        let both = decide_authority(
            &[
                (file, vec![gone]),
                (
                    other,
                    vec![FileStatus {
                        certificate: Some(other_cert),
                        tombstone: None,
                    }],
                ),
            ],
            10,
        );
        match both {
            Authority::Live {
                reclaimed, body, ..
            } => {
                assert_eq!(body.file_id, other);
                assert_eq!(reclaimed.len(), 1);
                assert_eq!(reclaimed[0].0, file);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digests_change_with_holdings_and_are_never_zero() {
        let a = holdings_digest(&[(0, hash(0))], &[], &[]);
        let b = holdings_digest(&[(0, hash(1))], &[], &[]);
        let c = holdings_digest(&[], &[(0, node(1))], &[]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, holdings_digest(&[(0, hash(0))], &[], &[]));
        assert_ne!(holdings_digest(&[], &[], &[]), 0);
    }

    #[test]
    fn a_change_affects_only_the_keys_near_it() {
        let mut ring: Vec<NodeId> = (0..40).map(node).collect();
        ring.sort();
        let gone = ring[20];
        let after: Vec<NodeId> = ring.iter().copied().filter(|id| *id != gone).collect();
        let ranges = affected_ranges(&ring, &after, 3);
        assert_eq!(ranges.len(), 1);
        let (start, end) = ranges[0];
        // Every key whose 3 closest (before) include the node that left is covered.
        for probe in 0..2000u32 {
            let key = PlacementKey(Id::hash(&probe.to_be_bytes()));
            let closest = crate::closest(&key.0, ring.iter().copied(), 3);
            if closest.contains(&gone) {
                assert!(in_ring_range(&key, &start, &end), "key {key} missed");
            }
        }
        assert!(!in_ring_range(&PlacementKey(ring[5].0), &start, &end));
        assert!(affected_ranges(&ring, &ring, 3).is_empty());
        assert_eq!(affected_ranges(&ring[..5], &ring[..4], 3).len(), 1);
    }
}
