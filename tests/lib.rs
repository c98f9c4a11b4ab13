//! Shared helpers for cairn's integration tests (the tests themselves are in
//! `integration/`, one binary so that linking happens once).

/// Helpers for the store tests (`integration/store*.rs`).
pub mod store {
    use cairn_core::id::{FragmentHash, Id, PlacementKey};
    use cairn_core::rng::Rng;
    use cairn_store::fragment_hash;

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

    use cairn_api::client::ApiClient;
    use cairn_core::crypto::KeyPair;
    use cairn_core::erasure::ErasureParams;
    use cairn_core::id::{FileId, NodeId, Reference};
    use cairn_daemon::http::{self as api, ApiConfig, ApiServer};
    use cairn_daemon::unix_now;
    use cairn_daemon::{Node, NodeConfig};

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

/// A seeded random workload of file operations, applied to a mount and to a plain
/// directory side by side (`integration/mount.rs`): the plain directory is the oracle.
// Test support: a failure here is the calling test's failure, with the panic message.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod fs_workload {
    use std::fs::{self, File, OpenOptions};
    use std::io::{ErrorKind, Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};

    use cairn_core::rng::Rng;

    /// Names the workload uses: files and directories, nested, overlapping.
    const NAMES: [&str; 10] = ["a", "b", "c", "d/a", "d/b", "d", "e", "e/x", "d/e", "d/e/f"];

    fn outcome<T>(r: std::io::Result<T>) -> Result<T, ErrorKind> {
        r.map_err(|e| e.kind())
    }

    /// FNV-1a, enough to compare contents.
    fn checksum(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// Applies one operation to `root`; returns a comparable description of its result.
    fn apply(root: &Path, op: u64, a: &str, b: &str, offset: u64, data: &[u8]) -> String {
        let pa = root.join(a);
        let pb = root.join(b);
        let done = |r: std::io::Result<()>| outcome(r).map(|()| String::new());
        let r = match op {
            0 => done(fs::write(&pa, data)),
            1 => done((|| {
                let mut f = OpenOptions::new().write(true).open(&pa)?;
                f.seek(SeekFrom::Start(offset))?;
                f.write_all(data)
            })()),
            2 => done(
                OpenOptions::new()
                    .write(true)
                    .open(&pa)
                    .and_then(|f| f.set_len(offset)),
            ),
            3 => done(fs::rename(&pa, &pb)),
            4 => done(fs::remove_file(&pa)),
            5 => done(fs::create_dir(&pa)),
            6 => done(fs::remove_dir(&pa)),
            7 => outcome(fs::read(&pa))
                .map(|bytes| format!("{} bytes {:x}", bytes.len(), checksum(&bytes))),
            8 => done(
                OpenOptions::new()
                    .append(true)
                    .open(&pa)
                    .and_then(|mut f| f.write_all(data)),
            ),
            _ => done(File::open(&pa).and_then(|f| f.sync_all())),
        };
        format!("{r:?}")
    }

    /// Every path under `root` with its kind, size and content checksum, sorted.
    pub fn snapshot(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in fs::read_dir(root.join(&rel)).unwrap() {
                let path = rel.join(entry.unwrap().file_name());
                let meta = fs::symlink_metadata(root.join(&path)).unwrap();
                if meta.is_dir() {
                    out.push(format!("{} dir", path.display()));
                    stack.push(path);
                } else {
                    let bytes = fs::read(root.join(&path)).unwrap();
                    let sum = checksum(&bytes);
                    out.push(format!("{} {} {sum:x}", path.display(), meta.len()));
                }
            }
        }
        out.sort();
        out
    }

    /// Runs `ops` seeded operations (create, write at offsets, truncate, rename,
    /// unlink, mkdir, rmdir, read, append, fsync) on `mounted` and on `plain`,
    /// asserting after each that both gave the same result and hold the same tree.
    pub fn run(mounted: &Path, plain: &Path, seed: u64, ops: usize) {
        let mut rng = Rng::new(seed);
        for step in 0..ops {
            let op = rng.below(10);
            let a = NAMES[rng.below(NAMES.len() as u64) as usize];
            let b = NAMES[rng.below(NAMES.len() as u64) as usize];
            let len = match rng.below(4) {
                0 => 0,
                1 => rng.below(16),
                2 => rng.below(6000),
                _ => rng.below(40_000),
            } as usize;
            let offset = rng.below(12_000);
            let data = rng.bytes(len);
            let context = || {
                format!(
                    "seed {seed} (rerun with CAIRN_FS_SEED={seed}): step {step}, op {op} \
                     on {a} {b}, offset {offset}, {len} bytes"
                )
            };
            let in_mount = apply(mounted, op, a, b, offset, &data);
            let in_plain = apply(plain, op, a, b, offset, &data);
            assert_eq!(in_mount, in_plain, "{}", context());
            assert_eq!(
                snapshot(mounted),
                snapshot(plain),
                "trees differ: {}",
                context()
            );
        }
    }

    /// The seed: `CAIRN_FS_SEED` if set (to replay or explore), else `default`.
    pub fn seed(default: u64) -> u64 {
        std::env::var("CAIRN_FS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }
}
