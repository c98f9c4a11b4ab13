//! The client pipeline: put a file (a stream of bytes) into a [`FragmentStore`] and get
//! it back, checking everything on the way.
//!
//! Owns: the [`FragmentStore`] trait (where fragments and certificates go and come
//! from: the local sled store now, the network later), [`put`] and [`get`] with their
//! options, results and errors ([`PutError`], [`GetError`]), and [`MemoryFragments`], an
//! in-memory store with hooks to delete, corrupt, truncate, relabel and fail fragments.
//!
//! May use: [`crate::id`], [`crate::crypto`], [`crate::erasure`], [`crate::manifest`],
//! and [`crate::store`] only in [`LocalFragments`], the adapter that makes a local
//! store a [`FragmentStore`]. The pipeline reaches stores only through the trait.
//!
//! # Put
//! Reads one segment at a time into one reused buffer (the buffer is the block, then
//! its padding, then its parity: no copy between reading and storing), hashes and
//! encodes it, stores its `n` fragments at its placement key as one group
//! ([`FragmentStore::put_block_fragments`]), and records it in the
//! manifest. Then the manifest is encoded and stored as one more block, and last the
//! file certificate, which covers the manifest hash, is signed and stored. Peak memory:
//! one segment's `n` fragments plus the manifest.
//!
//! # Get
//! Verifies the certificate (signature, owner, file id, expiry at the caller's `now`),
//! fetches and decodes the manifest block against the certified fragment hashes, checks
//! the manifest hash, then for each block fetches fragments data-first, decodes from the
//! first `k` that verify, checks the block hash and writes the block out. A fragment
//! that is missing, fails to load or fails a check is skipped and counted in
//! [`GetStats`]; a block fails only when fewer than `k` good fragments remain.

mod local;

pub use local::{LocalFragments, LocalStoreError};

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};

use crate::crypto::{FileCertificate, KeyPair, PublicKey, Signed, VerifyError};
use crate::erasure::{
    BlockSpec, Codec, DecodeError, DecodeStats, EncodeError, ErasureParams, Fragment, FragmentRef,
    Offer, ParamsError, SkipReason,
};
use crate::id::{BlockHash, FileId, FragmentHash, Id, ManifestHash, PlacementKey, Reference};
use crate::manifest::{
    BlockEntry, DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, Manifest, ManifestError,
    manifest_placement_key,
};

/// A boxed error from a store, kept as the source of a pipeline error.
pub type StoreError = Box<dyn StdError + Send + Sync + 'static>;

/// Where fragments and certificates go and come from.
///
/// Implemented by the local store, the network, and [`MemoryFragments`] for tests.
///
/// Contract: `put_fragment` is idempotent (a file with repeated blocks stores the same
/// `(key, index)` more than once, with equal bytes); a fragment is addressed by its
/// block's placement key and its index. `get_fragment` need not check anything: it may
/// return missing, stale, truncated or relabelled bytes, or an error, and the pipeline
/// checks every fragment against its hash and skips the bad ones.
pub trait FragmentStore {
    /// What can go wrong talking to this store.
    type Error: StdError + Send + Sync + 'static;

    /// Stores fragment `fragment.index` of the block at `key`. `hash` is its
    /// [`fragment_hash`](crate::erasure::fragment_hash), computed once by the encoder,
    /// for a store or a remote node to check the bytes against without trusting the
    /// sender's arithmetic (and without the caller hashing twice).
    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), Self::Error>;

    /// Stores all the fragments of one block (the `n` of a data block, or of the
    /// manifest block) at `key`, each with its hash; [`put`] calls this once per block.
    /// A store that can commit a group at once overrides it (the local disk store
    /// syncs once per block instead of once per fragment); the default calls
    /// [`Self::put_fragment`] for each, in order, and stops at the first error.
    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), Self::Error> {
        fragments
            .iter()
            .try_for_each(|(fragment, hash)| self.put_fragment(key, *fragment, hash))
    }

    /// Fetches fragment `index` of the block at `key`; `Ok(None)` if nobody has it.
    fn get_fragment(&self, key: &PlacementKey, index: u16)
    -> Result<Option<Fragment>, Self::Error>;

    /// Stores a file certificate.
    fn put_certificate(&self, certificate: &Signed<FileCertificate>) -> Result<(), Self::Error>;

    /// Fetches the certificate of `file`; `Ok(None)` if nobody has it.
    fn get_certificate(
        &self,
        file: &FileId,
    ) -> Result<Option<Signed<FileCertificate>>, Self::Error>;

    /// Whether `error` means the store found the fragment's bytes damaged (counted as
    /// corrupt in [`GetStats`]) rather than being unable to answer (unavailable).
    fn is_corruption(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

impl<S: FragmentStore + ?Sized> FragmentStore for &S {
    type Error = S::Error;
    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), S::Error> {
        (**self).put_fragment(key, fragment, hash)
    }
    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), S::Error> {
        (**self).put_block_fragments(key, fragments)
    }
    fn get_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<Fragment>, S::Error> {
        (**self).get_fragment(key, index)
    }
    fn put_certificate(&self, certificate: &Signed<FileCertificate>) -> Result<(), S::Error> {
        (**self).put_certificate(certificate)
    }
    fn get_certificate(&self, file: &FileId) -> Result<Option<Signed<FileCertificate>>, S::Error> {
        (**self).get_certificate(file)
    }
    fn is_corruption(&self, error: &S::Error) -> bool {
        (**self).is_corruption(error)
    }
}

/// How to store a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutOptions {
    /// Erasure parameters for every block and the manifest.
    pub params: ErasureParams,
    /// Bytes per block ([`DEFAULT_SEGMENT_SIZE`] unless measuring).
    pub segment_size: u32,
    /// The salt in `FileId::derive(name, owner, salt)`: 0 for the first file of a name.
    pub name_salt: u64,
    /// Creation time written into the certificate (unix seconds).
    pub created_at: u64,
    /// Expiry written into the certificate (unix seconds), if any.
    pub expires_at: Option<u64>,
}

impl PutOptions {
    /// Options with `params`, created at `created_at`, the default segment size, salt
    /// 0 and no expiry.
    pub fn new(params: ErasureParams, created_at: u64) -> PutOptions {
        PutOptions {
            params,
            segment_size: DEFAULT_SEGMENT_SIZE,
            name_salt: 0,
            created_at,
            expires_at: None,
        }
    }
}

/// What a successful put produced.
#[derive(Debug, Clone)]
pub struct PutReceipt {
    /// The file's manifest.
    pub manifest: Manifest,
    /// Its hash (also the block hash of the manifest block).
    pub manifest_hash: ManifestHash,
    /// The signed certificate, as stored.
    pub certificate: Signed<FileCertificate>,
    /// `cairn:f:<file id>`.
    pub reference: Reference,
    /// Fragments stored (all blocks and the manifest block).
    pub fragments_stored: u64,
}

impl PutReceipt {
    /// The file's id.
    pub fn file_id(&self) -> FileId {
        self.certificate.body.file_id
    }
}

/// Why a put failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The segment size is outside what a manifest may declare.
    #[error("segment size {got} is outside {min}..={max}")]
    SegmentSize {
        /// Asked for.
        got: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// The erasure coder refused the parameters.
    #[error("erasure parameters refused")]
    Params(#[source] ParamsError),
    /// Reading the input failed.
    #[error("reading the input at byte {offset} failed")]
    Read {
        /// Bytes read before the failure.
        offset: u64,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The file has more blocks than a manifest can list.
    #[error("the file needs more than {max_blocks} blocks, more than one manifest can list")]
    FileTooLarge {
        /// The most blocks a manifest can list with these parameters.
        max_blocks: usize,
    },
    /// Encoding a block failed.
    #[error("encoding block {position} failed")]
    Encode {
        /// The block's position in the file.
        position: u64,
        /// Why.
        #[source]
        source: EncodeError,
    },
    /// The store refused the fragments of a block (they go as one group; the store's
    /// error names the fragment when one was at fault).
    #[error("storing the {fragments} fragments of block {block} at {key} failed")]
    StoreBlock {
        /// The block (for the manifest block: the manifest hash).
        block: BlockHash,
        /// How many fragments the block has.
        fragments: usize,
        /// Where they were being stored.
        key: PlacementKey,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The manifest could not be encoded.
    #[error("the manifest could not be encoded")]
    Manifest(#[source] ManifestError),
    /// The certificate could not be signed.
    #[error("the file certificate could not be signed")]
    Sign(#[source] VerifyError),
    /// The store refused the certificate.
    #[error("storing the certificate of file {file} failed")]
    StoreCertificate {
        /// The file.
        file: FileId,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

/// Stores what `reader` yields as the file `name` of `owner`, one segment at a time.
///
/// Fragments go first, then the manifest block, then the certificate (signed last: it
/// covers the manifest hash). On error, fragments already stored stay where they are
/// (unreferenced until a certificate names them).
pub fn put<S: FragmentStore + ?Sized>(
    mut reader: impl Read,
    name: &[u8],
    owner: &KeyPair,
    options: &PutOptions,
    store: &S,
) -> Result<PutReceipt, PutError> {
    let segment_size = options.segment_size;
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        return Err(PutError::SegmentSize {
            got: segment_size,
            min: MIN_SEGMENT_SIZE,
            max: MAX_SEGMENT_SIZE,
        });
    }
    let params = options.params;
    let codec = Codec::new(params).map_err(PutError::Params)?;
    let max_blocks = Manifest::max_blocks(params);
    let segment = segment_size as usize;
    // Zeroed once; afterwards each segment is read over the previous block's bytes.
    let mut buffer = vec![0u8; codec.buffer_capacity(segment)];
    let mut blocks = Vec::new();
    let mut file_size = 0u64;
    let mut fragments_stored = 0u64;
    // Bounded: each pass reads one full segment or ends, and the block count is capped.
    loop {
        if buffer.len() < segment {
            // Only if a codec gave back less than a segment; never for a full block.
            buffer.resize(segment, 0);
        }
        let read =
            read_full(&mut reader, &mut buffer[..segment]).map_err(|source| PutError::Read {
                offset: file_size,
                source,
            })?;
        buffer.truncate(read);
        if read == 0 {
            break;
        }
        if blocks.len() >= max_blocks {
            return Err(PutError::FileTooLarge { max_blocks });
        }
        let position = blocks.len() as u64;
        let encoded = codec
            .encode_in_place(buffer)
            .map_err(|source| PutError::Encode { position, source })?;
        let entry = BlockEntry {
            hash: encoded.block_hash(),
            salt: 0,
            fragments: encoded.fragment_hashes().to_vec(),
        };
        fragments_stored += store_fragments(store, &entry.placement_key(), &encoded)?;
        tracing::trace!(position, block = %entry.hash, len = read, "stored block");
        blocks.push(entry);
        file_size += read as u64;
        buffer = encoded.into_buffer();
        if read < segment {
            break;
        }
    }
    drop(buffer);

    let manifest = Manifest {
        file_size,
        segment_size,
        params,
        blocks,
    };
    let encoded_manifest = manifest.encode().map_err(PutError::Manifest)?;
    let manifest_hash = encoded_manifest.hash;
    let manifest_salt = 0;
    let manifest_block = codec
        .encode_in_place(encoded_manifest.bytes)
        .map_err(|source| PutError::Encode {
            position: manifest.blocks.len() as u64,
            source,
        })?;
    let manifest_key = manifest_placement_key(&manifest_hash, manifest_salt);
    fragments_stored += store_fragments(store, &manifest_key, &manifest_block)?;

    let owner_key = owner.public_key();
    let file_id = FileId::derive(name, &owner_key.0, options.name_salt);
    let body = FileCertificate {
        file_id,
        name_digest: Id::hash(name),
        name_salt: options.name_salt,
        manifest_hash,
        manifest_salt,
        manifest_fragments: manifest_block.fragment_hashes().to_vec(),
        size: file_size,
        k: params.k(),
        m: params.m(),
        created_at: options.created_at,
        expires_at: options.expires_at,
        owner: owner_key,
    };
    let certificate = Signed::sign(owner, body).map_err(PutError::Sign)?;
    store
        .put_certificate(&certificate)
        .map_err(|error| PutError::StoreCertificate {
            file: file_id,
            source: Box::new(error),
        })?;
    tracing::debug!(%file_id, size = file_size, blocks = manifest.blocks.len(), "put done");
    Ok(PutReceipt {
        manifest,
        manifest_hash,
        certificate,
        reference: Reference::File(file_id),
        fragments_stored,
    })
}

/// Consecutive `Interrupted` reads tolerated before giving up on a reader.
const MAX_INTERRUPTED_READS: u32 = 1000;

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    let mut interrupted = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                interrupted = 0;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                interrupted += 1;
                if interrupted >= MAX_INTERRUPTED_READS {
                    return Err(error);
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn store_fragments<S: FragmentStore + ?Sized>(
    store: &S,
    key: &PlacementKey,
    encoded: &crate::erasure::EncodedBlock,
) -> Result<u64, PutError> {
    let fragments: Vec<(FragmentRef<'_>, FragmentHash)> = encoded
        .fragments()
        .zip(encoded.fragment_hashes().iter().copied())
        .collect();
    store
        .put_block_fragments(key, &fragments)
        .map_err(|error| PutError::StoreBlock {
            block: encoded.block_hash(),
            fragments: fragments.len(),
            key: *key,
            source: Box::new(error),
        })?;
    Ok(fragments.len() as u64)
}

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
}

impl GetOptions {
    /// Options judging expiry at `now`, accepting any owner.
    pub fn new(now: u64) -> GetOptions {
        GetOptions {
            now,
            expected_owner: None,
        }
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
        source: StoreError,
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

/// Fetches fragment `index` at `key` as an offer for the decoder.
fn offer<S: FragmentStore + ?Sized>(store: &S, key: &PlacementKey, index: u16) -> (u16, Offer) {
    let offer = match store.get_fragment(key, index) {
        Ok(Some(fragment)) => Offer::Fragment(fragment),
        Ok(None) => Offer::Missing,
        Err(error) if store.is_corruption(&error) => Offer::ReportedCorrupt(error.to_string()),
        Err(error) => Offer::Unavailable(error.to_string()),
    };
    (index, offer)
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
pub fn get<S: FragmentStore + ?Sized>(
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
    let offers = codec
        .fetch_order()
        .map(|index| offer(store, &manifest_key, index));
    let (decoded, decode_stats) =
        codec
            .decode(&spec, offers)
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

    for (position, entry) in manifest.blocks.iter().enumerate() {
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
        let offers = codec.fetch_order().map(|index| offer(store, &key, index));
        let (decoded, decode_stats) =
            codec
                .decode(&spec, offers)
                .map_err(|source| GetError::Block {
                    file,
                    position,
                    block: entry.hash,
                    source: Box::new(source),
                })?;
        stats.add(entry.hash, decode_stats);
        decoded
            .write_to(&mut writer)
            .map_err(|source| GetError::Write {
                offset: stats.bytes,
                source,
            })?;
        stats.bytes += decoded.len() as u64;
        stats.blocks += 1;
    }
    writer.flush().map_err(|source| GetError::Write {
        offset: stats.bytes,
        source,
    })?;
    tracing::debug!(%file, bytes = stats.bytes, skipped = stats.skipped_total(), "get done");
    Ok(stats)
}

/// The error [`MemoryFragments`] returns for a fragment set to fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure reading fragment {index} at {key}")]
pub struct InjectedFailure {
    /// The placement key.
    pub key: PlacementKey,
    /// The fragment index.
    pub index: u16,
}

#[derive(Default)]
struct MemoryInner {
    fragments: HashMap<(PlacementKey, u16), Fragment>,
    failing: HashMap<(PlacementKey, u16), ()>,
    certificates: HashMap<FileId, Signed<FileCertificate>>,
}

/// An in-memory [`FragmentStore`] for tests and benches, with hooks to damage what it
/// holds the ways real stores and peers do.
#[derive(Default)]
pub struct MemoryFragments {
    inner: Mutex<MemoryInner>,
}

impl std::fmt::Debug for MemoryFragments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        write!(
            f,
            "MemoryFragments {{ fragments: {}, certificates: {} }}",
            inner.fragments.len(),
            inner.certificates.len()
        )
    }
}

impl MemoryFragments {
    /// An empty store.
    pub fn new() -> MemoryFragments {
        MemoryFragments::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        // A panic elsewhere while holding the lock leaves plain maps, still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fragments held.
    pub fn fragment_count(&self) -> usize {
        self.lock().fragments.len()
    }

    /// Bytes of fragments held.
    pub fn fragment_bytes(&self) -> u64 {
        self.lock()
            .fragments
            .values()
            .map(|f| f.bytes.len() as u64)
            .sum()
    }

    /// Removes fragment `index` at `key`; true if it was there.
    pub fn delete(&self, key: &PlacementKey, index: u16) -> bool {
        self.lock().fragments.remove(&(*key, index)).is_some()
    }

    /// Applies `change` to the stored fragment `index` at `key` (its bytes or the index
    /// it claims); false if there is none.
    pub fn tamper(
        &self,
        key: &PlacementKey,
        index: u16,
        change: impl FnOnce(&mut Fragment),
    ) -> bool {
        match self.lock().fragments.get_mut(&(*key, index)) {
            Some(fragment) => {
                change(fragment);
                true
            }
            None => false,
        }
    }

    /// Flips bit `bit` (modulo the fragment's length) of fragment `index` at `key`.
    pub fn flip_bit(&self, key: &PlacementKey, index: u16, bit: usize) -> bool {
        self.tamper(key, index, |fragment| {
            let bits = fragment.bytes.len() * 8;
            if bits > 0 {
                fragment.bytes[(bit % bits) / 8] ^= 1 << (bit % 8);
            }
        })
    }

    /// Cuts fragment `index` at `key` to `len` bytes.
    pub fn truncate(&self, key: &PlacementKey, index: u16, len: usize) -> bool {
        self.tamper(key, index, |fragment| fragment.bytes.truncate(len))
    }

    /// Swaps the stored fragments `a` and `b` at `key`, each keeping its claimed index:
    /// asking for `a` returns the fragment that says it is `b`.
    pub fn swap(&self, key: &PlacementKey, a: u16, b: u16) -> bool {
        let mut inner = self.lock();
        let (Some(fa), Some(fb)) = (
            inner.fragments.remove(&(*key, a)),
            inner.fragments.remove(&(*key, b)),
        ) else {
            return false;
        };
        inner.fragments.insert((*key, a), fb);
        inner.fragments.insert((*key, b), fa);
        true
    }

    /// Makes reads of fragment `index` at `key` fail with [`InjectedFailure`].
    pub fn fail(&self, key: &PlacementKey, index: u16) {
        self.lock().failing.insert((*key, index), ());
    }

    /// Removes the certificate of `file`; true if it was there.
    pub fn delete_certificate(&self, file: &FileId) -> bool {
        self.lock().certificates.remove(file).is_some()
    }

    /// Replaces the stored certificate of its file (to test forged certificates).
    pub fn replace_certificate(&self, certificate: Signed<FileCertificate>) {
        self.lock()
            .certificates
            .insert(certificate.body.file_id, certificate);
    }
}

impl FragmentStore for MemoryFragments {
    type Error = InjectedFailure;

    /// Stores without checking `hash`: this double holds what it is given, so tests
    /// can also plant bad fragments through the hooks.
    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        _hash: &FragmentHash,
    ) -> Result<(), InjectedFailure> {
        self.lock()
            .fragments
            .insert((*key, fragment.index), fragment.to_owned());
        Ok(())
    }

    fn get_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
    ) -> Result<Option<Fragment>, InjectedFailure> {
        let inner = self.lock();
        if inner.failing.contains_key(&(*key, index)) {
            return Err(InjectedFailure { key: *key, index });
        }
        Ok(inner.fragments.get(&(*key, index)).cloned())
    }

    fn put_certificate(
        &self,
        certificate: &Signed<FileCertificate>,
    ) -> Result<(), InjectedFailure> {
        self.lock()
            .certificates
            .insert(certificate.body.file_id, certificate.clone());
        Ok(())
    }

    fn get_certificate(
        &self,
        file: &FileId,
    ) -> Result<Option<Signed<FileCertificate>>, InjectedFailure> {
        Ok(self.lock().certificates.get(file).cloned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn options() -> PutOptions {
        let mut options = PutOptions::new(ErasureParams::new(4, 2).unwrap(), 1_000);
        options.segment_size = MIN_SEGMENT_SIZE;
        options
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn round_trip(
        store: &MemoryFragments,
        receipt: &PutReceipt,
    ) -> Result<(Vec<u8>, GetStats), GetError> {
        let mut out = Vec::new();
        let stats = get(
            GetTarget::File(receipt.file_id()),
            &mut out,
            store,
            &GetOptions::new(2_000),
        )?;
        Ok((out, stats))
    }

    #[test]
    fn put_then_get_gives_the_bytes_back() {
        let store = MemoryFragments::new();
        let owner = KeyPair::generate();
        let input = data(3 * 4096 + 100);
        let receipt = put(&input[..], b"a.txt", &owner, &options(), &store).unwrap();
        assert_eq!(receipt.manifest.blocks.len(), 4);
        assert_eq!(receipt.fragments_stored, 5 * 6);
        assert_eq!(
            receipt.file_id(),
            FileId::derive(b"a.txt", &owner.public_key().0, 0)
        );
        assert_eq!(
            receipt.reference.to_string(),
            format!("cairn:f:{}", receipt.file_id())
        );
        let (out, stats) = round_trip(&store, &receipt).unwrap();
        assert_eq!(out, input);
        assert_eq!(stats.bytes, input.len() as u64);
        assert_eq!(stats.blocks, 4);
        assert_eq!(stats.fragments_used, 5 * 4, "k per block and per manifest");
        assert_eq!(stats.skipped_total(), 0);
    }

    #[test]
    fn put_hands_each_block_to_the_store_as_one_group() {
        /// Records the groups it is given, then stores them in a `MemoryFragments`.
        #[derive(Default)]
        struct Groups {
            inner: MemoryFragments,
            groups: Mutex<Vec<(PlacementKey, Vec<u16>)>>,
            single_puts: Mutex<u32>,
        }
        impl FragmentStore for Groups {
            type Error = InjectedFailure;
            fn put_fragment(
                &self,
                key: &PlacementKey,
                fragment: FragmentRef<'_>,
                hash: &FragmentHash,
            ) -> Result<(), InjectedFailure> {
                *self.single_puts.lock().unwrap() += 1;
                self.inner.put_fragment(key, fragment, hash)
            }
            fn put_block_fragments(
                &self,
                key: &PlacementKey,
                fragments: &[(FragmentRef<'_>, FragmentHash)],
            ) -> Result<(), InjectedFailure> {
                let indexes = fragments.iter().map(|(f, _)| f.index).collect();
                self.groups.lock().unwrap().push((*key, indexes));
                self.inner.put_block_fragments(key, fragments)
            }
            fn get_fragment(
                &self,
                key: &PlacementKey,
                index: u16,
            ) -> Result<Option<Fragment>, InjectedFailure> {
                self.inner.get_fragment(key, index)
            }
            fn put_certificate(
                &self,
                certificate: &Signed<FileCertificate>,
            ) -> Result<(), InjectedFailure> {
                self.inner.put_certificate(certificate)
            }
            fn get_certificate(
                &self,
                file: &FileId,
            ) -> Result<Option<Signed<FileCertificate>>, InjectedFailure> {
                self.inner.get_certificate(file)
            }
        }

        let store = Groups::default();
        let input = data(3 * 4096 + 100);
        let receipt = put(&input[..], b"g", &KeyPair::generate(), &options(), &store).unwrap();
        let groups = store.groups.lock().unwrap();
        let mut expected: Vec<(PlacementKey, Vec<u16>)> = receipt
            .manifest
            .blocks
            .iter()
            .map(|block| (block.placement_key(), (0..6).collect()))
            .collect();
        let manifest_key = manifest_placement_key(&receipt.manifest_hash, 0);
        expected.push((manifest_key, (0..6).collect()));
        assert_eq!(
            *groups, expected,
            "one group per block, then the manifest's"
        );
        assert_eq!(
            *store.single_puts.lock().unwrap(),
            0,
            "put went around the group call"
        );
        assert_eq!(store.inner.fragment_count(), 5 * 6);
    }

    #[test]
    fn a_read_error_is_reported_with_its_offset() {
        struct FailAfter(usize);
        impl Read for FailAfter {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let store = MemoryFragments::new();
        let err = put(
            FailAfter(5000),
            b"x",
            &KeyPair::generate(),
            &options(),
            &store,
        )
        .unwrap_err();
        assert!(
            matches!(err, PutError::Read { offset: 4096, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn segment_size_is_checked() {
        let mut options = options();
        options.segment_size = 10;
        let err = put(
            &b"abc"[..],
            b"x",
            &KeyPair::generate(),
            &options,
            &MemoryFragments::new(),
        )
        .unwrap_err();
        assert!(matches!(err, PutError::SegmentSize { got: 10, .. }));
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
    fn short_and_interrupted_reads_make_the_same_file() {
        /// Yields 1..=997 bytes at a time and an `Interrupted` error every third call.
        struct Trickle<'a> {
            data: &'a [u8],
            calls: usize,
        }
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.calls += 1;
                if self.calls % 3 == 0 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = buf
                    .len()
                    .min(self.data.len())
                    .min(1 + self.calls * 37 % 997);
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let input = data(5 * 4096 + 3);
        let owner = KeyPair::generate();
        let store = MemoryFragments::new();
        let whole = put(&input[..], b"x", &owner, &options(), &store).unwrap();
        let trickled = put(
            Trickle {
                data: &input,
                calls: 0,
            },
            b"x",
            &owner,
            &options(),
            &store,
        )
        .unwrap();
        assert_eq!(
            trickled.manifest_hash, whole.manifest_hash,
            "same blocks, same manifest"
        );
        let (out, _) = round_trip(&store, &trickled).unwrap();
        assert_eq!(out, input);
    }
}
