//! The test kit's own promises (`cairn-testkit` has no test binary of its own): the
//! wait fails at its deadline naming what and the last observation, percentiles take
//! the nearest rank, seeded bytes repeat, and a child process is stopped on drop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use cairn_testkit::fixtures::{bytes, percentile};
use cairn_testkit::process::ChildProcess;
use cairn_testkit::wait_until;

#[test]
fn a_condition_that_never_holds_names_what_and_the_last_observation() {
    let mut polls = 0;
    let error = wait_until(Duration::from_millis(50), "the impossible", || {
        polls += 1;
        Err::<(), _>(format!("poll {polls}"))
    })
    .unwrap_err();
    assert_eq!(error.what, "the impossible");
    assert_eq!(error.last, format!("poll {polls}"));
    assert!(polls >= 2, "it looked again at the deadline");
    let message = format!("{error:?}");
    assert!(
        message.contains("the impossible") && message.contains("last seen: poll"),
        "{message}"
    );
}

#[test]
fn a_condition_that_holds_at_once_returns_its_value() {
    let waited = wait_until(Duration::ZERO, "nothing", || Ok::<_, String>(7)).unwrap();
    assert_eq!(waited.value, 7);
}

#[test]
fn percentiles_take_the_nearest_rank_and_seeded_bytes_repeat() {
    let sorted = [1.0, 2.0, 3.0, 4.0, 5.0];
    assert_eq!(percentile(&sorted, 0.5), 3.0);
    assert_eq!(percentile(&sorted, 0.99), 5.0);
    assert_eq!(percentile(&sorted, 0.0), 1.0);
    assert!(percentile(&[], 0.5).is_nan());
    assert_eq!(bytes(100, 1), bytes(100, 1));
    assert_ne!(bytes(100, 1), bytes(100, 2));
}

#[test]
fn a_child_prints_its_line_and_is_stopped_with_sigterm_on_drop() {
    let mut command = Command::new("sh");
    command.args(["-c", "echo noise; echo ready at 42; exec sleep 600"]);
    let mut child = ChildProcess::spawn("a shell", command, None).unwrap();
    assert_eq!(
        child
            .wait_for_line("ready at", Duration::from_secs(10))
            .unwrap(),
        "42"
    );
    // An earlier line is still there for a later wait.
    assert_eq!(
        child
            .wait_for_line("noise", Duration::from_secs(1))
            .unwrap(),
        ""
    );
    let pid = child.id();
    drop(child);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the child was stopped and reaped on drop"
    );
}
