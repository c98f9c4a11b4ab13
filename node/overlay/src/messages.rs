//! The overlay's wire types: [`OverlayMessage`] (one hop between two nodes), what a
//! routed message carries ([`Routed`]), and the timers the overlay asks its driver to
//! set ([`TimerKind`]).
//!
//! Owns: nothing but these definitions and their encoding (postcard). Both enums are
//! append-only: variants are only ever added at the end, never reordered, and a test
//! below pins the bytes of some of them.
//!
//! May use: [`cairn_core::id`] and the overlay's [`RttMicros`].

use serde::{Deserialize, Serialize};

use super::RttMicros;
use cairn_core::id::{Id, NodeId};

/// What a routed message carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Routed {
    /// A new node's join, routed to its own id.
    Join {
        /// The joining node.
        joiner: NodeId,
    },
    /// An application message for whichever node is responsible for the key.
    Lookup {
        /// The node that started the route.
        origin: NodeId,
        /// The origin's tag, handed back at delivery (e.g. a request number).
        tag: u64,
        /// Opaque application bytes.
        payload: Vec<u8>,
    },
    /// A member routes this to its own id: the live node closest to it (other than
    /// itself) answers with its leaf set. Repairs a leaf set that went wrong, e.g.
    /// after a join that ended at a node whose own state was still incomplete.
    Locate {
        /// The node whose neighbours are wanted.
        requester: NodeId,
    },
}

/// The overlay's wire protocol. Variants are only ever appended, never reordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverlayMessage {
    /// A message routed towards `key`, one hop. The receiver answers [`Self::RouteAck`].
    Route {
        /// The sender's number for this hop, echoed in the acknowledgement.
        hop_id: u64,
        /// Where the message is going.
        key: Id,
        /// Hops taken so far.
        hops: u8,
        /// What it carries.
        body: Routed,
    },
    /// The next hop received [`Self::Route`] `hop_id`.
    RouteAck {
        /// The hop acknowledged.
        hop_id: u64,
    },
    /// A node on a join's path gives the joiner the routing state it can use.
    JoinReply {
        /// Ids from the rows of the sender's routing table that the joiner shares.
        entries: Vec<NodeId>,
        /// The bootstrap node's neighbourhood set (first hop only; else empty).
        neighbours: Vec<NodeId>,
        /// The sender's leaf set: set only by the last node (the closest to the joiner).
        leaf_set: Option<Vec<NodeId>>,
    },
    /// Liveness probe; answered by [`Self::Pong`] with the same nonce.
    Ping {
        /// Echoed in the reply.
        nonce: u64,
    },
    /// Reply to [`Self::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// "I exist and you are in my state": sent by a node that measured its RTT to you.
    Announce {
        /// The RTT the sender measured to the receiver. Ignored by the receiver, which
        /// measures its own (a peer's claim must not decide proximity); kept on the
        /// wire so the encoding does not change.
        rtt_us: RttMicros,
    },
    /// Ask for the receiver's leaf set; answered by [`Self::LeafSet`].
    LeafSetRequest,
    /// A node's leaf set (an answer, or a periodic push to its nearest neighbours).
    LeafSet {
        /// Counter-clockwise side, closest first.
        left: Vec<NodeId>,
        /// Clockwise side, closest first.
        right: Vec<NodeId>,
    },
    /// Ask for one row of the receiver's routing table (lazy hole repair).
    RowRequest {
        /// The row wanted.
        row: u8,
    },
    /// One row of the sender's routing table.
    Row {
        /// The row number.
        row: u8,
        /// The ids in that row.
        entries: Vec<NodeId>,
    },
    /// The sender is leaving the overlay for good.
    Leave,
}

/// Kinds of timers the overlay asks its driver to set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKind {
    /// Periodic maintenance: keepalives, failure detection, leaf-set pushes.
    Tick,
    /// Expire probes that went unanswered.
    ProbeExpiry,
    /// The acknowledgement of forwarded hop `hop_id` is due.
    RouteAck {
        /// The hop.
        hop_id: u64,
    },
    /// A join has had its time.
    JoinTimeout,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn wire_encoding_is_pinned() {
        // Variant index (postcard varint) then fields: Ping = 3, nonce 300 = ac 02.
        let bytes = postcard::to_stdvec(&OverlayMessage::Ping { nonce: 300 }).unwrap();
        assert_eq!(bytes, [0x03, 0xac, 0x02]);
        let bytes = postcard::to_stdvec(&OverlayMessage::Leave).unwrap();
        assert_eq!(bytes, [0x0a]);
        let msg = OverlayMessage::RowRequest { row: 2 };
        let bytes = postcard::to_stdvec(&msg).unwrap();
        assert_eq!(bytes, [0x08, 0x02]);
        assert_eq!(postcard::from_bytes::<OverlayMessage>(&bytes).unwrap(), msg);
        // Row = 9 (also the answer to a proximity row exchange): row, then a length-
        // prefixed list of 32-byte ids.
        let msg = OverlayMessage::Row {
            row: 1,
            entries: vec![NodeId(Id([7; 32]))],
        };
        let bytes = postcard::to_stdvec(&msg).unwrap();
        let mut want = vec![0x09, 0x01, 0x01];
        want.extend([7u8; 32]);
        assert_eq!(bytes, want);
        assert_eq!(postcard::from_bytes::<OverlayMessage>(&bytes).unwrap(), msg);
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = postcard::from_bytes::<OverlayMessage>(&bytes);
        }
    }
}
