//! What a churn run measures, the same for `cairn bench churn` (real node processes)
//! and `cairn sim churn` (this simulator), so that the two compare point by point.
//!
//! Owns: [`Tracker`] (every block of every file followed across redundancy samples),
//! [`Redundancy`] (one sample), [`BlockLive`] (one block as a stat counts it),
//! [`LostBlock`] (an entry of `lost_blocks`), [`Read`] (one reader's read),
//! [`ChurnRecord`] (a whole run's series and totals, with the figures the report
//! prints: availability, durability, percentiles), and the session draw of the churn
//! model ([`exponential`]).
//!
//! May use: [`cairn_core::id`] and [`cairn_core::rng`]. No I/O: the bench stats files
//! over HTTP and the simulator counts in its holders, and both hand the counts here.

use cairn_core::id::FileId;
use cairn_core::rng::Rng;

/// One read by a reader.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Read {
    /// Seconds since the churn started, when it ended.
    pub at: f64,
    /// Whether it read and verified every byte.
    pub ok: bool,
    /// How long it took.
    pub millis: f64,
}

/// One block of a file as the gateway's stat counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLive {
    /// `"manifest"` or the block's position.
    pub name: String,
    /// Its placement key.
    pub key: String,
    /// Fragments (of `n`) with at least one live holder.
    pub live: usize,
}

/// One file's stat: its blocks, the manifest first, or why it failed.
pub type FileSample = Result<Vec<BlockLive>, String>;

/// One sample of the network's redundancy. A block of a file whose stat failed in
/// this sample counts as having no live fragment (unknown is not counted as safe).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Redundancy {
    /// Seconds since the churn started.
    pub at: f64,
    /// Mean over blocks of live fragments / n.
    pub mean_live: f64,
    /// The fewest live fragments of any block.
    pub min_live: usize,
    /// Blocks with fewer than k live fragments, or of a file whose stat failed.
    pub below_k: usize,
    /// Files whose stat failed.
    pub stat_failures: usize,
    /// Nodes running.
    pub live_nodes: usize,
}

/// What the samples saw of one block.
#[derive(Clone, Debug)]
struct BlockTrack {
    /// `"manifest"` or the block's position, as the stat names it.
    name: String,
    /// Its placement key, once a stat has shown it.
    key: Option<String>,
    /// Live fragments in the latest sample (`None`: the file's stat failed then).
    live: Option<usize>,
    /// The latest sample in which it had at least k live fragments: (time, live).
    last_readable: Option<(f64, usize)>,
    /// The first of the samples, up to the latest, in which it had fewer than k live
    /// fragments (or its file's stat failed).
    below_k_since: Option<f64>,
    /// The first of the samples, up to the latest, in which it had fewer than n.
    below_n_since: Option<f64>,
}

impl BlockTrack {
    fn new(name: String) -> BlockTrack {
        BlockTrack {
            name,
            key: None,
            live: None,
            last_readable: None,
            below_k_since: None,
            below_n_since: None,
        }
    }
}

/// What the samples saw of one file.
#[derive(Clone, Debug)]
struct FileTrack {
    file: FileId,
    /// The manifest block first, then the data blocks.
    blocks: Vec<BlockTrack>,
    /// Why the latest stat failed (`None`: it succeeded).
    stat_error: Option<String>,
}

/// Follows every block of every file across redundancy samples. It does no I/O: the
/// caller stats the files and hands the counts to [`Tracker::observe`].
#[derive(Clone, Debug)]
pub struct Tracker {
    files: Vec<FileTrack>,
    k: usize,
    n: usize,
}

/// A block below k live fragments at the last sample, or a file that did not read at
/// the end: an entry of `lost_blocks`.
#[derive(Clone, Debug, PartialEq)]
pub struct LostBlock {
    /// The file.
    pub file: FileId,
    /// `None` for a file that did not read although no block was below k.
    pub block: Option<String>,
    /// The block's placement key.
    pub key: Option<String>,
    /// Live fragments at the last sample (`None`: the stat failed).
    pub live: Option<usize>,
    /// The last sample at which it was still readable: (time, live fragments).
    pub last_readable: Option<(f64, usize)>,
    /// The first sample below k, of the run that lasted to the end.
    pub lost_at: Option<f64>,
    /// The first sample below n, of the run that lasted to the end.
    pub degraded_at: Option<f64>,
    /// Whether the file read and verified at the end.
    pub readable: bool,
    /// Why it is listed.
    pub why: String,
}

impl Tracker {
    /// `files`: each file with its count of data blocks (the put's answer); the
    /// manifest block comes first, as in the stat.
    pub fn new(files: &[(FileId, u64)], k: usize, n: usize) -> Tracker {
        let files = files
            .iter()
            .map(|&(file, data_blocks)| FileTrack {
                file,
                blocks: std::iter::once("manifest".to_string())
                    .chain((0..data_blocks).map(|b| b.to_string()))
                    .map(BlockTrack::new)
                    .collect(),
                stat_error: None,
            })
            .collect();
        Tracker { files, k, n }
    }

    /// Takes one sample: `stats[i]` is the stat of file `i` (or why it failed).
    pub fn observe(&mut self, at: f64, live_nodes: usize, stats: Vec<FileSample>) -> Redundancy {
        let (k, n) = (self.k, self.n);
        let (mut sum, mut count, mut min, mut below_k) = (0.0, 0usize, usize::MAX, 0usize);
        let mut stat_failures = 0;
        for (track, stat) in self.files.iter_mut().zip(stats) {
            for block in &mut track.blocks {
                block.live = None;
            }
            match stat {
                Ok(blocks) => {
                    track.stat_error = None;
                    for answer in blocks {
                        let index = match track.blocks.iter().position(|b| b.name == answer.name) {
                            Some(index) => index,
                            None => {
                                track.blocks.push(BlockTrack::new(answer.name.clone()));
                                track.blocks.len() - 1
                            }
                        };
                        let block = &mut track.blocks[index];
                        block.key = Some(answer.key);
                        block.live = Some(answer.live);
                    }
                }
                Err(error) => {
                    track.stat_error = Some(error);
                    stat_failures += 1;
                }
            }
            for block in &mut track.blocks {
                match block.live {
                    Some(live) if live >= k => {
                        block.last_readable = Some((at, live));
                        block.below_k_since = None;
                    }
                    _ => {
                        block.below_k_since.get_or_insert(at);
                        below_k += 1;
                    }
                }
                match block.live {
                    Some(live) if live >= n => block.below_n_since = None,
                    _ => {
                        block.below_n_since.get_or_insert(at);
                    }
                }
                let live = block.live.unwrap_or(0);
                sum += live as f64 / n as f64;
                count += 1;
                min = min.min(live);
            }
        }
        Redundancy {
            at,
            mean_live: if count > 0 { sum / count as f64 } else { 0.0 },
            min_live: if count > 0 { min } else { 0 },
            below_k,
            stat_failures,
            live_nodes,
        }
    }

    /// Blocks below k at the last sample, and files that did not read at the end
    /// (`reads[i]`: the final read of file `i`).
    pub fn lost(&self, reads: &[Result<(), String>]) -> Vec<LostBlock> {
        let mut lost = Vec::new();
        for (track, read) in self.files.iter().zip(reads) {
            let before = lost.len();
            for block in &track.blocks {
                let why = match (block.live, &track.stat_error) {
                    (Some(live), _) if live >= self.k => continue,
                    (Some(live), _) => {
                        format!("{live} of {} fragments live, {} needed", self.n, self.k)
                    }
                    (None, Some(error)) => format!("the file's stat failed: {error}"),
                    (None, None) => "the stat did not list this block".to_string(),
                };
                lost.push(LostBlock {
                    file: track.file,
                    block: Some(block.name.clone()),
                    key: block.key.clone(),
                    live: block.live,
                    last_readable: block.last_readable,
                    lost_at: block.below_k_since,
                    degraded_at: block.below_n_since,
                    readable: read.is_ok(),
                    why,
                });
            }
            if let Err(error) = read
                && lost.len() == before
            {
                lost.push(LostBlock {
                    file: track.file,
                    block: None,
                    key: None,
                    live: None,
                    last_readable: None,
                    lost_at: None,
                    degraded_at: None,
                    readable: false,
                    why: format!("the read failed with every block at k or more: {error}"),
                });
            }
        }
        lost
    }
}

/// Seconds to one decimal, as the report prints times.
pub fn tenths(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

impl LostBlock {
    /// How long a repair had been pending when the block fell below k.
    pub fn repair_pending(&self) -> Option<f64> {
        Some(self.lost_at? - self.degraded_at?)
    }

    /// One line for a person.
    pub fn line(&self) -> String {
        let block = self.block.as_deref().unwrap_or("?");
        let key = self
            .key
            .as_deref()
            .map_or("?", |key| key.get(..8).unwrap_or(key));
        let mut line = format!(
            "lost: {:?} block {block} (key {key}…): {}",
            self.file, self.why
        );
        match self.last_readable {
            Some((at, live)) => line.push_str(&format!("; last readable at {at:.1} s with {live}")),
            None => line.push_str("; never seen readable"),
        }
        if let Some(at) = self.lost_at {
            line.push_str(&format!(", below k from {at:.1} s"));
        }
        if let (Some(at), Some(pending)) = (self.degraded_at, self.repair_pending()) {
            line.push_str(&format!(
                ", below n from {at:.1} s ({pending:.1} s of pending repair)"
            ));
        }
        line.push_str(if self.readable {
            "; the file still read at the end"
        } else {
            "; the file did not read at the end"
        });
        line
    }
}

/// A draw of an exponential distribution of mean `mean` (a session or a downtime).
pub fn exponential(rng: &mut Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.unit()).max(1e-12).ln()
}

/// The `p`-th percentile of `sorted` (nearest rank on `len - 1`; 0 when empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Everything a churn run measured, from which the report is printed.
#[derive(Clone, Debug, PartialEq)]
pub struct ChurnRecord {
    /// Every read of the readers during the churn, in the order they ended.
    pub reads: Vec<Read>,
    /// Every redundancy sample, during the churn and the repair wait.
    pub samples: Vec<Redundancy>,
    /// The final read of every file, in file order.
    pub final_reads: Vec<Result<(), String>>,
    /// Blocks below k at the end, and files that did not read.
    pub lost: Vec<LostBlock>,
    /// Seconds from the end of the churn to full redundancy, if it came back.
    pub time_to_full_redundancy: Option<f64>,
    /// Bytes of repair traffic of every node (`repair_bytes_total`).
    pub repair_bytes: u64,
    /// Bytes stored: files × size × n / k.
    pub stored_bytes: f64,
    /// Nodes killed.
    pub kills: usize,
}

impl ChurnRecord {
    /// Reads served during the churn, of all reads (1 with none).
    pub fn availability(&self) -> f64 {
        if self.reads.is_empty() {
            1.0
        } else {
            self.ok_reads() as f64 / self.reads.len() as f64
        }
    }

    /// Reads that succeeded.
    pub fn ok_reads(&self) -> usize {
        self.reads.iter().filter(|r| r.ok).count()
    }

    /// Files that read at the end, of all files.
    pub fn durability(&self) -> f64 {
        let readable = self.final_reads.iter().filter(|r| r.is_ok()).count();
        readable as f64 / self.final_reads.len().max(1) as f64
    }

    /// Latencies of the successful reads, sorted (ms).
    pub fn sorted_latencies(&self) -> Vec<f64> {
        let mut latencies: Vec<f64> = self
            .reads
            .iter()
            .filter(|r| r.ok)
            .map(|r| r.millis)
            .collect();
        latencies.sort_by(f64::total_cmp);
        latencies
    }

    /// Repair bytes per byte stored.
    pub fn repair_per_stored(&self) -> f64 {
        self.repair_bytes as f64 / self.stored_bytes.max(1.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cairn_core::id::Id;

    use super::*;

    const K: usize = 4;
    const N: usize = 6;

    fn file(byte: u8) -> FileId {
        FileId(Id([byte; 32]))
    }

    /// A stat of a file with the given live fragments, the manifest block first.
    fn stat(live: &[usize]) -> FileSample {
        Ok(live
            .iter()
            .enumerate()
            .map(|(i, &live)| BlockLive {
                name: if i == 0 {
                    "manifest".into()
                } else {
                    (i - 1).to_string()
                },
                key: format!("key{i}"),
                live,
            })
            .collect())
    }

    #[test]
    fn churn_samples_go_on_past_a_failed_stat_and_count_it_below_k() {
        let mut tracker = Tracker::new(&[(file(1), 1), (file(2), 1)], K, N);
        let first = tracker.observe(0.0, 8, vec![stat(&[6, 6]), stat(&[6, 5])]);
        assert_eq!(
            (first.min_live, first.below_k, first.stat_failures),
            (5, 0, 0)
        );
        // File 1's stat fails: its two blocks count as 0 live, file 2 is still sampled.
        let second = tracker.observe(5.0, 7, vec![Err("no manifest".into()), stat(&[6, 4])]);
        assert_eq!(
            (second.min_live, second.below_k, second.stat_failures),
            (0, 2, 1)
        );
        assert!((second.mean_live - 10.0 / 24.0).abs() < 1e-9);
        let third = tracker.observe(10.0, 8, vec![stat(&[6, 6]), stat(&[6, 6])]);
        assert_eq!(
            (third.min_live, third.below_k, third.stat_failures),
            (6, 0, 0)
        );
        assert!(tracker.lost(&[Ok(()), Ok(())]).is_empty());
    }

    #[test]
    fn churn_lost_blocks_say_when_the_block_fell_below_k_and_n() {
        let mut tracker = Tracker::new(&[(file(1), 2)], K, N);
        tracker.observe(0.0, 8, vec![stat(&[6, 6, 6])]);
        tracker.observe(5.0, 7, vec![stat(&[6, 5, 6])]);
        // Back to n: the pending repair of the earlier dip is forgotten.
        tracker.observe(10.0, 8, vec![stat(&[6, 6, 6])]);
        tracker.observe(15.0, 7, vec![stat(&[6, 5, 6])]);
        tracker.observe(20.0, 6, vec![stat(&[6, 4, 6])]);
        tracker.observe(25.0, 5, vec![stat(&[6, 3, 6])]);
        tracker.observe(30.0, 5, vec![stat(&[6, 3, 6])]);
        let lost = tracker.lost(&[Err("not enough fragments".into())]);
        assert_eq!(lost.len(), 1, "{lost:?}");
        let block = &lost[0];
        assert_eq!(block.block.as_deref(), Some("0"));
        assert_eq!(block.key.as_deref(), Some("key1"));
        assert_eq!(block.live, Some(3));
        assert_eq!(block.last_readable, Some((20.0, 4)));
        assert_eq!(block.lost_at, Some(25.0));
        assert_eq!(block.degraded_at, Some(15.0));
        assert_eq!(block.repair_pending(), Some(10.0));
        assert!(!block.readable);
        assert!(
            block.line().contains("3 of 6 fragments live, 4 needed"),
            "{}",
            block.line()
        );
    }

    #[test]
    fn churn_lost_blocks_name_a_failed_stat_and_an_unexplained_failed_read() {
        let mut tracker = Tracker::new(&[(file(1), 1), (file(2), 1)], K, N);
        tracker.observe(0.0, 8, vec![stat(&[6, 6]), stat(&[6, 6])]);
        tracker.observe(
            5.0,
            8,
            vec![Err("certificate not found".into()), stat(&[6, 6])],
        );
        let lost = tracker.lost(&[Err("gone".into()), Err("timeout".into())]);
        assert_eq!(lost.len(), 3, "{lost:?}");
        assert!(lost[..2].iter().all(|b| b.live.is_none()
            && b.lost_at == Some(5.0)
            && b.why.contains("certificate not found")));
        assert_eq!(lost[2].block, None);
        assert!(lost[2].why.contains("timeout"));
    }

    #[test]
    fn the_record_counts_availability_durability_and_percentiles_over_successful_reads() {
        let read = |ok, millis| Read {
            at: 1.0,
            ok,
            millis,
        };
        let record = ChurnRecord {
            reads: vec![
                read(true, 30.0),
                read(false, 5.0),
                read(true, 10.0),
                read(true, 20.0),
            ],
            samples: Vec::new(),
            final_reads: vec![Ok(()), Err("gone".into())],
            lost: Vec::new(),
            time_to_full_redundancy: None,
            repair_bytes: 300,
            stored_bytes: 600.0,
            kills: 1,
        };
        assert_eq!(record.availability(), 0.75);
        assert_eq!(record.durability(), 0.5);
        assert_eq!(record.sorted_latencies(), vec![10.0, 20.0, 30.0]);
        assert_eq!(percentile(&record.sorted_latencies(), 50.0), 20.0);
        assert_eq!(percentile(&record.sorted_latencies(), 99.0), 30.0);
        assert_eq!(record.repair_per_stored(), 0.5);
    }
}
