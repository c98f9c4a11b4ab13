//! Networked put and get through an 8-node devnet on loopback, against the compute
//! ceilings measured in the same run.
//!
//! 1. Starts `target/release/cairn devnet --nodes 8 --dir TMP --api 127.0.0.1:0` as a
//!    child process (`cairn_testkit::Devnet`: stopped and reaped on every path), waits
//!    for its API line and (`wait_until`) for every node to see the others.
//! 2. Measures the compute-only ceilings at 4+2 with 1 MiB segments, as `pipeline` does:
//!    put = hash the block, encode, hash the n fragments; get = verify k fragments, hash
//!    the block.
//! 3. Puts a 1 GiB file (256 MiB with `CAIRN_BENCH_QUICK`) three times, each a new file
//!    of different bytes, then gets each back three times; every byte that comes back
//!    is checked with a streaming SHA-256 against what was sent. The file is generated
//!    while it is read (splitmix64: period 2^64, nothing repeats, nothing compresses)
//!    and never held in memory.
//! 4. Per phase (put, get): the devnet's CPU time (utime + stime from
//!    `/proc/PID/stat`), its peak RSS (VmHWM, reset through `/proc/PID/clear_refs`
//!    before each phase), this process's own CPU, and the share of the machine's cores
//!    that was busy (the rest is waiting).
//!
//! Profiling: with `CAIRN_BENCH_PERF_DIR=DIR`, the first put and the first get are
//! each recorded with `perf record -e cpu-clock --call-graph dwarf -p DEVNET_PID`
//! into `DIR/put.data` and `DIR/get.data` (perf must be installed).
//!
//! `CAIRN_BENCH_SEGMENTS=256,1024,4096` adds one put and one get of a 256 MiB file
//! per segment size (KiB) at the end: how much of the cost is per block.
//!
//! `CAIRN_BENCH_DEVNET_DIR=DIR` keeps the devnet's data under DIR (e.g. `/dev/shm`, a
//! tmpfs where fsync is free: the difference to a run on disk is what syncing costs).
//!
//! Run: `cargo build --release -p cairn-cli && cargo bench -p cairn-benches --bench network`.
//! Set `CAIRN_BIN` to use another `cairn` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_api::client::ApiClient;
use cairn_api::{GRANT_HEADER, PutAnswer, decode_hex, encode_hex};
use cairn_benches::{Measurement, ceilings, machine_note, peak_rss_mib, quick, reset_peak_rss};
use cairn_core::crypto::{FileCertificate, KeyPair, Signed, UploadGrant};
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{FileId, Reference};
use cairn_core::manifest::DEFAULT_SEGMENT_SIZE;
use cairn_testkit::{Devnet, wait_until};
use sha2::{Digest, Sha256};

const NODES: usize = 8;
/// How long the nodes may take to all see each other once the API is up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Linux's USER_HZ: the unit of utime and stime in `/proc/PID/stat` (100 on every
/// mainstream architecture; `getconf CLK_TCK` says so).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
const GIB: f64 = (1u64 << 30) as f64;

/// A `cairn devnet` child process (stopped and reaped on drop, by the test kit) and
/// the temporary directory with the nodes' data, which goes with it.
struct BenchDevnet {
    devnet: Devnet,
    dir: tempfile::TempDir,
}

impl BenchDevnet {
    fn start(binary: &Path, nodes: usize) -> Result<BenchDevnet, String> {
        // CAIRN_BENCH_DEVNET_DIR=/dev/shm puts the nodes' stores on tmpfs, where fsync
        // costs nothing: the difference to a run on disk is what durability costs.
        let dir = match std::env::var_os("CAIRN_BENCH_DEVNET_DIR") {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .map_err(|e| format!("creating a temp dir: {e}"))?;
        let log = dir.path().join("devnet.log");
        let mut command = Command::new(binary);
        command.env("RUST_LOG", "warn");
        let devnet = Devnet::start(command, nodes, &dir.path().join("nodes"), Some(&log))
            .map_err(|e| e.to_string())?;
        Ok(BenchDevnet { devnet, dir })
    }

    /// Waits until the API node has joined and its leaf set holds every other node,
    /// so placement sees the whole ring from the first block.
    fn wait_converged(&self, client: &ApiClient, nodes: usize) -> Result<(), String> {
        let what = format!("the devnet to converge ({nodes} nodes in the API node's view)");
        let converged = wait_until(CONVERGE_TIMEOUT, &what, || match client.status() {
            Ok(status) => {
                let mut seen: Vec<&String> =
                    status.leaf_left.iter().chain(&status.leaf_right).collect();
                seen.sort();
                seen.dedup();
                if status.joined && seen.len() + 1 >= nodes {
                    Ok(())
                } else {
                    Err(format!(
                        "joined={}, leaf set {} nodes",
                        status.joined,
                        seen.len()
                    ))
                }
            }
            Err(e) => Err(e.to_string()),
        });
        converged
            .map(|_| ())
            .map_err(|e| format!("{e}{}", self.devnet.log_tail()))
    }
}

/// The release `cairn` binary: `CAIRN_BIN`, else `target/release/cairn` of this
/// workspace (or of `CARGO_TARGET_DIR`).
fn cairn_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("CAIRN_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("CAIRN_BIN={} is not a file", path.display()))
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_relative() {
                workspace.join(t)
            } else {
                t
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let path = target.join("release").join("cairn");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it first with `cargo build --release -p cairn-cli` \
             (or point CAIRN_BIN at a cairn binary)",
            path.display()
        ))
    }
}

/// A file of `len` pseudo-random bytes (splitmix64 from `seed`), generated as it is
/// read and hashed on the way out, so what was sent can be checked against what comes
/// back without keeping it.
struct GeneratedFile {
    state: u64,
    /// Bytes of the current 8-byte word not yet handed out.
    word: [u8; 8],
    word_used: usize,
    remaining: u64,
    hash: Sha256,
}

impl GeneratedFile {
    fn new(len: u64, seed: u64) -> GeneratedFile {
        GeneratedFile {
            state: seed,
            word: [0; 8],
            word_used: 8,
            remaining: len,
            hash: Sha256::new(),
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).to_le_bytes()
    }
}

impl Read for GeneratedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let out = &mut buf[..n];
        let mut filled = 0;
        // Leftover bytes of the last word first, then whole words, then a tail.
        while filled < n && self.word_used < 8 {
            out[filled] = self.word[self.word_used];
            self.word_used += 1;
            filled += 1;
        }
        let whole = (n - filled) / 8 * 8;
        for chunk in out[filled..filled + whole].chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next_word());
        }
        filled += whole;
        if filled < n {
            self.word = self.next_word();
            self.word_used = 0;
            while filled < n {
                out[filled] = self.word[self.word_used];
                self.word_used += 1;
                filled += 1;
            }
        }
        self.hash.update(out);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what it is given, and keeps nothing.
struct HashingSink {
    hash: Sha256,
    bytes: u64,
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// CPU seconds (user, system) of process `pid` ("self" for this one).
fn cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((
        utime / CLOCK_TICKS_PER_SECOND,
        stime / CLOCK_TICKS_PER_SECOND,
    ))
}

/// `perf record` attached to the devnet for one operation, when asked for.
struct Perf(Option<Child>);

impl Perf {
    fn start(pid: u32, name: &str) -> Perf {
        let Some(dir) = std::env::var_os("CAIRN_BENCH_PERF_DIR") else {
            return Perf(None);
        };
        let output = PathBuf::from(dir).join(format!("{name}.data"));
        let child = Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "250"])
            .args(["--call-graph", "dwarf", "-p", &pid.to_string(), "-o"])
            .arg(&output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn();
        match child {
            Ok(child) => {
                // perf needs a moment to attach to every thread.
                std::thread::sleep(Duration::from_millis(500));
                println!("  recording {name} with perf into {}", output.display());
                Perf(Some(child))
            }
            Err(e) => {
                println!("  not profiling {name}: perf did not start ({e})");
                Perf(None)
            }
        }
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SIGINT makes perf write its file out; kill it if that fails.
            let stopped = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Resource use of the devnet and of this process over one phase.
struct PhaseUsage {
    label: &'static str,
    wall: f64,
    devnet_cpu: f64,
    /// The kernel's share of `devnet_cpu` (system time).
    devnet_sys: f64,
    bench_cpu: f64,
    devnet_peak_mib: Option<f64>,
    peak_was_reset: bool,
    bytes: u64,
}

impl PhaseUsage {
    fn print(&self) {
        let gib = self.bytes as f64 / GIB;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let busy = (self.devnet_cpu + self.bench_cpu) / (self.wall * cores);
        println!(
            "  {}: devnet CPU {:.1} s = {:.2} s/GiB ({:.0}% system); bench CPU {:.1} s = {:.2} s/GiB; \
             cores busy {:.0}% of {cores:.0} over {:.1} s; devnet peak RSS {}{}",
            self.label,
            self.devnet_cpu,
            self.devnet_cpu / gib,
            100.0 * self.devnet_sys / self.devnet_cpu,
            self.bench_cpu,
            self.bench_cpu / gib,
            busy * 100.0,
            self.wall,
            self.devnet_peak_mib
                .map_or("unavailable".into(), |m| format!("{m:.0} MiB")),
            if self.peak_was_reset {
                ""
            } else {
                " (since start: clear_refs reset failed)"
            }
        );
        println!(
            "{}",
            serde_json::json!({
                "phase": self.label,
                "bytes": self.bytes,
                "wall_s": self.wall,
                "devnet_cpu_s": self.devnet_cpu,
                "devnet_cpu_s_per_gib": self.devnet_cpu / gib,
                "devnet_sys_s": self.devnet_sys,
                "bench_cpu_s": self.bench_cpu,
                "bench_cpu_s_per_gib": self.bench_cpu / gib,
                "cores_busy": busy,
                "devnet_peak_rss_mib": self.devnet_peak_mib,
            })
        );
    }
}

/// Runs `f` as one phase, measuring the devnet's and this process's CPU and the
/// devnet's peak RSS over it.
fn phase<R>(
    label: &'static str,
    devnet_pid: u32,
    bytes: u64,
    f: impl FnOnce() -> R,
) -> (R, PhaseUsage) {
    let pid = devnet_pid.to_string();
    let peak_was_reset = reset_peak_rss(&pid);
    let (devnet_before, bench_before) = (cpu_seconds(&pid), cpu_seconds("self"));
    let start = Instant::now();
    let result = f();
    let wall = start.elapsed().as_secs_f64();
    let (devnet_after, bench_after) = (cpu_seconds(&pid), cpu_seconds("self"));
    let total = |t: Option<(f64, f64)>| t.map(|(user, sys)| user + sys);
    let sys = |t: Option<(f64, f64)>| t.map(|(_, sys)| sys);
    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(f64::NAN, |(a, b)| b - a);
    let usage = PhaseUsage {
        label,
        wall,
        devnet_cpu: diff(total(devnet_before), total(devnet_after)),
        devnet_sys: diff(sys(devnet_before), sys(devnet_after)),
        bench_cpu: diff(total(bench_before), total(bench_after)),
        devnet_peak_mib: peak_rss_mib(&pid),
        peak_was_reset,
        bytes,
    };
    (result, usage)
}

/// A put at a chosen segment size, speaking the API's protocol as `ApiClient::put`
/// does (grant header, stream, check the proposed certificate, sign it, publish it);
/// the client has no segment-size parameter. Returns the file's id.
fn put_with_segment(
    api: &str,
    file: &mut GeneratedFile,
    name: &str,
    owner: &KeyPair,
    params: ErasureParams,
    segment: u32,
    now: u64,
) -> Result<FileId, String> {
    let len = file.remaining;
    let grant = UploadGrant::new(name.as_bytes(), now, owner.public_key(), now, 3600);
    let signed_grant = Signed::sign(owner, grant.clone())
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())?;
    let agent = ureq::Agent::new_with_defaults();
    let url = format!(
        "{api}/v1/files?k={}&m={}&segment_size={segment}",
        params.k(),
        params.m()
    );
    let mut response = agent
        .put(&url)
        .header(GRANT_HEADER, encode_hex(&signed_grant))
        .content_type("application/octet-stream")
        .send(ureq::SendBody::from_reader(file))
        .map_err(|e| format!("put: {e}"))?;
    let answer: PutAnswer = serde_json::from_str(
        &response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let bytes = decode_hex(&answer.certificate).ok_or("the certificate is not hex")?;
    let certificate: FileCertificate = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
    if certificate.file_id != grant.file_id || certificate.size != len {
        return Err("the node proposed a certificate for another file or size".into());
    }
    let signed = Signed::sign(owner, certificate)
        .and_then(|s| s.to_bytes())
        .map_err(|e| e.to_string())?;
    agent
        .post(&format!("{api}/v1/certificates"))
        .content_type("application/octet-stream")
        .send(&signed[..])
        .map_err(|e| format!("publishing the certificate: {e}"))?;
    Ok(grant.file_id)
}

/// Puts and gets one file per segment size in `CAIRN_BENCH_SEGMENTS` (KiB, comma
/// separated): how much of the cost is per block rather than per byte.
fn segment_sizes(client: &ApiClient, api: &str, owner: &KeyPair, file_len: u64, now: u64) {
    let Ok(list) = std::env::var("CAIRN_BENCH_SEGMENTS") else {
        return;
    };
    let params = ErasureParams::new(4, 2).unwrap();
    println!(
        "\n# segment sizes ({params}, {} MiB file, one put and one get each)",
        file_len >> 20
    );
    for kib in list.split(',').filter_map(|s| s.trim().parse::<u32>().ok()) {
        let mut file = GeneratedFile::new(file_len, 0xa11ce + u64::from(kib));
        let start = Instant::now();
        let id = match put_with_segment(
            api,
            &mut file,
            &format!("segment-{kib}"),
            owner,
            params,
            kib << 10,
            now + u64::from(kib),
        ) {
            Ok(id) => id,
            Err(e) => {
                println!("  {kib} KiB segments: put failed: {e}");
                continue;
            }
        };
        let put_s = start.elapsed().as_secs_f64();
        let sent: [u8; 32] = file.hash.finalize().into();
        let mut sink = HashingSink {
            hash: Sha256::new(),
            bytes: 0,
        };
        let start = Instant::now();
        let got = client.get(&id, &mut sink).unwrap();
        let get_s = start.elapsed().as_secs_f64();
        assert_eq!(got, file_len);
        let received: [u8; 32] = sink.hash.finalize().into();
        assert_eq!(received, sent, "{kib} KiB segments: bytes differ");
        println!(
            "  {kib:>5} KiB segments: put {:.1} MB/s, get {:.1} MB/s, bytes verified",
            file_len as f64 / put_s / 1e6,
            file_len as f64 / get_s / 1e6
        );
    }
}

/// Sorted seconds of each repetition into a [`Measurement`] (median, p99, report).
fn measurement(name: &str, bytes: u64, mut seconds: Vec<f64>) -> Measurement {
    seconds.sort_by(f64::total_cmp);
    let m = Measurement {
        name: name.to_owned(),
        bytes,
        ops: 1,
        seconds,
    };
    m.report();
    m
}

fn main() {
    println!("{}", machine_note());
    let quick = quick();
    let file_len: u64 = if quick { 256 << 20 } else { 1 << 30 };
    let (puts, gets_per_file) = if quick { (2, 2) } else { (3, 3) };
    let params = ErasureParams::new(4, 2).unwrap();
    let segment = DEFAULT_SEGMENT_SIZE as usize;

    let binary = match cairn_binary() {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let devnet = match BenchDevnet::start(&binary, NODES) {
        Ok(devnet) => devnet,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let client = devnet.devnet.client();
    if let Err(e) = devnet.wait_converged(&client, NODES) {
        eprintln!("error: {e}");
        drop(devnet);
        std::process::exit(1);
    }
    let pid = devnet.devnet.id();
    println!(
        "devnet: {NODES} nodes, pid {pid}, api {}, binary {}, data in {}",
        devnet.devnet.api,
        binary.display(),
        devnet.dir.path().display()
    );

    println!(
        "\n# compute-only ceilings in this process ({params}, {} KiB segments)",
        segment >> 10
    );
    let ceiling = ceilings(params, segment, if quick { 20 } else { 100 });

    let owner = KeyPair::from_secret_bytes(&[7; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let label = format!("{params}, {} MiB file, {NODES}-node devnet", file_len >> 20);

    println!(
        "\n# put: {puts} files of {} MiB, each new bytes",
        file_len >> 20
    );
    let ((files, put_seconds), put_usage) = phase("put", pid, file_len * puts, || {
        let mut files: Vec<(FileId, [u8; 32])> = Vec::new();
        let mut seconds = Vec::new();
        for i in 0..puts {
            let _perf = if i == 0 {
                Perf::start(pid, "put")
            } else {
                Perf(None)
            };
            let mut file = GeneratedFile::new(file_len, 0x5eed_0000 + i);
            let start = Instant::now();
            let outcome = client
                .put(
                    &mut file,
                    &format!("bench-{i}"),
                    now + i,
                    &owner,
                    Some(params),
                    now,
                )
                .unwrap_or_else(|e| panic!("put {i}: {e}"));
            let took = start.elapsed().as_secs_f64();
            assert_eq!(file.remaining, 0, "the whole file was sent");
            assert_eq!(outcome.stored.size, file_len);
            let Reference::File(id) = outcome.reference else {
                panic!("put {i} returned {} for a file", outcome.reference);
            };
            println!(
                "  put {i}: {:.1} MB/s, {} blocks, {} fragments, {} diverted blocks",
                file_len as f64 / took / 1e6,
                outcome.stored.blocks,
                outcome.stored.fragments_stored,
                outcome.stored.diverted_blocks
            );
            files.push((id, file.hash.finalize().into()));
            seconds.push(took);
        }
        (files, seconds)
    });

    println!("\n# get: each file {gets_per_file} times, every byte checked");
    let (get_seconds, get_usage) = phase("get", pid, file_len * puts * gets_per_file, || {
        let mut seconds = Vec::new();
        for round in 0..gets_per_file {
            for (i, (id, sent)) in files.iter().enumerate() {
                let _perf = if round == 0 && i == 0 {
                    Perf::start(pid, "get")
                } else {
                    Perf(None)
                };
                let mut sink = HashingSink {
                    hash: Sha256::new(),
                    bytes: 0,
                };
                let start = Instant::now();
                let got = client
                    .get(id, &mut sink)
                    .unwrap_or_else(|e| panic!("get {i} round {round}: {e}"));
                let took = start.elapsed().as_secs_f64();
                assert_eq!(got, file_len);
                assert_eq!(sink.bytes, file_len);
                let received: [u8; 32] = sink.hash.finalize().into();
                assert_eq!(&received, sent, "get {i} round {round}: bytes differ");
                println!(
                    "  get {i} round {round}: {:.1} MB/s, bytes verified",
                    file_len as f64 / took / 1e6
                );
                seconds.push(took);
            }
        }
        seconds
    });

    println!("\n# results");
    let put_m = measurement(&format!("put {label}"), file_len, put_seconds);
    let get_m = measurement(&format!("get {label}"), file_len, get_seconds);
    println!(
        "  put / ceiling put: {:.3}   (ceiling {:.0} MB/s)",
        put_m.mb_per_s() / ceiling.put,
        ceiling.put
    );
    println!(
        "  get / ceiling get: {:.3}   (ceiling {:.0} MB/s)",
        get_m.mb_per_s() / ceiling.get,
        ceiling.get
    );
    put_usage.print();
    get_usage.print();
    segment_sizes(
        &client,
        &devnet.devnet.api,
        &owner,
        file_len.min(256 << 20),
        now + 1000,
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "network summary",
            "put_mb_per_s": put_m.mb_per_s(),
            "get_mb_per_s": get_m.mb_per_s(),
            "ceiling_put_mb_per_s": ceiling.put,
            "ceiling_get_mb_per_s": ceiling.get,
            "put_ratio": put_m.mb_per_s() / ceiling.put,
            "get_ratio": get_m.mb_per_s() / ceiling.get,
        })
    );
    drop(devnet);
}
