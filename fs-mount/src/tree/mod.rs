//! The mount's state and every filesystem operation on it, in plain methods that
//! return [`FsError`]; [`crate::fuse`] is the thin adapter to the kernel.
//!
//! One inode table for the whole mount. A volume's directories are loaded on first
//! use; changes mark the directory and its ancestors dirty, and the publisher
//! ([`Shared::publish_pending`]) rewrites the dirty directories bottom-up and publishes
//! the new root. Lock order: a file's [`WriteBuffer`](crate::buffer::WriteBuffer)
//! lock, then the state lock; never the other way, and no network call holds the
//! state lock except the directory puts of a publish. Uses [`crate::backend`],
//! [`crate::volume`], [`crate::buffer`].
//!
//! This module owns [`Shared`] (the state behind its lock, the wake-ups, the block
//! cache), [`MountConfig`], the inode numbers and names every part knows, and the
//! helpers all operations share (locking, attributes). The operations are split by
//! job, each an `impl Shared` block over the same state:
//!
//! - `error`: [`FsError`] and its one mapping to errnos;
//! - `state`: the inode table, the volume views and the open handles ([`State`]),
//!   and the edits every operation makes to them under the lock;
//! - `lookup`: loading directories from the network, getattr, lookup (including
//!   `.refs/` and `.versions/`), directory listings, readlink;
//! - `namespace`: changes to names and attributes: create, mkdir, symlink, unlink,
//!   rmdir, rename, setattr;
//! - `io`: open files: open, read, write, flush, release, fsync, and storing a
//!   file's write buffer;
//! - `publish`: the publisher: publishing dirty directories and new roots, waiting
//!   for a publish, adopting newer roots.

mod error;
mod io;
mod lookup;
mod namespace;
mod publish;
mod state;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use cairn_core::crypto::KeyPair;
use cairn_core::id::Reference;
use fuser::{FileAttr, FileType, INodeNo};

use crate::backend::Backend;
use crate::buffer::BlockCache;

pub use error::FsError;
pub use state::State;

use error::Result;
use state::{Node, add_view, special_inode};

/// An inode number.
pub type Ino = u64;
/// The mount's top directory.
pub const TOP: Ino = 1;
/// `.refs/`.
pub const REFS: Ino = 2;
/// The name of the folder of stored files by reference.
pub const REFS_NAME: &str = ".refs";
/// The name of a volume's history folder (in its root directory).
pub const VERSIONS_NAME: &str = ".versions";
/// How many roots back `.versions/` walks the chain of previous roots (each step is
/// one directory fetch).
pub const MAX_VERSION_WALK: usize = 256;

/// Settings of a mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// How often root records of mounted volumes are re-read.
    pub refresh: Duration,
    /// Bytes of verified blocks kept in memory.
    pub cache_bytes: u64,
    /// FUSE worker threads.
    pub threads: usize,
}

impl Default for MountConfig {
    fn default() -> MountConfig {
        MountConfig {
            refresh: Duration::from_secs(3),
            cache_bytes: 64 << 20,
            threads: 4,
        }
    }
}

/// The state and the things every operation needs, shared by the FUSE workers and
/// the publisher thread.
pub struct Shared {
    pub(crate) backend: Arc<dyn Backend>,
    cache: Arc<BlockCache>,
    state: Mutex<State>,
    /// Wakes the publisher.
    wake: Condvar,
    /// Signals waiters that a publish finished.
    published: Condvar,
    pub(crate) stop: AtomicBool,
    uid: u32,
    gid: u32,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Shared {
    /// A mount's state over `backend` with the volumes of `keys` writable.
    pub fn new(
        backend: Arc<dyn Backend>,
        keys: Vec<KeyPair>,
        config: MountConfig,
        uid: u32,
        gid: u32,
    ) -> Result<Shared> {
        let cache = BlockCache::new(Arc::clone(&backend), config.cache_bytes);
        let mut state = State {
            inodes: HashMap::new(),
            next_ino: REFS + 1,
            views: Vec::new(),
            by_key: HashMap::new(),
            history_views: HashMap::new(),
            ref_files: HashMap::new(),
            dir_handles: HashMap::new(),
            files: HashMap::new(),
            next_handle: 1,
        };
        for (ino, node) in [(TOP, Node::Top), (REFS, Node::Refs)] {
            state.inodes.insert(ino, special_inode(node, TOP));
        }
        for key in keys {
            let volume = key.public_key().volume_key();
            let record = backend.get_root(&volume)?;
            add_view(
                &mut state,
                volume,
                Some(Arc::new(key)),
                None,
                record.as_ref(),
            );
        }
        Ok(Shared {
            backend,
            cache,
            state: Mutex::new(state),
            wake: Condvar::new(),
            published: Condvar::new(),
            stop: AtomicBool::new(false),
            uid,
            gid,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The references of the writable volumes, as the top level lists them.
    pub fn volume_names(&self) -> Vec<String> {
        let state = self.lock();
        state
            .views
            .iter()
            .filter(|v| v.writable())
            .map(|v| Reference::Volume(v.key).to_string())
            .collect()
    }

    fn attr_of(&self, state: &State, ino: Ino) -> Result<FileAttr> {
        let inode = state.inodes.get(&ino).ok_or(FsError::NotFound)?;
        let (kind, size, nlink) = match &inode.node {
            Node::Top | Node::Refs | Node::Versions { .. } => (FileType::Directory, 0, 2),
            Node::RefFile { size, .. } => (FileType::RegularFile, *size, 1),
            Node::Dir(dir) => {
                let subdirs = dir.children.as_ref().map_or(0, |c| {
                    c.values()
                        .filter(|i| {
                            matches!(state.inodes.get(i).map(|n| &n.node), Some(Node::Dir(_)))
                        })
                        .count()
                });
                (FileType::Directory, 0, 2 + subdirs as u32)
            }
            Node::File(file) => (FileType::RegularFile, file.size, 1),
            Node::Symlink(target) => (FileType::Symlink, target.len() as u64, 1),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.ctime,
            kind,
            perm: (inode.mode & 0o7777) as u16,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 128 << 10,
            flags: 0,
        })
    }

    /// Stops the background threads of the block cache.
    pub fn shutdown_cache(&self) {
        self.cache.shutdown();
    }

    /// Network capacity for statfs.
    pub fn capacity(&self) -> Result<crate::backend::Capacity> {
        Ok(self.backend.capacity()?)
    }
}
