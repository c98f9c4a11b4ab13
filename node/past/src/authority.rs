//! Who may ask a holder to change its store, decided in the holder's own view of the
//! ring: a stranger's word about who is responsible for a key is never taken.
//!
//! Owns: [`RingView`] (what the answering node knows of the ring: itself and its leaf
//! set), the admission rules of stores and pointers ([`RingView::admit_store`],
//! [`RingView::admit_diverted`], [`RingView::admit_pointer`]), the authority of
//! maintenance orders ([`check_order`], over the holder's own locate) and the
//! possession proof a node gives when it is named as keeping a copy
//! ([`possession_proof`]). Pure functions: [`crate::Holder::answer`] and
//! [`crate::maintenance::OrderCheck`] call them.
//!
//! May use: [`cairn_core::id`] and the crate's [`Refusal`].
//!
//! # The rules (`docs/SECURITY.md`, "Authority")
//! - **Stores.** A primary or repair store is taken only at a key this node is
//!   responsible for in its own view: fewer than `n + RESPONSIBLE_SPARES` known nodes
//!   are closer to the key than this node. A refusal is certain (knowing more nodes
//!   only adds closer ones); the spares absorb the nodes a coordinator already
//!   counts as dead that this node still lists.
//! - **Diverted stores** are taken only from a node among the `n` closest to the key
//!   in this node's view (only a responsible node diverts).
//! - **Backup pointers** are kept only for a node closer to the key than this one (the
//!   diverting node is responsible; the backup is the `(n+1)`-th closest), or for this
//!   node itself.
//! - **Orders** (handoff, release, pointer drop) are obeyed only from the key's
//!   coordinator, the node closest to it as this node locates it; a handoff's target
//!   and a release's keeper must be among the `n` closest there, and this node must
//!   not be (a responsible node gives up a copy only as a duplicate of an index that
//!   a closer or designated node keeps). The keeper of a release proves that it holds
//!   the very bytes with [`possession_proof`] over a fresh nonce: a claim is not
//!   enough, and the hash alone (which anyone may learn) proves nothing.
//! - **Reclaims** need no view: a reclaim carries what binds it to the file id's owner
//!   and verifies on its own ([`cairn_core::crypto::ReclaimCertificate`]).

use cairn_core::id::{Id, NodeId, PlacementKey};

use crate::Refusal;

/// Nodes beyond the `n` closest that a store is still taken from: a node may list
/// nodes that are already gone and that the coordinator no longer counts.
pub const RESPONSIBLE_SPARES: usize = 4;

/// What the answering node knows of the ring around it: itself and the live members
/// of its leaf set (the daemon's overlay view, the simulator's node, every node of a
/// test net).
#[derive(Clone, Copy, Debug)]
pub struct RingView<'a> {
    /// The answering node.
    pub me: NodeId,
    /// The nodes it knows near it (it may be among them; duplicates do not count twice).
    pub members: &'a [NodeId],
}

impl RingView<'_> {
    /// How many known nodes, this one included, are closer to `key` than `node`.
    pub fn closer_than(&self, key: &Id, node: &NodeId) -> usize {
        let mut closer: Vec<&NodeId> = self
            .members
            .iter()
            .chain([&self.me])
            .filter(|id| *id != node && key.cmp_closeness(&id.0, &node.0).is_lt())
            .collect();
        closer.sort_unstable();
        closer.dedup();
        closer.len()
    }

    /// A primary or repair store of a block of `n` fragments at `key`: taken only if
    /// this node may be among the `n` closest (with [`RESPONSIBLE_SPARES`]).
    pub fn admit_store(&self, key: &PlacementKey, n: u16) -> Result<(), Refusal> {
        let closer = self.closer_than(&key.0, &self.me);
        if closer < usize::from(n).saturating_add(RESPONSIBLE_SPARES) {
            Ok(())
        } else {
            Err(Refusal::NotAuthorised(format!(
                "this node is not responsible for {key}: it knows {closer} closer nodes \
                 (n = {n})"
            )))
        }
    }

    /// A diverted store of a block of `n` fragments at `key`, sent by `from`: taken
    /// only if `from` is among the `n` closest here (only a responsible node diverts).
    pub fn admit_diverted(&self, key: &PlacementKey, n: u16, from: &NodeId) -> Result<(), Refusal> {
        let closer = self.closer_than(&key.0, from);
        if closer < usize::from(n) {
            Ok(())
        } else {
            Err(Refusal::NotAuthorised(format!(
                "{from} is not among the {n} closest to {key} here: it cannot divert to \
                 this node"
            )))
        }
    }

    /// A backup pointer at `key` asked for by `from`: kept only if `from` is closer to
    /// the key than this node (the diverting node is responsible, the backup beyond),
    /// or is this node.
    pub fn admit_pointer(&self, key: &PlacementKey, from: &NodeId) -> Result<(), Refusal> {
        if *from == self.me || key.0.cmp_closeness(&from.0, &self.me.0).is_lt() {
            Ok(())
        } else {
            Err(Refusal::NotAuthorised(format!(
                "{from} is no closer to {key} than this node: it keeps no pointer for it"
            )))
        }
    }
}

/// What an order asks of the holder, for [`check_order`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderKind {
    /// Push `index` to `to`, then delete it here.
    Handoff {
        /// The fragment.
        index: u16,
        /// The target.
        to: NodeId,
        /// The block's fragment count, from the certificate the order carries.
        n: u16,
    },
    /// Delete the copy of `index` here: `kept_by` keeps it.
    Release {
        /// The fragment.
        index: u16,
        /// The keeper.
        kept_by: NodeId,
        /// The block's fragment count, from the certificate the order carries.
        n: u16,
    },
    /// Drop the pointer for an index whose holder no longer has it.
    DropPointer,
}

impl OrderKind {
    /// How many of the closest nodes the holder locates to judge the order.
    pub fn locate_count(&self) -> u16 {
        match self {
            OrderKind::Handoff { n, .. } | OrderKind::Release { n, .. } => (*n).max(1),
            OrderKind::DropPointer => 1,
        }
    }
}

/// Whether `from` may give `me` the order `kind` for a key, given `located`: the
/// nodes closest to the key as `me` locates them, closest first (see the module's
/// rules).
pub fn check_order(
    me: NodeId,
    from: NodeId,
    located: &[NodeId],
    kind: OrderKind,
) -> Result<(), Refusal> {
    let refuse = |why: String| Err(Refusal::NotAuthorised(why));
    match located.first() {
        Some(coordinator) if *coordinator == from => {}
        Some(coordinator) => {
            return refuse(format!(
                "{from} is not the key's coordinator here ({coordinator} is)"
            ));
        }
        None => return refuse("this node could not locate the key".into()),
    }
    let responsible = |n: u16| &located[..located.len().min(usize::from(n))];
    let position = |n: u16, id: &NodeId| responsible(n).iter().position(|r| r == id);
    match kind {
        OrderKind::DropPointer => Ok(()),
        OrderKind::Handoff { to, n, .. } => {
            if position(n, &to).is_none() {
                return refuse(format!("{to} is not among the {n} closest here"));
            }
            if position(n, &me).is_some() {
                return refuse("this node is still responsible for the key here".into());
            }
            Ok(())
        }
        OrderKind::Release { index, kept_by, n } => {
            let Some(keeper) = position(n, &kept_by) else {
                return refuse(format!("{kept_by} is not among the {n} closest here"));
            };
            match position(n, &me) {
                // A responsible node releases only a duplicate: to the node designated
                // for the index, or to one closer than itself.
                Some(mine) if keeper > mine && usize::from(index) != keeper => refuse(format!(
                    "this node is responsible, and {kept_by} is neither designated for \
                     index {index} nor closer"
                )),
                _ => Ok(()),
            }
        }
    }
}

/// A node's proof that it holds `bytes` as fragment `index` of `key`, bound to the
/// asker's fresh `nonce`: computable only with the bytes at hand.
pub fn possession_proof(nonce: &[u8; 32], key: &PlacementKey, index: u16, bytes: &[u8]) -> Id {
    Id::hash_parts(&[
        b"cairn/possession/v1",
        nonce,
        key.0.as_bytes(),
        &index.to_be_bytes(),
        bytes,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        let mut bytes = [0u8; 32];
        bytes[0] = n;
        NodeId(Id(bytes))
    }

    fn at(n: u8) -> PlacementKey {
        PlacementKey(id(n).0)
    }

    #[test]
    fn stores_are_taken_only_where_this_node_is_responsible() {
        // Nodes at 10, 20, ..., 100; this node is at 90.
        let members: Vec<NodeId> = (1..=10).map(|i| id(i * 10)).collect();
        let view = RingView {
            me: id(90),
            members: &members,
        };
        // Key 89: this node is the closest.
        assert!(view.admit_store(&at(89), 2).is_ok());
        // Key 12: the eight nodes 10 to 80 are closer; with n = 4 and 4 spares it is
        // refused, with n = 5 it is taken.
        assert!(matches!(
            view.admit_store(&at(12), 4),
            Err(Refusal::NotAuthorised(_))
        ));
        assert!(view.admit_store(&at(12), 5).is_ok());
        // Diverted: only from one of the n closest.
        assert!(view.admit_diverted(&at(12), 2, &id(20)).is_ok());
        assert!(view.admit_diverted(&at(12), 2, &id(30)).is_err());
        // A stranger the view does not list is ranked by its id all the same.
        assert!(view.admit_diverted(&at(12), 2, &id(13)).is_ok());
        // Pointers: only for a node closer than this one.
        assert!(view.admit_pointer(&at(84), &id(80)).is_ok());
        assert!(view.admit_pointer(&at(84), &id(100)).is_err());
        assert!(view.admit_pointer(&at(12), &id(90)).is_ok());
    }

    #[test]
    fn orders_are_obeyed_only_from_the_coordinator_and_within_the_n_closest() {
        let (me, coordinator, b, c, far) = (id(9), id(1), id(2), id(3), id(8));
        let located = [coordinator, b, c, far];
        let handoff = |to| OrderKind::Handoff { index: 0, to, n: 3 };
        let release = |index, kept_by| OrderKind::Release {
            index,
            kept_by,
            n: 3,
        };
        // Only the coordinator.
        assert!(check_order(me, b, &located, handoff(c)).is_err());
        assert!(check_order(me, b, &located, OrderKind::DropPointer).is_err());
        assert!(check_order(me, coordinator, &located, OrderKind::DropPointer).is_ok());
        assert!(check_order(me, coordinator, &[], OrderKind::DropPointer).is_err());
        // A handoff to one of the n closest, from a node that is not.
        assert!(check_order(me, coordinator, &located, handoff(c)).is_ok());
        assert!(check_order(me, coordinator, &located, handoff(far)).is_err());
        assert!(check_order(b, coordinator, &located, handoff(c)).is_err());
        // A release to one of the n closest.
        assert!(check_order(me, coordinator, &located, release(0, b)).is_ok());
        assert!(check_order(me, coordinator, &located, release(0, far)).is_err());
        // A responsible node releases a duplicate only to a closer or designated keeper.
        assert!(check_order(c, coordinator, &located, release(0, b)).is_ok());
        assert!(check_order(b, coordinator, &located, release(0, c)).is_err());
        assert!(check_order(b, coordinator, &located, release(2, c)).is_ok());
    }

    #[test]
    fn a_possession_proof_needs_the_bytes_and_the_nonce() {
        let proof = possession_proof(&[1; 32], &at(1), 3, b"fragment");
        assert_eq!(proof, possession_proof(&[1; 32], &at(1), 3, b"fragment"));
        assert_ne!(proof, possession_proof(&[2; 32], &at(1), 3, b"fragment"));
        assert_ne!(proof, possession_proof(&[1; 32], &at(1), 4, b"fragment"));
        assert_ne!(proof, possession_proof(&[1; 32], &at(1), 3, b"fragmenT"));
    }
}
