//! A serde helper for `Vec<u8>` fields of messages:
//! `#[serde(with = "cairn_core::codec::bytes")]`.
//!
//! serde encodes a plain `Vec<u8>` as a sequence, one element at a time; this encodes
//! it as one byte string instead, which postcard copies whole. In postcard both forms
//! are the same bytes (a varint length, then the bytes), so the attribute can be added
//! to an existing message without changing its wire format; it only makes encoding
//! and decoding of large payloads several times faster (measured in `cairn-net`'s
//! tests: `measure_loopback_request_rates`).

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// How many elements a sequence may claim before any arrive: a hostile length
/// prefix must not make us allocate.
const CAUTIOUS_CAPACITY: usize = 64 * 1024;

/// Serializes `bytes` as one byte string.
pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Deserializes a byte string (or, from formats that have no byte strings, a sequence
/// of bytes).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(ByteBufVisitor)
}

struct ByteBufVisitor;

impl<'de> Visitor<'de> for ByteBufVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let claimed = seq.size_hint().unwrap_or(0);
        let mut out = Vec::with_capacity(claimed.min(CAUTIOUS_CAPACITY));
        // Bounded by the input: each element consumes at least one byte of it.
        while let Some(byte) = seq.next_element()? {
            out.push(byte);
        }
        Ok(out)
    }
}
