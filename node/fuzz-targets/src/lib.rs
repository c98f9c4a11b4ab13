//! The fuzz targets of cairn: one function per decoder that sees bytes from a peer, a
//! user or a disk. Each takes any bytes, decodes them with the real decoder, must never
//! panic, and where decoding succeeds checks what must hold of the value (its
//! re-encoding decodes to the same value and is no longer; a signed value re-encodes to
//! exactly its bytes, since `Signed::from_bytes` refuses every other form). A failed
//! check panics: that is the finding. Each returns whether its input decoded (the seed
//! corpus must).
//!
//! `fuzz/` (outside the workspace, nightly, cargo-fuzz) has one `fuzz_target!` per
//! entry of [`TARGETS`], each a call into this crate; `fuzz/corpus/<target>/` holds
//! their seeds. This crate's tests replay that corpus and a bounded, seeded mutation of
//! it on stable, under `cargo test --workspace` (`docs/fuzzing.md`).
//!
//! Owns: the targets and what each checks; the seed generator and the mutator of the
//! tests (`corpus`).
//!
//! May use: the decoders' crates (core, store and net with their `fuzzing` feature,
//! overlay, past, api, daemon for its `Wire`, fs-mount); decoders are called, never
//! copied.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use cairn_core::crypto::{
    Certificate, FileCertificate, ReclaimCertificate, RootRecord, Signed, StoreReceipt, UploadGrant,
};
use cairn_core::erasure::{BlockSpec, Codec, ErasureParams, Fragment, Offer, fragment_hash};
use cairn_core::id::{
    BlockHash, FileId, FragmentHash, Id, ManifestHash, OwnerKey, PlacementKey, Reference,
};
use cairn_core::manifest::Manifest;
use cairn_daemon::Wire;
use cairn_fs_mount::volume::Directory;
use cairn_overlay::OverlayMessage;
use cairn_past::{PastRequest, PastResponse, PastRouted};
use cairn_store::disk_records;

#[cfg(test)]
mod corpus;

/// A target: any bytes in, whether they decoded out; a failed check panics.
pub type Target = fn(&[u8]) -> bool;

/// Every target by name (the name of its `fuzz/` binary and corpus directory).
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("handshake", handshake),
    ("overlay_message", overlay_message),
    ("past_request", past_request),
    ("past_response", past_response),
    ("past_routed", past_routed),
    ("upload_grant", upload_grant),
    ("file_certificate", file_certificate),
    ("store_receipt", store_receipt),
    ("reclaim_certificate", reclaim_certificate),
    ("root_record", root_record),
    ("manifest", manifest),
    ("manifest_block", manifest_block),
    ("erasure_block", erasure_block),
    ("directory", directory),
    ("disk_records", disk_records),
    ("reference", reference),
];

/// A connection's bytes after the handshake: length-prefixed frames, each a
/// `Frame<Wire>` (the daemon's one message type), read by the transport's reader.
pub fn frames(data: &[u8]) -> bool {
    let read = cairn_net::fuzzing::read_frames::<Wire>(data, max_frame_bytes());
    read.decoded > 0 && read.clean_end
}

/// A connection's first bytes: the `Hello` and `Proof` frames of the handshake (at
/// most 512 bytes each), then frames as [`frames`] reads them.
pub fn handshake(data: &[u8]) -> bool {
    let read = cairn_net::fuzzing::read_handshake::<Wire>(data, max_frame_bytes());
    read.decoded >= 2 && read.clean_end
}

/// One overlay hop (`Wire::Overlay`'s message).
pub fn overlay_message(data: &[u8]) -> bool {
    postcard_round_trip::<OverlayMessage>(data).is_some()
}

/// A PAST request (`Wire::Past`).
pub fn past_request(data: &[u8]) -> bool {
    postcard_round_trip::<PastRequest>(data).is_some()
}

/// A PAST answer (`Wire::PastReply`).
pub fn past_response(data: &[u8]) -> bool {
    postcard_round_trip::<PastResponse>(data).is_some()
}

/// What is routed to a placement key (a `Routed::Lookup`'s payload).
pub fn past_routed(data: &[u8]) -> bool {
    postcard_round_trip::<PastRouted>(data).is_some()
}

/// A signed upload grant (a store request's `grant`).
pub fn upload_grant(data: &[u8]) -> bool {
    signed::<UploadGrant>(data).is_some()
}

/// A signed file certificate (from a peer, the API, or a node's store); also the
/// unsigned body the API proposes to its client for signing (postcard, no envelope).
pub fn file_certificate(data: &[u8]) -> bool {
    let proposed = postcard_round_trip::<FileCertificate>(data).is_some();
    let Some(certificate) = signed::<FileCertificate>(data) else {
        return proposed;
    };
    let _ = certificate.body.check_time(u64::MAX);
    true
}

/// A signed store receipt (a `Stored` answer's `receipt`).
pub fn store_receipt(data: &[u8]) -> bool {
    signed::<StoreReceipt>(data).is_some()
}

/// A signed reclaim certificate (a reclaim, a forget, a tombstone).
pub fn reclaim_certificate(data: &[u8]) -> bool {
    signed::<ReclaimCertificate>(data).is_some()
}

/// A signed root record (from a peer, the API, or a node's store).
pub fn root_record(data: &[u8]) -> bool {
    signed::<RootRecord>(data).is_some()
}

/// An encoded manifest: one that decodes is exactly its canonical encoding.
pub fn manifest(data: &[u8]) -> bool {
    let Ok(manifest) = Manifest::decode(data) else {
        return false;
    };
    match manifest.encode() {
        Ok(encoded) => assert_eq!(
            encoded.bytes, data,
            "a decoded manifest re-encodes differently"
        ),
        Err(e) => panic!("a decoded manifest does not encode: {e}"),
    }
    true
}

/// A decoded manifest block (the manifest, then the erasure padding) as a get reads
/// it. The first two bytes choose `k` and `m`; the expected hash is the hash of the
/// rest without its trailing zero bytes, so that well-formed blocks can succeed.
pub fn manifest_block(data: &[u8]) -> bool {
    let [k, m, padded @ ..] = data else {
        return false;
    };
    let Ok(params) = ErasureParams::new(u16::from(*k), u16::from(*m)) else {
        return false;
    };
    let unpadded = padded.len() - padded.iter().rev().take_while(|&&b| b == 0).count();
    let expected = ManifestHash(Id::hash(&padded[..unpadded]));
    let Ok(manifest) = Manifest::from_block(padded, &expected, params) else {
        return false;
    };
    match manifest.encode() {
        Ok(encoded) => assert_eq!(
            encoded.hash, expected,
            "a manifest read from a block hashes differently"
        ),
        Err(e) => panic!("a manifest read from a block does not encode: {e}"),
    }
    true
}

/// Fragments offered for one block, rebuilt by the erasure decoder as a get does.
/// The fragment hashes are those of the bytes given here, as a hostile owner's
/// manifest could make them, so every fragment offered verifies whatever its length.
///
/// Layout: `k`, `m` (each modulo 9), a flags byte (bit 0: the block's length is known,
/// from the next two bytes, big-endian), then fragments, each `index`, `size` and
/// `size & 0x7f` bytes; with `size & 0x80` the bytes only name the fragment's hash and
/// its holder has none to offer. The block hash is that of the data fragments' bytes
/// in index order, cut to the length.
pub fn erasure_block(data: &[u8]) -> bool {
    let [k, m, flags, rest @ ..] = data else {
        return false;
    };
    let Ok(params) = ErasureParams::new(u16::from(k % 9), u16::from(m % 9)) else {
        return false;
    };
    let Ok(codec) = Codec::new(params) else {
        return false;
    };
    let (len, mut rest) = match (flags & 1, rest) {
        (1, [high, low, rest @ ..]) => (Some(usize::from(u16::from_be_bytes([*high, *low]))), rest),
        (1, _) => return false,
        _ => (None, rest),
    };
    let mut named: Vec<(u16, &[u8])> = Vec::new();
    let mut offers = Vec::new();
    // Bounded: each fragment consumes at least two bytes.
    while let [index, size, after @ ..] = rest {
        let index = u16::from(*index);
        let (bytes, after) = after.split_at(usize::from(size & 0x7f).min(after.len()));
        named.push((index, bytes));
        offers.push((
            index,
            if size & 0x80 == 0 {
                Offer::Fragment(Fragment {
                    index,
                    bytes: bytes.to_vec(),
                })
            } else {
                Offer::Missing
            },
        ));
        rest = after;
    }
    let bytes_of = |i: u16| {
        named
            .iter()
            .find(|(index, _)| *index == i)
            .map_or(&[][..], |(_, bytes)| *bytes)
    };
    let hashes: Vec<FragmentHash> = (0..params.n())
        .map(|i| fragment_hash(i, bytes_of(i)))
        .collect();
    let mut block: Vec<u8> = (0..params.k()).flat_map(|i| bytes_of(i).to_vec()).collect();
    block.truncate(len.unwrap_or(block.len()));
    let spec = BlockSpec {
        hash: BlockHash(Id::hash(&block)),
        len,
        fragment_hashes: &hashes,
    };
    let Ok((decoded, stats)) = codec.decode(&spec, offers) else {
        return false;
    };
    assert_eq!(
        stats.used,
        u32::from(params.k()),
        "a block rebuilt from other than k fragments"
    );
    if let Some(len) = len {
        assert_eq!(
            decoded.len(),
            len,
            "a rebuilt block of another length than its spec"
        );
    }
    true
}

/// A directory file of a mounted volume (fetched from the network).
pub fn directory(data: &[u8]) -> bool {
    let Ok(directory) = Directory::decode(data) else {
        return false;
    };
    let encoded = directory.encode();
    assert!(
        encoded.len() <= data.len(),
        "a directory's re-encoding grew from {} to {} bytes",
        data.len(),
        encoded.len()
    );
    match Directory::decode(&encoded) {
        Ok(again) => assert_eq!(
            again, directory,
            "a re-encoded directory decodes differently"
        ),
        Err(e) => panic!("a re-encoded directory does not decode: {e}"),
    }
    true
}

/// The records of a node's disk store (`cairn_store::DiskStore`): the first byte
/// chooses the decoder (modulo 9: fragment key, reference key, fragment record,
/// pointer, body file name, certificate, tombstone or root, charge key, charge
/// record), the rest is its input. A record that decodes encodes back to
/// exactly its bytes (the store writes only canonical records and reads what it
/// wrote, so anything else is corruption it must notice).
pub fn disk_records(data: &[u8]) -> bool {
    let [selector, record @ ..] = data else {
        return false;
    };
    match selector % 9 {
        7 => disk_records::decode_charge_key(record).is_ok_and(|cursor| {
            let key = disk_records::charge_key(&cursor.key, cursor.index, &cursor.owner);
            assert_eq!(key, record);
            true
        }),
        8 => {
            let owner = OwnerKey(Id([7; 32]));
            disk_records::decode_charge(owner, record).is_ok_and(|charge| {
                let payload = disk_records::encode_charge(&charge);
                assert_eq!([&[record[0]][..], &payload].concat(), record);
                true
            })
        }
        0 => disk_records::decode_fragment_key(record).is_ok_and(|(key, index)| {
            assert_eq!(disk_records::fragment_key(&key, index), record);
            true
        }),
        1 => disk_records::decode_reference_key(record).is_ok_and(|file| {
            let key = record.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok());
            let key = key.map(|bytes| PlacementKey(Id(bytes)));
            assert_eq!(
                key.map(|key| disk_records::reference_key(&key, &file))
                    .as_deref(),
                Some(record)
            );
            true
        }),
        2 => disk_records::decode_fragment_record(0, record).is_ok_and(|info| {
            assert_eq!(disk_records::encode_fragment_record(&info), record);
            true
        }),
        3 => {
            // A pointer: version, then the holder's node id.
            let Ok(payload) = disk_records::strip_version(record) else {
                return false;
            };
            disk_records::decode_node(payload).is_ok_and(|node| {
                assert_eq!(node.as_bytes(), payload);
                true
            })
        }
        4 => {
            let Ok(name) = std::str::from_utf8(record) else {
                return false;
            };
            disk_records::parse_body_name(name).is_some_and(|(key, index, hash)| {
                assert_eq!(
                    disk_records::body_name(&key, index, &hash),
                    name,
                    "a body file name that parses is not the name of what it parses to"
                );
                true
            })
        }
        small @ 5..=6 => {
            // Certificates, root records and tombstones: version, then signed bytes.
            let Ok(payload) = disk_records::strip_version(record) else {
                return false;
            };
            if small == 5 {
                file_certificate(payload)
            } else {
                reclaim_certificate(payload) | root_record(payload)
            }
        }
        _ => false,
    }
}

/// Text a user types or the API carries: references (`cairn:f:…`, `cairn:v:…`), bare
/// ids, and hex (signed values in API headers).
pub fn reference(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let mut decoded = false;
    if let Ok(reference) = text.parse::<Reference>() {
        assert_eq!(reference.to_string().parse::<Reference>(), Ok(reference));
        decoded = true;
    }
    if let Ok(id) = text.parse::<Id>() {
        assert_eq!(id.to_string(), text.to_ascii_lowercase());
        decoded = true;
    }
    if let Ok(file) = text.parse::<FileId>() {
        assert_eq!(file.to_string(), text.to_ascii_lowercase());
    }
    if let Some(bytes) = cairn_api::decode_hex(text) {
        assert_eq!(
            cairn_api::encode_hex(&bytes),
            text.trim().to_ascii_lowercase(),
            "hex that decodes is not the hex of what it decodes to"
        );
        decoded = true;
    }
    decoded
}

/// The largest frame the frame targets accept: the transport's default. Fuzz inputs
/// are far smaller; the limit matters for the length prefixes they announce.
fn max_frame_bytes() -> usize {
    cairn_net::NetConfig::default().max_frame_bytes
}

/// Decodes a `T` as postcard (as a frame's message is decoded); where it decodes, its
/// re-encoding must decode to the same value and be no longer than what was read.
fn postcard_round_trip<T>(data: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let (value, rest) = postcard::take_from_bytes::<T>(data).ok()?;
    let read = data.len() - rest.len();
    let encoded = match postcard::to_stdvec(&value) {
        Ok(encoded) => encoded,
        Err(e) => panic!("a decoded message does not encode: {e}"),
    };
    assert!(
        encoded.len() <= read,
        "re-encoding grew a message from {read} to {} bytes",
        encoded.len()
    );
    match postcard::from_bytes::<T>(&encoded) {
        Ok(again) => assert_eq!(again, value, "a re-encoded message decodes differently"),
        Err(e) => panic!("a re-encoded message does not decode: {e}"),
    }
    Some(value)
}

/// Reads a signed `T`; one that reads must re-encode to exactly `data`, and checking
/// its signature must not panic.
fn signed<T>(data: &[u8]) -> Option<Signed<T>>
where
    T: Certificate + PartialEq + Debug,
{
    let signed = Signed::<T>::from_bytes(data).ok()?;
    match signed.to_bytes() {
        Ok(bytes) => assert_eq!(
            bytes, data,
            "a signed value read from bytes re-encodes differently"
        ),
        Err(e) => panic!("a signed value read from bytes does not encode: {e}"),
    }
    let _ = signed.verify();
    Some(signed)
}
