//! `cairn put`, `get`, `stat`, `rm` and `status`: the CLI side of a node's local API
//! (through [`ApiClient`]; the owner key never leaves this process).
//!
//! The API is found through `--api`, then `CAIRN_API`, then 127.0.0.1:7070 (where
//! `cairn devnet` serves).

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cairn_api::DEFAULT_API_ADDR;
use cairn_api::client::ApiClient;
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{FileId, Id, Reference};

use crate::files::{
    Progress, ProgressReader, human_bytes, parse_file_reference, rate, unix_now,
    write_whole_or_nothing,
};
use crate::keys::{load_or_create_owner_key, load_owner_key};

/// Where the node API is.
#[derive(clap::Args, Clone, Debug)]
pub struct ApiArgs {
    /// The node API to talk to (host:port or http://host:port) [default: $CAIRN_API,
    /// else 127.0.0.1:7070, where `cairn devnet` serves]. A token for a remote API is
    /// read from CAIRN_API_TOKEN.
    #[arg(long)]
    pub api: Option<String>,
}

impl ApiArgs {
    /// The API client.
    pub fn client(&self) -> ApiClient {
        let address = self
            .api
            .clone()
            .or_else(|| std::env::var("CAIRN_API").ok())
            .unwrap_or_else(|| DEFAULT_API_ADDR.to_string());
        ApiClient::new(&address, std::env::var("CAIRN_API_TOKEN").ok())
    }
}

/// Arguments of `cairn put`.
#[derive(clap::Args)]
pub struct PutArgs {
    /// The file to store (`-` for standard input).
    file: PathBuf,
    /// The name the file is stored under [default: the file's name]. Every put makes
    /// a new file (a fresh salt), so the same name may be stored again.
    #[arg(long)]
    name: Option<String>,
    /// The owner key that signs the upload and the certificate [default:
    /// $CAIRN_HOME/owner.key, created on first use].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Data fragments per block: any k of the k + m fragments rebuild a block
    /// [default: the node's, 4 unless it was started with another].
    #[arg(short)]
    k: Option<u16>,
    /// Parity fragments per block: up to m fragments of each block may be lost
    /// [default: the node's, 2 unless it was started with another].
    #[arg(short)]
    m: Option<u16>,
    #[command(flatten)]
    api: ApiArgs,
}

/// A fresh name salt, so that every put is a new file id (PAST's random salt).
fn fresh_salt() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let digest = Id::hash_parts(&[&nanos.to_be_bytes(), &std::process::id().to_be_bytes()]);
    let mut salt = [0u8; 8];
    salt.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_be_bytes(salt)
}

/// `cairn put`.
pub fn put_command(args: PutArgs) -> anyhow::Result<()> {
    let params = match (args.k, args.m) {
        (None, None) => None,
        (k, m) => {
            let (k, m) = (
                k.unwrap_or(ErasureParams::DEFAULT.k()),
                m.unwrap_or(ErasureParams::DEFAULT.m()),
            );
            Some(ErasureParams::new(k, m).context("invalid -k/-m")?)
        }
    };
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
    let owner = load_or_create_owner_key(args.key.as_deref())?;
    let client = args.api.client();
    let start = Instant::now();
    let mut progress = Progress::new("put", total);
    let mut reader = ProgressReader {
        inner: reader,
        progress: &mut progress,
    };
    let outcome = client
        .put(&mut reader, &name, fresh_salt(), &owner, params, unix_now())
        .with_context(|| format!("storing {}", args.file.display()))?;
    progress.finish();
    let stored = &outcome.stored;
    let diverted = if stored.diverted_blocks > 0 {
        format!(
            " ({} block(s) under a new salt: file diversion)",
            stored.diverted_blocks
        )
    } else {
        String::new()
    };
    eprintln!(
        "stored {name} ({}) as {} blocks, {}+{} erasure coding, {} fragments{diverted}; \
         certificate on {} nodes; {}",
        human_bytes(stored.size),
        stored.blocks,
        stored.k,
        stored.m,
        stored.fragments_stored,
        outcome.certificate_replicas,
        rate(stored.size, start.elapsed())
    );
    println!("{}", outcome.reference);
    Ok(())
}

/// Arguments of `cairn get`.
#[derive(clap::Args)]
pub struct GetArgs {
    /// The file's reference, as `cairn put` printed it (`cairn:f:...`).
    reference: String,
    /// Where to write the file [default: standard output]. Written under a temporary
    /// name and renamed only when every byte has arrived, so a failed get leaves
    /// nothing half-written behind.
    #[arg(short, long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `cairn get`.
pub fn get_command(args: GetArgs) -> anyhow::Result<()> {
    let file = parse_file_reference(&args.reference)?;
    let client = args.api.client();
    let start = Instant::now();
    let got = match &args.out {
        None => {
            let mut out = BufWriter::new(io::stdout().lock());
            let got = fetch(&client, &file, &mut out)?;
            out.flush().context("writing to standard output")?;
            got
        }
        Some(path) => write_whole_or_nothing(path, |writer| fetch(&client, &file, writer))?,
    };
    eprintln!("got {}, {}", human_bytes(got), rate(got, start.elapsed()));
    Ok(())
}

/// Streams `file` into `out` with a progress line (once the node announces the size).
fn fetch(client: &ApiClient, file: &FileId, out: &mut dyn Write) -> anyhow::Result<u64> {
    let progress: RefCell<Option<Progress>> = RefCell::new(None);
    let mut writer = ProgressWriter {
        inner: out,
        progress: &progress,
    };
    let got = client
        .get_with(file, &mut writer, &mut |total| {
            *progress.borrow_mut() = Some(Progress::new("get", total));
        })
        .with_context(|| format!("fetching {}", Reference::File(*file)))?;
    if let Some(progress) = progress.borrow().as_ref() {
        progress.finish();
    }
    Ok(got)
}

/// A writer that advances a progress line, if there is one yet.
struct ProgressWriter<'a> {
    inner: &'a mut dyn Write,
    progress: &'a RefCell<Option<Progress>>,
}

impl Write for ProgressWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(progress) = self.progress.borrow_mut().as_mut() {
            progress.advance(n);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Arguments of `cairn stat`.
#[derive(clap::Args)]
pub struct StatArgs {
    /// The file reference to describe.
    reference: String,
    /// Print the API's JSON instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// `cairn stat`.
pub fn stat_command(args: StatArgs) -> anyhow::Result<()> {
    let file = parse_file_reference(&args.reference)?;
    let stat = args
        .api
        .client()
        .stat(&file)
        .with_context(|| format!("describing {}", args.reference))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stat)?);
        return Ok(());
    }
    let n = usize::from(stat.k) + usize::from(stat.m);
    println!("file:       {}", stat.reference);
    println!(
        "size:       {} ({} bytes)",
        human_bytes(stat.size),
        stat.size
    );
    println!(
        "erasure:    {} data + {} parity fragments per block",
        stat.k, stat.m
    );
    println!("owner:      {}", stat.owner);
    println!("created:    {} (unix seconds)", stat.created_at);
    println!(
        "blocks:     {} + manifest; {} degraded, {} unreadable",
        stat.blocks.len().saturating_sub(1),
        stat.degraded_blocks,
        stat.unreadable_blocks
    );
    println!("            block  salt  live  fragment:holders (first 8 characters of node ids)");
    for block in &stat.blocks {
        let fragments: Vec<String> = block
            .holders
            .iter()
            .enumerate()
            .map(|(index, holders)| {
                let ids: Vec<&str> = holders.iter().map(|id| id.get(..8).unwrap_or(id)).collect();
                if ids.is_empty() {
                    format!("{index}:-")
                } else {
                    format!("{index}:{}", ids.join("+"))
                }
            })
            .collect();
        println!(
            "  {:>15}  {:>4}  {}/{n}  {}",
            block.block,
            block.salt,
            block.live,
            fragments.join(" ")
        );
    }
    Ok(())
}

/// Arguments of `cairn rm`.
#[derive(clap::Args)]
pub struct RmArgs {
    /// The file to reclaim (`cairn:f:...`); only its owner can.
    reference: String,
    /// The owner key [default: $CAIRN_HOME/owner.key].
    #[arg(long)]
    key: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `cairn rm`.
pub fn rm_command(args: RmArgs) -> anyhow::Result<()> {
    let file = parse_file_reference(&args.reference)?;
    let owner = load_owner_key(args.key.as_deref())?;
    let report = args
        .api
        .client()
        .remove(&file, &owner, unix_now())
        .with_context(|| format!("removing {}", args.reference))?;
    eprintln!(
        "reclaimed {}: {} fragments, {} freed",
        args.reference,
        report.fragments_freed,
        human_bytes(report.bytes_freed)
    );
    if !report.failures.is_empty() {
        eprintln!(
            "{} node(s) could not be reached or refused; they keep their copies for now",
            report.failures.len()
        );
    }
    Ok(())
}

/// Arguments of `cairn status`.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
    /// The owner key whose usage to show [default: $CAIRN_HOME/owner.key, if it
    /// exists].
    #[arg(long)]
    key: Option<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `cairn status`.
pub fn status_command(args: StatusArgs) -> anyhow::Result<()> {
    let owner = match &args.key {
        Some(path) => Some(load_owner_key(Some(path))?),
        None if crate::keys::default_key_path().exists() => Some(load_owner_key(None)?),
        None => None,
    };
    let client = args.api.client();
    let status = match &owner {
        Some(owner) => client.status_of(&owner.public_key())?,
        None => client.status()?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("node:       {}", status.id);
    println!("address:    {}", status.address);
    println!("joined:     {}", status.joined);
    println!(
        "leaf set:   {} left, {} right; {} nodes known",
        status.leaf_left.len(),
        status.leaf_right.len(),
        status.known_nodes
    );
    println!(
        "network:    about {:.0} nodes (estimated from the leaf set's spread)",
        status.network_nodes_estimate
    );
    println!(
        "storage:    {} used of {} ({} free)",
        human_bytes(status.used),
        human_bytes(status.capacity),
        human_bytes(status.free)
    );
    let quota = status
        .owner_quota
        .map_or_else(|| "none".to_string(), human_bytes);
    println!(
        "quota:      {quota} per owner; {} owner(s) store here",
        status.owners
    );
    if let Some(usage) = &status.owner_usage {
        let share = match status.owner_quota {
            Some(quota) => format!(" of your {} quota", human_bytes(quota)),
            None => String::new(),
        };
        println!(
            "you:        {} stored on this node{share} (owner {})",
            human_bytes(usage.used),
            usage.owner
        );
    }
    Ok(())
}
