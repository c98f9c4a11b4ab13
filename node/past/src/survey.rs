//! Surveying one block: which node holds which of its fragments, as `cairn stat`
//! shows it and as a benchmark or the simulator counts a block's live fragments.
//!
//! Owns: [`BlockSurvey`] (the [`Operation`]), its outcome [`Survey`] and
//! [`FragmentHolders`].
//!
//! May use: `cairn_core::id` and this crate's wire types.
//!
//! # The rules
//! - The locate asks for the `n` nodes closest to the key plus [`LOOKUP_SPARES`] (a
//!   fragment may sit a little further out after a join), and every one of them is
//!   asked for its [`PastRequest::Holdings`] in parallel.
//! - A copy counts only if its hash is the one the manifest certifies for its index:
//!   a holder that lists another hash holds nothing useful.
//! - A pointer is counted as a pointer, and its holder is asked once for its holdings
//!   (a diverted copy lives outside the located set); the copy counts only if that
//!   holder itself lists it with the right hash.
//! - A node that does not answer holds nothing, for this survey. A failed locate is a
//!   survey that found nothing: the block shows as having no live fragment, never as
//!   an error, since that is what a reader would meet.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use cairn_core::id::{FragmentHash, NodeId, PlacementKey};
use serde::Serialize;

use crate::lookup::LOOKUP_SPARES;
use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{NodeAddress, PastRequest, PastResponse};

/// Where one fragment of a block is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FragmentHolders {
    /// The fragment's index.
    pub index: u16,
    /// Nodes holding a copy that matches the certified hash.
    pub holders: Vec<NodeId>,
    /// Nodes holding a pointer to a diverted copy.
    pub pointers: Vec<NodeId>,
}

/// What a survey found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Survey {
    /// Every index `0..n`, in order.
    pub fragments: Vec<FragmentHolders>,
    /// How many of the `n` fragments have at least one holder.
    pub live: usize,
}

/// Who an outstanding ask went to.
#[derive(Debug)]
enum Asked {
    /// A node of the located set.
    Near(NodeId),
    /// A diverted copy's holder, named by a pointer for these indexes.
    Pointed(NodeId),
}

/// Surveys the block at `key` whose certified fragment hashes are `hashes` (index `i`
/// at position `i`); `E` is the driver's failure.
#[derive(Debug)]
pub struct BlockSurvey<E> {
    key: PlacementKey,
    hashes: Vec<FragmentHash>,
    fragments: Vec<FragmentHolders>,
    asks: BTreeMap<AskId, Asked>,
    ids: AskIds,
    /// Diverted holders already asked (each once, whatever it holds).
    pointed: BTreeSet<NodeId>,
    failure: PhantomData<fn() -> E>,
}

impl<E> BlockSurvey<E> {
    /// A survey of the block at `key` with these certified fragment hashes.
    pub fn new(key: PlacementKey, hashes: Vec<FragmentHash>) -> BlockSurvey<E> {
        let fragments = (0..hashes.len())
            .map(|index| FragmentHolders {
                index: u16::try_from(index).unwrap_or(u16::MAX),
                holders: Vec::new(),
                pointers: Vec::new(),
            })
            .collect();
        BlockSurvey {
            key,
            hashes,
            fragments,
            asks: BTreeMap::new(),
            ids: AskIds::default(),
            pointed: BTreeSet::new(),
            failure: PhantomData,
        }
    }

    fn ask(&mut self, to: NodeAddress, asked: Asked) -> Command {
        let ask = self.ids.next_id();
        self.asks.insert(ask, asked);
        Command::Ask {
            ask,
            to,
            request: PastRequest::Holdings { key: self.key },
        }
    }

    /// Counts `node`'s copies that match their certified hash.
    fn count_copies(&mut self, node: NodeId, held: &[(u16, FragmentHash)]) {
        for (index, hash) in held {
            let position = usize::from(*index);
            if self.hashes.get(position) != Some(hash) {
                continue;
            }
            if let Some(slot) = self.fragments.get_mut(position)
                && !slot.holders.contains(&node)
            {
                slot.holders.push(node);
            }
        }
    }

    fn progress(&mut self, commands: Vec<Command>) -> Progress<Survey> {
        if self.asks.is_empty() {
            Progress::Done(self.outcome())
        } else {
            Progress::Continue(commands)
        }
    }

    fn outcome(&mut self) -> Survey {
        let fragments = std::mem::take(&mut self.fragments);
        let live = fragments.iter().filter(|f| !f.holders.is_empty()).count();
        Survey { fragments, live }
    }
}

impl<E> Operation for BlockSurvey<E> {
    type Output = Survey;
    type Failure = E;

    fn start(&mut self) -> Progress<Survey> {
        let count =
            u16::try_from(self.hashes.len().saturating_add(LOOKUP_SPARES)).unwrap_or(u16::MAX);
        Progress::Continue(vec![Command::Locate {
            key: self.key,
            count,
        }])
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Survey> {
        match input {
            Input::Located(Ok(nodes)) => {
                let commands = nodes
                    .into_iter()
                    .map(|node| self.ask(node, Asked::Near(node.id)))
                    .collect();
                self.progress(commands)
            }
            Input::Located(Err(_)) => Progress::Done(self.outcome()),
            Input::Answered(ask, answer) => {
                let Some(asked) = self.asks.remove(&ask) else {
                    return Progress::Continue(Vec::new());
                };
                let Ok(PastResponse::Holdings {
                    fragments: held,
                    pointers,
                    ..
                }) = answer
                else {
                    return self.progress(Vec::new());
                };
                let mut commands = Vec::new();
                match asked {
                    Asked::Near(node) => {
                        self.count_copies(node, &held);
                        for (index, holder) in pointers {
                            if let Some(slot) = self.fragments.get_mut(usize::from(index))
                                && !slot.pointers.contains(&node)
                            {
                                slot.pointers.push(node);
                            }
                            if self.pointed.insert(holder.id) {
                                commands.push(self.ask(holder, Asked::Pointed(holder.id)));
                            }
                        }
                    }
                    // A diverted holder's own pointers are not followed: a diverted
                    // copy is never diverted again.
                    Asked::Pointed(node) => self.count_copies(node, &held),
                }
                self.progress(commands)
            }
            // A survey never paces.
            Input::Paced(_) => Progress::Continue(Vec::new()),
        }
    }

    fn stalled(&mut self) -> Survey {
        self.outcome()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::testing::{Behaviour, TestNet, certified_block, key, run};
    use cairn_core::crypto::KeyPair;

    fn hashes(fragments: &crate::insert::OwnedFragments) -> Vec<FragmentHash> {
        fragments.iter().map(|(_, hash, _)| *hash).collect()
    }

    #[test]
    fn a_fully_stored_block_shows_every_fragment_live_on_its_designated_holder() {
        let net = TestNet::new(&[1 << 20; 10]);
        let owner = KeyPair::from_secret_bytes(&[9; 32]);
        let at = key(1);
        let (_, _, fragments) = certified_block(&net, &owner, b"f", at, (4, 2), 4096);
        let survey = run(&net, BlockSurvey::<String>::new(at, hashes(&fragments)));
        assert_eq!(survey.live, 6);
        let closest = net.closest(&at.0, 6);
        for (slot, designated) in survey.fragments.iter().zip(&closest) {
            assert_eq!(slot.holders, vec![designated.id], "index {}", slot.index);
            assert!(slot.pointers.is_empty());
        }
    }

    #[test]
    fn a_silent_holder_and_a_wrong_hash_do_not_count_as_live() {
        let mut net = TestNet::new(&[1 << 20; 10]);
        let owner = KeyPair::from_secret_bytes(&[9; 32]);
        let at = key(2);
        let (_, _, fragments) = certified_block(&net, &owner, b"f", at, (4, 2), 4096);
        let closest = net.closest(&at.0, 6);
        net.set(&closest[0].id, Behaviour::Silent);
        let mut certified = hashes(&fragments);
        // As if the manifest certified other bytes for index 1.
        certified[1] = FragmentHash(cairn_core::id::Id::hash(b"other"));
        let survey = run(&net, BlockSurvey::<String>::new(at, certified));
        assert_eq!(survey.live, 4);
        assert!(survey.fragments[0].holders.is_empty());
        assert!(survey.fragments[1].holders.is_empty());
        assert_eq!(survey.fragments[2].holders, vec![closest[2].id]);
    }

    #[test]
    fn a_diverted_copy_counts_through_its_pointer_and_the_pointer_is_shown() {
        // The designated holder of index 0 has room for a pointer, not a fragment:
        // it diverts.
        let at = key(3);
        let net = TestNet::with_one_small(10, 1 << 20, &at, 0, 2_000);
        let owner = KeyPair::from_secret_bytes(&[9; 32]);
        let (_, _, fragments) = certified_block(&net, &owner, b"f", at, (4, 2), 4096);
        let full = net.closest(&at.0, 1)[0].id;
        let survey = run(&net, BlockSurvey::<String>::new(at, hashes(&fragments)));
        assert_eq!(survey.live, 6);
        let slot = &survey.fragments[0];
        assert_eq!(slot.pointers, vec![full]);
        assert_eq!(slot.holders.len(), 1);
        assert_ne!(slot.holders[0], full, "the copy is on the diverted holder");
    }

    #[test]
    fn a_failed_locate_is_a_block_with_nothing_live() {
        let mut survey = BlockSurvey::<String>::new(key(4), vec![FragmentHash::default(); 6]);
        let _ = survey.start();
        let Progress::Done(found) = survey.handle(Input::Located(Err("no route".into()))) else {
            panic!("a failed locate decides")
        };
        assert_eq!(found.live, 0);
        assert_eq!(found.fragments.len(), 6);
    }
}
