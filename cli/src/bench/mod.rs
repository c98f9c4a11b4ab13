//! `cairn bench`: benchmarks that run real node processes on this machine.
//!
//! - `churn` ([`churn`]): nodes killed and started at random while readers verify files.
//! - `mount` ([`mount`]): a mount of a volume against `cairn put`/`get` of the same file.

mod churn;
mod mount;

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_api::client::ApiClient;
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
pub(crate) struct NodeOptions {
    /// Overlay tick in milliseconds.
    pub tick_ms: u64,
    /// Data fragments per block of the node's API default.
    pub k: u16,
    /// Parity fragments per block of the node's API default.
    pub m: u16,
}

/// A node process, killed (SIGKILL) and reaped on drop.
pub(crate) struct NodeProcess {
    child: Child,
    /// Its data directory.
    pub data: PathBuf,
    /// Its overlay address.
    pub listen: String,
    /// A client of its API.
    pub api: ApiClient,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cairn node run` and waits (bounded) for its address and API lines.
pub(crate) fn spawn_node(
    exe: &Path,
    data: &Path,
    listen: &str,
    bootstrap: Option<&str>,
    options: &NodeOptions,
) -> anyhow::Result<NodeProcess> {
    let mut command = Command::new(exe);
    command
        .args(["node", "run", "--data"])
        .arg(data)
        .args(["--listen", listen, "--api", "127.0.0.1:0"])
        .args(["--tick-ms", &options.tick_ms.to_string()])
        .args(["-k", &options.k.to_string(), "-m", &options.m.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Some(bootstrap) = bootstrap {
        command.args(["--bootstrap", bootstrap]);
    }
    // The node's own errors go to a log beside its data (appended across restarts), so
    // that a node that will not start says why.
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let log_path = data.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    command.stderr(log);
    let mut child = command.spawn().context("starting a node process")?;
    let stdout = child.stdout.take().context("the node's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut process = NodeProcess {
        child,
        data: data.to_path_buf(),
        listen: String::new(),
        api: ApiClient::new("127.0.0.1:1", None),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut addr, mut api) = (None, None);
    while addr.is_none() || api.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|e| {
            let why = match e {
                mpsc::RecvTimeoutError::Timeout => "did not start within 60 s",
                mpsc::RecvTimeoutError::Disconnected => "exited before it started",
            };
            anyhow::anyhow!(
                "the node in {} {why}; the end of {}:\n{}",
                data.display(),
                log_path.display(),
                log_tail(&log_path)
            )
        })?;
        if let Some(rest) = line.strip_prefix("cairn node ") {
            addr = rest.rsplit(' ').next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("api on http://") {
            api = Some(rest.trim().to_string());
        }
    }
    process.listen = addr.unwrap_or_default();
    process.api = ApiClient::new(api.as_deref().unwrap_or_default(), None);
    Ok(process)
}

/// The last lines of a node's log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Waits (at most 30 s) until the gateway knows the other `nodes - 1` nodes, so that
/// the leaf sets are full before anything is stored.
pub(crate) fn settle(gateway: &NodeProcess, nodes: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match gateway.api.status() {
            Ok(status) if status.known_nodes + 1 >= nodes => return,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
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
