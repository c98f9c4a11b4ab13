//! The shape of every PAST client operation: a sans-IO state machine that is told what
//! the network answered and says what to ask next, like the overlay's
//! `Overlay::handle(now, event) -> actions`.
//!
//! Owns: [`Operation`], its inputs ([`Input`]) and outputs ([`Progress`],
//! [`Command`]), and [`AskId`]. The daemon drives an operation over the transport
//! (`cairn_daemon`'s `drive`), the simulator over its event queue, and unit tests by
//! hand: the same decisions in all three.
//!
//! May use: the PAST wire types ([`crate::PastRequest`], [`crate::PastResponse`],
//! [`crate::NodeAddress`]) and `cairn_core`'s ids.
//!
//! # The contract
//! - [`Operation::start`] is called once, first.
//! - Every [`Command`] gets exactly one answer fed back through [`Operation::handle`]:
//!   [`Input::Located`] for a [`Command::Locate`], [`Input::Answered`] with the same
//!   [`AskId`] for a [`Command::Ask`], [`Input::Paced`] with the same [`AskId`] for a
//!   [`Command::Pace`]. A failure of the driver's (unreachable, timed out, stopped) is
//!   an answer too, as `Err(E)`.
//! - Only one [`Command::Locate`] is outstanding at a time (its answer names no
//!   request); asks and paces may be outstanding together, and are answered in any
//!   order.
//! - [`Command::Pace`] is how an operation that moves repair traffic (maintenance)
//!   keeps to the node's budget without owning a clock: it announces `bytes` it is
//!   about to move (or has just received) and waits for [`Input::Paced`]. The driver
//!   answers once the bytes fit its budget (the daemon's token bucket); a driver
//!   without a budget (the unit tests, a simulator that does not model bandwidth)
//!   answers at once. A pace never fails.
//! - [`Operation::handle`] may do CPU work (maintenance decodes and re-encodes a block
//!   when it has its `k` fragments): a driver on an async runtime runs `handle` where
//!   blocking is allowed (the daemon's maintenance drives on the blocking pool).
//! - An operation returns [`Progress::Done`] once it has decided, at the latest when
//!   every command it issued has been answered: a driver with nothing outstanding and
//!   no decision has found a bug, and says so through [`Operation::stalled`].
//! - Once done, the driver drops whatever is still outstanding.

use cairn_core::id::PlacementKey;

use crate::{NodeAddress, PastRequest, PastResponse};

/// Which of an operation's requests an answer belongs to (unique within the operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AskId(pub u32);

/// What an operation wants the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Find the `count` live nodes closest to `key`, closest first, and feed them back
    /// as [`Input::Located`].
    Locate {
        /// The key.
        key: PlacementKey,
        /// How many nodes.
        count: u16,
    },
    /// Send `request` to `to` and feed its answer back as [`Input::Answered`].
    Ask {
        /// Names the answer.
        ask: AskId,
        /// The node asked.
        to: NodeAddress,
        /// The request.
        request: PastRequest,
    },
    /// Wait until `bytes` more of repair traffic fit the node's budget, then feed back
    /// [`Input::Paced`] (at once where there is no budget).
    Pace {
        /// Names the answer.
        ask: AskId,
        /// Bytes about to move, or just received.
        bytes: u64,
    },
}

/// What the driver feeds an operation; `E` is the driver's failure (the daemon's
/// `GatewayError`, the simulator's own).
#[derive(Debug)]
pub enum Input<E> {
    /// The answer to [`Command::Locate`].
    Located(Result<Vec<NodeAddress>, E>),
    /// The answer to [`Command::Ask`] `ask`.
    Answered(AskId, Result<PastResponse, E>),
    /// The budget allows what [`Command::Pace`] `ask` announced.
    Paced(AskId),
}

/// What an operation does next.
#[derive(Debug)]
#[must_use]
pub enum Progress<T> {
    /// Carry these out (possibly none: the operation waits for outstanding answers).
    Continue(Vec<Command>),
    /// Decided; drop whatever is outstanding.
    Done(T),
}

/// A PAST client operation as a state machine (see the module's contract).
pub trait Operation {
    /// What it decides.
    type Output;
    /// The driver's failure type, fed back in place of an answer.
    type Failure;

    /// The first commands.
    fn start(&mut self) -> Progress<Self::Output>;

    /// One answer.
    fn handle(&mut self, input: Input<Self::Failure>) -> Progress<Self::Output>;

    /// The driver has nothing outstanding and no decision: a bug in the operation,
    /// turned into a failure rather than a hang.
    fn stalled(&mut self) -> Self::Output;
}

/// Hands out [`AskId`]s in order.
#[derive(Clone, Debug, Default)]
pub struct AskIds(u32);

impl AskIds {
    /// The next unused id.
    pub fn next_id(&mut self) -> AskId {
        let id = AskId(self.0);
        self.0 = self.0.wrapping_add(1);
        id
    }
}
