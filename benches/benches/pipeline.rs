//! The client pipeline's speed against its own ceiling, measured in one run.
//!
//! 1. Primitives: SHA-256 of 1 MiB; Reed-Solomon encode and rebuild (2 lost data
//!    shards) for (k, m) = (4, 2), (6, 3), (10, 4) on one segment.
//! 2. The compute-only ceilings per (k, m): `Codec::encode_in_place` (hash the block,
//!    encode, hash n fragments: everything a put computes) and `Codec::decode` with all
//!    data fragments good (verify k, hash the block) and with two lost (verify k, of
//!    them two parity, rebuild 2, hash the block).
//! 3. `client::put` into a store that drops fragments, on a 1 GiB file (256 MiB when
//!    `CAIRN_BENCH_QUICK` is set): the pipeline's own speed and its peak RSS, which
//!    stays at a few segments however large the file.
//! 4. The whole local pipeline, `client::put` and `client::get` (intact, then with two
//!    data fragments of every block lost) through `MemoryFragments`, as MB/s and as a
//!    fraction of the matching ceiling.
//! 5. Segment sizes 256 KiB / 1 MiB / 4 MiB at 4+2: ceilings, put and get at each.
//!
//! Memory: the file is generated while it is read (a 1-segment pattern with the block
//! number stamped into each block) and repeats every 64 blocks, so `MemoryFragments`
//! holds at most 64 distinct blocks' fragments (96 MiB at 1 MiB, 4+2) while 1 GiB
//! streams through put and get. 64 MiB of distinct data is twice this machine's L3
//! (32 MiB), so the repetition gives no cache advantage. Peak RSS (VmHWM) is reset
//! before each phase through `/proc/self/clear_refs`; the discarding-store puts run
//! before any store fills the heap, so their figures are the pipeline's alone.
//!
//! Run: `cargo bench -p cairn-benches --bench pipeline`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::hint::black_box;
use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_benches::{
    Ceiling, ceilings, machine_note, measure, peak_rss_mib, quick, reset_peak_rss, test_bytes,
};
use cairn_core::crypto::KeyPair;
use cairn_core::crypto::{FileCertificate, Signed};
use cairn_core::erasure::ErasureParams;
use cairn_core::erasure::FragmentRef;
use cairn_core::id::{FragmentHash, PlacementKey};
use cairn_core::manifest::DEFAULT_SEGMENT_SIZE;
use cairn_pipeline::{FragmentSink, GetOptions, GetTarget, MemoryFragments, PutOptions, get, put};
use reed_solomon_erasure::galois_8::ReedSolomon;
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
/// Distinct blocks in a generated file before it repeats.
const PERIOD_BLOCKS: u64 = 64;
const PARAMS: [(u16, u16); 3] = [(4, 2), (6, 3), (10, 4)];

/// A file of `len` bytes made of `pattern` (one segment long) with the block number
/// (modulo [`PERIOD_BLOCKS`]) in the first 8 bytes of each block.
struct GeneratedFile<'a> {
    pattern: &'a [u8],
    position: u64,
    len: u64,
}

impl Read for GeneratedFile<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let segment = self.pattern.len() as u64;
        let offset = (self.position % segment) as usize;
        let n = buf
            .len()
            .min(self.pattern.len() - offset)
            .min((self.len - self.position) as usize);
        buf[..n].copy_from_slice(&self.pattern[offset..offset + n]);
        let stamp = ((self.position / segment) % PERIOD_BLOCKS).to_le_bytes();
        for (i, byte) in buf[..n]
            .iter_mut()
            .enumerate()
            .take(8usize.saturating_sub(offset))
        {
            *byte = stamp[offset + i];
        }
        self.position += n as u64;
        Ok(n)
    }
}

/// A store that counts fragment bytes and drops them: puts through it cost only the
/// pipeline's own work, and keep nothing of the file in memory.
#[derive(Default)]
struct Discard {
    bytes: AtomicU64,
}

impl FragmentSink for Discard {
    type Error = Infallible;
    fn put_fragment(
        &self,
        _: &PlacementKey,
        fragment: FragmentRef<'_>,
        _: &FragmentHash,
    ) -> Result<(), Infallible> {
        self.bytes
            .fetch_add(black_box(fragment.bytes).len() as u64, Ordering::Relaxed);
        Ok(())
    }
    fn put_certificate(&self, _: &Signed<FileCertificate>) -> Result<(), Infallible> {
        Ok(())
    }
}

fn print_peak(label: &str, reset_worked: bool) {
    match peak_rss_mib("self") {
        Some(mib) => println!(
            "  peak RSS {label}: {mib:.0} MiB{}",
            if reset_worked {
                ""
            } else {
                " (process-wide: clear_refs reset failed)"
            }
        ),
        None => println!("  peak RSS {label}: unavailable"),
    }
}

fn primitives(segment: usize, reps: usize) {
    let block = test_bytes(MIB, 1);
    measure("sha256 1 MiB", MIB as u64, 1, reps * 4, || {
        Sha256::digest(&block)
    });
    let block = test_bytes(segment, 2);
    for (k, m) in PARAMS {
        let (k, m) = (usize::from(k), usize::from(m));
        let coder = ReedSolomon::new(k, m).unwrap();
        let shard = segment.div_ceil(k);
        let mut shards: Vec<Vec<u8>> = (0..k + m)
            .map(|i| {
                let mut s = block.get(i * shard..).unwrap_or(&[]).to_vec();
                s.resize(shard, 0);
                s
            })
            .collect();
        let name = format!("rs encode {k}+{m} ({} KiB segment)", segment >> 10);
        measure(&name, segment as u64, 1, reps * 4, || {
            coder.encode(&mut shards).unwrap()
        });
        let name = format!("rs rebuild 2 lost {k}+{m} ({} KiB segment)", segment >> 10);
        // (buffer, present) pairs: the lost shards' buffers are reused, so this times
        // the arithmetic, not allocating and faulting in fresh pages.
        let mut work: Vec<(Vec<u8>, bool)> = shards.iter().cloned().map(|s| (s, true)).collect();
        measure(&name, segment as u64, 1, reps * 4, || {
            work[0].1 = false;
            work[1].1 = false;
            coder.reconstruct_data(&mut work).unwrap();
        });
        assert!(
            work.iter().zip(&shards).all(|(w, s)| w.0 == *s),
            "rebuild is exact"
        );
    }
}

/// What one put/get measurement needs: the generated file's one-segment pattern, an
/// owner, the put options and the label printed beside each figure.
struct BenchFile {
    pattern: Vec<u8>,
    owner: KeyPair,
    options: PutOptions,
    label: String,
}

impl BenchFile {
    fn new(params: ErasureParams, segment: usize, file_len: u64) -> BenchFile {
        let mut options = PutOptions::new(params, 1_700_000_000);
        options.segment_size = segment as u32;
        BenchFile {
            pattern: test_bytes(segment, 4),
            owner: KeyPair::from_secret_bytes(&[7; 32]),
            options,
            label: format!(
                "{params}, {} KiB segments, {} MiB file",
                segment >> 10,
                file_len >> 20
            ),
        }
    }
}

/// Puts a generated file through a store that drops the fragments: the pipeline's own
/// speed and memory, nothing kept. Run before any phase that fills the heap, so the
/// peak RSS is the pipeline's alone.
fn put_discarding(
    params: ErasureParams,
    segment: usize,
    file_len: u64,
    reps: usize,
    ceiling: Ceiling,
) {
    let BenchFile {
        pattern,
        owner,
        options,
        label,
    } = BenchFile::new(params, segment, file_len);
    let reset = reset_peak_rss("self");
    let discard = Discard::default();
    let put_d = measure(
        &format!("put, discarding store, {label}"),
        file_len,
        1,
        reps,
        || {
            let file = GeneratedFile {
                pattern: &pattern,
                position: 0,
                len: file_len,
            };
            put(file, b"bench", &owner, &options, &discard).unwrap()
        },
    );
    println!(
        "  put (discarding store) / ceiling: {:.2}",
        put_d.mb_per_s() / ceiling.put
    );
    print_peak("after put to a discarding store", reset);
}

/// Puts and gets one generated file through `MemoryFragments`, then gets it again
/// with two data fragments of every block lost; prints MB/s, the ratio to the
/// ceilings and peak RSS (which includes the store, and heap that freed stores of
/// earlier phases left resident).
fn pipeline(params: ErasureParams, segment: usize, file_len: u64, reps: usize, ceiling: Ceiling) {
    let BenchFile {
        pattern,
        owner,
        options,
        label,
    } = BenchFile::new(params, segment, file_len);
    let store = MemoryFragments::new();
    let reset = reset_peak_rss("self");
    let mut receipt = None;
    let put_m = measure(&format!("put {label}"), file_len, 1, reps, || {
        let file = GeneratedFile {
            pattern: &pattern,
            position: 0,
            len: file_len,
        };
        receipt = Some(put(file, b"bench", &owner, &options, &store).unwrap());
    });
    println!(
        "  put / ceiling: {:.2}   (the store holds {} MiB of fragments)",
        put_m.mb_per_s() / ceiling.put,
        store.fragment_bytes() >> 20
    );
    print_peak("after put (includes the store's fragments)", reset);
    let receipt = receipt.unwrap();
    let (certificate, manifest) = (receipt.certificate, receipt.manifest);
    let get_all = |lost_per_block: u64| {
        let stats = get(
            GetTarget::Certificate(&certificate),
            io::sink(),
            &store,
            &GetOptions::new(0),
        )
        .unwrap();
        assert_eq!(stats.bytes, file_len);
        assert_eq!(
            stats.skipped_missing,
            lost_per_block * manifest.blocks.len() as u64
        );
    };
    let reset = reset_peak_rss("self");
    let get_m = measure(&format!("get {label}"), file_len, 1, reps, || get_all(0));
    println!("  get / ceiling: {:.2}", get_m.mb_per_s() / ceiling.get);
    print_peak("after get (includes the store's fragments)", reset);
    // Lose data fragments 0 and 1 of every block: each block now rebuilds 2 of k.
    for block in &manifest.blocks {
        store.delete(&block.placement_key(), 0);
        store.delete(&block.placement_key(), 1);
    }
    let lost_m = measure(
        &format!("get, 2 lost per block, {label}"),
        file_len,
        1,
        reps,
        || get_all(2),
    );
    println!(
        "  get (2 lost) / ceiling (2 lost): {:.2}",
        lost_m.mb_per_s() / ceiling.get_lost
    );
}

fn main() {
    println!("{}", machine_note());
    let quick = quick();
    let reps = if quick { 1 } else { 3 };
    let segment = DEFAULT_SEGMENT_SIZE as usize;
    if !reset_peak_rss("self") {
        println!("note: /proc/self/clear_refs not writable; peak RSS figures are process-wide");
    }

    println!("\n# primitives");
    primitives(segment, reps);

    println!("\n# compute-only ceilings ({} KiB segments)", segment >> 10);
    let mut ceiling_by_params = Vec::new();
    for (k, m) in PARAMS {
        let params = ErasureParams::new(k, m).unwrap();
        ceiling_by_params.push((params, ceilings(params, segment, reps * 4)));
    }
    println!("\n# compute-only ceilings, 4+2 at other segment sizes");
    let four_two = ErasureParams::new(4, 2).unwrap();
    let segment_sizes = [256 << 10, MIB, 4 * MIB];
    let ceiling_by_segment: Vec<(usize, Ceiling)> = segment_sizes
        .iter()
        .map(|&size| {
            (
                size,
                if size == segment {
                    ceiling_by_params[0].1
                } else {
                    ceilings(four_two, size, reps * 4)
                },
            )
        })
        .collect();

    let big: u64 = if quick { 256 << 20 } else { 1 << 30 };
    println!(
        "\n# put through a discarding store ({} MiB file): speed and memory of the pipeline alone",
        big >> 20
    );
    for &(params, ceiling) in &ceiling_by_params {
        put_discarding(params, segment, big, reps, ceiling);
    }
    for &(size, ceiling) in &ceiling_by_segment {
        put_discarding(four_two, size, 256 << 20, reps, ceiling);
    }

    println!(
        "\n# whole pipeline through MemoryFragments, {} MiB file",
        big >> 20
    );
    for &(params, ceiling) in &ceiling_by_params {
        pipeline(params, segment, big, reps, ceiling);
    }

    println!("\n# segment sizes (4+2, 256 MiB file)");
    for &(size, ceiling) in &ceiling_by_segment {
        pipeline(four_two, size, 256 << 20, reps, ceiling);
    }
}
