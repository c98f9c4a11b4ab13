//! cairn's storage node as a library: everything a node is, the client pipeline, and
//! the local API that the CLI and the FUSE layer call.
//!
//! Modules are layered as in `DESIGN.md`; a module uses only those above it in this
//! list, never one below:
//!
//! 1. [`id`]: 256-bit ids, ring distance, Pastry digits, text forms and references.
//! 2. [`crypto`]: ed25519 keys, `Signed<T>` with domain separation, certificates.
//! 3. [`erasure`]: a block to k + m self-verifying fragments, and back from any k.
//! 4. [`manifest`]: a file's list of blocks and fragment hashes.
//! 5. [`store`]: the durable local store (fragments, certificates, pointers, roots).
//! 6. [`overlay`]: Pastry routing state as a sans-IO state machine.
//! 7. [`sim`]: a deterministic discrete-event simulator that drives many overlays.
//!    [`durability`] sits beside it: durability and repair traffic under churn at
//!    scale, erasure coding against replication (uses `id` and `sim::Rng` only).
//! 8. [`client`]: put/get of whole files over a [`client::FragmentStore`] (any store:
//!    local, in memory, or the network through [`daemon::NetworkFragments`]).
//! 9. [`net`]: the authenticated TCP transport (tokio), generic over the message type.
//! 10. [`past`]: PAST's rules and a node's answers to insert, lookup and reclaim
//!     (sans-IO).
//! 11. [`daemon`]: a running node: overlay, PAST, transport, store and clock wired
//!     together, and the gateway operations on whole files.
//! 12. [`api`]: the node's local HTTP API.
//!
//! `DESIGN.md` lists the client last; here the pipeline sits below the network because
//! it is generic over where fragments go, and the node's gateway runs it.

pub mod api;
pub mod client;
pub mod crypto;
pub mod daemon;
pub mod durability;
pub mod erasure;
pub mod id;
pub mod manifest;
pub mod net;
pub mod overlay;
pub mod past;
pub mod sim;
pub mod store;
