//! Child processes of the `cairn` binary, given its path: any process whose stdout
//! lines are awaited ([`ChildProcess`]), a `cairn node run` ([`NodeProcess`]), a
//! `cairn devnet` ([`Devnet`]), and N node processes shaped like the in-process
//! cluster ([`ProcessCluster`]). Every child is stopped and reaped on drop, on every
//! path: SIGTERM first and a bounded wait, then SIGKILL ([`Stop`]).
//!
//! Nothing here is test-only: `cairn bench` (shipped in the binary) runs its node
//! processes with it. Uses `std::process`, `cairn-api` (the client of a node's API)
//! and `sh -c kill` for SIGTERM (the workspace forbids `unsafe`, and adding rustix's
//! `process` feature would rebuild every crate that uses rustix).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use cairn_api::StatusAnswer;
use cairn_api::client::ApiClient;

use crate::wait::{WaitTimeout, Waited, wait_until};

/// How long a process may take to print the line it is awaited for.
pub const START_WITHIN: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// How a child is stopped when its handle is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, up to this long to exit, then SIGKILL.
    Terminate(Duration),
    /// SIGKILL at once, as a crash (the churn bench's node deaths).
    Kill,
}

/// Why a child process did not get going.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be run at all.
    #[error("starting {what}: {source}")]
    Spawn {
        /// The process, as named by its starter.
        what: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The process ran but did not print the awaited line in time.
    #[error("{what} printed no line starting with {prefix:?} within {within:?}{log_tail}")]
    Silent {
        /// The process.
        what: String,
        /// The start of the awaited line.
        prefix: String,
        /// How long it was given.
        within: Duration,
        /// The end of its log (stderr), if it has one.
        log_tail: String,
    },
    /// The process closed its stdout (exited) before printing the awaited line.
    #[error("{what} exited ({status}) before printing a line starting with {prefix:?}{log_tail}")]
    Exited {
        /// The process.
        what: String,
        /// The start of the awaited line.
        prefix: String,
        /// Its exit status, or that it still runs.
        status: String,
        /// The end of its log (stderr), if it has one.
        log_tail: String,
    },
}

/// A child process whose stdout is read line by line for its whole life (it never
/// blocks on a full pipe); stopped and reaped on drop as its [`Stop`] says.
pub struct ChildProcess {
    child: Child,
    what: String,
    lines: mpsc::Receiver<String>,
    /// Lines received while waiting for another one.
    seen: Vec<String>,
    log: Option<PathBuf>,
    on_drop: Stop,
    /// Whether SIGTERM was sent already.
    termed: bool,
}

impl ChildProcess {
    /// Runs `command` (stdin empty, stdout read here, stderr appended to `log` or
    /// discarded). `what` names it in errors. Dropping it terminates it.
    pub fn spawn(
        what: impl Into<String>,
        mut command: Command,
        log: Option<&Path>,
    ) -> Result<ChildProcess, ProcessError> {
        let what = what.into();
        let spawn_error = |source| ProcessError::Spawn {
            what: what.clone(),
            source,
        };
        let stderr = match log {
            Some(path) => Stdio::from(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(spawn_error)?,
            ),
            None => Stdio::null(),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(spawn_error)?;
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(ChildProcess {
            child,
            what,
            lines,
            seen: Vec::new(),
            log: log.map(Path::to_path_buf),
            on_drop: Stop::Terminate(TERM_GRACE),
            termed: false,
        })
    }

    /// Sets how the process is stopped when this handle is dropped.
    pub fn set_on_drop(&mut self, stop: Stop) {
        self.on_drop = stop;
    }

    /// Waits (at most `within`) for a stdout line starting with `prefix`, including
    /// lines that came while another line was awaited; the rest of the line, trimmed.
    /// A blocking receive with a deadline, not a poll.
    pub fn wait_for_line(
        &mut self,
        prefix: &str,
        within: Duration,
    ) -> Result<String, ProcessError> {
        if let Some(at) = self.seen.iter().position(|l| l.starts_with(prefix)) {
            let line = self.seen.remove(at);
            return Ok(line[prefix.len()..].trim().to_string());
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => match line.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.trim().to_string()),
                    None => self.seen.push(line),
                },
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ProcessError::Silent {
                        what: self.what.clone(),
                        prefix: prefix.to_string(),
                        within,
                        log_tail: self.log_tail(),
                    });
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = match self.wait_exit(Duration::from_secs(1)) {
                        Ok(status) => status.to_string(),
                        Err(_) => "stdout closed, still running".to_string(),
                    };
                    return Err(ProcessError::Exited {
                        what: self.what.clone(),
                        prefix: prefix.to_string(),
                        status,
                        log_tail: self.log_tail(),
                    });
                }
            }
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The last 20 lines of its log, after a heading; empty without a log.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("; the end of {}:\n{tail}", path.display())
    }

    /// Its exit status if it has exited (and is now reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (at most `within`) for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, WaitTimeout> {
        let what = format!("{} to exit", self.what);
        let child = &mut self.child;
        wait_until(within, &what, || match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err("still running".to_string()),
            Err(e) => Err(e.to_string()),
        })
        .map(|waited| waited.value)
    }

    /// SIGKILL now (a crash), then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaped either way.
    pub fn terminate(&mut self, grace: Duration) {
        if self.try_wait().is_some() {
            return;
        }
        if !self.termed {
            self.signal_term();
        }
        if self.wait_exit(grace).is_err() {
            self.kill();
        }
    }

    /// Sends SIGTERM without waiting (see [`ChildProcess::terminate`]).
    pub fn signal_term(&mut self) {
        self.termed = true;
        // The shell's own `kill` (a builtin of every `sh`), so no procps is needed.
        let sent = Command::new("sh")
            .args(["-c", "kill -TERM \"$0\"", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            let _ = self.child.kill();
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        match self.on_drop {
            Stop::Terminate(grace) => self.terminate(grace),
            Stop::Kill => self.kill(),
        }
    }
}

/// How one `cairn node run` is started.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Words run before the binary (e.g. `ip netns exec NAME`); empty to run it
    /// directly.
    pub launcher: Vec<String>,
    /// The overlay address to bind (`127.0.0.1:0` by default).
    pub listen: String,
    /// Whether the node serves its API (on `127.0.0.1:0`).
    pub api: bool,
    /// Further arguments (`--tick-ms 300 --key-difficulty 8` by default: the local
    /// key puzzle, [`cairn_daemon::LOCAL_KEY_DIFFICULTY`]).
    pub args: Vec<String>,
    /// How the process is stopped when dropped.
    pub on_drop: Stop,
}

impl Default for NodeSpec {
    fn default() -> NodeSpec {
        NodeSpec {
            launcher: Vec::new(),
            listen: "127.0.0.1:0".to_string(),
            api: false,
            args: [
                "--tick-ms".to_string(),
                "300".to_string(),
                "--key-difficulty".to_string(),
                cairn_daemon::LOCAL_KEY_DIFFICULTY.0.to_string(),
            ]
            .to_vec(),
            on_drop: Stop::Terminate(TERM_GRACE),
        }
    }
}

/// A running `cairn node run`, with what it printed when it started.
pub struct NodeProcess {
    process: ChildProcess,
    /// Its node id (base32), as it printed it.
    pub id: String,
    /// Its overlay address, as it printed it (give it to `--listen` to restart there).
    pub listen: String,
    /// Its API address (`host:port`), if it serves one.
    pub api: Option<String>,
    /// Its data directory.
    pub data: PathBuf,
}

impl NodeProcess {
    /// Starts `binary node run --data DATA` as `spec` says, joining through
    /// `bootstrap`; its stderr is appended to `DATA.log` (across restarts). Waits
    /// (at most [`START_WITHIN`]) for its address line and, with an API, its API line.
    pub fn start(
        binary: &Path,
        data: &Path,
        spec: &NodeSpec,
        bootstrap: Option<&str>,
    ) -> Result<NodeProcess, ProcessError> {
        let what = format!("the node in {}", data.display());
        std::fs::create_dir_all(data).map_err(|source| ProcessError::Spawn {
            what: what.clone(),
            source,
        })?;
        let mut command = match spec.launcher.split_first() {
            Some((program, words)) => {
                let mut command = Command::new(program);
                command.args(words).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .env_remove("CAIRN_API")
            .args(["node", "run", "--data"])
            .arg(data)
            .args(["--listen", &spec.listen])
            .args(&spec.args);
        if spec.api {
            command.args(["--api", "127.0.0.1:0"]);
        }
        if let Some(bootstrap) = bootstrap {
            command.args(["--bootstrap", bootstrap]);
        }
        let log = data.with_extension("log");
        let mut process = ChildProcess::spawn(what, command, Some(&log))?;
        process.set_on_drop(spec.on_drop);
        // "cairn node ID listening on ADDR"
        let line = process.wait_for_line("cairn node ", START_WITHIN)?;
        let id = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let listen = line.rsplit(' ').next().unwrap_or_default().to_string();
        let api = if spec.api {
            Some(process.wait_for_line("api on http://", START_WITHIN)?)
        } else {
            None
        };
        Ok(NodeProcess {
            process,
            id,
            listen,
            api,
            data: data.to_path_buf(),
        })
    }

    /// A client of its API (None without one).
    pub fn client(&self) -> Option<ApiClient> {
        self.api.as_deref().map(|addr| ApiClient::new(addr, None))
    }

    /// The process itself (to signal it or wait for it).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// Waits (at most `within`) until the node behind `client` knows `nodes - 1` other
/// nodes, so that leaf sets are full before anything is stored; its last status.
pub fn wait_knows(
    client: &ApiClient,
    nodes: usize,
    within: Duration,
) -> Result<Waited<StatusAnswer>, WaitTimeout> {
    let what = format!(
        "the node at {} to know {} other nodes",
        client.base(),
        nodes.saturating_sub(1)
    );
    wait_until(within, &what, || match client.status() {
        Ok(status) if status.known_nodes + 1 >= nodes => Ok(status),
        Ok(status) => Err(format!("it knows {}", status.known_nodes)),
        Err(e) => Err(e.to_string()),
    })
}

/// A `cairn devnet` process (N nodes in one process) and its API address.
pub struct Devnet {
    process: ChildProcess,
    /// Its API address (`host:port`).
    pub api: String,
}

impl Devnet {
    /// Runs `command` (the `cairn` binary, with whatever environment the caller
    /// wants) with `devnet --nodes N --dir DIR --api 127.0.0.1:0`, stderr appended to
    /// `log` if given, and waits for its API line.
    pub fn start(
        mut command: Command,
        nodes: usize,
        dir: &Path,
        log: Option<&Path>,
    ) -> Result<Devnet, ProcessError> {
        command
            .args(["devnet", "--nodes", &nodes.to_string(), "--dir"])
            .arg(dir)
            .args(["--api", "127.0.0.1:0"]);
        let what = format!("`cairn devnet` of {nodes} nodes in {}", dir.display());
        let mut process = ChildProcess::spawn(what, command, log)?;
        let api = process.wait_for_line("api on http://", START_WITHIN)?;
        Ok(Devnet { process, api })
    }

    /// A client of its API.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(&self.api, None)
    }

    /// The process itself.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// The end of its log (empty without one).
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// Where a [`ProcessCluster`] keeps its nodes' directories.
enum Root {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

type AdjustSpec<'a> = Box<dyn FnMut(usize, &mut NodeSpec) + 'a>;

/// How to start a [`ProcessCluster`].
pub struct ProcessClusterBuilder<'a> {
    binary: PathBuf,
    nodes: usize,
    dir: Option<PathBuf>,
    adjust: AdjustSpec<'a>,
}

impl<'a> ProcessClusterBuilder<'a> {
    /// Keep the nodes' directories under `dir` (kept afterwards) instead of a temp
    /// dir (removed on drop).
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// `adjust(i, spec)` may change node `i`'s [`NodeSpec`] (after the defaults: an
    /// API on node 0 only).
    pub fn configure(mut self, adjust: impl FnMut(usize, &mut NodeSpec) + 'a) -> Self {
        self.adjust = Box::new(adjust);
        self
    }

    /// Starts node 0, then the others joining through it, each waited for until it
    /// printed its address (and API). Does not wait for the leaf sets: an API may be
    /// out of this process's reach (a network namespace); see [`ProcessCluster::settle`].
    pub fn start(mut self) -> Result<ProcessCluster, ProcessError> {
        let root = match &self.dir {
            Some(dir) => Root::Given(dir.clone()),
            None => Root::Temp(tempfile::tempdir().map_err(|source| ProcessError::Spawn {
                what: "a temp dir for node processes".to_string(),
                source,
            })?),
        };
        let mut cluster = ProcessCluster {
            binary: self.binary,
            root,
            specs: Vec::new(),
            nodes: Vec::new(),
        };
        for i in 0..self.nodes {
            let mut spec = NodeSpec {
                api: i == 0,
                ..NodeSpec::default()
            };
            (self.adjust)(i, &mut spec);
            let bootstrap = cluster
                .nodes
                .first()
                .and_then(|n| n.as_ref())
                .map(|n| n.listen.clone());
            let data = cluster.root().join(format!("node-{i}"));
            let node = NodeProcess::start(&cluster.binary, &data, &spec, bootstrap.as_deref())?;
            // A restart binds the address the node got.
            spec.listen = node.listen.clone();
            cluster.specs.push(spec);
            cluster.nodes.push(Some(node));
        }
        Ok(cluster)
    }
}

/// N `cairn node run` processes, each with its own data dir, joined through node 0;
/// stopped (SIGTERM, bounded, then SIGKILL) and reaped on drop, their directories
/// removed unless [`ProcessClusterBuilder::dir`] chose them.
pub struct ProcessCluster {
    binary: PathBuf,
    root: Root,
    specs: Vec<NodeSpec>,
    nodes: Vec<Option<NodeProcess>>,
}

impl ProcessCluster {
    /// `n` node processes of `binary`, node 0 with an API.
    pub fn start(binary: &Path, n: usize) -> Result<ProcessCluster, ProcessError> {
        ProcessCluster::builder(binary, n).start()
    }

    /// A builder for `n` node processes of `binary`.
    pub fn builder<'a>(binary: &Path, n: usize) -> ProcessClusterBuilder<'a> {
        ProcessClusterBuilder {
            binary: binary.to_path_buf(),
            nodes: n,
            dir: None,
            adjust: Box::new(|_, _| {}),
        }
    }

    /// The directory holding the nodes' data dirs and logs.
    pub fn root(&self) -> &Path {
        match &self.root {
            Root::Temp(dir) => dir.path(),
            Root::Given(dir) => dir,
        }
    }

    /// How many nodes it has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (panics if it is down).
    pub fn node(&self, i: usize) -> &NodeProcess {
        match &self.nodes[i] {
            Some(node) => node,
            None => panic!("node process {i} is down"),
        }
    }

    /// A client of node `i`'s API (panics if it is down or has none).
    pub fn client(&self, i: usize) -> ApiClient {
        self.node(i)
            .client()
            .unwrap_or_else(|| panic!("node process {i} serves no API"))
    }

    /// Kills node `i` with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.process().kill();
        }
    }

    /// Stops node `i` with SIGTERM (it leaves the overlay), SIGKILL if it lingers.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.process().terminate(TERM_GRACE);
        }
    }

    /// Starts node `i` again (stopping it first if it runs) on its data dir and
    /// overlay address, joining through another running node; the restarted node.
    pub fn restart(&mut self, i: usize) -> Result<&NodeProcess, ProcessError> {
        self.stop(i);
        let bootstrap = self
            .nodes
            .iter()
            .enumerate()
            .find_map(|(j, n)| n.as_ref().filter(|_| j != i).map(|n| n.listen.clone()));
        let spec = self.specs[i].clone();
        let data = self.root().join(format!("node-{i}"));
        let node = NodeProcess::start(&self.binary, &data, &spec, bootstrap.as_deref())?;
        Ok(self.nodes[i].insert(node))
    }

    /// Waits (at most `within`) until every running node with an API knows every
    /// other node of the cluster.
    pub fn settle(&self, within: Duration) -> Result<(), WaitTimeout> {
        for node in self.nodes.iter().flatten() {
            if let Some(client) = node.client() {
                wait_knows(&client, self.nodes.len(), within)?;
            }
        }
        Ok(())
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // Every node gets SIGTERM first, so that they stop side by side.
        let mut running: Vec<NodeProcess> =
            self.nodes.iter_mut().filter_map(Option::take).collect();
        for node in &mut running {
            if node.process.on_drop != Stop::Kill {
                node.process.signal_term();
            }
        }
        drop(running);
    }
}
