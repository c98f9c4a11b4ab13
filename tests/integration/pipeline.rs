//! End-to-end tests of the client pipeline (`cairn_pipeline`) over the in-memory
//! store: round trips at boundary sizes, lost and damaged fragments worked around and
//! reported, too many lost fragments reported clearly, forged certificates refused;
//! and the split put under an upload grant, over the disk store, as a node runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Write};

use cairn_core::crypto::{KeyPair, Signed, VerifyError};
use cairn_core::erasure::{DecodeError, ErasureParams, SkipReason};
use cairn_core::id::{FileId, Id, PlacementKey};
use cairn_core::manifest::{DEFAULT_SEGMENT_SIZE, manifest_placement_key};
use cairn_pipeline::{
    BlockRetry, FragmentSource, GetError, GetOptions, GetStats, GetTarget, MemoryFragments,
    PutOptions, PutReceipt, get, put,
};

const SEGMENT: usize = DEFAULT_SEGMENT_SIZE as usize;

/// File sizes at the edges of the block layout, and one large file.
const BOUNDARY_SIZES: [usize; 6] = [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 100 << 20];

/// Sizes that are cheap enough to run every damage pattern on.
fn small_sizes() -> impl Iterator<Item = usize> {
    BOUNDARY_SIZES
        .into_iter()
        .filter(|&size| size <= SEGMENT + 1)
}

const NOW: u64 = 1_700_000_000;

fn params() -> ErasureParams {
    ErasureParams::new(4, 2).unwrap()
}

/// Deterministic pseudo-random bytes.
fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    cairn_core::rng::Rng::new(seed).bytes(len)
}

/// A writer that checks what it is given against the expected bytes as they come, so
/// a 100 MiB get needs no second copy of the file.
struct Expect<'a> {
    expected: &'a [u8],
    written: usize,
}

impl Write for Expect<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let end = self.written + buf.len();
        if self.expected.get(self.written..end) != Some(buf) {
            return Err(io::Error::other(format!(
                "bytes differ in {}..{end}",
                self.written
            )));
        }
        self.written = end;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Stored {
    store: MemoryFragments,
    receipt: PutReceipt,
    owner: KeyPair,
}

impl Stored {
    fn new(input: &[u8]) -> Stored {
        let store = MemoryFragments::new();
        let owner = KeyPair::generate();
        let options = PutOptions::new(params(), NOW);
        let receipt = put(input, b"file.bin", &owner, &options, &store).unwrap();
        Stored {
            store,
            receipt,
            owner,
        }
    }

    /// Every block's placement key, the manifest block's last.
    fn keys(&self) -> Vec<PlacementKey> {
        let mut keys: Vec<_> = self
            .receipt
            .manifest
            .blocks
            .iter()
            .map(|b| b.placement_key())
            .collect();
        let cert = &self.receipt.certificate.body;
        keys.push(manifest_placement_key(
            &cert.manifest_hash,
            cert.manifest_salt,
        ));
        keys
    }

    fn get(&self, expected: &[u8]) -> Result<GetStats, GetError> {
        let mut out = Expect {
            expected,
            written: 0,
        };
        let options = GetOptions {
            now: NOW + 1,
            expected_owner: Some(self.owner.public_key()),
            range: None,
            retry: BlockRetry::NEVER,
        };
        let stats = get(
            GetTarget::File(self.receipt.file_id()),
            &mut out,
            &self.store,
            &options,
        )?;
        assert_eq!(out.written, expected.len(), "the whole file was written");
        Ok(stats)
    }
}

/// Every way to choose `m` of `n` indices.
fn subsets(n: u16, m: u16) -> Vec<Vec<u16>> {
    (0u32..1 << n)
        .filter(|mask| mask.count_ones() == u32::from(m))
        .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn boundary_sizes_round_trip() {
    for (seed, size) in BOUNDARY_SIZES.into_iter().enumerate() {
        let input = file_bytes(size, seed as u64);
        let stored = Stored::new(&input);
        let blocks = size.div_ceil(SEGMENT);
        assert_eq!(stored.receipt.manifest.blocks.len(), blocks, "size {size}");
        assert_eq!(stored.receipt.certificate.body.size, size as u64);
        let stats = stored.get(&input).unwrap();
        assert_eq!(stats.bytes, size as u64);
        assert_eq!(stats.blocks, blocks as u64);
        assert_eq!(stats.skipped_total(), 0);
        assert_eq!(
            stats.fragments_used,
            4 * (blocks as u64 + 1),
            "k per block and manifest"
        );
    }
}

#[test]
fn any_m_lost_fragments_of_every_block_are_tolerated() {
    for (seed, size) in small_sizes().enumerate() {
        let input = file_bytes(size, 100 + seed as u64);
        for lost in subsets(6, 2) {
            let stored = Stored::new(&input);
            for key in stored.keys() {
                for &index in &lost {
                    assert!(stored.store.delete(&key, index));
                }
            }
            let stats = stored
                .get(&input)
                .unwrap_or_else(|e| panic!("size {size}, lost {lost:?}: {e}"));
            let blocks = stored.keys().len() as u64;
            // Fragments are asked for in index order until k are good, so a lost parity
            // fragment is noticed only when it is reached.
            let mut good = 0;
            let mut seen_lost = 0u64;
            for index in 0..6u16 {
                if good == 4 {
                    break;
                }
                if lost.contains(&index) {
                    seen_lost += 1;
                } else {
                    good += 1;
                }
            }
            assert_eq!(
                stats.skipped_missing,
                blocks * seen_lost,
                "size {size}, lost {lost:?}"
            );
            assert_eq!(stats.skipped_corrupt + stats.skipped_unavailable, 0);
        }
    }
}

#[test]
fn different_losses_per_block_are_tolerated() {
    // The large file: one pattern, different in every block.
    let size = BOUNDARY_SIZES[5];
    let input = file_bytes(size, 7);
    let stored = Stored::new(&input);
    let patterns = subsets(6, 2);
    for (i, key) in stored.keys().iter().enumerate() {
        for &index in &patterns[i % patterns.len()] {
            assert!(stored.store.delete(key, index));
        }
    }
    let stats = stored.get(&input).unwrap();
    assert_eq!(stats.bytes, size as u64);
    assert!(stats.skipped_missing > 0);
    assert_eq!(stats.skipped_corrupt, 0);
}

/// Damages fragments 0 and 3 (data, so parity must be used) of every block in one of
/// the ways a bad holder can, and returns the reason the get must give.
fn damage(store: &MemoryFragments, key: &PlacementKey, how: usize) {
    match how {
        0 => {
            assert!(store.flip_bit(key, 0, 12345));
            assert!(store.tamper(key, 3, |f| {
                f.bytes.pop();
            }));
        }
        1 => assert!(store.swap(key, 0, 3)),
        2 => {
            // Bytes of fragment 3 relabelled as fragment 0 (and an empty fragment 3).
            let bytes = store.get_fragment(key, 3).unwrap().unwrap().bytes;
            assert!(store.tamper(key, 0, |f| f.bytes = bytes));
            assert!(store.truncate(key, 3, 0));
        }
        _ => {
            store.fail(key, 0);
            assert!(store.flip_bit(key, 3, 0));
        }
    }
}

#[test]
fn corrupt_fragments_are_detected_and_skipped() {
    for (seed, size) in small_sizes().enumerate() {
        let input = file_bytes(size, 200 + seed as u64);
        for how in 0..4 {
            let stored = Stored::new(&input);
            let keys = stored.keys();
            for key in &keys {
                damage(&stored.store, key, how);
            }
            let stats = stored
                .get(&input)
                .unwrap_or_else(|e| panic!("size {size}, damage {how}: {e}"));
            let blocks = keys.len() as u64;
            let (corrupt, unavailable) = if how == 3 { (1, 1) } else { (2, 0) };
            assert_eq!(
                stats.skipped_corrupt,
                blocks * corrupt,
                "size {size}, damage {how}"
            );
            assert_eq!(stats.skipped_unavailable, blocks * unavailable);
            assert_eq!(stats.skipped_missing, 0);
            assert_eq!(stats.fragments_used, blocks * 4);
            assert!(stats.skipped.iter().all(|s| s.index == 0 || s.index == 3));
            if how == 1 {
                let wrong_index = stats
                    .skipped
                    .iter()
                    .all(|s| matches!(&s.reason, SkipReason::Corrupt(c) if c.to_string().contains("claiming index")));
                assert!(
                    wrong_index,
                    "a swapped fragment is reported as the wrong index"
                );
            }
        }
    }
}

#[test]
fn corruption_in_a_large_file_is_worked_around() {
    let size = BOUNDARY_SIZES[5];
    let input = file_bytes(size, 8);
    let stored = Stored::new(&input);
    let keys = stored.keys();
    for (i, key) in keys.iter().enumerate() {
        damage(&stored.store, key, i % 4);
    }
    let stats = stored.get(&input).unwrap();
    assert_eq!(stats.bytes, size as u64);
    assert_eq!(stats.skipped_total(), 2 * keys.len() as u64);
}

#[test]
fn m_plus_one_lost_fragments_fail_clearly() {
    for (seed, size) in BOUNDARY_SIZES.into_iter().enumerate() {
        let input = file_bytes(size, 300 + seed as u64);
        let stored = Stored::new(&input);
        let keys = stored.keys();
        // The last file block, or the manifest block for an empty file.
        let victim = if keys.len() > 1 { keys.len() - 2 } else { 0 };
        for index in [1, 4, 5] {
            assert!(stored.store.delete(&keys[victim], index));
        }
        let mut sink = Vec::new();
        let err = get(
            GetTarget::File(stored.receipt.file_id()),
            &mut sink,
            &stored.store,
            &GetOptions::new(NOW),
        )
        .unwrap_err();
        let source = match &err {
            GetError::Block {
                position, source, ..
            } => {
                assert_eq!(*position as usize, victim, "size {size}");
                source
            }
            GetError::ManifestUnavailable { source, .. } => {
                assert_eq!(size, 0);
                source
            }
            other => panic!("size {size}: unexpected {other}"),
        };
        let DecodeError::NotEnoughFragments {
            needed,
            good,
            missing,
            corrupt,
            ..
        } = **source
        else {
            panic!("size {size}: {source}");
        };
        assert_eq!(
            (needed, good, missing, corrupt),
            (4, 3, 3, 0),
            "size {size}"
        );
        assert!(
            source
                .to_string()
                .contains("needed 4 good fragments, found 3 (3 missing, 0 corrupt"),
            "{source}"
        );
    }
}

#[test]
fn forged_or_tampered_certificates_are_refused() {
    let input = file_bytes(5000, 9);
    let stored = Stored::new(&input);
    let file = stored.receipt.file_id();
    let original = stored.receipt.certificate.clone();
    let get_file = |options: &GetOptions| {
        get(GetTarget::File(file), Vec::new(), &stored.store, options).map(|_| ())
    };

    // Signed by someone else than the owner it names.
    let mallory = KeyPair::generate();
    let forged = Signed::sign(&mallory, original.body.clone()).unwrap();
    stored.store.replace_certificate(forged);
    let err = get_file(&GetOptions::new(NOW)).unwrap_err();
    assert!(
        matches!(
            &err,
            GetError::CertificateInvalid {
                source: VerifyError::WrongKey { .. },
                ..
            }
        ),
        "{err}"
    );

    // Changed after signing.
    let mut tampered = original.clone();
    tampered.body.size += 1;
    stored.store.replace_certificate(tampered);
    let err = get_file(&GetOptions::new(NOW)).unwrap_err();
    assert!(
        matches!(
            &err,
            GetError::CertificateInvalid {
                source: VerifyError::BadSignature { .. },
                ..
            }
        ),
        "{err}"
    );

    // Validly self-signed by another owner for the same file id: the file id is not
    // derived from that owner's key, so it is refused even when the reader does not
    // name the owner...
    let mut body = original.body.clone();
    body.owner = mallory.public_key();
    stored
        .store
        .replace_certificate(Signed::sign(&mallory, body).unwrap());
    let err = get_file(&GetOptions::new(NOW)).unwrap_err();
    assert!(
        matches!(
            &err,
            GetError::CertificateInvalid {
                source: VerifyError::ForeignFileId { .. },
                ..
            }
        ),
        "{err}"
    );
    // ...and a reader who names the owner refuses a certificate of someone else.
    let strict = GetOptions {
        now: NOW,
        expected_owner: Some(stored.owner.public_key()),
        range: None,
        retry: BlockRetry::NEVER,
    };
    assert!(get_file(&strict).is_err());
    let other = GetOptions {
        now: NOW,
        expected_owner: Some(mallory.public_key()),
        range: None,
        retry: BlockRetry::NEVER,
    };
    stored.store.replace_certificate(original.clone());
    assert!(matches!(
        get_file(&other).unwrap_err(),
        GetError::WrongOwner { .. }
    ));

    // The real one still works; an unknown file is reported as such.
    stored.store.replace_certificate(original);
    get_file(&strict).unwrap();
    let unknown = FileId(Id::hash(b"nothing"));
    assert!(matches!(
        get(GetTarget::File(unknown), Vec::new(), &stored.store, &strict),
        Err(GetError::CertificateNotFound { .. })
    ));
}

#[test]
fn other_parameters_round_trip() {
    for (k, m) in [(1, 0), (1, 3), (10, 4), (3, 1)] {
        let params = ErasureParams::new(k, m).unwrap();
        let input = file_bytes(SEGMENT * 2 + 12345, u64::from(k * 16 + m));
        let store = MemoryFragments::new();
        let owner = KeyPair::generate();
        let mut options = PutOptions::new(params, NOW);
        options.segment_size = 64 << 10;
        let receipt = put(&input[..], b"p", &owner, &options, &store).unwrap();
        assert_eq!(
            store.fragment_count(),
            usize::from(k + m) * (receipt.manifest.blocks.len() + 1)
        );
        let mut out = Vec::new();
        get(
            GetTarget::Certificate(&receipt.certificate),
            &mut out,
            &store,
            &GetOptions::new(NOW),
        )
        .unwrap();
        assert_eq!(out, input, "{params}");
    }
}

/// The put as it will run on the network: the owner signs an upload grant, the node
/// checks it and stores the blocks (recording block references), the owner signs the
/// certificate the node returns, the node stores it. Over a disk store, read back
/// after a reopen; then a reclaimed file id is refused.
#[test]
fn a_split_put_under_an_upload_grant_round_trips_through_the_disk_store() {
    use cairn_core::crypto::UploadGrant;
    use cairn_pipeline::{FileIdentity, LocalFragments, finish_put, put_unsigned};
    use cairn_store::{DiskStore, NodeStore, StoreError};

    let dir = tempfile::tempdir().unwrap();
    let owner = KeyPair::from_secret_bytes(&[21; 32]);
    let input = file_bytes(2 * SEGMENT + 12_345, 21);
    let now = 1_700_000_000;
    let options = PutOptions::new(params(), now);

    // Owner side: a grant for ten minutes.
    let grant = Signed::sign(
        &owner,
        UploadGrant::new(b"video.mkv", 0, owner.public_key(), now, 600),
    )
    .unwrap();
    let file = {
        let store = LocalFragments(DiskStore::open(dir.path(), 1 << 30).unwrap());
        // Node side: only a valid, unexpired grant lets the put in.
        let granted = grant.verify().unwrap();
        granted.check_time(now + 1).unwrap();
        let identity = FileIdentity::from(granted);
        let unsigned = put_unsigned(&input[..], &identity, &options, &store).unwrap();
        for block in &unsigned.manifest.blocks {
            store
                .0
                .add_reference(&block.placement_key(), &identity.file_id)
                .unwrap();
        }
        // Owner side: sign what the node says it stored.
        let certificate = Signed::sign(&owner, unsigned.certificate.clone()).unwrap();
        let receipt = finish_put(unsigned, certificate, &store).unwrap();
        assert_eq!(receipt.file_id(), grant.body.file_id);
        assert_eq!(receipt.manifest.blocks.len(), 3);
        receipt.file_id()
    };

    let store = LocalFragments(DiskStore::open(dir.path(), 1 << 30).unwrap());
    let mut out = Vec::new();
    get(
        GetTarget::File(file),
        &mut out,
        &store,
        &GetOptions {
            now: now + 2,
            expected_owner: Some(owner.public_key()),
            range: None,
            retry: BlockRetry::NEVER,
        },
    )
    .unwrap();
    assert_eq!(out, input);
    let certificate = store.get_certificate(&file).unwrap().unwrap();

    // Reclaimed: the same file id cannot be certified again.
    store
        .0
        .put_tombstone(&file, b"reclaim certificate")
        .unwrap();
    assert!(store.0.delete_certificate(&file).unwrap());
    let identity = FileIdentity::from(&grant.body);
    let unsigned = put_unsigned(&input[..], &identity, &options, &store).unwrap();
    let err = finish_put(unsigned, certificate, &store).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("was reclaimed"), "{chain}");
    assert!(matches!(
        store
            .0
            .add_reference(&PlacementKey(Id::hash(b"any")), &file),
        Err(StoreError::Reclaimed { .. })
    ));
}
