//! Mounting and unmounting: [`mount`] recovers a stale mount point, starts the FUSE
//! session and the publisher thread, and returns a [`MountHandle`] whose drop
//! unmounts and then publishes whatever is still unpublished. Uses [`crate::tree`],
//! [`crate::fuse`], fuser and rustix (umount2).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_core::crypto::KeyPair;
use fuser::{BackgroundSession, Config, MountOption};
use tracing::{info, warn};

use crate::backend::Backend;
use crate::fuse::CairnFuse;
use crate::tree::{FsError, MountConfig, Shared};

/// The fs type name cairn mounts carry in `/proc/self/mountinfo` (`fuse.cairn`).
pub const FS_NAME: &str = "cairn";

/// Why a mount could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point is not a directory we can use.
    #[error("mount point {path}: {source}")]
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Reading the volumes' root records failed.
    #[error("reading the volumes' root records: {0}")]
    Volumes(#[source] FsError),
    /// The kernel refused the mount (is /dev/fuse there, are we root?).
    #[error("mounting FUSE at {path}: {source}")]
    Fuse {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Why `cairn umount` could not unmount.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    /// Nothing of cairn is mounted there.
    #[error("{0} is not a cairn mount")]
    NotMounted(PathBuf),
    /// The kernel refused.
    #[error("unmounting {path}: {source}")]
    Kernel {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A live mount. Dropping it unmounts, then publishes pending changes.
pub struct MountHandle {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
    shared: Arc<Shared>,
    publisher: Option<JoinHandle<()>>,
}

/// The mount points of cairn FUSE mounts in `/proc/self/mountinfo`.
fn cairn_mounts() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fs_type = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            let is_cairn = fs_type == format!("fuse.{FS_NAME}")
                || (fs_type.starts_with("fuse")
                    && right.split_whitespace().nth(1) == Some(FS_NAME));
            // mountinfo escapes spaces and the like as octal.
            is_cairn.then(|| PathBuf::from(point.replace("\\040", " ")))
        })
        .collect()
}

/// Whether `path` is a cairn mount point now.
pub fn is_cairn_mount(path: &Path) -> bool {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    cairn_mounts().contains(&path)
}

/// Detaches a stale mount at `path` (left by a crashed mount process): one whose
/// `stat` fails with ENOTCONN, or a cairn FUSE mount listed in mountinfo.
pub fn detach_stale(path: &Path) -> io::Result<bool> {
    let disconnected = matches!(
        std::fs::metadata(path),
        Err(e) if e.raw_os_error() == Some(107) // ENOTCONN
    );
    if disconnected || is_cairn_mount(path) {
        warn!(path = %path.display(), "detaching a stale mount");
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)?;
        return Ok(true);
    }
    Ok(false)
}

/// Unmounts the cairn mount at `path` (what `cairn umount` does). The mount process
/// sees its session end, publishes what is pending and exits.
pub fn unmount_path(path: &Path) -> Result<(), UnmountError> {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let disconnected = matches!(
        std::fs::metadata(path),
        Err(e) if e.raw_os_error() == Some(107)
    );
    if !disconnected && !cairn_mounts().contains(&canonical) {
        return Err(UnmountError::NotMounted(path.to_path_buf()));
    }
    let kernel = |source| UnmountError::Kernel {
        path: path.to_path_buf(),
        source,
    };
    match rustix::mount::unmount(&canonical, rustix::mount::UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        // Busy: detach now, the kernel finishes when the last file closes.
        Err(rustix::io::Errno::BUSY) => {
            rustix::mount::unmount(&canonical, rustix::mount::UnmountFlags::DETACH)
                .map_err(|e| kernel(e.into()))
        }
        Err(e) => Err(kernel(e.into())),
    }
}

/// Mounts the network at `mountpoint`, the volumes of `keys` writable.
pub fn mount(
    backend: Arc<dyn Backend>,
    keys: Vec<KeyPair>,
    mountpoint: &Path,
    config: MountConfig,
) -> Result<MountHandle, MountError> {
    let point_error = |source| MountError::MountPoint {
        path: mountpoint.to_path_buf(),
        source,
    };
    detach_stale(mountpoint).map_err(point_error)?;
    let metadata = std::fs::metadata(mountpoint).map_err(point_error)?;
    if !metadata.is_dir() {
        return Err(point_error(io::Error::other("not a directory")));
    }
    let threads = config.threads.max(1);
    let refresh = config.refresh;
    let shared = Arc::new(
        Shared::new(backend, keys, config, metadata.uid(), metadata.gid())
            .map_err(MountError::Volumes)?,
    );
    let mut options = Config::default();
    options.mount_options = vec![
        MountOption::FSName(FS_NAME.to_string()),
        MountOption::Subtype(FS_NAME.to_string()),
        MountOption::NoAtime,
    ];
    options.n_threads = Some(threads);
    let session = fuser::spawn_mount(
        CairnFuse {
            shared: Arc::clone(&shared),
        },
        mountpoint,
        &options,
    )
    .map_err(|source| MountError::Fuse {
        path: mountpoint.to_path_buf(),
        source,
    })?;
    let publisher = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("cairn-publisher".into())
            .spawn(move || publisher_loop(&shared, refresh))
            .map_err(|source| MountError::Fuse {
                path: mountpoint.to_path_buf(),
                source,
            })?
    };
    info!(path = %mountpoint.display(), "mounted");
    Ok(MountHandle {
        mountpoint: mountpoint.to_path_buf(),
        session: Some(session),
        shared,
        publisher: Some(publisher),
    })
}

/// Publishes batches of changes as they come, and refreshes roots every `refresh`.
fn publisher_loop(shared: &Shared, refresh: Duration) {
    let mut last_refresh = Instant::now();
    loop {
        let until_refresh = refresh.saturating_sub(last_refresh.elapsed());
        shared.wait_for_work(until_refresh.max(Duration::from_millis(10)));
        // A short pause lets a burst of closes land in one publish.
        std::thread::sleep(Duration::from_millis(5));
        shared.publish_pending();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if last_refresh.elapsed() >= refresh {
            shared.refresh();
            last_refresh = Instant::now();
        }
    }
}

impl MountHandle {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The references of the writable volumes.
    pub fn volume_names(&self) -> Vec<String> {
        self.shared.volume_names()
    }

    /// Whether the kernel session has ended (someone ran `cairn umount`).
    pub fn session_ended(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Waits until every change made so far is published (or fails to be).
    pub fn flush(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        // Bounded: a failing publish is retried at most until the deadline.
        while self.shared.has_pending() && Instant::now() < deadline {
            self.shared.wake_publisher();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Unmounts, then publishes what is pending.
    pub fn unmount(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(session) = self.session.take() {
            if session.guard.is_finished() {
                let _ = session.join();
            } else if let Err(e) = session.umount_and_join() {
                // Busy (a file still open): detach; the kernel ends the session when
                // the last file closes.
                warn!(error = %e, path = %self.mountpoint.display(), "unmount failed; detaching");
                let _ =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
            }
        }
        self.flush();
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake_publisher();
        if let Some(publisher) = self.publisher.take() {
            let _ = publisher.join();
        }
        self.shared.shutdown_cache();
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
