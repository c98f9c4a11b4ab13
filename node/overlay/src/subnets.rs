//! Which subnet each node is in, as the driver says ([`Subnet`]), for the limit on ids
//! per subnet in the leaf set and the routing-table rows (Castro et al. 2002; issue 11:
//! one party with one block of addresses must not fill a neighbourhood with ids, which
//! cost nothing to make).
//!
//! Owns: [`SubnetBook`], the bounded map from node id to subnet. The decisions (who may
//! take a place) are the protocol's, in `lib.rs`.
//!
//! May use: [`cairn_core::id`]. The overlay knows no addresses: the driver turns the
//! address its transport proved into an opaque [`Subnet`] (the daemon: an IPv4 /24 or
//! an IPv6 /48) and names it with `Overlay::note_subnet`.

use std::collections::BTreeMap;

use cairn_core::id::NodeId;

/// An opaque subnet label: nodes with equal labels count against one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet(pub u64);

/// The default of `Config::max_ids_per_subnet`: two, so that a leaf set of 16 holds
/// nodes of at least 8 subnets and a routing-table row of 15 of at least 8. One would
/// be stricter, but two honest nodes behind one NAT or in one rack are common.
pub const DEFAULT_MAX_IDS_PER_SUBNET: usize = 2;

/// Most nodes whose subnet is remembered at once. The book holds the nodes held or
/// being probed (pruned each tick), a few hundred; past this, strangers are forgotten
/// first and a note that still does not fit is dropped (that node is then not counted).
pub(super) const SUBNET_MEMORY: usize = 4096;

/// Node id → subnet, bounded by [`SUBNET_MEMORY`].
#[derive(Clone, Debug, Default)]
pub(super) struct SubnetBook {
    by_node: BTreeMap<NodeId, Subnet>,
}

impl SubnetBook {
    /// Records `node`'s subnet; false if the book is full and `node` not in it.
    pub(super) fn note(&mut self, node: NodeId, subnet: Subnet) -> bool {
        if self.by_node.len() >= SUBNET_MEMORY && !self.by_node.contains_key(&node) {
            return false;
        }
        self.by_node.insert(node, subnet);
        true
    }

    /// `node`'s subnet, if the driver named it.
    pub(super) fn of(&self, node: &NodeId) -> Option<Subnet> {
        self.by_node.get(node).copied()
    }

    /// The nodes whose subnet is known.
    pub(super) fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.by_node.keys().copied()
    }

    /// Keeps only the nodes in `keep` (sorted, as [`Self::ids`] gives them).
    pub(super) fn retain_only(&mut self, keep: &[NodeId]) {
        self.by_node.retain(|id, _| keep.binary_search(id).is_ok());
    }

    /// How many nodes are noted.
    pub(super) fn len(&self) -> usize {
        self.by_node.len()
    }
}
