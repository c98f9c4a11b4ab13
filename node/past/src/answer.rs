//! What a holder answers: the one place that maps a [`PastRequest`] to the
//! [`Holder`]'s checks and store, so the daemon, the simulator and the unit tests
//! answer alike.
//!
//! Owns: [`Answer`] and [`Holder::answer`].
//!
//! May use: [`crate::Holder`] and the wire types.

use cairn_core::id::NodeId;
use cairn_store::NodeStore;

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
    /// A request that needs more than this node's store (reclaims, which are passed
    /// on, and maintenance): the daemon's to carry out.
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
            other @ (PastRequest::Reclaim { .. }
            | PastRequest::Handoff { .. }
            | PastRequest::Release { .. }
            | PastRequest::DropPointer { .. }
            | PastRequest::Forget { .. }
            | PastRequest::Reconcile { .. }
            | PastRequest::Summary { .. }) => Answer::Elsewhere(other),
        }
    }
}
