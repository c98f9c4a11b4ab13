//! Reclaim over the network: which nodes an owner's reclaim goes to, and what counts as
//! done. Two [`Operation`]s: [`FileReclaim`] (a gateway frees a whole file: every node
//! near every key its blocks may have left fragments under, then the certificate's
//! keepers) and [`ReclaimForward`] (a holder that carried out a reclaim passes it on to
//! the nodes it had diverted copies to). What one holder does with a reclaim is
//! [`crate::Holder::reclaim`].
//!
//! Owns: [`FileReclaim`] and its outcome [`FileReclaimed`] and error [`ReclaimError`],
//! [`ReclaimForward`] and its outcome [`Forwarded`], [`reclaim_keys`],
//! [`authorise_reclaim`] and [`MAX_SALTS_RECLAIMED`].
//!
//! May use: `cairn_core::{crypto, id, manifest}`, this crate's wire types, checks and
//! [`crate::operation`].
//!
//! # The rules
//! - A reclaim is obeyed only if the owner of the file's certificate signed it
//!   ([`authorise_reclaim`]): the gateway checks before it sends anything, and every
//!   holder checks again.
//! - **Which keys**: for every block and for the manifest block, the placement key of
//!   every salt from 0 up to the one it landed at (a block that file diversion moved
//!   may have left fragments under the earlier keys, placed before the refusal and
//!   referenced by this file only), at most [`MAX_SALTS_RECLAIMED`] + 1 salts a block.
//!   Each key is asked of its `n` + [`LOOKUP_SPARES`] closest nodes.
//! - **In what order**: one key at a time (a locate, then every node found asked at
//!   once), the certificate's keepers last: they forget the certificate and remember
//!   the file as reclaimed, so a reclaim that fails half-way can be sent again.
//! - **What counts as done**: every node asked answered. One that refuses, answers
//!   something else or cannot be reached is a failure in the report, not an error: it
//!   keeps its copies until maintenance (`Forget`) catches up. A file reclaim fails only
//!   if it is not the owner's.
//! - **Forward**: each holder of a copy this node had diverted is asked to reclaim that
//!   one key (one level: a diverted copy is never diverted again); what it freed is
//!   added to what this node freed. One without a known address, or that does not
//!   free it, is reported (and logged); its copy stays until maintenance.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;

use cairn_core::crypto::{FileCertificate, ReclaimCertificate};
use cairn_core::id::{FileId, NodeId, PlacementKey};
use cairn_core::manifest::{Manifest, manifest_placement_key};

use crate::lookup::LOOKUP_SPARES;
use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{
    NodeAddress, PastRequest, PastResponse, Reclaimed, Refusal, UnixSeconds, certificate_key,
    check_certificate, check_reclaim,
};

/// A reclaim visits at most this many salts per block beyond the first (a put tries
/// at most `max_file_diversions + 1`; the cap keeps a strange manifest from costing
/// more).
pub const MAX_SALTS_RECLAIMED: u64 = 16;

/// Whether `order` may free the file `certificate` certifies: it must name that file
/// and be signed by its owner (the signature itself is [`check_reclaim`]'s).
pub fn authorise_reclaim(
    order: &ReclaimCertificate,
    certificate: &FileCertificate,
) -> Result<(), Refusal> {
    if order.file_id != certificate.file_id || order.owner != certificate.owner {
        return Err(Refusal::Certificate(format!(
            "the reclaim of file {} is not signed by that file's owner",
            order.file_id
        )));
    }
    Ok(())
}

/// Every placement key a file's fragments may lie under (see the module's rules),
/// sorted, each once.
pub fn reclaim_keys(certificate: &FileCertificate, manifest: &Manifest) -> Vec<PlacementKey> {
    let mut keys: Vec<PlacementKey> = manifest
        .blocks
        .iter()
        .flat_map(|block| {
            (0..=block.salt.min(MAX_SALTS_RECLAIMED))
                .map(|salt| PlacementKey::for_block(&block.hash, salt))
        })
        .chain(
            (0..=certificate.manifest_salt.min(MAX_SALTS_RECLAIMED))
                .map(|salt| manifest_placement_key(&certificate.manifest_hash, salt)),
        )
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The `Reclaim` request of `reclaim` (with the `certificate` that shows the signer
/// owns the file) for `keys`.
fn request(reclaim: &[u8], certificate: &[u8], keys: &[PlacementKey]) -> PastRequest {
    PastRequest::Reclaim {
        reclaim: reclaim.to_vec(),
        certificate: certificate.to_vec(),
        keys: keys.to_vec(),
    }
}

/// Adds what a holder says it freed to `fragments` and `bytes`; any other answer is
/// handed back.
fn add_freed<E>(
    answer: Result<PastResponse, E>,
    fragments: &mut u64,
    bytes: &mut u64,
) -> Result<(), Result<PastResponse, E>> {
    match answer {
        Ok(PastResponse::Reclaimed {
            fragments: freed,
            bytes: freed_bytes,
        }) => {
            *fragments = fragments.saturating_add(freed);
            *bytes = bytes.saturating_add(freed_bytes);
            Ok(())
        }
        other => Err(other),
    }
}

/// What a file reclaim achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileReclaimed {
    /// Fragments deleted across the network.
    pub fragments: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Nodes that refused or could not be reached, and locates that failed: each
    /// keeps its copies until maintenance catches up.
    pub failures: Vec<String>,
}

/// Why a file reclaim was not sent at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReclaimError {
    /// The reclaim is malformed, forged, or not the certificate's owner's.
    #[error("reclaim refused: {0}")]
    Refused(Refusal),
    /// The operation stopped without deciding (a bug, reported rather than hung).
    #[error("the reclaim stalled")]
    Stalled,
}

/// One key to locate and the request its nodes get.
#[derive(Debug)]
struct ReclaimTarget {
    locate: PlacementKey,
    count: u16,
    /// The keys the request names (none for the certificate's keepers).
    keys: Vec<PlacementKey>,
}

/// Frees a whole file across the network (see the module's rules).
#[derive(Debug)]
pub struct FileReclaim<E> {
    reclaim: Vec<u8>,
    certificate: Vec<u8>,
    authority: Result<(), Refusal>,
    targets: VecDeque<ReclaimTarget>,
    /// The keys of the target being asked.
    current: Vec<PlacementKey>,
    ids: AskIds,
    asked: Vec<(AskId, NodeId)>,
    outstanding: usize,
    done: FileReclaimed,
    failure: PhantomData<fn(E)>,
}

impl<E> FileReclaim<E> {
    /// Frees the file of `certificate` (signed) with the owner's signed `reclaim`:
    /// every key of `manifest` (the file's, as the certificate names it), then the
    /// certificate's `keepers` closest nodes; both checked at `now` first.
    pub fn new(
        reclaim: Vec<u8>,
        certificate: Vec<u8>,
        manifest: &Manifest,
        keepers: u16,
        now: UnixSeconds,
    ) -> Self {
        let checked = check_certificate(&certificate, now).and_then(|certified| {
            let order = check_reclaim(&reclaim)?;
            authorise_reclaim(&order, &certified)?;
            Ok(certified)
        });
        let mut targets = VecDeque::new();
        if let Ok(certified) = &checked {
            let count =
                u16::try_from(usize::from(manifest.params.n()) + LOOKUP_SPARES).unwrap_or(u16::MAX);
            targets.extend(reclaim_keys(certified, manifest).into_iter().map(|key| {
                ReclaimTarget {
                    locate: key,
                    count,
                    keys: vec![key],
                }
            }));
            targets.push_back(ReclaimTarget {
                locate: certificate_key(&certified.file_id),
                count: keepers,
                keys: Vec::new(),
            });
        }
        FileReclaim {
            reclaim,
            certificate,
            authority: checked.map(|_| ()),
            targets,
            current: Vec::new(),
            ids: AskIds::default(),
            asked: Vec::new(),
            outstanding: 0,
            done: FileReclaimed::default(),
            failure: PhantomData,
        }
    }

    /// The next key's locate, or the decision once every key has been asked.
    fn next_target(&mut self) -> Progress<Result<FileReclaimed, ReclaimError>> {
        match self.targets.pop_front() {
            Some(target) => {
                self.current = target.keys;
                Progress::Continue(vec![Command::Locate {
                    key: target.locate,
                    count: target.count,
                }])
            }
            None => Progress::Done(Ok(std::mem::take(&mut self.done))),
        }
    }
}

impl<E: fmt::Display> Operation for FileReclaim<E> {
    type Output = Result<FileReclaimed, ReclaimError>;
    type Failure = E;

    fn start(&mut self) -> Progress<Self::Output> {
        if let Err(refusal) = &self.authority {
            return Progress::Done(Err(ReclaimError::Refused(refusal.clone())));
        }
        self.next_target()
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Self::Output> {
        match input {
            // Never asked for.
            Input::Paced(_) => Progress::Continue(Vec::new()),
            Input::Located(Err(failure)) => {
                self.done.failures.push(failure.to_string());
                self.next_target()
            }
            Input::Located(Ok(nodes)) if nodes.is_empty() => self.next_target(),
            Input::Located(Ok(nodes)) => {
                let asks = nodes
                    .into_iter()
                    .map(|to| {
                        let ask = self.ids.next_id();
                        self.asked.push((ask, to.id));
                        self.outstanding += 1;
                        let request = request(&self.reclaim, &self.certificate, &self.current);
                        Command::Ask { ask, to, request }
                    })
                    .collect();
                Progress::Continue(asks)
            }
            Input::Answered(ask, answer) => {
                let Some(node) = self.asked.iter().find(|(a, _)| *a == ask).map(|(_, n)| *n) else {
                    return Progress::Continue(Vec::new());
                };
                self.outstanding = self.outstanding.saturating_sub(1);
                match add_freed(answer, &mut self.done.fragments, &mut self.done.bytes) {
                    Ok(()) => {}
                    Err(Ok(other)) => self.done.failures.push(format!("{node}: {other:?}")),
                    Err(Err(failure)) => self.done.failures.push(failure.to_string()),
                }
                if self.outstanding == 0 {
                    self.next_target()
                } else {
                    Progress::Continue(Vec::new())
                }
            }
        }
    }

    fn stalled(&mut self) -> Self::Output {
        Err(ReclaimError::Stalled)
    }
}

/// What a holder freed for a reclaim, its diverted copies included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Fragments deleted, here and at the holders of diverted copies.
    pub fragments: u64,
    /// Bytes freed, likewise.
    pub bytes: u64,
    /// Diverted copies whose holder could not be reached, or did not free them.
    pub missed: Vec<(PlacementKey, NodeId)>,
}

impl Forwarded {
    /// The answer to the `Reclaim` request.
    pub fn response(&self) -> PastResponse {
        PastResponse::Reclaimed {
            fragments: self.fragments,
            bytes: self.bytes,
        }
    }
}

/// Passes a reclaim this node carried out on to the holders of the copies it had
/// diverted (see the module's rules).
#[derive(Debug)]
pub struct ReclaimForward<E> {
    reclaim: Vec<u8>,
    certificate: Vec<u8>,
    copies: Vec<(PlacementKey, NodeAddress)>,
    ids: AskIds,
    asked: Vec<(AskId, PlacementKey, NodeId)>,
    outstanding: usize,
    done: Forwarded,
    failure: PhantomData<fn(E)>,
}

impl<E> ReclaimForward<E> {
    /// Passes `reclaim` (with the `certificate` it came with) on to the holders of the
    /// diverted copies `here` names; what `here` freed is counted in.
    pub fn new(
        reclaim: Vec<u8>,
        certificate: Vec<u8>,
        here: Reclaimed,
        address_of: impl Fn(&NodeId) -> Option<NodeAddress>,
    ) -> Self {
        let mut done = Forwarded {
            fragments: here.fragments,
            bytes: here.bytes,
            missed: Vec::new(),
        };
        let mut copies = Vec::new();
        for (key, holder) in here.diverted_to {
            match address_of(&holder) {
                Some(address) => copies.push((key, address)),
                None => {
                    tracing::warn!(%key, %holder, "a diverted copy was not reclaimed: its holder's address is unknown");
                    done.missed.push((key, holder));
                }
            }
        }
        ReclaimForward {
            reclaim,
            certificate,
            copies,
            ids: AskIds::default(),
            asked: Vec::new(),
            outstanding: 0,
            done,
            failure: PhantomData,
        }
    }

    /// The file the reclaim is of, for logs (`None` if it does not parse).
    fn file(&self) -> Option<FileId> {
        check_reclaim(&self.reclaim).ok().map(|order| order.file_id)
    }
}

impl<E: fmt::Display> Operation for ReclaimForward<E> {
    type Output = Forwarded;
    type Failure = E;

    fn start(&mut self) -> Progress<Forwarded> {
        if self.copies.is_empty() {
            return Progress::Done(std::mem::take(&mut self.done));
        }
        let copies = std::mem::take(&mut self.copies);
        let asks = copies
            .into_iter()
            .map(|(key, to)| {
                let ask = self.ids.next_id();
                self.asked.push((ask, key, to.id));
                self.outstanding += 1;
                let request = request(&self.reclaim, &self.certificate, &[key]);
                Command::Ask { ask, to, request }
            })
            .collect();
        Progress::Continue(asks)
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Forwarded> {
        let Input::Answered(ask, answer) = input else {
            // Never asked for.
            return Progress::Continue(Vec::new());
        };
        let Some((key, holder)) = self
            .asked
            .iter()
            .find(|(a, _, _)| *a == ask)
            .map(|(_, key, holder)| (*key, *holder))
        else {
            return Progress::Continue(Vec::new());
        };
        self.outstanding = self.outstanding.saturating_sub(1);
        if let Err(other) = add_freed(answer, &mut self.done.fragments, &mut self.done.bytes) {
            let other = match other {
                Ok(answer) => format!("{answer:?}"),
                Err(failure) => failure.to_string(),
            };
            tracing::warn!(%key, %holder, file = ?self.file(), "a diverted copy was not reclaimed: {other}");
            self.done.missed.push((key, holder));
        }
        if self.outstanding == 0 {
            Progress::Done(std::mem::take(&mut self.done))
        } else {
            Progress::Continue(Vec::new())
        }
    }

    fn stalled(&mut self) -> Forwarded {
        std::mem::take(&mut self.done)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::crypto::KeyPair;
    use cairn_core::erasure::ErasureParams;
    use cairn_core::id::{BlockHash, Id};
    use cairn_core::manifest::BlockEntry;
    use cairn_store::NodeStore;

    use super::*;
    use crate::testing::{self, Behaviour, NOW, TestNet};

    const MIB: u64 = 1 << 20;
    const CODE: (u16, u16) = (4, 2);

    /// A block hash, and the placement key of its salt 0.
    fn block(seed: u8) -> (BlockHash, PlacementKey) {
        let hash = BlockHash(Id::hash(&[b'b', seed]));
        (hash, PlacementKey::for_block(&hash, 0))
    }

    /// A file of one block (`hash`, landed at `salt`), as the manifest names it.
    fn manifest(hash: BlockHash, salt: u64) -> Manifest {
        Manifest {
            file_size: 1,
            segment_size: 1 << 20,
            params: ErasureParams::new(CODE.0, CODE.1).unwrap(),
            blocks: vec![BlockEntry {
                hash,
                salt,
                fragments: Vec::new(),
            }],
        }
    }

    /// The nodes holding a fragment under `at`.
    fn holders(net: &TestNet, at: &PlacementKey) -> Vec<NodeId> {
        net.nodes
            .iter()
            .filter(|n| !n.holder.store().fragments_under(at).unwrap().is_empty())
            .map(|n| n.address.id)
            .collect()
    }

    fn file_reclaim(reclaim: Vec<u8>, certificate: &[u8], hash: BlockHash) -> FileReclaim<String> {
        FileReclaim::new(reclaim, certificate.to_vec(), &manifest(hash, 0), 6, NOW)
    }

    #[test]
    fn the_keys_are_every_salt_up_to_the_one_each_block_landed_at() {
        let (hash, at) = block(1);
        let (_, certificate) =
            testing::certificate(&KeyPair::from_secret_bytes(&[1; 32]), b"f", CODE);
        let certified = check_certificate(&certificate, NOW).unwrap();
        let keys = reclaim_keys(&certified, &manifest(hash, 2));
        assert_eq!(
            keys.len(),
            4,
            "three salts of the block, one of the manifest"
        );
        for key in [
            at,
            PlacementKey::for_block(&hash, 1),
            PlacementKey::for_block(&hash, 2),
            manifest_placement_key(&certified.manifest_hash, 0),
        ] {
            assert!(keys.contains(&key));
        }
        let capped = reclaim_keys(&certified, &manifest(hash, u64::MAX));
        assert_eq!(
            capped.len(),
            usize::try_from(MAX_SALTS_RECLAIMED).unwrap() + 2
        );
    }

    #[test]
    fn a_file_reclaim_frees_every_holder_then_the_keepers_forget_the_certificate() {
        let net = TestNet::new(&[64 * MIB; 12]);
        let owner = KeyPair::from_secret_bytes(&[2; 32]);
        let (hash, at) = block(2);
        let (file, certificate, _) = testing::certified_block(&net, &owner, b"f", at, CODE, 4000);
        assert_eq!(holders(&net, &at).len(), 6);
        let done = testing::run(
            &net,
            file_reclaim(testing::reclaim(&owner, &certificate), &certificate, hash),
        )
        .unwrap();
        assert_eq!(done.fragments, 6);
        assert_eq!(done.bytes, 6 * 1000);
        assert!(done.failures.is_empty(), "{:?}", done.failures);
        assert!(holders(&net, &at).is_empty());
        for keeper in net.closest(&certificate_key(&file).0, 4) {
            let store = net.node(&keeper.id).holder.store();
            assert_eq!(store.get_certificate(&file).unwrap(), None);
            assert!(store.is_reclaimed(&file).unwrap());
        }
    }

    #[test]
    fn a_holder_that_is_down_keeps_its_copy_and_is_a_failure_in_the_report() {
        let mut net = TestNet::new(&[64 * MIB; 12]);
        let owner = KeyPair::from_secret_bytes(&[3; 32]);
        let (hash, at) = block(3);
        let (_, certificate, _) = testing::certified_block(&net, &owner, b"f", at, CODE, 4000);
        let silent = holders(&net, &at)[0];
        net.set(&silent, Behaviour::Silent);
        let done = testing::run(
            &net,
            file_reclaim(testing::reclaim(&owner, &certificate), &certificate, hash),
        )
        .unwrap();
        assert_eq!(done.fragments, 5);
        assert!(!done.failures.is_empty());
        assert!(
            done.failures.iter().all(|f| f.contains("does not answer")),
            "{:?}",
            done.failures
        );
        assert_eq!(holders(&net, &at), vec![silent]);
    }

    #[test]
    fn a_forged_reclaim_is_never_sent() {
        let net = TestNet::new(&[64 * MIB; 10]);
        let owner = KeyPair::from_secret_bytes(&[4; 32]);
        let thief = KeyPair::from_secret_bytes(&[5; 32]);
        let (hash, at) = block(4);
        let (_, certificate, _) = testing::certified_block(&net, &owner, b"f", at, CODE, 4000);
        let mut op = file_reclaim(testing::reclaim(&thief, &certificate), &certificate, hash);
        assert!(matches!(
            op.start(),
            Progress::Done(Err(ReclaimError::Refused(Refusal::Certificate(_))))
        ));
        // A reclaim whose signature was tampered with is not even parsed as one.
        let mut tampered = testing::reclaim(&owner, &certificate);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let mut op = file_reclaim(tampered, &certificate, hash);
        assert!(matches!(op.start(), Progress::Done(Err(_))));
        assert_eq!(holders(&net, &at).len(), 6);
        // And a holder asked directly refuses it too.
        let holder = net.closest(&at.0, 1)[0];
        let asked = net.ask(
            &holder,
            PastRequest::Reclaim {
                reclaim: testing::reclaim(&thief, &certificate),
                certificate,
                keys: vec![at],
            },
        );
        assert!(
            matches!(asked, Ok(PastResponse::Refused(Refusal::Certificate(_)))),
            "{asked:?}"
        );
        assert_eq!(holders(&net, &at).len(), 6);
    }

    #[test]
    fn a_holder_passes_the_reclaim_on_to_its_diverted_copy() {
        let (_, at) = block(6);
        // The second closest is tiny: it diverts its fragment beyond the 6 closest.
        let mut net = TestNet::with_one_small(12, 64 * MIB, &at, 1, 5_000);
        let owner = KeyPair::from_secret_bytes(&[6; 32]);
        let (file, certificate, _) = testing::certified_block(&net, &owner, b"f", at, CODE, 4000);
        let closest = net.closest(&at.0, 12);
        let diverting = closest[1];
        let diverted_to = net
            .node(&diverting.id)
            .holder
            .store()
            .get_pointer(&at, 1)
            .unwrap()
            .expect("a pointer on the full node");
        assert_eq!(holders(&net, &at).len(), 6);
        assert!(holders(&net, &at).contains(&diverted_to));
        // A holder frees (and so passes on) only the keys where it records the file's
        // reference; a diversion alone records none (a gap `Holder::reclaim` has, left
        // as it is here), so the diverting node is given one.
        let reference = |net: &TestNet| {
            net.node(&diverting.id)
                .holder
                .store()
                .add_reference(&at, &file)
                .unwrap();
        };
        reference(&net);
        let reclaim = testing::reclaim(&owner, &certificate);
        let request = PastRequest::Reclaim {
            reclaim: reclaim.clone(),
            certificate: certificate.clone(),
            keys: vec![at],
        };
        // Only the diverting node is told: it passes the reclaim on through its pointer.
        let asked = net.ask(&diverting, request.clone());
        assert_eq!(
            asked,
            Ok(PastResponse::Reclaimed {
                fragments: 1,
                bytes: 1000
            })
        );
        assert!(!holders(&net, &at).contains(&diverted_to));
        assert_eq!(
            net.node(&diverting.id)
                .holder
                .store()
                .get_pointer(&at, 1)
                .unwrap(),
            None
        );

        // A diverted copy whose holder does not answer is reported missed.
        let net2 = TestNet::with_one_small(12, 64 * MIB, &at, 1, 5_000);
        let (_, certificate, _) = testing::certified_block(&net2, &owner, b"f", at, CODE, 4000);
        let pointed = net2
            .node(&diverting.id)
            .holder
            .store()
            .get_pointer(&at, 1)
            .unwrap()
            .unwrap();
        net = net2;
        reference(&net);
        net.set(&pointed, Behaviour::Silent);
        let here = net
            .node(&diverting.id)
            .holder
            .reclaim(&reclaim, &certificate, &[at], NOW)
            .unwrap();
        assert_eq!(here.diverted_to, vec![(at, pointed)]);
        let forwarded = testing::run(
            &net,
            ReclaimForward::new(reclaim, certificate, here, |id| {
                net.nodes
                    .iter()
                    .find(|n| n.address.id == *id)
                    .map(|n| n.address)
            }),
        );
        assert_eq!(forwarded.fragments, 0);
        assert_eq!(forwarded.missed, vec![(at, pointed)]);
        assert!(holders(&net, &at).contains(&pointed));
    }
}
