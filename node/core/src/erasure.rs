//! Erasure coding: a block (one segment of a file, or a manifest) becomes `k` data and
//! `m` parity fragments, and any `k` fragments that verify give the block back.
//!
//! Owns: [`ErasureParams`] (validated k, m), [`Codec`] (encode in place, decode from any
//! k good fragments), [`Fragment`] / [`FragmentRef`], the fragment hash
//! ([`fragment_hash`]), the checks that reject a bad fragment ([`Corruption`]) and the
//! accounting of skipped fragments ([`DecodeStats`]).
//!
//! May use: [`crate::id`], `reed-solomon-erasure` (GF(2^8), its `simd-accel` AVX2 C
//! kernels), `sha2` through [`Id`].
//!
//! # Layout
//! A block of `len` bytes is cut into `k` data fragments of
//! `fragment_len = max(1, ceil(len / k))` bytes each; the last is zero-padded. The block
//! length is not stored in the fragments: the manifest knows it (and a manifest block is
//! recognised by its own encoding, see `manifest`). Parity fragments have the same length.
//! Fragment `i` for `i < k` is bytes `i * fragment_len ..` of the block, so the data
//! fragments of a block read in index order *are* the block (plus padding).
//!
//! # What a fragment hash covers
//! `FragmentHash = SHA-256(index as big-endian u16 ‖ fragment bytes)`. Binding the index
//! means a fragment served under another index fails its check even when two fragments
//! of a block have equal bytes (all-zero blocks give equal data fragments), so a decoder
//! can never be fed the right bytes in the wrong slot. The length is covered implicitly:
//! a truncated fragment hashes differently.

use std::fmt;
use std::io::{self, Write};

use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::id::{BlockHash, FragmentHash, Id};

/// The most fragments (k + m) a block can have: GF(2^8) has 256 elements.
pub const MAX_FRAGMENTS: usize = 256;

/// Validated erasure parameters: `k` data fragments, `m` parity fragments.
///
/// Any `k` of the `n = k + m` fragments rebuild the block, so up to `m` may be lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawParams", into = "RawParams")]
pub struct ErasureParams {
    k: u16,
    m: u16,
}

/// The serde form of [`ErasureParams`]; decoding goes through [`ErasureParams::new`].
#[derive(Clone, Copy, Serialize, Deserialize)]
struct RawParams {
    k: u16,
    m: u16,
}

impl TryFrom<RawParams> for ErasureParams {
    type Error = ParamsError;
    fn try_from(raw: RawParams) -> Result<Self, ParamsError> {
        ErasureParams::new(raw.k, raw.m)
    }
}

impl From<ErasureParams> for RawParams {
    fn from(params: ErasureParams) -> RawParams {
        RawParams {
            k: params.k,
            m: params.m,
        }
    }
}

/// Why a (k, m) pair cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// `k` was 0: a block needs at least one data fragment.
    #[error("k = 0: a block needs at least one data fragment")]
    NoDataFragments,
    /// `k + m` is more than GF(2^8) allows.
    #[error("k + m = {k} + {m} is more than the {MAX_FRAGMENTS} fragments GF(2^8) allows")]
    TooManyFragments {
        /// Data fragments asked for.
        k: u16,
        /// Parity fragments asked for.
        m: u16,
    },
    /// The Reed-Solomon library refused parameters that passed our checks.
    #[error("the Reed-Solomon coder refused k = {k}, m = {m}: {reason}")]
    CoderRefused {
        /// Data fragments.
        k: u16,
        /// Parity fragments.
        m: u16,
        /// The library's message.
        reason: String,
    },
}

impl ErasureParams {
    /// 4 data + 2 parity: 1.5x storage, any 2 of 6 holders may be lost, and n = 6 fits
    /// the leaf set (L = 16) and an 8-node devnet. Tahoe-LAFS's 3-of-10 buys more
    /// loss tolerance at 3.3x; the choice per file is the user's (`cairn put -k -m`).
    pub const DEFAULT: ErasureParams = ErasureParams { k: 4, m: 2 };

    /// Checks `k >= 1`, `m >= 0` and `k + m <= 256`.
    pub fn new(k: u16, m: u16) -> Result<ErasureParams, ParamsError> {
        if k == 0 {
            return Err(ParamsError::NoDataFragments);
        }
        if usize::from(k) + usize::from(m) > MAX_FRAGMENTS {
            return Err(ParamsError::TooManyFragments { k, m });
        }
        Ok(ErasureParams { k, m })
    }

    /// Data fragments per block.
    pub fn k(&self) -> u16 {
        self.k
    }

    /// Parity fragments per block.
    pub fn m(&self) -> u16 {
        self.m
    }

    /// All fragments per block, `k + m` (at most 256).
    pub fn n(&self) -> u16 {
        self.k + self.m
    }

    /// Bytes in each fragment of a block of `block_len` bytes: `max(1, ceil(len / k))`.
    ///
    /// Never 0, because the coder cannot work on empty shards.
    pub fn fragment_len(&self, block_len: usize) -> usize {
        block_len.div_ceil(usize::from(self.k)).max(1)
    }
}

impl fmt::Display for ErasureParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

/// The hash that names fragment `index` with these bytes: `SHA-256(index_be16 ‖ bytes)`.
pub fn fragment_hash(index: u16, bytes: &[u8]) -> FragmentHash {
    FragmentHash(Id::hash_parts(&[&index.to_be_bytes(), bytes]))
}

/// One fragment as fetched from a store or the network: it owns its bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    /// Which fragment of its block this claims to be (`0..k` data, `k..n` parity).
    pub index: u16,
    /// The fragment's bytes.
    pub bytes: Vec<u8>,
}

impl Fragment {
    /// A borrowed view of this fragment.
    pub fn as_ref(&self) -> FragmentRef<'_> {
        FragmentRef {
            index: self.index,
            bytes: &self.bytes,
        }
    }
}

impl fmt::Debug for Fragment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Fragment {{ index: {}, len: {} }}",
            self.index,
            self.bytes.len()
        )
    }
}

/// A fragment borrowed from an [`EncodedBlock`], handed to a store without copying.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FragmentRef<'a> {
    /// The fragment's index in its block.
    pub index: u16,
    /// The fragment's bytes.
    pub bytes: &'a [u8],
}

impl FragmentRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Fragment {
        Fragment {
            index: self.index,
            bytes: self.bytes.to_vec(),
        }
    }

    /// This fragment's hash (see [`fragment_hash`]).
    pub fn hash(&self) -> FragmentHash {
        fragment_hash(self.index, self.bytes)
    }
}

impl fmt::Debug for FragmentRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FragmentRef {{ index: {}, len: {} }}",
            self.index,
            self.bytes.len()
        )
    }
}

/// Why a fragment was rejected before use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// The fragment says it is another index than the one asked for.
    #[error("asked for fragment {expected}, got one claiming index {got}")]
    WrongIndex {
        /// The index asked for.
        expected: u16,
        /// The index the fragment claims.
        got: u16,
    },
    /// The fragment has the wrong number of bytes (truncated or padded).
    #[error("fragment {index} has {got} bytes, expected {expected}")]
    WrongLength {
        /// The fragment's index.
        index: u16,
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        got: usize,
    },
    /// The holder re-checked the fragment and found it damaged (a flipped byte on its
    /// disk, say), so it never sent the bytes.
    #[error("the holder of fragment {index} found it corrupt: {detail}")]
    ReportedByHolder {
        /// The fragment's index.
        index: u16,
        /// What the holder said.
        detail: String,
    },
    /// The fragment's bytes do not hash to what the manifest says.
    #[error("fragment {index} hashes to {got:?}, expected {expected:?}")]
    WrongHash {
        /// The fragment's index.
        index: u16,
        /// The hash recorded for it.
        expected: FragmentHash,
        /// The hash of the bytes received.
        got: FragmentHash,
    },
}

/// Checks `fragment` is fragment `index` of a block, `expected_len` bytes long (when
/// known), hashing to `expected`. Cheap checks run first; the hash last.
pub fn check_fragment(
    index: u16,
    expected: &FragmentHash,
    expected_len: Option<usize>,
    fragment: &Fragment,
) -> Result<(), Corruption> {
    if fragment.index != index {
        return Err(Corruption::WrongIndex {
            expected: index,
            got: fragment.index,
        });
    }
    if let Some(expected_len) = expected_len {
        if fragment.bytes.len() != expected_len {
            return Err(Corruption::WrongLength {
                index,
                expected: expected_len,
                got: fragment.bytes.len(),
            });
        }
    }
    let got = fragment_hash(index, &fragment.bytes);
    if got != *expected {
        return Err(Corruption::WrongHash {
            index,
            expected: *expected,
            got,
        });
    }
    Ok(())
}

/// What came back when fragment `index` of a block was asked for.
#[derive(Debug)]
pub enum Offer {
    /// Bytes were returned (not yet checked).
    Fragment(Fragment),
    /// The holder does not have it.
    Missing,
    /// Asking failed (a store or network error), described for the stats.
    Unavailable(String),
    /// The holder found the fragment corrupt itself (a store re-checks every read).
    ReportedCorrupt(String),
}

/// Why one fragment was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Nobody had it.
    Missing,
    /// Asking for it failed.
    Unavailable(String),
    /// It came back and failed a check.
    Corrupt(Corruption),
}

/// One fragment that a decode skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The fragment's index in its block.
    pub index: u16,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// What one decode asked for and what it had to skip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Fragments asked for (good and skipped).
    pub requested: u32,
    /// Fragments used (k on success).
    pub used: u32,
    /// Fragments that were skipped, in the order they were asked for.
    pub skipped: Vec<Skipped>,
}

impl DecodeStats {
    /// Skipped because nobody had them.
    pub fn missing(&self) -> u32 {
        self.count(|r| matches!(r, SkipReason::Missing))
    }

    /// Skipped because asking failed.
    pub fn unavailable(&self) -> u32 {
        self.count(|r| matches!(r, SkipReason::Unavailable(_)))
    }

    /// Skipped because they failed a check.
    pub fn corrupt(&self) -> u32 {
        self.count(|r| matches!(r, SkipReason::Corrupt(_)))
    }

    fn count(&self, pick: impl Fn(&SkipReason) -> bool) -> u32 {
        self.skipped.iter().filter(|s| pick(&s.reason)).count() as u32
    }
}

/// Why a block could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The Reed-Solomon coder refused the shards (a bug: they are sized here).
    #[error("the Reed-Solomon coder refused to encode: {reason}")]
    Coder {
        /// The library's message.
        reason: String,
    },
}

/// Why a block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer than `k` fragments passed their checks.
    #[error(
        "block {block}: needed {needed} good fragments, found {good} \
         ({missing} missing, {corrupt} corrupt, {unavailable} unavailable)"
    )]
    NotEnoughFragments {
        /// The block.
        block: BlockHash,
        /// `k`.
        needed: u16,
        /// Fragments that passed their checks.
        good: u16,
        /// Fragments nobody had.
        missing: u32,
        /// Fragments that failed a check.
        corrupt: u32,
        /// Fragments that could not be asked for.
        unavailable: u32,
        /// Every skipped fragment with its reason.
        skipped: Vec<Skipped>,
    },
    /// The manifest lists another number of fragment hashes than `k + m`.
    #[error("block {block}: {got} fragment hashes listed, parameters say {expected}")]
    WrongFragmentCount {
        /// The block.
        block: BlockHash,
        /// `n = k + m`.
        expected: usize,
        /// Hashes listed.
        got: usize,
    },
    /// Every fragment verified, yet the rebuilt block does not hash to its name: the
    /// manifest that listed these fragment hashes is inconsistent.
    #[error("block {block}: rebuilt bytes hash to {got}; the manifest is inconsistent")]
    BlockHashMismatch {
        /// The block hash expected.
        block: BlockHash,
        /// The hash of the rebuilt bytes.
        got: BlockHash,
    },
    /// The block is longer than its fragments can hold (an inconsistent manifest).
    #[error("block {block}: length {len} does not fit in {k} fragments of {fragment_len} bytes")]
    LengthMismatch {
        /// The block.
        block: BlockHash,
        /// The length expected.
        len: usize,
        /// Data fragments.
        k: u16,
        /// Bytes per fragment.
        fragment_len: usize,
    },
    /// The Reed-Solomon coder refused to rebuild.
    #[error("block {block}: the Reed-Solomon coder refused to rebuild: {reason}")]
    Coder {
        /// The block.
        block: BlockHash,
        /// The library's message.
        reason: String,
    },
}

/// What a decoder is told about the block it rebuilds.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec<'a> {
    /// The block's hash (for file blocks, checked after decoding).
    pub hash: BlockHash,
    /// The block's length in bytes, when known (from the manifest).
    pub len: Option<usize>,
    /// The `n` fragment hashes, in index order.
    pub fragment_hashes: &'a [FragmentHash],
}

/// A block cut into `n` fragments, all in one buffer: data fragments first (which are
/// the block's bytes, then zero padding), then parity.
#[derive(Debug)]
pub struct EncodedBlock {
    block_hash: BlockHash,
    block_len: usize,
    fragment_len: usize,
    fragment_hashes: Vec<FragmentHash>,
    buffer: Vec<u8>,
}

impl EncodedBlock {
    /// SHA-256 of the block's bytes (without padding).
    pub fn block_hash(&self) -> BlockHash {
        self.block_hash
    }

    /// The block's length in bytes (without padding).
    pub fn block_len(&self) -> usize {
        self.block_len
    }

    /// Bytes per fragment.
    pub fn fragment_len(&self) -> usize {
        self.fragment_len
    }

    /// The `n` fragment hashes, in index order.
    pub fn fragment_hashes(&self) -> &[FragmentHash] {
        &self.fragment_hashes
    }

    /// Fragment `index`, borrowed; `None` past `n`.
    pub fn fragment(&self, index: u16) -> Option<FragmentRef<'_>> {
        let start = usize::from(index).checked_mul(self.fragment_len)?;
        let bytes = self.buffer.get(start..start + self.fragment_len)?;
        Some(FragmentRef { index, bytes })
    }

    /// All `n` fragments in index order, borrowed.
    pub fn fragments(&self) -> impl Iterator<Item = FragmentRef<'_>> {
        self.buffer
            .chunks_exact(self.fragment_len)
            .zip(0u16..)
            .map(|(bytes, index)| FragmentRef { index, bytes })
    }

    /// Gives the buffer back to read the next block into: it still holds this block's
    /// `n` fragments (`n * fragment_len` initialised bytes), so a reader can overwrite
    /// it in place without zeroing it first.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buffer
    }
}

/// A decoded block: its `k` data fragments, to be read as the block's bytes.
#[derive(Debug)]
pub struct DecodedBlock {
    data: Vec<Vec<u8>>,
    len: usize,
}

impl DecodedBlock {
    /// Bytes in the block (for a block decoded without a known length: the padded length).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the block has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block's bytes as consecutive slices (no copy).
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let mut left = self.len;
        self.data.iter().map_while(move |fragment| {
            if left == 0 {
                return None;
            }
            let take = left.min(fragment.len());
            left -= take;
            Some(&fragment[..take])
        })
    }

    /// Writes the block's bytes to `out`.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        self.chunks().try_for_each(|chunk| out.write_all(chunk))
    }

    /// The block's bytes, copied into one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.chunks().for_each(|chunk| out.extend_from_slice(chunk));
        out
    }

    fn hash(&self) -> BlockHash {
        let mut hasher = Sha256::new();
        self.chunks().for_each(|chunk| hasher.update(chunk));
        BlockHash(Id(hasher.finalize().into()))
    }
}

/// Encodes and decodes blocks for one [`ErasureParams`]; build it once per file.
pub struct Codec {
    params: ErasureParams,
    /// `None` when `m = 0`: the fragments are the data alone and nothing is coded.
    coder: Option<ReedSolomon>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Codec({})", self.params)
    }
}

impl Codec {
    /// A codec for `params` (builds the Reed-Solomon matrix once).
    pub fn new(params: ErasureParams) -> Result<Codec, ParamsError> {
        let coder = if params.m == 0 {
            None
        } else {
            let coder = ReedSolomon::new(usize::from(params.k), usize::from(params.m)).map_err(
                |error| ParamsError::CoderRefused {
                    k: params.k,
                    m: params.m,
                    reason: format!("{error:?}"),
                },
            )?;
            Some(coder)
        };
        Ok(Codec { params, coder })
    }

    /// The parameters this codec uses.
    pub fn params(&self) -> ErasureParams {
        self.params
    }

    /// The capacity a buffer needs so that encoding a block of up to `max_block_len`
    /// bytes in it never reallocates.
    pub fn buffer_capacity(&self, max_block_len: usize) -> usize {
        self.params.fragment_len(max_block_len) * usize::from(self.params.n())
    }

    /// Encodes the block that is the whole of `buffer`, in place: the buffer is padded
    /// and grown to hold the parity fragments (reserve [`Codec::buffer_capacity`] to
    /// avoid a reallocation). Hashes the block and every fragment once.
    pub fn encode_in_place(&self, mut buffer: Vec<u8>) -> Result<EncodedBlock, EncodeError> {
        let block_len = buffer.len();
        let block_hash = BlockHash(Id::hash(&buffer));
        let k = usize::from(self.params.k);
        let fragment_len = self.params.fragment_len(block_len);
        buffer.resize(fragment_len * usize::from(self.params.n()), 0);
        if let Some(coder) = &self.coder {
            let (data, parity) = buffer.split_at_mut(fragment_len * k);
            let data: Vec<&[u8]> = data.chunks_exact(fragment_len).collect();
            let mut parity: Vec<&mut [u8]> = parity.chunks_exact_mut(fragment_len).collect();
            coder
                .encode_sep(&data, &mut parity)
                .map_err(|error| EncodeError::Coder {
                    reason: format!("{error:?}"),
                })?;
        }
        let fragment_hashes = buffer
            .chunks_exact(fragment_len)
            .zip(0u16..)
            .map(|(bytes, index)| fragment_hash(index, bytes))
            .collect();
        Ok(EncodedBlock {
            block_hash,
            block_len,
            fragment_len,
            fragment_hashes,
            buffer,
        })
    }

    /// Encodes `block` (copied once into a new buffer; prefer
    /// [`Codec::encode_in_place`] when reading into a buffer anyway).
    pub fn encode(&self, block: &[u8]) -> Result<EncodedBlock, EncodeError> {
        let mut buffer = Vec::with_capacity(self.buffer_capacity(block.len()));
        buffer.extend_from_slice(block);
        self.encode_in_place(buffer)
    }

    /// The order in which to ask for fragments: data first, because when all `k` data
    /// fragments are good nothing needs rebuilding.
    pub fn fetch_order(&self) -> std::ops::Range<u16> {
        0..self.params.n()
    }

    /// Rebuilds a block from the first `k` offered fragments that pass their checks.
    ///
    /// `offered` is pulled lazily, one `(index, offer)` at a time, and not past the
    /// `k`-th good fragment, so a caller can fetch inside the iterator. Fragments that
    /// are missing, unavailable or corrupt (wrong index, wrong length, wrong hash) are
    /// skipped and recorded in the returned stats; offers for an index out of range or
    /// already filled are ignored. When `spec.len` is known the rebuilt bytes are checked
    /// against `spec.hash`; when it is not (a manifest block), the result holds the
    /// padded bytes and the caller must check them.
    pub fn decode(
        &self,
        spec: &BlockSpec<'_>,
        offered: impl IntoIterator<Item = (u16, Offer)>,
    ) -> Result<(DecodedBlock, DecodeStats), DecodeError> {
        let k = usize::from(self.params.k);
        let n = usize::from(self.params.n());
        let block = spec.hash;
        if spec.fragment_hashes.len() != n {
            return Err(DecodeError::WrongFragmentCount {
                block,
                expected: n,
                got: spec.fragment_hashes.len(),
            });
        }
        let mut fragment_len = spec.len.map(|len| self.params.fragment_len(len));
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut stats = DecodeStats::default();
        let mut good = 0usize;
        let mut offered = offered.into_iter();
        while good < k {
            let Some((index, offer)) = offered.next() else {
                break;
            };
            let slot = usize::from(index);
            if slot >= n || shards[slot].is_some() {
                tracing::debug!(%block, index, "ignoring an offer out of range or already filled");
                continue;
            }
            stats.requested += 1;
            let reason = match offer {
                Offer::Missing => SkipReason::Missing,
                Offer::Unavailable(why) => SkipReason::Unavailable(why),
                Offer::ReportedCorrupt(detail) => {
                    SkipReason::Corrupt(Corruption::ReportedByHolder { index, detail })
                }
                Offer::Fragment(fragment) => {
                    match check_fragment(
                        index,
                        &spec.fragment_hashes[slot],
                        fragment_len,
                        &fragment,
                    ) {
                        Ok(()) => {
                            // A verified fragment is authentic, so its length is the
                            // block's fragment length; later ones must match it.
                            fragment_len = Some(fragment.bytes.len());
                            shards[slot] = Some(fragment.bytes);
                            good += 1;
                            continue;
                        }
                        Err(corruption) => SkipReason::Corrupt(corruption),
                    }
                }
            };
            tracing::debug!(%block, index, ?reason, "skipping fragment");
            stats.skipped.push(Skipped { index, reason });
        }
        if good < k {
            return Err(DecodeError::NotEnoughFragments {
                block,
                needed: self.params.k,
                good: good as u16,
                missing: stats.missing(),
                corrupt: stats.corrupt(),
                unavailable: stats.unavailable(),
                skipped: stats.skipped,
            });
        }
        stats.used = good as u32;
        if shards[..k].iter().any(Option::is_none) {
            let coder = self.coder.as_ref().ok_or_else(|| DecodeError::Coder {
                block,
                reason: "a data fragment is missing and m = 0".into(),
            })?;
            coder
                .reconstruct_data(&mut shards)
                .map_err(|error| DecodeError::Coder {
                    block,
                    reason: format!("{error:?}"),
                })?;
        }
        shards.truncate(k);
        let data: Vec<Vec<u8>> = shards.into_iter().flatten().collect();
        let fragment_len = data.first().map_or(0, Vec::len);
        if data.len() != k {
            return Err(DecodeError::Coder {
                block,
                reason: format!("rebuilt {} of {k} data fragments", data.len()),
            });
        }
        let padded_len = fragment_len * k;
        let len = spec.len.unwrap_or(padded_len);
        if len > padded_len {
            return Err(DecodeError::LengthMismatch {
                block,
                len,
                k: self.params.k,
                fragment_len,
            });
        }
        let decoded = DecodedBlock { data, len };
        if spec.len.is_some() {
            let got = decoded.hash();
            if got != block {
                return Err(DecodeError::BlockHashMismatch { block, got });
            }
        }
        Ok((decoded, stats))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    fn offers_from(encoded: &EncodedBlock) -> Vec<(u16, Offer)> {
        encoded
            .fragments()
            .map(|f| (f.index, Offer::Fragment(f.to_owned())))
            .collect()
    }

    fn spec(encoded: &EncodedBlock) -> BlockSpec<'_> {
        BlockSpec {
            hash: encoded.block_hash(),
            len: Some(encoded.block_len()),
            fragment_hashes: encoded.fragment_hashes(),
        }
    }

    fn pseudo_random(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    #[test]
    fn params_are_validated() {
        assert_eq!(ErasureParams::new(0, 2), Err(ParamsError::NoDataFragments));
        assert_eq!(
            ErasureParams::new(200, 57),
            Err(ParamsError::TooManyFragments { k: 200, m: 57 })
        );
        let p = ErasureParams::new(200, 56).unwrap();
        assert_eq!(p.n(), 256);
        assert!(
            ErasureParams::new(1, 0).is_ok(),
            "m = 0 is allowed: no redundancy"
        );
        assert_eq!(p.to_string(), "200+56");
    }

    #[test]
    fn params_decode_through_the_constructor() {
        let bytes = postcard::to_stdvec(&ErasureParams::new(4, 2).unwrap()).unwrap();
        assert_eq!(bytes, [4, 2]);
        let bad = postcard::to_stdvec(&RawParams { k: 0, m: 3 }).unwrap();
        assert!(postcard::from_bytes::<ErasureParams>(&bad).is_err());
    }

    #[test]
    fn fragment_length_pads_up_and_is_never_zero() {
        let p = ErasureParams::new(4, 2).unwrap();
        assert_eq!(p.fragment_len(0), 1);
        assert_eq!(p.fragment_len(1), 1);
        assert_eq!(p.fragment_len(8), 2);
        assert_eq!(p.fragment_len(9), 3);
    }

    #[test]
    fn fragment_hash_binds_the_index() {
        assert_ne!(fragment_hash(0, b"same"), fragment_hash(1, b"same"));
        assert_eq!(
            fragment_hash(3, b"abc"),
            FragmentHash(Id::hash(&[0, 3, b'a', b'b', b'c']))
        );
    }

    #[test]
    fn data_fragments_are_the_block_then_padding() {
        let codec = Codec::new(ErasureParams::new(3, 2).unwrap()).unwrap();
        let block = pseudo_random(10, 1);
        let encoded = codec.encode(&block).unwrap();
        assert_eq!(encoded.fragment_len(), 4);
        let data: Vec<u8> = encoded
            .fragments()
            .take(3)
            .flat_map(|f| f.bytes.to_vec())
            .collect();
        assert_eq!(&data[..10], &block[..]);
        assert_eq!(&data[10..], &[0, 0]);
        assert_eq!(encoded.block_hash(), BlockHash(Id::hash(&block)));
        assert_eq!(encoded.fragments().count(), 5);
        assert!(encoded.fragment(5).is_none());
    }

    #[test]
    fn swapped_fragments_are_rejected() {
        let codec = Codec::new(ErasureParams::new(2, 1).unwrap()).unwrap();
        let encoded = codec.encode(&pseudo_random(64, 7)).unwrap();
        let hashes = encoded.fragment_hashes();
        let one = encoded.fragment(1).unwrap().to_owned();
        // Served honestly labelled, under the wrong request.
        assert_eq!(
            check_fragment(0, &hashes[0], Some(32), &one),
            Err(Corruption::WrongIndex {
                expected: 0,
                got: 1
            })
        );
        // Relabelled as fragment 0: the hash covers the index, so this fails too.
        let relabelled = Fragment {
            index: 0,
            bytes: one.bytes.clone(),
        };
        assert!(matches!(
            check_fragment(0, &hashes[0], Some(32), &relabelled),
            Err(Corruption::WrongHash { index: 0, .. })
        ));
        // Even equal bytes under two indices hash differently.
        assert_ne!(fragment_hash(0, &one.bytes), fragment_hash(1, &one.bytes));
        assert_eq!(check_fragment(1, &hashes[1], Some(32), &one), Ok(()));
    }

    #[test]
    fn m_zero_round_trips_and_needs_every_fragment() {
        let codec = Codec::new(ErasureParams::new(3, 0).unwrap()).unwrap();
        let block = pseudo_random(1000, 9);
        let encoded = codec.encode(&block).unwrap();
        let (decoded, _) = codec
            .decode(&spec(&encoded), offers_from(&encoded))
            .unwrap();
        assert_eq!(decoded.to_vec(), block);
        let mut offers = offers_from(&encoded);
        offers[1].1 = Offer::Missing;
        let err = codec.decode(&spec(&encoded), offers).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::NotEnoughFragments {
                good: 2,
                missing: 1,
                ..
            }
        ));
    }

    #[test]
    fn decode_stops_pulling_after_k_good() {
        let codec = Codec::new(ErasureParams::new(4, 2).unwrap()).unwrap();
        let encoded = codec.encode(&pseudo_random(5000, 3)).unwrap();
        let mut pulled = 0;
        let offers = offers_from(&encoded).into_iter().inspect(|_| pulled += 1);
        let (_, stats) = codec.decode(&spec(&encoded), offers).unwrap();
        assert_eq!(
            pulled, 4,
            "parity is not fetched when the data fragments are good"
        );
        assert_eq!(
            stats,
            DecodeStats {
                requested: 4,
                used: 4,
                skipped: vec![]
            }
        );
    }

    #[test]
    fn not_enough_names_what_was_missing_and_bad() {
        let codec = Codec::new(ErasureParams::new(4, 2).unwrap()).unwrap();
        let encoded = codec.encode(&pseudo_random(4096, 5)).unwrap();
        let mut offers = offers_from(&encoded);
        offers[0].1 = Offer::Missing;
        offers[1].1 = Offer::Unavailable("connection refused".into());
        if let Offer::Fragment(f) = &mut offers[2].1 {
            f.bytes.truncate(10);
        }
        let err = codec.decode(&spec(&encoded), offers).unwrap_err();
        let DecodeError::NotEnoughFragments {
            needed,
            good,
            missing,
            corrupt,
            unavailable,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(
            (*needed, *good, *missing, *corrupt, *unavailable),
            (4, 3, 1, 1, 1)
        );
        let text = err.to_string();
        assert!(text.contains("needed 4 good fragments, found 3"), "{text}");
    }

    #[test]
    fn inconsistent_spec_is_a_typed_error() {
        let codec = Codec::new(ErasureParams::new(2, 1).unwrap()).unwrap();
        let encoded = codec.encode(b"hello world").unwrap();
        let short = &encoded.fragment_hashes()[..2];
        let bad = BlockSpec {
            fragment_hashes: short,
            ..spec(&encoded)
        };
        assert!(matches!(
            codec.decode(&bad, offers_from(&encoded)),
            Err(DecodeError::WrongFragmentCount {
                expected: 3,
                got: 2,
                ..
            })
        ));
        let wrong_hash = BlockSpec {
            hash: BlockHash(Id::hash(b"x")),
            ..spec(&encoded)
        };
        assert!(matches!(
            codec.decode(&wrong_hash, offers_from(&encoded)),
            Err(DecodeError::BlockHashMismatch { .. })
        ));
    }

    #[test]
    fn unknown_length_gives_padded_bytes() {
        let codec = Codec::new(ErasureParams::new(4, 2).unwrap()).unwrap();
        let encoded = codec.encode(b"0123456789").unwrap();
        let spec = BlockSpec {
            len: None,
            ..spec(&encoded)
        };
        let mut offers = offers_from(&encoded);
        offers.remove(0);
        let (decoded, _) = codec.decode(&spec, offers).unwrap();
        assert_eq!(decoded.to_vec(), b"0123456789\0\0");
    }

    /// Damages one fragment in one of the ways a store can.
    #[derive(Debug, Clone, Copy)]
    enum Damage {
        Drop,
        FlipBit(usize),
        Truncate,
        ClaimOtherIndex,
        Fail,
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            Just(Damage::Drop),
            any::<usize>().prop_map(Damage::FlipBit),
            Just(Damage::Truncate),
            Just(Damage::ClaimOtherIndex),
            Just(Damage::Fail),
        ]
    }

    fn apply(damage: Damage, index: u16, offer: Offer) -> Offer {
        let Offer::Fragment(mut fragment) = offer else {
            return offer;
        };
        match damage {
            Damage::Drop => return Offer::Missing,
            Damage::Fail => return Offer::Unavailable("injected".into()),
            Damage::FlipBit(bit) => {
                let bits = fragment.bytes.len() * 8;
                fragment.bytes[(bit % bits) / 8] ^= 1 << (bit % 8);
            }
            Damage::Truncate => {
                fragment.bytes.pop();
            }
            Damage::ClaimOtherIndex => fragment.index = index.wrapping_add(1),
        }
        Offer::Fragment(fragment)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any subset of at least k intact fragments decodes; damaged ones are never
        /// used; fewer than k intact gives the typed error with the right counts.
        #[test]
        fn any_k_good_fragments_decode(
            k in 1u16..12,
            m in 0u16..6,
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            seed in any::<u64>(),
            damages in proptest::collection::vec(damage(), 17),
        ) {
            let params = ErasureParams::new(k, m).unwrap();
            let codec = Codec::new(params).unwrap();
            let encoded = codec.encode(&data).unwrap();
            let n = params.n();
            // Pick which fragments are damaged from the seed: each one independently.
            let damaged: Vec<bool> = (0..n).map(|i| (seed >> (i % 64)) & 1 == 1).collect();
            let intact = damaged.iter().filter(|d| !**d).count();
            let offers: Vec<(u16, Offer)> = offers_from(&encoded)
                .into_iter()
                .map(|(i, offer)| {
                    let offer = if damaged[usize::from(i)] {
                        apply(damages[usize::from(i) % damages.len()], i, offer)
                    } else {
                        offer
                    };
                    (i, offer)
                })
                .collect();
            match codec.decode(&spec(&encoded), offers) {
                Ok((decoded, stats)) => {
                    prop_assert!(intact >= usize::from(k));
                    prop_assert_eq!(decoded.to_vec(), data);
                    prop_assert_eq!(stats.used, u32::from(k));
                    for skipped in &stats.skipped {
                        prop_assert!(damaged[usize::from(skipped.index)], "an intact fragment was skipped");
                    }
                }
                Err(DecodeError::NotEnoughFragments { needed, good, skipped, .. }) => {
                    prop_assert!(intact < usize::from(k));
                    prop_assert_eq!(needed, k);
                    prop_assert_eq!(usize::from(good), intact);
                    prop_assert_eq!(skipped.len(), usize::from(n) - intact);
                }
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }

        /// Offering only a chosen subset (in a random order) decodes iff it has k.
        #[test]
        fn any_subset_of_size_k_or_more_decodes(
            k in 1u16..10,
            m in 0u16..8,
            len in 0usize..5000,
            keep in proptest::collection::vec(any::<bool>(), 18),
            rotate in 0usize..18,
        ) {
            let params = ErasureParams::new(k, m).unwrap();
            let codec = Codec::new(params).unwrap();
            let data = pseudo_random(len, len as u8);
            let encoded = codec.encode(&data).unwrap();
            let mut offers: Vec<(u16, Offer)> = offers_from(&encoded)
                .into_iter()
                .filter(|(i, _)| keep[usize::from(*i)])
                .collect();
            let kept = offers.len();
            if kept > 0 {
                offers.rotate_left(rotate % kept);
            }
            let result = codec.decode(&spec(&encoded), offers);
            if kept >= usize::from(k) {
                prop_assert_eq!(result.unwrap().0.to_vec(), data);
            } else {
                let is_not_enough = matches!(result, Err(DecodeError::NotEnoughFragments { .. }));
                prop_assert!(is_not_enough);
            }
        }
    }
}
