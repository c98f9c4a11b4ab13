//! The leaf set: the L/2 numerically closest nodes on each side of this node
//! (counter-clockwise `left`, clockwise `right`, closest first). In a ring of at most
//! L nodes a node can be on both sides.
//!
//! Owns: who is in the leaf set, in what order, which key range it covers, and which
//! member is numerically closest to a key. These are what routing rule 1, placement
//! (the nodes responsible for a key) and leaf-set repair stand on.
//!
//! May use: [`cairn_core::id`] and the overlay's [`Entry`]. It knows nothing of liveness or
//! messages: the protocol ([`super::Overlay`]) decides who is admitted or dropped.

use std::cmp::Ordering;

use super::{Entry, RttMicros};
use cairn_core::id::{Id, NodeId};

/// One side of the leaf set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// Counter-clockwise: ids before this node's.
    Left,
    /// Clockwise: ids after this node's.
    Right,
}

/// The sides a node was found on (by [`LeafSet::remove`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sides {
    /// It was on the counter-clockwise side.
    pub(super) left: bool,
    /// It was on the clockwise side.
    pub(super) right: bool,
}

/// One node's leaf set.
#[derive(Clone, Debug)]
pub(super) struct LeafSet {
    /// The node whose leaf set this is.
    me: NodeId,
    /// Members per side (L/2).
    half: usize,
    /// Counter-clockwise half, closest first.
    left: Vec<Entry>,
    /// Clockwise half, closest first.
    right: Vec<Entry>,
}

impl LeafSet {
    /// An empty leaf set of node `me` with `half` members per side.
    pub(super) fn new(me: NodeId, half: usize) -> LeafSet {
        LeafSet {
            me,
            half,
            left: Vec::new(),
            right: Vec::new(),
        }
    }

    fn side(&self, side: Side) -> &[Entry] {
        match side {
            Side::Left => &self.left,
            Side::Right => &self.right,
        }
    }

    /// Whether both sides hold L/2 members: the network is larger than the leaf set,
    /// whose range is then a true statement of which nodes lie near this one.
    pub(super) fn is_full(&self) -> bool {
        self.left.len() >= self.half && self.right.len() >= self.half
    }

    /// L: the members a full leaf set holds.
    pub(super) fn capacity(&self) -> usize {
        2 * self.half
    }

    /// Whether `id` is a member (on either side).
    pub(super) fn contains(&self, id: &NodeId) -> bool {
        self.members().any(|e| e.id == *id)
    }

    /// Whether [`Self::insert`] would take `id` in on a side it is not yet on: that
    /// side has room, or `id` is closer than its furthest member. Never this node.
    pub(super) fn would_admit(&self, id: &NodeId) -> bool {
        if *id == self.me {
            return false;
        }
        let half = self.half;
        let cw = self.me.0.clockwise_to(&id.0);
        let ccw = id.0.clockwise_to(&self.me.0);
        let wants_right = !self.right.iter().any(|e| e.id == *id)
            && (self.right.len() < half
                || self
                    .right
                    .last()
                    .is_some_and(|e| cw < self.me.0.clockwise_to(&e.id.0)));
        let wants_left = !self.left.iter().any(|e| e.id == *id)
            && (self.left.len() < half
                || self
                    .left
                    .last()
                    .is_some_and(|e| ccw < e.id.0.clockwise_to(&self.me.0)));
        wants_right || wants_left
    }

    /// Takes `id` (measured `rtt`) in on each side where it is among the `half`
    /// closest, pushing out that side's furthest member if the side is full; a member
    /// keeps the lower of its RTTs. Returns whether the membership changed.
    pub(super) fn insert(&mut self, id: NodeId, rtt: RttMicros) -> bool {
        if id == self.me {
            return false;
        }
        let half = self.half;
        let me = self.me.0;
        let mut changed = false;
        // Clockwise side.
        if let Some(e) = self.right.iter_mut().find(|e| e.id == id) {
            e.rtt = e.rtt.min(rtt);
        } else {
            let cw = me.clockwise_to(&id.0);
            let pos = self
                .right
                .partition_point(|e| me.clockwise_to(&e.id.0) < cw);
            if pos < half {
                self.right.insert(pos, Entry { id, rtt });
                self.right.truncate(half);
                changed = true;
            }
        }
        // Counter-clockwise side.
        if let Some(e) = self.left.iter_mut().find(|e| e.id == id) {
            e.rtt = e.rtt.min(rtt);
        } else {
            let ccw = id.0.clockwise_to(&me);
            let pos = self
                .left
                .partition_point(|e| e.id.0.clockwise_to(&me) < ccw);
            if pos < half {
                self.left.insert(pos, Entry { id, rtt });
                self.left.truncate(half);
                changed = true;
            }
        }
        changed
    }

    /// Removes `id` from both sides; says which sides it was on.
    pub(super) fn remove(&mut self, id: &NodeId) -> Sides {
        let sides = Sides {
            left: self.left.iter().any(|e| e.id == *id),
            right: self.right.iter().any(|e| e.id == *id),
        };
        self.right.retain(|e| e.id != *id);
        self.left.retain(|e| e.id != *id);
        sides
    }

    /// Whether `key` lies within the range the leaf set spans (between its furthest
    /// members on the two sides). A side with fewer than `half` members knows of no
    /// node beyond them, so it covers its whole half of the ring.
    pub(super) fn covers(&self, key: &Id) -> bool {
        let half = self.half;
        let cw = self.me.0.clockwise_to(key);
        let ccw = key.clockwise_to(&self.me.0);
        let right_cover = if self.right.len() < half {
            Id::MAX
        } else {
            self.right
                .last()
                .map_or(Id::MAX, |e| self.me.0.clockwise_to(&e.id.0))
        };
        let left_cover = if self.left.len() < half {
            Id::MAX
        } else {
            self.left
                .last()
                .map_or(Id::MAX, |e| e.id.0.clockwise_to(&self.me.0))
        };
        cw <= right_cover || ccw <= left_cover
    }

    /// The member numerically closest to `key` among those `usable` accepts (equal
    /// distances are broken by id, so the answer does not depend on member order).
    pub(super) fn closest_to(&self, key: &Id, usable: impl Fn(&NodeId) -> bool) -> Option<NodeId> {
        let mut best: Option<NodeId> = None;
        for e in self.members() {
            if usable(&e.id)
                && best.is_none_or(|b| key.cmp_closeness(&e.id.0, &b.0) == Ordering::Less)
            {
                best = Some(e.id);
            }
        }
        best
    }

    /// The member furthest from this node on `side` (the one that knows the nodes
    /// beyond it), if the side has any.
    pub(super) fn furthest(&self, side: Side) -> Option<NodeId> {
        self.side(side).last().map(|e| e.id)
    }

    /// Every member, left side then right side, each closest first; a node on both
    /// sides comes twice.
    pub(super) fn members(&self) -> impl Iterator<Item = &Entry> {
        self.left.iter().chain(&self.right)
    }

    /// The distinct members, sorted by id.
    pub(super) fn distinct_members(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.members().map(|e| e.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// How many distinct nodes are members.
    pub(super) fn len(&self) -> usize {
        self.distinct_members().len()
    }

    /// The ids of (left side, right side), closest first: the wire and view form.
    pub(super) fn ids_by_side(&self) -> (Vec<NodeId>, Vec<NodeId>) {
        (
            self.left.iter().map(|e| e.id).collect(),
            self.right.iter().map(|e| e.id).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// An id whose first two bytes are `high`, the rest zero.
    fn at(high: u16) -> NodeId {
        let mut bytes = [0; 32];
        bytes[..2].copy_from_slice(&high.to_be_bytes());
        NodeId(Id(bytes))
    }

    /// A leaf set of node 0x5000 with 2 members per side.
    fn small() -> LeafSet {
        LeafSet::new(at(0x5000), 2)
    }

    #[test]
    fn members_are_kept_closest_first_on_each_side() {
        let mut leaf = small();
        for high in [0x5300, 0x4f00, 0x5100, 0x4e00, 0x5200, 0x4d00] {
            leaf.insert(at(high), 1000);
        }
        // The furthest on each side was pushed out by closer ones.
        assert_eq!(
            leaf.ids_by_side(),
            (vec![at(0x4f00), at(0x4e00)], vec![at(0x5100), at(0x5200)])
        );
        assert_eq!(leaf.furthest(Side::Left), Some(at(0x4e00)));
        assert_eq!(leaf.furthest(Side::Right), Some(at(0x5200)));
        assert_eq!(leaf.len(), 4);
        assert!(leaf.contains(&at(0x5100)));
        assert!(!leaf.contains(&at(0x5300)));
    }

    #[test]
    fn insert_says_whether_membership_changed_and_never_takes_this_node() {
        let mut leaf = small();
        assert!(leaf.insert(at(0x5100), 1000));
        assert!(!leaf.insert(at(0x5100), 10), "already a member");
        assert_eq!(
            leaf.members().map(|e| e.rtt).min(),
            Some(10),
            "best RTT kept"
        );
        assert!(!leaf.insert(at(0x5000), 1), "this node is never a member");
        assert!(!leaf.would_admit(&at(0x5000)));
        assert!(leaf.insert(at(0x5200), 1000));
        // Until the left side fills up, even nodes clockwise of us are among its
        // closest (a small ring); once both sides are full, 0x5300 is too far for both.
        assert!(leaf.insert(at(0x4f00), 1000));
        assert!(leaf.insert(at(0x4e00), 1000));
        assert!(!leaf.would_admit(&at(0x5300)));
        assert!(!leaf.insert(at(0x5300), 1000));
        assert!(leaf.would_admit(&at(0x5080)));
        assert!(leaf.insert(at(0x5080), 1000));
        assert_eq!(leaf.furthest(Side::Right), Some(at(0x5100)));
    }

    #[test]
    fn in_a_small_ring_a_node_is_on_both_sides() {
        let mut leaf = small();
        leaf.insert(at(0x9000), 1000);
        let (left, right) = leaf.ids_by_side();
        assert_eq!((left, right), (vec![at(0x9000)], vec![at(0x9000)]));
        assert_eq!(leaf.members().count(), 2);
        assert_eq!(leaf.distinct_members(), vec![at(0x9000)]);
        assert_eq!(leaf.len(), 1);
        let sides = leaf.remove(&at(0x9000));
        assert_eq!(
            sides,
            Sides {
                left: true,
                right: true
            }
        );
        assert_eq!(leaf.len(), 0);
        assert_eq!(leaf.furthest(Side::Left), None);
    }

    #[test]
    fn remove_says_which_side_the_node_was_on() {
        let mut leaf = small();
        for high in [0x4f00, 0x4e00, 0x5100, 0x5200] {
            leaf.insert(at(high), 1000);
        }
        let sides = leaf.remove(&at(0x5200));
        assert_eq!(
            sides,
            Sides {
                left: false,
                right: true
            }
        );
        assert!(!leaf.contains(&at(0x5200)));
        assert_eq!(
            leaf.remove(&at(0x7777)),
            Sides {
                left: false,
                right: false
            }
        );
        // The right side has room again: a node beyond it would now be taken.
        assert!(leaf.would_admit(&at(0x6000)));
    }

    #[test]
    fn covers_the_range_between_its_furthest_members() {
        let mut leaf = small();
        // Not full: each side covers its whole half of the ring.
        assert!(leaf.covers(&at(0x9000).0));
        for high in [0x4f00, 0x4e00, 0x5100, 0x5200] {
            leaf.insert(at(high), 1000);
        }
        assert!(leaf.covers(&at(0x5000).0));
        assert!(leaf.covers(&at(0x5180).0));
        assert!(
            leaf.covers(&at(0x5200).0),
            "up to the furthest member inclusive"
        );
        assert!(leaf.covers(&at(0x4e00).0));
        assert!(!leaf.covers(&at(0x5201).0));
        assert!(!leaf.covers(&at(0x4dff).0));
        assert!(!leaf.covers(&at(0x9000).0));
    }

    #[test]
    fn closest_member_to_a_key_skips_unusable_members() {
        let mut leaf = small();
        for high in [0x4f00, 0x4e00, 0x5100, 0x5200] {
            leaf.insert(at(high), 1000);
        }
        let key = at(0x51c0).0;
        assert_eq!(leaf.closest_to(&key, |_| true), Some(at(0x5200)));
        assert_eq!(
            leaf.closest_to(&key, |id| *id != at(0x5200)),
            Some(at(0x5100))
        );
        assert_eq!(leaf.closest_to(&at(0x4e10).0, |_| true), Some(at(0x4e00)));
        assert_eq!(leaf.closest_to(&key, |_| false), None);
    }
}
