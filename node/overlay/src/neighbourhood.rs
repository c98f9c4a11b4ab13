//! The neighbourhood set: the M nodes of lowest measured RTT, whatever their ids (the
//! paper's `M`). A joiner gets its bootstrap's set as candidates; routing uses it only
//! in the rare case (no leaf-set or routing-table hop), and a leaving node tells it.
//!
//! Owns: who is in the set and its order (lowest RTT first).
//!
//! May use: [`cairn_core::id`] and the overlay's [`Entry`] and [`RTT_UNKNOWN`].

use super::{Entry, RTT_UNKNOWN, RttMicros};
use cairn_core::id::NodeId;

/// One node's neighbourhood set, lowest RTT first.
#[derive(Clone, Debug)]
pub(super) struct NeighbourhoodSet {
    /// Most members (M).
    capacity: usize,
    /// Members, ordered by (RTT, id).
    entries: Vec<Entry>,
}

impl NeighbourhoodSet {
    /// An empty set of at most `capacity` members.
    pub(super) fn new(capacity: usize) -> NeighbourhoodSet {
        NeighbourhoodSet {
            capacity,
            entries: Vec::new(),
        }
    }

    /// Records `rtt` as `id`'s RTT (replacing any earlier one) and keeps `id` if it is
    /// among the `capacity` lowest. An unmeasured RTT ([`RTT_UNKNOWN`]) changes nothing.
    pub(super) fn insert(&mut self, id: NodeId, rtt: RttMicros) {
        if rtt == RTT_UNKNOWN || self.capacity == 0 {
            return;
        }
        if let Some(pos) = self.entries.iter().position(|e| e.id == id) {
            self.entries.remove(pos);
        }
        let pos = self.entries.partition_point(|e| (e.rtt, e.id) < (rtt, id));
        if pos < self.capacity {
            self.entries.insert(pos, Entry { id, rtt });
            self.entries.truncate(self.capacity);
        }
    }

    /// Removes `id` if it is a member.
    pub(super) fn remove(&mut self, id: &NodeId) {
        self.entries.retain(|e| e.id != *id);
    }

    /// Whether `id` is a member.
    pub(super) fn contains(&self, id: &NodeId) -> bool {
        self.entries.iter().any(|e| e.id == *id)
    }

    /// The members, lowest RTT first.
    pub(super) fn members(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// The members' ids, lowest RTT first.
    pub(super) fn ids(&self) -> Vec<NodeId> {
        self.entries.iter().map(|e| e.id).collect()
    }

    /// How many members.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::id::Id;

    fn node(n: u8) -> NodeId {
        NodeId(Id::hash(&[n]))
    }

    #[test]
    fn keeps_the_lowest_rtts_in_order() {
        let mut set = NeighbourhoodSet::new(2);
        set.insert(node(1), 300);
        set.insert(node(2), 100);
        set.insert(node(3), 200);
        assert_eq!(set.ids(), vec![node(2), node(3)]);
        assert_eq!(set.len(), 2);
        assert!(!set.contains(&node(1)));
        // Unmeasured nodes never enter.
        set.insert(node(4), RTT_UNKNOWN);
        assert!(!set.contains(&node(4)));
    }

    #[test]
    fn a_new_measurement_replaces_the_old_one() {
        let mut set = NeighbourhoodSet::new(3);
        set.insert(node(1), 100);
        set.insert(node(2), 200);
        set.insert(node(1), 500);
        assert_eq!(set.ids(), vec![node(2), node(1)]);
        assert_eq!(set.members().map(|e| e.rtt).collect::<Vec<_>>(), [200, 500]);
        set.remove(&node(2));
        assert_eq!(set.ids(), vec![node(1)]);
        let mut none = NeighbourhoodSet::new(0);
        none.insert(node(1), 1);
        assert_eq!(none.len(), 0);
    }
}
