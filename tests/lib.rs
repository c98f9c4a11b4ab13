//! Shared helpers for cairn's integration tests (the tests themselves are in
//! `integration/`, one binary so that linking happens once). Clusters, waits, keys
//! and the put/get of a test file come from `cairn-testkit`.

/// Helpers for the store tests (`integration/store*.rs`).
pub mod store {
    use cairn_core::id::{FragmentHash, Id, PlacementKey};
    use cairn_core::rng::Rng;
    use cairn_store::fragment_hash;

    /// A placement key whose first byte is `top` (so its ring position is known) and
    /// whose other bytes derive from `n`.
    pub fn key_at(top: u8, n: u64) -> PlacementKey {
        let mut id = Id::hash(&n.to_be_bytes());
        id.0[0] = top;
        PlacementKey(id)
    }

    /// A pseudo-random placement key derived from `n`.
    pub fn key(n: u64) -> PlacementKey {
        PlacementKey(Id::hash_parts(&[b"test key", &n.to_be_bytes()]))
    }

    /// `len` deterministic pseudo-random bytes for fragment `index`, and their
    /// fragment hash (`SHA-256(index_be16 ‖ bytes)`). Distinct `(seed, index)` pairs
    /// (seeds below 2^48) give distinct streams.
    pub fn fragment(seed: u64, index: u16, len: usize) -> (Vec<u8>, FragmentHash) {
        let bytes = Rng::new((seed << 16) | u64::from(index)).bytes(len);
        let hash = fragment_hash(index, &bytes);
        (bytes, hash)
    }
}

/// A seeded random workload of file operations, applied to a mount and to a plain
/// directory side by side (`integration/mount.rs`): the plain directory is the oracle.
// Test support: a failure here is the calling test's failure, with the panic message.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod fs_workload {
    use std::fs::{self, File, OpenOptions};
    use std::io::{ErrorKind, Seek, SeekFrom, Write};
    use std::path::{Path, PathBuf};

    use cairn_core::rng::Rng;

    /// Names the workload uses: files and directories, nested, overlapping.
    const NAMES: [&str; 10] = ["a", "b", "c", "d/a", "d/b", "d", "e", "e/x", "d/e", "d/e/f"];

    fn outcome<T>(r: std::io::Result<T>) -> Result<T, ErrorKind> {
        r.map_err(|e| e.kind())
    }

    /// FNV-1a, enough to compare contents.
    fn checksum(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        })
    }

    /// Applies one operation to `root`; returns a comparable description of its result.
    fn apply(root: &Path, op: u64, a: &str, b: &str, offset: u64, data: &[u8]) -> String {
        let pa = root.join(a);
        let pb = root.join(b);
        let done = |r: std::io::Result<()>| outcome(r).map(|()| String::new());
        let r = match op {
            0 => done(fs::write(&pa, data)),
            1 => done((|| {
                let mut f = OpenOptions::new().write(true).open(&pa)?;
                f.seek(SeekFrom::Start(offset))?;
                f.write_all(data)
            })()),
            2 => done(
                OpenOptions::new()
                    .write(true)
                    .open(&pa)
                    .and_then(|f| f.set_len(offset)),
            ),
            3 => done(fs::rename(&pa, &pb)),
            4 => done(fs::remove_file(&pa)),
            5 => done(fs::create_dir(&pa)),
            6 => done(fs::remove_dir(&pa)),
            7 => outcome(fs::read(&pa))
                .map(|bytes| format!("{} bytes {:x}", bytes.len(), checksum(&bytes))),
            8 => done(
                OpenOptions::new()
                    .append(true)
                    .open(&pa)
                    .and_then(|mut f| f.write_all(data)),
            ),
            _ => done(File::open(&pa).and_then(|f| f.sync_all())),
        };
        format!("{r:?}")
    }

    /// Every path under `root` with its kind, size and content checksum, sorted.
    pub fn snapshot(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for entry in fs::read_dir(root.join(&rel)).unwrap() {
                let path = rel.join(entry.unwrap().file_name());
                let meta = fs::symlink_metadata(root.join(&path)).unwrap();
                if meta.is_dir() {
                    out.push(format!("{} dir", path.display()));
                    stack.push(path);
                } else {
                    let bytes = fs::read(root.join(&path)).unwrap();
                    let sum = checksum(&bytes);
                    out.push(format!("{} {} {sum:x}", path.display(), meta.len()));
                }
            }
        }
        out.sort();
        out
    }

    /// Runs `ops` seeded operations (create, write at offsets, truncate, rename,
    /// unlink, mkdir, rmdir, read, append, fsync) on `mounted` and on `plain`,
    /// asserting after each that both gave the same result and hold the same tree.
    pub fn run(mounted: &Path, plain: &Path, seed: u64, ops: usize) {
        let mut rng = Rng::new(seed);
        for step in 0..ops {
            let op = rng.below(10);
            let a = NAMES[rng.below(NAMES.len() as u64) as usize];
            let b = NAMES[rng.below(NAMES.len() as u64) as usize];
            let len = match rng.below(4) {
                0 => 0,
                1 => rng.below(16),
                2 => rng.below(6000),
                _ => rng.below(40_000),
            } as usize;
            let offset = rng.below(12_000);
            let data = rng.bytes(len);
            let context = || {
                format!(
                    "seed {seed} (rerun with CAIRN_FS_SEED={seed}): step {step}, op {op} \
                     on {a} {b}, offset {offset}, {len} bytes"
                )
            };
            let in_mount = apply(mounted, op, a, b, offset, &data);
            let in_plain = apply(plain, op, a, b, offset, &data);
            assert_eq!(in_mount, in_plain, "{}", context());
            assert_eq!(
                snapshot(mounted),
                snapshot(plain),
                "trees differ: {}",
                context()
            );
        }
    }

    /// The seed: `CAIRN_FS_SEED` if set (to replay or explore), else `default`.
    pub fn seed(default: u64) -> u64 {
        std::env::var("CAIRN_FS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }
}
