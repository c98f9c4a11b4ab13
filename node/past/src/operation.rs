//! The shape of every PAST client operation: a sans-IO state machine that is told what
//! the network answered and says what to ask next, like the overlay's
//! `Overlay::handle(now, event) -> actions`.
//!
//! Owns: [`Operation`], its inputs ([`Input`]) and outputs ([`Progress`],
//! [`Command`]), [`AskId`], and [`RepairBudget`], the token bucket a driver answers
//! [`Command::Pace`] from. The daemon drives an operation over the transport
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

use std::time::Duration;

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

/// The repair budget a driver answers [`Command::Pace`] from, sans-IO: a token bucket
/// over bytes at `bytes_per_sec`, with one second of burst. Time is a [`Duration`]
/// since an epoch the driver picks, and must not go backwards. The daemon sleeps until
/// the time [`RepairBudget::take`] returns; the simulator answers the pace then. The
/// same arithmetic in both is what makes a simulated repair as fast as a real one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairBudget {
    /// When the bytes granted so far are paid for (`None`: nothing granted yet).
    next_free: Option<Duration>,
}

impl RepairBudget {
    /// The burst allowed on top of the rate.
    pub const BURST: Duration = Duration::from_secs(1);

    /// Grants `bytes` asked at `now` at `bytes_per_sec` (0: unlimited); returns when
    /// they may go, `now` or later. A nonsense size costs an hour at most, so that it
    /// can neither stall nor overflow the clock.
    pub fn take(&mut self, now: Duration, bytes_per_sec: u64, bytes: u64) -> Duration {
        if bytes_per_sec == 0 {
            return now;
        }
        let cost = Duration::try_from_secs_f64(bytes as f64 / bytes_per_sec as f64)
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(3600));
        let floor = now.saturating_sub(Self::BURST);
        let start = self.next_free.map_or(floor, |next| next.max(floor));
        let next = start.saturating_add(cost);
        self.next_free = Some(next);
        next.saturating_sub(Self::BURST).max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_lets_a_second_of_burst_through_then_spaces_the_rest() {
        // A budget as old as its epoch (a node just started): at 2000 B/s, 2000 bytes
        // go at once and the next 1000 wait half a second.
        let mut budget = RepairBudget::default();
        let start = Duration::ZERO;
        assert_eq!(budget.take(start, 2000, 1000), start);
        assert_eq!(budget.take(start, 2000, 1000), start);
        assert_eq!(budget.take(start, 2000, 1000), Duration::from_millis(500));
        // Idle for a while, it has also earned the second before `now`.
        let mut idle = RepairBudget::default();
        let at = Duration::from_secs(10);
        assert_eq!(idle.take(at, 2000, 4000), at);
        assert_eq!(idle.take(at, 2000, 1000), at + Duration::from_millis(500));
        // Without a budget nothing waits; a nonsense size waits an hour at most.
        assert_eq!(idle.take(at, 0, u64::MAX), at);
        let mut fresh = RepairBudget::default();
        assert!(fresh.take(at, 1, u64::MAX) <= at + Duration::from_secs(3600));
    }
}
