//! Shared helpers for cairn's integration tests (the tests themselves are in
//! `integration/`, one binary so that linking happens once).

/// Helpers for the store tests (`integration/store*.rs`).
pub mod store {
    use cairn_node::id::{FragmentHash, Id, PlacementKey};
    use cairn_node::sim::Rng;
    use cairn_node::store::fragment_hash;

    /// A placement key whose first byte is `top` (so its ring position is known) and
    /// whose other bytes derive from `n`.
    pub fn key_at(top: u8, n: u64) -> PlacementKey {
        let mut id = Id::hash(&n.to_be_bytes());
        id.0[0] = top;
        PlacementKey(id)
    }

    /// A pseudo-random placement key derived from `n`.
    pub fn key(n: u64) -> PlacementKey {
        PlacementKey(Id::hash_parts(&[b"test key", &n.to_be_bytes()]))
    }

    /// `len` deterministic pseudo-random bytes for fragment `index`, and their
    /// fragment hash (`SHA-256(index_be16 ‖ bytes)`). Distinct `(seed, index)` pairs
    /// (seeds below 2^48) give distinct streams.
    pub fn fragment(seed: u64, index: u16, len: usize) -> (Vec<u8>, FragmentHash) {
        let bytes = Rng::new((seed << 16) | u64::from(index)).bytes(len);
        let hash = fragment_hash(index, &bytes);
        (bytes, hash)
    }
}

/// A cluster of real nodes on loopback, in this process, for the network tests.
// Test support: a failure here is the calling test's failure, with the panic message.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod cluster {
    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use cairn_node::api::client::ApiClient;
    use cairn_node::api::{self, ApiConfig, ApiServer};
    use cairn_node::crypto::KeyPair;
    use cairn_node::daemon::unix_now;
    use cairn_node::daemon::{Node, NodeConfig};
    use cairn_node::erasure::ErasureParams;
    use cairn_node::id::{FileId, NodeId, Reference};

    /// The deterministic node key of node `i` (so placements are the same every run).
    pub fn node_key(i: usize) -> KeyPair {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        secret[8] = 0xc4;
        KeyPair::from_secret_bytes(&secret)
    }

    /// The deterministic owner key `seed` of the tests.
    pub fn owner(seed: u8) -> KeyPair {
        KeyPair::from_secret_bytes(&[seed; 32])
    }

    /// The name every test file is stored under (the file id varies by salt).
    pub const TEST_FILE_NAME: &str = "test file";

    /// Puts `data` through `client` as [`TEST_FILE_NAME`] under `salt` (4+2); its id.
    pub fn put(client: &ApiClient, owner: &KeyPair, data: &[u8], salt: u64) -> FileId {
        let outcome = client
            .put(
                &mut &data[..],
                TEST_FILE_NAME,
                salt,
                owner,
                Some(ErasureParams::DEFAULT),
                unix_now(),
            )
            .unwrap_or_else(|e| panic!("put of {} bytes failed: {e}", data.len()));
        match outcome.reference {
            Reference::File(file) => file,
            other => panic!("a put returned {other:?}"),
        }
    }

    /// Gets `file` through `client` (panics with the API's message on failure).
    pub fn get(client: &ApiClient, file: &FileId) -> Vec<u8> {
        let mut out = Vec::new();
        client
            .get(file, &mut out)
            .unwrap_or_else(|e| panic!("get failed: {e}"));
        out
    }

    /// N nodes, each with its own data dir under one temp dir, stopped on drop.
    pub struct Cluster {
        runtime: Option<tokio::runtime::Runtime>,
        nodes: Vec<Option<Node>>,
        configs: Vec<NodeConfig>,
        ids: Vec<NodeId>,
        servers: Vec<ApiServer>,
        /// The temp dir holding every node's data dir.
        pub root: tempfile::TempDir,
    }

    impl Cluster {
        /// `n` nodes with `capacity` bytes each.
        pub fn start(n: usize, capacity: u64) -> Cluster {
            Cluster::start_with(n, |_, _| {}, capacity)
        }

        /// `n` nodes; `adjust(i, config)` may change node `i`'s configuration.
        pub fn start_with(
            n: usize,
            mut adjust: impl FnMut(usize, &mut NodeConfig),
            capacity: u64,
        ) -> Cluster {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap();
            let root = tempfile::tempdir().unwrap();
            let mut cluster = Cluster {
                runtime: Some(runtime),
                nodes: Vec::new(),
                configs: Vec::new(),
                ids: Vec::new(),
                servers: Vec::new(),
                root,
            };
            for i in 0..n {
                let dir = cluster.root.path().join(format!("node-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                node_key(i).save(&dir.join("node.key")).unwrap();
                let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
                let mut config = NodeConfig::new(dir, listen, capacity);
                config.overlay.tick = Duration::from_millis(300);
                if let Some(first) = cluster.nodes.first().and_then(|n| n.as_ref()) {
                    config.bootstrap = vec![first.advertised()];
                }
                adjust(i, &mut config);
                let node = cluster
                    .block_on(Node::start(config.clone()))
                    .unwrap_or_else(|e| panic!("node {i} did not start: {e:#}"));
                // Restarts reuse the port the node got.
                config.listen = node.advertised();
                cluster.ids.push(node.id());
                cluster.nodes.push(Some(node));
                cluster.configs.push(config);
            }
            cluster.settle();
            cluster
        }

        /// Starts one more node with the given key (so its ring position is chosen by
        /// the test), configured like the first node (then `adjust`ed), joining through
        /// a live node. Returns its index. Waits until the leaf sets settle.
        pub fn start_extra(
            &mut self,
            key: &KeyPair,
            adjust: impl FnOnce(&mut NodeConfig),
        ) -> usize {
            let i = self.nodes.len();
            let dir = self.root.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            key.save(&dir.join("node.key")).unwrap();
            let mut config = self.configs[0].clone();
            config.data_dir = dir;
            config.listen = ([127, 0, 0, 1], 0).into();
            config.bootstrap = self
                .live()
                .next()
                .map(|(_, n)| vec![n.advertised()])
                .unwrap_or_default();
            adjust(&mut config);
            let node = self
                .block_on(Node::start(config.clone()))
                .unwrap_or_else(|e| panic!("extra node {i} did not start: {e:#}"));
            config.listen = node.advertised();
            self.ids.push(node.id());
            self.nodes.push(Some(node));
            self.configs.push(config);
            self.settle();
            i
        }

        /// Waits (bounded) until every live node's leaf set is full, or holds every
        /// other live node when the network is smaller, or 10 s pass.
        pub fn settle(&self) {
            let live = self.live().count();
            let leaf_set = self.configs.first().map_or(16, |c| c.overlay.leaf_set_size);
            let want = (live - 1).min(leaf_set);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let ready = self.live().all(|(_, node)| {
                    let view = node.overlay_view();
                    let mut ids: Vec<NodeId> =
                        view.left.iter().chain(&view.right).copied().collect();
                    ids.sort();
                    ids.dedup();
                    ids.len() >= want
                });
                if ready {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        /// Runs `future` on the cluster's runtime (the nodes run on its worker threads;
        /// the test's own thread stays blocking).
        pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
            self.runtime.as_ref().expect("runtime").block_on(future)
        }

        /// The live nodes with their indexes.
        pub fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
            self.nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
        }

        /// Node `i` (panics if it was killed).
        pub fn node(&self, i: usize) -> &Node {
            self.nodes[i].as_ref().expect("node is running")
        }

        /// The index of the node with id `id`.
        pub fn index_of(&self, id: &NodeId) -> Option<usize> {
            self.ids.iter().position(|x| x == id)
        }

        /// Serves node `i`'s API on an ephemeral loopback port; returns a client.
        pub fn api(&mut self, i: usize) -> ApiClient {
            let node = self.node(i).clone();
            let server = self
                .block_on(api::serve(
                    node,
                    ApiConfig {
                        listen: ([127, 0, 0, 1], 0).into(),
                        token: None,
                    },
                ))
                .unwrap();
            let client = ApiClient::new(&server.addr.to_string(), None);
            self.servers.push(server);
            client
        }

        /// Crash-stops node `i` (no leave message), and waits until its store is
        /// closed so it can be restarted.
        pub fn kill(&mut self, i: usize) {
            let Some(node) = self.nodes[i].take() else {
                return;
            };
            node.kill();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !node.is_last_handle() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(node);
        }

        /// Starts node `i` again on its data dir and address, joining through a live node.
        pub fn restart(&mut self, i: usize) {
            let mut config = self.configs[i].clone();
            if let Some((_, other)) = self.live().find(|(j, _)| *j != i) {
                config.bootstrap = vec![other.advertised()];
            }
            let node = self
                .block_on(Node::start(config))
                .unwrap_or_else(|e| panic!("node {i} did not restart: {e:#}"));
            self.nodes[i] = Some(node);
        }

        /// The id of node `i` (running or not).
        pub fn id(&self, i: usize) -> NodeId {
            self.ids[i]
        }

        /// The data dir of node `i`.
        pub fn data_dir(&self, i: usize) -> PathBuf {
            self.configs[i].data_dir.clone()
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            self.servers.clear();
            for node in self.nodes.iter().flatten() {
                node.kill();
            }
            self.nodes.clear();
            if let Some(runtime) = self.runtime.take() {
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
        }
    }
}
