//! `cairn volume` and `cairn mount` end to end, as a newcomer uses them: a devnet, a
//! volume, a mount process, ordinary file operations, `cairn umount`, and a mount
//! process killed with SIGKILL whose mount point the next mount recovers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_testkit::fixtures::bytes;
use cairn_testkit::wait_until;

use crate::common::{cairn, devnet, ok, start};

/// A mount point detached on drop, whatever the test did (a killed mount process
/// leaves its mount behind; this never does).
struct MountPoint(PathBuf);

impl Drop for MountPoint {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_newcomer_creates_a_volume_mounts_it_and_copies_a_tree_in_and_out() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let devnet = devnet(&home, &tmp.path().join("devnet"), 6);
    let api = devnet.api.clone();
    let api_args = ["--api", api.as_str()];

    let created = ok(&home, &[&["volume", "create"][..], &api_args].concat());
    let volume = created
        .split_whitespace()
        .find(|w| w.starts_with("cairn:v:"))
        .unwrap_or_else(|| panic!("`cairn volume create` printed no reference: {created}"))
        .to_string();
    let listed = ok(&home, &[&["volume", "ls"][..], &api_args].concat());
    assert!(
        listed.contains(&volume),
        "`cairn volume ls` does not list {volume}: {listed}"
    );

    // A tree on local disk: empty, one byte, several blocks, a nested directory.
    let source = tmp.path().join("source");
    std::fs::create_dir_all(source.join("a/b/c")).unwrap();
    std::fs::write(source.join("empty"), b"").unwrap();
    std::fs::write(source.join("one"), b"x").unwrap();
    let big = bytes((3 << 20) + 4321, 9);
    std::fs::write(source.join("a/b/c/big.bin"), &big).unwrap();
    std::fs::write(source.join("a/note.txt"), b"hello, cairn\n").unwrap();

    let point = tmp.path().join("mnt");
    std::fs::create_dir_all(&point).unwrap();
    let _detach = MountPoint(point.clone());
    let point_arg = point.to_str().unwrap();
    let (mut mount, _) = start(
        &home,
        &[&["mount", point_arg][..], &api_args].concat(),
        "mounted",
    );
    let top: Vec<String> = std::fs::read_dir(&point)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        top.contains(&volume),
        "the mount's top level {top:?} lacks {volume}"
    );
    let root = point.join(&volume);
    // statfs (`df`) shows the network's capacity: six equal nodes, all in the API
    // node's leaf set, so the estimate is exact.
    let status: serde_json::Value =
        serde_json::from_str(&ok(&home, &[&["status", "--json"][..], &api_args].concat())).unwrap();
    let node_capacity = status["capacity"].as_u64().unwrap();
    let df = Command::new("stat")
        .args(["-f", "-c", "%b %S"])
        .arg(&point)
        .output()
        .unwrap();
    let df = String::from_utf8_lossy(&df.stdout);
    let fields: Vec<u64> = df.split_whitespace().map(|f| f.parse().unwrap()).collect();
    let total = fields[0] * fields[1];
    assert!(
        total <= 6 * node_capacity && total + fields[1] > 6 * node_capacity,
        "statfs says {total} bytes; six nodes of {node_capacity}"
    );
    let copy = Command::new("cp")
        .arg("-r")
        .arg(&source)
        .arg(root.join("tree"))
        .status()
        .unwrap();
    assert!(copy.success(), "cp -r into the mount failed");
    let listing = Command::new("ls")
        .arg("-lR")
        .arg(root.join("tree"))
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("big.bin") && listing.contains("note.txt"),
        "{listing}"
    );
    std::fs::rename(root.join("tree/a/note.txt"), root.join("tree/note.txt")).unwrap();
    std::fs::set_permissions(
        root.join("tree/note.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    ok(&home, &["umount", point_arg]);
    assert!(mount.wait_exit(Duration::from_secs(60)).unwrap().success());

    // A new mount process: everything was published and comes back byte-equal.
    let (_mount, _) = start(
        &home,
        &[&["mount", point_arg][..], &api_args].concat(),
        "mounted",
    );
    let tree = root.join("tree");
    assert_eq!(std::fs::read(tree.join("empty")).unwrap(), b"");
    assert_eq!(std::fs::read(tree.join("one")).unwrap(), b"x");
    assert_eq!(std::fs::read(tree.join("a/b/c/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(tree.join("note.txt")).unwrap(),
        b"hello, cairn\n"
    );
    assert!(!tree.join("a/note.txt").exists());
    let meta = std::fs::metadata(tree.join("note.txt")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let out = tmp.path().join("out");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(&tree)
        .arg(&out)
        .status()
        .unwrap();
    assert!(copy.success(), "cp -r out of the mount failed");
    assert_eq!(std::fs::read(out.join("a/b/c/big.bin")).unwrap(), big);
    let removed = Command::new("rm")
        .arg("-r")
        .arg(tree.join("a"))
        .status()
        .unwrap();
    assert!(removed.success());
    assert!(!tree.join("a").exists());
    ok(&home, &["umount", point_arg]);
}

#[test]
fn another_users_volume_is_read_only_and_a_killed_mount_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let owner_home = tmp.path().join("owner");
    let reader_home = tmp.path().join("reader");
    let devnet = devnet(&owner_home, &tmp.path().join("devnet"), 6);
    let api = devnet.api.clone();
    let api_args = ["--api", api.as_str()];
    let created = ok(
        &owner_home,
        &[&["volume", "create"][..], &api_args].concat(),
    );
    let volume = created
        .split_whitespace()
        .find(|w| w.starts_with("cairn:v:"))
        .unwrap()
        .to_string();

    let owner_point = tmp.path().join("owner-mnt");
    std::fs::create_dir_all(&owner_point).unwrap();
    let _detach_owner = MountPoint(owner_point.clone());
    let owner_arg = owner_point.to_str().unwrap();
    let (mut owner_mount, _) = start(
        &owner_home,
        &[&["mount", owner_arg][..], &api_args].concat(),
        "mounted",
    );
    let data = bytes(200_000, 3);
    {
        let mut file = std::fs::File::create(owner_point.join(&volume).join("shared.bin")).unwrap();
        file.write_all(&data).unwrap();
        file.sync_all().unwrap();
    }

    // Someone without the key reaches the volume by its reference, read-only.
    let reader_point = tmp.path().join("reader-mnt");
    std::fs::create_dir_all(&reader_point).unwrap();
    let _detach_reader = MountPoint(reader_point.clone());
    let reader_arg = reader_point.to_str().unwrap();
    let (_reader_mount, _) = start(
        &reader_home,
        &[&["mount", reader_arg, "--refresh", "1"][..], &api_args].concat(),
        "mounted",
    );
    let theirs = reader_point.join(&volume);
    assert_eq!(std::fs::read(theirs.join("shared.bin")).unwrap(), data);
    let refused = std::fs::write(theirs.join("mine.txt"), b"no").unwrap_err();
    assert_eq!(
        refused.raw_os_error(),
        Some(30),
        "EROFS expected: {refused}"
    );

    // The owner's mount process dies without unmounting.
    owner_mount.kill();
    let stale = std::fs::metadata(owner_point.join(&volume)).unwrap_err();
    assert_eq!(
        stale.raw_os_error(),
        Some(107),
        "ENOTCONN expected: {stale}"
    );
    let (_owner_again, _) = start(
        &owner_home,
        &[&["mount", owner_arg][..], &api_args].concat(),
        "mounted",
    );
    // The fsync-ed file survived the crash.
    assert_eq!(
        std::fs::read(owner_point.join(&volume).join("shared.bin")).unwrap(),
        data
    );
    // A change by the owner reaches the reader's mount after its refresh.
    std::fs::write(owner_point.join(&volume).join("later.txt"), b"later").unwrap();
    std::fs::File::open(owner_point.join(&volume))
        .unwrap()
        .sync_all()
        .unwrap();
    let seen = wait_until(
        Duration::from_secs(30),
        "later.txt in the reader's mount",
        || match std::fs::read(theirs.join("later.txt")) {
            Err(e) if e.kind() == ErrorKind::NotFound => Err(e),
            other => Ok(other),
        },
    )
    .unwrap()
    .value;
    match seen {
        Ok(got) => assert_eq!(got, b"later"),
        Err(e) => panic!("the reader's mount never saw later.txt: {e}"),
    }
    let not_mounted = cairn(&owner_home, &["umount", tmp.path().to_str().unwrap()]);
    assert!(!not_mounted.status.success());
    assert!(
        String::from_utf8_lossy(&not_mounted.stderr).contains("not a cairn mount"),
        "{}",
        String::from_utf8_lossy(&not_mounted.stderr)
    );
}
