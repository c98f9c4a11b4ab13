//! Micro benchmarks of the primitives every put and get pays for: SHA-256 and
//! ed25519 (erasure coding and the whole pipeline are in `pipeline.rs`).
//!
//! `cargo bench -p cairn-benches --bench micro`
//!
//! SHA-NI: sha2 0.10 picks its SHA-NI back end at run time (cpufeatures) when the CPU
//! has it; the software path is ~5x slower on this machine. The figure printed
//! beside the hash rate says which one ran: above ~1 GB/s is only reachable with
//! SHA-NI.

use std::hint::black_box;

use cairn_benches::{machine_note, measure, quick, test_bytes};
use cairn_core::crypto::{FileCertificate, KeyPair, Signed};
use cairn_core::id::{FileId, FragmentHash, Id, ManifestHash};
use ed25519_dalek::{Signer, SigningKey, Verifier};
use sha2::{Digest, Sha256};

fn main() {
    println!("{}", machine_note());
    let reps = if quick() { 5 } else { 41 };

    for (label, size) in [
        ("64 KiB", 64 << 10),
        ("1 MiB", 1 << 20),
        ("16 MiB", 16 << 20),
    ] {
        let data = test_bytes(size, 1);
        let m = measure(&format!("sha256 {label}"), size as u64, 1, reps, || {
            Sha256::digest(&data)
        });
        let verdict = if m.mb_per_s() > 1000.0 {
            "SHA-NI in use"
        } else {
            "software SHA-256?"
        };
        println!("  -> {verdict}");
    }

    let signing = SigningKey::from_bytes(&[7; 32]);
    let message = test_bytes(200, 2);
    let batch = 1000;
    measure("ed25519 sign (200-byte message)", 0, batch, reps, || {
        for _ in 0..batch {
            black_box(signing.sign(&message));
        }
    });
    let signature = signing.sign(&message);
    let verifying = signing.verifying_key();
    measure("ed25519 verify (200-byte message)", 0, batch, reps, || {
        (0..batch).all(|_| verifying.verify(&message, &signature).is_ok())
    });

    // A whole file certificate: encode + sign, and decode + verify, as a node does.
    let owner = KeyPair::from_secret_bytes(&[9; 32]);
    let certificate = FileCertificate {
        file_id: FileId::derive(b"bench", &owner.public_key().0, 0),
        name_digest: Id::hash(b"bench"),
        name_salt: 0,
        manifest_hash: ManifestHash(Id::hash(b"m")),
        manifest_salt: 0,
        manifest_fragments: (0..6u8).map(|i| FragmentHash(Id::hash(&[i]))).collect(),
        size: 1 << 30,
        k: 4,
        m: 2,
        created_at: 1_700_000_000,
        expires_at: None,
        owner: owner.public_key(),
    };
    measure("file certificate sign + encode", 0, batch, reps, || {
        for _ in 0..batch {
            black_box(Signed::sign(&owner, certificate.clone()).and_then(|s| s.to_bytes())).ok();
        }
    });
    let bytes = Signed::sign(&owner, certificate.clone()).and_then(|s| s.to_bytes());
    let Ok(bytes) = bytes else {
        eprintln!("cannot encode a certificate: {bytes:?}");
        std::process::exit(1);
    };
    measure("file certificate decode + verify", 0, batch, reps, || {
        (0..batch)
            .filter(|_| {
                Signed::<FileCertificate>::from_bytes(&bytes).is_ok_and(|s| s.verify().is_ok())
            })
            .count()
    });
}
