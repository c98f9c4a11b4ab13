//! The holder's side of maintenance: a coordinator's `Handoff`, `Release`,
//! `DropPointer` and `Forget` are orders that a holder obeys only once it has checked,
//! by asking another node itself, that obeying loses nothing.
//!
//! Owns: [`Order`] (an order with what the holder's store said about it, made by
//! [`crate::Holder::answer`]), [`OrderCheck`] (the [`Operation`] that asks and decides)
//! and [`Change`] (what the holder then does to its store, [`crate::Holder::apply`]).
//!
//! May use: the crate's wire types and checks, [`crate::records::RecordFind`], and
//! [`super::receipt_names`].
//!
//! # The checks (as `docs/repair.md` states them)
//! - **Handoff**: push the copy to `to` as a [`PastRequest::RepairStore`] (paced: it is
//!   repair traffic) and delete it here only on `to`'s receipt for exactly this
//!   fragment (signer, key, index, hash). A refusal is passed back as it is.
//! - **Release**: ask `kept_by` for its holdings; drop the copy only if it holds the
//!   same index with the same hash.
//! - **DropPointer**: ask the pointed holder for its holdings; drop the pointer unless
//!   it still holds that index (a holder that cannot be reached, or has no known
//!   address, no longer counts).
//! - **Forget**: find the file's certificate ([`RecordFind`]); refuse if one exists by
//!   another owner than the reclaim's signer, otherwise forget (the holder checks the
//!   reclaim's signature again, and its own copy of the certificate).
//!
//! The checks that need only the local store (a handoff or release to oneself, the
//! copy or pointer being gone already, a reclaim that does not verify) are made before
//! an [`Order`] exists, by [`crate::Holder::answer`].

use std::fmt;

use cairn_core::crypto::{FileCertificate, ReclaimCertificate};
use cairn_core::erasure::fragment_hash;
use cairn_core::id::{FileId, FragmentHash, NodeId, PlacementKey};

use super::receipt_names;
use crate::operation::{AskId, AskIds, Command, Input, Operation, Progress};
use crate::records::{FindError, Found, RecordFind};
use crate::{
    NodeAddress, PastRequest, PastResponse, Refusal, RepairAuthority, RepairRequest, UnixSeconds,
};

/// An order the holder checks with another node before it obeys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// Push fragment `index` of `key` (`bytes`, read here) to `to`.
    Handoff {
        /// The key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// Its bytes, as the store served them (checked against its hash on read).
        bytes: Vec<u8>,
        /// The responsible node that should hold it.
        to: NodeAddress,
        /// What authorises `to` to store it.
        authority: RepairAuthority,
    },
    /// Drop this copy (whose hash is `hash`) if `kept_by` holds the same.
    Release {
        /// The key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// The hash of the copy held here.
        hash: FragmentHash,
        /// The responsible node said to keep it.
        kept_by: NodeAddress,
    },
    /// Drop the pointer for `index` to `holder` if the holder no longer has it.
    DropPointer {
        /// The key.
        key: PlacementKey,
        /// The fragment.
        index: u16,
        /// The node the pointer names.
        holder: NodeId,
        /// Where it listens, if known (unknown: it is not asked, and does not count).
        address: Option<NodeAddress>,
    },
    /// A reclaim this node missed: forget `file` under `keys`.
    Forget {
        /// The owner's signed reclaim certificate (verified).
        reclaim: Vec<u8>,
        /// Its body.
        order: ReclaimCertificate,
        /// The keys to forget the file's references under.
        keys: Vec<PlacementKey>,
        /// How many nodes near the certificate key are asked.
        keepers: u16,
        /// The time certificates are checked at.
        now: UnixSeconds,
    },
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
    /// `kept_by` holds the same fragment: delete the copy here.
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
    /// No certificate by another owner exists: carry out the reclaim here.
    Forget {
        /// The file.
        file: FileId,
        /// The owner's signed reclaim certificate.
        reclaim: Vec<u8>,
        /// The keys.
        keys: Vec<PlacementKey>,
    },
}

#[derive(Debug)]
enum Stage<E> {
    Start(Order),
    /// A handoff waits for its pace, then for the receipt.
    Pacing {
        ask: AskId,
        order: Order,
    },
    /// Waiting for the answer to `ask`.
    Asked {
        ask: AskId,
        order: Order,
        hash: FragmentHash,
    },
    /// A forget waits for the certificate's keepers.
    Finding {
        find: RecordFind<FileCertificate, E>,
        order: Order,
    },
    Done,
}

/// Checks one [`Order`] by asking the node it concerns (see the module's checks). Its
/// output is the change to make, or the refusal to answer with.
#[derive(Debug)]
pub struct OrderCheck<E> {
    stage: Stage<E>,
    ids: AskIds,
}

impl<E: fmt::Display + fmt::Debug> OrderCheck<E> {
    /// Checks `order`.
    pub fn new(order: Order) -> OrderCheck<E> {
        OrderCheck {
            stage: Stage::Start(order),
            ids: AskIds::default(),
        }
    }

    fn ask(&mut self, order: Order, to: NodeAddress, request: PastRequest) -> Progress<Verdict> {
        let ask = self.ids.next_id();
        let hash = match &order {
            Order::Handoff { index, bytes, .. } => fragment_hash(*index, bytes),
            Order::Release { hash, .. } => *hash,
            _ => FragmentHash(cairn_core::id::Id::ZERO),
        };
        self.stage = Stage::Asked { ask, order, hash };
        Progress::Continue(vec![Command::Ask { ask, to, request }])
    }

    /// Keeps waiting for the keepers, or decides from what they said.
    fn finding(
        &mut self,
        find: RecordFind<FileCertificate, E>,
        order: Order,
        progress: Progress<Result<Found<FileCertificate>, FindError<E>>>,
    ) -> Progress<Verdict> {
        match progress {
            Progress::Continue(commands) => {
                self.stage = Stage::Finding { find, order };
                Progress::Continue(commands)
            }
            Progress::Done(found) => Progress::Done(forget_verdict(found, order)),
        }
    }
}

/// What an order check decides.
pub type Verdict = Result<Change, Refusal>;

fn stalled() -> Refusal {
    Refusal::Store("the check of a maintenance order stalled".into())
}

/// A forget is obeyed unless a certificate of the file by another owner exists; a
/// keeper set that cannot be reached refuses it (tried again on a later pass).
fn forget_verdict<E: fmt::Display>(
    found: Result<Found<FileCertificate>, FindError<E>>,
    order: Order,
) -> Verdict {
    let Order::Forget {
        reclaim,
        order: reclaimed,
        keys,
        ..
    } = order
    else {
        return Err(stalled());
    };
    let file = reclaimed.file_id;
    match found {
        Ok(found) => match found.record {
            Some(certificate) if certificate.body.owner != reclaimed.owner => {
                Err(Refusal::Certificate(format!(
                    "file {file} belongs to another owner than the reclaim's signer"
                )))
            }
            _ => Ok(Change::Forget {
                file,
                reclaim,
                keys,
            }),
        },
        Err(FindError::NoReplicas) => Ok(Change::Forget {
            file,
            reclaim,
            keys,
        }),
        Err(FindError::Unreached(failure)) => Err(Refusal::Store(failure.to_string())),
        Err(FindError::Stalled) => Err(Refusal::Store(
            "finding the file's certificate stalled".into(),
        )),
    }
}

impl<E: fmt::Display + fmt::Debug> Operation for OrderCheck<E> {
    type Output = Verdict;
    type Failure = E;

    fn start(&mut self) -> Progress<Verdict> {
        let Stage::Start(order) = std::mem::replace(&mut self.stage, Stage::Done) else {
            return Progress::Done(Err(stalled()));
        };
        match order {
            Order::Handoff { ref bytes, .. } => {
                let ask = self.ids.next_id();
                let bytes = bytes.len() as u64;
                self.stage = Stage::Pacing { ask, order };
                Progress::Continue(vec![Command::Pace { ask, bytes }])
            }
            Order::Release { key, kept_by, .. } => {
                self.ask(order, kept_by, PastRequest::Holdings { key })
            }
            Order::DropPointer {
                key,
                index,
                address: None,
                ..
            } => Progress::Done(Ok(Change::PointerDropped { key, index })),
            Order::DropPointer {
                key,
                address: Some(address),
                ..
            } => self.ask(order, address, PastRequest::Holdings { key }),
            Order::Forget {
                order: ref reclaimed,
                keepers,
                now,
                ..
            } => {
                let mut find = RecordFind::new(reclaimed.file_id, keepers, now);
                let progress = find.start();
                self.finding(find, order, progress)
            }
        }
    }

    fn handle(&mut self, input: Input<E>) -> Progress<Verdict> {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Pacing { ask, order } if matches!(input, Input::Paced(a) if a == ask) => {
                let Order::Handoff {
                    key,
                    index,
                    bytes,
                    to,
                    authority,
                } = order.clone()
                else {
                    return Progress::Done(Err(stalled()));
                };
                let hash = fragment_hash(index, &bytes);
                let request = PastRequest::RepairStore(RepairRequest {
                    authority,
                    key,
                    index,
                    hash,
                    bytes,
                });
                self.ask(order, to, request)
            }
            Stage::Asked { ask, order, hash } => {
                let answer = match input {
                    Input::Answered(answered, answer) if answered == ask => answer,
                    _ => {
                        self.stage = Stage::Asked { ask, order, hash };
                        return Progress::Continue(Vec::new());
                    }
                };
                Progress::Done(judge(order, hash, answer))
            }
            Stage::Finding { mut find, order } => {
                let progress = find.handle(input);
                self.finding(find, order, progress)
            }
            other => {
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

/// The check of a handoff, release or pointer drop, from the one answer it asked for.
fn judge<E: fmt::Debug>(
    order: Order,
    hash: FragmentHash,
    answer: Result<PastResponse, E>,
) -> Verdict {
    match order {
        Order::Handoff {
            key,
            index,
            bytes,
            to,
            ..
        } => match answer {
            Ok(PastResponse::Stored { receipt, .. })
                if receipt_names(&receipt, to.id, key, index, hash) =>
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
        Order::Release {
            key,
            index,
            kept_by,
            ..
        } => match answer {
            Ok(PastResponse::Holdings { fragments, .. }) if fragments.contains(&(index, hash)) => {
                Ok(Change::Released {
                    key,
                    index,
                    kept_by: kept_by.id,
                })
            }
            other => Err(Refusal::Store(format!(
                "{} does not hold the fragment: {other:?}",
                kept_by.id
            ))),
        },
        Order::DropPointer {
            key, index, holder, ..
        } => match answer {
            Ok(PastResponse::Holdings { fragments, .. })
                if fragments.iter().any(|(i, _)| *i == index) =>
            {
                Err(Refusal::Store(format!("{holder} still holds the fragment")))
            }
            _ => Ok(Change::PointerDropped { key, index }),
        },
        Order::Forget { .. } => Err(stalled()),
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

    #[test]
    fn a_holder_obeys_an_order_only_once_the_node_it_concerns_confirms() {
        let mut net = TestNet::new(&[64 * MIB; 10]);
        let owner = KeyPair::from_secret_bytes(&[60; 32]);
        let (file, certificate, _) = certified_block(&net, &owner, b"o", key(1), (4, 2), 8000);
        let closest = net.closest(&key(1).0, 10);
        let (a, b, outsider) = (closest[0], closest[1], closest[8]);

        // Release: `b` holds index 1, not `a`'s index 0.
        let release = PastRequest::Release {
            key: key(1),
            index: 0,
            kept_by: b,
        };
        assert!(
            matches!(refused(net.ask(&a, release)), Refusal::Store(r) if r.contains("does not hold"))
        );
        assert_eq!(net.held(&a.id, &key(1)).len(), 1);

        // DropPointer: the pointed holder still has the index.
        net.node(&outsider.id)
            .holder
            .store()
            .put_pointer(&key(1), 0, &a.id)
            .unwrap();
        let drop = PastRequest::DropPointer {
            key: key(1),
            index: 0,
        };
        assert!(
            matches!(refused(net.ask(&outsider, drop.clone())), Refusal::Store(r) if r.contains("still holds"))
        );
        net.set(&a.id, Behaviour::Down);
        assert_eq!(net.ask(&outsider, drop), Ok(PastResponse::Done));
        net.set(&a.id, Behaviour::Honest);

        // Handoff: never to oneself; to a forger (its receipt names index 0), the copy
        // stays.
        let authority = RepairAuthority {
            certificate: certificate.clone(),
            references: vec![file],
        };
        let handoff = |to: NodeAddress| PastRequest::Handoff {
            key: key(1),
            index: 1,
            to,
            authority: authority.clone(),
        };
        assert!(matches!(
            refused(net.ask(&b, handoff(b))),
            Refusal::Store(_)
        ));
        net.set(&outsider.id, Behaviour::ForgesReceipts);
        assert!(
            matches!(refused(net.ask(&b, handoff(outsider))), Refusal::Store(r) if r.contains("did not confirm"))
        );
        assert_eq!(net.held(&b.id, &key(1)).len(), 1);
        net.set(&outsider.id, Behaviour::Honest);
        assert_eq!(net.ask(&b, handoff(outsider)), Ok(PastResponse::Done));
        assert_eq!(
            (
                net.held(&b.id, &key(1)).len(),
                net.held(&outsider.id, &key(1)).len()
            ),
            (0, 1)
        );

        // Forget: a reclaim signed by someone else than the certificate's owner.
        let thief = KeyPair::from_secret_bytes(&[61; 32]);
        let forged = crate::testing::reclaim(&thief, file);
        let forget = PastRequest::Forget {
            reclaim: forged,
            keys: vec![key(1)],
        };
        let c = closest[2];
        assert!(matches!(
            refused(net.ask(&c, forget)),
            Refusal::Certificate(_)
        ));
        assert_eq!(net.held(&c.id, &key(1)).len(), 1);
    }
}
