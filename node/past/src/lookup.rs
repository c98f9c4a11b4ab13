//! Looking up fragments of one block: PAST's lookup, per fragment.
//!
//! Owns: [`FragmentLookup`] (the [`Operation`]), [`FetchFailure`] and
//! [`LOOKUP_SPARES`].
//!
//! May use: `cairn_core::{erasure, id}` and this crate's wire types.
//!
//! # The rules
//! - The locate asks for the nodes up to the highest index wanted, plus
//!   [`LOOKUP_SPARES`]: after a join or a diversion a fragment may sit a little
//!   further out.
//! - Fragment `i` is asked of its designated holder (the `i`-th closest) first, then of
//!   the others in order of closeness; every index is looked up in parallel.
//! - A [`PastResponse::Pointer`] is followed once per node asked (a diverted fragment
//!   is never diverted again, so a second pointer is a loop or a lie).
//! - A holder answering `Corrupt`, refusing, or failing is skipped; the first such
//!   failure is what the index reports if no node has the fragment, and nothing at all
//!   (`Ok(None)`) if every node simply did not have it. The bytes are verified by
//!   the reader (the pipeline), not here: a lookup only finds.

use std::collections::BTreeMap;

use cairn_core::erasure::Fragment;
use cairn_core::id::{NodeId, PlacementKey};

use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{NodeAddress, PastRequest, PastResponse, Refusal};

/// How many extra nodes beyond the highest index a lookup asks when a fragment is not
/// where it should be (membership changed, or the fragment was diverted).
pub const LOOKUP_SPARES: usize = 4;

/// Why a holder did not give a fragment; `E` is the driver's failure.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure<E> {
    /// The holder has it, but its copy no longer matches its hash.
    #[error("node {node} holds a corrupt copy of fragment {index}")]
    Corrupt {
        /// The holder.
        node: NodeId,
        /// The fragment.
        index: u16,
    },
    /// The holder refused.
    #[error("node {node} refused: {refusal}")]
    Refused {
        /// The holder.
        node: NodeId,
        /// Why.
        refusal: Refusal,
    },
    /// The holder answered something that is not an answer to a fetch.
    #[error("node {node} {what}")]
    Protocol {
        /// The holder.
        node: NodeId,
        /// What it did.
        what: String,
    },
    /// The driver could not ask.
    #[error("{0}")]
    Failed(E),
}

/// What a lookup found for one index: the fragment, nothing anywhere (`Ok(None)`), or
/// the first failure met.
pub type Fetched<E> = Result<Option<Fragment>, FetchFailure<E>>;

/// Where one index's lookup stands.
#[derive(Debug)]
struct IndexLookup<E> {
    index: u16,
    /// Nodes still to ask, next first.
    candidates: std::vec::IntoIter<NodeAddress>,
    /// Whether the node being asked now was reached through a pointer.
    followed_pointer: bool,
    first_failure: Option<FetchFailure<E>>,
    result: Option<Fetched<E>>,
}

/// Why a lookup as a whole failed (nobody answered the locate).
#[derive(Debug, thiserror::Error)]
pub enum LookupError<E> {
    /// Nobody answered the locate.
    #[error("{0}")]
    Locate(E),
    /// The operation stopped without deciding (a bug, reported rather than hung).
    #[error("the lookup at key {0} stalled")]
    Stalled(PlacementKey),
}

/// Fetches some fragments of the block at a key (see the module's rules). Its output
/// has one entry per index asked, in the order asked.
#[derive(Debug)]
pub struct FragmentLookup<E> {
    key: PlacementKey,
    lookups: Vec<IndexLookup<E>>,
    ids: AskIds,
    /// Each ask: the position in `lookups` and the node asked.
    asked: BTreeMap<AskId, (usize, NodeAddress)>,
}

impl<E> FragmentLookup<E> {
    /// Looks up fragments `indexes` of the block at `key`.
    pub fn new(key: PlacementKey, indexes: &[u16]) -> FragmentLookup<E> {
        FragmentLookup {
            key,
            lookups: indexes
                .iter()
                .map(|&index| IndexLookup {
                    index,
                    candidates: Vec::new().into_iter(),
                    followed_pointer: false,
                    first_failure: None,
                    result: None,
                })
                .collect(),
            ids: AskIds::default(),
            asked: BTreeMap::new(),
        }
    }

    fn ask(&mut self, position: usize, to: NodeAddress) -> Command {
        let ask = self.ids.next_id();
        self.asked.insert(ask, (position, to));
        let index = self.lookups.get(position).map_or(0, |l| l.index);
        Command::Ask {
            ask,
            to,
            request: PastRequest::Fetch {
                key: self.key,
                index,
            },
        }
    }

    /// Asks the next candidate for the index at `position`, or settles it.
    fn next_candidate(&mut self, position: usize) -> Vec<Command> {
        let Some(lookup) = self.lookups.get_mut(position) else {
            return Vec::new();
        };
        lookup.followed_pointer = false;
        match lookup.candidates.next() {
            Some(to) => vec![self.ask(position, to)],
            None => {
                lookup.result = Some(match lookup.first_failure.take() {
                    Some(failure) => Err(failure),
                    None => Ok(None),
                });
                Vec::new()
            }
        }
    }

    fn progress(
        &mut self,
        commands: Vec<Command>,
    ) -> Progress<Result<Vec<Fetched<E>>, LookupError<E>>> {
        if self.lookups.iter().all(|l| l.result.is_some()) {
            let results = self
                .lookups
                .iter_mut()
                .map(|l| l.result.take().unwrap_or(Ok(None)))
                .collect();
            Progress::Done(Ok(results))
        } else {
            Progress::Continue(commands)
        }
    }
}

impl<E> Operation for FragmentLookup<E> {
    type Output = Result<Vec<Fetched<E>>, LookupError<E>>;
    type Failure = E;

    fn start(&mut self) -> Progress<Self::Output> {
        let highest = self.lookups.iter().map(|l| usize::from(l.index)).max();
        match highest {
            None => Progress::Done(Ok(Vec::new())),
            Some(highest) => Progress::Continue(vec![Command::Locate {
                key: self.key,
                count: u16::try_from(highest + 1 + LOOKUP_SPARES).unwrap_or(u16::MAX),
            }]),
        }
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Self::Output> {
        match input {
            // Never asked for.
            Input::Paced(_) => Progress::Continue(Vec::new()),
            Input::Located(Err(failure)) => Progress::Done(Err(LookupError::Locate(failure))),
            Input::Located(Ok(nodes)) => {
                let mut commands = Vec::new();
                for position in 0..self.lookups.len() {
                    let Some(lookup) = self.lookups.get_mut(position) else {
                        continue;
                    };
                    // The designated holder first, then the others by closeness.
                    let designated = nodes.get(usize::from(lookup.index)).copied();
                    let order: Vec<NodeAddress> = designated
                        .into_iter()
                        .chain(nodes.iter().copied().filter(|n| Some(*n) != designated))
                        .collect();
                    lookup.candidates = order.into_iter();
                    commands.extend(self.next_candidate(position));
                }
                self.progress(commands)
            }
            Input::Answered(ask, answer) => {
                let Some((position, asked)) = self.asked.remove(&ask) else {
                    return Progress::Continue(Vec::new());
                };
                let Some(lookup) = self.lookups.get_mut(position) else {
                    return Progress::Continue(Vec::new());
                };
                let index = lookup.index;
                let node = asked.id;
                let failure = match answer {
                    Ok(PastResponse::Fragment { bytes }) => {
                        lookup.result = Some(Ok(Some(Fragment { index, bytes })));
                        return self.progress(Vec::new());
                    }
                    Ok(PastResponse::Pointer { holder })
                        if holder != asked && !lookup.followed_pointer =>
                    {
                        let command = self.ask(position, holder);
                        if let Some(lookup) = self.lookups.get_mut(position) {
                            lookup.followed_pointer = true;
                        }
                        return Progress::Continue(vec![command]);
                    }
                    Ok(PastResponse::NotFound | PastResponse::Pointer { .. }) => None,
                    Ok(PastResponse::Corrupt) => Some(FetchFailure::Corrupt { node, index }),
                    Ok(PastResponse::Refused(refusal)) => {
                        Some(FetchFailure::Refused { node, refusal })
                    }
                    Ok(other) => Some(FetchFailure::Protocol {
                        node,
                        what: format!("answered a fetch with {other:?}"),
                    }),
                    Err(failure) => Some(FetchFailure::Failed(failure)),
                };
                if let Some(failure) = failure {
                    lookup.first_failure.get_or_insert(failure);
                }
                let commands = self.next_candidate(position);
                self.progress(commands)
            }
        }
    }

    fn stalled(&mut self) -> Self::Output {
        Err(LookupError::Stalled(self.key))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;

    use cairn_core::crypto::KeyPair;

    use super::*;
    use crate::insert::{BlockInsert, OwnedFragments};
    use crate::testing::{Behaviour, TestNet, fragments, grant, key, run};

    const MIB: u64 = 1 << 20;

    fn stored(net: &TestNet, at: PlacementKey) -> OwnedFragments {
        let owner = KeyPair::from_secret_bytes(&[80; 32]);
        let (file, grant) = grant(&owner, b"f");
        let fragments = fragments(6, 1000);
        run(
            net,
            BlockInsert::<String>::new(file, grant, at, Arc::clone(&fragments)),
        )
        .unwrap();
        fragments
    }

    fn lookup(net: &TestNet, at: PlacementKey, indexes: &[u16]) -> Vec<Fetched<String>> {
        run(net, FragmentLookup::new(at, indexes)).unwrap()
    }

    fn bytes(result: &Fetched<String>) -> Option<&[u8]> {
        match result {
            Ok(Some(fragment)) => Some(&fragment.bytes),
            _ => None,
        }
    }

    #[test]
    fn every_index_comes_from_its_designated_holder() {
        let net = TestNet::new(&[64 * MIB; 8]);
        let fragments = stored(&net, key(1));
        let found = lookup(&net, key(1), &[5, 0, 3]);
        for (result, index) in found.iter().zip([5u16, 0, 3]) {
            assert_eq!(bytes(result), Some(&fragments[usize::from(index)].2[..]));
        }
    }

    #[test]
    fn a_dead_holder_reports_its_failure_and_a_corrupt_one_is_skipped() {
        let mut net = TestNet::new(&[64 * MIB; 8]);
        stored(&net, key(2));
        let closest = net.closest(&key(2).0, 8);
        net.set(&closest[0].id, Behaviour::Silent);
        assert!(
            net.node(&closest[2].id)
                .holder
                .store()
                .corrupt_fragment(&key(2), 2, 0, 1)
        );
        let found = lookup(&net, key(2), &[0, 1, 2]);
        // Index 0's holder is down: no other node has it, and the failure says why.
        assert!(
            matches!(found[0], Err(FetchFailure::Failed(_))),
            "{:?}",
            found[0]
        );
        assert!(bytes(&found[1]).is_some());
        // Index 2's holder serves no corrupt bytes: it says so, and nobody else has it.
        assert!(
            matches!(found[2], Err(FetchFailure::Corrupt { index: 2, .. })),
            "{:?}",
            found[2]
        );
    }

    #[test]
    fn a_fragment_that_is_not_where_it_should_be_is_found_further_out() {
        // The block is stored while the two nodes closest to its key are away; they
        // come back holding nothing, so every designated holder has moved.
        let mut net = TestNet::new(&[64 * MIB; 12]);
        let closest = net.closest(&key(3).0, 12);
        for node in &closest[..2] {
            net.set(&node.id, Behaviour::Down);
        }
        let fragments = stored(&net, key(3));
        for node in &closest[..2] {
            net.set(&node.id, Behaviour::Honest);
        }
        let found = lookup(&net, key(3), &[0, 1, 2, 3, 4, 5]);
        for (i, result) in found.iter().enumerate() {
            assert_eq!(bytes(result), Some(&fragments[i].2[..]), "index {i}");
        }
    }

    #[test]
    fn a_diverted_fragment_is_found_through_the_pointer_or_the_backup_pointer() {
        let mut net = TestNet::with_one_small(10, 64 * MIB, &key(4), 3, 5_000);
        let closest = net.closest(&key(4).0, 10);
        let fragments = stored(&net, key(4));
        let found = lookup(&net, key(4), &[3]);
        assert_eq!(bytes(&found[0]), Some(&fragments[3].2[..]));
        // With the diverting node gone, the backup pointer on the 7th closest leads there.
        net.set(&closest[3].id, Behaviour::Down);
        let found = lookup(&net, key(4), &[3]);
        assert_eq!(bytes(&found[0]), Some(&fragments[3].2[..]));
    }

    #[test]
    fn pointers_are_followed_once_so_a_loop_ends() {
        let net = TestNet::new(&[64 * MIB; 8]);
        let closest = net.closest(&key(5).0, 8);
        let (a, b) = (closest[0].id, closest[1].id);
        net.node(&a).holder.put_pointer(&key(5), 0, &b);
        net.node(&b).holder.put_pointer(&key(5), 0, &a);
        let found = lookup(&net, key(5), &[0]);
        assert!(matches!(found[0], Ok(None)), "{:?}", found[0]);
    }

    #[test]
    fn nothing_to_look_up_decides_at_once_and_a_failed_locate_is_reported() {
        let mut op = FragmentLookup::<&str>::new(key(6), &[]);
        assert!(matches!(op.start(), Progress::Done(Ok(v)) if v.is_empty()));
        let mut op = FragmentLookup::<&str>::new(key(6), &[1]);
        assert!(matches!(op.start(), Progress::Continue(c) if c.len() == 1));
        assert!(matches!(
            op.handle(Input::Located(Err("no route"))),
            Progress::Done(Err(LookupError::Locate("no route")))
        ));
    }
}
