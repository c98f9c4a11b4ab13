//! A small benchmark harness shared by cairn's benches (no criterion: it costs
//! minutes of build on 2 cores, and we want medians, p99 and ratios against a ceiling
//! measured in the same run, printed as a table and as JSON lines).
//!
//! Run with `cargo bench -p cairn-benches --bench NAME`. Set `CAIRN_BENCH_QUICK=1` to
//! shrink sizes and repetitions (used to check that benches still run).

use std::hint::black_box;
use std::time::Instant;

use cairn_testkit::fixtures::percentile;

/// The result of timing one operation several times.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// What was measured.
    pub name: String,
    /// Bytes processed per repetition (0 for operations counted per call).
    pub bytes: u64,
    /// Operations per repetition (for per-second rates).
    pub ops: u64,
    /// Seconds taken by each repetition, sorted ascending.
    pub seconds: Vec<f64>,
}

impl Measurement {
    /// The median repetition time in seconds.
    pub fn median(&self) -> f64 {
        percentile(&self.seconds, 0.5)
    }

    /// The 99th-percentile repetition time (the slowest, for few repetitions).
    pub fn p99(&self) -> f64 {
        percentile(&self.seconds, 0.99)
    }

    /// Median throughput in MB/s (10^6 bytes per second).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.median() / 1e6
    }

    /// Median operations per second.
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.median()
    }

    /// Prints one line for people and one JSON line for scripts.
    pub fn report(&self) {
        if self.bytes > 0 {
            println!(
                "{:<48} {:>10.1} MB/s  (median {:.3} ms, p99 {:.3} ms, n={})",
                self.name,
                self.mb_per_s(),
                self.median() * 1e3,
                self.p99() * 1e3,
                self.seconds.len()
            );
        } else {
            println!(
                "{:<48} {:>10.0} op/s  (median {:.3} ms per {} ops, n={})",
                self.name,
                self.ops_per_s(),
                self.median() * 1e3,
                self.ops,
                self.seconds.len()
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "bench": self.name,
                "bytes": self.bytes,
                "ops": self.ops,
                "median_s": self.median(),
                "p99_s": self.p99(),
                "mb_per_s": if self.bytes > 0 { self.mb_per_s() } else { 0.0 },
                "ops_per_s": self.ops_per_s(),
            })
        );
    }
}

/// True when `CAIRN_BENCH_QUICK` is set: smaller inputs, fewer repetitions.
pub fn quick() -> bool {
    std::env::var_os("CAIRN_BENCH_QUICK").is_some()
}

/// Times `f` `repetitions` times after one warm-up call; `bytes` and `ops` are what
/// one call processes.
pub fn measure<R>(
    name: &str,
    bytes: u64,
    ops: u64,
    repetitions: usize,
    mut f: impl FnMut() -> R,
) -> Measurement {
    black_box(f());
    let mut seconds: Vec<f64> = (0..repetitions.max(1))
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    let measurement = Measurement {
        name: name.to_owned(),
        bytes,
        ops,
        seconds,
    };
    measurement.report();
    measurement
}

/// Deterministic pseudo-random bytes, so runs hash the same input (the test kit's
/// seeded bytes).
pub use cairn_testkit::fixtures::bytes as test_bytes;

/// A one-line note of the machine, printed at the top of every bench run.
pub fn machine_note() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown cpu".into());
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    format!(
        "machine: {model}, {} cores, sha_ni={}, avx2={}, avx512f={}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        has("sha_ni"),
        has("avx2"),
        has("avx512f")
    )
}

/// The compute-only ceilings of one segment, in MB/s of file bytes: what a put and a
/// get compute at the least, measured in the same run as the figure they bound.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// `encode_in_place`: hash the block, encode, hash the n fragments.
    pub put: f64,
    /// `decode` with all data fragments good: verify k, hash the block.
    pub get: f64,
    /// `decode` with two data fragments lost: verify k, rebuild 2, hash the block.
    pub get_lost: f64,
}

/// Measures the [`Ceiling`]s of `params` on one `segment`, `reps` times each. The get
/// ceilings include one copy of each fragment used, as fetching from a store does.
pub fn ceilings(
    params: cairn_core::erasure::ErasureParams,
    segment: usize,
    reps: usize,
) -> Ceiling {
    use cairn_core::erasure::{BlockSpec, Codec, Offer};
    let Ok(codec) = Codec::new(params) else {
        panic!("the codec refuses {params}");
    };
    let block = test_bytes(segment, 3);
    let mut buffer = Vec::with_capacity(codec.buffer_capacity(segment));
    let name = format!(
        "ceiling put {params} (hash+encode+hash n, {} KiB)",
        segment >> 10
    );
    let put = measure(&name, segment as u64, 1, reps, || {
        buffer.clear();
        buffer.extend_from_slice(&block);
        let Ok(encoded) = codec.encode_in_place(std::mem::take(&mut buffer)) else {
            panic!("encoding a test block failed");
        };
        let hash = encoded.block_hash();
        buffer = encoded.into_buffer();
        hash
    });
    let Ok(encoded) = codec.encode(&block) else {
        panic!("encoding a test block failed");
    };
    let spec = BlockSpec {
        hash: encoded.block_hash(),
        len: Some(segment),
        fragment_hashes: encoded.fragment_hashes(),
    };
    let get_ceiling = |lost: usize, what: &str| {
        let name = format!("ceiling get {params} ({what}, {} KiB)", segment >> 10);
        measure(&name, segment as u64, 1, reps, || {
            let offers = encoded
                .fragments()
                .skip(lost)
                .map(|f| (f.index, Offer::Fragment(f.to_owned())));
            match codec.decode(&spec, offers) {
                Ok((block, _)) => block.len(),
                Err(e) => panic!("decoding a test block failed: {e}"),
            }
        })
    };
    let intact = get_ceiling(0, "verify k, hash");
    let lost = get_ceiling(2, "verify k, rebuild 2, hash");
    Ceiling {
        put: put.mb_per_s(),
        get: intact.mb_per_s(),
        get_lost: lost.mb_per_s(),
    }
}

/// Peak resident memory (VmHWM) of process `pid` (`"self"` for this one) in MiB.
pub fn peak_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the VmHWM of `pid` to its current RSS (writing 5 to `clear_refs`); whether
/// the kernel allowed it.
pub fn reset_peak_rss(pid: &str) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}
