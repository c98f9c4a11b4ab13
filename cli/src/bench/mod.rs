//! `cairn bench`: benchmarks that run real node processes on this machine.
//!
//! - `churn` ([`churn`]): nodes killed and started at random while readers verify files.
//! - `mount` ([`mount`]): a mount of a volume against `cairn put`/`get` of the same file.

mod churn;
mod mount;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cairn_api::client::ApiClient;
use cairn_testkit::process::{self, NodeSpec, Stop};
use sha2::{Digest, Sha256};

/// `cairn bench ...`.
#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand)]
enum BenchCommand {
    /// Churn: store files on N node processes, kill and start nodes at random while
    /// readers verify files, then wait for repair and read everything once more.
    Churn(churn::ChurnArgs),
    /// The filesystem: sequential write and read of one big file through `cairn mount`
    /// against `cairn put`/`get` of the same bytes in the same run, small-file creates
    /// and stats per second, and the mount process's peak memory.
    Mount(mount::MountBenchArgs),
}

/// `cairn bench`.
pub fn bench_command(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Churn(args) => churn::churn(args),
        BenchCommand::Mount(args) => mount::mount_bench(args),
    }
}

/// How the bench's node processes are run.
#[derive(Clone, Copy)]
pub(crate) struct NodeOptions {
    /// Overlay tick in milliseconds.
    pub tick_ms: u64,
    /// Data fragments per block of the node's API default.
    pub k: u16,
    /// Parity fragments per block of the node's API default.
    pub m: u16,
}

/// A node process of the bench, killed with SIGKILL (a crash: churn's node deaths)
/// and reaped on drop. Started and supervised by `cairn_testkit::process`.
pub(crate) struct NodeProcess {
    _process: process::NodeProcess,
    /// Its data directory.
    pub data: PathBuf,
    /// Its overlay address.
    pub listen: String,
    /// A client of its API.
    pub api: ApiClient,
}

/// Starts `cairn node run` with an API and waits (bounded) for its address and API
/// lines; its stderr goes to a log beside its data dir (appended across restarts), whose
/// end an error shows.
pub(crate) fn spawn_node(
    exe: &Path,
    data: &Path,
    listen: &str,
    bootstrap: Option<&str>,
    options: &NodeOptions,
) -> anyhow::Result<NodeProcess> {
    let spec = NodeSpec {
        listen: listen.to_string(),
        api: true,
        args: [
            "--tick-ms".to_string(),
            options.tick_ms.to_string(),
            "-k".to_string(),
            options.k.to_string(),
            "-m".to_string(),
            options.m.to_string(),
            // One machine: keys in milliseconds, not a second per node.
            "--key-difficulty".to_string(),
            cairn_daemon::LOCAL_KEY_DIFFICULTY.0.to_string(),
        ]
        .to_vec(),
        on_drop: Stop::Kill,
        ..NodeSpec::default()
    };
    let node = process::NodeProcess::start(exe, data, &spec, bootstrap)?;
    let api = node.client().context("the node printed no API address")?;
    Ok(NodeProcess {
        data: node.data.clone(),
        listen: node.listen.clone(),
        api,
        _process: node,
    })
}

/// Waits (at most 30 s) until the gateway knows the other `nodes - 1` nodes, so that
/// the leaf sets are full before anything is stored; if they are not, says so and
/// goes on (a bench with a slow start still measures something).
pub(crate) fn settle(gateway: &NodeProcess, nodes: usize) {
    if let Err(e) = process::wait_knows(&gateway.api, nodes, Duration::from_secs(30)) {
        eprintln!("warning: going on before the network settled: {e}");
    }
}

/// A writer that counts and hashes what it is given (a get verified without keeping it).
#[derive(Default)]
pub(crate) struct HashingWriter {
    hasher: Sha256,
    /// Bytes written so far.
    pub bytes: u64,
}

impl HashingWriter {
    /// The SHA-256 of everything written.
    pub fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
