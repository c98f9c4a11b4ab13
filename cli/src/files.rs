//! `cairn put`, `cairn get` and `cairn stat` against a local store.
//!
//! Until the network exists these talk to a store directory on this machine
//! (`$CAIRN_HOME/store` by default) through the same pipeline and the same
//! `FragmentStore` trait the network will implement.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cairn_node::client::{GetOptions, GetStats, GetTarget, LocalFragments, PutOptions, get, put};
use cairn_node::erasure::ErasureParams;
use cairn_node::id::{FileId, Reference};
use cairn_node::store::{DiskStore, FragmentStorage};

use crate::keys::load_owner_key;

/// Where the local store is and how big it may grow.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The store directory [default: $CAIRN_HOME/store, or ~/.cairn/store].
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
    /// Most bytes of fragments the store may hold (e.g. 500MiB, 20GiB, 1TB).
    #[arg(long, global = true, default_value = "16GiB", value_parser = parse_size)]
    pub capacity: u64,
}

impl StoreArgs {
    /// Opens (creating if needed) the store.
    pub fn open(&self) -> anyhow::Result<LocalFragments<DiskStore>> {
        let dir = self
            .store
            .clone()
            .unwrap_or_else(|| crate::cairn_home().join("store"));
        let store = DiskStore::open(&dir, self.capacity)
            .with_context(|| format!("opening the store at {}", dir.display()))?;
        Ok(LocalFragments(store))
    }
}

/// Arguments of `cairn put`.
#[derive(clap::Args)]
pub struct PutArgs {
    /// The file to store (`-` for standard input).
    file: PathBuf,
    /// The name the file is stored under [default: the file's name].
    #[arg(long)]
    name: Option<String>,
    /// The owner key that signs the file certificate [default: $CAIRN_HOME/owner.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Data fragments per block: any k of the k + m fragments rebuild a block.
    #[arg(short, default_value_t = ErasureParams::DEFAULT.k())]
    k: u16,
    /// Parity fragments per block: up to m fragments of each block may be lost.
    #[arg(short, default_value_t = ErasureParams::DEFAULT.m())]
    m: u16,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn get`.
#[derive(clap::Args)]
pub struct GetArgs {
    /// The file's reference, as `cairn put` printed it (`cairn:f:...`).
    reference: String,
    /// Where to write the file (`-` for standard output). Written under a temporary
    /// name and renamed when every block has verified, so a failed get leaves nothing
    /// half-written behind.
    #[arg(short, long)]
    out: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
}

/// Arguments of `cairn stat`.
#[derive(clap::Args)]
pub struct StatArgs {
    /// A file reference to describe; without one, the store's usage is shown.
    reference: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Seconds since the Unix epoch, for certificates.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `cairn put`.
pub fn put_command(args: PutArgs) -> anyhow::Result<()> {
    let owner = load_owner_key(args.key.as_deref())?;
    let params = ErasureParams::new(args.k, args.m).context("invalid -k/-m")?;
    let name = match (&args.name, args.file.to_str()) {
        (Some(name), _) => name.clone(),
        (None, Some("-")) => bail!("storing standard input needs --name"),
        (None, _) => args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the file has no name; pass --name")?,
    };
    let (reader, total): (Box<dyn Read>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let file =
            File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        let len = file.metadata().ok().map(|m| m.len());
        (Box::new(file), len)
    };
    let store = args.store.open()?;
    let start = Instant::now();
    let mut progress = Progress::new("put", total);
    let reader = ProgressReader {
        inner: reader,
        progress: &mut progress,
    };
    let receipt = put(
        reader,
        name.as_bytes(),
        &owner,
        &PutOptions::new(params, unix_now()),
        &store,
    )
    .with_context(|| format!("storing {}", args.file.display()))?;
    progress.finish();
    let size = receipt.certificate.body.size;
    eprintln!(
        "stored {} ({}) as {} blocks, {params} erasure coding, {} fragments, {}",
        name,
        human_bytes(size),
        receipt.manifest.blocks.len(),
        receipt.fragments_stored,
        rate(size, start.elapsed())
    );
    println!("{}", receipt.reference);
    Ok(())
}

/// Reads a `cairn:f:` reference.
pub fn parse_file_reference(text: &str) -> anyhow::Result<FileId> {
    match text
        .parse::<Reference>()
        .with_context(|| format!("reading the reference {text:?}"))?
    {
        Reference::File(file) => Ok(file),
        Reference::Volume(_) => bail!("{text} is a volume; `cairn get` takes a file (cairn:f:...)"),
    }
}

/// `cairn get`.
pub fn get_command(args: GetArgs) -> anyhow::Result<()> {
    let file = parse_file_reference(&args.reference)?;
    let store = args.store.open()?;
    let start = Instant::now();
    let stats = if args.out.as_os_str() == "-" {
        let mut out = BufWriter::new(io::stdout().lock());
        let stats = get(
            GetTarget::File(file),
            &mut out,
            &store,
            &GetOptions::new(unix_now()),
        )
        .with_context(|| format!("fetching {}", args.reference))?;
        out.flush().context("writing to standard output")?;
        stats
    } else {
        get_to_file(file, &args.out, &store)
            .with_context(|| format!("fetching {}", args.reference))?
    };
    report_get(&stats, start.elapsed());
    Ok(())
}

/// Gets `file` into `out` through a temporary file in the same directory, renamed into
/// place only once everything verified; on any failure the temporary file is removed.
pub fn get_to_file(
    file: FileId,
    out: &Path,
    store: &LocalFragments<DiskStore>,
) -> anyhow::Result<GetStats> {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".cairn-partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let handle =
            File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut writer = BufWriter::with_capacity(1 << 20, handle);
        let stats = get(
            GetTarget::File(file),
            &mut writer,
            store,
            &GetOptions::new(unix_now()),
        )?;
        let handle = writer.into_inner().map_err(|e| e.into_error())?;
        handle
            .sync_all()
            .with_context(|| format!("syncing {}", partial.display()))?;
        std::fs::rename(&partial, out)
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        Ok(stats)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn report_get(stats: &GetStats, elapsed: Duration) {
    eprintln!(
        "got {} in {} blocks, {}; fragments used {}, skipped {} ({} missing, {} corrupt, {} unreachable)",
        human_bytes(stats.bytes),
        stats.blocks,
        rate(stats.bytes, elapsed),
        stats.fragments_used,
        stats.skipped_total(),
        stats.skipped_missing,
        stats.skipped_corrupt,
        stats.skipped_unavailable
    );
}

/// `cairn stat`.
pub fn stat_command(args: StatArgs) -> anyhow::Result<()> {
    let store = args.store.open()?;
    let Some(text) = args.reference else {
        let disk = &store.0;
        let keys = disk.placement_keys_in(&Default::default(), &Default::default())?;
        println!("store:      {}", disk.dir().display());
        println!(
            "used:       {} ({} bytes)",
            human_bytes(disk.used()),
            disk.used()
        );
        println!("capacity:   {}", human_bytes(disk.capacity()));
        println!("free:       {}", human_bytes(disk.free()));
        println!("blocks:     {} placement keys", keys.len());
        return Ok(());
    };
    let file = parse_file_reference(&text)?;
    let certificate = cairn_node::client::FragmentStore::get_certificate(&store, &file)?
        .with_context(|| format!("{text} is not in this store"))?;
    let body = certificate
        .verify()
        .context("the stored certificate does not verify")?;
    println!("file:       {}", Reference::File(file));
    println!(
        "size:       {} ({} bytes)",
        human_bytes(body.size),
        body.size
    );
    println!(
        "erasure:    {} data + {} parity fragments per block",
        body.k, body.m
    );
    println!("manifest:   {}", body.manifest_hash);
    println!("owner:      {}", body.owner);
    println!("created:    {} (unix seconds)", body.created_at);
    match body.expires_at {
        Some(at) => println!("expires:    {at} (unix seconds)"),
        None => println!("expires:    never"),
    }
    Ok(())
}

/// Parses sizes such as `512`, `64KiB`, `500MB`, `16GiB`, `2T`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 500MiB or 16GiB)"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `1.5 GiB`-style sizes for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `123.4 MB/s` for people.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    format!(
        "{:.1} MB/s",
        bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
    )
}

/// Progress of a long transfer on standard error, when it is a terminal: a line
/// rewritten at most twice a second.
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Instant,
    enabled: bool,
}

impl Progress {
    /// A progress line for `total` bytes (if known).
    pub fn new(label: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            total,
            done: 0,
            start: now,
            last: now,
            enabled: io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            let of = self
                .total
                .map(|t| format!(" of {}", human_bytes(t)))
                .unwrap_or_default();
            eprint!(
                "\r{}: {}{of}, {}   ",
                self.label,
                human_bytes(self.done),
                rate(self.done, self.start.elapsed())
            );
        }
    }

    /// Ends the line.
    pub fn finish(&self) {
        if self.enabled && self.last != self.start {
            eprintln!();
        }
    }
}

struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a mut Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_mistakes_are_explained() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(
            parse_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn volume_references_are_not_files() {
        let text = format!("cairn:v:{}", cairn_node::id::Id::hash(b"v"));
        assert!(
            parse_file_reference(&text)
                .unwrap_err()
                .to_string()
                .contains("is a volume")
        );
    }
}
