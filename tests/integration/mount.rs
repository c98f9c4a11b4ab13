//! The FUSE mount over a real network of nodes on loopback (in this process): big and
//! tiny files through the mount and back, nodes that serve tampered fragments, and a
//! seeded random workload checked against a plain directory, over the network and over
//! the in-memory backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::crypto::KeyPair;
use cairn_core::id::Reference;
use cairn_core::rng::Rng;
use cairn_fs_mount::{ApiBackend, Backend, MemoryBackend, MountConfig, MountHandle, mount};
use cairn_testkit::Cluster;
use cairn_testkit::fixtures::{owner, put};
use cairn_tests::fs_workload;
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;

/// Mounts `backend` at `point`, the volume of `owner(key_seed)` writable.
fn mount_backend(backend: Arc<dyn Backend>, key_seed: u8, point: &Path) -> MountHandle {
    let config = MountConfig {
        refresh: Duration::from_secs(1),
        ..MountConfig::default()
    };
    mount(backend, vec![owner(key_seed)], point, config).unwrap()
}

/// Mounts the network through node 0's API, the volume of `owner(key_seed)` writable.
fn mount_network(cluster: &mut Cluster, key_seed: u8, point: &Path) -> MountHandle {
    mount_backend(Arc::new(ApiBackend::new(cluster.api(0))), key_seed, point)
}

fn volume_name(key: &KeyPair) -> String {
    Reference::Volume(key.public_key().volume_key()).to_string()
}

/// Writes `len` seeded bytes to `path` in 1 MiB writes, fsyncs; returns their SHA-256.
fn write_seeded(path: &Path, len: u64, seed: u64) -> [u8; 32] {
    let mut rng = Rng::new(seed);
    let mut file = File::create(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
    hasher.finalize().into()
}

fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hasher.finalize().into()));
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
}

#[test]
fn files_from_empty_to_256_mib_go_through_a_mount_and_come_back_byte_equal_and_refs_read_a_put() {
    let mut cluster = Cluster::builder(6).capacity(4 * GIB).start();
    const KEY: u8 = 21;
    let key = owner(KEY);
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let sizes: [u64; 5] = [0, 1, 4096, (3 << 20) + 17, 256 << 20];
    let mut digests = Vec::new();
    {
        let mount = mount_network(&mut cluster, KEY, &point);
        let volume = point.join(volume_name(&key));
        for (i, size) in sizes.iter().enumerate() {
            digests.push(write_seeded(&volume.join(format!("f{i}")), *size, i as u64));
        }
        mount.unmount();
    }
    // A file stored with a plain put, to be read by reference.
    let stored = Rng::new(30).bytes((1 << 20) + 3);
    let reference = Reference::File(put(&cluster.api(0), &owner(31), &stored, 1)).to_string();
    // A fresh mount: nothing comes from the first one's memory.
    let mount = mount_network(&mut cluster, KEY, &point);
    let by_reference = point.join(".refs").join(&reference);
    assert_eq!(
        std::fs::metadata(&by_reference).unwrap().len(),
        stored.len() as u64
    );
    assert_eq!(std::fs::read(&by_reference).unwrap(), stored);
    let volume = point.join(volume_name(&key));
    for (i, size) in sizes.iter().enumerate() {
        let path = volume.join(format!("f{i}"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), *size);
        assert_eq!(
            hash_file(&path).unwrap(),
            (*size, digests[i]),
            "file {i} of {size} bytes"
        );
    }
    mount.unmount();
}

#[test]
fn nodes_serving_tampered_fragments_give_other_holders_bytes_or_eio_never_wrong_bytes() {
    let mut cluster = Cluster::start(6);
    const KEY: u8 = 22;
    let key = owner(KEY);
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    std::fs::create_dir(&point).unwrap();
    let len = (2 << 20) + 999;
    let digest = {
        let mount = mount_network(&mut cluster, KEY, &point);
        let volume = point.join(volume_name(&key));
        let digest = write_seeded(&volume.join("data"), len, 5);
        write_seeded(&volume.join("unread"), len, 6);
        mount.unmount();
        digest
    };
    // Two of six nodes flip bits in what they serve (4+2: any 4 good fragments do).
    cluster.node(1).tamper_with_served_fragments(true);
    cluster.node(2).tamper_with_served_fragments(true);
    let mount = mount_network(&mut cluster, KEY, &point);
    let volume = point.join(volume_name(&key));
    assert_eq!(hash_file(&volume.join("data")).unwrap(), (len, digest));
    // Then every other node lies too: no block of the file not yet read can be
    // verified (the mount holds the directory already), and the read fails with EIO.
    for i in 3..6 {
        cluster.node(i).tamper_with_served_fragments(true);
    }
    let error = hash_file(&volume.join("unread")).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(5), "EIO expected, got {error}");
    mount.unmount();
}

/// The workload on a mount of `backend`, then a fresh mount must hold what the plain
/// directory holds (everything was published).
fn random_operations_match_a_plain_directory(backend: Arc<dyn Backend>, seed: u64, ops: usize) {
    const KEY: u8 = 23;
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("mnt");
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&point).unwrap();
    std::fs::create_dir(&plain).unwrap();
    let volume = point.join(volume_name(&owner(KEY)));
    {
        let mount = mount_backend(Arc::clone(&backend), KEY, &point);
        fs_workload::run(&volume, &plain, seed, ops);
        mount.unmount();
    }
    let mount = mount_backend(backend, KEY, &point);
    assert_eq!(
        fs_workload::snapshot(&volume),
        fs_workload::snapshot(&plain),
        "seed {seed}: a fresh mount differs from the plain directory"
    );
    mount.unmount();
}

#[test]
fn random_operations_over_memory_match_a_plain_directory() {
    let seed = fs_workload::seed(1);
    random_operations_match_a_plain_directory(Arc::new(MemoryBackend::new()), seed, 2500);
}

#[test]
fn random_operations_over_the_network_match_a_plain_directory() {
    let mut cluster = Cluster::start(6);
    let seed = fs_workload::seed(2);
    let backend = Arc::new(ApiBackend::new(cluster.api(0)));
    random_operations_match_a_plain_directory(backend, seed, 400);
}
