//! Manifests: what a file is made of. A file is cut into blocks of a fixed segment size;
//! its manifest lists the file size, segment size, erasure parameters and, per block,
//! the block hash, the placement salt and the `n` fragment hashes.
//!
//! Owns: [`Manifest`] and [`BlockEntry`], their canonical versioned encoding
//! (`MANIFEST_VERSION` byte, then postcard), [`ManifestHash`] computation, the strict
//! decoder ([`Manifest::decode`], [`Manifest::from_block`]) and its typed errors, and the
//! segment size constants.
//!
//! May use: [`crate::id`], [`crate::erasure`] (for [`ErasureParams`]), `postcard`.
//!
//! # Encoding
//! `MANIFEST_VERSION (1 byte) ‖ postcard(Manifest)`. The encoding is canonical: the
//! decoder re-encodes what it read and rejects input that differs (non-minimal varints,
//! trailing bytes), so one manifest has one hash. Input longer than
//! [`MAX_MANIFEST_BYTES`] is refused before it is parsed.
//!
//! # Stored as a block
//! The encoded manifest is itself erasure-coded with the file's (k, m) and stored at
//! `PlacementKey::for_block(&BlockHash(manifest_hash.0), salt)` (so its block hash is
//! its manifest hash). The file certificate lists its fragment hashes but not its
//! length: [`Manifest::from_block`] finds the end of the encoding and checks that the
//! rest is exactly the zero padding the erasure layout adds.

use serde::{Deserialize, Serialize};

use crate::erasure::ErasureParams;
use crate::id::{BlockHash, FragmentHash, Id, ManifestHash, PlacementKey};

/// The version byte that starts every encoded manifest.
pub const MANIFEST_VERSION: u8 = 1;

/// The largest encoded manifest accepted (64 MiB). At 1 MiB segments and 10+4 coding a
/// block entry takes about 480 bytes, so this covers files of over 130 GiB; at 4+2,
/// about 290 GiB. It bounds what a decoder will parse from untrusted bytes.
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;

/// The segment size new files are cut into: 1 MiB.
///
/// Measured with `cargo bench -p cairn-benches --bench pipeline` (4+2, 2-core Zen 4,
/// 2026-11-21): put through a discarding store 612 / 646 / 624 MB/s and get through
/// `MemoryFragments` 831 / 852 / 842 MB/s at 256 KiB / 1 MiB / 4 MiB. Compute does not
/// care (hashing is per byte and dominates), so the choice rests on the rest: 1 MiB
/// keeps a put or get stream at about 10 MiB of memory and the first byte one block
/// away, while the per-block costs (one placement lookup and n fragment transfers on
/// the network, 34 + 32n bytes of manifest) stay small. 4 MiB would quarter those but
/// quadruple memory per block in flight and the latency to the first byte of a FUSE
/// read; 256 KiB would quadruple round trips per byte and the manifest.
pub const DEFAULT_SEGMENT_SIZE: u32 = 1 << 20;

/// The smallest segment size a manifest may declare (4 KiB).
pub const MIN_SEGMENT_SIZE: u32 = 4 << 10;

/// The largest segment size a manifest may declare (64 MiB): a reader holds one
/// segment in memory, so this bounds what a manifest can make it allocate.
pub const MAX_SEGMENT_SIZE: u32 = 64 << 20;

/// One block of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// SHA-256 of the block's bytes.
    pub hash: BlockHash,
    /// Placement salt: 0 unless file diversion moved the block.
    pub salt: u64,
    /// The `n = k + m` fragment hashes, in index order.
    pub fragments: Vec<FragmentHash>,
}

impl BlockEntry {
    /// Where this block's fragments live.
    pub fn placement_key(&self) -> PlacementKey {
        PlacementKey::for_block(&self.hash, self.salt)
    }
}

/// A file's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file's size in bytes.
    pub file_size: u64,
    /// Bytes per block; every block but the last is this long.
    pub segment_size: u32,
    /// The erasure parameters of every block (and of the manifest block).
    pub params: ErasureParams,
    /// The blocks, in file order.
    pub blocks: Vec<BlockEntry>,
}

/// Why bytes are not a valid manifest, or a manifest cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// More bytes than [`MAX_MANIFEST_BYTES`].
    #[error("manifest of {size} bytes is larger than the {max}-byte maximum")]
    TooLarge {
        /// Bytes given (or that the encoding would take).
        size: usize,
        /// [`MAX_MANIFEST_BYTES`].
        max: usize,
    },
    /// No bytes at all.
    #[error("empty input is not a manifest")]
    Empty,
    /// A version byte this code does not know.
    #[error(
        "manifest version {got} is not supported (this build reads version {MANIFEST_VERSION})"
    )]
    UnsupportedVersion {
        /// The version byte found.
        got: u8,
    },
    /// The body does not parse (truncated, or a field out of range).
    #[error("malformed manifest: {reason}")]
    Malformed {
        /// The parser's message.
        reason: String,
    },
    /// Bytes after the end of the manifest.
    #[error("{count} unexpected bytes after the manifest")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The bytes parse but are not the canonical encoding of what they contain.
    #[error("manifest bytes are not in canonical form")]
    NonCanonical,
    /// The segment size is outside the allowed range.
    #[error("segment size {got} is outside {min}..={max}")]
    SegmentSizeOutOfRange {
        /// The segment size declared.
        got: u32,
        /// [`MIN_SEGMENT_SIZE`].
        min: u32,
        /// [`MAX_SEGMENT_SIZE`].
        max: u32,
    },
    /// The number of blocks does not match the file size and segment size.
    #[error(
        "{file_size} bytes in segments of {segment_size} is {expected} blocks, manifest lists {got}"
    )]
    BlockCountMismatch {
        /// File size.
        file_size: u64,
        /// Segment size.
        segment_size: u32,
        /// Blocks the sizes imply.
        expected: u64,
        /// Blocks listed.
        got: usize,
    },
    /// A block lists another number of fragment hashes than `k + m`.
    #[error("block {block} lists {got} fragment hashes, parameters say {expected}")]
    FragmentCountMismatch {
        /// The block's position in the file.
        block: usize,
        /// `n`.
        expected: usize,
        /// Hashes listed.
        got: usize,
    },
    /// A manifest block whose padding is not the erasure layout's zero padding.
    #[error("manifest block of {padded} bytes holds a {encoded}-byte manifest with bad padding")]
    BadPadding {
        /// Bytes in the decoded block.
        padded: usize,
        /// Bytes of manifest found at its start.
        encoded: usize,
    },
    /// The manifest does not hash to the hash it was fetched under.
    #[error("manifest hashes to {got}, expected {expected}")]
    HashMismatch {
        /// The hash asked for.
        expected: ManifestHash,
        /// The hash of the bytes found.
        got: ManifestHash,
    },
}

/// An encoded manifest and its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedManifest {
    /// The canonical bytes.
    pub bytes: Vec<u8>,
    /// SHA-256 of `bytes`.
    pub hash: ManifestHash,
}

impl EncodedManifest {
    /// The block hash the manifest is stored under (equal to its manifest hash).
    pub fn block_hash(&self) -> BlockHash {
        BlockHash(self.hash.0)
    }
}

/// Where the manifest block with this hash lives under `salt`.
pub fn manifest_placement_key(hash: &ManifestHash, salt: u64) -> PlacementKey {
    PlacementKey::for_block(&BlockHash(hash.0), salt)
}

/// The most bytes one block entry can take in the encoding with `n` fragments: a
/// 32-byte hash, a varint salt (up to 10 bytes), a varint count (up to 2), `n` hashes.
fn max_entry_bytes(n: u16) -> usize {
    32 + 10 + 2 + 32 * usize::from(n)
}

impl Manifest {
    /// Blocks a file of `file_size` bytes has in segments of `segment_size`.
    pub fn block_count(file_size: u64, segment_size: u32) -> u64 {
        file_size.div_ceil(u64::from(segment_size.max(1)))
    }

    /// The most blocks a manifest with parameters `params` can list and still encode
    /// within [`MAX_MANIFEST_BYTES`] (a conservative bound: a put can stop early).
    pub fn max_blocks(params: ErasureParams) -> usize {
        // 1 version byte and at most 10 + 5 + 3 + 3 + 5 bytes of header varints.
        (MAX_MANIFEST_BYTES - 32) / max_entry_bytes(params.n())
    }

    /// Bytes in block `index`: the segment size, except for a shorter last block.
    pub fn block_len(&self, index: usize) -> Option<usize> {
        let segment = u64::from(self.segment_size);
        let start = (index as u64).checked_mul(segment)?;
        if start >= self.file_size {
            return None;
        }
        usize::try_from(segment.min(self.file_size - start)).ok()
    }

    /// Checks the fields agree with one another.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(ManifestError::SegmentSizeOutOfRange {
                got: self.segment_size,
                min: MIN_SEGMENT_SIZE,
                max: MAX_SEGMENT_SIZE,
            });
        }
        let expected = Manifest::block_count(self.file_size, self.segment_size);
        if expected != self.blocks.len() as u64 {
            return Err(ManifestError::BlockCountMismatch {
                file_size: self.file_size,
                segment_size: self.segment_size,
                expected,
                got: self.blocks.len(),
            });
        }
        let n = usize::from(self.params.n());
        if let Some((block, entry)) = self
            .blocks
            .iter()
            .enumerate()
            .find(|(_, entry)| entry.fragments.len() != n)
        {
            return Err(ManifestError::FragmentCountMismatch {
                block,
                expected: n,
                got: entry.fragments.len(),
            });
        }
        Ok(())
    }

    /// The canonical encoding and its hash; validates first.
    pub fn encode(&self) -> Result<EncodedManifest, ManifestError> {
        self.validate()?;
        let bytes = self.encode_unchecked()?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let hash = ManifestHash(Id::hash(&bytes));
        Ok(EncodedManifest { bytes, hash })
    }

    fn encode_unchecked(&self) -> Result<Vec<u8>, ManifestError> {
        postcard::to_extend(self, vec![MANIFEST_VERSION]).map_err(|error| {
            ManifestError::Malformed {
                reason: error.to_string(),
            }
        })
    }

    /// This manifest's hash: SHA-256 of its canonical encoding.
    pub fn hash(&self) -> Result<ManifestHash, ManifestError> {
        self.encode().map(|encoded| encoded.hash)
    }

    /// Reads a manifest from exactly its canonical encoding. Never panics; refuses input
    /// over [`MAX_MANIFEST_BYTES`] before parsing it.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let (manifest, rest) = Manifest::decode_prefix(bytes)?;
        if !rest.is_empty() {
            return Err(ManifestError::TrailingBytes { count: rest.len() });
        }
        Ok(manifest)
    }

    /// Parses a manifest at the start of `bytes` and checks it is valid and canonical;
    /// returns it with the bytes after it.
    fn decode_prefix(bytes: &[u8]) -> Result<(Manifest, &[u8]), ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge {
                size: bytes.len(),
                max: MAX_MANIFEST_BYTES,
            });
        }
        let (&version, body) = bytes.split_first().ok_or(ManifestError::Empty)?;
        if version != MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion { got: version });
        }
        let (manifest, rest): (Manifest, &[u8]) =
            postcard::take_from_bytes(body).map_err(|error| ManifestError::Malformed {
                reason: error.to_string(),
            })?;
        manifest.validate()?;
        let encoded_len = bytes.len() - rest.len();
        if manifest.encode_unchecked()? != bytes[..encoded_len] {
            return Err(ManifestError::NonCanonical);
        }
        Ok((manifest, rest))
    }

    /// Reads the manifest out of a decoded manifest block (its bytes with the erasure
    /// padding, see the module docs) and checks it hashes to `expected`.
    pub fn from_block(
        padded: &[u8],
        expected: &ManifestHash,
        params: ErasureParams,
    ) -> Result<Manifest, ManifestError> {
        let (manifest, padding) = Manifest::decode_prefix(padded)?;
        let encoded = padded.len() - padding.len();
        let padded_len = params.fragment_len(encoded) * usize::from(params.k());
        if padded_len != padded.len() || padding.iter().any(|&b| b != 0) {
            return Err(ManifestError::BadPadding {
                padded: padded.len(),
                encoded,
            });
        }
        let got = ManifestHash(Id::hash(&padded[..encoded]));
        if got != *expected {
            return Err(ManifestError::HashMismatch {
                expected: *expected,
                got,
            });
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::erasure::{BlockSpec, Codec, Offer};
    use proptest::prelude::*;

    fn h(text: &str) -> Id {
        Id::hash(text.as_bytes())
    }

    fn sample(file_size: u64) -> Manifest {
        let params = ErasureParams::new(2, 1).unwrap();
        let segment_size = MIN_SEGMENT_SIZE;
        let blocks = (0..Manifest::block_count(file_size, segment_size))
            .map(|i| BlockEntry {
                hash: BlockHash(h(&format!("block {i}"))),
                salt: i % 2,
                fragments: (0..3)
                    .map(|f| FragmentHash(h(&format!("{i}/{f}"))))
                    .collect(),
            })
            .collect();
        Manifest {
            file_size,
            segment_size,
            params,
            blocks,
        }
    }

    #[test]
    fn encoding_is_pinned() {
        let manifest = Manifest {
            file_size: 5,
            segment_size: MIN_SEGMENT_SIZE,
            params: ErasureParams::new(1, 1).unwrap(),
            blocks: vec![BlockEntry {
                hash: BlockHash(Id([0xbb; 32])),
                salt: 300,
                fragments: vec![FragmentHash(Id([0x11; 32])), FragmentHash(Id([0x22; 32]))],
            }],
        };
        let bytes = manifest.encode().unwrap().bytes;
        let mut expected = vec![
            1, // version
            5, // file_size varint
            0x80, 0x20, // segment_size 4096 varint
            1, 1, // k, m
            1, // one block
        ];
        expected.extend([0xbb; 32]); // block hash
        expected.extend([0xac, 0x02]); // salt 300 varint
        expected.push(2); // two fragment hashes
        expected.extend([0x11; 32]);
        expected.extend([0x22; 32]);
        assert_eq!(bytes, expected);
        assert_eq!(Manifest::decode(&bytes).unwrap(), manifest);
    }

    #[test]
    fn round_trips_and_hash_is_of_the_encoding() {
        for size in [0, 1, 4095, 4096, 4097, 50_000] {
            let manifest = sample(size);
            let encoded = manifest.encode().unwrap();
            assert_eq!(Manifest::decode(&encoded.bytes).unwrap(), manifest);
            assert_eq!(encoded.hash, ManifestHash(Id::hash(&encoded.bytes)));
            assert_eq!(manifest.hash().unwrap(), encoded.hash);
        }
    }

    #[test]
    fn block_lengths_follow_the_sizes() {
        let manifest = sample(4096 * 2 + 7);
        assert_eq!(manifest.block_len(0), Some(4096));
        assert_eq!(manifest.block_len(2), Some(7));
        assert_eq!(manifest.block_len(3), None);
        assert_eq!(sample(0).block_len(0), None);
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        let bytes = sample(10_000).encode().unwrap().bytes;
        assert_eq!(Manifest::decode(&[]), Err(ManifestError::Empty));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            Manifest::decode(&v2),
            Err(ManifestError::UnsupportedVersion { got: 2 })
        );
        assert!(matches!(
            Manifest::decode(&bytes[..bytes.len() - 1]),
            Err(ManifestError::Malformed { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            Manifest::decode(&trailing),
            Err(ManifestError::TrailingBytes { count: 1 })
        );
        // file_size 10_000 is the varint [0x90, 0x4e]; a non-minimal form of the same
        // value must not give a second hash for one manifest.
        assert_eq!(bytes[1..3], [0x90, 0x4e]);
        let mut long_varint = vec![1, 0x90, 0xce, 0x00];
        long_varint.extend_from_slice(&bytes[3..]);
        assert!(Manifest::decode(&long_varint).is_err());
        let huge = vec![1u8; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::decode(&huge),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_inconsistent_fields() {
        let mut m = sample(10_000);
        m.blocks.pop();
        assert!(matches!(
            m.encode(),
            Err(ManifestError::BlockCountMismatch { expected: 3, .. })
        ));
        let mut m = sample(10_000);
        m.blocks[1].fragments.pop();
        assert!(matches!(
            m.encode(),
            Err(ManifestError::FragmentCountMismatch {
                block: 1,
                expected: 3,
                got: 2
            })
        ));
        let mut m = sample(10_000);
        m.segment_size = 100;
        assert!(matches!(
            m.encode(),
            Err(ManifestError::SegmentSizeOutOfRange { got: 100, .. })
        ));
        // Parameters go through `ErasureParams::new` when decoded: k = 0 is refused.
        let mut bytes = sample(10).encode().unwrap().bytes;
        assert_eq!(
            bytes[4], 2,
            "k follows the version, file size and segment size"
        );
        bytes[4] = 0;
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(ManifestError::Malformed { .. })
        ));
    }

    #[test]
    fn max_blocks_fits_in_the_limit() {
        let params = ErasureParams::new(10, 4).unwrap();
        let blocks = Manifest::max_blocks(params);
        let worst = 32 + blocks * max_entry_bytes(params.n());
        assert!(worst <= MAX_MANIFEST_BYTES);
        assert!(
            blocks > 100_000,
            "at 1 MiB segments over 100 GiB fit: {blocks}"
        );
    }

    #[test]
    fn manifest_block_round_trips_through_the_erasure_layer() {
        let manifest = sample(30_000);
        let encoded = manifest.encode().unwrap();
        let params = ErasureParams::new(3, 2).unwrap();
        let codec = Codec::new(params).unwrap();
        let block = codec.encode(&encoded.bytes).unwrap();
        assert_eq!(block.block_hash(), encoded.block_hash());
        let spec = BlockSpec {
            hash: block.block_hash(),
            len: None,
            fragment_hashes: block.fragment_hashes(),
        };
        let offers = block
            .fragments()
            .skip(2)
            .map(|f| (f.index, Offer::Fragment(f.to_owned())));
        let (decoded, _) = codec.decode(&spec, offers).unwrap();
        let padded = decoded.to_vec();
        assert!(padded.len() > encoded.bytes.len() || encoded.bytes.len() % 3 == 0);
        assert_eq!(
            Manifest::from_block(&padded, &encoded.hash, params).unwrap(),
            manifest
        );

        let other = ManifestHash(h("other"));
        assert!(matches!(
            Manifest::from_block(&padded, &other, params),
            Err(ManifestError::HashMismatch { .. })
        ));
        let mut bad_padding = padded.clone();
        bad_padding.push(0);
        assert!(matches!(
            Manifest::from_block(&bad_padding, &encoded.hash, params),
            Err(ManifestError::BadPadding { .. })
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Manifest::decode(&bytes);
            let _ = Manifest::from_block(&bytes, &ManifestHash(Id::ZERO), ErasureParams::new(2, 1).unwrap());
        }

        #[test]
        fn versioned_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut input = vec![MANIFEST_VERSION];
            input.extend(bytes);
            let _ = Manifest::decode(&input);
        }

        #[test]
        fn truncations_and_bit_flips_are_typed_errors(
            size in 0u64..40_000,
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let bytes = sample(size).encode().unwrap().bytes;
            let cut = cut.index(bytes.len());
            prop_assert!(Manifest::decode(&bytes[..cut]).is_err());
            let mut flipped = bytes.clone();
            flipped[flip.index(bytes.len())] ^= 1 << bit;
            // A flip may land in a hash and still parse; then it is another manifest
            // with another hash. It must never panic nor come back equal.
            if let Ok(manifest) = Manifest::decode(&flipped) {
                prop_assert_ne!(manifest, sample(size));
            }
        }
    }
}
