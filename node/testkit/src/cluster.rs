//! A cluster of real nodes on loopback, in this process.
//!
//! Each node binds `127.0.0.1:0`, keeps its data in its own directory under one temp
//! dir, and runs on its own tokio runtime whose threads (workers and blocking pool)
//! stay inside a `tracing` span `node{i=.. id=..}`: every log line says which node
//! speaks. (The daemon spawns plain tokio tasks, which do not inherit a span; a
//! runtime per node gives them one without touching the daemon.) Dropping the
//! cluster stops every node and removes every directory.
//!
//! Uses `cairn-daemon` (the node and its API server), `cairn-api` (the client).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cairn_api::client::ApiClient;
use cairn_core::crypto::KeyPair;
use cairn_core::id::{Difficulty, NodeId};
use cairn_daemon::http::{self as api, ApiConfig, ApiServer};
use cairn_daemon::{Node, NodeConfig};
use tokio::runtime::Runtime;
use tracing::Instrument;

use crate::fixtures::node_key;
use crate::wait::wait_until;

/// The capacity of each node unless the builder says otherwise.
pub const DEFAULT_CAPACITY: u64 = 1 << 30;
/// How long starting nodes may take to fill their leaf sets, and a killed node to
/// release its store.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(30);

type Adjust<'a> = Box<dyn FnMut(usize, &mut NodeConfig) + 'a>;

/// How to start a [`Cluster`]: `Cluster::builder(n).capacity(c).configure(f).start()`.
pub struct ClusterBuilder<'a> {
    nodes: usize,
    capacity: u64,
    adjust: Adjust<'a>,
}

impl<'a> ClusterBuilder<'a> {
    /// Each node's store capacity in bytes ([`DEFAULT_CAPACITY`] unless set).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// `adjust(i, config)` may change node `i`'s configuration before it starts
    /// (after the kit's defaults: a 300 ms overlay tick, bootstrap through node 0, no
    /// key puzzle since the kit's node keys are fixed).
    pub fn configure(mut self, adjust: impl FnMut(usize, &mut NodeConfig) + 'a) -> Self {
        self.adjust = Box::new(adjust);
        self
    }

    /// Starts the nodes one after the other, each joining through node 0, and waits
    /// until the leaf sets settle ([`Cluster::settle`]). Panics if a node does not
    /// start or the leaf sets do not settle.
    pub fn start(mut self) -> Cluster {
        crate::init_logging();
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("creating a temp dir: {e}"));
        let mut cluster = Cluster {
            nodes: Vec::new(),
            servers: Vec::new(),
            root,
        };
        for i in 0..self.nodes {
            let dir = cluster.root.path().join(format!("node-{i}"));
            let mut config = NodeConfig::new(dir, loopback(), self.capacity);
            config.overlay.tick = Duration::from_millis(300);
            // The kit's node keys are fixed bytes ([`node_key`]), which solve no puzzle.
            config.net.key_difficulty = Difficulty::NONE;
            if let Some(first) = cluster.nodes.first().and_then(|n| n.node.as_ref()) {
                config.bootstrap = vec![first.advertised()];
            }
            (self.adjust)(i, &mut config);
            cluster.launch(&node_key(i), config);
        }
        cluster.settle();
        cluster
    }
}

/// One node of a [`Cluster`]: its runtime, its span, the running node (None while
/// killed) and the configuration it restarts with.
struct Member {
    runtime: Option<Runtime>,
    span: tracing::Span,
    node: Option<Node>,
    config: NodeConfig,
    id: NodeId,
}

/// N nodes in this process, each with its own data dir, runtime and log span;
/// stopped and removed on drop.
pub struct Cluster {
    nodes: Vec<Member>,
    /// API servers and the node each serves (stopped with it).
    servers: Vec<(usize, ApiServer)>,
    /// The temp dir holding every node's data dir.
    pub root: tempfile::TempDir,
}

fn loopback() -> SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

impl Cluster {
    /// `n` nodes of [`DEFAULT_CAPACITY`] with the kit's defaults.
    pub fn start(n: usize) -> Cluster {
        Cluster::builder(n).start()
    }

    /// A builder for `n` nodes.
    pub fn builder<'a>(n: usize) -> ClusterBuilder<'a> {
        ClusterBuilder {
            nodes: n,
            capacity: DEFAULT_CAPACITY,
            adjust: Box::new(|_, _| {}),
        }
    }

    /// Makes node `nodes.len()`'s directory, key file, runtime and span, and starts it.
    fn launch(&mut self, key: &KeyPair, mut config: NodeConfig) -> usize {
        let i = self.nodes.len();
        let id = key.public_key().node_id();
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        key.save(&dir.join("node.key"))
            .unwrap_or_else(|e| panic!("saving node {i}'s key: {e}"));
        let span = tracing::info_span!("node", i, id = ?id);
        let on_start = span.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("node-{i}"))
            .enable_all()
            // Every thread of this runtime runs inside the node's span, for good.
            .on_thread_start(move || std::mem::forget(on_start.clone().entered()))
            .build()
            .unwrap_or_else(|e| panic!("node {i}'s runtime: {e}"));
        let node = runtime
            .block_on(Node::start(config.clone()).instrument(span.clone()))
            .unwrap_or_else(|e| panic!("node {i} did not start: {e:#}"));
        // Restarts reuse the port the node got.
        config.listen = node.advertised();
        self.nodes.push(Member {
            runtime: Some(runtime),
            span,
            node: Some(node),
            config,
            id,
        });
        i
    }

    /// Starts one more node with the given key (so its ring position is chosen by
    /// the test), configured like node 0 (then `adjust`ed), joining through a live
    /// node. Returns its index. Waits until the leaf sets settle.
    pub fn start_extra(&mut self, key: &KeyPair, adjust: impl FnOnce(&mut NodeConfig)) -> usize {
        let i = self.nodes.len();
        let mut config = self.nodes[0].config.clone();
        config.data_dir = self.root.path().join(format!("node-{i}"));
        config.listen = loopback();
        config.bootstrap = self
            .live()
            .next()
            .map(|(_, n)| vec![n.advertised()])
            .unwrap_or_default();
        adjust(&mut config);
        self.launch(key, config);
        self.settle();
        i
    }

    /// Waits until every live node's leaf set is full, or holds every other live
    /// node when the network is smaller; panics after [`SETTLE_WITHIN`].
    pub fn settle(&self) {
        let live = self.live().count();
        let leaf_set = self
            .nodes
            .first()
            .map_or(16, |m| m.config.overlay.leaf_set_size);
        let want = live.saturating_sub(1).min(leaf_set);
        let what = format!("every leaf set of {live} live nodes to hold {want} nodes");
        let settled = wait_until(SETTLE_WITHIN, &what, || {
            let short: Vec<String> = self
                .live()
                .filter_map(|(i, node)| {
                    let view = node.overlay_view();
                    let mut ids: Vec<NodeId> =
                        view.left.iter().chain(&view.right).copied().collect();
                    ids.sort();
                    ids.dedup();
                    (ids.len() < want).then(|| format!("node {i} has {}", ids.len()))
                })
                .collect();
            if short.is_empty() {
                Ok(())
            } else {
                Err(short.join(", "))
            }
        });
        if let Err(e) = settled {
            panic!("{e}");
        }
    }

    /// Runs `future` to its end from the test's thread, on node 0's runtime (the
    /// nodes' tasks keep running on their own runtimes meanwhile).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.block_on_node(0, future)
    }

    /// Runs `future` on node `i`'s runtime, inside its span.
    pub fn block_on_node<F: Future>(&self, i: usize, future: F) -> F::Output {
        let member = &self.nodes[i];
        match &member.runtime {
            Some(runtime) => runtime.block_on(future.instrument(member.span.clone())),
            None => panic!("node {i}'s runtime is gone"),
        }
    }

    /// The live nodes with their indexes.
    pub fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.node.as_ref().map(|n| (i, n)))
    }

    /// Node `i` (panics if it was killed).
    pub fn node(&self, i: usize) -> &Node {
        match &self.nodes[i].node {
            Some(node) => node,
            None => panic!("node {i} is not running"),
        }
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|m| m.id == *id)
    }

    /// Serves node `i`'s API on an ephemeral loopback port; returns a client.
    pub fn api(&mut self, i: usize) -> ApiClient {
        let node = self.node(i).clone();
        let config = ApiConfig {
            listen: loopback(),
            token: None,
        };
        let server = self
            .block_on_node(i, api::serve(node, config))
            .unwrap_or_else(|e| panic!("node {i}'s API did not start: {e}"));
        let client = ApiClient::new(&server.addr.to_string(), None);
        self.servers.push((i, server));
        client
    }

    /// Crash-stops node `i` (no leave message; its API servers stop too), and waits
    /// until its store is closed so that it can be restarted.
    pub fn kill(&mut self, i: usize) {
        let Some(node) = self.nodes[i].node.take() else {
            return;
        };
        node.kill();
        self.servers.retain(|(j, _)| *j != i);
        let closed = wait_until(
            SETTLE_WITHIN,
            &format!("killed node {i}'s tasks to end and release its store"),
            || {
                if node.is_last_handle() {
                    Ok(())
                } else {
                    Err("other handles on the node remain")
                }
            },
        );
        if let Err(e) = closed {
            panic!("{e}");
        }
    }

    /// Starts node `i` again on its data dir and address, joining through a live node.
    pub fn restart(&mut self, i: usize) {
        let mut config = self.nodes[i].config.clone();
        if let Some((_, other)) = self.live().find(|(j, _)| *j != i) {
            config.bootstrap = vec![other.advertised()];
        }
        let member = &self.nodes[i];
        let node = match &member.runtime {
            Some(runtime) => runtime.block_on(Node::start(config).instrument(member.span.clone())),
            None => panic!("node {i}'s runtime is gone"),
        }
        .unwrap_or_else(|e| panic!("node {i} did not restart: {e:#}"));
        self.nodes[i].node = Some(node);
    }

    /// The id of node `i` (running or not).
    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].id
    }

    /// The data dir of node `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].config.data_dir.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.clear();
        for member in &mut self.nodes {
            if let Some(node) = member.node.take() {
                node.kill();
            }
        }
        // The runtimes shut down side by side: each waits (bounded) for its own tasks.
        let runtimes: Vec<Runtime> = self
            .nodes
            .iter_mut()
            .filter_map(|m| m.runtime.take())
            .collect();
        let stopping: Vec<_> = runtimes
            .into_iter()
            .map(|runtime| {
                std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(5)))
            })
            .collect();
        for handle in stopping {
            let _ = handle.join();
        }
    }
}
