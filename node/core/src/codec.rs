//! Serde helpers for the messages of the layers above (PAST payloads, the network's
//! frames).
//!
//! Owns: [`bytes`] (`Vec<u8>` as one byte string).
//!
//! May use: `serde` only.

pub mod bytes;
