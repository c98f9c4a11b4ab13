//! Keys, signatures and the certificates every stored byte is accountable to.
//!
//! Owns: [`KeyPair`] (an ed25519 secret key, kept in a mode-0600 file, never printed),
//! [`PublicKey`], the [`Signed`] wrapper and the four signed types of DESIGN.md:
//! [`FileCertificate`], [`StoreReceipt`], [`ReclaimCertificate`] and [`RootRecord`],
//! plus the [`UploadGrant`] an owner signs before a put (the certificate can only be
//! signed after it, since it covers the manifest hash), and the search for a node key
//! that solves the network's puzzle ([`KeyPair::generate_solving`]; the puzzle itself
//! is [`Difficulty`], in [`crate::id`]).
//!
//! A signature covers `DOMAIN ‖ 0x00 ‖ postcard(body)` where `DOMAIN` names the type
//! and its version, so a signature made for one type can never verify as another.
//! This module reads no clock: callers pass `now` where expiry matters.
//!
//! May use: [`crate::id`], `ed25519-dalek`, `postcard`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::id::{
    BelowDifficulty, Difficulty, FileId, FragmentHash, Id, ManifestHash, NodeId, OwnerKey,
    PlacementKey, VolumeKey,
};

/// The first line of a key file; the second is the secret key in base32.
const KEY_FILE_HEADER: &str = "cairn-secret-key-v1";
/// Version byte at the start of every encoded [`Signed`] value.
const SIGNED_ENCODING_VERSION: u8 = 1;
/// The largest encoded [`Signed`] value accepted: certificates are small, and a
/// decoder fed hostile bytes must not be led into large allocations.
pub const MAX_SIGNED_BYTES: usize = 64 * 1024;

/// An ed25519 public key: an owner's, a node's, or a volume's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The id of the node that holds this key: `SHA-256(public key)`.
    pub fn node_id(&self) -> NodeId {
        NodeId(Id::hash(&self.0))
    }

    /// Whether this key may be a node's in a network of `difficulty`: its node id
    /// solves the static puzzle ([`Difficulty`]).
    pub fn check_difficulty(&self, difficulty: Difficulty) -> Result<(), BelowDifficulty> {
        self.node_id().check_difficulty(difficulty)
    }

    /// This key as the name of a volume it signs roots for.
    pub fn volume_key(&self) -> VolumeKey {
        VolumeKey(Id(self.0))
    }

    /// This key as the owner whom stored bytes are accounted to.
    pub fn owner_key(&self) -> OwnerKey {
        OwnerKey(Id(self.0))
    }

    fn verifying_key(&self) -> Result<VerifyingKey, VerifyError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| VerifyError::Malformed {
            reason: format!("signer {self} is not a valid ed25519 public key"),
        })
    }
}

impl PublicKey {
    /// Checks a signature made by [`KeyPair::sign_domain`] with the same `domain` and
    /// `message` by the holder of this key.
    pub fn verify_domain(
        &self,
        domain: &[u8],
        message: &[u8],
        signature: &[u8; 64],
    ) -> Result<(), VerifyError> {
        self.verifying_key()?
            .verify_strict(
                &domain_message(domain, message),
                &Signature::from_bytes(signature),
            )
            .map_err(|_| VerifyError::BadDomainSignature {
                domain: String::from_utf8_lossy(domain).into_owned(),
                signer: *self,
            })
    }
}

/// `domain ‖ 0x00 ‖ message`, the bytes a domain-separated raw signature covers.
fn domain_message(domain: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 1 + message.len());
    out.extend_from_slice(domain);
    out.push(0);
    out.extend_from_slice(message);
    out
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Id(self.0), f)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({:?})", Id(self.0))
    }
}

/// An ed25519 key pair. The secret half never appears in `Debug` output or logs.
pub struct KeyPair {
    signing: SigningKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public_key())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Refusing to overwrite an existing key: losing a secret key loses what it owns.
    #[error("{path} already exists; refusing to overwrite a key (move it away first)")]
    AlreadyExists {
        /// The key file.
        path: PathBuf,
    },
    /// The file is readable or writable by other users.
    #[error(
        "key file {path} has mode {mode:04o}: it is accessible to other users, so it is \
         refused; run `chmod 600 {path}` if you trust it"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is not a cairn key file.
    #[error("{path} is not a cairn key file: {reason}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The operating system refused.
    #[error("{action} key file {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A key search ([`KeyPair::generate_solving`]) that gave up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "no key solving the {difficulty} puzzle after {attempts} attempts (about {} expected); \
     is the difficulty right?",
    difficulty.expected_attempts()
)]
pub struct PuzzleUnsolved {
    /// The difficulty asked for.
    pub difficulty: Difficulty,
    /// The attempts made.
    pub attempts: u64,
}

/// Attempts between two calls of a key search's progress callback.
pub const PUZZLE_PROGRESS_EVERY: u64 = 4096;

impl KeyPair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> KeyPair {
        KeyPair::from_secret_bytes(&random_bytes())
    }

    /// A fresh key pair whose node id solves the puzzle at `difficulty` (see
    /// [`Difficulty`]): tries secret keys until one does, at most `max_attempts` of
    /// them ([`Difficulty::attempt_bound`] is a sound bound), calling `progress` with
    /// the attempts made every [`PUZZLE_PROGRESS_EVERY`] attempts.
    ///
    /// The secrets tried are one 32-byte seed from the operating system with a counter
    /// XORed into its last 8 bytes: each is as unguessable as the seed (ed25519 hashes
    /// the secret before use, so related secrets give unrelated keys), and the search
    /// makes no system call per attempt. An attempt costs one key derivation and two
    /// SHA-256; docs/SECURITY.md has the measured times.
    pub fn generate_solving(
        difficulty: Difficulty,
        max_attempts: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<KeyPair, PuzzleUnsolved> {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        for attempt in 0..max_attempts {
            let mut secret = seed;
            for (byte, counter) in secret[24..].iter_mut().zip(attempt.to_le_bytes()) {
                *byte ^= counter;
            }
            let key = KeyPair::from_secret_bytes(&secret);
            if key.public_key().node_id().meets(difficulty) {
                return Ok(key);
            }
            let made = attempt + 1;
            if made % PUZZLE_PROGRESS_EVERY == 0 {
                progress(made);
            }
        }
        Err(PuzzleUnsolved {
            difficulty,
            attempts: max_attempts,
        })
    }

    /// The key pair whose secret key is `secret` (for tests and key files).
    pub fn from_secret_bytes(secret: &[u8; 32]) -> KeyPair {
        KeyPair {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` as it is: callers go through [`Signed::sign`], which adds the
    /// domain tag.
    fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Signs `domain ‖ 0x00 ‖ message`: for protocols that sign bytes rather than a
    /// [`Certificate`] (the transport's handshake). `domain` names the protocol and its
    /// version, so such a signature can never pass for one made in another domain or
    /// for a [`Signed`] value. Check it with [`PublicKey::verify_domain`].
    pub fn sign_domain(&self, domain: &[u8], message: &[u8]) -> [u8; 64] {
        self.sign_raw(&domain_message(domain, message))
    }

    /// Writes the key to a new file readable only by its owner (mode 0600).
    ///
    /// The file appears whole or not at all: it is written under a temporary name,
    /// synced, and linked into place, which also refuses to replace an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |action, source| KeyFileError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        if path.exists() {
            return Err(KeyFileError::AlreadyExists {
                path: path.to_owned(),
            });
        }
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp = PathBuf::from(temp_name);
        let text = format!("{KEY_FILE_HEADER}\n{}\n", Id(self.signing.to_bytes()));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })();
        let linked = written.and_then(|()| fs::hard_link(&temp, path));
        let _ = fs::remove_file(&temp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(KeyFileError::AlreadyExists {
                    path: path.to_owned(),
                })
            }
            Err(e) => Err(io("writing", e)),
        }
    }

    /// Reads a key written by [`KeyPair::save`], refusing files other users can access.
    pub fn load(path: &Path) -> Result<KeyPair, KeyFileError> {
        let io = |action, source| KeyFileError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let metadata = fs::metadata(path).map_err(|e| io("reading", e))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(|e| io("reading", e))?;
        let malformed = |reason: &str| KeyFileError::Malformed {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(malformed("the first line is not `cairn-secret-key-v1`"));
        }
        let secret: Id = lines
            .next()
            .ok_or_else(|| malformed("the secret key line is missing"))?
            .trim()
            .parse()
            .map_err(|e| malformed(&format!("the secret key line is not a key: {e}")))?;
        Ok(KeyPair::from_secret_bytes(&secret.0))
    }
}

/// The kinds of signed value, as tagged on the wire. Appended to, never reordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SignedKind {
    /// [`FileCertificate`].
    FileCertificate = 1,
    /// [`StoreReceipt`].
    StoreReceipt = 2,
    /// [`ReclaimCertificate`].
    ReclaimCertificate = 3,
    /// [`RootRecord`].
    RootRecord = 4,
    /// [`UploadGrant`].
    UploadGrant = 5,
    /// Never used on the wire: reserved for tests of domain separation.
    TestOnly = 255,
}

/// A type that can be signed: it names its domain and says who may sign it.
pub trait Certificate: Serialize + DeserializeOwned {
    /// The wire tag of this type.
    const KIND: SignedKind;
    /// The domain-separation tag mixed into every signature of this type.
    const DOMAIN: &'static [u8];

    /// Checks that `signer` is the key allowed to sign this value (the owner of a file,
    /// the node named in a receipt, the key of a volume).
    fn check_signer(&self, signer: &PublicKey) -> Result<(), VerifyError>;
}

/// Why a signed value was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature does not match the body and signer.
    #[error("bad signature on a {kind:?} signed by {signer}")]
    BadSignature {
        /// The type checked.
        kind: SignedKind,
        /// The claimed signer.
        signer: PublicKey,
    },
    /// A signature made with [`KeyPair::sign_domain`] does not match its domain,
    /// message and signer.
    #[error("bad signature in domain {domain:?} by {signer}")]
    BadDomainSignature {
        /// The domain tag checked (lossily as text).
        domain: String,
        /// The claimed signer.
        signer: PublicKey,
    },
    /// Validly signed, but by a key that may not sign this value.
    #[error("a {kind:?} must be signed by {expected}, but was signed by {found}")]
    WrongKey {
        /// The type checked.
        kind: SignedKind,
        /// Whose signature it must carry (a key, or a node id).
        expected: String,
        /// The key that signed.
        found: PublicKey,
    },
    /// A file certificate whose file id is not derived from its owner's key: an
    /// attempt to certify a file under someone else's name.
    #[error("file id {file_id} does not belong to owner {owner}")]
    ForeignFileId {
        /// The file id claimed.
        file_id: FileId,
        /// The owner who signed.
        owner: PublicKey,
    },
    /// The bytes hold another type of signed value.
    #[error("expected a signed {expected:?}, found a signed value of tag {found}")]
    WrongType {
        /// The type asked for.
        expected: SignedKind,
        /// The tag found.
        found: u8,
    },
    /// Not a well-formed signed value.
    #[error("malformed signed value: {reason}")]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The value was valid until `expired_at`.
    #[error("certificate expired at {expired_at} (unix seconds), now is {now}")]
    Expired {
        /// When it expired.
        expired_at: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// The value says it was issued at `issued_at`, more than [`GRANT_CLOCK_SKEW`]
    /// after `now`: a clock that far ahead, or a grant made to outlive its lifetime
    /// limit (its lifetime would count from a time that has not come).
    #[error(
        "issued at {issued_at} (unix seconds), more than {skew} s after now ({now})",
        skew = GRANT_CLOCK_SKEW
    )]
    IssuedInTheFuture {
        /// When it says it was issued.
        issued_at: u64,
        /// The time it was checked at.
        now: u64,
    },
}

/// How far ahead of a verifier's clock an [`UploadGrant`]'s `issued_at` may be: the
/// clock difference tolerated between an owner's machine and a storage node. Ten
/// minutes covers clocks that are not synchronised at all for a while (NTP keeps them
/// within a second); more would let a grant issued in the future stretch its life
/// past `PastConfig::max_grant_lifetime` by as much, since a node checks the lifetime
/// as `expires_at - issued_at`.
pub const GRANT_CLOCK_SKEW: u64 = 10 * 60;

/// A value of type `T` with the signature of `signer` over its canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    /// The signed value. Not to be trusted before [`Signed::verify`] returns it.
    pub body: T,
    /// Who signed.
    pub signer: PublicKey,
    /// ed25519 signature over `T::DOMAIN ‖ 0x00 ‖ postcard(body)`.
    pub signature: [u8; 64],
}

fn signing_message<T: Certificate>(body: &T) -> Result<Vec<u8>, VerifyError> {
    let mut message = Vec::with_capacity(T::DOMAIN.len() + 256);
    message.extend_from_slice(T::DOMAIN);
    message.push(0);
    postcard::to_extend(body, message).map_err(|e| VerifyError::Malformed {
        reason: format!("cannot encode the body: {e}"),
    })
}

impl<T: Certificate> Signed<T> {
    /// Signs `body` with `key`.
    ///
    /// Fails only if `body` cannot be encoded, which for the types here cannot happen
    /// short of running out of memory; the error is still returned, not hidden.
    pub fn sign(key: &KeyPair, body: T) -> Result<Signed<T>, VerifyError> {
        let signature = key.sign_raw(&signing_message(&body)?);
        Ok(Signed {
            body,
            signer: key.public_key(),
            signature,
        })
    }

    /// Checks the signature and that the signer may sign this value; returns the body.
    pub fn verify(&self) -> Result<&T, VerifyError> {
        self.body.check_signer(&self.signer)?;
        let key = self.signer.verifying_key()?;
        let message = signing_message(&self.body)?;
        key.verify_strict(&message, &Signature::from_bytes(&self.signature))
            .map_err(|_| VerifyError::BadSignature {
                kind: T::KIND,
                signer: self.signer,
            })?;
        Ok(&self.body)
    }

    /// The wire form: version, type tag, signer, signature, postcard body.
    pub fn to_bytes(&self) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::with_capacity(2 + 32 + 64 + 128);
        out.push(SIGNED_ENCODING_VERSION);
        out.push(T::KIND as u8);
        out.extend_from_slice(&self.signer.0);
        out.extend_from_slice(&self.signature);
        postcard::to_extend(&self.body, out).map_err(|e| VerifyError::Malformed {
            reason: format!("cannot encode the body: {e}"),
        })
    }

    /// Reads the wire form. Checks the structure and the type tag, not the signature:
    /// call [`Signed::verify`] before trusting the body.
    pub fn from_bytes(bytes: &[u8]) -> Result<Signed<T>, VerifyError> {
        let malformed = |reason: String| VerifyError::Malformed { reason };
        if bytes.len() > MAX_SIGNED_BYTES {
            return Err(malformed(format!(
                "{} bytes is over the limit of {MAX_SIGNED_BYTES}",
                bytes.len()
            )));
        }
        let [version, kind, rest @ ..] = bytes else {
            return Err(malformed(format!("only {} bytes", bytes.len())));
        };
        if *version != SIGNED_ENCODING_VERSION {
            return Err(malformed(format!("unknown encoding version {version}")));
        }
        if *kind != T::KIND as u8 {
            return Err(VerifyError::WrongType {
                expected: T::KIND,
                found: *kind,
            });
        }
        let (Some(signer), Some(signature)) = (rest.get(..32), rest.get(32..96)) else {
            return Err(malformed(
                "truncated before the end of the signature".into(),
            ));
        };
        let (body, trailing) = postcard::take_from_bytes::<T>(&rest[96..])
            .map_err(|e| malformed(format!("body does not decode: {e}")))?;
        if !trailing.is_empty() {
            return Err(malformed(format!(
                "{} trailing bytes after the body",
                trailing.len()
            )));
        }
        ensure_canonical(&body, &rest[96..])?;
        let mut signer_bytes = [0u8; 32];
        signer_bytes.copy_from_slice(signer);
        let mut signature_bytes = [0u8; 64];
        signature_bytes.copy_from_slice(signature);
        Ok(Signed {
            body,
            signer: PublicKey(signer_bytes),
            signature: signature_bytes,
        })
    }
}

/// Refuses a body whose bytes are not the one encoding of what they decode to (a
/// non-minimal varint, say). The signature covers the canonical re-encoding, so without
/// this anyone could turn one signed value into many byte strings that all verify: a
/// "rival" of the same root sequence made by a third party, or a second copy that
/// compares unequal. Re-encoding and comparing catches every such form, whatever the
/// field.
fn ensure_canonical<T: Serialize>(body: &T, encoded: &[u8]) -> Result<(), VerifyError> {
    let canonical = postcard::to_stdvec(body).map_err(|e| VerifyError::Malformed {
        reason: format!("cannot encode the body: {e}"),
    })?;
    if canonical == encoded {
        Ok(())
    } else {
        Err(VerifyError::Malformed {
            reason: "the body is not in its canonical encoding".into(),
        })
    }
}

fn require_key(
    kind: SignedKind,
    expected: &PublicKey,
    found: &PublicKey,
) -> Result<(), VerifyError> {
    if expected == found {
        Ok(())
    } else {
        Err(VerifyError::WrongKey {
            kind,
            expected: expected.to_string(),
            found: *found,
        })
    }
}

/// PAST's file certificate: the owner's statement of what a file is. Nodes store a
/// fragment only under a valid certificate that covers it (directly, for the
/// manifest's fragments, or through the manifest it names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCertificate {
    /// `FileId::from_name_digest(name_digest, owner, name_salt)`; checked on verify,
    /// so nobody but the owner can certify a file under the owner's file id.
    pub file_id: FileId,
    /// `SHA-256(name)`: lets a verifier recompute `file_id` without learning the name.
    pub name_digest: Id,
    /// The salt of `file_id`.
    pub name_salt: u64,
    /// Hash of the file's manifest.
    pub manifest_hash: ManifestHash,
    /// Placement salt of the manifest block.
    pub manifest_salt: u64,
    /// The n fragment hashes of the manifest block.
    pub manifest_fragments: Vec<FragmentHash>,
    /// File size in bytes.
    pub size: u64,
    /// Data fragments per block.
    pub k: u16,
    /// Parity fragments per block.
    pub m: u16,
    /// Creation time, unix seconds.
    pub created_at: u64,
    /// Expiry, unix seconds; `None` for none.
    pub expires_at: Option<u64>,
    /// The owner, who must be the signer.
    pub owner: PublicKey,
}

impl FileCertificate {
    /// Fails with [`VerifyError::Expired`] if the certificate has expired at `now`.
    pub fn check_time(&self, now: u64) -> Result<(), VerifyError> {
        match self.expires_at {
            Some(expired_at) if now >= expired_at => Err(VerifyError::Expired { expired_at, now }),
            _ => Ok(()),
        }
    }
}

impl Certificate for FileCertificate {
    const KIND: SignedKind = SignedKind::FileCertificate;
    const DOMAIN: &'static [u8] = b"cairn/file-certificate/v1";
    fn check_signer(&self, signer: &PublicKey) -> Result<(), VerifyError> {
        require_key(Self::KIND, &self.owner, signer)?;
        check_file_id(
            &self.file_id,
            &self.name_digest,
            self.name_salt,
            &self.owner,
        )
    }
}

/// An owner's short-lived permission to store fragments for one file, signed before
/// the put starts.
///
/// The file certificate covers the manifest hash, so it can only be signed once every
/// block is stored; a put streams (stdin, files of many GiB), so it cannot come first.
/// Nodes therefore store a put's fragments under a valid grant, and the certificate
/// arrives at the end. The expiry is required: a grant is an open cheque for storage
/// until then, so it must not outlive the upload it was made for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadGrant {
    /// `FileId::from_name_digest(name_digest, owner, name_salt)`; checked on verify,
    /// as for a [`FileCertificate`].
    pub file_id: FileId,
    /// `SHA-256(name)`.
    pub name_digest: Id,
    /// The salt of `file_id`.
    pub name_salt: u64,
    /// The owner, who must be the signer.
    pub owner: PublicKey,
    /// When issued, unix seconds.
    pub issued_at: u64,
    /// When the grant stops authorising stores, unix seconds.
    pub expires_at: u64,
}

impl UploadGrant {
    /// A grant for the file `name` (salt `name_salt`) of `owner`, issued at `issued_at`
    /// and valid for `lifetime_secs` (saturating at the end of time).
    pub fn new(
        name: &[u8],
        name_salt: u64,
        owner: PublicKey,
        issued_at: u64,
        lifetime_secs: u64,
    ) -> UploadGrant {
        let name_digest = Id::hash(name);
        UploadGrant {
            file_id: FileId::from_name_digest(&name_digest, &owner.0, name_salt),
            name_digest,
            name_salt,
            owner,
            issued_at,
            expires_at: issued_at.saturating_add(lifetime_secs),
        }
    }

    /// Fails with [`VerifyError::Expired`] if the grant has expired at `now`, and with
    /// [`VerifyError::IssuedInTheFuture`] if it was issued more than
    /// [`GRANT_CLOCK_SKEW`] after `now`.
    pub fn check_time(&self, now: u64) -> Result<(), VerifyError> {
        if now >= self.expires_at {
            Err(VerifyError::Expired {
                expired_at: self.expires_at,
                now,
            })
        } else if self.issued_at > now.saturating_add(GRANT_CLOCK_SKEW) {
            Err(VerifyError::IssuedInTheFuture {
                issued_at: self.issued_at,
                now,
            })
        } else {
            Ok(())
        }
    }
}

impl Certificate for UploadGrant {
    const KIND: SignedKind = SignedKind::UploadGrant;
    const DOMAIN: &'static [u8] = b"cairn/upload-grant/v1";
    fn check_signer(&self, signer: &PublicKey) -> Result<(), VerifyError> {
        require_key(Self::KIND, &self.owner, signer)?;
        check_file_id(
            &self.file_id,
            &self.name_digest,
            self.name_salt,
            &self.owner,
        )
    }
}

/// Fails with [`VerifyError::ForeignFileId`] unless `file_id` is derived from the
/// name digest, salt and owner key.
fn check_file_id(
    file_id: &FileId,
    name_digest: &Id,
    name_salt: u64,
    owner: &PublicKey,
) -> Result<(), VerifyError> {
    if FileId::from_name_digest(name_digest, &owner.0, name_salt) == *file_id {
        Ok(())
    } else {
        Err(VerifyError::ForeignFileId {
            file_id: *file_id,
            owner: *owner,
        })
    }
}

/// A storing node's statement "I hold fragment `index` of the block at
/// `placement_key`". Signed only after the fragment is durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReceipt {
    /// The storing node; must be the signer's node id.
    pub node: NodeId,
    /// The file the fragment was stored for.
    pub file_id: FileId,
    /// The block's placement key.
    pub placement_key: PlacementKey,
    /// The fragment's index in the block.
    pub index: u16,
    /// The fragment's hash.
    pub fragment_hash: FragmentHash,
    /// When it was stored, unix seconds.
    pub stored_at: u64,
}

impl Certificate for StoreReceipt {
    const KIND: SignedKind = SignedKind::StoreReceipt;
    const DOMAIN: &'static [u8] = b"cairn/store-receipt/v1";
    fn check_signer(&self, signer: &PublicKey) -> Result<(), VerifyError> {
        if signer.node_id() == self.node {
            Ok(())
        } else {
            Err(VerifyError::WrongKey {
                kind: Self::KIND,
                expected: format!("the key of node {}", self.node),
                found: *signer,
            })
        }
    }
}

/// The owner's order to free a file's storage.
///
/// It carries what `file_id` is derived from, so it verifies on its own: only the
/// owner of a file id can sign a reclaim of it, and a holder that keeps the reclaim as
/// a tombstone, or receives it without the file's certificate, needs nothing else to
/// believe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimCertificate {
    /// The file to reclaim: `FileId::from_name_digest(name_digest, owner, name_salt)`,
    /// checked on verify.
    pub file_id: FileId,
    /// `SHA-256(name)`, as in the file's certificate.
    pub name_digest: Id,
    /// The salt of `file_id`.
    pub name_salt: u64,
    /// The file's owner, who must be the signer.
    pub owner: PublicKey,
    /// When issued, unix seconds.
    pub issued_at: u64,
}

impl ReclaimCertificate {
    /// The reclaim of the file `certificate` describes, issued at `issued_at`.
    pub fn of(certificate: &FileCertificate, issued_at: u64) -> ReclaimCertificate {
        ReclaimCertificate {
            file_id: certificate.file_id,
            name_digest: certificate.name_digest,
            name_salt: certificate.name_salt,
            owner: certificate.owner,
            issued_at,
        }
    }
}

impl Certificate for ReclaimCertificate {
    const KIND: SignedKind = SignedKind::ReclaimCertificate;
    // v2: the file id's derivation became part of the signed body.
    const DOMAIN: &'static [u8] = b"cairn/reclaim-certificate/v2";
    fn check_signer(&self, signer: &PublicKey) -> Result<(), VerifyError> {
        require_key(Self::KIND, &self.owner, signer)?;
        check_file_id(
            &self.file_id,
            &self.name_digest,
            self.name_salt,
            &self.owner,
        )
    }
}

/// The mutable pointer of a volume: which file holds its root directory now.
///
/// The root directory is stored as an ordinary cairn file of the volume key's owner,
/// so the record names that file; readers fetch it like any other file and verify it
/// against its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    /// The volume; its key must be the signer.
    pub volume: VolumeKey,
    /// Increases with every update; replicas keep the highest valid one.
    pub sequence: u64,
    /// The file that holds the root directory (a file of the volume key's owner).
    pub root: FileId,
    /// When published, unix seconds.
    pub time: u64,
}

impl Certificate for RootRecord {
    const KIND: SignedKind = SignedKind::RootRecord;
    const DOMAIN: &'static [u8] = b"cairn/root-record/v1";
    fn check_signer(&self, signer: &PublicKey) -> Result<(), VerifyError> {
        require_key(Self::KIND, &PublicKey(self.volume.0.0), signer)
    }
}

/// 32 bytes from the operating system's random source: secrets and nonces a peer must
/// not guess.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn key(seed: u8) -> KeyPair {
        KeyPair::from_secret_bytes(&[seed; 32])
    }

    #[test]
    fn a_generated_node_key_solves_the_puzzle_it_was_asked_for() {
        let difficulty = Difficulty(8);
        let solved = KeyPair::generate_solving(difficulty, difficulty.attempt_bound(), |_| {})
            .expect("a key of 8 bits within 16384 attempts");
        let public = solved.public_key();
        assert!(public.node_id().puzzle_bits() >= 8);
        assert_eq!(public.check_difficulty(difficulty), Ok(()));
        // A fixed key of the tests is refused as soon as the puzzle is harder than
        // what its id happens to solve.
        let fixed = key(1).public_key();
        let bits = fixed.node_id().puzzle_bits();
        let harder = Difficulty(u8::try_from(bits + 1).expect("a small count"));
        let refused = fixed.check_difficulty(harder).unwrap_err();
        assert_eq!((refused.bits, refused.needed), (bits, harder));
    }

    #[test]
    fn a_key_search_gives_up_at_its_bound_and_reports_progress_on_the_way() {
        let mut seen = Vec::new();
        // 48 bits in 12288 attempts: odds of success about 4e-11.
        let bound = 3 * PUZZLE_PROGRESS_EVERY;
        let outcome = KeyPair::generate_solving(Difficulty(48), bound, |made| seen.push(made));
        assert_eq!(
            outcome.unwrap_err(),
            PuzzleUnsolved {
                difficulty: Difficulty(48),
                attempts: bound
            }
        );
        assert_eq!(seen, [4096, 8192, 12288]);
    }

    #[test]
    fn domain_signatures_verify_only_in_their_domain_for_their_signer() {
        let signer = key(1);
        let public = signer.public_key();
        let signature = signer.sign_domain(b"cairn/test/v1", b"hello");
        assert_eq!(
            public.verify_domain(b"cairn/test/v1", b"hello", &signature),
            Ok(())
        );
        // Another domain, another message, another signer, a flipped bit: all refused.
        assert!(matches!(
            public.verify_domain(b"cairn/test/v2", b"hello", &signature),
            Err(VerifyError::BadDomainSignature { .. })
        ));
        assert!(
            public
                .verify_domain(b"cairn/test/v1", b"hellO", &signature)
                .is_err()
        );
        assert!(
            key(2)
                .public_key()
                .verify_domain(b"cairn/test/v1", b"hello", &signature)
                .is_err()
        );
        let mut flipped = signature;
        flipped[5] ^= 1;
        assert!(
            public
                .verify_domain(b"cairn/test/v1", b"hello", &flipped)
                .is_err()
        );
        // The separator keeps the boundary between domain and message: moving a byte
        // across it changes what is signed.
        assert!(
            public
                .verify_domain(b"cairn/test/v1h", b"ello", &signature)
                .is_err()
        );
        // A domain signature over a certificate's signing bytes is not that certificate's
        // signature (the certificate's domain is part of what Signed<T> signs).
        let receipt = receipt(&signer);
        let genuine = Signed::sign(&signer, receipt.clone()).unwrap();
        let body = postcard::to_allocvec(&receipt).unwrap();
        let raw = signer.sign_domain(b"", &body);
        assert_ne!(raw, genuine.signature);
    }

    fn file_certificate(owner: &KeyPair) -> FileCertificate {
        FileCertificate {
            file_id: FileId::derive(b"notes.txt", &owner.public_key().0, 0),
            name_digest: Id::hash(b"notes.txt"),
            name_salt: 0,
            manifest_hash: ManifestHash(Id::hash(b"manifest")),
            manifest_salt: 0,
            manifest_fragments: (0..6u8).map(|i| FragmentHash(Id::hash(&[i]))).collect(),
            size: 12345,
            k: 4,
            m: 2,
            created_at: 1_700_000_000,
            expires_at: Some(1_800_000_000),
            owner: owner.public_key(),
        }
    }

    fn receipt(node: &KeyPair) -> StoreReceipt {
        StoreReceipt {
            node: node.public_key().node_id(),
            file_id: FileId(Id::hash(b"f")),
            placement_key: PlacementKey(Id::hash(b"p")),
            index: 3,
            fragment_hash: FragmentHash(Id::hash(b"frag")),
            stored_at: 1_700_000_001,
        }
    }

    fn reclaim(owner: &KeyPair) -> ReclaimCertificate {
        ReclaimCertificate::of(&file_certificate(owner), 1_700_000_002)
    }

    fn grant(owner: &KeyPair) -> UploadGrant {
        UploadGrant::new(b"notes.txt", 0, owner.public_key(), 1_700_000_004, 3_600)
    }

    fn root(volume: &KeyPair) -> RootRecord {
        RootRecord {
            volume: volume.public_key().volume_key(),
            sequence: 7,
            root: FileId(Id::hash(b"dir")),
            time: 1_700_000_003,
        }
    }

    /// The rejections every signed type must show, given its rightful signer, a
    /// stranger, and a function that tampers with one field.
    fn check_rejections<T: Certificate + Clone + PartialEq + fmt::Debug>(
        body: T,
        rightful: &KeyPair,
        tamper: impl Fn(&mut T),
    ) {
        let signed = Signed::sign(rightful, body.clone()).unwrap();
        assert_eq!(signed.verify(), Ok(&body), "the genuine value verifies");
        let decoded = Signed::<T>::from_bytes(&signed.to_bytes().unwrap()).unwrap();
        assert_eq!(decoded, signed, "the wire form round-trips");
        assert_eq!(decoded.verify(), Ok(&body));

        // A forged signature: random bytes, and a genuine one with one bit flipped.
        let mut forged = signed.clone();
        forged.signature = [0x5a; 64];
        assert!(forged.verify().is_err(), "random signature accepted");
        let mut flipped = signed.clone();
        flipped.signature[10] ^= 1;
        assert!(
            matches!(flipped.verify(), Err(VerifyError::BadSignature { .. })),
            "{:?}",
            flipped.verify()
        );

        // A signature by another key: the stranger signs the same body.
        let stranger = key(99);
        let by_stranger = Signed::sign(&stranger, body.clone()).unwrap();
        assert!(
            matches!(by_stranger.verify(), Err(VerifyError::WrongKey { .. })),
            "{:?}",
            by_stranger.verify()
        );
        // ...or the stranger's signature pasted under the rightful signer's name.
        let mut pasted = by_stranger.clone();
        pasted.signer = rightful.public_key();
        assert!(matches!(
            pasted.verify(),
            Err(VerifyError::BadSignature { .. })
        ));

        // Replayed as each other type: the tag is refused, and with the tag rewritten
        // the domain-separated signature does not verify.
        let bytes = signed.to_bytes().unwrap();
        assert_replay_refused::<FileCertificate>(&bytes, T::KIND);
        assert_replay_refused::<StoreReceipt>(&bytes, T::KIND);
        assert_replay_refused::<ReclaimCertificate>(&bytes, T::KIND);
        assert_replay_refused::<RootRecord>(&bytes, T::KIND);
        assert_replay_refused::<UploadGrant>(&bytes, T::KIND);

        // A tampered field.
        let mut tampered = signed.clone();
        tamper(&mut tampered.body);
        assert_ne!(
            tampered.body, body,
            "the tamper function must change something"
        );
        assert!(matches!(
            tampered.verify(),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    /// `bytes` (a signed value of kind `from`) must not be accepted as a `U`.
    fn assert_replay_refused<U: Certificate + fmt::Debug>(bytes: &[u8], from: SignedKind) {
        if U::KIND == from {
            return;
        }
        assert_eq!(
            Signed::<U>::from_bytes(bytes).unwrap_err(),
            VerifyError::WrongType {
                expected: U::KIND,
                found: from as u8
            }
        );
        let mut retagged = bytes.to_vec();
        retagged[1] = U::KIND as u8;
        // The body may not even decode as a U; if it does, it must not verify.
        if let Ok(replayed) = Signed::<U>::from_bytes(&retagged) {
            assert!(
                replayed.verify().is_err(),
                "{from:?} verified as {:?}",
                U::KIND
            );
        }
    }

    #[test]
    fn file_certificate_rejections() {
        let owner = key(1);
        check_rejections(file_certificate(&owner), &owner, |c| c.size += 1);
        check_rejections(file_certificate(&owner), &owner, |c| {
            c.manifest_fragments[2] = FragmentHash(Id::hash(b"evil"))
        });
    }

    /// Whether `body`, signed by `signer`, is refused as naming someone else's file id.
    fn foreign<C: Certificate>(signer: &KeyPair, body: C) -> bool {
        matches!(
            Signed::sign(signer, body).unwrap().verify(),
            Err(VerifyError::ForeignFileId { .. })
        )
    }

    #[test]
    fn file_ids_of_other_owners_cannot_be_certified_or_reclaimed() {
        let (alice, mallory) = (key(1), key(98));
        let alices = file_certificate(&alice);
        // Mallory signs a certificate for Alice's file id with herself as owner.
        let stolen = FileCertificate {
            owner: mallory.public_key(),
            ..alices.clone()
        };
        assert!(foreign(&mallory, stolen));
        // Or claims another name's digest for the same id.
        let relabelled = FileCertificate {
            name_digest: Id::hash(b"other"),
            ..alices
        };
        assert!(foreign(&alice, relabelled));
        // The same for a reclaim: it binds the file id to its signer on its own.
        let alices = reclaim(&alice);
        let stolen = ReclaimCertificate {
            owner: mallory.public_key(),
            ..alices.clone()
        };
        assert!(foreign(&mallory, stolen));
        let other = ReclaimCertificate {
            file_id: FileId(Id::hash(b"other")),
            ..alices.clone()
        };
        assert!(foreign(&alice, other));
        assert!(Signed::sign(&alice, alices).unwrap().verify().is_ok());
    }

    #[test]
    fn store_receipt_rejections() {
        let node = key(2);
        check_rejections(receipt(&node), &node, |r| r.index += 1);
    }

    #[test]
    fn reclaim_certificate_rejections() {
        let owner = key(3);
        check_rejections(reclaim(&owner), &owner, |r| r.issued_at += 1);
    }

    #[test]
    fn root_record_rejections() {
        let volume = key(4);
        check_rejections(root(&volume), &volume, |r| r.sequence += 1);
    }

    #[test]
    fn upload_grant_rejections() {
        let owner = key(8);
        check_rejections(grant(&owner), &owner, |g| g.expires_at += 1);
        check_rejections(grant(&owner), &owner, |g| g.issued_at -= 1);
    }

    #[test]
    fn upload_grant_names_the_file_its_certificate_will() {
        let owner = key(8);
        let grant = UploadGrant::new(b"notes.txt", 3, owner.public_key(), 100, 60);
        assert_eq!(
            grant.file_id,
            FileId::derive(b"notes.txt", &owner.public_key().0, 3)
        );
        assert_eq!((grant.issued_at, grant.expires_at), (100, 160));
        let forever = UploadGrant::new(b"x", 0, owner.public_key(), u64::MAX - 1, 60);
        assert_eq!(forever.expires_at, u64::MAX, "the lifetime saturates");
    }

    #[test]
    fn upload_grants_for_other_owners_files_are_refused() {
        let (alice, mallory) = (key(1), key(98));
        let alices = grant(&alice);
        let stolen = UploadGrant {
            owner: mallory.public_key(),
            ..alices.clone()
        };
        let signed = Signed::sign(&mallory, stolen).unwrap();
        assert!(matches!(
            signed.verify(),
            Err(VerifyError::ForeignFileId { .. })
        ));
        let relabelled = UploadGrant {
            name_salt: 1,
            ..alices
        };
        let signed = Signed::sign(&alice, relabelled).unwrap();
        assert!(matches!(
            signed.verify(),
            Err(VerifyError::ForeignFileId { .. })
        ));
    }

    #[test]
    fn replayed_as_another_type_is_rejected() {
        let owner = key(5);
        let receipt_bytes = Signed::sign(&owner, receipt(&owner))
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(
            Signed::<FileCertificate>::from_bytes(&receipt_bytes),
            Err(VerifyError::WrongType {
                expected: SignedKind::FileCertificate,
                found: SignedKind::StoreReceipt as u8
            })
        );
        // Even with the tag rewritten, the domain tag in the signature keeps the types
        // apart: a type identical to ReclaimCertificate in layout, but another domain.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        struct LookAlike {
            file_id: FileId,
            name_digest: Id,
            name_salt: u64,
            owner: PublicKey,
            issued_at: u64,
        }
        impl Certificate for LookAlike {
            const KIND: SignedKind = SignedKind::TestOnly;
            const DOMAIN: &'static [u8] = b"cairn/look-alike/v1";
            fn check_signer(&self, signer: &PublicKey) -> Result<(), VerifyError> {
                require_key(Self::KIND, &self.owner, signer)
            }
        }
        let mut bytes = Signed::sign(&owner, reclaim(&owner))
            .unwrap()
            .to_bytes()
            .unwrap();
        bytes[1] = SignedKind::TestOnly as u8;
        let replayed = Signed::<LookAlike>::from_bytes(&bytes).expect("same layout decodes");
        assert!(matches!(
            replayed.verify(),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_non_canonical_encoding_of_a_valid_record_is_refused() {
        let volume = key(8);
        let signed = Signed::sign(&volume, root(&volume)).unwrap();
        let bytes = signed.to_bytes().unwrap();
        // The body starts after version, tag, signer and signature: the volume key (32
        // raw bytes), then the sequence, 7, as a one-byte varint.
        let at = 2 + 32 + 64 + 32;
        assert_eq!(bytes[at], 7);
        // 7 as a two-byte varint (0x87 0x00): the same value, other bytes.
        let mut padded = bytes[..at].to_vec();
        padded.extend([0x87, 0x00]);
        padded.extend(&bytes[at + 1..]);
        let decoded: RootRecord = postcard::from_bytes(&padded[2 + 32 + 64..]).unwrap();
        assert_eq!(
            decoded, signed.body,
            "postcard alone accepts the padded form"
        );
        match Signed::<RootRecord>::from_bytes(&padded) {
            Err(VerifyError::Malformed { reason }) => {
                assert!(reason.contains("canonical"), "{reason}");
            }
            other => panic!("a non-canonical record was accepted: {other:?}"),
        }
        // The canonical bytes still decode and verify.
        Signed::<RootRecord>::from_bytes(&bytes)
            .unwrap()
            .verify()
            .unwrap();
    }

    #[test]
    fn malformed_bytes_are_rejected_without_panic() {
        let owner = key(6);
        let bytes = Signed::sign(&owner, file_certificate(&owner))
            .unwrap()
            .to_bytes()
            .unwrap();
        for len in 0..bytes.len() {
            assert!(
                Signed::<FileCertificate>::from_bytes(&bytes[..len]).is_err(),
                "prefix {len}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            Signed::<FileCertificate>::from_bytes(&trailing),
            Err(VerifyError::Malformed { .. })
        ));
        let mut version = bytes.clone();
        version[0] = 9;
        assert!(matches!(
            Signed::<FileCertificate>::from_bytes(&version),
            Err(VerifyError::Malformed { .. })
        ));
        let huge = vec![1u8; MAX_SIGNED_BYTES + 1];
        assert!(Signed::<FileCertificate>::from_bytes(&huge).is_err());

        let grant_bytes = Signed::sign(&owner, grant(&owner))
            .unwrap()
            .to_bytes()
            .unwrap();
        for len in 0..grant_bytes.len() {
            assert!(
                Signed::<UploadGrant>::from_bytes(&grant_bytes[..len]).is_err(),
                "grant prefix {len}"
            );
        }
        let mut trailing = grant_bytes.clone();
        trailing.push(0);
        assert!(matches!(
            Signed::<UploadGrant>::from_bytes(&trailing),
            Err(VerifyError::Malformed { .. })
        ));
        assert!(Signed::<UploadGrant>::from_bytes(&huge).is_err());
    }

    #[test]
    fn expired_certificates_are_refused() {
        let owner = key(7);
        let certificate = file_certificate(&owner);
        assert_eq!(certificate.check_time(1_799_999_999), Ok(()));
        assert_eq!(
            certificate.check_time(1_800_000_000),
            Err(VerifyError::Expired {
                expired_at: 1_800_000_000,
                now: 1_800_000_000
            })
        );
        let forever = FileCertificate {
            expires_at: None,
            ..certificate
        };
        assert_eq!(forever.check_time(u64::MAX), Ok(()));

        let grant = grant(&owner);
        assert_eq!(grant.check_time(grant.expires_at - 1), Ok(()));
        assert_eq!(
            grant.check_time(grant.expires_at),
            Err(VerifyError::Expired {
                expired_at: 1_700_003_604,
                now: 1_700_003_604
            })
        );
    }

    #[test]
    fn a_grant_issued_further_ahead_than_the_clock_skew_is_refused() {
        let owner = key(7);
        let issued = 1_700_000_000;
        let grant = UploadGrant::new(b"notes.txt", 0, owner.public_key(), issued, 3_600);
        // A node whose clock is behind the owner's by up to the skew accepts it.
        assert_eq!(grant.check_time(issued - GRANT_CLOCK_SKEW), Ok(()));
        let behind = issued - GRANT_CLOCK_SKEW - 1;
        assert_eq!(
            grant.check_time(behind),
            Err(VerifyError::IssuedInTheFuture {
                issued_at: issued,
                now: behind
            })
        );
        let message = grant.check_time(0).unwrap_err().to_string();
        assert!(message.contains("more than 600 s after now"), "{message}");
    }

    #[test]
    fn key_files_are_private_and_refused_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner.key");
        let original = KeyPair::generate();
        original.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            KeyPair::load(&path).unwrap().public_key(),
            original.public_key()
        );
        assert!(matches!(
            original.save(&path),
            Err(KeyFileError::AlreadyExists { .. })
        ));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyFileError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));

        let junk = dir.path().join("junk.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&junk)
            .unwrap();
        fs::write(&junk, "hello\n").unwrap();
        assert!(matches!(
            KeyPair::load(&junk),
            Err(KeyFileError::Malformed { .. })
        ));
        let missing = KeyPair::load(&dir.path().join("missing.key")).unwrap_err();
        assert!(missing.to_string().contains("missing.key"));
    }

    #[test]
    fn secrets_do_not_print() {
        let pair = KeyPair::from_secret_bytes(&[0x42; 32]);
        let debug = format!("{pair:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(&Id([0x42; 32]).to_string()[..8]));
    }

    #[test]
    fn signed_bytes_are_pinned() {
        // The wire form of a signed value, annotated: version 01, tag 04 (root record),
        // 32 bytes of signer, 64 of signature, then the postcard body. ed25519 is
        // deterministic, so the whole encoding is fixed for a fixed key.
        let volume = key(4);
        let bytes = Signed::sign(&volume, root(&volume))
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(&bytes[..2], &[0x01, 0x04]);
        assert_eq!(&bytes[2..34], &volume.public_key().0);
        let body = &bytes[98..];
        assert_eq!(&body[..32], &volume.public_key().0, "volume key, raw");
        assert_eq!(body[32], 7, "sequence 7 as a varint");
        assert_eq!(&body[33..65], &Id::hash(b"dir").0, "root file id, raw");
        assert_eq!(
            body.len(),
            32 + 1 + 32 + 5,
            "time 1_700_000_003 is a 5-byte varint"
        );
    }
}
