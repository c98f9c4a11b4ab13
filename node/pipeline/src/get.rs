//! Get: a file back from a [`FragmentSource`], checking everything on the way.
//!
//! Owns: [`get`], its options ([`GetTarget`], [`GetOptions`], [`ByteRange`]), what it
//! reports ([`GetStats`], [`SkippedFragment`]) and its error ([`GetError`]); the batched
//! fetch of a block's fragments, the read-ahead of the next block, and the patience
//! with a block that is out of reach for a moment ([`BlockRetry`]).
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`], [`cairn_core::erasure`],
//! [`cairn_core::manifest`], and the source only through [`FragmentSource`].

use std::io::{self, Write};
use std::time::Duration;

use cairn_core::crypto::{FileCertificate, PublicKey, Signed, VerifyError};
use cairn_core::erasure::{
    BlockSpec, Codec, DecodeError, DecodeStats, DecodedBlock, ErasureParams, Fragment, Offer,
    ParamsError, SkipReason,
};
use cairn_core::id::{BlockHash, FileId, ManifestHash, PlacementKey};
use cairn_core::manifest::{Manifest, ManifestError, manifest_placement_key};

use crate::store::{BoxedStoreError, FailureKind, FragmentSource, StoreFailure};

/// Which file to get.
#[derive(Debug, Clone, Copy)]
pub enum GetTarget<'a> {
    /// Look the certificate up in the store by file id.
    File(FileId),
    /// Use this certificate (still verified).
    Certificate(&'a Signed<FileCertificate>),
}

/// How to check what is fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetOptions {
    /// The time (unix seconds) at which certificate expiry is judged.
    pub now: u64,
    /// When set, the certificate must be owned (and signed) by this key. Without it
    /// any validly self-signed certificate for the file id is believed.
    pub expected_owner: Option<PublicKey>,
    /// When set, only these bytes are written (clamped to the file), and only the
    /// blocks that overlap them are fetched.
    pub range: Option<ByteRange>,
    /// How long a block with fewer than `k` fragments within reach is waited for.
    pub retry: BlockRetry,
}

impl GetOptions {
    /// Options judging expiry at `now`, accepting any owner, for the whole file.
    pub fn new(now: u64) -> GetOptions {
        GetOptions {
            now,
            expected_owner: None,
            range: None,
            retry: BlockRetry::NEVER,
        }
    }

    /// These options for the bytes of `range` only.
    pub fn with_range(mut self, range: ByteRange) -> GetOptions {
        self.range = Some(range);
        self
    }

    /// These options, waiting out an unreachable block as `retry` says.
    pub fn with_retry(mut self, retry: BlockRetry) -> GetOptions {
        self.retry = retry;
        self
    }
}

/// How a get waits out a block of which fewer than `k` good fragments are within reach
/// now, but some were missing or unreachable rather than corrupt: under churn that is
/// often a moment (a holder restarting, a repair under way, a leaf set not yet
/// healed), and a reader would rather wait a few seconds than fail. The block is
/// fetched again after `first_wait`, then after twice that, and so on, `retries`
/// times; then the get fails as it would have at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRetry {
    /// Fetches after the first.
    pub retries: u8,
    /// The wait before the first of them; each later wait doubles.
    pub first_wait: Duration,
}

impl BlockRetry {
    /// Fail at once (a local store: nothing comes back by waiting).
    pub const NEVER: BlockRetry = BlockRetry {
        retries: 0,
        first_wait: Duration::ZERO,
    };

    /// Over the network: 0.5, 1, 2 and 4 s, so 7.5 s at most in all, about twice the
    /// time a node takes to restart and a failure to be detected and repaired.
    pub const NETWORK: BlockRetry = BlockRetry {
        retries: 4,
        first_wait: Duration::from_millis(500),
    };

    /// The wait before fetch `attempt + 1` (`attempt` counting from 0).
    fn wait(&self, attempt: u8) -> Duration {
        self.first_wait
            .saturating_mul(1u32.checked_shl(u32::from(attempt)).unwrap_or(u32::MAX))
    }

    /// The longest a block can be waited for in all.
    pub fn total_wait(&self) -> Duration {
        (0..self.retries).fold(Duration::ZERO, |sum, attempt| {
            sum.saturating_add(self.wait(attempt))
        })
    }
}

/// A byte range of a file: `length` bytes from `offset` (`None`: to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// The first byte wanted.
    pub offset: u64,
    /// How many bytes; `None` means to the end of the file.
    pub length: Option<u64>,
}

impl ByteRange {
    /// The range as `[start, end)` within a file of `size` bytes: an offset at or
    /// beyond the end gives an empty range at the end, a length past the end stops
    /// there.
    pub fn clamp(&self, size: u64) -> (u64, u64) {
        let start = self.offset.min(size);
        let end = match self.length {
            Some(length) => self.offset.saturating_add(length).min(size),
            None => size,
        };
        (start, end.max(start))
    }
}

/// The most skipped fragments [`GetStats::skipped`] lists one by one (the counts are
/// always complete): a get of a huge file with a dead holder stays bounded in memory.
pub const MAX_SKIPPED_RECORDS: usize = 4096;

/// One fragment a get did not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFragment {
    /// The block it belongs to (for the manifest block: the manifest hash).
    pub block: BlockHash,
    /// The fragment's index.
    pub index: u16,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// What a get did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetStats {
    /// Bytes written.
    pub bytes: u64,
    /// File blocks decoded (the manifest block not counted).
    pub blocks: u64,
    /// Fragments asked for, including the manifest block's.
    pub fragments_requested: u64,
    /// Fragments used to decode.
    pub fragments_used: u64,
    /// Fragments skipped because nobody had them.
    pub skipped_missing: u64,
    /// Fragments skipped because they failed a check.
    pub skipped_corrupt: u64,
    /// Fragments skipped because fetching them failed.
    pub skipped_unavailable: u64,
    /// Times a block was fetched again after a wait ([`BlockRetry`]).
    pub block_retries: u64,
    /// The first [`MAX_SKIPPED_RECORDS`] skipped fragments, in order.
    pub skipped: Vec<SkippedFragment>,
}

impl GetStats {
    /// All fragments skipped, for any reason.
    pub fn skipped_total(&self) -> u64 {
        self.skipped_missing + self.skipped_corrupt + self.skipped_unavailable
    }

    fn add(&mut self, block: BlockHash, decode: DecodeStats) {
        self.fragments_requested += u64::from(decode.requested);
        self.fragments_used += u64::from(decode.used);
        self.skipped_missing += u64::from(decode.missing());
        self.skipped_corrupt += u64::from(decode.corrupt());
        self.skipped_unavailable += u64::from(decode.unavailable());
        let room = MAX_SKIPPED_RECORDS.saturating_sub(self.skipped.len());
        self.skipped.extend(
            decode
                .skipped
                .into_iter()
                .take(room)
                .map(|skipped| SkippedFragment {
                    block,
                    index: skipped.index,
                    reason: skipped.reason,
                }),
        );
    }
}

/// Why a get failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// Asking the store for the certificate failed.
    #[error("looking up the certificate of file {file} failed")]
    CertificateLookup {
        /// The file.
        file: FileId,
        /// The store's error.
        #[source]
        source: BoxedStoreError,
    },
    /// No certificate for the file.
    #[error("no certificate found for file {file}")]
    CertificateNotFound {
        /// The file.
        file: FileId,
    },
    /// The certificate's signature does not verify, or its signer is not its owner.
    #[error("the certificate of file {file} does not verify")]
    CertificateInvalid {
        /// The file it claims to be for.
        file: FileId,
        /// Why.
        #[source]
        source: VerifyError,
    },
    /// The certificate is for another file than the one asked for.
    #[error("asked for file {requested}, the certificate found is for {certified}")]
    WrongFile {
        /// The file asked for.
        requested: FileId,
        /// The file the certificate names.
        certified: FileId,
    },
    /// The certificate is owned by another key than the one expected.
    #[error("file {file} is owned by {found}, expected {expected}")]
    WrongOwner {
        /// The file.
        file: FileId,
        /// The owner the caller expected.
        expected: PublicKey,
        /// The owner the certificate names.
        found: PublicKey,
    },
    /// The certificate has expired.
    #[error("the certificate of file {file} expired at {expired_at}; now is {now}")]
    Expired {
        /// The file.
        file: FileId,
        /// When it expired (unix seconds).
        expired_at: u64,
        /// The time given.
        now: u64,
    },
    /// The certificate names erasure parameters no codec accepts.
    #[error("the certificate of file {file} has unusable erasure parameters")]
    Params {
        /// The file.
        file: FileId,
        /// Why.
        #[source]
        source: ParamsError,
    },
    /// The manifest block could not be rebuilt.
    #[error("the manifest {manifest} of file {file} could not be fetched")]
    ManifestUnavailable {
        /// The file.
        file: FileId,
        /// The manifest.
        manifest: ManifestHash,
        /// Why (boxed: it lists every skipped fragment).
        #[source]
        source: Box<DecodeError>,
    },
    /// The manifest block was rebuilt but is not a valid manifest with the right hash.
    #[error("the manifest {manifest} of file {file} is invalid")]
    ManifestInvalid {
        /// The file.
        file: FileId,
        /// The manifest.
        manifest: ManifestHash,
        /// Why (boxed to keep the error small).
        #[source]
        source: Box<ManifestError>,
    },
    /// The manifest disagrees with the certificate.
    #[error("the manifest of file {file} says {field} = {listed}, the certificate {certified}")]
    ManifestDisagrees {
        /// The file.
        file: FileId,
        /// Which field.
        field: &'static str,
        /// The value in the certificate.
        certified: u64,
        /// The value in the manifest.
        listed: u64,
    },
    /// A block could not be rebuilt.
    #[error("block {position} ({block}) of file {file} could not be rebuilt")]
    Block {
        /// The file.
        file: FileId,
        /// The block's position in the file.
        position: u64,
        /// The block.
        block: BlockHash,
        /// Why (boxed: it lists every skipped fragment).
        #[source]
        source: Box<DecodeError>,
    },
    /// Writing the output failed.
    #[error("writing the output at byte {offset} failed")]
    Write {
        /// Bytes written before the failure.
        offset: u64,
        /// The write error.
        #[source]
        source: io::Error,
    },
}

/// A store's answer for one fragment as an offer for the decoder.
fn to_offer<E: StoreFailure>(answer: Option<Result<Option<Fragment>, E>>) -> Offer {
    match answer {
        Some(Ok(Some(fragment))) => Offer::Fragment(fragment),
        Some(Ok(None)) => Offer::Missing,
        Some(Err(error)) if error.kind() == FailureKind::Corrupt => {
            Offer::ReportedCorrupt(error.to_string())
        }
        Some(Err(error)) => Offer::Unavailable(error.to_string()),
        None => Offer::Unavailable("the store gave no answer for this fragment".into()),
    }
}

/// Asks the store for `indexes` at `key` in one call, as offers in the same order.
fn fetch_batch<S: FragmentSource + ?Sized>(
    store: &S,
    key: &PlacementKey,
    indexes: &[u16],
) -> Vec<(u16, Offer)> {
    let mut answers = store.get_block_fragments(key, indexes).into_iter();
    // One answer per index is the contract; a short answer counts the rest unavailable.
    indexes
        .iter()
        .map(|&index| (index, to_offer(answers.next())))
        .collect()
}

/// The offers for the block at `key`, for [`Codec::decode`]: the first `k` indexes of
/// the codec's fetch order in one call to the store (so a network store fetches them
/// in parallel), and only if the decoder pulls past them (fewer than `k` verified)
/// the rest in one more call. The decoder stops pulling at the `k`-th good fragment,
/// so the stats count only what it examined, as with one-by-one fetches.
fn block_offers<'s, S: FragmentSource + ?Sized>(
    store: &'s S,
    codec: &Codec,
    key: PlacementKey,
) -> impl Iterator<Item = (u16, Offer)> + 's {
    let order: Vec<u16> = codec.fetch_order().collect();
    let first_len = usize::from(codec.params().k()).min(order.len());
    let first = fetch_batch(store, &key, &order[..first_len]);
    let rest = order[first_len..].to_vec();
    // `flat_map` on a one-item iterator calls its closure only when first pulled.
    let rest_offers = std::iter::once(rest)
        .filter(|rest| !rest.is_empty())
        .flat_map(move |rest| {
            tracing::debug!(key = ?key, fetching = rest.len(), "first k fragments not enough");
            fetch_batch(store, &key, &rest)
        });
    first.into_iter().chain(rest_offers)
}

/// Rebuilds the block at `key`, fetching it again after a wait while fewer than `k`
/// good fragments were within reach and some were missing or unreachable
/// ([`BlockRetry`]). A block held back by corrupt fragments alone is not waited for:
/// waiting does not mend them.
fn decode_block<S: FragmentSource + ?Sized>(
    store: &S,
    codec: &Codec,
    spec: &BlockSpec<'_>,
    key: PlacementKey,
    retry: BlockRetry,
    stats: &mut GetStats,
) -> Result<(DecodedBlock, DecodeStats), DecodeError> {
    let mut attempt = 0u8;
    loop {
        match codec.decode(spec, block_offers(store, codec, key)) {
            Err(DecodeError::NotEnoughFragments {
                good,
                needed,
                missing,
                unavailable,
                ..
            }) if missing + unavailable > 0 && attempt < retry.retries => {
                let wait = retry.wait(attempt);
                tracing::debug!(
                    ?key,
                    good,
                    needed,
                    missing,
                    unavailable,
                    ?wait,
                    "block out of reach; fetching it again after a wait"
                );
                store.pause(wait);
                stats.block_retries += 1;
                attempt += 1;
            }
            decoded => return decoded,
        }
    }
}

/// Checks a certificate for `requested` (if given) at `options.now`.
fn check_certificate<'c>(
    certificate: &'c Signed<FileCertificate>,
    requested: Option<FileId>,
    options: &GetOptions,
) -> Result<&'c FileCertificate, GetError> {
    let file = certificate.body.file_id;
    let body = certificate
        .verify()
        .map_err(|source| GetError::CertificateInvalid { file, source })?;
    if let Some(requested) = requested {
        if requested != file {
            return Err(GetError::WrongFile {
                requested,
                certified: file,
            });
        }
    }
    if let Some(expected) = options.expected_owner {
        if expected != body.owner {
            return Err(GetError::WrongOwner {
                file,
                expected,
                found: body.owner,
            });
        }
    }
    body.check_time(options.now).map_err(|error| match error {
        VerifyError::Expired { expired_at, now } => GetError::Expired {
            file,
            expired_at,
            now,
        },
        source => GetError::CertificateInvalid { file, source },
    })?;
    Ok(body)
}

/// Fetches, verifies and writes the file named by `target` to `writer`, one block at a
/// time. Returns what was fetched and skipped.
pub fn get<S: FragmentSource + ?Sized>(
    target: GetTarget<'_>,
    mut writer: impl Write,
    store: &S,
    options: &GetOptions,
) -> Result<GetStats, GetError> {
    let looked_up;
    let (certificate, requested) = match target {
        GetTarget::Certificate(certificate) => (certificate, None),
        GetTarget::File(file) => {
            looked_up = store
                .get_certificate(&file)
                .map_err(|error| GetError::CertificateLookup {
                    file,
                    source: Box::new(error),
                })?
                .ok_or(GetError::CertificateNotFound { file })?;
            (&looked_up, Some(file))
        }
    };
    let body = check_certificate(certificate, requested, options)?;
    let file = body.file_id;
    let params =
        ErasureParams::new(body.k, body.m).map_err(|source| GetError::Params { file, source })?;
    let codec = Codec::new(params).map_err(|source| GetError::Params { file, source })?;
    let mut stats = GetStats::default();

    // The manifest block: its fragment hashes are certified, its length is not known.
    let manifest_hash = body.manifest_hash;
    let manifest_block = BlockHash(manifest_hash.0);
    let manifest_key = manifest_placement_key(&manifest_hash, body.manifest_salt);
    let spec = BlockSpec {
        hash: manifest_block,
        len: None,
        fragment_hashes: &body.manifest_fragments,
    };
    let (decoded, decode_stats) = decode_block(
        store,
        &codec,
        &spec,
        manifest_key,
        options.retry,
        &mut stats,
    )
    .map_err(|source| GetError::ManifestUnavailable {
        file,
        manifest: manifest_hash,
        source: Box::new(source),
    })?;
    stats.add(manifest_block, decode_stats);
    let manifest =
        Manifest::from_block(&decoded.to_vec(), &manifest_hash, params).map_err(|source| {
            GetError::ManifestInvalid {
                file,
                manifest: manifest_hash,
                source: Box::new(source),
            }
        })?;
    drop(decoded);
    let disagrees = |field, certified: u64, listed: u64| GetError::ManifestDisagrees {
        file,
        field,
        certified,
        listed,
    };
    if manifest.file_size != body.size {
        return Err(disagrees("size", body.size, manifest.file_size));
    }
    if manifest.params.k() != body.k {
        return Err(disagrees("k", body.k.into(), manifest.params.k().into()));
    }
    if manifest.params.m() != body.m {
        return Err(disagrees("m", body.m.into(), manifest.params.m().into()));
    }

    // The indexes `block_offers` asks for first: what a prefetch of the next block asks.
    let first_fetch: Vec<u16> = codec
        .fetch_order()
        .take(usize::from(codec.params().k()))
        .collect();
    // The bytes wanted, and the blocks that hold them (every block is `segment_size`
    // long but the last, so block `i` starts at `i × segment_size`).
    let (start, end) = options.range.map_or((0, manifest.file_size), |range| {
        range.clamp(manifest.file_size)
    });
    let segment = u64::from(manifest.segment_size).max(1);
    let wanted = if start < end {
        let first = usize::try_from(start / segment).unwrap_or(usize::MAX);
        let last = usize::try_from((end - 1) / segment).unwrap_or(usize::MAX);
        first..last.saturating_add(1).min(manifest.blocks.len())
    } else {
        0..0
    };
    for (position, entry) in manifest.blocks.iter().enumerate() {
        if !wanted.contains(&position) {
            continue;
        }
        // Read-ahead: the next block's first `k` fragments are on their way while this
        // one is fetched, decoded and written.
        if let Some(next) = manifest.blocks.get(position + 1)
            && wanted.contains(&(position + 1))
        {
            store.prefetch(&next.placement_key(), &first_fetch);
        }
        let block_start = position as u64 * segment;
        let position = position as u64;
        // Always known for a validated manifest; a block without a length would be
        // decoded without its hash check, so refuse rather than default.
        let len =
            manifest
                .block_len(position as usize)
                .ok_or_else(|| GetError::ManifestInvalid {
                    file,
                    manifest: manifest_hash,
                    source: Box::new(ManifestError::BlockCountMismatch {
                        file_size: manifest.file_size,
                        segment_size: manifest.segment_size,
                        expected: Manifest::block_count(manifest.file_size, manifest.segment_size),
                        got: manifest.blocks.len(),
                    }),
                })?;
        let key = entry.placement_key();
        let spec = BlockSpec {
            hash: entry.hash,
            len: Some(len),
            fragment_hashes: &entry.fragments,
        };
        let (decoded, decode_stats) =
            decode_block(store, &codec, &spec, key, options.retry, &mut stats).map_err(
                |source| GetError::Block {
                    file,
                    position,
                    block: entry.hash,
                    source: Box::new(source),
                },
            )?;
        stats.add(entry.hash, decode_stats);
        // The part of this block inside the range, relative to the block.
        let from = start.saturating_sub(block_start);
        let to = (end - block_start).min(decoded.len() as u64);
        let written =
            write_part(&decoded, from, to, &mut writer).map_err(|source| GetError::Write {
                offset: stats.bytes,
                source,
            })?;
        stats.bytes += written;
        stats.blocks += 1;
    }
    writer.flush().map_err(|source| GetError::Write {
        offset: stats.bytes,
        source,
    })?;
    tracing::debug!(%file, bytes = stats.bytes, skipped = stats.skipped_total(), "get done");
    Ok(stats)
}

/// Writes bytes `[from, to)` of `block` to `writer` (no copy); returns how many.
fn write_part(
    block: &cairn_core::erasure::DecodedBlock,
    from: u64,
    to: u64,
    writer: &mut impl Write,
) -> std::io::Result<u64> {
    let mut at = 0u64;
    let mut written = 0u64;
    for chunk in block.chunks() {
        let chunk_end = at + chunk.len() as u64;
        let lo = from.max(at);
        let hi = to.min(chunk_end);
        if lo < hi {
            let (lo, hi) = ((lo - at) as usize, (hi - at) as usize);
            writer.write_all(&chunk[lo..hi])?;
            written += (hi - lo) as u64;
        }
        at = chunk_end;
        if at >= to {
            break;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::test_support::*;
    use crate::{InjectedFailure, MemoryFragments, put};
    use cairn_core::crypto::KeyPair;
    use cairn_core::manifest::{BlockEntry, MIN_SEGMENT_SIZE};
    use std::sync::Mutex;

    #[test]
    fn a_ranged_get_writes_exactly_the_range_and_fetches_only_its_blocks() {
        let store = MemoryFragments::new();
        let owner = KeyPair::generate();
        let seg = MIN_SEGMENT_SIZE as u64;
        let input = data(4 * seg as usize + 100);
        let size = input.len() as u64;
        let receipt = put(&input[..], b"r.bin", &owner, &options(), &store).unwrap();
        let ranged = |offset: u64, length: Option<u64>| {
            let mut out = Vec::new();
            let options = GetOptions::new(2_000).with_range(ByteRange { offset, length });
            let stats = get(
                GetTarget::File(receipt.file_id()),
                &mut out,
                &store,
                &options,
            )
            .unwrap_or_else(|e| panic!("range {offset} {length:?}: {e}"));
            (out, stats)
        };
        let cases = [
            (10, Some(20), 1),               // inside the first block
            (seg - 5, Some(10), 2),          // across a boundary
            (seg, Some(seg), 1),             // exactly the second block
            (seg - 1, Some(2 * seg + 2), 4), // across two boundaries
            (3 * seg + 7, None, 2),          // to the end
            (size - 1, Some(1000), 1),       // past the end: clamped
            (size, None, 0),                 // at the end: empty
            (size + 50, Some(10), 0),        // beyond the end: empty
            (seg, Some(0), 0),               // length 0
            (0, None, 5),                    // the whole file
        ];
        for (offset, length, blocks) in cases {
            let (out, stats) = ranged(offset, length);
            let start = offset.min(size) as usize;
            let end = length.map_or(size, |l| (offset + l).min(size)) as usize;
            assert_eq!(
                out,
                input[start..end.max(start)],
                "range {offset} {length:?}"
            );
            assert_eq!(stats.bytes, out.len() as u64);
            assert_eq!(
                stats.blocks, blocks,
                "blocks fetched for {offset} {length:?}"
            );
        }
        // Blocks outside the range are not even asked for: delete every fragment of
        // the first and last blocks, and a range in the middle still reads.
        for position in [0, 4] {
            let key = receipt.manifest.blocks[position].placement_key();
            for index in 0..6 {
                store.delete(&key, index);
            }
        }
        let (out, _) = ranged(seg + 3, Some(2 * seg));
        assert_eq!(out, input[seg as usize + 3..3 * seg as usize + 3]);
        let err = get(
            GetTarget::File(receipt.file_id()),
            Vec::new(),
            &store,
            &GetOptions::new(2_000).with_range(ByteRange {
                offset: 0,
                length: Some(1),
            }),
        )
        .unwrap_err();
        assert!(matches!(err, GetError::Block { position: 0, .. }), "{err}");
    }

    #[test]
    fn owner_and_expiry_are_enforced() {
        let store = MemoryFragments::new();
        let owner = KeyPair::generate();
        let mut options = options();
        options.expires_at = Some(1_500);
        let receipt = put(&data(100)[..], b"x", &owner, &options, &store).unwrap();
        let err = round_trip(&store, &receipt).unwrap_err();
        assert!(
            matches!(
                err,
                GetError::Expired {
                    expired_at: 1_500,
                    now: 2_000,
                    ..
                }
            ),
            "{err}"
        );

        let stranger = KeyPair::generate().public_key();
        let strict = GetOptions {
            now: 1_200,
            expected_owner: Some(stranger),
            range: None,
            retry: BlockRetry::NEVER,
        };
        let err = get(
            GetTarget::File(receipt.file_id()),
            Vec::new(),
            &store,
            &strict,
        )
        .unwrap_err();
        assert!(matches!(err, GetError::WrongOwner { .. }), "{err}");
        let ok = GetOptions {
            now: 1_200,
            expected_owner: Some(owner.public_key()),
            range: None,
            retry: BlockRetry::NEVER,
        };
        assert!(
            get(
                GetTarget::Certificate(&receipt.certificate),
                Vec::new(),
                &store,
                &ok
            )
            .is_ok()
        );
    }

    #[test]
    fn a_manifest_that_disagrees_with_its_certificate_is_refused() {
        let store = MemoryFragments::new();
        let owner = KeyPair::generate();
        let receipt = put(&data(5000)[..], b"x", &owner, &options(), &store).unwrap();
        // The owner signs a certificate whose size is not the manifest's.
        let mut body = receipt.certificate.body.clone();
        body.size += 1;
        let lying = Signed::sign(&owner, body).unwrap();
        let err = get(
            GetTarget::Certificate(&lying),
            Vec::new(),
            &store,
            &GetOptions::new(0),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                GetError::ManifestDisagrees {
                    field: "size",
                    certified: 5001,
                    listed: 5000,
                    ..
                }
            ),
            "{err}"
        );
        // A certificate naming fragments that are not the manifest's cannot rebuild it
        // (three wrong hashes leave three good fragments of the four needed).
        let mut body = receipt.certificate.body.clone();
        body.manifest_fragments.swap(0, 1);
        body.manifest_fragments[5] = body.manifest_fragments[4];
        let swapped = Signed::sign(&owner, body).unwrap();
        let err = get(
            GetTarget::Certificate(&swapped),
            Vec::new(),
            &store,
            &GetOptions::new(0),
        )
        .unwrap_err();
        let GetError::ManifestUnavailable { source, .. } = &err else {
            panic!("{err}")
        };
        assert!(
            matches!(
                **source,
                DecodeError::NotEnoughFragments {
                    good: 3,
                    corrupt: 3,
                    ..
                }
            ),
            "{source}"
        );
    }

    #[test]
    fn a_write_error_is_reported_with_its_offset() {
        struct FullDisk(usize);
        impl Write for FullDisk {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::other("disk full"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let store = MemoryFragments::new();
        let receipt = put(
            &data(3 * 4096)[..],
            b"x",
            &KeyPair::generate(),
            &options(),
            &store,
        )
        .unwrap();
        let target = GetTarget::Certificate(&receipt.certificate);
        let err = get(target, FullDisk(5000), &store, &GetOptions::new(0)).unwrap_err();
        assert!(matches!(err, GetError::Write { offset: 4096, .. }), "{err}");
    }

    #[test]
    fn get_prefetches_the_next_block_before_fetching_this_one() {
        /// Records prefetches and batch fetches, in order.
        #[derive(Default)]
        struct Recorder {
            inner: MemoryFragments,
            events: Mutex<Vec<(&'static str, PlacementKey, Vec<u16>)>>,
        }
        impl FragmentSource for Recorder {
            type Error = InjectedFailure;
            fn get_fragment(
                &self,
                key: &PlacementKey,
                index: u16,
            ) -> Result<Option<Fragment>, InjectedFailure> {
                self.inner.get_fragment(key, index)
            }
            fn get_block_fragments(
                &self,
                key: &PlacementKey,
                indexes: &[u16],
            ) -> Vec<Result<Option<Fragment>, InjectedFailure>> {
                let event = ("fetch", *key, indexes.to_vec());
                self.events.lock().unwrap().push(event);
                self.inner.get_block_fragments(key, indexes)
            }
            fn prefetch(&self, key: &PlacementKey, indexes: &[u16]) {
                let event = ("prefetch", *key, indexes.to_vec());
                self.events.lock().unwrap().push(event);
            }
            fn get_certificate(
                &self,
                file: &FileId,
            ) -> Result<Option<Signed<FileCertificate>>, InjectedFailure> {
                self.inner.get_certificate(file)
            }
        }
        let store = Recorder::default();
        let input = data(2 * 4096 + 1);
        let receipt = put(
            &input[..],
            b"p",
            &KeyPair::generate(),
            &options(),
            &store.inner,
        )
        .unwrap();
        let mut out = Vec::new();
        get(
            GetTarget::Certificate(&receipt.certificate),
            &mut out,
            &store,
            &GetOptions::new(0),
        )
        .unwrap();
        assert_eq!(out, input);
        let first = vec![0, 1, 2, 3];
        let keys: Vec<PlacementKey> = receipt
            .manifest
            .blocks
            .iter()
            .map(BlockEntry::placement_key)
            .collect();
        let manifest = manifest_placement_key(&receipt.manifest_hash, 0);
        assert_eq!(
            *store.events.lock().unwrap(),
            [
                ("fetch", manifest, first.clone()),
                ("prefetch", keys[1], first.clone()),
                ("fetch", keys[0], first.clone()),
                ("prefetch", keys[2], first.clone()),
                ("fetch", keys[1], first.clone()),
                ("fetch", keys[2], first.clone()),
            ],
            "each prefetch asks for exactly what the next fetch asks"
        );
    }

    #[test]
    fn get_fetches_k_fragments_per_block_in_one_call() {
        /// Records every batch asked for, and counts single fetches.
        #[derive(Default)]
        struct Batches {
            inner: MemoryFragments,
            batches: Mutex<Vec<(PlacementKey, Vec<u16>)>>,
            singles: Mutex<u32>,
        }
        impl FragmentSource for Batches {
            type Error = InjectedFailure;
            fn get_fragment(
                &self,
                key: &PlacementKey,
                index: u16,
            ) -> Result<Option<Fragment>, InjectedFailure> {
                *self.singles.lock().unwrap() += 1;
                self.inner.get_fragment(key, index)
            }
            fn get_block_fragments(
                &self,
                key: &PlacementKey,
                indexes: &[u16],
            ) -> Vec<Result<Option<Fragment>, InjectedFailure>> {
                self.batches.lock().unwrap().push((*key, indexes.to_vec()));
                self.inner.get_block_fragments(key, indexes)
            }
            fn get_certificate(
                &self,
                file: &FileId,
            ) -> Result<Option<Signed<FileCertificate>>, InjectedFailure> {
                self.inner.get_certificate(file)
            }
        }

        let store = Batches::default();
        let input = data(3 * 4096 + 100);
        let receipt = put(
            &input[..],
            b"b",
            &KeyPair::generate(),
            &options(),
            &store.inner,
        )
        .unwrap();
        let target = GetTarget::Certificate(&receipt.certificate);
        let healthy = get(target, Vec::new(), &store, &GetOptions::new(0)).unwrap();
        let manifest_key = manifest_placement_key(&receipt.manifest_hash, 0);
        let mut expected = vec![(manifest_key, vec![0, 1, 2, 3])];
        expected.extend(
            receipt
                .manifest
                .blocks
                .iter()
                .map(|block| (block.placement_key(), vec![0, 1, 2, 3])),
        );
        assert_eq!(*store.batches.lock().unwrap(), expected);
        assert_eq!(
            *store.singles.lock().unwrap(),
            0,
            "get went around the batch"
        );
        assert_eq!(healthy.fragments_requested, 5 * 4);

        // A bad data fragment in block 1: one more call, for the rest of the block.
        store.batches.lock().unwrap().clear();
        let damaged = receipt.manifest.blocks[1].placement_key();
        assert!(store.inner.flip_bit(&damaged, 2, 5));
        let mut out = Vec::new();
        let stats = get(target, &mut out, &store, &GetOptions::new(0)).unwrap();
        assert_eq!(out, input);
        let batches = store.batches.lock().unwrap();
        assert_eq!(batches.len(), 6, "{batches:?}");
        assert_eq!(batches[2], (damaged, vec![0, 1, 2, 3]));
        assert_eq!(batches[3], (damaged, vec![4, 5]));
        assert_eq!(
            (
                stats.fragments_requested,
                stats.fragments_used,
                stats.skipped_corrupt
            ),
            (5 * 4 + 1, 5 * 4, 1),
            "the decoder examined one parity fragment, as with single fetches"
        );
    }

    #[test]
    fn a_block_out_of_reach_for_a_moment_is_waited_for_and_read() {
        let store = MemoryFragments::new();
        let input = data(100);
        let receipt = put(&input[..], b"r", &KeyPair::generate(), &options(), &store).unwrap();
        let key = single_block_key(&input, 0);
        // Three of six unreachable for one fetch each: two good ones, four needed.
        for index in [0, 1, 4] {
            store.fail_for(&key, index, 1);
        }
        let mut out = Vec::new();
        let patient = GetOptions::new(2_000).with_retry(BlockRetry::NETWORK);
        let stats = get(
            GetTarget::File(receipt.file_id()),
            &mut out,
            &store,
            &patient,
        )
        .unwrap();
        assert_eq!(out, input);
        assert_eq!(stats.block_retries, 1);
        assert_eq!(store.pauses(), vec![Duration::from_millis(500)]);
    }

    #[test]
    fn an_impatient_get_fails_at_once_and_a_patient_one_gives_up_after_its_retries() {
        let store = MemoryFragments::new();
        let input = data(100);
        let receipt = put(&input[..], b"r", &KeyPair::generate(), &options(), &store).unwrap();
        let key = single_block_key(&input, 0);
        for index in [0, 1, 4] {
            store.fail(&key, index);
        }
        let file = GetTarget::File(receipt.file_id());
        let err = get(file, Vec::new(), &store, &GetOptions::new(2_000)).unwrap_err();
        assert!(matches!(err, GetError::Block { position: 0, .. }), "{err}");
        assert!(store.pauses().is_empty(), "no retry unless asked for");

        let patient = GetOptions::new(2_000).with_retry(BlockRetry::NETWORK);
        let err = get(file, Vec::new(), &store, &patient).unwrap_err();
        assert!(matches!(err, GetError::Block { position: 0, .. }), "{err}");
        let waits: Vec<u64> = store
            .pauses()
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(waits, vec![500, 1000, 2000, 4000]);
        assert_eq!(
            BlockRetry::NETWORK.total_wait(),
            Duration::from_millis(7500)
        );
    }

    #[test]
    fn a_block_held_back_by_corrupt_fragments_alone_is_not_waited_for() {
        let store = MemoryFragments::new();
        let input = data(100);
        let receipt = put(&input[..], b"r", &KeyPair::generate(), &options(), &store).unwrap();
        let key = single_block_key(&input, 0);
        for index in [0, 1, 4] {
            assert!(store.flip_bit(&key, index, 3));
        }
        let patient = GetOptions::new(2_000).with_retry(BlockRetry::NETWORK);
        let err = get(
            GetTarget::File(receipt.file_id()),
            Vec::new(),
            &store,
            &patient,
        )
        .unwrap_err();
        assert!(matches!(err, GetError::Block { position: 0, .. }), "{err}");
        assert!(
            store.pauses().is_empty(),
            "waiting does not mend a corrupt fragment"
        );
    }
}
