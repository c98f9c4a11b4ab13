//! The transport: authenticated TCP connections between nodes, carrying one-way
//! messages and multiplexed requests of any serde message type.
//!
//! Owns: [`Transport`] (listener, connection pool, per-peer request limits),
//! [`NetConfig`], [`Peer`], [`Incoming`], [`Responder`], [`NetError`], [`NetStats`].
//! Its messages use [`cairn_core::codec::bytes`], a serde helper that makes `Vec<u8>`
//! fields cheap to encode (use it on every bulk payload: without it, postcard handles
//! a megabyte at under 1 GB/s, one element at a time).
//! Generic over the message type `M`, so it knows nothing of the overlay or placement
//! messages the daemon sends through it.
//!
//! May use: [`cairn_core`] ([`cairn_core::id`], [`cairn_core::crypto`]: node keys and
//! handshake signatures), `tokio`, `postcard`, `serde`, `tracing`. No other cairn crate.
//!
//! # Wire format
//!
//! Everything on a connection is a *frame*: a 4-byte big-endian length, then that many
//! bytes of postcard. A length over [`NetConfig::max_frame_bytes`] (512 bytes during
//! the handshake) is refused before anything is allocated for it and the connection
//! is closed; so is a body that does not decode exactly (trailing bytes included), and
//! a stream that ends inside a frame. Only that connection is affected.
//!
//! # Handshake
//!
//! Both sides do the same thing, whoever dialled:
//!
//! 1. send `Hello { magic: "cairn", version: 1, public_key, nonce, advertised }`, with
//!    32 fresh random bytes of nonce and the address the sender can be reached at;
//! 2. on receiving the other's hello (magic and version checked, refused if the key is
//!    our own: a connection to ourselves, and refused if the key does not solve the
//!    network's puzzle, [`NetConfig::key_difficulty`], before anything is signed for
//!    it), send `Proof { signature }`: an ed25519
//!    signature, domain `"cairn/handshake/v1"` (see
//!    [`KeyPair::sign_domain`](cairn_core::crypto::KeyPair::sign_domain)), over
//!    `peer's nonce ‖ own public key ‖ postcard(own advertised address)`;
//! 3. check the other's proof with the key from its hello.
//!
//! The peer's [`NodeId`] is then `SHA-256(public key)`: proven by a signature over our
//! fresh nonce, never taken from what the peer claims; and it solves the static puzzle
//! on node keys ([`Difficulty`]), so every id a session is ever opened with cost its
//! holder about `2^difficulty` key generations ([`NetStats::key_below_difficulty`]
//! counts the refusals, on either side of the connection). A dialler that expected a
//! particular id and finds another fails with [`NetError::WrongPeer`]. The whole
//! exchange is bounded by [`NetConfig::handshake_timeout`].
//!
//! The handshake authenticates the peer; it does not encrypt or MAC what follows, so
//! someone on the path could still alter frames after it. The data above is
//! self-certifying (hashes and owner signatures), which is why that is acceptable for
//! now; an encrypted session is a later layer.
//!
//! # After the handshake
//!
//! Frames are `OneWay(M)`, `Request { id, msg }` and `Response { id, result }`
//! (`result` is `Ok(M)` or `Err(reason)`); postcard encodes the variant index as the
//! first byte. Requests are multiplexed by id over one connection; a response whose id
//! is unknown (its requester gave up) is ignored.
//!
//! # Behaviour
//!
//! - One pool entry per peer id. Concurrent callers wait for one dial instead of
//!   dialling each; a connection the peer opened to us serves our requests too.
//! - Each connection has a reader task and a writer task; the writer takes frames from
//!   a bounded queue, in order (a large frame delays the small ones behind it by the
//!   time it takes to write, which on loopback is milliseconds for megabytes).
//! - At most [`NetConfig::max_in_flight_per_peer`] requests are outstanding to one
//!   peer; more wait. Inbound, a peer id has at most as many unanswered requests, over
//!   all its connections: past that its readers stop, which pushes back on the peer
//!   through TCP. The slots belong to the id, not the connection, so reconnecting does
//!   not buy a peer more.
//! - Inbound connections are admitted before anything is spent on them: at most
//!   [`NetConfig::max_inbound`] in total and [`NetConfig::max_inbound_per_address`]
//!   from one IPv4 address or IPv6 /64, of which at most
//!   [`NetConfig::max_handshakes_per_address`] may be in their handshake at once
//!   ([`NetConfig::max_handshakes`] in total). A socket over a limit is closed at once
//!   and counted ([`NetStats::inbound_refused`], [`NetStats::handshakes_refused`]).
//! - One inbound connection per peer id: a newer one from the same id replaces the
//!   older ([`NetStats::inbound_replaced`]). The id is proven by the handshake, so only
//!   the key's holder can displace its own connection, and a peer that restarted (or
//!   whose old connection went half-open) gets back in at once instead of waiting for
//!   our idle timer; refusing the newcomer would lock it out for that long.
//! - Each connection's queued outgoing frames are budgeted in bytes
//!   ([`NetConfig::write_budget_bytes`], at least one largest frame). Our own requests
//!   and messages wait for room; an answer that does not fit means the peer asks
//!   faster than it reads, and the connection is closed
//!   ([`NetStats::write_budget_exceeded`]): a peer that never reads its answers costs
//!   one budget, not gigabytes.
//! - At most [`NetConfig::max_dials`] dials (connect and handshake) run at once;
//!   more wait for a slot, within their own timeouts.
//! - Received messages go to one bounded queue ([`NetConfig::incoming_queue`]). When
//!   it is full, readers stop reading, and with them the responses behind on the same
//!   connection: drain the queue without waiting inline for this transport's own
//!   requests (spawn the handler instead).
//! - Every wait on the network is bounded: connecting, the handshake, each request as
//!   a whole, each write, each frame body once begun; a connection with nothing to do
//!   for [`NetConfig::idle_timeout`] is closed. A closed connection leaves the pool and
//!   fails its pending requests at once ([`NetError::Closed`]); the next call dials
//!   again.

mod limits;
mod wire;
#[cfg(feature = "fuzzing")]
pub use wire::fuzzing;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::timeout;
use tracing::{debug, warn};

use cairn_core::crypto::KeyPair;
use cairn_core::id::{BelowDifficulty, Difficulty, NodeId};
use limits::{Admission, AdmissionLimits, InboundSlot, Refused};
use wire::{Frame, ReadError};

/// Frames queued for one connection's writer before senders wait.
const WRITER_QUEUE: usize = 64;
/// Buffer of each connection's reader and writer.
const SOCKET_BUFFER: usize = 64 * 1024;
/// The reason a requester sees when the responder dropped its [`Responder`].
const NO_ANSWER: &str = "no answer";
/// The puzzle difficulty of a real network ([`NetConfig::key_difficulty`]): 16 bits,
/// about 65,000 key generations, 1.3 s on average on one quiet core of the
/// development machine (45,000 to 52,000 tries a second; docs/SECURITY.md has the
/// table). Devnets and tests on one machine use less.
pub const DEFAULT_KEY_DIFFICULTY: Difficulty = Difficulty(16);

/// Limits and timeouts of a [`Transport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The largest frame sent or accepted (default 24 MiB: erasure fragments of 1 MiB
    /// blocks are 256 KiB, and segments may be up to 16 MiB).
    pub max_frame_bytes: usize,
    /// How long a TCP connect may take (default 3 s).
    pub connect_timeout: Duration,
    /// How long the handshake may take once connected (default 3 s).
    pub handshake_timeout: Duration,
    /// How long a whole request may take: waiting for a slot, connecting, sending and
    /// the answer (default 30 s). Also bounds a one-way send, and each frame write.
    pub request_timeout: Duration,
    /// Requests outstanding to one peer at once (default 64); more wait for a slot.
    pub max_in_flight_per_peer: usize,
    /// Capacity of the queue of [`Incoming`] messages (default 1024). When it is full,
    /// sockets are not read.
    pub incoming_queue: usize,
    /// A connection unused this long is closed (default 120 s).
    pub idle_timeout: Duration,
    /// Inbound connections held at once, handshaking ones included (default 1024).
    pub max_inbound: usize,
    /// Inbound connections from one IPv4 address or IPv6 /64 (default 32).
    pub max_inbound_per_address: usize,
    /// Handshakes of accepted connections running at once (default 256).
    pub max_handshakes: usize,
    /// Handshakes running at once from one IPv4 address or IPv6 /64 (default 8).
    pub max_handshakes_per_address: usize,
    /// Bytes of frames queued for one connection's writer (default 64 MiB; never less
    /// than `max_frame_bytes`).
    pub write_budget_bytes: usize,
    /// Dials (connect and handshake) running at once (default 64).
    pub max_dials: usize,
    /// The network's puzzle: a peer whose key's node id does not solve it at this
    /// difficulty is refused in the handshake (default [`DEFAULT_KEY_DIFFICULTY`]). Every
    /// node of a network must use the same value, and its own key must solve it.
    pub key_difficulty: Difficulty,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        NetConfig {
            max_frame_bytes: 24 * 1024 * 1024,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            max_in_flight_per_peer: 64,
            incoming_queue: 1024,
            idle_timeout: Duration::from_secs(120),
            max_inbound: 1024,
            max_inbound_per_address: 32,
            max_handshakes: 256,
            max_handshakes_per_address: 8,
            write_budget_bytes: 64 * 1024 * 1024,
            max_dials: 64,
            key_difficulty: DEFAULT_KEY_DIFFICULTY,
        }
    }
}

/// A node as the transport knows it: its id, and the address it advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The node's id (`SHA-256` of its public key).
    pub id: NodeId,
    /// The address the node advertises (which for a peer that dialled us is not the
    /// address its connection came from).
    pub addr: SocketAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.id, self.addr)
    }
}

/// A message received from a peer.
#[derive(Debug)]
pub enum Incoming<M> {
    /// A one-way message.
    Message {
        /// Who sent it (proven by the handshake).
        from: Peer,
        /// The message.
        msg: M,
    },
    /// A request, to be answered through `reply`.
    Request {
        /// Who sent it (proven by the handshake).
        from: Peer,
        /// The request.
        msg: M,
        /// Answers it; dropping it answers "no answer".
        reply: Responder<M>,
    },
}

/// The way to answer one [`Incoming::Request`]. May be sent to and answered from any
/// task. Dropping it unanswered sends an error, so the requester fails at once with
/// [`NetError::Remote`] instead of waiting for its timeout.
pub struct Responder<M> {
    pending: Option<PendingReply>,
    _message: PhantomData<fn(M)>,
}

/// What a [`Responder`] needs to deliver its answer.
struct PendingReply {
    id: u64,
    peer: Peer,
    writer: mpsc::Sender<Outgoing>,
    /// One of the peer's inbound-request slots, freed once the answer is queued.
    slot: ServingSlot,
    runtime: Handle,
    max_frame_bytes: usize,
    write_timeout: Duration,
    /// The connection's write budget: an answer that does not fit closes it.
    budget: WriteBudget,
    /// Closes the connection (and counts it) when an answer is over budget.
    over_budget: OverBudget,
}

/// Closes one connection because its peer asks faster than it reads.
type OverBudget = Arc<dyn Fn() + Send + Sync>;

/// One of a peer's slots for unanswered requests ([`PeerEntry::serving`]). When it is
/// given back, the peer's pool entry goes if nothing else needs it (the entry outlives
/// the peer's connections while its requests are unanswered, so that a reconnect finds
/// the slots taken).
struct ServingSlot {
    permit: Option<OwnedSemaphorePermit>,
    released: Arc<dyn Fn() + Send + Sync>,
}

impl Drop for ServingSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        (self.released)();
    }
}

/// The bytes one connection may have queued for its writer: a semaphore of bytes, each
/// queued frame holding its length (at most `total`) until it is written or dropped.
#[derive(Clone)]
struct WriteBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

impl WriteBudget {
    fn new(config: &NetConfig) -> WriteBudget {
        let wanted = config
            .write_budget_bytes
            .max(config.max_frame_bytes.saturating_add(wire::LENGTH_PREFIX));
        let total = u32::try_from(wanted.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        WriteBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// What a frame of `len` bytes holds of the budget (a frame larger than the whole
    /// budget holds all of it, so it still goes, alone).
    fn charge(&self, len: usize) -> u32 {
        u32::try_from(len).unwrap_or(u32::MAX).min(self.total)
    }

    /// Room for `len` bytes now, or `None`.
    fn try_take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.bytes)
            .try_acquire_many_owned(self.charge(len))
            .ok()
    }

    /// Room for `len` bytes, waiting for it.
    async fn take(&self, len: usize) -> Result<OwnedSemaphorePermit, NetError> {
        Arc::clone(&self.bytes)
            .acquire_many_owned(self.charge(len))
            .await
            .map_err(|_| NetError::Closed)
    }
}

impl<M> fmt::Debug for Responder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pending {
            Some(p) => write!(f, "Responder(request {} from {})", p.id, p.peer),
            None => write!(f, "Responder(answered)"),
        }
    }
}

impl<M: Serialize> Responder<M> {
    /// Sends `msg` as the answer. If it cannot be encoded or is over the frame limit,
    /// the requester gets [`NetError::Remote`] saying so (and a warning is logged).
    /// If the connection has closed meanwhile, the answer is dropped: the requester
    /// has already failed with [`NetError::Closed`].
    pub fn reply(mut self, msg: M) {
        if let Some(pending) = self.pending.take() {
            let answer = Frame::Response {
                id: pending.id,
                result: Ok(msg),
            };
            let frame = wire::encode_frame(&answer, pending.max_frame_bytes).or_else(|e| {
                warn!(peer = %pending.peer, error = %e, "cannot send an answer");
                error_response(pending.id, &format!("the answer could not be sent: {e}"))
            });
            if let Ok(frame) = frame {
                pending.deliver(frame);
            }
        }
    }
}

impl<M> Drop for Responder<M> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            if let Ok(frame) = error_response(pending.id, NO_ANSWER) {
                pending.deliver(frame);
            }
        }
    }
}

/// A `Response` frame carrying an error. `Result::Err` holds no `M`, so encoding it
/// with `M = ()` gives the same bytes as for any `M` (a test pins this).
fn error_response(id: u64, reason: &str) -> Result<Vec<u8>, NetError> {
    let frame: Frame<()> = Frame::Response {
        id,
        result: Err(reason.to_owned()),
    };
    wire::encode_frame(&frame, usize::MAX)
}

impl PendingReply {
    /// Queues `frame` to the connection's writer without blocking the caller.
    fn deliver(self, frame: Vec<u8>) {
        let PendingReply {
            writer,
            slot,
            runtime,
            write_timeout,
            budget,
            over_budget,
            ..
        } = self;
        let Some(charge) = budget.try_take(frame.len()) else {
            // The peer's answers are piling up unread: drop the connection, not memory.
            drop(slot);
            over_budget();
            return;
        };
        let item = Outgoing {
            frame,
            written: None,
            _charge: Some(charge),
        };
        match writer.try_send(item) {
            Ok(()) => drop(slot),
            Err(mpsc::error::TrySendError::Closed(_)) => drop(slot),
            Err(mpsc::error::TrySendError::Full(item)) => {
                // The slot stays taken until the answer is queued, so the answers
                // waiting here are bounded by the peer's inbound slots (and in bytes
                // by the budget they hold).
                runtime.spawn(async move {
                    let _ = timeout(write_timeout, writer.send(item)).await;
                    drop(slot);
                });
            }
        }
    }
}

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The operating system refused (bind, connect, read or write).
    #[error("network i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The TCP connection was not established within the connect timeout.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// The address dialled.
        addr: SocketAddr,
    },
    /// The peer failed the handshake.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The node at the address proved another id than the one expected.
    #[error("expected node {expected:?} but the peer proved it is {proven:?}")]
    WrongPeer {
        /// The id the caller asked for.
        expected: NodeId,
        /// The id the peer proved.
        proven: NodeId,
    },
    /// A frame over the size limit (to send, or announced by the peer).
    #[error("frame of {len} bytes is over the limit of {max}")]
    FrameTooLarge {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes that do not decode as what was expected.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The request was not answered within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The connection (or the transport) closed before the operation completed.
    #[error("connection closed")]
    Closed,
    /// The peer answered with an error instead of a message.
    #[error("the peer answered with an error: {0}")]
    Remote(String),
    /// Bound to an unspecified address (0.0.0.0 or ::) without an address to advertise.
    #[error("listening on {listen}: an address to advertise is required")]
    NeedAdvertise {
        /// The bound address.
        listen: SocketAddr,
    },
    /// The address leads back to this node.
    #[error("refusing a connection to ourselves")]
    SelfConnect,
    /// The peer's key does not solve the network's puzzle ([`NetConfig::key_difficulty`]).
    #[error("handshake refused: {0}")]
    KeyBelowDifficulty(#[from] BelowDifficulty),
}

/// Counters of a [`Transport`] (for metrics). All count since `bind`, except
/// `in_flight`, which is the current number of outstanding requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Connections we dialled that passed the handshake.
    pub connections_opened: u64,
    /// Connections peers dialled that passed the handshake.
    pub connections_accepted: u64,
    /// Handshakes that failed, either way (including wrong-peer and self-connects).
    pub handshakes_failed: u64,
    /// Frames refused after the handshake: oversized, malformed or truncated.
    pub frames_refused: u64,
    /// Requests started.
    pub requests_sent: u64,
    /// Requests that ended in an error (timeouts included).
    pub requests_failed: u64,
    /// Requests that ran out of time.
    pub requests_timed_out: u64,
    /// Bytes of frames written after handshakes (length prefixes included).
    pub bytes_sent: u64,
    /// Bytes of frames read after handshakes (length prefixes included).
    pub bytes_received: u64,
    /// Requests outstanding now.
    pub in_flight: u64,
    /// Inbound connections closed at once because the node held
    /// [`NetConfig::max_inbound`].
    pub inbound_refused: u64,
    /// Inbound connections closed at once because their address (IPv4, or IPv6 /64)
    /// held [`NetConfig::max_inbound_per_address`].
    pub inbound_refused_per_address: u64,
    /// Inbound connections closed at once because their address (or the node) had its
    /// handshakes running.
    pub handshakes_refused: u64,
    /// Inbound connections closed because a newer one from the same peer id came.
    pub inbound_replaced: u64,
    /// Connections closed because their peer's unread answers went over the write
    /// budget.
    pub write_budget_exceeded: u64,
    /// Inbound connections held now (handshaking ones included).
    pub inbound_connections: u64,
    /// Handshakes refused because the peer's key does not solve the network's puzzle
    /// ([`NetConfig::key_difficulty`]), whoever dialled (also in `handshakes_failed`).
    pub key_below_difficulty: u64,
}

#[derive(Default)]
struct Counters {
    connections_opened: AtomicU64,
    connections_accepted: AtomicU64,
    handshakes_failed: AtomicU64,
    frames_refused: AtomicU64,
    requests_sent: AtomicU64,
    requests_failed: AtomicU64,
    requests_timed_out: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    in_flight: AtomicU64,
    inbound_refused: AtomicU64,
    inbound_refused_per_address: AtomicU64,
    handshakes_refused: AtomicU64,
    inbound_replaced: AtomicU64,
    write_budget_exceeded: AtomicU64,
    key_below_difficulty: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// Decrements the in-flight gauge when a request ends, however it ends.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One frame for a writer, and whom to tell once it is on the socket.
struct Outgoing {
    frame: Vec<u8>,
    written: Option<oneshot::Sender<()>>,
    /// Its share of the connection's write budget, given back once written or dropped.
    _charge: Option<OwnedSemaphorePermit>,
}

type Reply<M> = oneshot::Sender<Result<M, NetError>>;

/// One authenticated connection.
struct Conn<M> {
    peer: Peer,
    /// The socket's remote address (for logs; a dialler's is an ephemeral port).
    remote: SocketAddr,
    /// Whether we dialled it.
    dialled: bool,
    writer: mpsc::Sender<Outgoing>,
    /// The bytes queued for `writer`.
    budget: WriteBudget,
    /// Requests awaiting an answer; `None` once closed, so nothing is added after the
    /// close has failed them all.
    pending: Mutex<Option<HashMap<u64, Reply<M>>>>,
    next_request: AtomicU64,
    /// Slots for requests the peer sent that are not answered yet: the peer id's,
    /// shared by all its connections ([`PeerEntry::serving`]).
    serving: Arc<Semaphore>,
    serving_slots: usize,
    /// An inbound connection's place in the admission counts, given back at close.
    inbound: Mutex<Option<InboundSlot>>,
    /// Milliseconds since `opened` at the last frame read or written.
    last_used_ms: AtomicU64,
    opened: Instant,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl<M> Conn<M> {
    fn is_open(&self) -> bool {
        lock(&self.pending).is_some()
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_used_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_used_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }

    /// No request outstanding either way.
    fn quiet(&self) -> bool {
        lock(&self.pending).as_ref().is_none_or(|p| p.is_empty())
            && self.serving.available_permits() == self.serving_slots
    }

    /// Registers a request; its answer arrives on the receiver.
    fn start_request(&self) -> Result<(u64, oneshot::Receiver<Result<M, NetError>>), NetError> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        match lock(&self.pending).as_mut() {
            Some(pending) => {
                pending.insert(id, tx);
                Ok((id, rx))
            }
            None => Err(NetError::Closed),
        }
    }

    fn forget_request(&self, id: u64) {
        if let Some(pending) = lock(&self.pending).as_mut() {
            pending.remove(&id);
        }
    }

    fn answer(&self, id: u64, result: Result<M, NetError>) {
        let waiter = lock(&self.pending).as_mut().and_then(|p| p.remove(&id));
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(result);
            }
            None => debug!(peer = %self.peer, id, "answer to an unknown request ignored"),
        }
    }

    /// Queues one of our own frames, waiting for room in the write budget and queue.
    async fn enqueue(
        &self,
        frame: Vec<u8>,
        written: Option<oneshot::Sender<()>>,
    ) -> Result<(), NetError> {
        let charge = self.budget.take(frame.len()).await?;
        let item = Outgoing {
            frame,
            written,
            _charge: Some(charge),
        };
        self.writer.send(item).await.map_err(|_| NetError::Closed)
    }
}

/// Removes a request from its connection if the requester stops waiting (timeout or
/// cancellation), so late answers are ignored and the map does not grow.
struct PendingGuard<'a, M> {
    conn: &'a Conn<M>,
    id: u64,
}

impl<M> Drop for PendingGuard<'_, M> {
    fn drop(&mut self) {
        self.conn.forget_request(self.id);
    }
}

/// Everything the pool knows about one peer id.
struct PeerEntry<M> {
    /// Slots for our requests to this peer.
    in_flight: Arc<Semaphore>,
    /// Slots for this peer's requests to us, over all its connections. The entry stays
    /// in the pool while any is taken, so a reconnect finds them.
    serving: Arc<Semaphore>,
    /// Held while dialling, so concurrent callers share one dial.
    dial: tokio::sync::Mutex<()>,
    /// Its live connections, oldest first (usually one).
    conns: Mutex<Vec<Arc<Conn<M>>>>,
}

impl<M> PeerEntry<M> {
    fn live(&self) -> Option<Arc<Conn<M>>> {
        lock(&self.conns).iter().find(|c| c.is_open()).cloned()
    }

    /// Nothing depends on the entry but the pool itself: no connection, and none of
    /// the peer's requests unanswered. (The caller checks who else holds it.)
    fn unused(&self, serving_slots: usize) -> bool {
        lock(&self.conns).is_empty() && self.serving.available_permits() == serving_slots
    }
}

/// A caller's hold on a pool entry. When the last holder lets go of an entry without
/// connections, the entry leaves the pool, so the pool does not keep every peer ever
/// tried.
struct EntryRef<'a, M> {
    inner: &'a Inner<M>,
    id: NodeId,
    entry: Arc<PeerEntry<M>>,
}

impl<M> std::ops::Deref for EntryRef<'_, M> {
    type Target = PeerEntry<M>;

    fn deref(&self) -> &PeerEntry<M> {
        &self.entry
    }
}

impl<M> Drop for EntryRef<'_, M> {
    fn drop(&mut self) {
        let mut peers = lock(&self.inner.peers);
        let Some(pooled) = peers.get(&self.id) else {
            return;
        };
        // Two holders: the pool and us. Everyone else takes a hold under the pool
        // lock, which we have, so nobody can start using it as we remove it.
        if Arc::ptr_eq(pooled, &self.entry)
            && Arc::strong_count(&self.entry) == 2
            && self.entry.unused(self.inner.slots())
        {
            peers.remove(&self.id);
        }
    }
}

/// The state shared by a transport's clones and tasks.
struct Inner<M> {
    identity: Arc<KeyPair>,
    id: NodeId,
    local_addr: SocketAddr,
    advertised: SocketAddr,
    config: NetConfig,
    counters: Counters,
    peers: Mutex<HashMap<NodeId, Arc<PeerEntry<M>>>>,
    /// Taken at shutdown, so the receiver ends once the connections' tasks are gone.
    incoming: Mutex<Option<mpsc::Sender<Incoming<M>>>>,
    shut_down: AtomicBool,
    accept_task: Mutex<Option<AbortHandle>>,
    runtime: Handle,
    /// Inbound connections and handshakes, by source address.
    admission: Arc<Admission>,
    /// Slots of the dials running at once.
    dials: Arc<Semaphore>,
}

/// Locks a std mutex, recovering from poisoning: every critical section here leaves
/// the data consistent, so a panic elsewhere does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The transport of one node. Cheap to clone; when the last clone is dropped it shuts
/// down as [`Transport::shutdown`] does.
pub struct Transport<M> {
    inner: Arc<Inner<M>>,
    _owner: Arc<ShutdownOnDrop<M>>,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Transport<M> {
        Transport {
            inner: Arc::clone(&self.inner),
            _owner: Arc::clone(&self._owner),
        }
    }
}

impl<M> fmt::Debug for Transport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("id", &self.inner.id)
            .field("advertised", &self.inner.advertised)
            .finish_non_exhaustive()
    }
}

/// Shuts the transport down when the last [`Transport`] clone goes (its tasks hold
/// the shared state, so it would otherwise live on).
struct ShutdownOnDrop<M>(Arc<Inner<M>>);

impl<M> Drop for ShutdownOnDrop<M> {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl<M: Serialize + DeserializeOwned + Send + Sync + 'static> Transport<M> {
    /// Listens on `listen` (port 0 picks a free port) as the node `identity`, and
    /// returns the transport and the queue of messages peers send it.
    ///
    /// `advertise` is the address peers are told to reach us at; it defaults to the
    /// bound address, except that an unspecified one (0.0.0.0, ::) cannot be reached
    /// and so requires it ([`NetError::NeedAdvertise`]).
    pub async fn bind(
        identity: Arc<KeyPair>,
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
        config: NetConfig,
    ) -> Result<(Transport<M>, mpsc::Receiver<Incoming<M>>), NetError> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let advertised = match advertise {
            Some(addr) => addr,
            None if local_addr.ip().is_unspecified() => {
                return Err(NetError::NeedAdvertise { listen: local_addr });
            }
            None => local_addr,
        };
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_queue.max(1));
        let inner = Arc::new(Inner {
            id: identity.public_key().node_id(),
            identity,
            local_addr,
            advertised,
            counters: Counters::default(),
            peers: Mutex::new(HashMap::new()),
            incoming: Mutex::new(Some(incoming_tx)),
            shut_down: AtomicBool::new(false),
            accept_task: Mutex::new(None),
            runtime: Handle::current(),
            admission: Admission::new(AdmissionLimits {
                total: config.max_inbound,
                per_address: config.max_inbound_per_address,
                handshakes: config.max_handshakes,
                handshakes_per_address: config.max_handshakes_per_address,
            }),
            dials: Arc::new(Semaphore::new(
                config.max_dials.clamp(1, Semaphore::MAX_PERMITS),
            )),
            config,
        });
        let accept = tokio::spawn(Arc::clone(&inner).accept_loop(listener));
        *lock(&inner.accept_task) = Some(accept.abort_handle());
        debug!(id = ?inner.id, %local_addr, %advertised, "transport listening");
        let transport = Transport {
            _owner: Arc::new(ShutdownOnDrop(Arc::clone(&inner))),
            inner,
        };
        Ok((transport, incoming_rx))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address peers are told to reach us at.
    pub fn advertised(&self) -> SocketAddr {
        self.inner.advertised
    }

    /// This node as a [`Peer`] (its id and advertised address).
    pub fn me(&self) -> Peer {
        Peer {
            id: self.inner.id,
            addr: self.inner.advertised,
        }
    }

    /// Sends `msg` to `to` and waits for its answer, all within the request timeout.
    /// Connects (and proves `to.id`) if no connection to that id is open.
    pub async fn request(&self, to: &Peer, msg: M) -> Result<M, NetError> {
        let counters = &self.inner.counters;
        bump(&counters.requests_sent, 1);
        bump(&counters.in_flight, 1);
        let _in_flight = InFlight(&counters.in_flight);
        let result = match timeout(
            self.inner.config.request_timeout,
            self.request_within(to, msg),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                bump(&counters.requests_timed_out, 1);
                Err(NetError::Timeout)
            }
        };
        if let Err(error) = &result {
            bump(&counters.requests_failed, 1);
            debug!(peer = %to, %error, "request failed");
        }
        result
    }

    async fn request_within(&self, to: &Peer, msg: M) -> Result<M, NetError> {
        let entry = self.inner.entry(to)?;
        let _slot = Arc::clone(&entry.entry.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| NetError::Closed)?;
        let conn = self.inner.connection(&entry, to).await?;
        let (id, answer) = conn.start_request()?;
        let _pending = PendingGuard { conn: &conn, id };
        let frame = wire::encode_frame(&Frame::Request { id, msg }, self.max_frame())?;
        conn.enqueue(frame, None).await?;
        answer.await.map_err(|_| NetError::Closed)?
    }

    /// Sends a one-way message; `Ok` once it is written to the connection (not a sign
    /// that the peer has handled it). Bounded by the request timeout.
    pub async fn send(&self, to: &Peer, msg: M) -> Result<(), NetError> {
        let send = async {
            let entry = self.inner.entry(to)?;
            let conn = self.inner.connection(&entry, to).await?;
            let frame = wire::encode_frame(&Frame::OneWay(msg), self.max_frame())?;
            let (written, on_socket) = oneshot::channel();
            conn.enqueue(frame, Some(written)).await?;
            on_socket.await.map_err(|_| NetError::Closed)
        };
        match timeout(self.inner.config.request_timeout, send).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout),
        }
    }

    /// Connects to `addr` without knowing who is there (a bootstrap node), runs the
    /// handshake and returns the peer it proved to be. The connection is kept for
    /// later calls. If a connection to a peer advertising `addr` is already open, that
    /// peer is returned without dialling.
    pub async fn identify(&self, addr: SocketAddr) -> Result<Peer, NetError> {
        if self.inner.is_shut_down() {
            return Err(NetError::Closed);
        }
        let known = lock(&self.inner.peers).values().find_map(|entry| {
            entry
                .live()
                .map(|conn| conn.peer)
                .filter(|peer| peer.addr == addr)
        });
        if let Some(peer) = known {
            return Ok(peer);
        }
        let conn = Arc::clone(&self.inner).dial(addr, None).await?;
        Ok(conn.peer)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        let c = &self.inner.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NetStats {
            connections_opened: get(&c.connections_opened),
            connections_accepted: get(&c.connections_accepted),
            handshakes_failed: get(&c.handshakes_failed),
            frames_refused: get(&c.frames_refused),
            requests_sent: get(&c.requests_sent),
            requests_failed: get(&c.requests_failed),
            requests_timed_out: get(&c.requests_timed_out),
            bytes_sent: get(&c.bytes_sent),
            bytes_received: get(&c.bytes_received),
            in_flight: get(&c.in_flight),
            inbound_refused: get(&c.inbound_refused),
            inbound_refused_per_address: get(&c.inbound_refused_per_address),
            handshakes_refused: get(&c.handshakes_refused),
            inbound_replaced: get(&c.inbound_replaced),
            write_budget_exceeded: get(&c.write_budget_exceeded),
            inbound_connections: self.inner.admission.connections() as u64,
            key_below_difficulty: get(&c.key_below_difficulty),
        }
    }

    /// Stops accepting, closes every connection and fails pending requests with
    /// [`NetError::Closed`]; later calls fail with it too. The [`Incoming`] receiver
    /// ends once the connections' tasks have stopped.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn max_frame(&self) -> usize {
        self.inner.config.max_frame_bytes
    }
}

impl<M> Inner<M> {
    /// Request slots per peer, each way, within what a semaphore can hold.
    fn slots(&self) -> usize {
        self.config
            .max_in_flight_per_peer
            .clamp(1, Semaphore::MAX_PERMITS)
    }

    /// Removes `peer`'s pool entry if only the pool holds it and it has neither a
    /// connection nor an unanswered request.
    fn forget_if_unused(&self, peer: &NodeId) {
        let mut peers = lock(&self.peers);
        if let Some(entry) = peers.get(peer)
            && Arc::strong_count(entry) == 1
            && entry.unused(self.slots())
        {
            peers.remove(peer);
        }
    }

    fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }

    fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        debug!(id = ?self.id, "transport shutting down");
        if let Some(accept) = lock(&self.accept_task).take() {
            accept.abort();
        }
        lock(&self.incoming).take();
        let entries: Vec<_> = lock(&self.peers).values().cloned().collect();
        for entry in entries {
            entry.in_flight.close();
            let conns: Vec<_> = lock(&entry.conns).clone();
            for conn in conns {
                self.close(&conn, "transport shut down");
            }
        }
    }

    /// Closes `conn`: fails its pending requests, removes it from the pool, stops its
    /// tasks (which drops the socket). Idempotent.
    fn close(&self, conn: &Conn<M>, why: &str) {
        let Some(pending) = lock(&conn.pending).take() else {
            return;
        };
        debug!(peer = %conn.peer, remote = %conn.remote, dialled = conn.dialled, why, "connection closed");
        lock(&conn.inbound).take();
        for (_, waiter) in pending {
            let _ = waiter.send(Err(NetError::Closed));
        }
        {
            let mut peers = lock(&self.peers);
            if let Some(entry) = peers.get(&conn.peer.id) {
                let now_empty = {
                    let mut conns = lock(&entry.conns);
                    conns.retain(|c| !std::ptr::eq(Arc::as_ptr(c), conn));
                    conns.is_empty()
                };
                // Only the map holds the entry: nobody is waiting on its slots or dial,
                // and none of the peer's requests is unanswered.
                if now_empty
                    && Arc::strong_count(entry) == 1
                    && entry.serving.available_permits() == conn.serving_slots
                {
                    peers.remove(&conn.peer.id);
                }
            }
        }
        for task in lock(&conn.tasks).drain(..) {
            task.abort();
        }
    }
}

impl<M: Serialize + DeserializeOwned + Send + Sync + 'static> Inner<M> {
    /// The pool entry for `to`, created if needed.
    fn entry(&self, to: &Peer) -> Result<EntryRef<'_, M>, NetError> {
        if self.is_shut_down() {
            return Err(NetError::Closed);
        }
        if to.id == self.id {
            return Err(NetError::SelfConnect);
        }
        let mut peers = lock(&self.peers);
        let entry = peers.entry(to.id).or_insert_with(|| self.new_entry());
        Ok(EntryRef {
            inner: self,
            id: to.id,
            entry: Arc::clone(entry),
        })
    }

    fn new_entry(&self) -> Arc<PeerEntry<M>> {
        Arc::new(PeerEntry {
            in_flight: Arc::new(Semaphore::new(self.slots())),
            serving: Arc::new(Semaphore::new(self.slots())),
            dial: tokio::sync::Mutex::new(()),
            conns: Mutex::new(Vec::new()),
        })
    }

    /// A live connection to `to`, dialling (once, for all concurrent callers) if none.
    async fn connection(
        self: &Arc<Self>,
        entry: &PeerEntry<M>,
        to: &Peer,
    ) -> Result<Arc<Conn<M>>, NetError> {
        if let Some(conn) = entry.live() {
            return Ok(conn);
        }
        let _dialling = entry.dial.lock().await;
        if let Some(conn) = entry.live() {
            return Ok(conn);
        }
        Arc::clone(self).dial(to.addr, Some(to.id)).await
    }

    /// Connects to `addr`, runs the handshake, checks the id if one is expected, and
    /// starts the connection.
    async fn dial(
        self: Arc<Self>,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<Arc<Conn<M>>, NetError> {
        // A slot among the dials running at once, waited for no longer than a dial
        // itself may take.
        let patience = self.config.connect_timeout + self.config.handshake_timeout;
        let _dialling = match timeout(patience, Arc::clone(&self.dials).acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(NetError::Closed),
            Err(_) => return Err(NetError::ConnectTimeout { addr }),
        };
        let mut stream = match timeout(self.config.connect_timeout, TcpStream::connect(addr)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                debug!(%addr, error = %e, "connect failed");
                return Err(NetError::Io(e));
            }
            Err(_) => return Err(NetError::ConnectTimeout { addr }),
        };
        stream.set_nodelay(true)?;
        let shake = wire::handshake(
            &mut stream,
            &self.identity,
            self.advertised,
            self.config.key_difficulty,
        );
        let proven = match timeout(self.config.handshake_timeout, shake).await {
            Ok(Ok(peer)) => peer,
            Ok(Err(error)) => return Err(self.handshake_failed(addr, error)),
            Err(_) => {
                let error = NetError::Handshake("timed out".into());
                return Err(self.handshake_failed(addr, error));
            }
        };
        if let Some(expected) = expected {
            if proven.id != expected {
                let error = NetError::WrongPeer {
                    expected,
                    proven: proven.id,
                };
                return Err(self.handshake_failed(addr, error));
            }
        }
        let conn = self.start(stream, proven, None)?;
        bump(&self.counters.connections_opened, 1);
        Ok(conn)
    }

    fn handshake_failed(&self, addr: SocketAddr, error: NetError) -> NetError {
        bump(&self.counters.handshakes_failed, 1);
        if matches!(error, NetError::KeyBelowDifficulty(_)) {
            bump(&self.counters.key_below_difficulty, 1);
        }
        warn!(%addr, %error, "handshake refused");
        error
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly rather
                    // than spin.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (inbound, handshake) = match self.admission.admit(&addr) {
                Ok(slots) => slots,
                Err(refused) => {
                    // Counted, logged at debug only: a flood must not flood the log.
                    let counter = match refused {
                        Refused::Total => &self.counters.inbound_refused,
                        Refused::PerAddress => &self.counters.inbound_refused_per_address,
                        Refused::Handshakes => &self.counters.handshakes_refused,
                    };
                    bump(counter, 1);
                    debug!(%addr, ?refused, "inbound connection refused");
                    continue;
                }
            };
            tokio::spawn(Arc::clone(&self).accept_one(stream, addr, inbound, handshake));
        }
    }

    async fn accept_one(
        self: Arc<Self>,
        mut stream: TcpStream,
        addr: SocketAddr,
        inbound: InboundSlot,
        handshake: limits::HandshakeSlot,
    ) {
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%addr, %error, "accepted connection failed");
            return;
        }
        let shake = wire::handshake(
            &mut stream,
            &self.identity,
            self.advertised,
            self.config.key_difficulty,
        );
        let peer = match timeout(self.config.handshake_timeout, shake).await {
            Ok(Ok(peer)) => peer,
            Ok(Err(error)) => {
                self.handshake_failed(addr, error);
                return;
            }
            Err(_) => {
                self.handshake_failed(addr, NetError::Handshake("timed out".into()));
                return;
            }
        };
        drop(handshake);
        debug!(%addr, %peer, "accepted connection");
        if self.start(stream, peer, Some(inbound)).is_ok() {
            bump(&self.counters.connections_accepted, 1);
        }
    }

    /// Registers an authenticated connection in the pool and starts its tasks. An
    /// inbound connection (`inbound` is its admission slot) replaces any older inbound
    /// one from the same peer id.
    fn start(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: Peer,
        inbound: Option<InboundSlot>,
    ) -> Result<Arc<Conn<M>>, NetError> {
        let incoming = lock(&self.incoming).clone().ok_or(NetError::Closed)?;
        let remote = stream.peer_addr()?;
        let (reader, writer) = stream.into_split();
        let (writer_tx, writer_rx) = mpsc::channel(WRITER_QUEUE);
        let slots = self.slots();
        let dialled = inbound.is_none();
        let (conn, replaced) = {
            let mut peers = lock(&self.peers);
            // Checked under the pool lock, which shutdown takes to collect what to close.
            if self.is_shut_down() {
                return Err(NetError::Closed);
            }
            let entry = peers.entry(peer.id).or_insert_with(|| self.new_entry());
            let conn = Arc::new(Conn {
                peer,
                remote,
                dialled,
                writer: writer_tx,
                budget: WriteBudget::new(&self.config),
                pending: Mutex::new(Some(HashMap::new())),
                next_request: AtomicU64::new(0),
                serving: Arc::clone(&entry.serving),
                serving_slots: slots,
                inbound: Mutex::new(inbound),
                last_used_ms: AtomicU64::new(0),
                opened: Instant::now(),
                tasks: Mutex::new(Vec::new()),
            });
            let mut conns = lock(&entry.conns);
            let replaced: Vec<_> = if dialled {
                Vec::new()
            } else {
                conns.iter().filter(|c| !c.dialled).cloned().collect()
            };
            conns.push(Arc::clone(&conn));
            (conn, replaced)
        };
        for old in replaced {
            if old.is_open() {
                bump(&self.counters.inbound_replaced, 1);
            }
            self.close(&old, "replaced by a newer connection from the same peer");
        }
        let read = tokio::spawn(Arc::clone(self).read_loop(Arc::clone(&conn), reader, incoming));
        let write = tokio::spawn(Arc::clone(self).write_loop(Arc::clone(&conn), writer, writer_rx));
        lock(&conn.tasks).extend([read.abort_handle(), write.abort_handle()]);
        // A close that ran before the handles were stored could not stop the tasks.
        if !conn.is_open() {
            read.abort();
            write.abort();
        }
        Ok(conn)
    }

    /// What a [`ServingSlot`] of `peer` calls when it is given back.
    fn slot_released_hook(self: &Arc<Self>, peer: NodeId) -> Arc<dyn Fn() + Send + Sync> {
        let inner = Arc::downgrade(self);
        Arc::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.forget_if_unused(&peer);
            }
        })
    }

    /// What a [`Responder`] calls when an answer does not fit `conn`'s write budget.
    fn over_budget_hook(self: &Arc<Self>, conn: &Arc<Conn<M>>) -> OverBudget {
        let (inner, conn) = (Arc::downgrade(self), Arc::downgrade(conn));
        Arc::new(move || {
            if let (Some(inner), Some(conn)) = (inner.upgrade(), conn.upgrade())
                && conn.is_open()
            {
                bump(&inner.counters.write_budget_exceeded, 1);
                warn!(peer = %conn.peer, remote = %conn.remote, "the peer does not read its answers; connection closed");
                inner.close(&conn, "write budget exceeded");
            }
        })
    }

    async fn read_loop(
        self: Arc<Self>,
        conn: Arc<Conn<M>>,
        reader: OwnedReadHalf,
        incoming: mpsc::Sender<Incoming<M>>,
    ) {
        let why = self.read_frames(&conn, reader, incoming).await;
        self.close(&conn, why);
    }

    /// Reads frames until the connection must close; returns why.
    async fn read_frames(
        self: &Arc<Self>,
        conn: &Arc<Conn<M>>,
        reader: OwnedReadHalf,
        incoming: mpsc::Sender<Incoming<M>>,
    ) -> &'static str {
        let mut reader = BufReader::with_capacity(SOCKET_BUFFER, reader);
        let max = self.config.max_frame_bytes;
        let over_budget = self.over_budget_hook(conn);
        let slot_released = self.slot_released_hook(conn.peer.id);
        loop {
            let body = match wire::read_frame(&mut reader, max, self.config.request_timeout).await {
                Ok(Some(body)) => body,
                Ok(None) => return "closed by the peer",
                Err(ReadError::Io(error)) => {
                    debug!(peer = %conn.peer, remote = %conn.remote, %error, "read failed");
                    return "read failed";
                }
                Err(refused) => {
                    bump(&self.counters.frames_refused, 1);
                    warn!(peer = %conn.peer, remote = %conn.remote, error = ?refused, "frame refused");
                    return "frame refused";
                }
            };
            bump(
                &self.counters.bytes_received,
                (wire::LENGTH_PREFIX + body.len()) as u64,
            );
            conn.touch();
            let frame = match wire::decode_body::<Frame<M>>(&body) {
                Ok(frame) => frame,
                Err(error) => {
                    bump(&self.counters.frames_refused, 1);
                    warn!(peer = %conn.peer, remote = %conn.remote, %error, "frame refused");
                    return "malformed frame";
                }
            };
            let delivered = match frame {
                Frame::OneWay(msg) => {
                    incoming
                        .send(Incoming::Message {
                            from: conn.peer,
                            msg,
                        })
                        .await
                }
                Frame::Request { id, msg } => {
                    let Ok(permit) = Arc::clone(&conn.serving).acquire_owned().await else {
                        return "closed";
                    };
                    let slot = ServingSlot {
                        permit: Some(permit),
                        released: Arc::clone(&slot_released),
                    };
                    let reply = Responder {
                        pending: Some(PendingReply {
                            id,
                            peer: conn.peer,
                            writer: conn.writer.clone(),
                            slot,
                            runtime: self.runtime.clone(),
                            max_frame_bytes: max,
                            write_timeout: self.config.request_timeout,
                            budget: conn.budget.clone(),
                            over_budget: Arc::clone(&over_budget),
                        }),
                        _message: PhantomData,
                    };
                    incoming
                        .send(Incoming::Request {
                            from: conn.peer,
                            msg,
                            reply,
                        })
                        .await
                }
                Frame::Response { id, result } => {
                    conn.answer(id, result.map_err(NetError::Remote));
                    Ok(())
                }
            };
            if delivered.is_err() {
                // Nobody takes incoming messages (the receiver was dropped, or the
                // transport is shutting down, which stops this task anyway). The
                // message is dropped (a request answered "no answer"), but the
                // connection stays: our own requests' answers still arrive on it.
                debug!(peer = %conn.peer, remote = %conn.remote, "incoming message dropped: no receiver");
            }
        }
    }

    async fn write_loop(
        self: Arc<Self>,
        conn: Arc<Conn<M>>,
        writer: OwnedWriteHalf,
        queue: mpsc::Receiver<Outgoing>,
    ) {
        let why = self.write_frames(&conn, writer, queue).await;
        self.close(&conn, why);
    }

    /// Writes queued frames until the connection must close; returns why. Frames that
    /// arrive together are written together and flushed once.
    async fn write_frames(
        &self,
        conn: &Conn<M>,
        writer: OwnedWriteHalf,
        mut queue: mpsc::Receiver<Outgoing>,
    ) -> &'static str {
        let mut writer = BufWriter::with_capacity(SOCKET_BUFFER, writer);
        let idle_timeout = self.config.idle_timeout;
        let mut idle_check =
            tokio::time::interval((idle_timeout / 4).max(Duration::from_millis(10)));
        let write_timeout = self.config.request_timeout;
        let mut written = Vec::new();
        loop {
            let item = tokio::select! {
                item = queue.recv() => item,
                _ = idle_check.tick() => {
                    if conn.idle_for() >= idle_timeout && conn.quiet() {
                        return "idle";
                    }
                    continue;
                }
            };
            let Some(item) = item else {
                return "writer queue closed";
            };
            let len = item.frame.len() as u64;
            match timeout(write_timeout, writer.write_all(&item.frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    debug!(peer = %conn.peer, remote = %conn.remote, %error, "write failed");
                    return "write failed";
                }
                Err(_) => return "write stalled",
            }
            bump(&self.counters.bytes_sent, len);
            // Flush when the queue runs dry, or at once when a sender waits to hear
            // that its frame is on the socket.
            let flush_now = queue.is_empty() || item.written.is_some();
            written.extend(item.written);
            if flush_now {
                match timeout(write_timeout, writer.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        debug!(peer = %conn.peer, remote = %conn.remote, %error, "write failed");
                        return "write failed";
                    }
                    Err(_) => return "write stalled",
                }
                conn.touch();
                for done in written.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }
}
