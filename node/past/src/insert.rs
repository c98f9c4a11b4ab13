//! Inserting one block: its `n` fragments to the `n` nodes closest to its placement
//! key, each answering with a store receipt that is checked here (PAST's insert, per
//! fragment; a full holder's replica diversion happens on its side and shows here as
//! a receipt signed by the node it diverted to).
//!
//! Owns: [`BlockInsert`] (the [`Operation`]), [`PlacementFailure`] (why a block could
//! not be placed at one key: the evidence behind a file diversion, and the message a
//! user sees behind HTTP 507 when every salt failed), [`StoreFailure`] and
//! [`check_receipt`].
//!
//! May use: `cairn_core::{crypto, id}` and this crate's wire types.
//!
//! # The rules
//! - The locate asks for `n + 1` nodes (the `(n+1)`-th keeps backup pointers for
//!   diverted fragments, PAST §3.3); fewer than `n` found fails at once: the network
//!   is too small for the code.
//! - Fragment `i` goes to the `i`-th closest node. A fragment counts as placed only
//!   with a receipt signed by the node that holds it (the one asked, or the one it
//!   diverted to), naming this file, key, index and hash.
//! - Every fragment is answered before the insert decides; any failure fails the
//!   block at this key with every reason, and the pipeline tries the next salt (file
//!   diversion).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cairn_core::crypto::{Signed, StoreReceipt};
use cairn_core::id::{FileId, FragmentHash, NodeId, PlacementKey};

use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{NodeAddress, PastRequest, PastResponse, Refusal, StoreRequest};

/// The fragments of one block as they go out in store requests: index, hash, bytes.
pub type OwnedFragments = Arc<Vec<(u16, FragmentHash, Vec<u8>)>>;

/// Why one fragment was not placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreFailure {
    /// The node refused it (full, a grant it does not accept, a reclaimed file...).
    Refused(Refusal),
    /// The node answered with a receipt that does not prove the store.
    BadReceipt(String),
    /// The node answered with something other than a receipt or a refusal.
    Unexpected(String),
    /// The node could not be asked (the driver's failure, as text).
    Unreachable(String),
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFailure::Refused(refusal) => write!(f, "{refusal}"),
            StoreFailure::BadReceipt(reason) => write!(f, "{reason}"),
            StoreFailure::Unexpected(what) => write!(f, "unexpected answer {what}"),
            StoreFailure::Unreachable(reason) => write!(f, "{reason}"),
        }
    }
}

/// Why a block's `n` fragments could not all be placed at one key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PlacementFailure {
    /// The key tried.
    pub key: PlacementKey,
    /// Fragments to place.
    pub needed: usize,
    /// Fragments placed.
    pub placed: usize,
    /// Nodes near the key (fewer than `needed` means the network is too small).
    pub nodes_found: usize,
    /// What went wrong, per fragment: index, node and reason, by index.
    pub failures: Vec<(u16, NodeId, StoreFailure)>,
}

impl fmt::Display for PlacementFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes_found < self.needed {
            return write!(
                f,
                "only {} node(s) near key {}, {} needed for {} fragments",
                self.nodes_found, self.key, self.needed, self.needed
            );
        }
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, reason) in &self.failures {
            *reasons.entry(reason.to_string()).or_default() += 1;
        }
        let reasons: Vec<String> = reasons
            .iter()
            .map(|(reason, count)| format!("{count}× {reason}"))
            .collect();
        write!(
            f,
            "{} of {} fragments placed at key {}; {} node(s) refused or failed: {}",
            self.placed,
            self.needed,
            self.key,
            self.failures.len(),
            reasons.join("; ")
        )
    }
}

/// Why an insert failed; `E` is the driver's failure.
#[derive(Debug, thiserror::Error)]
pub enum InsertError<E> {
    /// Nobody answered the locate.
    #[error("{0}")]
    Locate(E),
    /// The block could not be placed at this key.
    #[error(transparent)]
    Placement(#[from] PlacementFailure),
    /// The operation stopped without deciding (a bug, reported rather than hung).
    #[error("the insert at key {0} stalled")]
    Stalled(PlacementKey),
}

/// Stores one block's fragments at its key (see the module's rules).
#[derive(Debug)]
pub struct BlockInsert<E> {
    file: FileId,
    grant: Arc<Vec<u8>>,
    key: PlacementKey,
    fragments: OwnedFragments,
    ids: AskIds,
    /// Each ask: the fragment's position in `fragments` and the node asked.
    asked: BTreeMap<AskId, (usize, NodeId)>,
    nodes_found: usize,
    placed: usize,
    failures: Vec<(u16, NodeId, StoreFailure)>,
    _failure: std::marker::PhantomData<fn(E)>,
}

impl<E: fmt::Display> BlockInsert<E> {
    /// Stores `fragments` of a block of `file` at `key` under the owner's signed
    /// upload `grant`.
    pub fn new(
        file: FileId,
        grant: Arc<Vec<u8>>,
        key: PlacementKey,
        fragments: OwnedFragments,
    ) -> BlockInsert<E> {
        BlockInsert {
            file,
            grant,
            key,
            fragments,
            ids: AskIds::default(),
            asked: BTreeMap::new(),
            nodes_found: 0,
            placed: 0,
            failures: Vec::new(),
            _failure: std::marker::PhantomData,
        }
    }

    fn replicas(&self) -> u16 {
        u16::try_from(self.fragments.len()).unwrap_or(u16::MAX)
    }

    fn failure(&mut self) -> PlacementFailure {
        let mut failures = std::mem::take(&mut self.failures);
        failures.sort_by_key(|(index, _, _)| *index);
        PlacementFailure {
            key: self.key,
            needed: self.fragments.len(),
            placed: self.placed,
            nodes_found: self.nodes_found,
            failures,
        }
    }

    fn store_requests(&mut self, nodes: &[NodeAddress]) -> Vec<Command> {
        let replicas = self.replicas();
        let mut commands = Vec::with_capacity(self.fragments.len());
        for (position, ((index, hash, bytes), to)) in
            self.fragments.iter().zip(nodes.iter().copied()).enumerate()
        {
            let ask = self.ids.next_id();
            self.asked.insert(ask, (position, to.id));
            commands.push(Command::Ask {
                ask,
                to,
                // A copy per request: the pipeline keeps its own to store again
                // under another salt.
                request: PastRequest::Store(StoreRequest {
                    grant: self.grant.as_ref().clone(),
                    key: self.key,
                    index: *index,
                    hash: *hash,
                    bytes: bytes.clone(),
                    replicas,
                }),
            });
        }
        commands
    }

    fn judge(
        &self,
        position: usize,
        asked: NodeId,
        answer: Result<PastResponse, E>,
    ) -> Result<(), StoreFailure> {
        let Some((index, hash, _)) = self.fragments.get(position) else {
            return Err(StoreFailure::Unexpected("an answer for no fragment".into()));
        };
        match answer {
            Ok(PastResponse::Stored {
                receipt,
                diverted_to,
            }) => {
                let holder = diverted_to.map_or(asked, |d| d.id);
                check_receipt(&receipt, holder, self.file, self.key, *index, *hash)
                    .map_err(StoreFailure::BadReceipt)
            }
            Ok(PastResponse::Refused(refusal)) => Err(StoreFailure::Refused(refusal)),
            Ok(other) => Err(StoreFailure::Unexpected(format!("{other:?}"))),
            Err(failure) => Err(StoreFailure::Unreachable(failure.to_string())),
        }
    }
}

impl<E: fmt::Display> Operation for BlockInsert<E> {
    type Output = Result<(), InsertError<E>>;
    type Failure = E;

    fn start(&mut self) -> Progress<Self::Output> {
        Progress::Continue(vec![Command::Locate {
            key: self.key,
            count: self.replicas().saturating_add(1),
        }])
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Self::Output> {
        match input {
            // Never asked for.
            Input::Paced(_) => Progress::Continue(Vec::new()),
            Input::Located(Err(failure)) => Progress::Done(Err(InsertError::Locate(failure))),
            Input::Located(Ok(nodes)) => {
                self.nodes_found = nodes.len();
                if nodes.len() < self.fragments.len() || self.fragments.is_empty() {
                    return Progress::Done(Err(self.failure().into()));
                }
                Progress::Continue(self.store_requests(&nodes))
            }
            Input::Answered(ask, answer) => {
                let Some((position, node)) = self.asked.remove(&ask) else {
                    return Progress::Continue(Vec::new());
                };
                match self.judge(position, node, answer) {
                    Ok(()) => self.placed += 1,
                    Err(reason) => {
                        let index = self.fragments.get(position).map_or(0, |f| f.0);
                        self.failures.push((index, node, reason));
                    }
                }
                if !self.asked.is_empty() {
                    Progress::Continue(Vec::new())
                } else if self.failures.is_empty() {
                    Progress::Done(Ok(()))
                } else {
                    tracing::debug!(key = %self.key, placed = self.placed, "block not placed: {:?}", self.failures);
                    Progress::Done(Err(self.failure().into()))
                }
            }
        }
    }

    fn stalled(&mut self) -> Self::Output {
        Err(InsertError::Stalled(self.key))
    }
}

/// Checks a store receipt against what was asked: signed by `holder`, for this file,
/// key, index and hash.
pub fn check_receipt(
    bytes: &[u8],
    holder: NodeId,
    file: FileId,
    key: PlacementKey,
    index: u16,
    hash: FragmentHash,
) -> Result<(), String> {
    let signed =
        Signed::<StoreReceipt>::from_bytes(bytes).map_err(|e| format!("bad receipt: {e}"))?;
    let receipt = signed.verify().map_err(|e| format!("bad receipt: {e}"))?;
    if receipt.node != holder {
        return Err(format!(
            "receipt signed by {} instead of {holder}",
            receipt.node
        ));
    }
    if receipt.file_id != file
        || receipt.placement_key != key
        || receipt.index != index
        || receipt.fragment_hash != hash
    {
        return Err("receipt for another fragment".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::crypto::KeyPair;
    use cairn_store::NodeStore;

    use super::*;
    use crate::testing::{Behaviour, TestNet, fragments, grant, key, run};

    const MIB: u64 = 1 << 20;

    fn insert(
        file: FileId,
        grant: Arc<Vec<u8>>,
        key: PlacementKey,
        fragments: OwnedFragments,
    ) -> BlockInsert<String> {
        BlockInsert::new(file, grant, key, fragments)
    }

    #[test]
    fn fragment_i_lands_on_the_i_th_closest_node_with_a_checked_receipt() {
        let net = TestNet::new(&[64 * MIB; 8]);
        let owner = KeyPair::from_secret_bytes(&[90; 32]);
        let (file, grant) = grant(&owner, b"photo");
        let fragments = fragments(6, 1000);
        run(&net, insert(file, grant, key(1), Arc::clone(&fragments))).unwrap();
        let closest = net.closest(&key(1).0, 8);
        for (i, node) in closest.iter().enumerate() {
            let held = net
                .node(&node.id)
                .holder
                .store()
                .fragments_under(&key(1))
                .unwrap();
            if i < 6 {
                assert_eq!(held.len(), 1, "node {i}");
                assert_eq!(held[0].index, u16::try_from(i).unwrap());
            } else {
                assert!(held.is_empty(), "node {i} beyond n holds something");
            }
        }
    }

    #[test]
    fn a_small_network_fails_before_asking_anyone() {
        let net = TestNet::new(&[64 * MIB; 4]);
        let owner = KeyPair::from_secret_bytes(&[91; 32]);
        let (file, grant) = grant(&owner, b"f");
        let error = run(&net, insert(file, grant, key(2), fragments(6, 100))).unwrap_err();
        let InsertError::Placement(failure) = error else {
            panic!("{error:?}")
        };
        assert_eq!(
            (failure.placed, failure.nodes_found, failure.needed),
            (0, 4, 6)
        );
        assert_eq!(
            failure.to_string(),
            format!(
                "only 4 node(s) near key {}, 6 needed for 6 fragments",
                key(2)
            )
        );
        assert!(net.nodes.iter().all(|n| n.holder.store().used() == 0));
    }

    #[test]
    fn refusals_dead_nodes_and_forged_receipts_each_fail_the_block_with_their_reason() {
        let mut net = TestNet::new(&[64 * MIB; 8]);
        let closest = net.closest(&key(3).0, 8);
        net.set(&closest[1].id, Behaviour::Silent);
        net.set(&closest[4].id, Behaviour::ForgesReceipts);
        let owner = KeyPair::from_secret_bytes(&[92; 32]);
        let (file, grant) = grant(&owner, b"f");
        let stranger = KeyPair::from_secret_bytes(&[93; 32]);
        let (_, forged_grant) = crate::testing::grant(&stranger, b"f");
        let error = run(&net, insert(file, forged_grant, key(3), fragments(6, 100))).unwrap_err();
        let InsertError::Placement(failure) = error else {
            panic!("{error:?}")
        };
        // A grant signed by someone else names another file: every honest receipt is
        // for the wrong file.
        assert_eq!(failure.placed, 0, "{failure}");

        let error = run(&net, insert(file, grant, key(3), fragments(6, 100))).unwrap_err();
        let InsertError::Placement(failure) = error else {
            panic!("{error:?}")
        };
        assert_eq!(failure.placed, 4, "{failure}");
        let reasons: Vec<(u16, &StoreFailure)> =
            failure.failures.iter().map(|(i, _, r)| (*i, r)).collect();
        assert!(
            matches!(reasons[0], (1, StoreFailure::Unreachable(_))),
            "{reasons:?}"
        );
        assert!(
            matches!(reasons[1], (4, StoreFailure::BadReceipt(_))),
            "{reasons:?}"
        );
        assert!(
            failure.to_string().starts_with("4 of 6 fragments placed"),
            "{failure}"
        );
    }

    #[test]
    fn a_full_holder_diverts_beyond_the_n_closest_and_pointers_find_the_fragment() {
        // The second closest is tiny: 1,000 bytes is over t_pri = 0.1 of 5,000.
        let net = TestNet::with_one_small(10, 64 * MIB, &key(4), 1, 5_000);
        let closest = net.closest(&key(4).0, 10);
        let owner = KeyPair::from_secret_bytes(&[94; 32]);
        let (file, grant) = grant(&owner, b"f");
        run(&net, insert(file, grant, key(4), fragments(6, 1000))).unwrap();

        let store = |i: usize| net.node(&closest[i].id).holder.store();
        assert!(store(1).fragments_under(&key(4)).unwrap().is_empty());
        let pointed = store(1)
            .get_pointer(&key(4), 1)
            .unwrap()
            .expect("a pointer on the full node");
        let diverted_to = closest.iter().position(|n| n.id == pointed).unwrap();
        assert!(
            diverted_to >= 6,
            "diverted inside the n closest: {diverted_to}"
        );
        let held = net
            .node(&pointed)
            .holder
            .store()
            .fragments_under(&key(4))
            .unwrap();
        assert_eq!(held[0].index, 1);
        // The (n+1)-th closest keeps the backup pointer (unless it took the fragment).
        if diverted_to != 6 {
            assert_eq!(store(6).get_pointer(&key(4), 1).unwrap(), Some(pointed));
        }
    }

    #[test]
    fn when_nobody_has_room_the_block_is_refused_as_full() {
        let net = TestNet::new(&[5_000; 8]);
        let owner = KeyPair::from_secret_bytes(&[95; 32]);
        let (file, grant) = grant(&owner, b"f");
        let error = run(&net, insert(file, grant, key(5), fragments(6, 1000))).unwrap_err();
        let InsertError::Placement(failure) = error else {
            panic!("{error:?}")
        };
        assert_eq!(failure.placed, 0);
        assert!(
            failure
                .failures
                .iter()
                .all(|(_, _, r)| matches!(r, StoreFailure::Refused(Refusal::Full { .. }))),
            "{failure}"
        );
        assert!(failure.to_string().contains("6× full"), "{failure}");
    }
}
