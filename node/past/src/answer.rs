//! What a holder answers: the one place that maps a [`PastRequest`] to the
//! [`Holder`]'s checks and store, so the daemon, the simulator and the unit tests
//! answer alike.
//!
//! Owns: [`Answer`], [`Holder::answer`] and [`Holder::apply`] (a checked maintenance
//! order's change to the store).
//!
//! May use: [`crate::Holder`], the wire types and [`crate::maintenance::orders`].

use cairn_core::id::NodeId;
use cairn_store::{NodeStore, StoreError};

use crate::maintenance::{Change, Order};
use crate::{Holder, NodeAddress, PastRequest, PastResponse, Refusal, StoreRequest, UnixSeconds};

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
    /// Answers `request` from this node's store at `now`. `address_of` names where a
    /// node listens (pointers are kept as ids; a pointer whose holder has no known
    /// address is answered as not found).
    pub fn answer(
        &self,
        request: PastRequest,
        now: UnixSeconds,
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
        match request {
            PastRequest::Store(store) => match self.store_fragment(&store, false, now) {
                Ok(receipt) => Answer::Reply(stored(receipt)),
                Err(Refusal::NoRoom { size, free }) => Answer::Divert {
                    request: store,
                    size,
                    free,
                },
                Err(refusal) => Answer::Reply(PastResponse::Refused(refusal)),
            },
            PastRequest::StoreDiverted(store) => {
                reply(self.store_fragment(&store, true, now).map(stored))
            }
            PastRequest::RepairStore(repair) => {
                reply(self.repair_fragment(&repair, now).map(stored))
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
                Answer::Reply(self.put_pointer(&key, index, &holder.id))
            }
            PastRequest::PutCertificate { certificate } => reply(
                self.put_certificate(&certificate, now)
                    .map(|()| PastResponse::Done),
            ),
            PastRequest::GetCertificate { file } => reply(
                self.get_certificate(&file)
                    .map(|certificate| PastResponse::Certificate { certificate }),
            ),
            PastRequest::PutRoot { record } => {
                reply(self.put_root(&record).map(|_| PastResponse::Done))
            }
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
                match self.store().get_fragment(&key, index) {
                    Ok(Some(bytes)) => Answer::Order(Order::Handoff {
                        key,
                        index,
                        bytes,
                        to,
                        authority,
                    }),
                    Ok(None) => Answer::Reply(PastResponse::NotFound),
                    Err(StoreError::Corrupt { .. }) => Answer::Reply(PastResponse::Corrupt),
                    Err(e) => refuse(&e.to_string()),
                }
            }
            PastRequest::Release {
                key,
                index,
                kept_by,
            } => {
                if kept_by.id == self.id() {
                    return refuse("kept by this very node");
                }
                match self.store().fragment_info(&key, index) {
                    Ok(Some(info)) => Answer::Order(Order::Release {
                        key,
                        index,
                        hash: info.hash,
                        kept_by,
                    }),
                    Ok(None) => Answer::Reply(PastResponse::Done),
                    Err(e) => refuse(&e.to_string()),
                }
            }
            PastRequest::DropPointer { key, index } => {
                match self.store().get_pointer(&key, index) {
                    Ok(Some(holder)) => Answer::Order(Order::DropPointer {
                        key,
                        index,
                        holder,
                        address: address_of(&holder),
                    }),
                    Ok(None) => Answer::Reply(PastResponse::Done),
                    Err(e) => refuse(&e.to_string()),
                }
            }
            PastRequest::Forget { reclaim, keys } => match crate::check_reclaim(&reclaim) {
                Ok(order) => Answer::Order(Order::Forget {
                    reclaim,
                    order,
                    keys,
                    keepers: u16::try_from(self.config().certificate_replicas + 2)
                        .unwrap_or(u16::MAX),
                    now,
                }),
                Err(refusal) => Answer::Reply(PastResponse::Refused(refusal)),
            },
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
            Change::Forget { reclaim, keys, .. } => match self.forget(reclaim, keys) {
                Ok(done) => PastResponse::Reclaimed {
                    fragments: done.fragments,
                    bytes: done.bytes,
                },
                Err(refusal) => PastResponse::Refused(refusal),
            },
        }
    }
}
