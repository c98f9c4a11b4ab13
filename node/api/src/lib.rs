//! The node's local HTTP API as its users see it: the request and response types
//! (the JSON shapes of the routes, the headers, the hex form signed values travel in)
//! and the blocking [`client::ApiClient`] that the `cairn` CLI, the FUSE mount, the
//! tests and the benches use. The server is `cairn-daemon`'s `http` module; the routes
//! and their errors are documented there.
//!
//! Owns: [`DEFAULT_API_ADDR`], the header names, [`ErrorBody`] (the JSON
//! `{"error": ...}` of every error), [`encode_hex`] / [`decode_hex`], the answers
//! ([`PutAnswer`], [`PublishAnswer`], [`RootPublished`], [`RootConflictBody`],
//! [`RootAnswer`], [`FileStatAnswer`], [`BlockAnswer`], [`StatusAnswer`] ([`OwnerUsage`]),
//! [`ReclaimReport`]) and [`client`].
//!
//! May use: `cairn-core` (ids, keys, certificates), `serde`, `serde_json`, `postcard`,
//! `ureq`. Never the daemon, tokio or axum: a user of the API needs none of them.

pub mod client;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The CLI's default API address.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7070";

/// Header carrying the owner's signed upload grant, hex.
pub const GRANT_HEADER: &str = "x-cairn-grant";
/// Header carrying the owner's signed reclaim certificate, hex.
pub const RECLAIM_HEADER: &str = "x-cairn-reclaim";
/// Response header of `GET /v1/files/{ref}`: the whole file's size in bytes (the
/// Content-Length is the range's).
pub const FILE_SIZE_HEADER: &str = "x-cairn-file-size";

/// The JSON body of every error.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// Lowercase hex of `bytes` (how signed values travel in headers).
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Bytes from hex (either case); `None` if it is not hex of whole bytes. Only hex
/// digits: `u8::from_str_radix` alone would also read `+f` as a byte.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

/// Answer of `PUT /v1/files`: the certificate body for the owner to sign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutAnswer {
    /// postcard of the [`FileCertificate`](cairn_core::crypto::FileCertificate) body, hex: check it, sign it, post it.
    pub certificate: String,
    /// The file id (`cairn:f:` + this is the reference once published).
    pub file_id: String,
    /// Bytes stored.
    pub size: u64,
    /// Data blocks.
    pub blocks: u64,
    /// Data fragments per block.
    pub k: u16,
    /// Parity fragments per block.
    pub m: u16,
    /// Fragments stored (all blocks and the manifest block).
    pub fragments_stored: u64,
    /// Blocks stored under a new salt because their first key was full (file diversion).
    pub diverted_blocks: u64,
}

/// Answer of `POST /v1/certificates`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishAnswer {
    /// The file's reference, `cairn:f:...`.
    pub reference: String,
    /// How many nodes keep the certificate.
    pub replicas: usize,
}

/// Answer of `PUT /v1/roots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootPublished {
    /// How many replicas hold the record now.
    pub replicas: usize,
    /// The sequence published.
    pub sequence: u64,
}

/// The body of a 409 answer to `PUT /v1/roots`: the update lost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootConflictBody {
    /// What went wrong.
    pub error: String,
    /// The highest sequence a replica holds.
    pub held_sequence: u64,
}

/// Answer of `GET /v1/roots/{ref}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootAnswer {
    /// The signed record, [`Signed::to_bytes`](cairn_core::crypto::Signed::to_bytes) form, hex: verify it before use.
    pub record: String,
    /// Its sequence.
    pub sequence: u64,
    /// The file holding the volume's root directory.
    pub root: String,
    /// When it was published, unix seconds.
    pub time: u64,
}

/// Answer of `GET /v1/files/{ref}/certificate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateAnswer {
    /// The signed file certificate, [`Signed::to_bytes`](cairn_core::crypto::Signed::to_bytes) form, hex: verify it before use.
    pub certificate: String,
}

/// Answer of `GET /v1/files/{ref}/stat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStatAnswer {
    /// The file's reference.
    pub reference: String,
    /// File size in bytes.
    pub size: u64,
    /// Data fragments per block.
    pub k: u16,
    /// Parity fragments per block.
    pub m: u16,
    /// The owner's public key.
    pub owner: String,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Expiry, unix seconds.
    pub expires_at: Option<u64>,
    /// The manifest block first, then every data block.
    pub blocks: Vec<BlockAnswer>,
    /// Blocks with fewer than `k` live fragments.
    pub unreadable_blocks: usize,
    /// Blocks with fewer than `n` live fragments.
    pub degraded_blocks: usize,
}

/// One block in [`FileStatAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockAnswer {
    /// `"manifest"` or the block's position.
    pub block: String,
    /// Its placement key.
    pub key: String,
    /// Its placement salt (non-zero after file diversion).
    pub salt: u64,
    /// Fragments with at least one live holder, of `n`.
    pub live: usize,
    /// Per fragment index: the ids of the nodes holding a verified copy.
    pub holders: Vec<Vec<String>>,
    /// Per fragment index: the ids of nodes keeping a pointer to a diverted copy.
    pub pointers: Vec<Vec<String>>,
}

/// Answer of `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusAnswer {
    /// The node's id.
    pub id: String,
    /// Its advertised address.
    pub address: String,
    /// Whether it has joined.
    pub joined: bool,
    /// Leaf set, counter-clockwise side.
    pub leaf_left: Vec<String>,
    /// Leaf set, clockwise side.
    pub leaf_right: Vec<String>,
    /// Nodes this node knows the address of.
    pub known_nodes: usize,
    /// Bytes of fragments stored.
    pub used: u64,
    /// Capacity.
    pub capacity: u64,
    /// Free bytes.
    pub free: u64,
    /// How many nodes the whole network has, estimated from this node's leaf set
    /// (`cairn_overlay::estimate_network_size`).
    #[serde(default)]
    pub network_nodes_estimate: f64,
    /// The most bytes one owner may have stored on this node (`None`: no quota).
    #[serde(default)]
    pub owner_quota: Option<u64>,
    /// How many owners have bytes stored on this node.
    #[serde(default)]
    pub owners: usize,
    /// Asked with `?owner=<key>`: what that owner has stored on this node.
    #[serde(default)]
    pub owner_usage: Option<OwnerUsage>,
}

/// What one owner has stored on one node (in [`StatusAnswer`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerUsage {
    /// The owner's public key (base32).
    pub owner: String,
    /// Bytes of fragments charged to it on this node.
    pub used: u64,
}

/// What a reclaim did.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ReclaimReport {
    /// Fragments deleted across the network.
    pub fragments_freed: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Nodes that refused or could not be reached (they keep their copies until
    /// maintenance catches up).
    pub failures: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `reference` fuzz target (`fuzz/corpus/reference/`): a `+` inside a
    /// pair (`+8`) was read as a byte, so one signed value had many hex forms.
    #[test]
    fn hex_is_read_only_from_hex_digits_of_either_case() {
        assert_eq!(decode_hex(" 0aFf "), Some(vec![0x0a, 0xff]));
        assert_eq!(encode_hex(&[0x0a, 0xff]), "0aff");
        assert_eq!(decode_hex("0252+8bb"), None);
        assert_eq!(decode_hex("+8"), None);
        assert_eq!(decode_hex("-8"), None);
        assert_eq!(decode_hex("abc"), None);
    }
}
