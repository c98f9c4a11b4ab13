//! `cairn keygen`, and finding the owner key other commands sign with.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_core::crypto::KeyPair;

/// Arguments of `cairn keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the key [default: $CAIRN_HOME/owner.key, or ~/.cairn/owner.key].
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// The default owner key file.
pub fn default_key_path() -> PathBuf {
    crate::cairn_home().join("owner.key")
}

/// Creates a key file; refuses to overwrite one.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let path = args.out.unwrap_or_else(default_key_path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let key = KeyPair::generate();
    key.save(&path)?;
    println!("owner key written to {}", path.display());
    println!("public key: {}", key.public_key());
    Ok(())
}

/// Loads the owner key at `path`, or the default one, with a hint when it is missing.
pub fn load_owner_key(path: Option<&Path>) -> anyhow::Result<KeyPair> {
    let path = path.map_or_else(default_key_path, Path::to_path_buf);
    if !path.exists() {
        anyhow::bail!(
            "no owner key at {}: create one with `cairn keygen` or pass --key PATH",
            path.display()
        );
    }
    KeyPair::load(&path).with_context(|| format!("loading the owner key {}", path.display()))
}

/// Loads the owner key at `path` (or the default one); when the default one does not
/// exist yet, creates it and says so (a first `cairn put` just works).
pub fn load_or_create_owner_key(path: Option<&Path>) -> anyhow::Result<KeyPair> {
    if path.is_none() && !default_key_path().exists() {
        let path = default_key_path();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating the directory {}", parent.display()))?;
        }
        let key = KeyPair::generate();
        key.save(&path)
            .with_context(|| format!("creating the owner key {}", path.display()))?;
        eprintln!(
            "created your owner key at {} (it signs your files; keep a copy)",
            path.display()
        );
        return Ok(key);
    }
    load_owner_key(path)
}
