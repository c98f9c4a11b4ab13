//! The holder's side of maintenance: a coordinator's `Handoff`, `Release` and
//! `DropPointer` are orders that a holder obeys only once it has checked, in its own
//! view, that the order comes from the key's coordinator and loses nothing.
//!
//! Owns: [`Order`] (an order with what the holder's store said about it, made by
//! [`crate::Holder::answer`]), [`OrderCheck`] (the [`Operation`] that locates, asks and
//! decides) and [`Change`] (what the holder then does to its store,
//! [`crate::Holder::apply`]).
//!
//! May use: the crate's wire types and checks, [`crate::authority`] and
//! [`super::receipt_names`].
//!
//! # The checks (as `docs/repair.md` and `docs/SECURITY.md` state them)
//! First, for every order, the holder locates the key itself and checks the order's
//! authority there ([`check_order`]): the sender is the key's coordinator, a target is
//! among the `n` closest, and the holder is not (see [`crate::authority`]). Then:
//! - **Handoff**: push the copy to `to` as a [`PastRequest::RepairStore`] (paced: it is
//!   repair traffic) and delete it here only on `to`'s receipt for exactly this
//!   fragment (signer, key, index, hash). A refusal is passed back as it is.
//! - **Release**: ask `kept_by` to prove, over a fresh nonce, that it holds the very
//!   bytes held here ([`possession_proof`]); drop the copy only on that proof.
//! - **DropPointer**: ask the pointed holder for its holdings; drop the pointer unless
//!   it still holds that index (a holder that cannot be reached, or has no known
//!   address, no longer counts).
//!
//! The checks that need only the local store (a handoff or release to oneself, the
//! copy or pointer being gone already) are made before an [`Order`] exists, by
//! [`crate::Holder::answer`]. A `Forget` is no order: the reclaim it carries verifies
//! on its own, and the holder carries it out at once.

use std::fmt;

use cairn_core::erasure::fragment_hash;
use cairn_core::id::{NodeId, PlacementKey};

use super::receipt_names;
use crate::authority::{OrderKind, check_order, possession_proof};
use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::{NodeAddress, PastRequest, PastResponse, Refusal, RepairAuthority, RepairRequest};

/// An order the holder checks in its own view, and with the node it concerns, before
/// it obeys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// The node that gave it (as the transport proved).
    pub from: NodeId,
    /// The holder it was given to.
    pub holder: NodeId,
    /// The key.
    pub key: PlacementKey,
    /// The fragment.
    pub index: u16,
    /// What it asks.
    pub action: Action,
}

/// What an [`Order`] asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Push the fragment (`bytes`, read here) to `to`.
    Handoff {
        /// Its bytes, as the store served them (checked against its hash on read).
        bytes: Vec<u8>,
        /// The responsible node that should hold it.
        to: NodeAddress,
        /// What authorises `to` to store it.
        authority: RepairAuthority,
        /// The block's fragment count, from the authority's certificate.
        n: u16,
    },
    /// Drop this copy (`bytes`, read here) if `kept_by` proves it holds the same.
    Release {
        /// The bytes held here.
        bytes: Vec<u8>,
        /// The responsible node said to keep it.
        kept_by: NodeAddress,
        /// The block's fragment count, from the order's certificate.
        n: u16,
    },
    /// Drop the pointer for the fragment to `pointed` if it no longer has it.
    DropPointer {
        /// The node the pointer names.
        pointed: NodeId,
        /// Where it listens, if known (unknown: it is not asked, and does not count).
        address: Option<NodeAddress>,
    },
}

impl Order {
    fn kind(&self) -> OrderKind {
        match &self.action {
            Action::Handoff { to, n, .. } => OrderKind::Handoff {
                index: self.index,
                to: to.id,
                n: *n,
            },
            Action::Release { kept_by, n, .. } => OrderKind::Release {
                index: self.index,
                kept_by: kept_by.id,
                n: *n,
            },
            Action::DropPointer { .. } => OrderKind::DropPointer,
        }
    }
}

/// What a holder does to its store once an order checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `to` signed a receipt for the fragment: delete the copy here.
    HandedOff {
        /// The key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// The node that now holds it.
        to: NodeId,
        /// Bytes pushed (repair traffic).
        bytes: u64,
    },
    /// `kept_by` proved it holds the same fragment: delete the copy here.
    Released {
        /// The key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// The node that keeps it.
        kept_by: NodeId,
    },
    /// The pointed holder no longer has the fragment: delete the pointer.
    PointerDropped {
        /// The key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
    },
}

#[derive(Debug)]
enum Stage {
    Start(Order),
    /// The holder's own locate of the key.
    Locating(Order),
    /// A handoff waits for its pace, then for the receipt.
    Pacing {
        ask: AskId,
        order: Order,
    },
    /// Waiting for the answer to `ask`.
    Asked {
        ask: AskId,
        order: Order,
    },
    Done,
}

/// Checks one [`Order`]: its authority in the holder's own view, then with the node it
/// concerns (see the module's checks). Its output is the change to make, or the
/// refusal to answer with.
#[derive(Debug)]
pub struct OrderCheck<E> {
    stage: Stage,
    ids: AskIds,
    /// The fresh random nonce a release's keeper proves possession over (the driver
    /// draws it: the machine has no randomness of its own).
    nonce: [u8; 32],
    failure: std::marker::PhantomData<E>,
}

impl<E: fmt::Display + fmt::Debug> OrderCheck<E> {
    /// Checks `order`; `nonce` must be fresh and unguessable (a release's proof is
    /// made over it).
    pub fn new(order: Order, nonce: [u8; 32]) -> OrderCheck<E> {
        OrderCheck {
            stage: Stage::Start(order),
            ids: AskIds::default(),
            nonce,
            failure: std::marker::PhantomData,
        }
    }

    fn ask(&mut self, order: Order, to: NodeAddress, request: PastRequest) -> Progress<Verdict> {
        let ask = self.ids.next_id();
        self.stage = Stage::Asked { ask, order };
        Progress::Continue(vec![Command::Ask { ask, to, request }])
    }

    /// The order's authority held in the holder's view: ask what it needs asked.
    fn authorised(&mut self, order: Order) -> Progress<Verdict> {
        let (key, index) = (order.key, order.index);
        match &order.action {
            Action::Handoff { bytes, .. } => {
                let ask = self.ids.next_id();
                let bytes = bytes.len() as u64;
                self.stage = Stage::Pacing { ask, order };
                Progress::Continue(vec![Command::Pace { ask, bytes }])
            }
            Action::Release { kept_by, .. } => {
                let (to, nonce) = (*kept_by, self.nonce);
                self.ask(order, to, PastRequest::Prove { key, index, nonce })
            }
            Action::DropPointer { address: None, .. } => {
                Progress::Done(Ok(Change::PointerDropped { key, index }))
            }
            Action::DropPointer {
                address: Some(address),
                ..
            } => {
                let to = *address;
                self.ask(order, to, PastRequest::Holdings { key })
            }
        }
    }
}

/// What an order check decides.
pub type Verdict = Result<Change, Refusal>;

fn stalled() -> Refusal {
    Refusal::Store("the check of a maintenance order stalled".into())
}

impl<E: fmt::Display + fmt::Debug> Operation for OrderCheck<E> {
    type Output = Verdict;
    type Failure = E;

    fn start(&mut self) -> Progress<Verdict> {
        let Stage::Start(order) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Progress::Done(Err(stalled()));
        };
        let (key, count) = (order.key, order.kind().locate_count());
        self.stage = Stage::Locating(order);
        Progress::Continue(vec![Command::Locate { key, count }])
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Verdict> {
        match (std::mem::replace(&mut self.stage, Stage::Done), input) {
            (Stage::Locating(order), Input::Located(located)) => {
                let located: Vec<NodeId> = match located {
                    Ok(nodes) => nodes.iter().map(|n| n.id).collect(),
                    Err(e) => {
                        return Progress::Done(Err(Refusal::Store(format!(
                            "this node could not locate {}: {e}",
                            order.key
                        ))));
                    }
                };
                match check_order(order.holder, order.from, &located, order.kind()) {
                    Ok(()) => self.authorised(order),
                    Err(refusal) => Progress::Done(Err(refusal)),
                }
            }
            (Stage::Pacing { ask, order }, Input::Paced(paced)) if paced == ask => {
                let Action::Handoff {
                    bytes,
                    to,
                    authority,
                    ..
                } = &order.action
                else {
                    return Progress::Done(Err(stalled()));
                };
                let (key, index, to) = (order.key, order.index, *to);
                let request = PastRequest::RepairStore(RepairRequest {
                    authority: authority.clone(),
                    key,
                    index,
                    hash: fragment_hash(index, bytes),
                    bytes: bytes.clone(),
                });
                self.ask(order, to, request)
            }
            (Stage::Asked { ask, order }, Input::Answered(answered, answer)) if answered == ask => {
                Progress::Done(judge(order, &self.nonce, answer))
            }
            (other, _) => {
                // An answer to nothing outstanding: keep waiting.
                self.stage = other;
                Progress::Continue(Vec::new())
            }
        }
    }

    fn stalled(&mut self) -> Verdict {
        Err(stalled())
    }
}

/// The check of an authorised order, from the one answer it asked for.
fn judge<E: fmt::Debug>(
    order: Order,
    nonce: &[u8; 32],
    answer: Result<PastResponse, E>,
) -> Verdict {
    let (key, index) = (order.key, order.index);
    match order.action {
        Action::Handoff { bytes, to, .. } => match answer {
            Ok(PastResponse::Stored { receipt, .. })
                if receipt_names(&receipt, to.id, key, index, fragment_hash(index, &bytes)) =>
            {
                Ok(Change::HandedOff {
                    key,
                    index,
                    to: to.id,
                    bytes: bytes.len() as u64,
                })
            }
            Ok(PastResponse::Refused(refusal)) => Err(refusal),
            other => Err(Refusal::Store(format!(
                "the handoff target did not confirm: {other:?}"
            ))),
        },
        Action::Release { bytes, kept_by, .. } => match answer {
            Ok(PastResponse::Possession { proof })
                if proof == possession_proof(nonce, &key, index, &bytes) =>
            {
                Ok(Change::Released {
                    key,
                    index,
                    kept_by: kept_by.id,
                })
            }
            other => Err(Refusal::Store(format!(
                "{} did not prove it holds the fragment: {other:?}",
                kept_by.id
            ))),
        },
        Action::DropPointer { pointed, .. } => match answer {
            Ok(PastResponse::Holdings { fragments, .. })
                if fragments.iter().any(|(i, _)| *i == index) =>
            {
                Err(Refusal::Store(format!(
                    "{pointed} still holds the fragment"
                )))
            }
            _ => Ok(Change::PointerDropped { key, index }),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::crypto::KeyPair;
    use cairn_store::NodeStore;

    use super::*;
    use crate::testing::{Behaviour, TestNet, certified_block, key};

    const MIB: u64 = 1 << 20;

    fn refused(answer: Result<PastResponse, String>) -> Refusal {
        match answer {
            Ok(PastResponse::Refused(refusal)) => refusal,
            other => panic!("obeyed: {other:?}"),
        }
    }

    fn not_authorised(answer: Result<PastResponse, String>) -> bool {
        matches!(refused(answer), Refusal::NotAuthorised(_))
    }

    #[test]
    fn a_holder_obeys_only_the_coordinator_and_only_once_the_node_concerned_proves_it() {
        let mut net = TestNet::new(&[64 * MIB; 10]);
        let owner = KeyPair::from_secret_bytes(&[60; 32]);
        let (file, certificate, fragments) =
            certified_block(&net, &owner, b"o", key(1), (4, 2), 8000);
        let closest = net.closest(&key(1).0, 10);
        let (coordinator, a, b, outsider, stranger) =
            (closest[0], closest[1], closest[2], closest[7], closest[8]);
        let authority = RepairAuthority {
            certificate: certificate.clone(),
            references: vec![file],
        };
        // The outsider holds a stale copy of index 1 (which `a` holds too), as a node
        // that was responsible before a join would.
        let store = net.node(&outsider.id).holder.store();
        let (index, hash, bytes) = fragments[1].clone();
        store.put_fragment(&key(1), index, &hash, &bytes).unwrap();
        store.add_reference(&key(1), &file).unwrap();
        let release = |kept_by: NodeAddress| PastRequest::Release {
            key: key(1),
            index: 1,
            kept_by,
            authority: authority.clone(),
        };

        // Release: a stranger is not the coordinator; a keeper outside the n closest
        // is not enough; a keeper that holds another index cannot prove possession.
        assert!(not_authorised(net.ask_from(
            stranger.id,
            &outsider,
            release(a)
        )));
        assert!(not_authorised(net.ask_from(
            coordinator.id,
            &outsider,
            release(stranger)
        )));
        assert!(
            matches!(refused(net.ask_from(coordinator.id, &outsider, release(b))), Refusal::Store(r) if r.contains("did not prove"))
        );
        // A responsible node does not give its copy up to a farther, undesignated one.
        assert!(not_authorised(net.ask_from(coordinator.id, &a, release(b))));
        assert_eq!(net.held(&outsider.id, &key(1)).len(), 1);
        assert_eq!(net.held(&a.id, &key(1)).len(), 1);
        // The coordinator's release to the node that proves it holds the same: obeyed.
        assert_eq!(
            net.ask_from(coordinator.id, &outsider, release(a)),
            Ok(PastResponse::Done)
        );
        assert!(net.held(&outsider.id, &key(1)).is_empty());

        // DropPointer: only the coordinator; refused while the pointed holder has it.
        net.node(&stranger.id)
            .holder
            .store()
            .put_pointer(&key(1), 0, &a.id)
            .unwrap();
        let drop = PastRequest::DropPointer {
            key: key(1),
            index: 1,
        };
        net.node(&stranger.id)
            .holder
            .store()
            .put_pointer(&key(1), 1, &a.id)
            .unwrap();
        assert!(not_authorised(net.ask_from(b.id, &stranger, drop.clone())));
        assert!(
            matches!(refused(net.ask_from(coordinator.id, &stranger, drop.clone())), Refusal::Store(r) if r.contains("still holds"))
        );
        net.set(&a.id, Behaviour::Down);
        assert_eq!(
            net.ask_from(coordinator.id, &stranger, drop),
            Ok(PastResponse::Done)
        );
        net.set(&a.id, Behaviour::Honest);

        // Handoff: only the coordinator, only to one of the n closest, only from a node
        // that is not; a forged receipt keeps the copy.
        let store = net.node(&outsider.id).holder.store();
        store.put_fragment(&key(1), index, &hash, &bytes).unwrap();
        let b_index = net.held(&b.id, &key(1))[0].0;
        net.node(&b.id)
            .holder
            .store()
            .delete_fragment(&key(1), b_index)
            .unwrap();
        let handoff = |to: NodeAddress| PastRequest::Handoff {
            key: key(1),
            index: 1,
            to,
            authority: authority.clone(),
        };
        assert!(not_authorised(net.ask_from(
            stranger.id,
            &outsider,
            handoff(b)
        )));
        assert!(not_authorised(net.ask_from(
            coordinator.id,
            &outsider,
            handoff(stranger)
        )));
        assert!(not_authorised(net.ask_from(coordinator.id, &a, handoff(b))));
        net.set(&b.id, Behaviour::ForgesReceipts);
        assert!(
            matches!(refused(net.ask_from(coordinator.id, &outsider, handoff(b))), Refusal::Store(r) if r.contains("did not confirm"))
        );
        assert_eq!(net.held(&outsider.id, &key(1)).len(), 1);
        net.set(&b.id, Behaviour::Honest);
        assert_eq!(
            net.ask_from(coordinator.id, &outsider, handoff(b)),
            Ok(PastResponse::Done)
        );
        assert_eq!(
            (
                net.held(&outsider.id, &key(1)).len(),
                net.held(&b.id, &key(1)).len()
            ),
            (0, 1)
        );

        // Forget: a reclaim signed by someone else than the owner, whoever relays it.
        let thief = KeyPair::from_secret_bytes(&[61; 32]);
        let forget = PastRequest::Forget {
            reclaim: crate::testing::reclaim(&thief, &certificate),
            keys: vec![key(1)],
        };
        assert!(matches!(
            refused(net.ask_from(coordinator.id, &b, forget)),
            Refusal::Certificate(_)
        ));
        assert_eq!(net.held(&b.id, &key(1)).len(), 1);
    }
}
