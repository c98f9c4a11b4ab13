//! The address book: which node listens where, with a bound on how many it keeps.
//!
//! Owns: [`AddressBook`], [`ADDRESS_BOOK_CAP`] and [`subnet_of`] (the overlay's subnet
//! of an address). An address is *proven* when it came
//! with a connection the node's key authenticated (the transport's handshake covers
//! the advertised address), and a *hint* when another node gossiped it. Peers can
//! gossip any number of ids, so the book keeps at most its cap: when full, the hint
//! learnt longest ago goes first, then the proven address heard from longest ago (a
//! live neighbour is heard from every overlay tick, so it stays). A gossiped id that
//! does not solve the network's key puzzle ([`Difficulty`]) is not learnt at all: no
//! handshake would ever accept it, and such ids cost nothing to make up, so they would
//! only fill the book and send the overlay's probes nowhere (without an address, a
//! probe of it is dropped, and the overlay admits a node only once it has answered).
//!
//! May use: [`cairn_core::id`], `std`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use cairn_core::id::{Difficulty, NodeId};
use cairn_overlay::Subnet;

/// The subnet an address counts in for the overlay's limit on ids per subnet: an IPv4
/// /24, or an IPv6 /48 (what a site is usually given; a /64 per host would let one
/// site count as 65,536). An IPv4-mapped IPv6 address counts as its IPv4 address. The
/// top byte tells the two families apart.
pub(crate) fn subnet_of(addr: &SocketAddr) -> Subnet {
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Subnet(u64::from_be_bytes([4, 0, 0, 0, 0, a, b, c]))
        }
        std::net::IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, ..] = v6.octets();
            Subnet(u64::from_be_bytes([6, 0, a, b, c, d, e, f]))
        }
    }
}

/// Most addresses a node keeps (a leaf set, a routing table and its neighbours are a
/// few hundred; the rest is the slack of gossip).
pub(crate) const ADDRESS_BOOK_CAP: usize = 8192;

#[derive(Clone, Copy, Debug)]
struct Entry {
    addr: SocketAddr,
    proven: bool,
    stamp: u64,
}

/// What [`AddressBook::learn_hints`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HintsLearnt {
    /// Entries evicted to make room.
    pub evicted: usize,
    /// Hints ignored because their id does not solve the network's puzzle.
    pub below_difficulty: usize,
}

/// Addresses by node id, at most `cap` of them.
#[derive(Debug)]
pub(crate) struct AddressBook {
    cap: usize,
    entries: HashMap<NodeId, Entry>,
    /// Eviction order: hints before proven addresses, oldest first.
    order: BTreeMap<(bool, u64), NodeId>,
    next_stamp: u64,
}

impl AddressBook {
    /// An empty book that keeps at most `cap` addresses (at least one).
    pub(crate) fn new(cap: usize) -> AddressBook {
        AddressBook {
            cap: cap.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// The address of `id`, if known.
    pub(crate) fn get(&self, id: &NodeId) -> Option<SocketAddr> {
        self.entries.get(id).map(|e| e.addr)
    }

    /// How many addresses the book holds.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Records the proven address of `id` (replacing what was known), as heard from
    /// now. Returns how many entries were evicted to make room.
    pub(crate) fn learn_proven(&mut self, id: NodeId, addr: SocketAddr) -> usize {
        self.insert(id, addr, true)
    }

    /// Records a gossiped address of `id` if none is known (a known address, proven or
    /// not, is kept). Returns how many entries were evicted to make room.
    pub(crate) fn learn_hint(&mut self, id: NodeId, addr: SocketAddr) -> usize {
        if self.entries.contains_key(&id) {
            return 0;
        }
        self.insert(id, addr, false)
    }

    /// [`AddressBook::learn_hint`] for each gossiped `(id, address)` whose id solves
    /// the network's puzzle at `difficulty`; the others are ignored and counted.
    pub(crate) fn learn_hints(
        &mut self,
        hints: impl IntoIterator<Item = (NodeId, SocketAddr)>,
        difficulty: Difficulty,
    ) -> HintsLearnt {
        let mut learnt = HintsLearnt::default();
        for (id, addr) in hints {
            if id.meets(difficulty) {
                learnt.evicted += self.learn_hint(id, addr);
            } else {
                learnt.below_difficulty += 1;
            }
        }
        learnt
    }

    fn insert(&mut self, id: NodeId, addr: SocketAddr, proven: bool) -> usize {
        if let Some(old) = self.entries.remove(&id) {
            self.order.remove(&(old.proven, old.stamp));
        }
        let mut evicted = 0;
        // Bounded: each pass removes one entry.
        while self.entries.len() >= self.cap {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&victim);
            evicted += 1;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.entries.insert(
            id,
            Entry {
                addr,
                proven,
                stamp,
            },
        );
        self.order.insert((proven, stamp), id);
        evicted
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_core::id::Id;

    fn id(n: u8) -> NodeId {
        NodeId(Id::hash(&[n]))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    #[test]
    fn a_flood_of_hints_evicts_hints_first_and_never_grows_the_book() {
        let mut book = AddressBook::new(4);
        book.learn_proven(id(1), addr(1));
        book.learn_proven(id(2), addr(2));
        let mut evicted = 0;
        for n in 10..200u8 {
            evicted += book.learn_hint(id(n), addr(u16::from(n)));
            assert!(book.len() <= 4);
        }
        assert_eq!(evicted, 190 - 2);
        // The proven addresses survived the flood.
        assert_eq!(book.get(&id(1)), Some(addr(1)));
        assert_eq!(book.get(&id(2)), Some(addr(2)));
        // The newest hints are there, the oldest gone.
        assert_eq!(book.get(&id(199)), Some(addr(199)));
        assert_eq!(book.get(&id(10)), None);
    }

    #[test]
    fn gossiped_ids_below_the_difficulty_are_ignored_and_counted() {
        let difficulty = Difficulty(2);
        let hints: Vec<(NodeId, SocketAddr)> =
            (0..64u8).map(|n| (id(n), addr(u16::from(n)))).collect();
        let solving = hints.iter().filter(|(i, _)| i.meets(difficulty)).count();
        // About a quarter of ids solve 2 bits; both kinds are among 64.
        assert!((1..64).contains(&solving), "{solving} of 64 solve 2 bits");
        let mut book = AddressBook::new(1000);
        let learnt = book.learn_hints(hints.iter().copied(), difficulty);
        assert_eq!(
            learnt,
            HintsLearnt {
                evicted: 0,
                below_difficulty: 64 - solving
            }
        );
        assert_eq!(book.len(), solving);
        for (i, a) in &hints {
            let expected = i.meets(difficulty).then_some(*a);
            assert_eq!(book.get(i), expected, "{i:?}");
        }
        // With no puzzle every hint is learnt.
        let mut open = AddressBook::new(1000);
        let learnt = open.learn_hints(hints.iter().copied(), Difficulty::NONE);
        assert_eq!((learnt.below_difficulty, open.len()), (0, 64));
    }

    #[test]
    fn proven_addresses_go_least_recently_heard_first_and_hints_never_overwrite() {
        let mut book = AddressBook::new(2);
        book.learn_proven(id(1), addr(1));
        book.learn_proven(id(2), addr(2));
        // Hearing from 1 again makes 2 the oldest.
        book.learn_proven(id(1), addr(11));
        assert_eq!(book.learn_proven(id(3), addr(3)), 1);
        assert_eq!(book.get(&id(2)), None);
        assert_eq!(book.get(&id(1)), Some(addr(11)));
        // A hint for a known id changes nothing.
        assert_eq!(book.learn_hint(id(1), addr(99)), 0);
        assert_eq!(book.get(&id(1)), Some(addr(11)));
        assert_eq!(book.len(), 2);
    }

    #[test]
    fn subnets_are_ipv4_24s_and_ipv6_48s_and_mapped_ipv4_counts_as_ipv4() {
        let at = |s: &str| subnet_of(&s.parse::<SocketAddr>().unwrap());
        assert_eq!(at("203.0.113.7:1"), at("203.0.113.250:2"));
        assert_ne!(at("203.0.113.7:1"), at("203.0.114.7:1"));
        assert_eq!(at("[2001:db8:1:ffff::1]:1"), at("[2001:db8:1:2::9]:1"));
        assert_ne!(at("[2001:db8:1::1]:1"), at("[2001:db8:2::1]:1"));
        assert_eq!(at("[::ffff:203.0.113.9]:1"), at("203.0.113.7:1"));
        // 0.0.1.0/24 and the IPv6 ::1:0:0/48 share no label.
        assert_ne!(at("0.0.1.0:1"), at("[0:0:1::]:1"));
    }
}
