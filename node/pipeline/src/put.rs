//! Put: a file (a stream of bytes) into a [`FragmentSink`], one segment at a time.
//!
//! Owns: [`put`], the split put ([`put_unsigned`] then [`finish_put`]) for callers that
//! do not hold the owner's key, their options ([`PutOptions`], [`FileIdentity`]),
//! results ([`UnsignedPut`], [`PutReceipt`]) and error ([`PutError`]), and file
//! diversion (a block the sink refuses to place goes to the key of the next salt).
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`], [`cairn_core::erasure`],
//! [`cairn_core::manifest`], and the sink only through [`FragmentSink`].

use std::collections::VecDeque;
use std::io::{self, Read};

use cairn_core::crypto::{FileCertificate, KeyPair, PublicKey, Signed, UploadGrant, VerifyError};
use cairn_core::erasure::{
    Codec, EncodeError, EncodedBlock, ErasureParams, FragmentRef, ParamsError,
};
use cairn_core::id::{BlockHash, FileId, FragmentHash, Id, ManifestHash, PlacementKey, Reference};
use cairn_core::manifest::{
    BlockEntry, DEFAULT_SEGMENT_SIZE, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, Manifest, ManifestError,
};

use crate::store::{BoxedStoreError, FailureKind, FragmentSink, PendingBlock, StoreFailure};

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
        source: BoxedStoreError,
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
        source: BoxedStoreError,
    },
    /// The store refused a block's placement after accepting it
    /// ([`FragmentSink::finish_block`]) but kept no copy to place it elsewhere
    /// ([`FragmentSink::restart_block`] answered `None`): a store that breaks the
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
        source: BoxedStoreError,
    },
}

/// Stores what `reader` yields as the file `name` of `owner`, one segment at a time.
///
/// [`put_unsigned`], then the certificate signed with `owner`, then [`finish_put`]: a
/// caller holding the owner's key in-process does all three at once. On error,
/// fragments already stored stay where they are (unreferenced until a certificate
/// names them).
pub fn put<S: FragmentSink + ?Sized>(
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
/// (an error of kind [`FailureKind::Refused`]) is retried at the keys of salt 1, 2, ...
/// up to `options.max_file_diversions`, and the salt that worked is recorded in the
/// manifest (for the manifest block: in the certificate).
pub fn put_unsigned<S: FragmentSink + ?Sized>(
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
pub fn finish_put<S: FragmentSink + ?Sized>(
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
fn start_block<S: FragmentSink + ?Sized>(
    store: &S,
    encoded: &EncodedBlock,
    max_diversions: u64,
) -> Result<(u64, PendingBlock), PutError> {
    place_block(encoded, max_diversions, |key, fragments| {
        store.start_block(key, fragments)
    })
}

/// Waits for the store to confirm `flight`. A placement refused late is retried with
/// [`FragmentSink::restart_block`] (the store's own copy of the fragments) at the
/// next salts up to `max_diversions`, and the block's manifest entry takes the salt
/// that worked. Returns 1 if the block ended up diverted (salt > 0), else 0.
fn finish_block<S: FragmentSink + ?Sized>(
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
        divert_or_fail(error, block, fragments, key, salt, max_diversions)?;
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
fn divert_or_fail<E: StoreFailure>(
    error: E,
    block: BlockHash,
    fragments: usize,
    key: PlacementKey,
    salt: u64,
    max_diversions: u64,
) -> Result<(), PutError> {
    if error.kind() != FailureKind::Refused {
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
fn store_block<S: FragmentSink + ?Sized>(
    store: &S,
    encoded: &EncodedBlock,
    max_diversions: u64,
) -> Result<u64, PutError> {
    let (salt, ()) = place_block(encoded, max_diversions, |key, fragments| {
        store.put_block_fragments(key, fragments)
    })?;
    Ok(salt)
}

/// Offers the `n` fragments of `encoded` to `offer` at the key of salt 0, then, while
/// the answer is a placement refusal, at the keys of salt 1, 2, ... up to
/// `max_diversions`. Returns the salt `offer` succeeded at and what it returned.
fn place_block<T, E: StoreFailure>(
    encoded: &EncodedBlock,
    max_diversions: u64,
    mut offer: impl FnMut(&PlacementKey, &[(FragmentRef<'_>, FragmentHash)]) -> Result<T, E>,
) -> Result<(u64, T), PutError> {
    let block = encoded.block_hash();
    let fragments: Vec<(FragmentRef<'_>, FragmentHash)> = encoded
        .fragments()
        .zip(encoded.fragment_hashes().iter().copied())
        .collect();
    let mut salt = 0u64;
    // Bounded: the salt grows by one per refusal and stops at `max_diversions`.
    loop {
        let key = PlacementKey::for_block(&block, salt);
        let error = match offer(&key, &fragments) {
            Ok(placed) => return Ok((salt, placed)),
            Err(error) => error,
        };
        divert_or_fail(error, block, fragments.len(), key, salt, max_diversions)?;
        salt += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::test_support::*;
    use crate::{FragmentSource, InjectedFailure, MemoryFragments};
    use cairn_core::manifest::manifest_placement_key;
    use std::sync::Mutex;

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
        impl FragmentSink for Groups {
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
            fn put_certificate(
                &self,
                certificate: &Signed<FileCertificate>,
            ) -> Result<(), InjectedFailure> {
                self.inner.put_certificate(certificate)
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
        impl FragmentSink for Forgetful {
            type Error = InjectedFailure;
            fn put_fragment(
                &self,
                key: &PlacementKey,
                fragment: FragmentRef<'_>,
                hash: &FragmentHash,
            ) -> Result<(), InjectedFailure> {
                self.0.put_fragment(key, fragment, hash)
            }
            fn put_certificate(
                &self,
                certificate: &Signed<FileCertificate>,
            ) -> Result<(), InjectedFailure> {
                self.0.put_certificate(certificate)
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
