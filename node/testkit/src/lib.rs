//! cairn's one test kit: every multi-node test and benchmark starts its nodes and
//! waits for them here.
//!
//! - [`Cluster`] (`cluster`): N real nodes in this process on loopback, each with its
//!   own temp dir, runtime and `tracing` span; stopped and removed on drop.
//! - [`process`]: child processes of the `cairn` binary, given its path: a node
//!   process, a `cairn devnet`, and [`ProcessCluster`], N node processes shaped like
//!   [`Cluster`]; SIGTERM, a bounded wait, then SIGKILL and reaping on drop.
//! - [`wait_until`] (`wait`): the one wait, "until this holds, or fail at a deadline
//!   naming what and the last observation"; never a fixed sleep.
//! - [`fixtures`]: deterministic node and owner keys, the certified put and get of a
//!   test file, seeded bytes, percentiles.
//!
//! Who may depend on it: the integration tests (`tests/`), the CLI's tests, the
//! benches, and `cairn bench` in the shipped `cairn` binary. The last is deliberate:
//! `cairn bench` runs node processes and waits for them, exactly what [`process`] and
//! [`wait_until`] do, and a second copy in the CLI is what this crate removed. Nothing
//! the bench uses is test-only: `process` is a plain supervisor of `cairn` child
//! processes (start, read lines, stop, reap) and `wait_until` returns an error
//! rather than panicking; the in-process [`Cluster`] (which panics, as tests want)
//! adds no dependency the CLI does not already have (`cairn-daemon`, `tokio`).
//!
//! Uses `cairn-core`, `cairn-api` and `cairn-daemon` (never the other way round: no
//! crate under `node/` may depend on this one), `tokio`, `tempfile`, `tracing`.

pub mod cluster;
pub mod fixtures;
pub mod process;
pub mod wait;

pub use cluster::{Cluster, ClusterBuilder};
pub use process::{ChildProcess, Devnet, NodeProcess, NodeSpec, ProcessCluster, Stop};
pub use wait::{WaitTimeout, Waited, wait_until};

/// Installs a `tracing` subscriber once per process (later calls do nothing): the
/// filter is `RUST_LOG` (default `warn`), output goes through the test harness's
/// capture, and each line carries the `node{i=.. id=..}` span of the node it is from.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
