//! The one wait of the kit: poll a condition until it holds, or fail at a deadline
//! with what was awaited and what was last seen. Never a fixed sleep.
//!
//! Uses only `std`.

use std::fmt;
use std::time::{Duration, Instant};

/// The first pause between two looks at a condition; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(10);
/// The longest pause between two looks at a condition.
const MAX_POLL: Duration = Duration::from_millis(200);

/// What a successful [`wait_until`] returns: the check's value and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waited<T> {
    /// What the check returned when the condition held.
    pub value: T,
    /// From the call to the look that saw the condition hold.
    pub took: Duration,
}

/// A condition that did not hold by its deadline.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("waited {within:?} for {what}; last seen: {last}")]
pub struct WaitTimeout {
    /// What was awaited, as the caller named it.
    pub what: String,
    /// The deadline, from the start of the wait.
    pub within: Duration,
    /// What the last look at the condition saw.
    pub last: String,
}

// `unwrap()` and `expect()` print `Debug`: make that the readable message too.
impl fmt::Debug for WaitTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Polls `check` until it returns `Ok`, for at most `within` (the deadline, counted
/// from now). `check` returns `Err(observation)` while the condition does not hold;
/// at the deadline the error names `what` and the last observation.
///
/// `check` runs at once, then after pauses of 10 ms doubling to 200 ms, and once
/// more at the deadline. Tests `unwrap()` the result; a shipped caller (`cairn bench`)
/// reports the error.
pub fn wait_until<T, O: fmt::Display>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, O>,
) -> Result<Waited<T>, WaitTimeout> {
    let started = Instant::now();
    let deadline = started + within;
    let mut pause = FIRST_POLL;
    loop {
        let last = match check() {
            Ok(value) => {
                return Ok(Waited {
                    value,
                    took: started.elapsed(),
                });
            }
            Err(observation) => observation,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitTimeout {
                what: what.to_string(),
                within,
                last: last.to_string(),
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}
