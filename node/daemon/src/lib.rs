//! The node daemon: one storage node running. It wires the sans-IO state machines (the
//! [`Overlay`] and the PAST [`Holder`]) to the transport ([`cairn_net`]), the disk
//! store and a clock.
//!
//! Owns: [`Node`] (start, stop, status), [`NodeConfig`], the daemon's wire enum
//! [`Wire`], the address book (which node listens where), the gateway operations in
//! [`gateway`] that the local API calls to put, get, stat and reclaim files over the
//! network ([`NetworkFragments`] is the client pipeline's view of the network), and the
//! HTTP server of that API ([`http`]).
//!
//! May use: every crate below it: [`cairn_core`], [`cairn_store`], [`cairn_overlay`],
//! [`cairn_pipeline`] (the pipeline, generic over where fragments go), [`cairn_past`],
//! [`cairn_net`] and [`cairn_api`] (the API's request and response types), plus `tokio`
//! and `axum`.
//!
//! # Tasks
//! - The **overlay task** owns the [`Overlay`] and is the only code that touches it:
//!   it is fed [`Input`]s (messages, timers, route requests) through a bounded channel
//!   and carries out the actions (sends, timers, deliveries). After each event it
//!   refreshes a small [`OverlayView`] (joined, leaf set) that other tasks read.
//! - The **dispatcher** reads the transport's incoming queue: overlay messages go to
//!   the overlay task, PAST requests each get a task of their own (store work runs on
//!   tokio's blocking pool: every fragment write waits for its fsync).
//! - The **heal task**, **maintenance**, **scrub** and the **collection** of uploads
//!   never certified ([`admission`]).
//!
//! The node owns every one of them ([`tasks`]: one `JoinSet` and one cancellation
//! token); [`Node::shutdown`] cancels the token and joins them, for a bounded time.
//!
//! # Addresses
//! Overlay messages name nodes by id only, so every overlay message a node sends
//! carries the addresses it knows of the ids inside it ([`Wire::Overlay`]); the
//! receiver learns them. An address learnt that way is only a hint: the transport's
//! handshake proves the id of whoever answers there.

mod addresses;
pub mod admission;
mod drive;
pub mod gateway;
pub mod http;
mod locates;
pub mod maintenance;
mod records;
mod tasks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use cairn_core::crypto::{KeyFileError, KeyPair, PuzzleUnsolved};
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{BelowDifficulty, Difficulty, Id, NodeId};
use cairn_net::{Incoming, NetConfig, NetError, Peer, Transport};
use cairn_overlay::{self as overlay, Action, Event, Overlay, OverlayMessage, Routed, Time};
use cairn_past::answer::Answer;
use cairn_past::authority::RingView;
use cairn_past::divert::{Diverted, ReplicaDiversion};
use cairn_past::reclaim::ReclaimForward;
use cairn_past::{
    Holder, NodeAddress, PastConfig, PastRequest, PastResponse, PastRouted, Refusal, StoreRequest,
    closest_in_leaf_set,
};
use cairn_store::{DiskStore, StoreError};

pub use cairn_net::DEFAULT_KEY_DIFFICULTY;
pub use gateway::{GatewayError, NetworkFragments, PlacementFailure, RootPublished};
pub use maintenance::{MaintenanceConfig, RateLimiter};

/// Everything a node sends to another: the daemon's one wire type. Append-only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire {
    /// One overlay hop, with the addresses the sender knows of the ids inside it.
    Overlay {
        /// The overlay's message.
        msg: OverlayMessage,
        /// Addresses of the nodes the message names.
        addresses: Vec<NodeAddress>,
    },
    /// The answer to a routed [`PastRouted::Locate`]: the nodes closest to the key,
    /// closest first, sent by the node responsible straight to the origin.
    Located {
        /// The origin's tag.
        tag: u64,
        /// The nodes.
        nodes: Vec<NodeAddress>,
    },
    /// A PAST request (sent with [`Transport::request`]).
    Past(PastRequest),
    /// A PAST answer.
    PastReply(PastResponse),
}

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Where the node keeps its key (`node.key`) and its store (`store/`).
    pub data_dir: PathBuf,
    /// The address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// The address other nodes should use (default: the listening address).
    pub advertise: Option<SocketAddr>,
    /// Members of the network to join through; empty starts a new network.
    pub bootstrap: Vec<SocketAddr>,
    /// Most bytes of fragments this node stores.
    pub capacity: u64,
    /// Pastry's parameters and timers.
    pub overlay: overlay::Config,
    /// The transport's limits and timeouts.
    pub net: NetConfig,
    /// PAST's thresholds.
    pub past: PastConfig,
    /// How long a locate (a route to a key and the answer) may take, per attempt.
    pub locate_timeout: Duration,
    /// How long a node keeps trying its bootstrap addresses before it gives up (each is
    /// tried at least twice however short this is).
    pub join_patience: Duration,
    /// The erasure parameters of a put through this node's API that names none.
    pub default_params: ErasureParams,
    /// Repair and scrub: periods, rates, timeouts.
    pub maintenance: MaintenanceConfig,
    /// What a client of the local API can make the node spend.
    pub api: http::ApiLimits,
}

/// The key puzzle of networks on one machine (`cairn devnet`, the tests' node
/// processes): a key in a few milliseconds, where a real network's
/// ([`cairn_net::DEFAULT_KEY_DIFFICULTY`]) takes about a second.
pub const LOCAL_KEY_DIFFICULTY: Difficulty = Difficulty(8);

/// The overlay's keepalive period of a node (failure detection takes about three).
pub const DEFAULT_TICK: Duration = Duration::from_millis(300);

impl NodeConfig {
    /// A node in `data_dir` listening on `listen`, with default parameters and a
    /// [`DEFAULT_TICK`] overlay tick.
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr, capacity: u64) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            listen,
            advertise: None,
            bootstrap: Vec::new(),
            capacity,
            overlay: overlay::Config {
                // Failure detection within about a second (three missed keepalives):
                // `cairn sim churn` shows repair then keeps every file at a 60 s mean
                // session, which it does not with a 1 s tick (docs/repair.md).
                tick: DEFAULT_TICK,
                // Every node of a devnet or a test listens on 127.0.0.1: one subnet.
                // A node on loopback can only reach its own machine, so nothing is
                // lost by not counting there.
                max_ids_per_subnet: if listen.ip().is_loopback() {
                    usize::MAX
                } else {
                    overlay::DEFAULT_MAX_IDS_PER_SUBNET
                },
                ..overlay::Config::default()
            },
            net: NetConfig::default(),
            past: PastConfig::default(),
            locate_timeout: Duration::from_secs(5),
            join_patience: Duration::from_secs(30),
            default_params: ErasureParams::DEFAULT,
            maintenance: MaintenanceConfig::default(),
            api: http::ApiLimits::default(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The node key could not be read or written.
    #[error("the node key")]
    Key(#[source] KeyFileError),
    /// The node key does not solve the network's puzzle (`net.key_difficulty`): peers
    /// would refuse it in the handshake.
    #[error(
        "the node key {path} does not solve this network's key puzzle; move it away to \
         have a new one made (the node gets a new id), or set the difficulty the network uses"
    )]
    KeyBelowDifficulty {
        /// The key file.
        path: PathBuf,
        /// Its puzzle bits and the difficulty asked for.
        #[source]
        source: BelowDifficulty,
    },
    /// No node key solving the network's puzzle was found within the search's bound.
    #[error("making a node key")]
    Puzzle(#[source] PuzzleUnsolved),
    /// The store could not be opened.
    #[error("opening the store")]
    Store(#[source] StoreError),
    /// The transport could not listen.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: NetError,
    },
    /// No bootstrap node let this node join.
    #[error("could not join through any of {tried} bootstrap address(es): {last}")]
    Join {
        /// How many were tried.
        tried: usize,
        /// The last failure.
        last: String,
    },
    /// The overlay configuration is invalid.
    #[error("invalid overlay configuration: {0}")]
    Overlay(String),
}

/// What other tasks may read of the overlay's state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OverlayView {
    /// Whether the node has joined.
    pub joined: bool,
    /// Leaf set, counter-clockwise side, closest first.
    pub left: Vec<NodeId>,
    /// Leaf set, clockwise side, closest first.
    pub right: Vec<NodeId>,
}

impl OverlayView {
    fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.left.iter().chain(self.right.iter()).copied()
    }
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    /// Fragments stored here (as primary or diverted).
    pub fragments_stored: AtomicU64,
    /// Fragments this node diverted elsewhere.
    pub fragments_diverted: AtomicU64,
    /// Fragments served.
    pub fragments_served: AtomicU64,
    /// Requests refused (any reason).
    pub requests_refused: AtomicU64,
    /// Requests refused because the sender had no authority for them in this node's
    /// view (a stranger's release or handoff, a store at a key this node is not
    /// responsible for, ...).
    pub requests_unauthorised: AtomicU64,
    /// Maintenance orders refused because their sender, or their key, already had the
    /// most allowed being checked ([`maintenance::MAX_ORDERS_PER_PEER`],
    /// [`maintenance::MAX_ORDERS_PER_KEY`]).
    pub orders_refused_busy: AtomicU64,
    /// Locates started by this node that were routed through the overlay.
    pub locates: AtomicU64,
    /// Locates answered from this node's own leaf set (no route needed).
    pub locates_local: AtomicU64,
    /// Locates that failed (route failure or timeout).
    pub locates_failed: AtomicU64,
    /// Locate answers dropped by the checks of `Overlay::check_located`: not from the
    /// closest node named, unsorted, duplicated, too long, or implausible.
    pub locate_answers_rejected: AtomicU64,
    /// Locate answers that failed the density test (or were short) and were routed
    /// again through another first hop.
    pub locate_answers_suspicious: AtomicU64,
    /// Locate answers whose tag matched no pending locate (late, duplicated, sprayed).
    pub locate_answers_unmatched: AtomicU64,
    /// Files put through this node's API.
    pub files_put: AtomicU64,
    /// Files got through this node's API.
    pub files_got: AtomicU64,
    /// Certificates this node gave to a keeper that lacked one (maintenance).
    pub certificates_replicated: AtomicU64,
    /// Root records this node gave to a keeper that lacked them or held an older
    /// sequence (maintenance).
    pub roots_replicated: AtomicU64,
    /// Blocks whose fragments could not all be placed at a key (each one leads to a
    /// file diversion, or to the put's failure).
    pub placements_failed: AtomicU64,
    /// Bytes of repair traffic this node moved: fragments fetched to regenerate,
    /// regenerated fragments stored, fragments handed off.
    pub repair_bytes: AtomicU64,
    /// Fragments this node regenerated (as a key's coordinator).
    pub fragments_regenerated: AtomicU64,
    /// Handoffs this node coordinated that completed.
    pub fragments_handed_off: AtomicU64,
    /// Surplus copies this node dropped because a responsible node holds them.
    pub fragments_released: AtomicU64,
    /// Fragments deleted because every file referencing them was reclaimed.
    pub fragments_forgotten: AtomicU64,
    /// Keys this node reconciled as their coordinator.
    pub keys_reconciled: AtomicU64,
    /// Bytes the scrub re-read and re-hashed.
    pub scrub_bytes: AtomicU64,
    /// Fragments the scrub found corrupt (and dropped).
    pub scrub_corrupt: AtomicU64,
    /// Addresses dropped from the full address book to make room.
    pub addresses_evicted: AtomicU64,
    /// `Reconcile` requests refused for naming more keys than a nudge may.
    pub nudges_refused: AtomicU64,
    /// Keys a nudge or summary named that the full maintenance queue dropped.
    pub nudged_keys_dropped: AtomicU64,
    /// Root-record keepers that claimed a conflict they could not prove (counted as
    /// not answering).
    pub root_conflicts_unproven: AtomicU64,
    /// Candidates the overlay did not probe because its probes were at their cap
    /// (mirrored from the overlay after each event).
    pub candidate_probes_dropped: AtomicU64,
    /// Gossiped ids ignored because they do not solve the network's puzzle.
    pub ids_below_difficulty: AtomicU64,
    /// Stores refused because their owner was over its quota here.
    pub owner_quota_refused: AtomicU64,
    /// Fragments deleted because their upload was never certified ([`admission`]).
    pub uncertified_fragments_collected: AtomicU64,
    /// Bytes those fragments freed.
    pub uncertified_bytes_collected: AtomicU64,
    /// Uploads the collection pass found certified (their charges are marked).
    pub uploads_certified: AtomicU64,
    /// Leaf-set and routing-table places the overlay refused because the node's
    /// subnet (IPv4 /24, IPv6 /48) was at its limit (mirrored after each event).
    pub subnet_places_refused: AtomicU64,
}

enum Input {
    Event(Event),
    Locate {
        key: Id,
        count: u16,
        /// First hops of a plain route passed over (redundant routing on a retry).
        skip: u8,
        reply: oneshot::Sender<locates::LocateAnswer>,
    },
    Located {
        /// The sender, as the transport proved it.
        from: NodeId,
        tag: u64,
        nodes: Vec<NodeAddress>,
    },
}

struct Inner {
    id: NodeId,
    transport: Transport<Wire>,
    holder: Holder<DiskStore>,
    addresses: RwLock<addresses::AddressBook>,
    view: RwLock<OverlayView>,
    overlay_tx: mpsc::Sender<Input>,
    config: NodeConfig,
    counters: Counters,
    /// Every task of the node, and the token that stops them.
    tasks: tasks::Tasks,
    /// Test hook: serve every fragment with one bit flipped (a Byzantine holder).
    tamper: std::sync::atomic::AtomicBool,
    /// Signalled whenever the overlay view changes (maintenance debounces it).
    view_changed: tokio::sync::Notify,
    /// The maintenance task's queue.
    maintenance_tx: mpsc::Sender<maintenance::Job>,
    /// The budget of the repair bytes this node sends.
    repair_limiter: Arc<RateLimiter>,
    /// When to look at which key ([`maintenance::SharedSchedule`]).
    schedule: maintenance::SharedSchedule,
    /// Where the next pass of record replication starts, per kind.
    record_cursors: std::sync::Mutex<records::RecordCursors>,
    /// Maintenance orders being checked, per sender and per key.
    order_slots: maintenance::OrderSlots,
}

/// A running node. Cheap to clone; the node stops when [`Node::shutdown`] is called
/// (or the process ends).
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("addr", &self.inner.transport.advertised())
            .finish()
    }
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A mutex's guard; a panic elsewhere while holding it leaves plain data, still usable.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How often a key search says it is still searching.
const PUZZLE_LOG_EVERY: Duration = Duration::from_secs(5);

/// Loads the node key from `dir/node.key`, creating it on first start: a key that
/// solves the network's puzzle at `difficulty` (a loaded key must solve it too).
/// Blocking: the search takes about a second at the default difficulty.
fn node_identity(dir: &std::path::Path, difficulty: Difficulty) -> Result<KeyPair, StartError> {
    let path = dir.join("node.key");
    if path.exists() {
        let key = KeyPair::load(&path).map_err(StartError::Key)?;
        key.public_key()
            .check_difficulty(difficulty)
            .map_err(|source| StartError::KeyBelowDifficulty { path, source })?;
        Ok(key)
    } else {
        if difficulty != Difficulty::NONE {
            tracing::info!(
                %difficulty,
                expected_attempts = difficulty.expected_attempts(),
                "making a node key that solves the network's puzzle"
            );
        }
        let mut last_log = Instant::now();
        let key = KeyPair::generate_solving(difficulty, difficulty.attempt_bound(), |made| {
            if last_log.elapsed() >= PUZZLE_LOG_EVERY {
                last_log = Instant::now();
                tracing::info!(attempts = made, "still searching for a node key");
            }
        })
        .map_err(StartError::Puzzle)?;
        key.save(&path).map_err(StartError::Key)?;
        Ok(key)
    }
}

impl Node {
    /// Starts a node: its identity (created on first start, kept after), its store,
    /// its transport, and its join (through the first bootstrap address that works,
    /// or a new network). Returns once the node has joined.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let (dir, difficulty) = (config.data_dir.clone(), config.net.key_difficulty);
        let identity = tokio::task::spawn_blocking(move || node_identity(&dir, difficulty))
            .await
            .map_err(|e| {
                StartError::Key(KeyFileError::Io {
                    action: "making (task)",
                    path: config.data_dir.join("node.key"),
                    source: std::io::Error::other(e.to_string()),
                })
            })??;
        let identity = Arc::new(identity);
        let id = identity.public_key().node_id();
        let store_dir = config.data_dir.join("store");
        let capacity = config.capacity;
        let store = tokio::task::spawn_blocking(move || DiskStore::open(store_dir, capacity))
            .await
            .map_err(|e| {
                StartError::Store(StoreError::Io {
                    operation: "open (task)",
                    path: PathBuf::new(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(StartError::Store)?;
        // The overlay's nonces and locate tags must be unguessable: a secret seed.
        let mut nonce_seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce_seed);
        let overlay = Overlay::new(config.overlay.clone(), id, nonce_seed)
            .map_err(|e| StartError::Overlay(e.to_string()))?;
        let (transport, incoming) = Transport::bind(
            Arc::clone(&identity),
            config.listen,
            config.advertise,
            config.net.clone(),
        )
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let (overlay_tx, overlay_rx) = mpsc::channel(4096);
        let (maintenance_tx, maintenance_rx) = mpsc::channel(1024);
        let repair_limiter = Arc::new(RateLimiter::new(config.maintenance.repair_bytes_per_sec));
        let schedule = maintenance::SharedSchedule::new(id, &config);
        let inner = Arc::new(Inner {
            id,
            holder: Holder::new(store, identity, config.past),
            transport,
            addresses: RwLock::new(addresses::AddressBook::new(addresses::ADDRESS_BOOK_CAP)),
            view: RwLock::new(OverlayView::default()),
            overlay_tx,
            config,
            counters: Counters::default(),
            tasks: tasks::Tasks::default(),
            tamper: std::sync::atomic::AtomicBool::new(false),
            order_slots: maintenance::OrderSlots::default(),
            view_changed: tokio::sync::Notify::new(),
            maintenance_tx,
            repair_limiter,
            schedule,
            record_cursors: std::sync::Mutex::default(),
        });
        let node = Node { inner };
        let (joined_tx, joined_rx) = mpsc::channel(4);
        let tasks = &node.inner.tasks;
        tasks.spawn(
            "the overlay task",
            overlay_task(node.clone(), overlay, overlay_rx, joined_tx),
        );
        tasks.spawn("the dispatcher", dispatch_task(node.clone(), incoming));
        if let Err(e) = node.join(joined_rx).await {
            node.kill();
            node.inner.tasks.stop(SHUTDOWN_PATIENCE).await;
            return Err(e);
        }
        node.start_maintenance(maintenance_rx);
        node.inner
            .tasks
            .spawn("the heal task", heal_task(node.clone()));
        tracing::info!(id = %node.id(), addr = %node.advertised(), "node joined");
        Ok(node)
    }

    async fn join(&self, mut joined: mpsc::Receiver<bool>) -> Result<(), StartError> {
        let bootstrap = self.inner.config.bootstrap.clone();
        if bootstrap.is_empty() {
            self.input(Event::Join { bootstrap: None }).await;
            return match tokio::time::timeout(Duration::from_secs(5), joined.recv()).await {
                Ok(Some(true)) => Ok(()),
                _ => Err(StartError::Join {
                    tried: 0,
                    last: "a new network did not start".into(),
                }),
            };
        }
        let mut last = String::from("no attempt");
        let join_wait = self.inner.config.overlay.join_timeout + Duration::from_secs(2);
        // Each address at least twice (a bootstrap that is itself still starting gets a
        // second chance), and more rounds while `join_patience` lasts: a busy bootstrap
        // node (a loaded machine, a handshake that timed out) is not a reason to give up.
        let patience = tokio::time::Instant::now() + self.inner.config.join_patience;
        let mut backoff = Duration::from_millis(200);
        let rounds = bootstrap.len() * JOIN_ROUNDS_MAX;
        for (attempt, addr) in bootstrap.iter().cycle().take(rounds).enumerate() {
            if attempt >= 2 * bootstrap.len() && tokio::time::Instant::now() >= patience {
                break;
            }
            let peer = match self.inner.transport.identify(*addr).await {
                Ok(peer) => peer,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            self.learn(peer.id, peer.addr);
            self.input(Event::Join {
                bootstrap: Some(peer.id),
            })
            .await;
            match tokio::time::timeout(join_wait, joined.recv()).await {
                Ok(Some(true)) => return Ok(()),
                Ok(Some(false)) => last = format!("{addr}: the join timed out in the overlay"),
                Ok(None) => last = "the node stopped".into(),
                Err(_) => last = format!("{addr}: no answer within {join_wait:?}"),
            }
        }
        Err(StartError::Join {
            tried: bootstrap.len(),
            last,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address this node advertises.
    pub fn advertised(&self) -> SocketAddr {
        self.inner.transport.advertised()
    }

    /// This node with its address.
    pub fn address(&self) -> NodeAddress {
        NodeAddress {
            id: self.id(),
            addr: self.advertised(),
        }
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The local store.
    pub fn store(&self) -> &DiskStore {
        self.inner.holder.store()
    }

    /// Counters for metrics.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// The transport's counters.
    pub fn net_stats(&self) -> cairn_net::NetStats {
        self.inner.transport.stats()
    }

    /// A copy of the overlay's state as last seen.
    pub fn overlay_view(&self) -> OverlayView {
        read(&self.inner.view).clone()
    }

    /// The known address of `id`.
    pub fn address_of(&self, id: &NodeId) -> Option<NodeAddress> {
        if *id == self.id() {
            return Some(self.address());
        }
        read(&self.inner.addresses)
            .get(id)
            .map(|addr| NodeAddress { id: *id, addr })
    }

    /// Test hook: from now on serve every fragment with a bit flipped, as a Byzantine
    /// holder would (readers must detect and bypass it).
    pub fn tamper_with_served_fragments(&self, on: bool) {
        self.inner.tamper.store(on, Ordering::Relaxed);
    }

    /// Whether this is the last handle on the node (its tasks have ended), so that its
    /// store is closed when it is dropped. For restarts in one process.
    pub fn is_last_handle(&self) -> bool {
        Arc::strong_count(&self.inner) == 1
    }

    /// How many nodes this node knows an address for.
    pub fn known_addresses(&self) -> usize {
        read(&self.inner.addresses).len()
    }

    /// Stops the node: leaves the overlay, closes every connection, and stops every
    /// task of the node. Returns once they have all ended; one that has not within
    /// [`SHUTDOWN_PATIENCE`] is aborted, with a warning that names it. Idempotent (a
    /// second call returns at once, without waiting for the first).
    pub async fn shutdown(&self) {
        if self.is_stopped() {
            return;
        }
        // Bounded: the overlay's queue is full only if its task is stuck.
        let _ = tokio::time::timeout(LEAVE_PATIENCE, self.input(Event::Leave)).await;
        // Give the leave messages a moment to go out before the connections close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // First: every request in flight fails at once, so tasks waiting on one end.
        self.inner.transport.shutdown();
        self.inner.tasks.stop(SHUTDOWN_PATIENCE).await;
    }

    /// Stops the node at once, as a crash would (no leave message; the tasks are told
    /// to stop, nobody waits for them). For tests.
    pub fn kill(&self) {
        self.inner.tasks.cancel();
        self.inner.transport.shutdown();
    }

    /// How many of the node's tasks are running (0 once [`Node::shutdown`] returned).
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.running()
    }

    fn is_stopped(&self) -> bool {
        self.inner.tasks.is_stopping()
    }

    async fn input(&self, event: Event) {
        // Only fails once the overlay task has ended, i.e. the node is stopping.
        let _ = self.inner.overlay_tx.send(Input::Event(event)).await;
    }

    fn learn(&self, id: NodeId, addr: SocketAddr) {
        if id != self.id() {
            let evicted = write(&self.inner.addresses).learn_proven(id, addr);
            self.count_evicted(evicted);
        }
    }

    /// Learns gossiped addresses of nodes not yet known (a proven address is kept),
    /// ignoring ids that do not solve the network's puzzle.
    fn learn_hints(&self, addresses: &[NodeAddress]) {
        let hints = addresses
            .iter()
            .filter(|a| a.id != self.inner.id)
            .map(|a| (a.id, a.addr));
        let learnt =
            write(&self.inner.addresses).learn_hints(hints, self.inner.config.net.key_difficulty);
        self.count_evicted(learnt.evicted);
        if learnt.below_difficulty > 0 {
            self.inner
                .counters
                .ids_below_difficulty
                .fetch_add(learnt.below_difficulty as u64, Ordering::Relaxed);
        }
    }

    fn count_evicted(&self, evicted: usize) {
        if evicted > 0 {
            self.inner
                .counters
                .addresses_evicted
                .fetch_add(evicted as u64, Ordering::Relaxed);
        }
    }

    fn peer(&self, address: &NodeAddress) -> Peer {
        Peer {
            id: address.id,
            addr: address.addr,
        }
    }

    /// The `count` live nodes closest to `key`, closest first, as the node responsible
    /// for `key` sees them (a route through the overlay; retried, bounded).
    pub async fn locate(&self, key: Id, count: u16) -> Result<Vec<NodeAddress>, GatewayError> {
        if let Some(nodes) = self.locate_in_leaf_set(&key, count) {
            self.inner
                .counters
                .locates_local
                .fetch_add(1, Ordering::Relaxed);
            return Ok(nodes);
        }
        let attempts = 3u8;
        // Answers that failed the density test: one that a second route returns too
        // is taken (the set belongs to the key, not to the route).
        let mut suspicious: Vec<Vec<NodeId>> = Vec::new();
        for attempt in 1..=attempts {
            self.inner.counters.locates.fetch_add(1, Ordering::Relaxed);
            let (reply, answer) = oneshot::channel();
            // Every retry goes through another first hop (Castro et al.'s redundant
            // routing): a lost or refused answer may be a hostile node on the way.
            let skip = attempt - 1;
            let input = Input::Locate {
                key,
                count,
                skip,
                reply,
            };
            if self.inner.overlay_tx.send(input).await.is_err() {
                return Err(GatewayError::Stopped);
            }
            match tokio::time::timeout(self.inner.config.locate_timeout, answer).await {
                Ok(Ok(locates::LocateAnswer::Accepted(nodes))) if !nodes.is_empty() => {
                    return Ok(nodes);
                }
                Ok(Ok(locates::LocateAnswer::Suspicious(nodes))) => {
                    let ids: Vec<NodeId> = nodes.iter().map(|a| a.id).collect();
                    if overlay::confirmed_by_another_route(&suspicious, &ids) {
                        return Ok(nodes);
                    }
                    suspicious.push(ids);
                    tracing::debug!(%key, attempt, "a suspicious locate answer; routing again");
                }
                _ => {
                    self.inner
                        .counters
                        .locates_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%key, attempt, "locate failed");
                }
            }
        }
        Err(GatewayError::Locate {
            key,
            attempts: u32::from(attempts),
        })
    }

    /// The `count` closest nodes to `key` from this node's own leaf set, when the leaf
    /// set is sure to contain them: Pastry's first routing step, which would deliver
    /// the locate to a leaf-set member that answers from the same knowledge. Sure when
    /// the leaf set is not full (the whole network is in it), or when none of the
    /// `count` closest is at an edge of the leaf set (any closer node would lie inside
    /// its range, hence in it).
    fn locate_in_leaf_set(&self, key: &Id, count: u16) -> Option<Vec<NodeAddress>> {
        let view = read(&self.inner.view);
        if !view.joined {
            return None;
        }
        let half = self.inner.config.overlay.leaf_set_size / 2;
        let ranked = closest_in_leaf_set(
            key,
            self.id(),
            &view.left,
            &view.right,
            half,
            usize::from(count),
        )?;
        drop(view);
        ranked.iter().map(|id| self.address_of(id)).collect()
    }

    /// A `Located` answer arrived: the overlay judges it ([`locates`]), and the node
    /// counts what became of it and learns the addresses of an answer it takes.
    fn judge_located(
        &self,
        overlay: &Overlay,
        pending: &mut locates::PendingLocates,
        from: NodeId,
        tag: u64,
        nodes: Vec<NodeAddress>,
    ) {
        let hints = nodes.clone();
        let counters = &self.inner.counters;
        match pending.answer(overlay, from, tag, nodes) {
            locates::Judged::Accepted => self.learn_hints(&hints),
            locates::Judged::Suspicious(why) => {
                counters
                    .locate_answers_suspicious
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, ?why, "a suspicious locate answer");
                self.learn_hints(&hints);
            }
            locates::Judged::Rejected(why) => {
                counters
                    .locate_answers_rejected
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "a locate answer refused: {why}");
            }
            locates::Judged::Unmatched => {
                counters
                    .locate_answers_unmatched
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends a PAST request to `to` and returns its answer.
    pub async fn ask(
        &self,
        to: &NodeAddress,
        request: PastRequest,
    ) -> Result<PastResponse, GatewayError> {
        if to.id == self.id() {
            // Boxed: a store asked of oneself may divert, which asks again.
            return Ok(Box::pin(self.handle_past(self.id(), request)).await);
        }
        match self
            .inner
            .transport
            .request(&self.peer(to), Wire::Past(request))
            .await
        {
            Ok(Wire::PastReply(response)) => Ok(response),
            Ok(other) => Err(GatewayError::Protocol {
                node: to.id,
                what: format!("answered a PAST request with {}", wire_name(&other)),
            }),
            Err(source) => Err(GatewayError::Unreachable {
                node: to.id,
                source,
            }),
        }
    }

    /// Answers one PAST request from `from` (another node, as the transport proved it,
    /// or this node's own gateway and maintenance).
    async fn handle_past(&self, from: NodeId, request: PastRequest) -> PastResponse {
        let response = match request {
            PastRequest::Reclaim {
                reclaim,
                certificate,
                keys,
            } => self.handle_reclaim(reclaim, certificate, keys).await,
            PastRequest::Reconcile { keys, .. } => self.handle_reconcile(keys),
            PastRequest::Summary {
                from,
                summary,
                list,
            } => self.handle_summary(from, summary, list),
            other => {
                let node = self.clone();
                match tokio::task::spawn_blocking(move || node.answer_here(from, other)).await {
                    Ok(Answer::Reply(response)) => response,
                    Ok(Answer::Divert {
                        request,
                        size,
                        free,
                    }) => self.divert(request, size, free).await,
                    Ok(Answer::Order(order)) => self.obey(order).await,
                    // Every such request is matched above.
                    Ok(Answer::Elsewhere(_)) => PastResponse::Refused(Refusal::Store(
                        "this request is not answered from the store".into(),
                    )),
                    Err(e) => PastResponse::Refused(Refusal::Store(format!(
                        "the request's task failed: {e}"
                    ))),
                }
            }
        };
        if let PastResponse::Refused(refusal) = &response {
            let counters = &self.inner.counters;
            counters.requests_refused.fetch_add(1, Ordering::Relaxed);
            if matches!(refusal, Refusal::NotAuthorised(_)) {
                counters
                    .requests_unauthorised
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%from, "refused without authority: {refusal}");
            }
            if matches!(refusal, Refusal::OverQuota { .. }) {
                counters.owner_quota_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        response
    }

    /// Answers a request from `from` from the local store ([`Holder::answer`], with
    /// the leaf set as this node's view of the ring), counting what is stored and
    /// served. Blocking: stores wait for their sync.
    fn answer_here(&self, from: NodeId, request: PastRequest) -> Answer {
        if let PastRequest::PutPointer { holder, .. } = &request {
            self.learn_hints(&[*holder]);
        }
        // Read under the lock, not cloned: this runs for every request a peer sends.
        let members: Vec<NodeId> = read(&self.inner.view).members().collect();
        let ring = RingView {
            me: self.id(),
            members: &members,
        };
        let mut answer = self
            .inner
            .holder
            .answer(request, from, unix_now(), ring, |id| self.address_of(id));
        let counters = &self.inner.counters;
        match &mut answer {
            Answer::Reply(PastResponse::Stored { .. }) => {
                counters.fragments_stored.fetch_add(1, Ordering::Relaxed);
            }
            Answer::Reply(PastResponse::Fragment { bytes }) => {
                counters.fragments_served.fetch_add(1, Ordering::Relaxed);
                if self.inner.tamper.load(Ordering::Relaxed)
                    && let Some(first) = bytes.first_mut()
                {
                    *first ^= 1;
                }
            }
            _ => {}
        }
        answer
    }

    /// Carries out a reclaim here ([`Holder::reclaim`], on the blocking pool), then
    /// passes it on to the holders of the copies this node had diverted: whom to tell
    /// and what counts is [`ReclaimForward`]'s decision.
    async fn handle_reclaim(
        &self,
        reclaim: Vec<u8>,
        certificate: Vec<u8>,
        keys: Vec<cairn_core::id::PlacementKey>,
    ) -> PastResponse {
        let node = self.clone();
        let (order, cert) = (reclaim.clone(), certificate.clone());
        let done = tokio::task::spawn_blocking(move || {
            node.inner.holder.reclaim(&order, &cert, &keys, unix_now())
        })
        .await;
        let here = match done {
            Ok(Ok(here)) => here,
            Ok(Err(refusal)) => return PastResponse::Refused(refusal),
            Err(e) => {
                return PastResponse::Refused(cairn_past::Refusal::Store(format!(
                    "the reclaim task failed: {e}"
                )));
            }
        };
        let forward = ReclaimForward::new(reclaim, certificate, here, |id| self.address_of(id));
        self.drive(forward).await.response()
    }

    /// PAST's replica diversion for a primary store this node has no room for: the
    /// [`ReplicaDiversion`] machine picks a leaf-set node outside the `n` closest that
    /// takes it; this node keeps a pointer to it.
    async fn divert(&self, request: StoreRequest, size: u64, free: u64) -> PastResponse {
        let (key, index) = (request.key, request.index);
        let diversion = ReplicaDiversion::from_view(
            request,
            size,
            free,
            self.id(),
            self.overlay_view().members(),
            |id| self.address_of(id),
        );
        match self.drive(diversion).await {
            Ok(Diverted { receipt, to }) => {
                let node = self.clone();
                let kept = tokio::task::spawn_blocking(move || {
                    node.inner.holder.put_pointer(&key, index, &to.id)
                })
                .await;
                if !matches!(kept, Ok(PastResponse::Done)) {
                    tracing::warn!(%key, index, "the pointer to a diverted fragment was not kept: {kept:?}");
                }
                self.inner
                    .counters
                    .fragments_diverted
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%key, index, to = %to.id, "fragment diverted");
                PastResponse::Stored {
                    receipt,
                    diverted_to: Some(to),
                }
            }
            Err(refusal) => PastResponse::Refused(refusal),
        }
    }
}

fn wire_name(wire: &Wire) -> &'static str {
    match wire {
        Wire::Overlay { .. } => "an overlay message",
        Wire::Located { .. } => "a locate answer",
        Wire::Past(_) => "a request",
        Wire::PastReply(_) => "an answer",
    }
}

/// The ids an overlay message names (whose addresses travel with it).
fn ids_in(msg: &OverlayMessage) -> Vec<NodeId> {
    match msg {
        OverlayMessage::Route { body, .. } => match body {
            Routed::Join { joiner } => vec![*joiner],
            Routed::Lookup { origin, .. } => vec![*origin],
            Routed::Locate { requester } => vec![*requester],
        },
        OverlayMessage::JoinReply {
            entries,
            neighbours,
            leaf_set,
        } => entries
            .iter()
            .chain(neighbours)
            .chain(leaf_set.iter().flatten())
            .copied()
            .collect(),
        OverlayMessage::LeafSet { left, right } => left.iter().chain(right).copied().collect(),
        OverlayMessage::Row { entries, .. } => entries.clone(),
        OverlayMessage::RouteAck { .. }
        | OverlayMessage::Ping { .. }
        | OverlayMessage::Pong { .. }
        | OverlayMessage::Announce { .. }
        | OverlayMessage::LeafSetRequest
        | OverlayMessage::RowRequest { .. }
        | OverlayMessage::Leave => Vec::new(),
    }
}

/// How long [`Node::shutdown`] waits for the node's tasks to end before it aborts them.
/// Under the 5 s a supervisor (the test kit, a service manager's default is longer)
/// gives a process between SIGTERM and SIGKILL.
pub const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(2);

/// How long [`Node::shutdown`] waits for the overlay to take its leave.
const LEAVE_PATIENCE: Duration = Duration::from_millis(500);

/// How often a node checks that its bootstrap nodes are still in its overlay, in
/// overlay ticks.
const HEAL_EVERY_TICKS: u32 = 10;

/// The most rounds over the bootstrap addresses a join makes (with
/// [`NodeConfig::join_patience`], a bound in count as well as in time).
const JOIN_ROUNDS_MAX: usize = 20;

/// Partition healing: every [`HEAL_EVERY_TICKS`] ticks, each bootstrap node that is
/// reachable but missing from this node's leaf set is suggested to the overlay, which
/// probes and readmits it. After a partition, the halves' leaf sets have declared each
/// other dead and no gossip crosses; a bootstrap address on the other side is the
/// thread that ties them back together (the leaf-set exchanges do the rest).
async fn heal_task(node: Node) {
    let period = node.inner.config.overlay.tick * HEAL_EVERY_TICKS;
    // Ends when the node's token is cancelled (it is spawned as the node's task).
    loop {
        tokio::time::sleep(period).await;
        for addr in node.inner.config.bootstrap.clone() {
            let known: Vec<NodeId> = node.overlay_view().members().collect();
            // Bounded by the transport's connect and handshake timeouts.
            let Ok(peer) = node.inner.transport.identify(addr).await else {
                continue;
            };
            if peer.id != node.id() && !known.contains(&peer.id) {
                tracing::info!(bootstrap = %peer.id, "a bootstrap node is back in reach; suggesting it");
                node.learn(peer.id, peer.addr);
                node.input(Event::Suggest { node: peer.id }).await;
            }
        }
    }
}

/// The overlay task: the only owner of the [`Overlay`].
async fn overlay_task(
    node: Node,
    mut overlay: Overlay,
    mut inputs: mpsc::Receiver<Input>,
    joined: mpsc::Sender<bool>,
) {
    let started = Instant::now();
    let now = || Time(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    let mut pending = locates::PendingLocates::default();
    let mut actions = Vec::new();
    // Ends when the node's token is cancelled (it is spawned as the node's task).
    while let Some(input) = inputs.recv().await {
        let event = match input {
            Input::Event(event) => {
                // The subnet of the address the transport just proved for the sender:
                // the overlay limits ids per subnet.
                if let Event::Message { from, .. } = &event
                    && let Some(address) = node.address_of(from)
                {
                    overlay.note_subnet(*from, addresses::subnet_of(&address.addr));
                }
                event
            }
            Input::Locate {
                key,
                count,
                skip,
                reply,
            } => {
                // Unguessable: a `Located` answer is matched by it.
                let tag = overlay.fresh_tag();
                pending.insert(tag, key, count, reply);
                let payload =
                    postcard::to_stdvec(&PastRouted::Locate { count }).unwrap_or_default();
                Event::RouteDiverse {
                    key,
                    tag,
                    payload,
                    skip,
                }
            }
            Input::Located { from, tag, nodes } => {
                node.judge_located(&overlay, &mut pending, from, tag, nodes);
                continue;
            }
        };
        let time = now();
        overlay.handle_into(time, event, &mut actions);
        run_actions(&node, &overlay, &mut actions, &mut pending, &joined, time).await;
    }
}

async fn run_actions(
    node: &Node,
    overlay: &Overlay,
    actions: &mut Vec<Action>,
    pending: &mut locates::PendingLocates,
    joined: &mpsc::Sender<bool>,
    time: Time,
) {
    let mut view_changed = false;
    node.inner
        .counters
        .candidate_probes_dropped
        .store(overlay.candidate_probes_dropped(), Ordering::Relaxed);
    node.inner
        .counters
        .subnet_places_refused
        .store(overlay.subnet_places_refused(), Ordering::Relaxed);
    for action in actions.drain(..) {
        match action {
            Action::Send { to, msg } => {
                let Some(target) = node.address_of(&to) else {
                    tracing::debug!(%to, "no address for an overlay message; dropped");
                    continue;
                };
                let addresses = ids_in(&msg)
                    .iter()
                    .filter_map(|id| node.address_of(id))
                    .collect();
                let transport = node.inner.transport.clone();
                let peer = node.peer(&target);
                node.inner.tasks.spawn("an overlay send", async move {
                    if let Err(e) = transport
                        .send(&peer, Wire::Overlay { msg, addresses })
                        .await
                    {
                        tracing::debug!(to = %peer.id, "overlay send failed: {e}");
                    }
                });
            }
            Action::SetTimer { at, kind } => {
                let delay = Duration::from_micros(at.micros_since(time));
                let tx = node.inner.overlay_tx.clone();
                node.inner.tasks.spawn("an overlay timer", async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(Input::Event(Event::Timer(kind))).await;
                });
            }
            Action::Deliver {
                key,
                origin,
                tag,
                payload,
                ..
            } => {
                let Ok(PastRouted::Locate { count }) = postcard::from_bytes(&payload) else {
                    tracing::debug!(%origin, "undecodable routed payload dropped");
                    continue;
                };
                // This node first: the origin takes an answer only from the
                // closest node it names (`Overlay::check_located`).
                let nodes: Vec<NodeAddress> = overlay
                    .located_answer(&key, usize::from(count))
                    .iter()
                    .filter_map(|id| node.address_of(id))
                    .collect();
                if origin == node.id() {
                    pending.answer_here(tag, nodes);
                } else if let Some(target) = node.address_of(&origin) {
                    let transport = node.inner.transport.clone();
                    let peer = node.peer(&target);
                    node.inner.tasks.spawn("a locate answer", async move {
                        if let Err(e) = transport.send(&peer, Wire::Located { tag, nodes }).await {
                            tracing::debug!(to = %peer.id, "locate answer not sent: {e}");
                        }
                    });
                }
            }
            Action::RouteFailed { key, tag } => {
                tracing::debug!(%key, tag, "route failed");
                pending.forget(tag);
            }
            Action::Joined => {
                view_changed = true;
                let _ = joined.try_send(true);
            }
            Action::JoinFailed => {
                let _ = joined.try_send(false);
            }
            Action::NodeDead(id) => {
                tracing::info!(%id, "node declared dead");
                view_changed = true;
            }
            Action::LeafSetChanged => view_changed = true,
        }
    }
    if view_changed {
        node.inner.view_changed.notify_one();
        let (left, right) = overlay.leaf_set();
        *write(&node.inner.view) = OverlayView {
            joined: overlay.is_joined(),
            left,
            right,
        };
    }
}

/// The dispatcher: everything the transport receives.
async fn dispatch_task(node: Node, mut incoming: mpsc::Receiver<Incoming<Wire>>) {
    // Ends when the node's token is cancelled (it is spawned as the node's task).
    while let Some(item) = incoming.recv().await {
        if node.is_stopped() {
            break;
        }
        match item {
            Incoming::Message { from, msg } => match msg {
                Wire::Overlay { msg, addresses } => {
                    node.learn(from.id, from.addr);
                    node.learn_hints(&addresses);
                    node.input(Event::Message { from: from.id, msg }).await;
                }
                Wire::Located { tag, nodes } => {
                    // The overlay task owns the pending locates; it checks the answer
                    // and learns its addresses only if it is taken.
                    let from = from.id;
                    let located = Input::Located { from, tag, nodes };
                    let _ = node.inner.overlay_tx.send(located).await;
                }
                other => {
                    tracing::debug!(from = %from.id, "unexpected one-way {}", wire_name(&other))
                }
            },
            Incoming::Request { from, msg, reply } => match msg {
                Wire::Past(request) => {
                    // Owned, not detached: a request may divert, reclaim or check an
                    // order with other nodes, several round trips.
                    let handler = node.clone();
                    node.inner.tasks.spawn("a peer's request", async move {
                        let response = handler.handle_past(from.id, request).await;
                        reply.reply(Wire::PastReply(response));
                    });
                }
                other => {
                    tracing::debug!(from = %from.id, "unexpected request {}", wire_name(&other));
                    drop(reply);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A node in `dir` on an ephemeral loopback port with a fast overlay tick.
    pub(crate) fn config(dir: &std::path::Path, bootstrap: Vec<SocketAddr>) -> NodeConfig {
        let mut config = NodeConfig::new(dir, SocketAddr::from(([127, 0, 0, 1], 0)), 1 << 30);
        config.overlay.tick = Duration::from_millis(50);
        config.bootstrap = bootstrap;
        config.net.key_difficulty = LOCAL_KEY_DIFFICULTY;
        config
    }

    #[test]
    fn a_new_node_key_solves_the_puzzle_and_a_kept_one_must_too() {
        let dir = tempfile::tempdir().unwrap();
        let made = node_identity(dir.path(), LOCAL_KEY_DIFFICULTY).unwrap();
        assert!(made.public_key().node_id().meets(LOCAL_KEY_DIFFICULTY));
        let kept = node_identity(dir.path(), LOCAL_KEY_DIFFICULTY).unwrap();
        assert_eq!(kept.public_key(), made.public_key(), "the key is kept");

        // A key made before the network asked for the puzzle (fixed bytes that fall
        // short of it) is refused with the file's name, not used to be refused by
        // every peer.
        let old = tempfile::tempdir().unwrap();
        let weak = (1..=255u8)
            .map(|seed| KeyPair::from_secret_bytes(&[seed; 32]))
            .find(|k| !k.public_key().node_id().meets(LOCAL_KEY_DIFFICULTY))
            .unwrap();
        weak.save(&old.path().join("node.key")).unwrap();
        match node_identity(old.path(), LOCAL_KEY_DIFFICULTY) {
            Err(StartError::KeyBelowDifficulty { path, source }) => {
                assert_eq!(path, old.path().join("node.key"));
                assert_eq!(source.needed, LOCAL_KEY_DIFFICULTY);
            }
            other => panic!("expected KeyBelowDifficulty, got {other:?}"),
        }
        assert!(node_identity(old.path(), Difficulty::NONE).is_ok());
    }

    /// Two nodes with maintenance off that both keep every certificate
    /// (`certificate_replicas = 2`), the second joined through the first; `adjust`
    /// changes the first's configuration.
    pub(crate) async fn two_quiet_keepers(
        dirs: &[tempfile::TempDir; 2],
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> (Node, Node) {
        let quiet = |dir: &std::path::Path, bootstrap| {
            let mut config = config(dir, bootstrap);
            config.maintenance.enabled = false;
            config.past.certificate_replicas = 2;
            config
        };
        let mut first = quiet(dirs[0].path(), Vec::new());
        adjust(&mut first);
        let first = Node::start(first).await.unwrap();
        let second = Node::start(quiet(dirs[1].path(), vec![first.advertised()]))
            .await
            .unwrap();
        (first, second)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_shutdown_every_task_of_the_node_has_ended() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let first = Node::start(config(dirs[0].path(), Vec::new()))
            .await
            .unwrap();
        let second = Node::start(config(dirs[1].path(), vec![first.advertised()]))
            .await
            .unwrap();
        let api = http::serve(
            second.clone(),
            http::ApiConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                token: None,
            },
        )
        .await
        .unwrap();
        // The overlay, the dispatcher, heal, maintenance, scrub and the API server.
        assert!(second.running_tasks() >= 6, "{}", second.running_tasks());
        second.shutdown().await;
        assert_eq!(second.running_tasks(), 0);
        drop(api);
        first.shutdown().await;
        assert_eq!(first.running_tasks(), 0);
        assert!(second.is_last_handle(), "no task holds the node any more");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_with_a_stalled_peer_still_shuts_down_within_its_patience() {
        // A peer that accepts connections and never says a word: a handshake with it
        // would wait out the (hour-long) handshake timeout.
        let stalled = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let stalled_addr = stalled.local_addr().unwrap();
        let (accepted_tx, mut accepted) = mpsc::channel(16);
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = stalled.accept().await {
                held.push(socket);
                let _ = accepted_tx.try_send(());
            }
        });
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let first = Node::start(config(dirs[0].path(), Vec::new()))
            .await
            .unwrap();
        // It joins through `first`; the heal task then keeps trying the stalled address.
        let mut with_stalled = config(dirs[1].path(), vec![first.advertised(), stalled_addr]);
        with_stalled.net.handshake_timeout = Duration::from_secs(3600);
        let node = Node::start(with_stalled).await.unwrap();
        // Bounded: the heal task dials every 10 ticks (0.5 s).
        tokio::time::timeout(Duration::from_secs(60), async {
            while accepted.try_recv().is_err() || node.running_tasks() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the heal task dials the stalled peer");
        // Far below the handshake timeout: the stalled dial did not hold the node up.
        tokio::time::timeout(Duration::from_secs(60), node.shutdown())
            .await
            .expect("the node stops although a dial to its stalled peer is in flight");
        assert_eq!(node.running_tasks(), 0);
        first.shutdown().await;
        holder.abort();
    }
}
