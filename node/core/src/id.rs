//! 256-bit identifiers: the names of nodes, blocks, fragments, files and keys.
//!
//! Owns: [`Id`] (a big-endian 256-bit number on a ring), its arithmetic (ring
//! distance, Pastry digits, shared prefixes), its text form (lowercase base32, no
//! padding), the typed newtypes built on it ([`NodeId`], [`BlockHash`],
//! [`FragmentHash`], [`PlacementKey`], [`FileId`], [`ManifestHash`],
//! [`VolumeKey`], [`OwnerKey`]), the user-facing [`Reference`] (`cairn:f:...`) and the
//! static puzzle on node ids ([`Difficulty`], [`NodeId::meets`]).
//!
//! May use: `sha2` only. Every other module builds on this one.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes in an [`Id`].
pub const ID_BYTES: usize = 32;
/// Bits per Pastry digit (the paper's `b`). Digits are hexadecimal.
pub const DIGIT_BITS: usize = 4;
/// Digits in an [`Id`]: 256 / 4.
pub const DIGITS: usize = ID_BYTES * 8 / DIGIT_BITS;
/// Characters in the base32 text form of an [`Id`]: ceil(256 / 5).
pub const TEXT_LEN: usize = (ID_BYTES * 8).div_ceil(5);

const BASE32_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A point on the 2^256 ring: SHA-256 output read as a big-endian unsigned number.
///
/// `Ord` is numeric order, because the bytes are big-endian.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Id(pub [u8; ID_BYTES]);

impl Id {
    /// The zero point of the ring.
    pub const ZERO: Id = Id([0; ID_BYTES]);
    /// The largest value, 2^256 - 1.
    pub const MAX: Id = Id([0xff; ID_BYTES]);

    /// SHA-256 of `bytes`.
    pub fn hash(bytes: &[u8]) -> Id {
        Id(Sha256::digest(bytes).into())
    }

    /// SHA-256 of the concatenation of `parts`, without copying them together.
    pub fn hash_parts(parts: &[&[u8]]) -> Id {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        Id(hasher.finalize().into())
    }

    /// The raw bytes, most significant first.
    pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
        &self.0
    }

    /// Pastry digit `i` (0 = most significant), in `0..16`.
    ///
    /// # Panics
    /// If `i >= DIGITS`; callers index with a row number that is always smaller.
    pub fn digit(&self, i: usize) -> u8 {
        let byte = self.0[i / 2];
        if i % 2 == 0 { byte >> 4 } else { byte & 0x0f }
    }

    /// This id with digit `i` replaced by `value` (low 4 bits used).
    pub fn with_digit(mut self, i: usize, value: u8) -> Id {
        let byte = &mut self.0[i / 2];
        if i % 2 == 0 {
            *byte = (*byte & 0x0f) | (value << 4);
        } else {
            *byte = (*byte & 0xf0) | (value & 0x0f);
        }
        self
    }

    /// How many leading Pastry digits `self` and `other` share (0..=64).
    pub fn shared_prefix_len(&self, other: &Id) -> usize {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 2 + usize::from(x & 0xf0 == 0);
            }
        }
        DIGITS
    }

    /// `self + other` modulo 2^256.
    pub fn wrapping_add(&self, other: &Id) -> Id {
        let mut out = [0u8; ID_BYTES];
        let mut carry = 0u16;
        for i in (0..ID_BYTES).rev() {
            let sum = u16::from(self.0[i]) + u16::from(other.0[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        Id(out)
    }

    /// `self - other` modulo 2^256.
    pub fn wrapping_sub(&self, other: &Id) -> Id {
        let mut out = [0u8; ID_BYTES];
        let mut borrow = 0i16;
        for i in (0..ID_BYTES).rev() {
            let mut diff = i16::from(self.0[i]) - i16::from(other.0[i]) - borrow;
            borrow = i16::from(diff < 0);
            if diff < 0 {
                diff += 256;
            }
            out[i] = diff as u8;
        }
        Id(out)
    }

    /// Clockwise distance from `self` to `other`: `other - self` modulo 2^256.
    pub fn clockwise_to(&self, other: &Id) -> Id {
        other.wrapping_sub(self)
    }

    /// Ring distance: the shorter way round, `min(a - b, b - a)` modulo 2^256.
    pub fn distance(&self, other: &Id) -> Id {
        let cw = self.clockwise_to(other);
        let ccw = other.clockwise_to(self);
        cw.min(ccw)
    }

    /// Which of `a` and `b` is numerically closer to `self` on the ring.
    ///
    /// Ties (two ids at the same distance, one each side) go to the smaller id, so
    /// every node agrees on one responsible node for every key.
    pub fn cmp_closeness(&self, a: &Id, b: &Id) -> Ordering {
        self.distance(a)
            .cmp(&self.distance(b))
            .then_with(|| a.cmp(b))
    }

    /// The first eight base32 characters: enough to tell ids apart in logs.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(8);
        text
    }
}

impl fmt::Display for Id {
    /// Lowercase base32 (RFC 4648 alphabet), no padding: 52 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(TEXT_LEN);
        let mut buffer = 0u32;
        let mut bits = 0u32;
        for &byte in &self.0 {
            buffer = (buffer << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                text.push(char::from(
                    BASE32_ALPHABET[((buffer >> bits) & 31) as usize],
                ));
            }
        }
        if bits > 0 {
            text.push(char::from(
                BASE32_ALPHABET[((buffer << (5 - bits)) & 31) as usize],
            ));
        }
        f.write_str(&text)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.short())
    }
}

/// Why a text id or reference could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseIdError {
    /// The text has the wrong number of characters.
    #[error("an id is {TEXT_LEN} base32 characters, this one has {got}")]
    WrongLength {
        /// Characters found.
        got: usize,
    },
    /// A character outside the base32 alphabet.
    #[error("character {character:?} at position {position} is not base32 (a-z, 2-7)")]
    BadCharacter {
        /// The offending character.
        character: char,
        /// Its position, counting from 0.
        position: usize,
    },
    /// The last character carries bits beyond the 256 of an id.
    #[error("the last character {character:?} is not one an id can end with; was it mistyped?")]
    NonCanonical {
        /// The last character.
        character: char,
    },
    /// A reference that does not start with `cairn:`.
    #[error("a cairn reference starts with `cairn:` (for example `cairn:f:...`), got {text:?}")]
    MissingScheme {
        /// The start of the text, for the message.
        text: String,
    },
    /// A reference whose kind is not known.
    #[error("unknown reference kind `{kind}`: expected `f` (a file) or `v` (a volume)")]
    UnknownKind {
        /// The kind found.
        kind: String,
    },
    /// A reference kind this version knows of but cannot use yet.
    #[error("reference kind `{kind}` is reserved for a later version of cairn")]
    ReservedKind {
        /// The kind found.
        kind: String,
    },
}

impl FromStr for Id {
    type Err = ParseIdError;

    /// Reads the base32 form; upper case is accepted, so a typed id need not match case.
    fn from_str(text: &str) -> Result<Id, ParseIdError> {
        let got = text.chars().count();
        if got != TEXT_LEN {
            return Err(ParseIdError::WrongLength { got });
        }
        let mut out = [0u8; ID_BYTES];
        let mut filled = 0usize;
        let mut buffer = 0u32;
        let mut bits = 0u32;
        for (position, character) in text.chars().enumerate() {
            let value = match character.to_ascii_lowercase() {
                c @ 'a'..='z' => c as u32 - 'a' as u32,
                c @ '2'..='7' => c as u32 - '2' as u32 + 26,
                _ => {
                    return Err(ParseIdError::BadCharacter {
                        character,
                        position,
                    });
                }
            };
            buffer = (buffer << 5) | value;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                if filled < ID_BYTES {
                    out[filled] = (buffer >> bits) as u8;
                    filled += 1;
                }
            }
        }
        // 52 characters carry 260 bits: the last 4 must be zero, or two texts
        // would name one id.
        if buffer & ((1 << bits) - 1) != 0 {
            let character = text.chars().last().unwrap_or('?');
            return Err(ParseIdError::NonCanonical { character });
        }
        Ok(Id(out))
    }
}

/// Defines a typed 32-byte name over [`Id`], with the same text forms.
macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        pub struct $name(pub Id);

        impl $name {
            /// The underlying ring point.
            pub fn id(&self) -> &Id {
                &self.0
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; ID_BYTES] {
                &self.0.0
            }
        }

        impl From<Id> for $name {
            fn from(id: Id) -> Self {
                $name(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(text: &str) -> Result<Self, ParseIdError> {
                text.parse().map($name)
            }
        }
    };
}

id_newtype!(
    /// A node's id: SHA-256 of its ed25519 public key, so it cannot be chosen.
    NodeId
);
id_newtype!(
    /// SHA-256 of a block's bytes (one segment of a file, or a manifest).
    BlockHash
);
id_newtype!(
    /// SHA-256 of one erasure-coded fragment's bytes.
    FragmentHash
);
id_newtype!(
    /// Where a block lives on the ring: `SHA-256(block hash ‖ salt)`.
    PlacementKey
);
id_newtype!(
    /// A file's name in the network: `SHA-256(name ‖ owner key ‖ salt)`.
    FileId
);
id_newtype!(
    /// SHA-256 of a manifest's encoding; the manifest is itself stored as a block.
    ManifestHash
);
id_newtype!(
    /// A volume's ed25519 public key, as 32 raw bytes (checked as a key in `crypto`).
    VolumeKey
);
id_newtype!(
    /// An owner's ed25519 public key, as 32 raw bytes: the signer of upload grants and
    /// file certificates, and whom a node accounts the bytes it stores to.
    OwnerKey
);

impl PlacementKey {
    /// The placement key of `block` under `salt`: `SHA-256(block hash ‖ salt_be)`.
    ///
    /// `salt` is 0 unless file diversion moved the block; it is kept in the manifest.
    pub fn for_block(block: &BlockHash, salt: u64) -> PlacementKey {
        PlacementKey(Id::hash_parts(&[block.as_bytes(), &salt.to_be_bytes()]))
    }
}

impl FileId {
    /// `SHA-256(SHA-256(name) ‖ owner key ‖ salt_be)`: names are per owner, and a salt
    /// lets an owner store another file under the same name.
    ///
    /// The name enters through its digest so that a certificate can carry the digest
    /// (not the name) and any node can check that a file id belongs to the key that
    /// signed it: see [`FileId::from_name_digest`].
    pub fn derive(name: &[u8], owner_key: &[u8; 32], salt: u64) -> FileId {
        FileId::from_name_digest(&Id::hash(name), owner_key, salt)
    }

    /// The file id of a name known only by its digest `SHA-256(name)`.
    pub fn from_name_digest(name_digest: &Id, owner_key: &[u8; 32], salt: u64) -> FileId {
        FileId(Id::hash_parts(&[
            name_digest.as_bytes(),
            owner_key,
            &salt.to_be_bytes(),
        ]))
    }
}

/// Domain tag of the node-key puzzle (see [`Difficulty`]): the puzzle hash can never
/// be mistaken for any other SHA-256 cairn computes.
pub const PUZZLE_DOMAIN: &[u8] = b"cairn/node-id-puzzle/v1";

/// How hard the static crypto puzzle on node keys is: how many leading zero bits
/// `SHA-256(PUZZLE_DOMAIN ‖ 0x00 ‖ node id)` must have for the node's key to be
/// accepted, the node id being itself `SHA-256(public key)`.
///
/// This is the static puzzle of S/Kademlia (Baumgart and Mies, "S/Kademlia: A
/// practicable approach towards secure key-based routing", 2007, its secure node id
/// assignment): a node id is valid when `H(H(public key))` has `c1` leading zero bits. cairn follows it, adding
/// a domain tag. Checking costs one hash; making a key that passes costs about
/// `2^bits` key generations, so an attacker who grinds ids towards a chosen key pays
/// `2^bits` times more per id than before, and an honest node pays it once, when its
/// key is created. It does not stop an attacker with time to spend (S/Kademlia's
/// dynamic puzzle and the per-subnet limits of docs/SECURITY.md are other layers).
///
/// A network parameter: every node of a network must use the same difficulty, since
/// each refuses peers whose keys fall short of its own.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Difficulty(pub u8);

impl Difficulty {
    /// No puzzle: every key passes (the simulator's synthetic ids; tests with fixed
    /// keys).
    pub const NONE: Difficulty = Difficulty(0);

    /// How many times more attempts than expected a key search makes before it gives
    /// up (see [`Difficulty::attempt_bound`]).
    pub const PATIENCE: u64 = 64;

    /// The leading zero bits asked for.
    pub fn bits(self) -> u32 {
        u32::from(self.0)
    }

    /// The attempts a key search makes on average: `2^bits` (saturating).
    pub fn expected_attempts(self) -> u64 {
        1u64.checked_shl(self.bits()).unwrap_or(u64::MAX)
    }

    /// The attempts after which a key search should give up: [`Self::PATIENCE`] times
    /// the expected number (saturating), so an honest search fails only with
    /// probability about `e^-64`, and a difficulty no machine can meet fails instead
    /// of running for ever.
    pub fn attempt_bound(self) -> u64 {
        self.expected_attempts().saturating_mul(Self::PATIENCE)
    }
}

impl fmt::Display for Difficulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bits", self.0)
    }
}

/// A node id whose puzzle hash has fewer leading zero bits than the network asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {id} does not solve the key puzzle: {bits} leading zero bits, the network asks for {needed}"
)]
pub struct BelowDifficulty {
    /// The node id.
    pub id: NodeId,
    /// Leading zero bits of its puzzle hash.
    pub bits: u32,
    /// The network's difficulty.
    pub needed: Difficulty,
}

impl NodeId {
    /// Leading zero bits of this id's puzzle hash (see [`Difficulty`]), 0..=256.
    pub fn puzzle_bits(&self) -> u32 {
        let hash = Id::hash_parts(&[PUZZLE_DOMAIN, &[0], self.as_bytes()]);
        let mut bits = 0;
        for byte in hash.0 {
            bits += byte.leading_zeros();
            if byte != 0 {
                break;
            }
        }
        bits
    }

    /// Whether this id solves the puzzle at `difficulty` (always, at
    /// [`Difficulty::NONE`], without hashing).
    pub fn meets(&self, difficulty: Difficulty) -> bool {
        difficulty == Difficulty::NONE || self.puzzle_bits() >= difficulty.bits()
    }

    /// [`NodeId::meets`], with the evidence when it does not.
    pub fn check_difficulty(&self, difficulty: Difficulty) -> Result<(), BelowDifficulty> {
        if self.meets(difficulty) {
            Ok(())
        } else {
            Err(BelowDifficulty {
                id: *self,
                bits: self.puzzle_bits(),
                needed: difficulty,
            })
        }
    }
}

/// A typed reference a person can copy and type: `cairn:<kind>:<base32>`.
///
/// Kinds: `f` a file, `v` a volume. The kinds `fc` and `vc` are reserved for the
/// capability forms that will also carry a decryption key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    /// `cairn:f:<file id>`.
    File(FileId),
    /// `cairn:v:<volume key>`.
    Volume(VolumeKey),
}

const SCHEME: &str = "cairn:";

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::File(id) => write!(f, "{SCHEME}f:{id}"),
            Reference::Volume(key) => write!(f, "{SCHEME}v:{key}"),
        }
    }
}

impl FromStr for Reference {
    type Err = ParseIdError;

    fn from_str(text: &str) -> Result<Reference, ParseIdError> {
        let text = text.trim();
        let Some(rest) = text
            .get(..SCHEME.len())
            .filter(|s| s.eq_ignore_ascii_case(SCHEME))
            .map(|_| &text[SCHEME.len()..])
        else {
            return Err(ParseIdError::MissingScheme {
                text: text.chars().take(16).collect(),
            });
        };
        let (kind, body) = rest.split_once(':').unwrap_or((rest, ""));
        match kind.to_ascii_lowercase().as_str() {
            "f" => body.parse().map(Reference::File),
            "v" => body.parse().map(Reference::Volume),
            "fc" | "vc" => Err(ParseIdError::ReservedKind {
                kind: kind.to_owned(),
            }),
            _ => Err(ParseIdError::UnknownKind {
                kind: kind.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id_from_u128(high: u128, low: u128) -> Id {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&high.to_be_bytes());
        bytes[16..].copy_from_slice(&low.to_be_bytes());
        Id(bytes)
    }

    fn any_id() -> impl Strategy<Value = Id> {
        any::<[u8; 32]>().prop_map(Id)
    }

    #[test]
    fn hash_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let id = Id::hash(b"abc");
        assert_eq!(
            id.0[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
        assert_eq!(Id::hash_parts(&[b"a", b"bc"]), id);
    }

    #[test]
    fn text_form_is_52_lowercase_chars_and_round_trips() {
        let id = Id::hash(b"cairn");
        let text = id.to_string();
        assert_eq!(text.len(), TEXT_LEN);
        assert!(
            text.chars()
                .all(|c| c.is_ascii_lowercase() || ('2'..='7').contains(&c))
        );
        assert_eq!(text.parse::<Id>(), Ok(id));
        assert_eq!(
            text.to_uppercase().parse::<Id>(),
            Ok(id),
            "upper case is accepted"
        );
        assert_eq!(Id::ZERO.to_string(), "a".repeat(52));
    }

    #[test]
    fn mistyped_ids_give_clear_errors() {
        let text = Id::hash(b"x").to_string();
        assert_eq!(
            text[1..].parse::<Id>(),
            Err(ParseIdError::WrongLength { got: 51 })
        );
        let bad = format!("{}1{}", &text[..10], &text[11..]);
        assert_eq!(
            bad.parse::<Id>(),
            Err(ParseIdError::BadCharacter {
                character: '1',
                position: 10
            })
        );
        // The last character carries 1 bit of the id and 4 of padding; 'b' sets padding.
        let non_canonical = format!("{}b", &"a".repeat(51));
        assert!(matches!(
            non_canonical.parse::<Id>(),
            Err(ParseIdError::NonCanonical { .. })
        ));
    }

    #[test]
    fn references_round_trip_and_reject_mistakes() {
        let file = Reference::File(FileId(Id::hash(b"f")));
        let text = file.to_string();
        assert!(text.starts_with("cairn:f:"));
        assert_eq!(text.parse::<Reference>(), Ok(file));
        let volume = Reference::Volume(VolumeKey(Id::hash(b"v")));
        assert_eq!(volume.to_string().parse::<Reference>(), Ok(volume));

        let body = Id::hash(b"f").to_string();
        assert!(matches!(
            body.parse::<Reference>(),
            Err(ParseIdError::MissingScheme { .. })
        ));
        assert_eq!(
            format!("cairn:x:{body}").parse::<Reference>(),
            Err(ParseIdError::UnknownKind { kind: "x".into() })
        );
        assert_eq!(
            format!("cairn:fc:{body}").parse::<Reference>(),
            Err(ParseIdError::ReservedKind { kind: "fc".into() })
        );
        assert_eq!(
            format!("cairn:f:{}", &body[..40]).parse::<Reference>(),
            Err(ParseIdError::WrongLength { got: 40 })
        );
        let err = format!("cairn:q:{body}").parse::<Reference>().unwrap_err();
        assert!(
            err.to_string()
                .contains("expected `f` (a file) or `v` (a volume)")
        );
    }

    #[test]
    fn digits_and_prefixes() {
        let a = Id::hash(b"a");
        assert_eq!(a.digit(0), a.0[0] >> 4);
        assert_eq!(a.digit(1), a.0[0] & 15);
        assert_eq!(a.digit(63), a.0[31] & 15);
        assert_eq!(a.shared_prefix_len(&a), DIGITS);
        let b = a.with_digit(5, a.digit(5) ^ 1);
        assert_eq!(a.shared_prefix_len(&b), 5);
        let c = a.with_digit(0, a.digit(0) ^ 8);
        assert_eq!(a.shared_prefix_len(&c), 0);
    }

    #[test]
    fn distance_wraps_around_the_ring() {
        let one = id_from_u128(0, 1);
        let max = Id::MAX;
        assert_eq!(
            one.distance(&max),
            id_from_u128(0, 2),
            "1 and 2^256-1 are 2 apart"
        );
        assert_eq!(max.wrapping_add(&one), Id::ZERO);
        assert_eq!(Id::ZERO.wrapping_sub(&one), Id::MAX);
        // Ties go to the smaller id.
        let key = id_from_u128(0, 10);
        let (lo, hi) = (id_from_u128(0, 8), id_from_u128(0, 12));
        assert_eq!(key.cmp_closeness(&lo, &hi), Ordering::Less);
        assert_eq!(key.cmp_closeness(&hi, &lo), Ordering::Greater);
    }

    #[test]
    fn placement_keys_depend_on_salt() {
        let block = BlockHash(Id::hash(b"block"));
        assert_ne!(
            PlacementKey::for_block(&block, 0),
            PlacementKey::for_block(&block, 1)
        );
        assert_eq!(
            PlacementKey::for_block(&block, 7),
            PlacementKey::for_block(&block, 7)
        );
    }

    #[test]
    fn debug_is_short_and_typed() {
        let id = NodeId(Id::hash(b"n"));
        let debug = format!("{id:?}");
        assert!(debug.starts_with("NodeId(") && debug.len() < 24, "{debug}");
    }

    /// The puzzle hash's leading zero bits, counted from its binary text: a count
    /// independent of [`NodeId::puzzle_bits`].
    fn zero_bits_by_text(id: &NodeId) -> u32 {
        let mut preimage = b"cairn/node-id-puzzle/v1\0".to_vec();
        preimage.extend_from_slice(id.as_bytes());
        let binary: String = Sha256::digest(&preimage)
            .iter()
            .map(|b| format!("{b:08b}"))
            .collect();
        binary.chars().take_while(|&c| c == '0').count() as u32
    }

    #[test]
    fn a_node_id_meets_exactly_the_difficulties_up_to_its_puzzle_bits() {
        let ids: Vec<NodeId> = (0..=255u8).map(|n| NodeId(Id::hash(&[n]))).collect();
        for id in &ids {
            assert_eq!(id.puzzle_bits(), zero_bits_by_text(id), "{id:?}");
        }
        // Among 256 ids some have at least 3 leading zero bits (each with odds 1/8).
        let (id, bits) = ids
            .iter()
            .map(|id| (*id, id.puzzle_bits()))
            .find(|&(_, bits)| bits >= 3)
            .unwrap_or_else(|| panic!("no id of 256 with 3 zero bits"));
        let at = |bits: u32| Difficulty(u8::try_from(bits).unwrap_or(u8::MAX));
        assert!(id.meets(Difficulty::NONE));
        assert!(id.meets(at(bits)));
        assert!(id.check_difficulty(at(bits)).is_ok());
        assert!(!id.meets(at(bits + 1)));
        assert_eq!(
            id.check_difficulty(at(bits + 1)),
            Err(BelowDifficulty {
                id,
                bits,
                needed: at(bits + 1)
            })
        );
        // About half of all ids fail a difficulty of one bit.
        let failing = ids.iter().filter(|id| !id.meets(Difficulty(1))).count();
        assert!((80..=176).contains(&failing), "{failing} of 256 fail 1 bit");
    }

    #[test]
    fn difficulty_attempts_saturate_instead_of_overflowing() {
        assert_eq!(Difficulty(16).expected_attempts(), 65_536);
        assert_eq!(
            Difficulty(16).attempt_bound(),
            65_536 * Difficulty::PATIENCE
        );
        assert_eq!(Difficulty(63).attempt_bound(), u64::MAX);
        assert_eq!(Difficulty(64).expected_attempts(), u64::MAX);
        assert_eq!(Difficulty(255).attempt_bound(), u64::MAX);
        assert_eq!(Difficulty(16).to_string(), "16 bits");
    }

    proptest! {
        #[test]
        fn text_round_trips(id in any_id()) {
            prop_assert_eq!(id.to_string().parse::<Id>(), Ok(id));
        }

        #[test]
        fn add_and_sub_are_inverse(a in any_id(), b in any_id()) {
            prop_assert_eq!(a.wrapping_add(&b).wrapping_sub(&b), a);
            prop_assert_eq!(a.clockwise_to(&b).wrapping_add(&a), b);
        }

        #[test]
        fn distance_is_symmetric_and_at_most_half(a in any_id(), b in any_id()) {
            let d = a.distance(&b);
            prop_assert_eq!(d, b.distance(&a));
            prop_assert!(d <= id_from_u128(1 << 127, 0), "never more than half the ring");
            prop_assert_eq!(a.distance(&a), Id::ZERO);
            prop_assert_eq!(d == Id::ZERO, a == b);
        }

        #[test]
        fn distance_matches_u128_arithmetic(a in any::<u128>(), b in any::<u128>()) {
            // Ids that differ only in the low 128 bits, far from the wrap point.
            let (x, y) = (id_from_u128(7, a), id_from_u128(7, b));
            prop_assert_eq!(x.distance(&y), id_from_u128(0, a.abs_diff(b)));
        }

        #[test]
        fn shared_prefix_matches_digits(a in any_id(), b in any_id()) {
            let p = a.shared_prefix_len(&b);
            prop_assert!((0..p).all(|i| a.digit(i) == b.digit(i)));
            if p < DIGITS {
                prop_assert_ne!(a.digit(p), b.digit(p));
            }
        }

        #[test]
        fn with_digit_sets_only_that_digit(a in any_id(), i in 0..DIGITS, v in 0u8..16) {
            let b = a.with_digit(i, v);
            prop_assert_eq!(b.digit(i), v);
            prop_assert!((0..DIGITS).filter(|&j| j != i).all(|j| a.digit(j) == b.digit(j)));
        }
    }
}
