//! Admission of inbound connections: how many a node holds in total and per source
//! address, and how many handshakes run at once per source address.
//!
//! Owns: [`Admission`] (the counts, behind one mutex), the guards that give a slot back
//! when dropped ([`InboundSlot`], [`HandshakeSlot`]) and [`AddressGroup`], the unit a
//! per-address limit counts in. Knows nothing of frames or peers: the listener asks it
//! before it spends anything on a socket.
//!
//! May use: `std` only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use super::lock;

/// The unit per-address limits count in: one IPv4 address, or one IPv6 /64 (the
/// smallest prefix a site is usually given: counting single IPv6 addresses would let
/// one host take as many slots as it has addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AddressGroup {
    /// An IPv4 address (IPv4-mapped IPv6 addresses count as theirs).
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix(u64),
}

impl AddressGroup {
    pub(crate) fn of(addr: &SocketAddr) -> AddressGroup {
        match addr.ip().to_canonical() {
            IpAddr::V4(v4) => AddressGroup::V4(v4.octets()),
            IpAddr::V6(v6) => AddressGroup::V6Prefix(prefix_64(&v6)),
        }
    }
}

fn prefix_64(v6: &Ipv6Addr) -> u64 {
    (u128::from_be_bytes(v6.octets()) >> 64) as u64
}

/// The limits, copied from [`crate::NetConfig`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdmissionLimits {
    pub total: usize,
    pub per_address: usize,
    pub handshakes: usize,
    pub handshakes_per_address: usize,
}

/// Why an inbound connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The node holds its total of inbound connections.
    Total,
    /// The source address group holds its share of inbound connections.
    PerAddress,
    /// The source address group has its share of handshakes running (or the node its
    /// total).
    Handshakes,
}

#[derive(Debug, Default)]
struct GroupCount {
    connections: usize,
    handshakes: usize,
}

#[derive(Debug, Default)]
struct Counts {
    connections: usize,
    handshakes: usize,
    groups: HashMap<AddressGroup, GroupCount>,
}

/// The inbound connections and handshakes a node holds, by source address group.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admits a connection from `addr`, taking a connection slot and a handshake slot;
    /// or says which limit it hits. A handshaking socket counts as a connection.
    pub(crate) fn admit(
        self: &Arc<Self>,
        addr: &SocketAddr,
    ) -> Result<(InboundSlot, HandshakeSlot), Refused> {
        let group = AddressGroup::of(addr);
        let limits = self.limits;
        let mut counts = lock(&self.counts);
        if counts.connections >= limits.total {
            return Err(Refused::Total);
        }
        let handshakes_full = counts.handshakes >= limits.handshakes;
        let entry = counts.groups.entry(group).or_default();
        if entry.connections >= limits.per_address {
            return Err(Refused::PerAddress);
        }
        if handshakes_full || entry.handshakes >= limits.handshakes_per_address {
            if entry.connections == 0 {
                counts.groups.remove(&group);
            }
            return Err(Refused::Handshakes);
        }
        entry.connections += 1;
        entry.handshakes += 1;
        counts.connections += 1;
        counts.handshakes += 1;
        let inbound = InboundSlot {
            admission: Arc::clone(self),
            group,
        };
        let handshake = HandshakeSlot {
            admission: Arc::clone(self),
            group,
        };
        Ok((inbound, handshake))
    }

    /// Inbound connections held now (handshaking ones included).
    pub(crate) fn connections(&self) -> usize {
        lock(&self.counts).connections
    }

    fn release(&self, group: AddressGroup, connection: bool) {
        let mut counts = lock(&self.counts);
        if connection {
            counts.connections = counts.connections.saturating_sub(1);
        } else {
            counts.handshakes = counts.handshakes.saturating_sub(1);
        }
        if let Some(entry) = counts.groups.get_mut(&group) {
            if connection {
                entry.connections = entry.connections.saturating_sub(1);
            } else {
                entry.handshakes = entry.handshakes.saturating_sub(1);
            }
            if entry.connections == 0 && entry.handshakes == 0 {
                counts.groups.remove(&group);
            }
        }
    }
}

/// One inbound connection's place in the count; given back when dropped.
#[derive(Debug)]
pub(crate) struct InboundSlot {
    admission: Arc<Admission>,
    group: AddressGroup,
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.admission.release(self.group, true);
    }
}

/// One running handshake's place in the count; given back when dropped.
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    admission: Arc<Admission>,
    group: AddressGroup,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.admission.release(self.group, false);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            total: 4,
            per_address: 2,
            handshakes: 3,
            handshakes_per_address: 1,
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_limit_refuses_and_a_dropped_slot_gives_its_place_back() {
        let admission = Admission::new(limits());
        let (a1, shake) = admission.admit(&addr("10.0.0.1:1")).unwrap();
        // One handshake per address at a time.
        assert_eq!(
            admission.admit(&addr("10.0.0.1:2")).unwrap_err(),
            Refused::Handshakes
        );
        drop(shake);
        let (a2, shake2) = admission.admit(&addr("10.0.0.1:2")).unwrap();
        drop(shake2);
        // Two connections per address.
        assert_eq!(
            admission.admit(&addr("10.0.0.1:3")).unwrap_err(),
            Refused::PerAddress
        );
        // Other addresses still get in, up to the total of four.
        let b = admission.admit(&addr("10.0.0.2:1")).unwrap();
        let c = admission.admit(&addr("10.0.0.3:1")).unwrap();
        assert_eq!(admission.connections(), 4);
        assert_eq!(
            admission.admit(&addr("10.0.0.4:1")).unwrap_err(),
            Refused::Total
        );
        // Three handshakes in total (b's and c's still run).
        drop(a1);
        let d = admission.admit(&addr("10.0.0.4:1")).unwrap();
        drop(d);
        drop((b, c, a2));
        assert_eq!(admission.connections(), 0);
        assert!(
            lock(&admission.counts).groups.is_empty(),
            "no group left over"
        );
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let admission = Admission::new(AdmissionLimits {
            handshakes_per_address: 4,
            handshakes: 8,
            ..limits()
        });
        let _one = admission.admit(&addr("[2001:db8:1:2::1]:1")).unwrap();
        let _two = admission.admit(&addr("[2001:db8:1:2:ffff::9]:1")).unwrap();
        assert_eq!(
            admission.admit(&addr("[2001:db8:1:2::77]:1")).unwrap_err(),
            Refused::PerAddress,
            "a third address of the same /64"
        );
        let _other = admission.admit(&addr("[2001:db8:1:3::1]:1")).unwrap();
        assert_eq!(
            AddressGroup::of(&addr("[::ffff:10.0.0.1]:5")),
            AddressGroup::of(&addr("10.0.0.1:6"))
        );
    }
}
