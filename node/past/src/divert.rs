//! Replica diversion (PAST §3.3, per fragment): a holder with too little room for a
//! primary replica hands the fragment to a node outside the `n` closest that has
//! room, keeps a pointer to it, and has the `(n+1)`-th closest keep a backup pointer,
//! so that a lookup reaching either finds the fragment.
//!
//! Owns: [`ReplicaDiversion`] (the [`Operation`] the diverting holder runs) and
//! [`Diverted`].
//!
//! May use: this crate's wire types.
//!
//! # The rules
//! - Candidates are the nodes beyond the `n` closest to the key, in order of
//!   closeness, as the diverting node sees them; each is asked in turn with
//!   [`PastRequest::StoreDiverted`], which it accepts only under the stricter
//!   `t_div`. The first receipt wins.
//! - The backup pointer is asked for once the fragment is placed; its failure is
//!   logged, not fatal (the diverting node's own pointer still finds the fragment).
//! - If no candidate takes it, the store is refused with [`Refusal::Full`] and the
//!   client's insert tries the block under another salt (file diversion).

use std::fmt;

use cairn_core::id::{Id, NodeId};

use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{NodeAddress, PastRequest, PastResponse, Refusal, StoreRequest, closest};

/// Where `me` diverts a fragment of a block with `n` fragments at `key`, among the
/// nodes it knows: the candidates beyond the `n` closest, closest first, and the
/// `(n+1)`-th closest, which keeps the backup pointer (never `me`).
pub fn diversion_targets(
    key: &Id,
    n: usize,
    me: NodeId,
    known: impl IntoIterator<Item = NodeId>,
) -> (Vec<NodeId>, Option<NodeId>) {
    let ranked = closest(key, known.into_iter().chain([me]), usize::MAX);
    let backup = ranked.get(n).copied().filter(|id| *id != me);
    let candidates = ranked.into_iter().skip(n).filter(|id| *id != me).collect();
    (candidates, backup)
}

/// A fragment placed on another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diverted {
    /// The receipt of the node that took it.
    pub receipt: Vec<u8>,
    /// That node: the diverting holder keeps a pointer to it.
    pub to: NodeAddress,
}

#[derive(Debug)]
enum Stage {
    /// Waiting for candidate `position`'s answer to `ask`.
    Storing { ask: AskId, position: usize },
    /// Placed; waiting for the backup pointer's answer.
    Pointing { ask: AskId, diverted: Diverted },
    /// Decided.
    Done,
}

/// Diverts one fragment (see the module's rules).
#[derive(Debug)]
pub struct ReplicaDiversion<E> {
    request: StoreRequest,
    size: u64,
    free: u64,
    candidates: Vec<NodeAddress>,
    backup: Option<NodeAddress>,
    ids: AskIds,
    stage: Stage,
    _failure: std::marker::PhantomData<fn(E)>,
}

impl<E: fmt::Display> ReplicaDiversion<E> {
    /// Diverts `request` (`size` bytes, `free` free here) to the first of
    /// `candidates` that takes it; `backup` (the `(n+1)`-th closest) keeps a pointer.
    pub fn new(
        request: StoreRequest,
        size: u64,
        free: u64,
        candidates: Vec<NodeAddress>,
        backup: Option<NodeAddress>,
    ) -> ReplicaDiversion<E> {
        ReplicaDiversion {
            request,
            size,
            free,
            candidates,
            backup,
            ids: AskIds::default(),
            stage: Stage::Done,
            _failure: std::marker::PhantomData,
        }
    }

    /// Diverts `request` from `me` to the nodes it knows ([`diversion_targets`]);
    /// `address_of` says where each listens (a node without a known address is passed
    /// over). What the daemon, the simulator and the test net all do.
    pub fn from_view(
        request: StoreRequest,
        size: u64,
        free: u64,
        me: NodeId,
        known: impl IntoIterator<Item = NodeId>,
        address_of: impl Fn(&NodeId) -> Option<NodeAddress>,
    ) -> ReplicaDiversion<E> {
        let (candidates, backup) =
            diversion_targets(&request.key.0, usize::from(request.replicas), me, known);
        let candidates = candidates.iter().filter_map(&address_of).collect();
        let backup = backup.and_then(|id| address_of(&id));
        ReplicaDiversion::new(request, size, free, candidates, backup)
    }

    fn full(&mut self) -> Progress<Result<Diverted, Refusal>> {
        self.stage = Stage::Done;
        Progress::Done(Err(Refusal::Full {
            size: self.size,
            free: self.free,
        }))
    }

    fn try_candidate(&mut self, position: usize) -> Progress<Result<Diverted, Refusal>> {
        let Some(to) = self.candidates.get(position).copied() else {
            return self.full();
        };
        let ask = self.ids.next_id();
        self.stage = Stage::Storing { ask, position };
        Progress::Continue(vec![Command::Ask {
            ask,
            to,
            request: PastRequest::StoreDiverted(self.request.clone()),
        }])
    }
}

impl<E: fmt::Display> Operation for ReplicaDiversion<E> {
    type Output = Result<Diverted, Refusal>;
    type Failure = E;

    fn start(&mut self) -> Progress<Self::Output> {
        self.try_candidate(0)
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Self::Output> {
        let Input::Answered(answered, answer) = input else {
            return Progress::Continue(Vec::new());
        };
        let (key, index) = (self.request.key, self.request.index);
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Storing { ask, position } if ask == answered => {
                let Some(to) = self.candidates.get(position).copied() else {
                    return self.full();
                };
                match answer {
                    Ok(PastResponse::Stored { receipt, .. }) => {
                        let diverted = Diverted { receipt, to };
                        match self.backup.filter(|b| b.id != to.id) {
                            Some(backup) => {
                                let ask = self.ids.next_id();
                                self.stage = Stage::Pointing { ask, diverted };
                                Progress::Continue(vec![Command::Ask {
                                    ask,
                                    to: backup,
                                    request: PastRequest::PutPointer {
                                        key,
                                        index,
                                        holder: to,
                                    },
                                }])
                            }
                            None => Progress::Done(Ok(diverted)),
                        }
                    }
                    Ok(other) => {
                        tracing::debug!(%key, index, to = %to.id, "diversion refused: {other:?}");
                        self.try_candidate(position + 1)
                    }
                    Err(e) => {
                        tracing::debug!(%key, index, to = %to.id, "diversion failed: {e}");
                        self.try_candidate(position + 1)
                    }
                }
            }
            Stage::Pointing { ask, diverted } if ask == answered => {
                match answer {
                    Ok(PastResponse::Done) => {}
                    Ok(other) => {
                        tracing::warn!(%key, index, "backup pointer not kept: {other:?}")
                    }
                    Err(e) => tracing::warn!(%key, index, "backup pointer not kept: {e}"),
                }
                Progress::Done(Ok(diverted))
            }
            stage => {
                self.stage = stage;
                Progress::Continue(Vec::new())
            }
        }
    }

    fn stalled(&mut self) -> Self::Output {
        Err(Refusal::Full {
            size: self.size,
            free: self.free,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::closest_in_leaf_set;

    fn ids(n: u8) -> Vec<NodeId> {
        (0..n).map(|i| NodeId(Id::hash(&[b'd', i]))).collect()
    }

    #[test]
    fn diversion_goes_beyond_the_n_closest_and_never_to_the_diverting_node() {
        let key = Id::hash(b"key");
        let nodes = ids(10);
        let ranked = closest(&key, nodes.iter().copied(), usize::MAX);
        // The diverting node is among the n = 4 closest.
        let me = ranked[2];
        let known = nodes.iter().copied().filter(|id| *id != me);
        let (candidates, backup) = diversion_targets(&key, 4, me, known);
        assert_eq!(candidates, ranked[4..].to_vec());
        assert_eq!(backup, Some(ranked[4]));
        // Pushed out beyond the n closest itself, it never picks itself.
        let me = ranked[5];
        let (candidates, backup) = diversion_targets(&key, 4, me, nodes.iter().copied());
        assert!(!candidates.contains(&me));
        assert_eq!(backup, Some(ranked[4]));
    }

    #[test]
    fn a_leaf_set_answers_a_locate_only_when_it_surely_holds_the_closest() {
        let nodes = ids(40);
        let me = nodes[0];
        // A ring smaller than the leaf set: always sure.
        let small: Vec<NodeId> = nodes[1..5].to_vec();
        let key = Id::hash(b"anywhere");
        let found = closest_in_leaf_set(&key, me, &small[..2], &small[2..], 8, 3).unwrap();
        assert_eq!(found, closest(&key, nodes[..5].iter().copied(), 3));
        // A full leaf set: a key right at `me` is answered, one whose closest nodes
        // reach the edge is routed.
        let around = closest(&me.0, nodes[1..].iter().copied(), 16);
        let (left, right): (Vec<NodeId>, Vec<NodeId>) =
            (around[..8].to_vec(), around[8..].to_vec());
        assert!(closest_in_leaf_set(&me.0, me, &left, &right, 8, 3).is_some());
        assert!(closest_in_leaf_set(&me.0, me, &left, &right, 8, 17).is_none());
    }
}
