//! What a holder answers: the one place that maps a [`PastRequest`] to the
//! [`Holder`]'s checks and store, so the daemon, the simulator and the unit tests
//! answer alike. Every request that changes the store is checked against who sent it,
//! in this node's own view of the ring ([`crate::authority`]).
//!
//! Owns: [`Answer`], [`Holder::answer`] and [`Holder::apply`] (a checked maintenance
//! order's change to the store).
//!
//! May use: [`crate::Holder`], the wire types, [`crate::authority`] and
//! [`crate::maintenance::orders`].

use cairn_core::crypto::{FileCertificate, RootRecord, Signed};
use cairn_core::id::{FileId, NodeId, PlacementKey};
use cairn_store::{NodeStore, StoreError};

use crate::authority::{RingView, possession_proof};
use crate::maintenance::{Action, Change, Order};
use crate::records::Record;
use crate::{
    Holder, NodeAddress, PastRequest, PastResponse, Refusal, RepairAuthority, StoreRequest,
    UnixSeconds, check_certificate,
};

/// What to do with a request.
#[derive(Debug)]
pub enum Answer {
    /// Send this back.
    Reply(PastResponse),
    /// A primary store found no room here (`size / free > t_pri`): divert it
    /// ([`crate::divert::ReplicaDiversion`]) and answer with what that achieves.
    Divert {
        /// The store to divert.
        request: StoreRequest,
        /// Its size.
        size: u64,
        /// Free bytes here.
        free: u64,
    },
    /// A maintenance order that passed the local checks: check it with the node it
    /// concerns ([`crate::maintenance::OrderCheck`]), then [`Holder::apply`] the change
    /// (or answer with the refusal).
    Order(Order),
    /// A request that needs more than this node's store (reclaims, which are passed
    /// on, and the coordinator's queue): the daemon's to carry out.
    Elsewhere(PastRequest),
}

impl<S: NodeStore> Holder<S> {
    /// Answers `request`, sent by `from` (as the transport proved it), from this node's
    /// store at `now`; `ring` is what this node knows of the ring, for the checks of
    /// authority. `address_of` names where a node listens (pointers are kept as ids; a
    /// pointer whose holder has no known address is answered as not found).
    pub fn answer(
        &self,
        request: PastRequest,
        from: NodeId,
        now: UnixSeconds,
        ring: RingView<'_>,
        address_of: impl Fn(&NodeId) -> Option<NodeAddress>,
    ) -> Answer {
        let reply = |result: Result<PastResponse, Refusal>| {
            Answer::Reply(result.unwrap_or_else(PastResponse::Refused))
        };
        let refuse =
            |why: &str| Answer::Reply(PastResponse::Refused(Refusal::Store(why.to_string())));
        let stored = |receipt: Vec<u8>| PastResponse::Stored {
            receipt,
            diverted_to: None,
        };
        let order = |key: PlacementKey, index: u16, action: Action| {
            Answer::Order(Order {
                from,
                holder: self.id(),
                key,
                index,
                action,
            })
        };
        match request {
            PastRequest::Store(store) => match ring
                .admit_store(&store.key, store.replicas)
                .and_then(|()| self.store_fragment(&store, false, now))
            {
                Ok(receipt) => Answer::Reply(stored(receipt)),
                Err(Refusal::NoRoom { size, free }) => Answer::Divert {
                    request: store,
                    size,
                    free,
                },
                Err(refusal) => Answer::Reply(PastResponse::Refused(refusal)),
            },
            PastRequest::StoreDiverted(store) => reply(
                ring.admit_diverted(&store.key, store.replicas, &from)
                    .and_then(|()| self.store_fragment(&store, true, now))
                    .map(stored),
            ),
            PastRequest::RepairStore(repair) => reply(
                self.certified_count(&repair.authority, now)
                    .and_then(|(_, n)| ring.admit_store(&repair.key, n))
                    .and_then(|()| self.repair_fragment(&repair, now))
                    .map(stored),
            ),
            PastRequest::Prove { key, index, nonce } => {
                Answer::Reply(match self.store().get_fragment(&key, index) {
                    Ok(Some(bytes)) => PastResponse::Possession {
                        proof: possession_proof(&nonce, &key, index, &bytes),
                    },
                    Ok(None) => PastResponse::NotFound,
                    Err(StoreError::Corrupt { .. }) => PastResponse::Corrupt,
                    Err(e) => PastResponse::Refused(Refusal::Store(e.to_string())),
                })
            }
            PastRequest::Fetch { key, index } => Answer::Reply(match self.fetch(&key, index) {
                Ok(response) => response,
                Err(pointed) => match address_of(&pointed) {
                    Some(holder) => PastResponse::Pointer { holder },
                    None => PastResponse::NotFound,
                },
            }),
            PastRequest::Holdings { key } => reply(self.holdings(&key).map(
                |(fragments, pointers, references)| {
                    PastResponse::Holdings {
                        fragments,
                        pointers: pointers
                            .into_iter()
                            .filter_map(|(index, id)| address_of(&id).map(|a| (index, a)))
                            .collect(),
                        references,
                    }
                },
            )),
            PastRequest::PutPointer { key, index, holder } => {
                match ring.admit_pointer(&key, &from) {
                    Ok(()) => Answer::Reply(self.put_pointer(&key, index, &holder.id)),
                    Err(refusal) => Answer::Reply(PastResponse::Refused(refusal)),
                }
            }
            PastRequest::PutCertificate { certificate } => reply(
                self.admit_record::<FileCertificate>(ring, &certificate)
                    .and_then(|()| self.put_certificate(&certificate, now))
                    .map(|()| PastResponse::Done),
            ),
            PastRequest::GetCertificate { file } => reply(
                self.get_certificate(&file)
                    .map(|certificate| PastResponse::Certificate { certificate }),
            ),
            PastRequest::PutRoot { record } => reply(
                self.admit_record::<RootRecord>(ring, &record)
                    .and_then(|()| self.put_root(&record))
                    .map(|_| PastResponse::Done),
            ),
            PastRequest::GetRoot { volume } => reply(
                self.get_root(&volume)
                    .map(|record| PastResponse::Root { record }),
            ),
            PastRequest::FileStatus { file } => reply(self.file_status(&file)),
            PastRequest::Handoff {
                key,
                index,
                to,
                authority,
            } => {
                if to.id == self.id() {
                    return refuse("a handoff to oneself");
                }
                let n = match self.referenced_count(&key, &authority, now) {
                    Ok(n) => n,
                    Err(refusal) => return Answer::Reply(PastResponse::Refused(refusal)),
                };
                match self.store().get_fragment(&key, index) {
                    Ok(Some(bytes)) => order(
                        key,
                        index,
                        Action::Handoff {
                            bytes,
                            to,
                            authority,
                            n,
                        },
                    ),
                    Ok(None) => Answer::Reply(PastResponse::NotFound),
                    Err(StoreError::Corrupt { .. }) => Answer::Reply(PastResponse::Corrupt),
                    Err(e) => refuse(&e.to_string()),
                }
            }
            PastRequest::Release {
                key,
                index,
                kept_by,
                authority,
            } => {
                if kept_by.id == self.id() {
                    return refuse("kept by this very node");
                }
                let n = match self.referenced_count(&key, &authority, now) {
                    Ok(n) => n,
                    Err(refusal) => return Answer::Reply(PastResponse::Refused(refusal)),
                };
                match self.store().get_fragment(&key, index) {
                    Ok(Some(bytes)) => order(key, index, Action::Release { bytes, kept_by, n }),
                    Ok(None) => Answer::Reply(PastResponse::Done),
                    // A corrupt copy is worth nothing: the scrub drops it.
                    Err(StoreError::Corrupt { .. }) => Answer::Reply(PastResponse::Corrupt),
                    Err(e) => refuse(&e.to_string()),
                }
            }
            PastRequest::DropPointer { key, index } => {
                match self.store().get_pointer(&key, index) {
                    Ok(Some(pointed)) => order(
                        key,
                        index,
                        Action::DropPointer {
                            pointed,
                            address: address_of(&pointed),
                        },
                    ),
                    Ok(None) => Answer::Reply(PastResponse::Done),
                    Err(e) => refuse(&e.to_string()),
                }
            }
            // The reclaim verifies on its own (it binds the file id to its signer):
            // whoever relays it, the owner has spoken.
            PastRequest::Forget { reclaim, keys } => reply(self.forget(&reclaim, &keys).map(
                |done| PastResponse::Reclaimed {
                    fragments: done.fragments,
                    bytes: done.bytes,
                },
            )),
            other @ (PastRequest::Reclaim { .. }
            | PastRequest::Reconcile { .. }
            | PastRequest::Summary { .. }) => Answer::Elsewhere(other),
        }
    }

    /// Makes the change a checked maintenance order decided ([`Order`],
    /// [`crate::maintenance::OrderCheck`]) and says what to answer.
    pub fn apply(&self, change: &Change) -> PastResponse {
        let done = |result: Result<Option<u64>, StoreError>| match result {
            Ok(_) => PastResponse::Done,
            Err(e) => PastResponse::Refused(Refusal::Store(e.to_string())),
        };
        match change {
            Change::HandedOff { key, index, .. } | Change::Released { key, index, .. } => {
                done(self.store().delete_fragment(key, *index))
            }
            Change::PointerDropped { key, index } => match self.store().delete_pointer(key, *index)
            {
                Ok(_) => PastResponse::Done,
                Err(e) => PastResponse::Refused(Refusal::Store(e.to_string())),
            },
        }
    }

    /// A record (certificate or root record) is kept only where this node is one of
    /// its keepers in its own view, as a fragment is ([`RingView::admit_store`]). Only
    /// decoded here, to find its key: the store verifies it.
    fn admit_record<R: Record>(&self, ring: RingView<'_>, bytes: &[u8]) -> Result<(), Refusal> {
        let signed =
            Signed::<R>::from_bytes(bytes).map_err(|e| Refusal::Certificate(e.to_string()))?;
        let keepers = u16::try_from(self.config().certificate_replicas).unwrap_or(u16::MAX);
        ring.admit_store(&R::placement_key(&signed.body.subject()), keepers)
    }

    /// The file `authority`'s certificate certifies and `n` of its blocks, once the
    /// certificate checks out and names one of the references.
    fn certified_count(
        &self,
        authority: &RepairAuthority,
        now: UnixSeconds,
    ) -> Result<(FileId, u16), Refusal> {
        let certificate = check_certificate(&authority.certificate, now)?;
        if !authority.references.contains(&certificate.file_id) {
            return Err(Refusal::Certificate(format!(
                "file {} is not among the key's references",
                certificate.file_id
            )));
        }
        Ok((
            certificate.file_id,
            certificate.k.saturating_add(certificate.m),
        ))
    }

    /// [`Self::certified_count`] for an order about `key`: the certified file must be
    /// one this node records as referencing `key`, so that the sender cannot choose
    /// the count with some other file's certificate.
    fn referenced_count(
        &self,
        key: &PlacementKey,
        authority: &RepairAuthority,
        now: UnixSeconds,
    ) -> Result<u16, Refusal> {
        let (file, n) = self.certified_count(authority, now)?;
        let references = self
            .store()
            .references(key)
            .map_err(|e| Refusal::Store(e.to_string()))?;
        if !references.contains(&file) {
            return Err(Refusal::NotAuthorised(format!(
                "file {file} does not reference {key} here"
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::crypto::KeyPair;
    use cairn_core::erasure::fragment_hash;

    use super::*;
    use crate::testing::{TestNet, certificate, grant, key};

    #[test]
    fn stores_and_records_are_refused_where_this_node_is_not_responsible() {
        // 16 nodes: with n = 6 and 4 spares, the 6 farthest from a key refuse it.
        let net = TestNet::new(&[1 << 30; 16]);
        let owner = KeyPair::from_secret_bytes(&[70; 32]);
        let (_, grant) = grant(&owner, b"s");
        let closest = net.closest(&key(3).0, 16);
        let bytes = vec![7u8; 100];
        let store = |index: u16| {
            PastRequest::Store(StoreRequest {
                grant: grant.to_vec(),
                key: key(3),
                index,
                hash: fragment_hash(index, &bytes),
                bytes: bytes.clone(),
                replicas: 6,
            })
        };
        assert!(matches!(
            net.ask(&closest[0], store(0)),
            Ok(PastResponse::Stored { .. })
        ));
        assert!(matches!(
            net.ask(&closest[9], store(1)),
            Ok(PastResponse::Stored { .. })
        ));
        assert!(matches!(
            net.ask(&closest[10], store(2)),
            Ok(PastResponse::Refused(Refusal::NotAuthorised(_)))
        ));
        // A diverted store only from one of the n closest.
        let PastRequest::Store(diverted) = store(3) else {
            unreachable!()
        };
        let diverted = PastRequest::StoreDiverted(diverted);
        assert!(matches!(
            net.ask_from(closest[7].id, &closest[8], diverted.clone()),
            Ok(PastResponse::Refused(Refusal::NotAuthorised(_)))
        ));
        assert!(matches!(
            net.ask_from(closest[5].id, &closest[8], diverted),
            Ok(PastResponse::Stored { .. })
        ));
        // A certificate only on its keepers (4, and 4 spares).
        let (file, certified) = certificate(&owner, b"s", (4, 2));
        let keepers = net.closest(&crate::certificate_key(&file).0, 16);
        let put = PastRequest::PutCertificate {
            certificate: certified,
        };
        assert_eq!(net.ask(&keepers[7], put.clone()), Ok(PastResponse::Done));
        assert!(matches!(
            net.ask(&keepers[8], put),
            Ok(PastResponse::Refused(Refusal::NotAuthorised(_)))
        ));
    }
}
