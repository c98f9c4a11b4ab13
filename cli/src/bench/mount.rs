//! `cairn bench mount`: the filesystem against the API, on the same bytes, in one run.
//!
//! Node processes form a small network; one big file of random bytes is stored with
//! `put` and fetched with `get` through the API (the ceiling), then written and read
//! back through a `cairn mount` process (a fresh mount for the read, so nothing comes
//! from its cache); then many small files are created and stat-ed through the mount.
//! The mount process's peak resident memory (VmHWM) is read from /proc.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_core::crypto::KeyPair;
use cairn_core::id::{Id, Reference, VolumeKey};
use cairn_core::rng::Rng;
use cairn_testkit::process::{ChildProcess, START_WITHIN};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{HashingWriter, NodeOptions, NodeProcess, settle, spawn_node};
use crate::files::{parse_size, unix_now};

/// Arguments of `cairn bench mount`.
#[derive(clap::Args)]
pub(super) struct MountBenchArgs {
    /// Node processes.
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Size of the big file written and read (e.g. 1GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Small files created, then stat-ed, through the mount.
    #[arg(long, default_value_t = 1000)]
    small_files: usize,
    /// Bytes of each small file.
    #[arg(long, default_value_t = 100)]
    small_size: usize,
    /// Data fragments per block.
    #[arg(short, default_value_t = 4)]
    k: u16,
    /// Parity fragments per block.
    #[arg(short, default_value_t = 2)]
    m: u16,
    /// Where nodes, mount point and the test file go [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// A `cairn mount` process; unmounted and reaped on drop, whatever happened. Its
/// stderr goes to `POINT.log`, whose end an error shows.
struct MountProcess {
    process: ChildProcess,
    exe: PathBuf,
    point: PathBuf,
}

impl MountProcess {
    fn start(exe: &Path, point: &Path, api: &str, key: &Path) -> anyhow::Result<MountProcess> {
        std::fs::create_dir_all(point)?;
        let mut command = Command::new(exe);
        command
            .arg("mount")
            .arg(point)
            .args(["--api", api, "--key"])
            .arg(key);
        let log = point.with_extension("log");
        let process = ChildProcess::spawn("`cairn mount`", command, Some(&log))?;
        let mut mount = MountProcess {
            process,
            exe: exe.to_path_buf(),
            point: point.to_path_buf(),
        };
        if let Err(e) = mount.process.wait_for_line("mounted", START_WITHIN) {
            mount.stop();
            bail!("`cairn mount` did not mount: {e}");
        }
        Ok(mount)
    }

    /// Peak resident memory so far, bytes (VmHWM).
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// `cairn umount`, then waits (bounded) for the process to end; kills it if not.
    fn stop(&mut self) {
        let _ = Command::new(&self.exe)
            .arg("umount")
            .arg(&self.point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.process.wait_exit(Duration::from_secs(60)).is_err() {
            self.process.kill();
            // A killed mount leaves its mount point behind: detach it.
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        if self.process.try_wait().is_none() {
            self.stop();
        }
    }
}

/// Copies `from` into `to` in 1 MiB writes; returns the bytes and their SHA-256.
fn copy_hashing(from: &mut dyn Read, to: &mut dyn Write) -> io::Result<(u64, [u8; 32])> {
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hasher.finalize().into()))
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / seconds.max(1e-9) / 1e6
}

/// `cairn bench mount`.
pub(super) fn mount_bench(args: MountBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let exe = std::env::current_exe().context("finding the cairn executable")?;
    let temp;
    let root = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let say = |text: String| {
        if !args.json {
            eprintln!("{text}");
        }
    };
    let options = NodeOptions {
        tick_ms: u64::try_from(cairn_daemon::DEFAULT_TICK.as_millis()).unwrap_or(300),
        k: args.k,
        m: args.m,
    };
    say(format!("starting {} nodes", args.nodes));
    let gateway = spawn_node(&exe, &root.join("node-0"), "127.0.0.1:0", None, &options)?;
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 1..args.nodes {
        let data = root.join(format!("node-{i}"));
        let bootstrap = Some(gateway.listen.as_str());
        nodes.push(spawn_node(&exe, &data, "127.0.0.1:0", bootstrap, &options)?);
    }
    settle(&gateway, args.nodes);
    let api = gateway.api.base().trim_start_matches("http://").to_string();

    // The test file, on local disk.
    let source = root.join("source.bin");
    say(format!(
        "writing {} random bytes to {}",
        args.size,
        source.display()
    ));
    {
        let mut rng = Rng::new(7);
        let mut out = io::BufWriter::new(File::create(&source)?);
        let mut left = args.size;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        out.flush()?;
    }

    // The ceiling: the API's own put and get of the same bytes.
    let owner = KeyPair::generate();
    say("put through the API".into());
    let started = Instant::now();
    let outcome = gateway
        .api
        .put(
            &mut File::open(&source)?,
            "bench",
            1,
            &owner,
            None,
            unix_now(),
        )
        .context("put through the API")?;
    let api_put_s = started.elapsed().as_secs_f64();
    let Reference::File(file): Reference = outcome.reference else {
        bail!("the API answered a reference that is not a file's");
    };
    say("get through the API".into());
    let started = Instant::now();
    let mut hashing = HashingWriter::default();
    gateway
        .api
        .get(&file, &mut hashing)
        .context("get through the API")?;
    let got = hashing.bytes;
    let api_digest = hashing.finish();
    let api_get_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        got == args.size,
        "the API's get returned {got} of {} bytes",
        args.size
    );

    // The mount: one volume whose key this bench holds.
    let key_path = root.join("volume.key");
    let volume_key = KeyPair::generate();
    volume_key.save(&key_path)?;
    let volume = Reference::Volume(VolumeKey(Id(volume_key.public_key().0))).to_string();
    let point = root.join("mnt");

    say("writing through the mount".into());
    let mut mount = MountProcess::start(&exe, &point, &api, &key_path)?;
    let volume_dir = point.join(&volume);
    let big = volume_dir.join("big.bin");
    let started = Instant::now();
    let mut out = File::create(&big).with_context(|| format!("creating {}", big.display()))?;
    let (written, source_digest) = copy_hashing(&mut File::open(&source)?, &mut out)?;
    out.sync_all().context("fsync of the big file")?;
    drop(out);
    let mount_write_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        source_digest == api_digest,
        "the API's get returned other bytes"
    );

    say(format!(
        "creating {} small files through the mount",
        args.small_files
    ));
    let small_dir = volume_dir.join("small");
    std::fs::create_dir(&small_dir)?;
    let content = vec![b'x'; args.small_size];
    let started = Instant::now();
    for i in 0..args.small_files {
        std::fs::write(small_dir.join(format!("f{i:05}")), &content)?;
    }
    File::open(&small_dir)?
        .sync_all()
        .context("fsync of the small files' directory")?;
    let create_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for i in 0..args.small_files {
        let meta = std::fs::metadata(small_dir.join(format!("f{i:05}")))?;
        anyhow::ensure!(
            meta.len() == args.small_size as u64,
            "a small file has the wrong size"
        );
    }
    let stat_s = started.elapsed().as_secs_f64();
    let write_peak = mount.peak_rss();
    mount.stop();
    drop(mount);

    say("reading through a fresh mount".into());
    let mount = MountProcess::start(&exe, &point, &api, &key_path)?;
    let started = Instant::now();
    let (read, read_digest) = copy_hashing(&mut File::open(&big)?, &mut io::sink())?;
    let mount_read_s = started.elapsed().as_secs_f64();
    let read_peak = mount.peak_rss();
    drop(mount);
    anyhow::ensure!(
        read == written && read_digest == source_digest,
        "the mount read back other bytes than were written"
    );
    drop(nodes);
    drop(gateway);

    let mib = |b: Option<u64>| b.map_or(f64::NAN, |b| b as f64 / f64::from(1u32 << 20));
    let report = json!({
        "nodes": args.nodes,
        "size": args.size,
        "k": args.k,
        "m": args.m,
        "api_put_mb_s": rate(args.size, api_put_s),
        "api_get_mb_s": rate(args.size, api_get_s),
        "mount_write_mb_s": rate(written, mount_write_s),
        "mount_read_mb_s": rate(read, mount_read_s),
        "write_ratio": api_put_s / mount_write_s,
        "read_ratio": api_get_s / mount_read_s,
        "small_files": args.small_files,
        "creates_per_s": args.small_files as f64 / create_s,
        "stats_per_s": args.small_files as f64 / stat_s,
        "mount_peak_rss_mib_writing": mib(write_peak),
        "mount_peak_rss_mib_reading": mib(read_peak),
    });
    if args.json {
        println!("{report}");
    } else {
        let f = |k: &str| report[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{} bytes on {} nodes ({}+{})",
            args.size, args.nodes, args.k, args.m
        );
        println!("  API put   {:8.1} MB/s", f("api_put_mb_s"));
        println!(
            "  mount write {:6.1} MB/s  ({:.2} of put)",
            f("mount_write_mb_s"),
            f("write_ratio")
        );
        println!("  API get   {:8.1} MB/s", f("api_get_mb_s"));
        println!(
            "  mount read  {:6.1} MB/s  ({:.2} of get)",
            f("mount_read_mb_s"),
            f("read_ratio")
        );
        println!(
            "  {} small files: {:.0} creates/s, {:.0} stats/s",
            args.small_files,
            f("creates_per_s"),
            f("stats_per_s")
        );
        println!(
            "  mount peak memory: {:.0} MiB writing, {:.0} MiB reading",
            f("mount_peak_rss_mib_writing"),
            f("mount_peak_rss_mib_reading")
        );
    }
    Ok(())
}
