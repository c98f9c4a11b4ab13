//! The locates this node has routed and waits to hear back about: [`PendingLocates`],
//! keyed by the overlay's unguessable tags, and what the overlay task does with a
//! `Wire::Located` answer ([`PendingLocates::answer`]).
//!
//! Owns: the table of pending locates and the sorting of answers into accepted,
//! suspicious (handed to [`crate::Node::locate`], which routes again through another
//! first hop), rejected (dropped; the locate goes on waiting, as for a lost answer) and
//! unmatched (no pending locate has that tag: late, duplicate or sprayed).
//!
//! May use: the overlay's decision ([`Overlay::check_located`]); it decides nothing
//! itself. Only the overlay task touches it.

use std::collections::HashMap;

use tokio::sync::oneshot;

use cairn_core::id::{Id, NodeId};
use cairn_overlay::{LocatedVerdict, Overlay};
use cairn_past::NodeAddress;

/// What a locate's waiter is told.
#[derive(Debug)]
pub(crate) enum LocateAnswer {
    /// An answer that passed every check (or the node's own, when the route ended here).
    Accepted(Vec<NodeAddress>),
    /// A well-formed answer that failed the density test: route again elsewhere.
    Suspicious(Vec<NodeAddress>),
}

/// What became of one answer (the overlay task counts it).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Judged {
    Accepted,
    Suspicious(cairn_overlay::Suspicion),
    Rejected(cairn_overlay::Rejection),
    Unmatched,
}

struct Pending {
    key: Id,
    count: u16,
    reply: oneshot::Sender<LocateAnswer>,
}

/// The locates routed by this node, by tag.
#[derive(Default)]
pub(crate) struct PendingLocates {
    by_tag: HashMap<u64, Pending>,
}

impl PendingLocates {
    /// Waits for the answer to the locate of the `count` nodes closest to `key`, routed
    /// under `tag`. Locates whose waiter gave up are dropped here, which bounds the table
    /// by the locates waited for.
    pub(crate) fn insert(
        &mut self,
        tag: u64,
        key: Id,
        count: u16,
        reply: oneshot::Sender<LocateAnswer>,
    ) {
        self.by_tag.retain(|_, pending| !pending.reply.is_closed());
        self.by_tag.insert(tag, Pending { key, count, reply });
    }

    /// The route under `tag` ended at this node: its own answer needs no check.
    pub(crate) fn answer_here(&mut self, tag: u64, nodes: Vec<NodeAddress>) {
        if let Some(pending) = self.by_tag.remove(&tag) {
            let _ = pending.reply.send(LocateAnswer::Accepted(nodes));
        }
    }

    /// The route under `tag` failed.
    pub(crate) fn forget(&mut self, tag: u64) {
        self.by_tag.remove(&tag);
    }

    /// `from` (as the transport proved it) answered the locate under `tag` with
    /// `nodes`: checked by the overlay, then handed to the waiter or dropped.
    pub(crate) fn answer(
        &mut self,
        overlay: &Overlay,
        from: NodeId,
        tag: u64,
        nodes: Vec<NodeAddress>,
    ) -> Judged {
        let Some(pending) = self.by_tag.get(&tag) else {
            return Judged::Unmatched;
        };
        let ids: Vec<NodeId> = nodes.iter().map(|a| a.id).collect();
        let verdict = overlay.check_located(&pending.key, usize::from(pending.count), from, &ids);
        let (answer, judged) = match verdict {
            LocatedVerdict::Reject(why) => return Judged::Rejected(why),
            LocatedVerdict::Accept => (LocateAnswer::Accepted(nodes), Judged::Accepted),
            LocatedVerdict::Suspicious(why) => {
                (LocateAnswer::Suspicious(nodes), Judged::Suspicious(why))
            }
        };
        if let Some(pending) = self.by_tag.remove(&tag) {
            let _ = pending.reply.send(answer);
        }
        judged
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use cairn_overlay::{Config, Event, Rejection, Time};
    use std::net::SocketAddr;

    fn address(id: NodeId) -> NodeAddress {
        NodeAddress {
            id,
            addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
        }
    }

    #[test]
    fn a_sprayed_answer_is_dropped_and_the_locate_still_takes_the_true_one() {
        let me = NodeId(Id::hash(b"me"));
        let mut overlay = Overlay::new(Config::default(), me, [5; 32]).unwrap();
        overlay.handle(Time::ZERO, Event::Join { bootstrap: None });
        let key = Id::hash(b"key");
        let closest = NodeId(Id::hash(b"closest"));
        let stranger = NodeId(Id::hash(b"stranger"));
        let mut locates = PendingLocates::default();
        let (reply, mut answer) = oneshot::channel();
        let tag = overlay.fresh_tag();
        locates.insert(tag, key, 4, reply);

        // A guessed tag matches nothing.
        let judged = locates.answer(&overlay, stranger, 1, vec![address(stranger)]);
        assert_eq!(judged, Judged::Unmatched);
        // The right tag, but the stranger is not the closest node it names.
        let judged = locates.answer(&overlay, stranger, tag, vec![address(closest)]);
        assert!(matches!(
            judged,
            Judged::Rejected(Rejection::NotFromClosest { .. })
        ));
        assert!(answer.try_recv().is_err(), "the waiter heard nothing");
        // The closest node's own answer is taken.
        let judged = locates.answer(&overlay, closest, tag, vec![address(closest)]);
        assert_eq!(judged, Judged::Accepted);
        let Ok(LocateAnswer::Accepted(nodes)) = answer.try_recv() else {
            panic!("the true answer reaches the waiter");
        };
        assert_eq!(nodes, vec![address(closest)]);
        // Once answered, a replay is unmatched.
        let judged = locates.answer(&overlay, closest, tag, vec![address(closest)]);
        assert_eq!(judged, Judged::Unmatched);
    }
}
