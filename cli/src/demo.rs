//! `cairn demo`: cairn's main job on an embedded default, with no setup.
//!
//! In a temporary directory it creates an owner key and a local store, stores a
//! generated file, reads it back, then damages the store the ways disks and peers
//! do (fragments lost, a byte flipped on disk) and shows the file still comes back
//! byte for byte, and that one loss too many is reported clearly, not papered over.
//! Until networked nodes exist the "network" is one local store; the pipeline, the
//! certificates and the checks are the real ones.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use cairn_core::crypto::KeyPair;
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{PlacementKey, Reference};
use cairn_pipeline::{FragmentSource, LocalFragments, PutOptions, put};
use cairn_store::{DiskStore, NodeStore};

use crate::files::{get_to_file, human_bytes, parse_size, rate, unix_now};

/// Arguments of `cairn demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Size of the generated file (e.g. 64MiB, 1GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    size: u64,
    /// Keep the demo's directory (key, store, files) here instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs the demo.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let params = ErasureParams::DEFAULT;
    println!("cairn demo in {}", dir.display());

    let owner = KeyPair::generate();
    owner.save(&dir.join("owner.key"))?;
    println!("1. owner key {} (saved with mode 0600)", owner.public_key());

    let source = dir.join("original.bin");
    write_generated_file(&source, args.size)?;
    let store = LocalFragments(DiskStore::open(
        dir.join("store"),
        args.size * 2 + (64 << 20),
    )?);

    let start = Instant::now();
    let file = std::fs::File::open(&source).context("opening the generated file")?;
    let receipt = put(
        file,
        b"original.bin",
        &owner,
        &PutOptions::new(params, unix_now()),
        &store,
    )?;
    let Reference::File(file_id) = receipt.reference else {
        bail!("a put returned a non-file reference {}", receipt.reference)
    };
    println!(
        "2. put {} as {} blocks of {params} fragments: {} ({})",
        human_bytes(args.size),
        receipt.manifest.blocks.len(),
        receipt.reference,
        rate(args.size, start.elapsed())
    );

    let copy = dir.join("copy.bin");
    let fetch = |label: &str| -> anyhow::Result<()> {
        let start = Instant::now();
        let stats = get_to_file(file_id, &copy, &store)?;
        ensure!(
            files_equal(&source, &copy)?,
            "the copy differs from the original"
        );
        println!(
            "{label} got it back byte-equal ({}); skipped {} missing and {} corrupt fragments \
             (parity is fetched only when a data fragment fails)",
            rate(stats.bytes, start.elapsed()),
            stats.skipped_missing,
            stats.skipped_corrupt
        );
        Ok(())
    };
    fetch("3.")?;

    // Damage every block: lose m - 1 fragments and flip one byte of another on disk,
    // so exactly k good fragments remain.
    let disk = &store.0;
    let keys: Vec<PlacementKey> = receipt
        .manifest
        .blocks
        .iter()
        .map(|b| PlacementKey::for_block(&b.hash, b.salt))
        .collect();
    let n = params.n();
    for (i, key) in keys.iter().enumerate() {
        let first = (i as u16) % n;
        for lost in 0..params.m().saturating_sub(1) {
            disk.delete_fragment(key, (first + lost) % n)?;
        }
        let flipped = (first + params.m().saturating_sub(1)) % n;
        if let Some(path) = disk.body_path(key, flipped)? {
            flip_a_byte(&path)?;
        }
    }
    println!(
        "4. damaged every block: deleted {} fragment(s) and flipped a byte in one more, on disk",
        params.m().saturating_sub(1)
    );
    fetch("5.")?;

    // One loss too many: with fewer than k good fragments a block cannot be rebuilt.
    for (i, key) in keys.iter().enumerate().take(1) {
        let index = ((i as u16) + params.m()) % n;
        disk.delete_fragment(key, index)?;
    }
    match get_to_file(file_id, &copy, &store) {
        Ok(_) => bail!("the get succeeded with fewer than k fragments of a block"),
        Err(error) => {
            println!("6. one more loss in block 0 is reported, not hidden:\n   {error:#}")
        }
    }
    ensure!(
        !copy.exists() || files_equal(&source, &copy)?,
        "a failed get left a bad file"
    );
    let certificate = store
        .get_certificate(&file_id)?
        .context("the certificate is gone")?;
    certificate.verify()?;
    println!(
        "7. the store holds {} in {} placement keys; everything above was checked against \
         the owner-signed certificate",
        human_bytes(disk.used()),
        keys.len() + 1
    );
    if args.dir.is_none() {
        println!("(the demo directory is removed; pass --dir DIR to keep it)");
    }
    Ok(())
}

fn write_generated_file(path: &std::path::Path, size: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut rng = cairn_core::rng::Rng::new(0x243f_6a88_85a3_08d3);
    let mut chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < size {
        let take = (size - written).min(chunk.len() as u64) as usize;
        rng.fill_bytes(&mut chunk[..take]);
        out.write_all(&chunk[..take])?;
        written += take as u64;
    }
    out.flush()?;
    Ok(())
}

fn flip_a_byte(path: &std::path::Path) -> anyhow::Result<()> {
    let mut bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let middle = bytes.len() / 2;
    if let Some(byte) = bytes.get_mut(middle) {
        *byte ^= 0x40;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn files_equal(a: &std::path::Path, b: &std::path::Path) -> anyhow::Result<bool> {
    let mut a = std::io::BufReader::new(std::fs::File::open(a)?);
    let mut b = std::io::BufReader::new(std::fs::File::open(b)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's first command must keep working: the demo checks byte equality,
    /// the damaged round trip and the refusal of one loss too many itself, and fails
    /// if any of them does not hold.
    #[test]
    fn the_demo_runs_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let args = DemoArgs {
            size: 3 * (1 << 20) + 12345,
            dir: Some(dir.path().to_path_buf()),
        };
        demo(args).unwrap();
        assert!(dir.path().join("owner.key").exists());
        assert!(dir.path().join("copy.bin").exists());
    }
}
