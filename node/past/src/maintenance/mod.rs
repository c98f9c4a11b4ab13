//! Maintenance of each placement key's redundancy (`docs/repair.md`), sans-IO: what the
//! coordinator of a key decides, and what a holder checks before it obeys.
//!
//! Owns, one file each:
//! - [`planner`]: the pure decisions ([`plan`], [`decide_authority`], the digests of the
//!   slow pass, [`affected_ranges`]);
//! - [`reconcile`]: [`KeyReconcile`], one key's reconciliation as its coordinator runs
//!   it (holdings, authority, plan, regeneration, handoff, release, forget), an
//!   [`crate::operation::Operation`];
//! - [`orders`]: the holder's side of `Handoff`, `Release` and `DropPointer`
//!   ([`Order`], checked by [`OrderCheck`], an [`crate::operation::Operation`], then
//!   applied with [`crate::Holder::apply`]);
//! - [`schedule`]: [`MaintenanceSchedule`], when a node looks at which key (debounced
//!   leaf-set changes, the slow pass and its summaries, nudges, retries of unsettled
//!   keys), with the coordinator's memory and the keeper status cache;
//! - [`receipt_names`], the receipt check both sides make.
//!
//! No clock (time comes in as an argument), no store access inside a machine, no
//! randomness: the daemon (`cairn_daemon`'s maintenance) and the simulator drive the
//! schedule and carry out its actions (the daemon over its tasks, the simulator over its
//! event queue), and the unit tests drive them over a `TestNet`.
//!
//! May use: the crate's wire types, [`crate::operation`], [`crate::records`],
//! [`crate::Holder`] (only [`schedule`]'s store helpers, which a driver calls),
//! `cairn_core::{crypto, erasure, id}`.

pub mod orders;
pub mod planner;
pub mod reconcile;
pub mod schedule;

use cairn_core::crypto::{Signed, StoreReceipt};
use cairn_core::id::{FragmentHash, NodeId, PlacementKey};

pub use orders::{Action, Change, Order, OrderCheck};
pub use planner::{
    Authority, FileStatus, Observed, Plan, Step, affected_ranges, decide_authority,
    holdings_digest, plan, summary_digest,
};
pub use reconcile::{Done, KeyReconcile, KnownStatuses, Reconciled, SeenHoldings, Unsettled};
pub use schedule::{
    MAX_NUDGE_KEYS, MAX_PENDING_KEYS, MaintenanceSchedule, ScheduleAction, ScheduleConfig,
    held_digests, held_keys_in,
};

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
