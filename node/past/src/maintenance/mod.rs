//! Maintenance of each placement key's redundancy (`docs/repair.md`), sans-IO: what the
//! coordinator of a key decides, and what a holder checks before it obeys.
//!
//! Owns, one file each:
//! - [`planner`]: the pure decisions ([`plan`], [`decide_authority`], the digests of the
//!   slow pass, [`affected_ranges`]);
//! - [`reconcile`]: [`KeyReconcile`], one key's reconciliation as its coordinator runs
//!   it (holdings, authority, plan, regeneration, handoff, release, forget), an
//!   [`crate::operation::Operation`];
//! - [`orders`]: the holder's side of `Handoff`, `Release`, `DropPointer` and `Forget`
//!   ([`Order`], checked by [`OrderCheck`], an [`crate::operation::Operation`], then
//!   applied with [`crate::Holder::apply`]);
//! - [`receipt_names`], the receipt check both sides make.
//!
//! No clock (time comes in as an argument), no store access inside a machine, no
//! randomness: the daemon (`cairn_daemon`'s maintenance) schedules and drives them, the
//! simulator drives them over its event queue, and the unit tests over a `TestNet`.
//!
//! May use: the crate's wire types, [`crate::operation`], [`crate::records`],
//! `cairn_core::{crypto, erasure, id}`.

pub mod orders;
pub mod planner;
pub mod reconcile;

use cairn_core::crypto::{Signed, StoreReceipt};
use cairn_core::id::{FragmentHash, NodeId, PlacementKey};

pub use orders::{Change, Order, OrderCheck};
pub use planner::{
    Authority, FileStatus, Observed, Plan, Step, affected_ranges, decide_authority,
    holdings_digest, plan, summary_digest,
};
pub use reconcile::{Done, KeyReconcile, KnownStatuses, Reconciled, SeenHoldings, Unsettled};

/// Whether `bytes` is a valid receipt signed by `node` for exactly this fragment (key,
/// index, hash). The file it names is not checked: a repair store's receipt names the
/// certified file, which the asker does not need to match.
pub fn receipt_names(
    bytes: &[u8],
    node: NodeId,
    key: PlacementKey,
    index: u16,
    hash: FragmentHash,
) -> bool {
    Signed::<StoreReceipt>::from_bytes(bytes)
        .ok()
        .and_then(|signed| signed.verify().ok().cloned())
        .is_some_and(|r| {
            r.node == node && r.placement_key == key && r.index == index && r.fragment_hash == hash
        })
}
