//! `cairn volume create` and `cairn volume ls`: volumes, the writable trees a mount
//! shows. A volume is named by its key (`cairn:v:<public key>`); whoever holds the key
//! can publish new roots of it. The keys the user holds live in
//! `$CAIRN_HOME/volumes/*.key`, which is where `cairn mount` finds them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_core::crypto::KeyPair;
use cairn_core::id::Reference;
use cairn_fs_mount::volume::Directory;
use cairn_fs_mount::{ApiBackend, Backend};

use crate::remote::ApiArgs;

/// `cairn volume ...`.
#[derive(clap::Args)]
pub struct VolumeArgs {
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(clap::Subcommand)]
enum VolumeCommand {
    /// Create a volume: a new key (or --key), and a first, empty root published to the
    /// network. Prints the volume's reference.
    Create(CreateArgs),
    /// List the volumes whose keys you hold, with their latest root in the network.
    Ls(LsArgs),
}

/// Arguments of `cairn volume create`.
#[derive(clap::Args)]
struct CreateArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Use this key (e.g. your owner key) instead of a new one; it is linked into
    /// $CAIRN_HOME/volumes/ so that `cairn mount` and `cairn volume ls` find it.
    #[arg(long)]
    key: Option<PathBuf>,
}

/// Arguments of `cairn volume ls`.
#[derive(clap::Args)]
struct LsArgs {
    #[command(flatten)]
    api: ApiArgs,
}

/// Where the user's volume keys live.
pub fn volume_keys_dir() -> PathBuf {
    crate::cairn_home().join("volumes")
}

/// Every `*.key` in [`volume_keys_dir`], sorted (none if the folder does not exist).
pub fn volume_key_paths() -> anyhow::Result<Vec<PathBuf>> {
    let dir = volume_keys_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut keys = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "key") {
            keys.push(path);
        }
    }
    keys.sort();
    Ok(keys)
}

fn load_key(path: &Path) -> anyhow::Result<KeyPair> {
    KeyPair::load(path).with_context(|| format!("loading the volume key {}", path.display()))
}

/// `cairn volume`.
pub fn volume_command(args: VolumeArgs) -> anyhow::Result<()> {
    match args.command {
        VolumeCommand::Create(args) => create(args),
        VolumeCommand::Ls(args) => ls(args),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let dir = volume_keys_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = match &args.key {
        Some(path) => load_key(path)?,
        None => KeyPair::generate(),
    };
    let volume = key.public_key().volume_key();
    let reference = Reference::Volume(volume);
    // Named by the key's first characters: one file per volume, found again by `ls`.
    let text = volume.to_string();
    let kept = dir.join(format!("{}.key", &text[..text.len().min(16)]));
    if !kept.exists() {
        match &args.key {
            Some(path) => {
                let target = std::fs::canonicalize(path)
                    .with_context(|| format!("resolving {}", path.display()))?;
                std::os::unix::fs::symlink(&target, &kept).with_context(|| {
                    format!("linking {} to {}", kept.display(), target.display())
                })?;
            }
            None => key
                .save(&kept)
                .with_context(|| format!("saving the volume key {}", kept.display()))?,
        }
    }
    let backend = ApiBackend::new(args.api.client());
    if let Some(record) = backend
        .get_root(&volume)
        .context("reading the volume's root record")?
    {
        println!("{reference}");
        eprintln!(
            "the volume already exists (sequence {}); its key is {}",
            record.sequence,
            kept.display()
        );
        return Ok(());
    }
    let root = backend
        .put_file(&key, &mut &Directory::default().encode()[..])
        .context("storing the volume's empty root directory")?;
    backend
        .publish_root(&key, 1, root)
        .context("publishing the volume's first root")?;
    println!("{reference}");
    eprintln!(
        "created; its key is {} (whoever holds it can write the volume: keep a copy). \
         `cairn mount DIR` shows it as DIR/{reference}",
        kept.display()
    );
    Ok(())
}

fn ls(args: LsArgs) -> anyhow::Result<()> {
    let paths = volume_key_paths()?;
    if paths.is_empty() {
        eprintln!(
            "no volume keys in {}; create a volume with `cairn volume create`",
            volume_keys_dir().display()
        );
        return Ok(());
    }
    let backend = ApiBackend::new(args.api.client());
    for path in paths {
        let key = load_key(&path)?;
        let volume = key.public_key().volume_key();
        let state = match backend.get_root(&volume) {
            Ok(Some(record)) => format!(
                "sequence {} (published at {})",
                record.sequence, record.time
            ),
            Ok(None) => "never published".to_string(),
            Err(e) => format!("root unknown: {e}"),
        };
        println!("{}  {state}  {}", Reference::Volume(volume), path.display());
    }
    Ok(())
}
