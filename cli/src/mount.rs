//! `cairn mount` and `cairn umount`: the network as a filesystem (the `cairn-fs-mount`
//! crate over the node's API), run in the foreground until Ctrl-C, SIGTERM or
//! `cairn umount`, then flushed and unmounted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_core::crypto::KeyPair;
use cairn_fs_mount::{ApiBackend, MountConfig};

use crate::remote::ApiArgs;

/// Arguments of `cairn mount`.
#[derive(clap::Args)]
pub struct MountArgs {
    /// The directory to mount on (must exist; a stale mount left there by a crashed
    /// `cairn mount` is detached first).
    dir: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
    /// Volume keys whose volumes are mounted writable and listed at the top level
    /// (repeatable) [default: every `*.key` in $CAIRN_HOME/volumes/]. Any other
    /// volume is reachable read-only as DIR/cairn:v:<key>; any stored file as
    /// DIR/.refs/cairn:f:<id>.
    #[arg(long)]
    key: Vec<PathBuf>,
    /// Seconds between re-reads of the volumes' root records: another writer's
    /// changes show within about this long.
    #[arg(long, default_value_t = 3.0)]
    refresh: f64,
    /// Memory for cached blocks of files being read, MiB.
    #[arg(long, default_value_t = 64)]
    cache_mib: u64,
}

/// Arguments of `cairn umount`.
#[derive(clap::Args)]
pub struct UmountArgs {
    /// The mount point of a running `cairn mount`.
    dir: PathBuf,
}

fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<KeyPair>> {
    paths
        .iter()
        .map(|p| {
            KeyPair::load(p).with_context(|| format!("loading the volume key {}", p.display()))
        })
        .collect()
}

/// Waits for Ctrl-C, SIGTERM, or the end of the kernel session (`cairn umount`).
fn wait_for_stop(ended: impl Fn() -> bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("listening for SIGTERM")?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                _ = tick.tick() => if ended() { return Ok(()) },
            }
        }
    })
}

/// `cairn mount DIR`.
pub fn mount_command(args: MountArgs) -> anyhow::Result<()> {
    let key_paths = if args.key.is_empty() {
        crate::volume::volume_key_paths()?
    } else {
        args.key.clone()
    };
    let keys = load_keys(&key_paths)?;
    if !(args.refresh.is_finite() && args.refresh > 0.0) {
        bail!("--refresh must be a positive number of seconds");
    }
    let config = MountConfig {
        refresh: Duration::from_secs_f64(args.refresh),
        cache_bytes: args.cache_mib.max(1) << 20,
        ..MountConfig::default()
    };
    let backend = Arc::new(ApiBackend::new(args.api.client()));
    let handle = cairn_fs_mount::mount(backend, keys, &args.dir, config)
        .with_context(|| format!("mounting {}", args.dir.display()))?;
    let volumes = handle.volume_names();
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "mounted {} (volumes: {})",
        args.dir.display(),
        if volumes.is_empty() {
            "none writable".to_string()
        } else {
            volumes.join(", ")
        }
    )?;
    stdout.flush()?;
    wait_for_stop(|| handle.session_ended())?;
    eprintln!(
        "unmounting {} and publishing what is pending",
        args.dir.display()
    );
    handle.unmount();
    Ok(())
}

/// `cairn umount DIR`.
pub fn umount_command(args: UmountArgs) -> anyhow::Result<()> {
    cairn_fs_mount::unmount_path(Path::new(&args.dir))?;
    Ok(())
}
