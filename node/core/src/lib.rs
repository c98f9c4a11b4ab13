//! cairn's core: the values every other crate of a node speaks in. It does no I/O of
//! its own beyond key files and reads no clock: callers pass `now`.
//!
//! Owns, in layers (a module uses only those above it in this list):
//!
//! 1. [`id`]: 256-bit ids, ring distance, Pastry digits, text forms and references.
//! 2. [`crypto`]: ed25519 keys, `Signed<T>` with domain separation, certificates.
//! 3. [`erasure`]: a block to k + m self-verifying fragments, and back from any k.
//! 4. [`manifest`]: a file's list of blocks and fragment hashes.
//!
//! Beside them: [`codec`] (serde helpers for message payloads) and [`rng`] (the seeded
//! PRNG of the simulator, the tests and the benches).
//!
//! May use: `sha2`, `ed25519-dalek`, `rand_core` (key generation),
//! `reed-solomon-erasure`, `serde`, `postcard`. No other cairn crate: every other
//! crate builds on this one.

pub mod codec;
pub mod crypto;
pub mod erasure;
pub mod id;
pub mod manifest;
pub mod rng;
