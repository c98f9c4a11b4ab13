//! The client pipeline: put a file (a stream of bytes) into a [`FragmentStore`] and get
//! it back, checking everything on the way.
//!
//! Owns: the [`FragmentStore`] trait (where fragments and certificates go and come
//! from: the local sled store now, the network later), [`put`] and [`get`] with their
//! options, results and errors ([`PutError`], [`GetError`]), the split put
//! ([`put_unsigned`] then [`finish_put`]) for callers that do not hold the owner's key,
//! and [`MemoryFragments`], an in-memory store with hooks to delete, corrupt, truncate,
//! relabel and fail fragments and to refuse placements.
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`], [`cairn_core::erasure`],
//! [`cairn_core::manifest`], and [`cairn_store`] only in [`LocalFragments`], the
//! adapter that makes a local store a [`FragmentStore`]. The pipeline reaches stores
//! only through the trait.
//!
//! # Put
//! Reads one segment at a time into one reused buffer (the buffer is the block, then
//! its padding, then its parity: no copy between reading and storing), hashes and
//! encodes it, starts storing its `n` fragments at its placement key as one group
//! ([`FragmentStore::start_block`]), and records it in the manifest. A store with a
//! put window ([`FragmentStore::blocks_in_flight`], `W`) copies the fragments and
//! confirms them later ([`FragmentStore::finish_block`]), so up to `W` blocks wait
//! for their receipts while the next is read and encoded; before starting a block
//! with `W` in flight, the oldest is finished. Every block is finished before the
//! manifest is encoded and stored (at once, [`FragmentStore::put_block_fragments`])
//! as one more block, and last the file certificate, which covers the manifest hash,
//! is signed and stored. Peak memory: one segment's `n` fragments in the pipeline,
//! plus the store's copies of the `W` blocks in flight (`W × n` fragments; none for a
//! synchronous store, `W` = 1), plus the manifest.
//!
//! The signing is a seam: [`put_unsigned`] stores the blocks and the manifest and
//! returns the certificate body; the owner signs it wherever the key is (the CLI), and
//! [`finish_put`] checks and stores it. On the network the blocks go out under the
//! owner's [`UploadGrant`], signed before the put starts.
//!
//! File diversion (PAST): when the store says it cannot place a block's fragments at
//! its placement key ([`FragmentStore::is_placement_refusal`]), the block is retried
//! at the keys of salt 1, 2, ... up to [`PutOptions::max_file_diversions`], and the
//! salt is recorded in its manifest entry (for the manifest block, in the
//! certificate), where get finds it. A refusal when the block is started is retried
//! from the pipeline's buffer; one reported when it is finished (the buffer holds
//! later blocks by then) is retried from the store's own copy
//! ([`FragmentStore::restart_block`]). Other store errors fail the put at once.
//!
//! # Get
//! Verifies the certificate (signature, owner, file id, expiry at the caller's `now`),
//! fetches and decodes the manifest block against the certified fragment hashes, checks
//! the manifest hash, then for each block fetches fragments data-first, decodes from the
//! first `k` that verify, checks the block hash and writes the block out. Fragments
//! are fetched in batches ([`FragmentStore::get_block_fragments`]): the first `k` of a
//! block in one call, the other `m` in a second only if fewer than `k` verified. A fragment
//! that is missing, fails to load or fails a check is skipped and counted in
//! [`GetStats`]; a block fails only when fewer than `k` good fragments remain.
//! Read-ahead: before fetching block `i`, get hints the store to fetch block `i + 1`'s
//! first `k` ([`FragmentStore::prefetch`]), so a network store fetches it while block
//! `i` is decoded and written.

mod local;

pub use local::{LocalFragments, LocalStoreError};

use std::collections::{HashMap, HashSet, VecDeque};
use std::error::Error as StdError;
use std::io::{self, Read, Write};
use std::sync::{Mutex, MutexGuard};

use cairn_core::crypto::{FileCertificate, KeyPair, PublicKey, Signed, UploadGrant, VerifyError};
use cairn_core::erasure::{
    BlockSpec, Codec, DecodeError, DecodeStats, EncodeError, EncodedBlock, ErasureParams, Fragment,
    FragmentRef, Offer, ParamsError, SkipReason,
};
use cairn_core::id::{BlockHash, FileId, FragmentHash, Id, ManifestHash, PlacementKey, Reference};
use cairn_core::manifest::{
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
    /// [`fragment_hash`](cairn_core::erasure::fragment_hash), computed once by the encoder,
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

    /// Fetches fragments `indexes` of the block at `key`: one result per index, in
    /// order. [`get`] asks for a block's first `k` fragments in one call, so a network
    /// store overrides this to fetch them in parallel; the default asks
    /// [`Self::get_fragment`] for each in turn.
    fn get_block_fragments(
        &self,
        key: &PlacementKey,
        indexes: &[u16],
    ) -> Vec<Result<Option<Fragment>, Self::Error>> {
        indexes
            .iter()
            .map(|&index| self.get_fragment(key, index))
            .collect()
    }

    /// Whether `error` means the store found the fragment's bytes damaged (counted as
    /// corrupt in [`GetStats`]) rather than being unable to answer (unavailable).
    fn is_corruption(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Whether `error` (from [`Self::put_block_fragments`]) means the store could not
    /// place the block's `n` fragments at this placement key (the nodes around it are
    /// full or refused), so that [`put`] should divert the block to another key (PAST's
    /// file diversion). Any other error fails the put at once. A store for which
    /// another key cannot help (one local disk) keeps the default, `false`.
    fn is_placement_refusal(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// How many blocks [`put`] may have started ([`Self::start_block`]) and not yet
    /// finished ([`Self::finish_block`]) at once: the put window. 1 (the default) is a
    /// synchronous store: each block is stored before the next is read.
    fn blocks_in_flight(&self) -> usize {
        1
    }

    /// Starts storing the fragments of one block at `key` and returns a token to
    /// confirm it with ([`Self::finish_block`]). A store with a window keeps its own
    /// copy of the fragments (the caller reuses its buffer as soon as this returns)
    /// and may report a placement refusal now or at the finish. The default stores
    /// the block now ([`Self::put_block_fragments`]) and returns a ready token.
    fn start_block(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<PendingBlock, Self::Error> {
        self.put_block_fragments(key, fragments)?;
        Ok(PendingBlock(0))
    }

    /// Waits until the block of `pending` is stored. On a placement refusal
    /// ([`Self::is_placement_refusal`]) the store keeps its copy of the fragments, so
    /// [`Self::restart_block`] can place them at another key; on success or any other
    /// error it drops the copy. The default (a block stored at its start) is `Ok`.
    fn finish_block(&self, pending: PendingBlock) -> Result<(), Self::Error> {
        let _ = pending;
        Ok(())
    }

    /// Starts storing again, at `new_key`, the fragments of a block whose placement
    /// was refused (by [`Self::finish_block`], or by an earlier restart): file
    /// diversion discovered after the caller's buffer was reused. Returns the token to
    /// finish it with; after a refusal here the old token may be restarted again.
    /// `None`: this store kept no copy (the default: its `finish_block` never refuses).
    fn restart_block(
        &self,
        pending: PendingBlock,
        new_key: &PlacementKey,
    ) -> Option<Result<PendingBlock, Self::Error>> {
        let _ = (pending, new_key);
        None
    }

    /// Hints that [`get`] will soon ask for fragments `indexes` of the block at `key`
    /// ([`Self::get_block_fragments`] with the same arguments): a network store starts
    /// fetching them now, while the current block is decoded and written. The default
    /// does nothing. A hint never followed by the fetch must not leak.
    fn prefetch(&self, key: &PlacementKey, indexes: &[u16]) {
        let _ = (key, indexes);
    }
}

/// A block a store has started storing and not yet confirmed
/// ([`FragmentStore::start_block`]): an opaque id the store chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingBlock(pub u64);

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
    fn get_block_fragments(
        &self,
        key: &PlacementKey,
        indexes: &[u16],
    ) -> Vec<Result<Option<Fragment>, S::Error>> {
        (**self).get_block_fragments(key, indexes)
    }
    fn is_corruption(&self, error: &S::Error) -> bool {
        (**self).is_corruption(error)
    }
    fn is_placement_refusal(&self, error: &S::Error) -> bool {
        (**self).is_placement_refusal(error)
    }
    fn blocks_in_flight(&self) -> usize {
        (**self).blocks_in_flight()
    }
    fn start_block(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<PendingBlock, S::Error> {
        (**self).start_block(key, fragments)
    }
    fn finish_block(&self, pending: PendingBlock) -> Result<(), S::Error> {
        (**self).finish_block(pending)
    }
    fn restart_block(
        &self,
        pending: PendingBlock,
        new_key: &PlacementKey,
    ) -> Option<Result<PendingBlock, S::Error>> {
        (**self).restart_block(pending, new_key)
    }
    fn prefetch(&self, key: &PlacementKey, indexes: &[u16]) {
        (**self).prefetch(key, indexes)
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
    /// Used by [`put`]; [`put_unsigned`] takes it from its [`FileIdentity`].
    pub name_salt: u64,
    /// Creation time written into the certificate (unix seconds).
    pub created_at: u64,
    /// Expiry written into the certificate (unix seconds), if any.
    pub expires_at: Option<u64>,
    /// How many other placement keys (salts 1, 2, ...) a block whose fragments the
    /// store could not place is retried at before the put fails (PAST's file
    /// diversion). 0 turns diversion off.
    pub max_file_diversions: u64,
}

/// [`PutOptions::max_file_diversions`] unless set: PAST's default of three retries.
pub const DEFAULT_MAX_FILE_DIVERSIONS: u64 = 3;

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
            max_file_diversions: DEFAULT_MAX_FILE_DIVERSIONS,
        }
    }
}

/// Which file a put stores: its id and what the id is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// `FileId::from_name_digest(name_digest, owner, name_salt)`.
    pub file_id: FileId,
    /// `SHA-256(name)`.
    pub name_digest: Id,
    /// The salt of `file_id`.
    pub name_salt: u64,
    /// The file's owner, who signs its certificate.
    pub owner: PublicKey,
}

impl FileIdentity {
    /// The identity of the file `name` (salt `name_salt`) of `owner`.
    pub fn new(name: &[u8], name_salt: u64, owner: PublicKey) -> FileIdentity {
        let name_digest = Id::hash(name);
        FileIdentity {
            file_id: FileId::from_name_digest(&name_digest, &owner.0, name_salt),
            name_digest,
            name_salt,
            owner,
        }
    }
}

impl From<&UploadGrant> for FileIdentity {
    /// The file a grant allows storing (as the grant claims it: verify the grant first).
    fn from(grant: &UploadGrant) -> FileIdentity {
        FileIdentity {
            file_id: grant.file_id,
            name_digest: grant.name_digest,
            name_salt: grant.name_salt,
            owner: grant.owner,
        }
    }
}

/// What [`put_unsigned`] stored: everything but the owner's signature.
#[derive(Debug, Clone)]
pub struct UnsignedPut {
    /// The certificate to sign (its body; it covers the manifest hash).
    pub certificate: FileCertificate,
    /// The file's manifest.
    pub manifest: Manifest,
    /// Its hash (also the block hash of the manifest block).
    pub manifest_hash: ManifestHash,
    /// Fragments stored (all blocks and the manifest block).
    pub fragments_stored: u64,
    /// Blocks (the manifest block included) stored under a diverted placement key
    /// (salt > 0) because the store refused the first.
    pub diverted_blocks: u64,
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
    /// Blocks (the manifest block included) stored under a diverted placement key.
    pub diverted_blocks: u64,
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
    /// The store could not place a block's fragments at its placement key nor at any
    /// diverted one; `source` is the store's last refusal, which says why.
    #[error(
        "block {block} could not be placed: refused at {attempts} placement keys \
         (salts 0 to {last_salt}); last refusal: {source}",
        last_salt = attempts.saturating_sub(1)
    )]
    CannotPlace {
        /// The block (for the manifest block: the manifest hash).
        block: BlockHash,
        /// Placement keys tried (1 + the diversions allowed).
        attempts: u64,
        /// The store's refusal at the last key tried.
        #[source]
        source: StoreError,
    },
    /// The store refused a block's placement after accepting it
    /// ([`FragmentStore::finish_block`]) but kept no copy to place it elsewhere
    /// ([`FragmentStore::restart_block`] answered `None`): a store that breaks the
    /// trait's contract.
    #[error(
        "block {block} was refused late at {key} and the store kept no copy of its \
         {fragments} fragments to divert"
    )]
    CannotRestart {
        /// The block.
        block: BlockHash,
        /// How many fragments it has.
        fragments: usize,
        /// The key it was to be restarted at.
        key: PlacementKey,
    },
    /// The signed certificate handed to [`finish_put`] is not the one the put made.
    #[error("the signed certificate does not match the put of file {file}: its {field} differs")]
    CertificateMismatch {
        /// The file the put stored.
        file: FileId,
        /// The first field that differs.
        field: &'static str,
    },
    /// The signed certificate handed to [`finish_put`] does not verify.
    #[error("the signed certificate of file {file} does not verify")]
    CertificateInvalid {
        /// The file.
        file: FileId,
        /// Why.
        #[source]
        source: VerifyError,
    },
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
/// [`put_unsigned`], then the certificate signed with `owner`, then [`finish_put`]: a
/// caller holding the owner's key in-process does all three at once. On error,
/// fragments already stored stay where they are (unreferenced until a certificate
/// names them).
pub fn put<S: FragmentStore + ?Sized>(
    reader: impl Read,
    name: &[u8],
    owner: &KeyPair,
    options: &PutOptions,
    store: &S,
) -> Result<PutReceipt, PutError> {
    let file = FileIdentity::new(name, options.name_salt, owner.public_key());
    let unsigned = put_unsigned(reader, &file, options, store)?;
    let certificate = Signed::sign(owner, unsigned.certificate.clone()).map_err(PutError::Sign)?;
    finish_put(unsigned, certificate, store)
}

/// Stores what `reader` yields as `file`, one segment at a time: every block, then the
/// manifest block. Returns the certificate body for the owner to sign (it covers the
/// manifest hash, so it can only be made now) and hand to [`finish_put`].
///
/// This is the half of a put that needs no owner key: a node runs it under the
/// owner's [`UploadGrant`] (give `FileIdentity::from(&grant)`), and the owner signs
/// the result. `options.name_salt` is not used: `file` carries the salt.
///
/// A block whose fragments the store cannot place at its placement key
/// ([`FragmentStore::is_placement_refusal`]) is retried at the keys of salt 1, 2, ...
/// up to `options.max_file_diversions`, and the salt that worked is recorded in the
/// manifest (for the manifest block: in the certificate).
pub fn put_unsigned<S: FragmentStore + ?Sized>(
    mut reader: impl Read,
    file: &FileIdentity,
    options: &PutOptions,
    store: &S,
) -> Result<UnsignedPut, PutError> {
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
    let mut diverted_blocks = 0u64;
    let max_diversions = options.max_file_diversions;
    // Blocks started and not yet confirmed, oldest first; at most `window` of them.
    let window = store.blocks_in_flight().max(1);
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(window);
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
        // Bounded: each pass removes one block from a queue that holds at most `window`.
        while in_flight.len() >= window {
            if let Some(oldest) = in_flight.pop_front() {
                diverted_blocks += finish_block(store, oldest, &mut blocks, max_diversions)?;
            }
        }
        let (salt, pending) = start_block(store, &encoded, max_diversions)?;
        fragments_stored += encoded.fragment_hashes().len() as u64;
        let entry = BlockEntry {
            hash: encoded.block_hash(),
            salt,
            fragments: encoded.fragment_hashes().to_vec(),
        };
        tracing::trace!(position, block = %entry.hash, salt, len = read, "started block");
        in_flight.push_back(InFlight {
            position: blocks.len(),
            block: entry.hash,
            fragments: entry.fragments.len(),
            salt,
            pending,
        });
        blocks.push(entry);
        file_size += read as u64;
        buffer = encoded.into_buffer();
        if read < segment {
            break;
        }
    }
    drop(buffer);
    // Every block is confirmed (at its final salt) before the manifest lists it.
    while let Some(oldest) = in_flight.pop_front() {
        diverted_blocks += finish_block(store, oldest, &mut blocks, max_diversions)?;
    }

    let manifest = Manifest {
        file_size,
        segment_size,
        params,
        blocks,
    };
    let encoded_manifest = manifest.encode().map_err(PutError::Manifest)?;
    let manifest_hash = encoded_manifest.hash;
    let manifest_block = codec
        .encode_in_place(encoded_manifest.bytes)
        .map_err(|source| PutError::Encode {
            position: manifest.blocks.len() as u64,
            source,
        })?;
    // The manifest block's hash is the manifest hash, so its placement key is
    // `manifest_placement_key(manifest_hash, salt)`, as get computes it.
    let manifest_salt = store_block(store, &manifest_block, options.max_file_diversions)?;
    fragments_stored += manifest_block.fragment_hashes().len() as u64;
    diverted_blocks += u64::from(manifest_salt > 0);

    let certificate = FileCertificate {
        file_id: file.file_id,
        name_digest: file.name_digest,
        name_salt: file.name_salt,
        manifest_hash,
        manifest_salt,
        manifest_fragments: manifest_block.fragment_hashes().to_vec(),
        size: file_size,
        k: params.k(),
        m: params.m(),
        created_at: options.created_at,
        expires_at: options.expires_at,
        owner: file.owner,
    };
    tracing::debug!(
        file = %file.file_id,
        size = file_size,
        blocks = manifest.blocks.len(),
        diverted_blocks,
        "put stored every block; certificate to sign"
    );
    Ok(UnsignedPut {
        certificate,
        manifest,
        manifest_hash,
        fragments_stored,
        diverted_blocks,
    })
}

/// Completes a put: checks that `signed` is a valid signature over exactly the
/// certificate [`put_unsigned`] made, and stores it.
pub fn finish_put<S: FragmentStore + ?Sized>(
    unsigned: UnsignedPut,
    signed: Signed<FileCertificate>,
    store: &S,
) -> Result<PutReceipt, PutError> {
    let file = unsigned.certificate.file_id;
    if let Some(field) = first_difference(&unsigned.certificate, &signed.body) {
        return Err(PutError::CertificateMismatch { file, field });
    }
    signed
        .verify()
        .map_err(|source| PutError::CertificateInvalid { file, source })?;
    store
        .put_certificate(&signed)
        .map_err(|error| PutError::StoreCertificate {
            file,
            source: Box::new(error),
        })?;
    tracing::debug!(%file, size = signed.body.size, "put done");
    Ok(PutReceipt {
        manifest: unsigned.manifest,
        manifest_hash: unsigned.manifest_hash,
        certificate: signed,
        reference: Reference::File(file),
        fragments_stored: unsigned.fragments_stored,
        diverted_blocks: unsigned.diverted_blocks,
    })
}

/// The name of the first field in which `signed` differs from `made`, if any.
fn first_difference(made: &FileCertificate, signed: &FileCertificate) -> Option<&'static str> {
    // Destructured so that a field added to the certificate must be added here too.
    let FileCertificate {
        file_id,
        name_digest,
        name_salt,
        manifest_hash,
        manifest_salt,
        manifest_fragments,
        size,
        k,
        m,
        created_at,
        expires_at,
        owner,
    } = made;
    [
        (*file_id != signed.file_id, "file_id"),
        (*name_digest != signed.name_digest, "name_digest"),
        (*name_salt != signed.name_salt, "name_salt"),
        (*manifest_hash != signed.manifest_hash, "manifest_hash"),
        (*manifest_salt != signed.manifest_salt, "manifest_salt"),
        (
            *manifest_fragments != signed.manifest_fragments,
            "manifest_fragments",
        ),
        (*size != signed.size, "size"),
        (*k != signed.k, "k"),
        (*m != signed.m, "m"),
        (*created_at != signed.created_at, "created_at"),
        (*expires_at != signed.expires_at, "expires_at"),
        (*owner != signed.owner, "owner"),
    ]
    .into_iter()
    .find_map(|(differs, field)| differs.then_some(field))
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

/// A block the store has started storing and not yet confirmed.
struct InFlight {
    /// Its position in the file (and in the manifest's list).
    position: usize,
    /// Its hash.
    block: BlockHash,
    /// How many fragments it has.
    fragments: usize,
    /// The salt of the key it was started at.
    salt: u64,
    /// The store's token for it.
    pending: PendingBlock,
}

/// Starts storing the `n` fragments of `encoded` at the key of salt 0, or, while the
/// store refuses at once to place them there, at the keys of salt 1, 2, ... up to
/// `max_diversions` (the buffer is still there to offer again). Returns the salt it
/// was started at and the store's token.
fn start_block<S: FragmentStore + ?Sized>(
    store: &S,
    encoded: &EncodedBlock,
    max_diversions: u64,
) -> Result<(u64, PendingBlock), PutError> {
    let block = encoded.block_hash();
    let fragments: Vec<(FragmentRef<'_>, FragmentHash)> = encoded
        .fragments()
        .zip(encoded.fragment_hashes().iter().copied())
        .collect();
    let mut salt = 0u64;
    // Bounded: the salt grows by one per refusal and stops at `max_diversions`.
    loop {
        let key = PlacementKey::for_block(&block, salt);
        let error = match store.start_block(&key, &fragments) {
            Ok(pending) => return Ok((salt, pending)),
            Err(error) => error,
        };
        divert_or_fail(
            store,
            error,
            block,
            fragments.len(),
            key,
            salt,
            max_diversions,
        )?;
        salt += 1;
    }
}

/// Waits for the store to confirm `flight`. A placement refused late is retried with
/// [`FragmentStore::restart_block`] (the store's own copy of the fragments) at the
/// next salts up to `max_diversions`, and the block's manifest entry takes the salt
/// that worked. Returns 1 if the block ended up diverted (salt > 0), else 0.
fn finish_block<S: FragmentStore + ?Sized>(
    store: &S,
    flight: InFlight,
    blocks: &mut [BlockEntry],
    max_diversions: u64,
) -> Result<u64, PutError> {
    let InFlight {
        position,
        block,
        fragments,
        mut salt,
        mut pending,
    } = flight;
    // Whether `pending` is placing the block at `salt` (false: it is to be restarted).
    let mut started = true;
    // Bounded: a restart is followed by a finish, and each refusal raises the salt by
    // one until `max_diversions`.
    loop {
        let key = PlacementKey::for_block(&block, salt);
        let result = if started {
            store.finish_block(pending)
        } else {
            match store.restart_block(pending, &key) {
                Some(Ok(restarted)) => {
                    pending = restarted;
                    started = true;
                    continue;
                }
                Some(Err(error)) => Err(error),
                None => {
                    return Err(PutError::CannotRestart {
                        block,
                        fragments,
                        key,
                    });
                }
            }
        };
        let error = match result {
            Ok(()) => break,
            Err(error) => error,
        };
        divert_or_fail(store, error, block, fragments, key, salt, max_diversions)?;
        salt += 1;
        started = false;
    }
    if let Some(entry) = blocks.get_mut(position) {
        entry.salt = salt;
    }
    tracing::trace!(position, %block, salt, "block confirmed");
    Ok(u64::from(salt > 0))
}

/// What to do after the store's `error` storing `block` at `key` (salt `salt`): `Ok`
/// to divert to the next salt, or the put's error (not a placement refusal, or no
/// diversion left).
fn divert_or_fail<S: FragmentStore + ?Sized>(
    store: &S,
    error: S::Error,
    block: BlockHash,
    fragments: usize,
    key: PlacementKey,
    salt: u64,
    max_diversions: u64,
) -> Result<(), PutError> {
    if !store.is_placement_refusal(&error) {
        return Err(PutError::StoreBlock {
            block,
            fragments,
            key,
            source: Box::new(error),
        });
    }
    if salt >= max_diversions {
        return Err(PutError::CannotPlace {
            block,
            attempts: salt + 1,
            source: Box::new(error),
        });
    }
    tracing::debug!(%block, salt, %error, "placement refused; diverting the block");
    Ok(())
}

/// Stores the `n` fragments of `encoded` as one group at the key of salt 0, or, while
/// the store refuses to place them there, at the keys of salt 1, 2, ... up to
/// `max_diversions`. Returns the salt they were stored under.
fn store_block<S: FragmentStore + ?Sized>(
    store: &S,
    encoded: &EncodedBlock,
    max_diversions: u64,
) -> Result<u64, PutError> {
    let block = encoded.block_hash();
    let fragments: Vec<(FragmentRef<'_>, FragmentHash)> = encoded
        .fragments()
        .zip(encoded.fragment_hashes().iter().copied())
        .collect();
    let mut salt = 0u64;
    // Bounded: the salt grows by one per refusal and stops at `max_diversions`.
    loop {
        let key = PlacementKey::for_block(&block, salt);
        let error = match store.put_block_fragments(&key, &fragments) {
            Ok(()) => return Ok(salt),
            Err(error) => error,
        };
        divert_or_fail(
            store,
            error,
            block,
            fragments.len(),
            key,
            salt,
            max_diversions,
        )?;
        salt += 1;
    }
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
    /// When set, only these bytes are written (clamped to the file), and only the
    /// blocks that overlap them are fetched.
    pub range: Option<ByteRange>,
}

impl GetOptions {
    /// Options judging expiry at `now`, accepting any owner, for the whole file.
    pub fn new(now: u64) -> GetOptions {
        GetOptions {
            now,
            expected_owner: None,
            range: None,
        }
    }

    /// These options for the bytes of `range` only.
    pub fn with_range(mut self, range: ByteRange) -> GetOptions {
        self.range = Some(range);
        self
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

/// A store's answer for one fragment as an offer for the decoder.
fn to_offer<S: FragmentStore + ?Sized>(
    store: &S,
    answer: Option<Result<Option<Fragment>, S::Error>>,
) -> Offer {
    match answer {
        Some(Ok(Some(fragment))) => Offer::Fragment(fragment),
        Some(Ok(None)) => Offer::Missing,
        Some(Err(error)) if store.is_corruption(&error) => {
            Offer::ReportedCorrupt(error.to_string())
        }
        Some(Err(error)) => Offer::Unavailable(error.to_string()),
        None => Offer::Unavailable("the store gave no answer for this fragment".into()),
    }
}

/// Asks the store for `indexes` at `key` in one call, as offers in the same order.
fn fetch_batch<S: FragmentStore + ?Sized>(
    store: &S,
    key: &PlacementKey,
    indexes: &[u16],
) -> Vec<(u16, Offer)> {
    let mut answers = store.get_block_fragments(key, indexes).into_iter();
    // One answer per index is the contract; a short answer counts the rest unavailable.
    indexes
        .iter()
        .map(|&index| (index, to_offer(store, answers.next())))
        .collect()
}

/// The offers for the block at `key`, for [`Codec::decode`]: the first `k` indexes of
/// the codec's fetch order in one call to the store (so a network store fetches them
/// in parallel), and only if the decoder pulls past them (fewer than `k` verified)
/// the rest in one more call. The decoder stops pulling at the `k`-th good fragment,
/// so the stats count only what it examined, as with one-by-one fetches.
fn block_offers<'s, S: FragmentStore + ?Sized>(
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
    let offers = block_offers(store, &codec, manifest_key);
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
        let offers = block_offers(store, &codec, key);
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

/// The errors [`MemoryFragments`] returns when a hook tells it to fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectedFailure {
    /// A fragment set to fail with [`MemoryFragments::fail`] was read.
    #[error("injected failure reading fragment {index} at {key}")]
    Read {
        /// The placement key.
        key: PlacementKey,
        /// The fragment index.
        index: u16,
    },
    /// Fragments were put at a key set with [`MemoryFragments::refuse_placement`]: a
    /// placement refusal, as when the nodes around a key are full.
    #[error("injected refusal: no room to place the fragments of the block at {key}")]
    PlacementRefused {
        /// The placement key.
        key: PlacementKey,
    },
    /// Fragments were put at a key set with [`MemoryFragments::fail_puts`]: any other
    /// store failure (not a placement refusal).
    #[error("injected failure storing a fragment at {key}")]
    Write {
        /// The placement key.
        key: PlacementKey,
    },
    /// A deferring store ([`MemoryFragments::deferring`]) was asked to finish or
    /// restart a block it does not have in flight.
    #[error("no block {0:?} in flight")]
    NotInFlight(PendingBlock),
    /// A deferring store was asked to store a group at once while blocks were still
    /// unconfirmed: the pipeline must finish every block before the manifest block.
    #[error("a group stored at {key} while {in_flight} block(s) were unconfirmed")]
    OutOfOrder {
        /// The placement key of the group.
        key: PlacementKey,
        /// Blocks started and not finished.
        in_flight: usize,
    },
}

/// What a deferring [`MemoryFragments`] holds of the blocks it has not confirmed.
#[derive(Default)]
struct Deferred {
    /// The put window it advertises.
    window: usize,
    /// The next token.
    next: u64,
    /// Blocks started and not finished: their key (the latest restart's) and their own
    /// copy of the fragments.
    in_flight: HashMap<u64, (PlacementKey, Vec<Fragment>)>,
    /// The most blocks in flight at once.
    peak: usize,
    /// Blocks restarted at another key.
    restarts: u64,
}

#[derive(Default)]
struct MemoryInner {
    fragments: HashMap<(PlacementKey, u16), Fragment>,
    failing: HashMap<(PlacementKey, u16), ()>,
    refusing_placement: HashSet<PlacementKey>,
    failing_puts: HashSet<PlacementKey>,
    certificates: HashMap<FileId, Signed<FileCertificate>>,
    deferred: Option<Deferred>,
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

    /// An empty store with a put window of `window` blocks, like the network's: a
    /// started block ([`FragmentStore::start_block`]) is copied and held unconfirmed
    /// until finished, and only then stored, so placement refusals
    /// ([`Self::refuse_placement`]) and failures ([`Self::fail_puts`]) are reported
    /// late, by [`FragmentStore::finish_block`]. A refused block can be restarted at
    /// another key. A group stored at once ([`FragmentStore::put_block_fragments`])
    /// while blocks are unconfirmed is refused ([`InjectedFailure::OutOfOrder`]).
    pub fn deferring(window: usize) -> MemoryFragments {
        let store = MemoryFragments::default();
        store.lock().deferred = Some(Deferred {
            window,
            ..Deferred::default()
        });
        store
    }

    /// For a deferring store: the most blocks that were in flight at once.
    pub fn peak_blocks_in_flight(&self) -> usize {
        self.lock().deferred.as_ref().map_or(0, |d| d.peak)
    }

    /// For a deferring store: blocks started and not finished now.
    pub fn blocks_unconfirmed(&self) -> usize {
        self.lock()
            .deferred
            .as_ref()
            .map_or(0, |d| d.in_flight.len())
    }

    /// For a deferring store: blocks restarted at another key after a late refusal.
    pub fn blocks_restarted(&self) -> u64 {
        self.lock().deferred.as_ref().map_or(0, |d| d.restarts)
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

    /// Makes reads of fragment `index` at `key` fail with [`InjectedFailure::Read`].
    pub fn fail(&self, key: &PlacementKey, index: u16) {
        self.lock().failing.insert((*key, index), ());
    }

    /// Makes puts at `key` fail with [`InjectedFailure::PlacementRefused`], which
    /// [`FragmentStore::is_placement_refusal`] says is one: [`put`] then diverts.
    pub fn refuse_placement(&self, key: &PlacementKey) {
        self.lock().refusing_placement.insert(*key);
    }

    /// Makes puts at `key` fail with [`InjectedFailure::Write`], which is not a
    /// placement refusal.
    pub fn fail_puts(&self, key: &PlacementKey) {
        self.lock().failing_puts.insert(*key);
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
        let mut inner = self.lock();
        if inner.refusing_placement.contains(key) {
            return Err(InjectedFailure::PlacementRefused { key: *key });
        }
        if inner.failing_puts.contains(key) {
            return Err(InjectedFailure::Write { key: *key });
        }
        inner
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
            return Err(InjectedFailure::Read { key: *key, index });
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

    fn is_placement_refusal(&self, error: &InjectedFailure) -> bool {
        matches!(error, InjectedFailure::PlacementRefused { .. })
    }

    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), InjectedFailure> {
        let in_flight = self
            .lock()
            .deferred
            .as_ref()
            .map_or(0, |d| d.in_flight.len());
        if in_flight > 0 {
            return Err(InjectedFailure::OutOfOrder {
                key: *key,
                in_flight,
            });
        }
        fragments
            .iter()
            .try_for_each(|(fragment, hash)| self.put_fragment(key, *fragment, hash))
    }

    fn blocks_in_flight(&self) -> usize {
        self.lock().deferred.as_ref().map_or(1, |d| d.window)
    }

    fn start_block(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<PendingBlock, InjectedFailure> {
        let mut inner = self.lock();
        let Some(deferred) = inner.deferred.as_mut() else {
            drop(inner);
            self.put_block_fragments(key, fragments)?;
            return Ok(PendingBlock(0));
        };
        let copy = fragments.iter().map(|(f, _)| f.to_owned()).collect();
        let token = deferred.next;
        deferred.next += 1;
        deferred.in_flight.insert(token, (*key, copy));
        deferred.peak = deferred.peak.max(deferred.in_flight.len());
        Ok(PendingBlock(token))
    }

    fn finish_block(&self, pending: PendingBlock) -> Result<(), InjectedFailure> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(deferred) = inner.deferred.as_mut() else {
            return Ok(());
        };
        let Some((key, _)) = deferred.in_flight.get(&pending.0) else {
            return Err(InjectedFailure::NotInFlight(pending));
        };
        let key = *key;
        if inner.refusing_placement.contains(&key) {
            // Kept for a restart elsewhere.
            return Err(InjectedFailure::PlacementRefused { key });
        }
        let Some((_, fragments)) = deferred.in_flight.remove(&pending.0) else {
            return Err(InjectedFailure::NotInFlight(pending));
        };
        if inner.failing_puts.contains(&key) {
            return Err(InjectedFailure::Write { key });
        }
        for fragment in fragments {
            inner.fragments.insert((key, fragment.index), fragment);
        }
        Ok(())
    }

    fn restart_block(
        &self,
        pending: PendingBlock,
        new_key: &PlacementKey,
    ) -> Option<Result<PendingBlock, InjectedFailure>> {
        let mut inner = self.lock();
        let deferred = inner.deferred.as_mut()?;
        Some(match deferred.in_flight.get_mut(&pending.0) {
            Some((key, _)) => {
                *key = *new_key;
                deferred.restarts += 1;
                Ok(pending)
            }
            None => Err(InjectedFailure::NotInFlight(pending)),
        })
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
            range: None,
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

    /// The placement key of the single block `input` makes (it must fit in one segment).
    fn single_block_key(input: &[u8], salt: u64) -> PlacementKey {
        let codec = Codec::new(options().params).unwrap();
        PlacementKey::for_block(&codec.encode(input).unwrap().block_hash(), salt)
    }

    #[test]
    fn a_split_put_signed_later_is_the_same_file_as_a_put() {
        let owner = KeyPair::generate();
        let input = data(2 * 4096 + 7);
        let whole = put(
            &input[..],
            b"s",
            &owner,
            &options(),
            &MemoryFragments::new(),
        )
        .unwrap();

        let store = MemoryFragments::new();
        let grant = UploadGrant::new(b"s", 0, owner.public_key(), 900, 600);
        let unsigned =
            put_unsigned(&input[..], &FileIdentity::from(&grant), &options(), &store).unwrap();
        assert_eq!(
            store.get_certificate(&grant.file_id).unwrap(),
            None,
            "no certificate before the owner signs"
        );
        assert_eq!(unsigned.certificate, whole.certificate.body);
        let signed = Signed::sign(&owner, unsigned.certificate.clone()).unwrap();
        let receipt = finish_put(unsigned, signed, &store).unwrap();
        assert_eq!(receipt.file_id(), grant.file_id);
        assert_eq!(receipt.certificate, whole.certificate);
        assert_eq!(receipt.fragments_stored, whole.fragments_stored);
        assert_eq!(receipt.diverted_blocks, 0);
        let (out, _) = round_trip(&store, &receipt).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn finish_put_refuses_a_certificate_that_is_not_the_puts() {
        let owner = KeyPair::generate();
        let store = MemoryFragments::new();
        let file = FileIdentity::new(b"f", 0, owner.public_key());
        let unsigned = put_unsigned(&data(5000)[..], &file, &options(), &store).unwrap();

        let mut body = unsigned.certificate.clone();
        body.manifest_salt += 1;
        let other = Signed::sign(&owner, body).unwrap();
        let err = finish_put(unsigned.clone(), other, &store).unwrap_err();
        assert!(
            matches!(
                err,
                PutError::CertificateMismatch {
                    field: "manifest_salt",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("manifest_salt differs"), "{err}");

        // The right body signed by someone else.
        let forged = Signed::sign(&KeyPair::generate(), unsigned.certificate.clone()).unwrap();
        let err = finish_put(unsigned.clone(), forged, &store).unwrap_err();
        assert!(
            matches!(
                err,
                PutError::CertificateInvalid {
                    source: VerifyError::WrongKey { .. },
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(store.get_certificate(&file.file_id).unwrap(), None);

        let signed = Signed::sign(&owner, unsigned.certificate.clone()).unwrap();
        assert!(finish_put(unsigned, signed, &store).is_ok());
    }

    #[test]
    fn a_refused_block_is_diverted_and_reads_back() {
        let store = MemoryFragments::new();
        let input = data(3000);
        store.refuse_placement(&single_block_key(&input, 0));
        let receipt = put(&input[..], b"d", &KeyPair::generate(), &options(), &store).unwrap();
        assert_eq!(receipt.manifest.blocks[0].salt, 1);
        assert_eq!(receipt.diverted_blocks, 1);
        assert_eq!(
            receipt.manifest.blocks[0].placement_key(),
            single_block_key(&input, 1)
        );
        let (out, stats) = round_trip(&store, &receipt).unwrap();
        assert_eq!(out, input);
        assert_eq!(stats.skipped_total(), 0, "get went to the diverted key");
    }

    #[test]
    fn a_refused_manifest_block_is_diverted_and_certified_with_its_salt() {
        let owner = KeyPair::from_secret_bytes(&[11; 32]);
        let input = data(2 * 4096);
        // Puts are deterministic: a first put tells where the manifest block goes.
        let first = put(
            &input[..],
            b"m",
            &owner,
            &options(),
            &MemoryFragments::new(),
        )
        .unwrap();
        let store = MemoryFragments::new();
        for salt in 0..2 {
            store.refuse_placement(&manifest_placement_key(&first.manifest_hash, salt));
        }
        let receipt = put(&input[..], b"m", &owner, &options(), &store).unwrap();
        assert_eq!(receipt.certificate.body.manifest_salt, 2);
        assert_eq!(receipt.diverted_blocks, 1);
        assert!(receipt.manifest.blocks.iter().all(|block| block.salt == 0));
        let (out, _) = round_trip(&store, &receipt).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn a_block_refused_at_every_salt_cannot_be_placed() {
        let store = MemoryFragments::new();
        let input = data(3000);
        let mut options = options();
        options.max_file_diversions = 2;
        for salt in 0..=2 {
            store.refuse_placement(&single_block_key(&input, salt));
        }
        let err = put(&input[..], b"c", &KeyPair::generate(), &options, &store).unwrap_err();
        let PutError::CannotPlace {
            attempts, source, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(*attempts, 3);
        assert!(source.to_string().contains("no room"), "{source}");
        let text = err.to_string();
        assert!(
            text.contains("refused at 3 placement keys (salts 0 to 2)") && text.contains("no room"),
            "{text}"
        );
        assert_eq!(store.fragment_count(), 0);

        // One more diversion allowed: the fourth key is free.
        options.max_file_diversions = 3;
        let receipt = put(&input[..], b"c", &KeyPair::generate(), &options, &store).unwrap();
        assert_eq!(receipt.manifest.blocks[0].salt, 3);

        // Diversion off: the first refusal is final.
        options.max_file_diversions = 0;
        let err = put(&input[..], b"c", &KeyPair::generate(), &options, &store).unwrap_err();
        assert!(
            matches!(err, PutError::CannotPlace { attempts: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_windowed_store_has_its_window_in_flight_and_confirms_all_before_the_manifest() {
        let input = data(10 * 4096 + 5);
        let owner = KeyPair::generate();
        let synchronous = put(
            &input[..],
            b"w",
            &owner,
            &options(),
            &MemoryFragments::new(),
        )
        .unwrap();
        // The deferring store refuses the manifest group while any block is unconfirmed.
        let store = MemoryFragments::deferring(3);
        let receipt = put(&input[..], b"w", &owner, &options(), &store).unwrap();
        assert_eq!(store.peak_blocks_in_flight(), 3);
        assert_eq!(store.blocks_unconfirmed(), 0);
        assert_eq!(receipt.manifest.blocks.len(), 11);
        assert_eq!(receipt.fragments_stored, 12 * 6);
        assert_eq!(store.fragment_count(), 12 * 6);
        assert_eq!(
            receipt.manifest_hash, synchronous.manifest_hash,
            "the same file as a put one block at a time"
        );
        let (out, stats) = round_trip(&store, &receipt).unwrap();
        assert_eq!(out, input);
        assert_eq!(stats.skipped_total(), 0);
    }

    #[test]
    fn a_block_refused_late_is_restarted_from_the_stores_copy_and_reads_back() {
        let store = MemoryFragments::deferring(4);
        let input = data(6 * 4096);
        let second = &input[4096..2 * 4096];
        // Block 1 is refused at salts 0 and 1 only when it is finished: by then the
        // pipeline has read blocks 2 to 4 over its buffer.
        store.refuse_placement(&single_block_key(second, 0));
        store.refuse_placement(&single_block_key(second, 1));
        let receipt = put(&input[..], b"l", &KeyPair::generate(), &options(), &store).unwrap();
        let salts: Vec<u64> = receipt.manifest.blocks.iter().map(|b| b.salt).collect();
        assert_eq!(salts, [0, 2, 0, 0, 0, 0]);
        assert_eq!(receipt.diverted_blocks, 1);
        assert_eq!(store.blocks_restarted(), 2);
        assert_eq!(
            receipt.manifest.blocks[1].placement_key(),
            single_block_key(second, 2)
        );
        assert_eq!(store.fragment_count(), 7 * 6, "nothing at the refused keys");
        let (out, stats) = round_trip(&store, &receipt).unwrap();
        assert_eq!(out, input);
        assert_eq!(stats.skipped_total(), 0, "get went to the diverted key");
    }

    #[test]
    fn a_block_refused_late_at_every_salt_cannot_be_placed() {
        let store = MemoryFragments::deferring(4);
        let input = data(3 * 4096);
        let last = &input[2 * 4096..];
        let mut options = options();
        options.max_file_diversions = 2;
        for salt in 0..=2 {
            store.refuse_placement(&single_block_key(last, salt));
        }
        let err = put(&input[..], b"c", &KeyPair::generate(), &options, &store).unwrap_err();
        let PutError::CannotPlace {
            block, attempts, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!(*attempts, 3);
        assert_eq!(PlacementKey::for_block(block, 0), single_block_key(last, 0));
        assert!(err.to_string().contains("no room"), "{err}");
        assert_eq!(store.fragment_count(), 2 * 6, "the first two blocks only");
        assert_eq!(store.blocks_restarted(), 2);
    }

    #[test]
    fn a_store_failure_reported_late_is_not_diverted() {
        let store = MemoryFragments::deferring(2);
        let input = data(3000);
        store.fail_puts(&single_block_key(&input, 0));
        let err = put(&input[..], b"e", &KeyPair::generate(), &options(), &store).unwrap_err();
        assert!(
            matches!(&err, PutError::StoreBlock { key, fragments: 6, .. } if *key == single_block_key(&input, 0)),
            "{err}"
        );
        assert_eq!(store.fragment_count(), 0);
        assert_eq!(store.blocks_restarted(), 0);
    }

    #[test]
    fn a_late_refusal_from_a_store_without_a_copy_fails_clearly() {
        /// Refuses every block when it is finished, and keeps nothing to restart.
        #[derive(Default)]
        struct Forgetful(MemoryFragments);
        impl FragmentStore for Forgetful {
            type Error = InjectedFailure;
            fn put_fragment(
                &self,
                key: &PlacementKey,
                fragment: FragmentRef<'_>,
                hash: &FragmentHash,
            ) -> Result<(), InjectedFailure> {
                self.0.put_fragment(key, fragment, hash)
            }
            fn get_fragment(
                &self,
                key: &PlacementKey,
                index: u16,
            ) -> Result<Option<Fragment>, InjectedFailure> {
                self.0.get_fragment(key, index)
            }
            fn put_certificate(
                &self,
                certificate: &Signed<FileCertificate>,
            ) -> Result<(), InjectedFailure> {
                self.0.put_certificate(certificate)
            }
            fn get_certificate(
                &self,
                file: &FileId,
            ) -> Result<Option<Signed<FileCertificate>>, InjectedFailure> {
                self.0.get_certificate(file)
            }
            fn is_placement_refusal(&self, error: &InjectedFailure) -> bool {
                self.0.is_placement_refusal(error)
            }
            fn finish_block(&self, _: PendingBlock) -> Result<(), InjectedFailure> {
                Err(InjectedFailure::PlacementRefused {
                    key: PlacementKey(Id::ZERO),
                })
            }
        }
        let input = data(3000);
        let err = put(
            &input[..],
            b"f",
            &KeyPair::generate(),
            &options(),
            &Forgetful::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, PutError::CannotRestart { key, .. } if *key == single_block_key(&input, 1)),
            "{err}"
        );
    }

    #[test]
    fn get_prefetches_the_next_block_before_fetching_this_one() {
        /// Records prefetches and batch fetches, in order.
        #[derive(Default)]
        struct Recorder {
            inner: MemoryFragments,
            events: Mutex<Vec<(&'static str, PlacementKey, Vec<u16>)>>,
        }
        impl FragmentStore for Recorder {
            type Error = InjectedFailure;
            fn put_fragment(
                &self,
                key: &PlacementKey,
                fragment: FragmentRef<'_>,
                hash: &FragmentHash,
            ) -> Result<(), InjectedFailure> {
                self.inner.put_fragment(key, fragment, hash)
            }
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
        let store = Recorder::default();
        let input = data(2 * 4096 + 1);
        let receipt = put(&input[..], b"p", &KeyPair::generate(), &options(), &store).unwrap();
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
    fn other_store_errors_are_not_retried_elsewhere() {
        let store = MemoryFragments::new();
        let input = data(3000);
        store.fail_puts(&single_block_key(&input, 0));
        let err = put(&input[..], b"e", &KeyPair::generate(), &options(), &store).unwrap_err();
        assert!(
            matches!(&err, PutError::StoreBlock { key, .. } if *key == single_block_key(&input, 0)),
            "{err}"
        );
        assert_eq!(store.fragment_count(), 0, "nothing stored at another salt");
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
        impl FragmentStore for Batches {
            type Error = InjectedFailure;
            fn put_fragment(
                &self,
                key: &PlacementKey,
                fragment: FragmentRef<'_>,
                hash: &FragmentHash,
            ) -> Result<(), InjectedFailure> {
                self.inner.put_fragment(key, fragment, hash)
            }
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

        let store = Batches::default();
        let input = data(3 * 4096 + 100);
        let receipt = put(&input[..], b"b", &KeyPair::generate(), &options(), &store).unwrap();
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
