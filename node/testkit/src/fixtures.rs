//! What multi-node tests and benches share besides clusters: deterministic keys, the
//! certified put and get of a test file through the API, seeded bytes, percentiles.
//!
//! Uses `cairn-core` (keys, the seeded PRNG) and `cairn-api` (the client).

use std::path::Path;

use cairn_api::client::ApiClient;
use cairn_core::crypto::KeyPair;
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{FileId, Reference};
use cairn_core::rng::Rng;
use cairn_daemon::unix_now;

/// The deterministic node key of node `i` (so placements are the same every run).
pub fn node_key(i: usize) -> KeyPair {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    secret[8] = 0xc4;
    KeyPair::from_secret_bytes(&secret)
}

/// The deterministic owner key `seed` of the tests and benches.
pub fn owner(seed: u8) -> KeyPair {
    KeyPair::from_secret_bytes(&[seed; 32])
}

/// The name every test file is stored under (the file id varies by salt).
pub const TEST_FILE_NAME: &str = "test file";

/// Puts `data` through `client` as [`TEST_FILE_NAME`] under `salt`, coded 4+2, and
/// certifies it with `owner`; its id. Panics with the API's message on failure.
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

/// Gets `file` through `client`. Panics with the API's message on failure.
pub fn get(client: &ApiClient, file: &FileId) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = client.get(file, &mut out) {
        panic!("get failed: {e}");
    }
    out
}

/// `len` deterministic pseudo-random bytes from `seed` (the seeded PRNG of
/// `cairn-core`, so every test and bench means the same bytes by the same seed).
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// Writes [`bytes`]`(len, seed)` to `path`; returns them. Panics if it cannot.
pub fn seeded_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let data = bytes(len, seed);
    if let Err(e) = std::fs::write(path, &data) {
        panic!("writing {}: {e}", path.display());
    }
    data
}

/// The `q` quantile (0.0 to 1.0, nearest rank) of `sorted` (ascending); NaN if empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
