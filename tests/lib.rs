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
