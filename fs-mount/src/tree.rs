//! The mount's state and every filesystem operation on it, in plain methods that
//! return [`FsError`]; [`crate::fuse`] is the thin adapter to the kernel.
//!
//! One inode table for the whole mount. A volume's directories are loaded on first
//! use; changes mark the directory and its ancestors dirty, and the publisher
//! ([`Shared::publish_pending`]) rewrites the dirty directories bottom-up and publishes
//! the new root. Lock order: a file's [`WriteBuffer`] lock, then the state lock;
//! never the other way, and no network call holds the state lock except the
//! directory puts of a publish. Uses [`crate::backend`], [`crate::volume`],
//! [`crate::buffer`].

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_core::crypto::{KeyPair, RootRecord};
use cairn_core::id::{FileId, Reference, VolumeKey};
use fuser::{FileAttr, FileType, INodeNo};
use tracing::{error, info, warn};

use crate::backend::{Backend, BackendError, root_file, unix_now};
use crate::buffer::{BlockCache, READ_AHEAD_BLOCKS, WriteBuffer};
use crate::volume::{
    DIRECTORY_MAX_BYTES, DirEntry, Directory, EntryKind, FileContent, INLINE_MAX, PreviousRoot,
    valid_name,
};

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
/// How far from the end of the last read a read may start and still count as
/// sequential (for read-ahead).
const SEQUENTIAL_SLACK: u64 = 4 << 20;
/// How long fsync waits for its publish before failing with EIO.
const PUBLISH_WAIT: Duration = Duration::from_secs(300);

/// Why an operation failed; [`FsError::errno`] is the one mapping to errnos.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such name or inode.
    #[error("not found")]
    NotFound,
    /// A write on something this mount cannot change.
    #[error("read-only")]
    ReadOnly,
    /// The name exists.
    #[error("exists")]
    Exists,
    /// Directory not empty.
    #[error("directory not empty")]
    NotEmpty,
    /// A directory where a file was needed.
    #[error("is a directory")]
    IsDir,
    /// A file where a directory was needed.
    #[error("not a directory")]
    NotDir,
    /// A rename across volumes.
    #[error("cross-volume rename")]
    CrossVolume,
    /// Bad argument (a directory into itself, a bad name).
    #[error("invalid argument")]
    Invalid,
    /// The network could not supply verified bytes, or a local buffer failed.
    #[error("i/o: {0}")]
    Io(String),
    /// The network is full.
    #[error("no space")]
    NoSpace,
    /// The change was lost to another writer's publish.
    #[error("lost update")]
    Lost,
}

impl From<BackendError> for FsError {
    fn from(e: BackendError) -> FsError {
        match e {
            BackendError::NotFound => FsError::Io("stored file not found".into()),
            BackendError::Full => FsError::NoSpace,
            other => FsError::Io(other.to_string()),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> FsError {
        FsError::Io(e.to_string())
    }
}

impl FsError {
    /// The errno the kernel is told.
    pub fn errno(&self) -> fuser::Errno {
        use fuser::Errno;
        match self {
            FsError::NotFound => Errno::ENOENT,
            FsError::ReadOnly => Errno::EROFS,
            FsError::Exists => Errno::EEXIST,
            FsError::NotEmpty => Errno::ENOTEMPTY,
            FsError::IsDir => Errno::EISDIR,
            FsError::NotDir => Errno::ENOTDIR,
            FsError::CrossVolume => Errno::EXDEV,
            FsError::Invalid => Errno::EINVAL,
            FsError::Io(_) | FsError::Lost => Errno::EIO,
            FsError::NoSpace => Errno::ENOSPC,
        }
    }
}

type Result<T> = std::result::Result<T, FsError>;

struct DirNode {
    /// The stored directory file, if this state has been stored.
    stored: Option<FileId>,
    /// Loaded entries.
    children: Option<BTreeMap<String, Ino>>,
    /// Changed since stored.
    dirty: bool,
    /// Counts changes, so a publish knows which directories changed while it stored.
    version: u64,
}

struct FileNode {
    /// The last stored content.
    content: FileContent,
    /// Current size (the buffer's while one exists).
    size: u64,
    buffer: Option<Arc<Mutex<WriteBuffer>>>,
    open: u32,
    unlinked: bool,
}

enum Node {
    Top,
    Refs,
    RefFile { file: FileId, size: u64 },
    Versions { view: usize },
    Dir(DirNode),
    File(FileNode),
    Symlink(String),
}

struct Inode {
    parent: Ino,
    view: Option<usize>,
    node: Node,
    mode: u32,
    mtime: SystemTime,
    ctime: SystemTime,
}

struct View {
    key: VolumeKey,
    owner: Option<Arc<KeyPair>>,
    /// `Some(sequence)` for a `.versions/<sequence>` view.
    history: Option<u64>,
    root: Ino,
    versions: Ino,
    sequence: u64,
    root_file: Option<FileId>,
    root_time: u64,
    change_gen: u64,
    published_gen: u64,
    failed_gen: u64,
    /// Ranges `(after, through]` of change generations lost to another writer.
    lost: Vec<(u64, u64)>,
    /// Files of this view holding a write buffer.
    writers: u32,
}

impl View {
    fn writable(&self) -> bool {
        self.owner.is_some() && self.history.is_none()
    }
}

struct OpenFile {
    ino: Ino,
    /// Where the last read ended: a read starting there is sequential.
    last_end: u64,
}

/// Everything mutable of a mount.
pub struct State {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    views: Vec<View>,
    by_key: HashMap<VolumeKey, usize>,
    history_views: HashMap<(usize, u64), usize>,
    ref_files: HashMap<FileId, Ino>,
    dir_handles: HashMap<u64, Vec<(Ino, FileType, String)>>,
    files: HashMap<u64, OpenFile>,
    next_handle: u64,
}

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

fn read_all(backend: &dyn Backend, file: &FileId, limit: u64) -> Result<Vec<u8>> {
    let reader = backend.read_range(file, 0, None)?;
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FsError::Io(format!(
            "{file:?} is larger than {limit} bytes"
        )));
    }
    Ok(bytes)
}

fn load_directory(backend: &dyn Backend, file: &FileId) -> Result<Directory> {
    let bytes = read_all(backend, file, DIRECTORY_MAX_BYTES)?;
    Directory::decode(&bytes).map_err(|e| FsError::Io(format!("directory {file:?}: {e}")))
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

    /// Loads a directory's entries if they are not loaded (a network read, without
    /// the state lock).
    fn ensure_loaded(&self, ino: Ino) -> Result<()> {
        let stored = {
            let state = self.lock();
            match state.inodes.get(&ino).map(|i| &i.node) {
                Some(Node::Dir(dir)) => match (&dir.children, dir.stored) {
                    (Some(_), _) => return Ok(()),
                    (None, Some(stored)) => stored,
                    (None, None) => return Err(FsError::Io("directory without content".into())),
                },
                Some(_) => return Ok(()),
                None => return Err(FsError::NotFound),
            }
        };
        let directory = load_directory(&*self.backend, &stored)?;
        let mut state = self.lock();
        let view = state.inodes.get(&ino).and_then(|i| i.view);
        let still_unloaded = matches!(
            state.inodes.get(&ino).map(|i| &i.node),
            Some(Node::Dir(DirNode { children: None, stored: Some(s), .. })) if *s == stored
        );
        if !still_unloaded {
            return Ok(());
        }
        let mut children = BTreeMap::new();
        for entry in directory.entries {
            let child = new_ino(&mut state);
            let mtime = UNIX_EPOCH
                + Duration::new(
                    entry.mtime_secs.max(0) as u64,
                    entry.mtime_nanos.min(999_999_999),
                );
            let node = match entry.kind {
                EntryKind::File(content) => Node::File(FileNode {
                    size: content.size(),
                    content,
                    buffer: None,
                    open: 0,
                    unlinked: false,
                }),
                EntryKind::Dir(file) => Node::Dir(DirNode {
                    stored: Some(file),
                    children: None,
                    dirty: false,
                    version: 0,
                }),
                EntryKind::Symlink(target) => Node::Symlink(target),
            };
            state.inodes.insert(
                child,
                Inode {
                    parent: ino,
                    view,
                    node,
                    mode: entry.mode & 0o7777,
                    mtime,
                    ctime: mtime,
                },
            );
            children.insert(entry.name, child);
        }
        if let Some(Inode {
            node: Node::Dir(dir),
            ..
        }) = state.inodes.get_mut(&ino)
        {
            dir.children = Some(children);
        }
        Ok(())
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: Ino) -> Result<FileAttr> {
        let needs_load = matches!(
            self.lock().inodes.get(&ino).map(|i| &i.node),
            Some(Node::Dir(DirNode { children: None, .. }))
        );
        if needs_load {
            self.ensure_loaded(ino)?;
        }
        let state = self.lock();
        self.attr_of(&state, ino)
    }

    /// Finds `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &str) -> Result<FileAttr> {
        let parent_node = {
            let state = self.lock();
            let inode = state.inodes.get(&parent).ok_or(FsError::NotFound)?;
            match &inode.node {
                Node::Top => 0,
                Node::Refs => 1,
                Node::Versions { .. } => 2,
                Node::Dir(_) => 3,
                _ => return Err(FsError::NotDir),
            }
        };
        let ino = match parent_node {
            0 => self.lookup_top(name)?,
            1 => self.lookup_ref(name)?,
            2 => self.lookup_version(parent, name)?,
            _ => {
                let versions = {
                    let state = self.lock();
                    let inode = state.inodes.get(&parent).ok_or(FsError::NotFound)?;
                    inode.view.and_then(|v| {
                        let view = &state.views[v];
                        (view.root == parent && view.history.is_none()).then_some(view.versions)
                    })
                };
                match versions {
                    Some(versions) if name == VERSIONS_NAME => versions,
                    _ => {
                        self.ensure_loaded(parent)?;
                        let state = self.lock();
                        child_of(&state, parent, name)?
                    }
                }
            }
        };
        self.getattr(ino)
    }

    fn lookup_top(&self, name: &str) -> Result<Ino> {
        if name == REFS_NAME {
            return Ok(REFS);
        }
        let Ok(Reference::Volume(key)) = name.parse::<Reference>() else {
            return Err(FsError::NotFound);
        };
        {
            let state = self.lock();
            if let Some(&view) = state.by_key.get(&key) {
                return Ok(state.views[view].root);
            }
        }
        let record = self.backend.get_root(&key)?.ok_or(FsError::NotFound)?;
        let mut state = self.lock();
        if let Some(&view) = state.by_key.get(&key) {
            return Ok(state.views[view].root);
        }
        let view = add_view(&mut state, key, None, None, Some(&record));
        Ok(state.views[view].root)
    }

    fn lookup_ref(&self, name: &str) -> Result<Ino> {
        let Ok(Reference::File(file)) = name.parse::<Reference>() else {
            return Err(FsError::NotFound);
        };
        if let Some(&ino) = self.lock().ref_files.get(&file) {
            return Ok(ino);
        }
        let size = match self.backend.file_size(&file) {
            Err(BackendError::NotFound) => return Err(FsError::NotFound),
            other => other?,
        };
        let mut state = self.lock();
        if let Some(&ino) = state.ref_files.get(&file) {
            return Ok(ino);
        }
        let ino = new_ino(&mut state);
        let mut inode = special_inode(Node::RefFile { file, size }, REFS);
        inode.mode = 0o444;
        state.inodes.insert(ino, inode);
        state.ref_files.insert(file, ino);
        Ok(ino)
    }

    /// The chain of roots of a live view: (sequence, root file), newest first.
    fn version_chain(&self, view: usize, want: Option<u64>) -> Result<Vec<(u64, FileId, u64)>> {
        let (mut at, key) = {
            let state = self.lock();
            let v = &state.views[view];
            (v.root_file.map(|f| (v.sequence, f, v.root_time)), v.key)
        };
        let _ = key;
        let mut chain = Vec::new();
        for _ in 0..MAX_VERSION_WALK {
            let Some((sequence, root, time)) = at else {
                break;
            };
            chain.push((sequence, root, time));
            if want.is_some_and(|w| w >= sequence) {
                break;
            }
            at = load_directory(&*self.backend, &root)?
                .previous
                .map(|p| (p.sequence, p.root, p.time));
        }
        Ok(chain)
    }

    fn lookup_version(&self, parent: Ino, name: &str) -> Result<Ino> {
        let view = match self.lock().inodes.get(&parent).map(|i| &i.node) {
            Some(Node::Versions { view }) => *view,
            _ => return Err(FsError::NotFound),
        };
        let sequence: u64 = name.parse().map_err(|_| FsError::NotFound)?;
        {
            let state = self.lock();
            if let Some(&history) = state.history_views.get(&(view, sequence)) {
                return Ok(state.views[history].root);
            }
        }
        let chain = self.version_chain(view, Some(sequence))?;
        let (_, root, time) = chain
            .into_iter()
            .find(|(s, _, _)| *s == sequence)
            .ok_or(FsError::NotFound)?;
        let mut state = self.lock();
        if let Some(&history) = state.history_views.get(&(view, sequence)) {
            return Ok(state.views[history].root);
        }
        let key = state.views[view].key;
        let record = crate::backend::make_root_record(key, sequence, root, time);
        let history = add_view(&mut state, key, None, Some(sequence), Some(&record));
        let root_ino = state.views[history].root;
        if let Some(inode) = state.inodes.get_mut(&root_ino) {
            inode.parent = parent;
        }
        state.history_views.insert((view, sequence), history);
        Ok(root_ino)
    }

    /// Snapshots a directory's listing for readdir; returns the handle.
    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        let kind = {
            let state = self.lock();
            match &state.inodes.get(&ino).ok_or(FsError::NotFound)?.node {
                Node::Top => 0,
                Node::Refs => 1,
                Node::Versions { view } => 2 + *view,
                Node::Dir(_) => 1,
                _ => return Err(FsError::NotDir),
            }
        };
        let chain = if kind >= 2 {
            self.version_chain(kind - 2, None)?
        } else {
            Vec::new()
        };
        self.ensure_loaded(ino)?;
        let mut state = self.lock();
        let inode = state.inodes.get(&ino).ok_or(FsError::NotFound)?;
        let mut listing = vec![
            (ino, FileType::Directory, ".".to_string()),
            (inode.parent, FileType::Directory, "..".to_string()),
        ];
        match &inode.node {
            Node::Top => {
                listing.push((REFS, FileType::Directory, REFS_NAME.to_string()));
                for view in state.views.iter().filter(|v| v.writable()) {
                    listing.push((
                        view.root,
                        FileType::Directory,
                        Reference::Volume(view.key).to_string(),
                    ));
                }
            }
            Node::Versions { view } => {
                let view = *view;
                for (sequence, _, _) in chain {
                    // Inode numbers of versions are given at lookup; readdir's are
                    // placeholders the kernel does not keep.
                    let placeholder = state
                        .history_views
                        .get(&(view, sequence))
                        .map_or(u64::MAX, |h| state.views[*h].root);
                    listing.push((placeholder, FileType::Directory, sequence.to_string()));
                }
            }
            Node::Dir(DirNode {
                children: Some(children),
                ..
            }) => {
                for (name, child) in children {
                    let kind = match state.inodes.get(child).map(|i| &i.node) {
                        Some(Node::Dir(_)) => FileType::Directory,
                        Some(Node::Symlink(_)) => FileType::Symlink,
                        _ => FileType::RegularFile,
                    };
                    listing.push((*child, kind, name.clone()));
                }
            }
            _ => {}
        }
        let handle = state.next_handle;
        state.next_handle += 1;
        state.dir_handles.insert(handle, listing);
        Ok(handle)
    }

    /// Entries of an open directory from `offset` (index + 1 of the last one given).
    pub fn readdir_from(&self, handle: u64, offset: u64) -> Vec<(Ino, FileType, String)> {
        let state = self.lock();
        state
            .dir_handles
            .get(&handle)
            .map(|l| l.iter().skip(offset as usize).cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets a directory handle.
    pub fn releasedir(&self, handle: u64) {
        self.lock().dir_handles.remove(&handle);
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: Ino) -> Result<String> {
        match &self.lock().inodes.get(&ino).ok_or(FsError::NotFound)?.node {
            Node::Symlink(target) => Ok(target.clone()),
            _ => Err(FsError::Invalid),
        }
    }

    /// Checks that `parent` is a directory of a writable volume, loads it and checks
    /// that `name` is free.
    fn prepare_new(&self, parent: Ino, name: &str) -> Result<usize> {
        let view = writable_view(&self.lock(), parent)?;
        if !valid_name(name) {
            return Err(FsError::Invalid);
        }
        self.ensure_loaded(parent)?;
        let state = self.lock();
        if state.views[view].root == parent && name == VERSIONS_NAME {
            return Err(FsError::Exists);
        }
        match child_of(&state, parent, name) {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(view),
            Err(e) => Err(e),
        }
    }

    fn insert_new(&self, parent: Ino, name: &str, node: Node, mode: u32) -> Result<FileAttr> {
        let view = self.prepare_new(parent, name)?;
        let mut state = self.lock();
        if child_of(&state, parent, name).is_ok() {
            return Err(FsError::Exists);
        }
        let ino = new_ino(&mut state);
        let at = now();
        state.inodes.insert(
            ino,
            Inode {
                parent,
                view: Some(view),
                node,
                mode: mode & 0o7777,
                mtime: at,
                ctime: at,
            },
        );
        children_mut(&mut state, parent)?.insert(name.to_string(), ino);
        touch_dir(&mut state, parent, at);
        self.wake.notify_all();
        self.attr_of(&state, ino)
    }

    /// Creates an empty regular file.
    pub fn create(&self, parent: Ino, name: &str, mode: u32) -> Result<(FileAttr, u64)> {
        let node = Node::File(FileNode {
            content: FileContent::Inline(Vec::new()),
            size: 0,
            buffer: None,
            open: 0,
            unlinked: false,
        });
        let attr = self.insert_new(parent, name, node, mode)?;
        let handle = self.open(attr.ino.0, true, false)?;
        Ok((attr, handle))
    }

    /// Creates a directory.
    pub fn mkdir(&self, parent: Ino, name: &str, mode: u32) -> Result<FileAttr> {
        let node = Node::Dir(DirNode {
            stored: None,
            children: Some(BTreeMap::new()),
            dirty: true,
            version: 0,
        });
        self.insert_new(parent, name, node, mode)
    }

    /// Creates a symbolic link.
    pub fn symlink(&self, parent: Ino, name: &str, target: &str) -> Result<FileAttr> {
        self.insert_new(parent, name, Node::Symlink(target.to_string()), 0o777)
    }

    /// Removes a file or symlink.
    pub fn unlink(&self, parent: Ino, name: &str) -> Result<()> {
        writable_view(&self.lock(), parent)?;
        self.ensure_loaded(parent)?;
        let mut state = self.lock();
        let child = child_of(&state, parent, name)?;
        match state.inodes.get_mut(&child).map(|i| &mut i.node) {
            Some(Node::Dir(_)) => return Err(FsError::IsDir),
            Some(Node::File(file)) => file.unlinked = true,
            _ => {}
        }
        children_mut(&mut state, parent)?.remove(name);
        touch_dir(&mut state, parent, now());
        self.wake.notify_all();
        Ok(())
    }

    /// Removes an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &str) -> Result<()> {
        writable_view(&self.lock(), parent)?;
        self.ensure_loaded(parent)?;
        let child = child_of(&self.lock(), parent, name)?;
        self.ensure_loaded(child)?;
        let mut state = self.lock();
        if child_of(&state, parent, name)? != child {
            return Err(FsError::NotFound);
        }
        match state.inodes.get(&child).map(|i| &i.node) {
            Some(Node::Dir(DirNode {
                children: Some(c), ..
            })) => {
                if !c.is_empty() {
                    return Err(FsError::NotEmpty);
                }
            }
            _ => return Err(FsError::NotDir),
        }
        children_mut(&mut state, parent)?.remove(name);
        touch_dir(&mut state, parent, now());
        self.wake.notify_all();
        Ok(())
    }

    /// Renames within one volume, replacing a target as POSIX says.
    pub fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        no_replace: bool,
    ) -> Result<()> {
        let view = writable_view(&self.lock(), parent)?;
        if writable_view(&self.lock(), new_parent)? != view {
            return Err(FsError::CrossVolume);
        }
        if !valid_name(new_name) {
            return Err(FsError::Invalid);
        }
        self.ensure_loaded(parent)?;
        self.ensure_loaded(new_parent)?;
        let source = child_of(&self.lock(), parent, name)?;
        let target = match child_of(&self.lock(), new_parent, new_name) {
            Ok(t) => Some(t),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(target) = target {
            self.ensure_loaded(target)?;
        }
        let mut state = self.lock();
        if state.views[view].root == new_parent && new_name == VERSIONS_NAME {
            return Err(FsError::Exists);
        }
        // Re-check under the lock: another worker may have changed either name.
        if child_of(&state, parent, name)? != source
            || child_of(&state, new_parent, new_name).ok() != target
        {
            return Err(FsError::Io("concurrent change during rename".into()));
        }
        let source_is_dir = matches!(
            state.inodes.get(&source).map(|i| &i.node),
            Some(Node::Dir(_))
        );
        if source_is_dir {
            // Not into itself or below itself.
            let mut at = new_parent;
            for _ in 0..4096 {
                if at == source {
                    return Err(FsError::Invalid);
                }
                if at == state.views[view].root {
                    break;
                }
                at = state.inodes.get(&at).map_or(TOP, |i| i.parent);
            }
        }
        if let Some(target) = target {
            if target == source {
                return Ok(());
            }
            if no_replace {
                return Err(FsError::Exists);
            }
            match (
                source_is_dir,
                state.inodes.get_mut(&target).map(|i| &mut i.node),
            ) {
                (
                    true,
                    Some(Node::Dir(DirNode {
                        children: Some(c), ..
                    })),
                ) => {
                    if !c.is_empty() {
                        return Err(FsError::NotEmpty);
                    }
                }
                (true, _) => return Err(FsError::NotDir),
                (false, Some(Node::Dir(_))) => return Err(FsError::IsDir),
                (false, Some(Node::File(file))) => file.unlinked = true,
                (false, _) => {}
            }
        }
        let at = now();
        children_mut(&mut state, parent)?.remove(name);
        children_mut(&mut state, new_parent)?.insert(new_name.to_string(), source);
        if let Some(inode) = state.inodes.get_mut(&source) {
            inode.parent = new_parent;
            inode.ctime = at;
        }
        touch_dir(&mut state, parent, at);
        touch_dir(&mut state, new_parent, at);
        self.wake.notify_all();
        Ok(())
    }

    /// Changes mode, size or mtime.
    pub fn setattr(
        &self,
        ino: Ino,
        mode: Option<u32>,
        size: Option<u64>,
        mtime: Option<SystemTime>,
    ) -> Result<FileAttr> {
        if mode.is_some() || size.is_some() || mtime.is_some() {
            let state = self.lock();
            let inode = state.inodes.get(&ino).ok_or(FsError::NotFound)?;
            let view = inode.view.ok_or(FsError::ReadOnly)?;
            if !state.views[view].writable() {
                return Err(FsError::ReadOnly);
            }
        }
        if let Some(size) = size {
            let buffer = self.ensure_buffer(ino, Some(size))?;
            let mut buffer = lock_buffer(&buffer);
            buffer.set_len(size)?;
            file_resized(&mut self.lock(), ino, size);
            drop(buffer);
            let open = matches!(self.lock().inodes.get(&ino).map(|i| &i.node), Some(Node::File(f)) if f.open > 0);
            if !open {
                self.store_file(ino)?;
                self.drop_buffer_if_closed(ino);
            }
        }
        let mut state = self.lock();
        let at = now();
        let parent = {
            let inode = state.inodes.get_mut(&ino).ok_or(FsError::NotFound)?;
            if let Some(mode) = mode {
                inode.mode = mode & 0o7777;
                inode.ctime = at;
            }
            if let Some(mtime) = mtime {
                inode.mtime = mtime;
                inode.ctime = at;
            }
            inode.parent
        };
        if (mode.is_some() || mtime.is_some()) && !is_view_root(&state, ino) {
            touch_dir(&mut state, parent, at);
            self.wake.notify_all();
        }
        self.attr_of(&state, ino)
    }

    /// Opens a file; returns the handle.
    pub fn open(&self, ino: Ino, write: bool, truncate: bool) -> Result<u64> {
        let mut state = self.lock();
        let inode = state.inodes.get(&ino).ok_or(FsError::NotFound)?;
        match &inode.node {
            Node::Dir(_) | Node::Top | Node::Refs | Node::Versions { .. } if write => {
                return Err(FsError::IsDir);
            }
            _ => {}
        }
        if write {
            let view = inode.view.ok_or(FsError::ReadOnly)?;
            if !state.views[view].writable() {
                return Err(FsError::ReadOnly);
            }
        }
        if let Some(Node::File(file)) = state.inodes.get_mut(&ino).map(|i| &mut i.node) {
            file.open += 1;
        }
        let handle = state.next_handle;
        state.next_handle += 1;
        state.files.insert(handle, OpenFile { ino, last_end: 0 });
        drop(state);
        if truncate {
            if let Err(e) = self.setattr(ino, None, Some(0), None) {
                let _ = self.release(handle);
                return Err(e);
            }
        }
        Ok(handle)
    }

    /// The write buffer of a file, created (with the stored content, streamed, up to
    /// `keep` bytes) if it has none.
    fn ensure_buffer(&self, ino: Ino, keep: Option<u64>) -> Result<Arc<Mutex<WriteBuffer>>> {
        let content = {
            let state = self.lock();
            let inode = state.inodes.get(&ino).ok_or(FsError::NotFound)?;
            let Node::File(file) = &inode.node else {
                return Err(match inode.node {
                    Node::Dir(_) => FsError::IsDir,
                    _ => FsError::Invalid,
                });
            };
            if let Some(buffer) = &file.buffer {
                return Ok(Arc::clone(buffer));
            }
            file.content.clone()
        };
        let keep = keep.unwrap_or(u64::MAX);
        let buffer = match &content {
            _ if keep == 0 => WriteBuffer::empty(),
            FileContent::Inline(bytes) => {
                let take = (bytes.len() as u64).min(keep) as usize;
                WriteBuffer::from_reader(&mut &bytes[..take])?
            }
            FileContent::Stored { file, size } => {
                let length = (*size).min(keep);
                let mut reader = self.backend.read_range(file, 0, Some(length))?;
                WriteBuffer::from_reader(&mut reader)?
            }
        };
        let mut state = self.lock();
        let view = state.inodes.get(&ino).and_then(|i| i.view);
        let Some(Inode {
            node: Node::File(file),
            ..
        }) = state.inodes.get_mut(&ino)
        else {
            return Err(FsError::NotFound);
        };
        if let Some(existing) = &file.buffer {
            return Ok(Arc::clone(existing));
        }
        let buffer = Arc::new(Mutex::new(buffer));
        file.buffer = Some(Arc::clone(&buffer));
        if let Some(view) = view {
            state.views[view].writers += 1;
        }
        Ok(buffer)
    }

    /// Writes through a handle.
    pub fn write(&self, handle: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let ino = self.handle_ino(handle)?;
        let buffer = self.ensure_buffer(ino, None)?;
        let mut buffer = lock_buffer(&buffer);
        buffer.write_at(offset, data)?;
        let len = buffer.len();
        file_resized(&mut self.lock(), ino, len);
        Ok(data.len() as u32)
    }

    fn handle_ino(&self, handle: u64) -> Result<Ino> {
        self.lock()
            .files
            .get(&handle)
            .map(|f| f.ino)
            .ok_or(FsError::Invalid)
    }

    /// Reads through a handle.
    pub fn read(&self, handle: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        enum Source {
            Buffer(Arc<Mutex<WriteBuffer>>),
            Bytes(FileContent),
            Ref(FileId, u64),
        }
        let (source, sequential) = {
            let mut state = self.lock();
            let open = state.files.get_mut(&handle).ok_or(FsError::Invalid)?;
            // Sequential: starting near where the last read ended. The kernel's
            // read-ahead sends reads on several workers, so not exactly there.
            let sequential = offset.abs_diff(open.last_end) <= SEQUENTIAL_SLACK;
            open.last_end = open.last_end.max(offset + u64::from(size));
            if !sequential {
                open.last_end = offset + u64::from(size);
            }
            let ino = open.ino;
            let source = match &state.inodes.get(&ino).ok_or(FsError::NotFound)?.node {
                Node::File(file) => match &file.buffer {
                    Some(buffer) => Source::Buffer(Arc::clone(buffer)),
                    None => Source::Bytes(file.content.clone()),
                },
                Node::RefFile { file, size } => Source::Ref(*file, *size),
                Node::Dir(_) => return Err(FsError::IsDir),
                _ => return Err(FsError::Invalid),
            };
            (source, sequential)
        };
        let ahead = if sequential { READ_AHEAD_BLOCKS } else { 0 };
        let size = u64::from(size);
        match source {
            Source::Buffer(buffer) => Ok(lock_buffer(&buffer).read_at(offset, size)?),
            Source::Bytes(FileContent::Inline(bytes)) => {
                let start = (offset as usize).min(bytes.len());
                let end = (offset.saturating_add(size) as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
            Source::Bytes(FileContent::Stored { file, size: total }) | Source::Ref(file, total) => {
                Ok(self.cache.read(file, total, offset, size, ahead)?)
            }
        }
    }

    /// Stores a file's dirty buffer and updates its directory entry.
    pub fn store_file(&self, ino: Ino) -> Result<()> {
        let (buffer, owner) = {
            let state = self.lock();
            let Some(inode) = state.inodes.get(&ino) else {
                return Ok(());
            };
            let Node::File(FileNode {
                buffer: Some(buffer),
                ..
            }) = &inode.node
            else {
                return Ok(());
            };
            let owner = inode
                .view
                .and_then(|v| state.views[v].owner.clone())
                .ok_or(FsError::ReadOnly)?;
            (Arc::clone(buffer), owner)
        };
        let mut buffer = lock_buffer(&buffer);
        if !buffer.dirty {
            return Ok(());
        }
        let unlinked = matches!(self.lock().inodes.get(&ino).map(|i| &i.node), Some(Node::File(f)) if f.unlinked);
        if unlinked {
            buffer.dirty = false;
            return Ok(());
        }
        let len = buffer.len();
        let content = if len <= INLINE_MAX {
            FileContent::Inline(buffer.read_at(0, len)?)
        } else {
            let file = self.backend.put_file(&owner, &mut buffer.reader())?;
            FileContent::Stored { file, size: len }
        };
        buffer.dirty = false;
        let mut state = self.lock();
        let parent = match state.inodes.get_mut(&ino) {
            Some(Inode {
                node: Node::File(file),
                parent,
                ..
            }) => {
                file.content = content;
                (!file.unlinked).then_some(*parent)
            }
            _ => None,
        };
        if let Some(parent) = parent {
            touch_dir(&mut state, parent, now());
            self.wake.notify_all();
        }
        Ok(())
    }

    fn drop_buffer_if_closed(&self, ino: Ino) {
        let mut state = self.lock();
        let view = state.inodes.get(&ino).and_then(|i| i.view);
        let dropped = match state.inodes.get_mut(&ino).map(|i| &mut i.node) {
            Some(Node::File(file)) if file.open == 0 => file.buffer.take().is_some(),
            _ => false,
        };
        if let (true, Some(view)) = (dropped, view) {
            state.views[view].writers = state.views[view].writers.saturating_sub(1);
        }
    }

    /// Stores on close.
    pub fn flush(&self, handle: u64) -> Result<()> {
        let ino = self.handle_ino(handle)?;
        self.store_file(ino)
    }

    /// Last close of a handle: stores, and frees the buffer if no handle is left.
    pub fn release(&self, handle: u64) -> Result<()> {
        let Some(open) = self.lock().files.remove(&handle) else {
            return Ok(());
        };
        let stored = self.store_file(open.ino);
        if let Some(Node::File(file)) = self.lock().inodes.get_mut(&open.ino).map(|i| &mut i.node) {
            file.open = file.open.saturating_sub(1);
        }
        if stored.is_ok() {
            self.drop_buffer_if_closed(open.ino);
        }
        stored
    }

    /// Stores the file and waits until a publish covering it completed.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.store_file(ino)?;
        self.wait_published(ino)
    }

    /// Waits until a publish covering every change so far to `ino`'s volume completed.
    pub fn wait_published(&self, ino: Ino) -> Result<()> {
        let mut state = self.lock();
        let Some(view) = state.inodes.get(&ino).and_then(|i| i.view) else {
            return Ok(());
        };
        if !state.views[view].writable() {
            return Ok(());
        }
        let target = state.views[view].change_gen;
        self.wake.notify_all();
        let deadline = Instant::now() + PUBLISH_WAIT;
        loop {
            let v = &state.views[view];
            if v.lost
                .iter()
                .any(|(after, through)| *after < target && target <= *through)
            {
                return Err(FsError::Lost);
            }
            if v.published_gen >= target {
                return Ok(());
            }
            if v.failed_gen >= target {
                return Err(FsError::Io("publishing the volume's root failed".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FsError::Io("timed out waiting for the publish".into()));
            }
            state = self
                .published
                .wait_timeout(state, left.min(Duration::from_millis(500)))
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Whether any writable volume has changes not yet published.
    pub fn has_pending(&self) -> bool {
        self.lock()
            .views
            .iter()
            .any(|v| v.writable() && v.change_gen > v.published_gen)
    }

    /// Publishes every volume with unpublished changes (run by the publisher).
    pub fn publish_pending(&self) {
        let pending: Vec<usize> = {
            let state = self.lock();
            (0..state.views.len())
                .filter(|&v| {
                    let view = &state.views[v];
                    view.writable() && view.change_gen > view.published_gen
                })
                .collect()
        };
        for view in pending {
            self.publish_view(view);
        }
        self.published.notify_all();
    }

    /// One publish of one volume, in three steps so that no network call holds the
    /// state lock: snapshot the dirty directories (locked), store them bottom-up and
    /// publish the root (unlocked), then record the stored ids of the directories
    /// that did not change meanwhile (locked). A directory changed meanwhile stays
    /// dirty, and its change generation is above the one published, so the next
    /// round stores it again.
    fn publish_view(&self, view: usize) {
        let (generation, owner, key, sequence, old_root, plan, root_seal) = {
            let mut state = self.lock();
            let v = &state.views[view];
            let Some(owner) = v.owner.clone() else {
                return;
            };
            let previous = v.root_file.map(|root| PreviousRoot {
                sequence: v.sequence,
                root,
                time: v.root_time,
            });
            let (generation, key, sequence, old_root, root_ino) =
                (v.change_gen, v.key, v.sequence, v.root_file, v.root);
            let mut plan = Vec::new();
            match snapshot(&mut state, root_ino, previous, &mut plan) {
                Ok(root_seal) => (generation, owner, key, sequence, old_root, plan, root_seal),
                Err(e) => {
                    error!(volume = %Reference::Volume(key), error = %e, "snapshotting the volume failed");
                    state.views[view].failed_gen = generation;
                    return;
                }
            }
        };
        let stored = match store_plan(&*self.backend, &owner, &plan) {
            Ok(stored) => stored,
            Err(e) => {
                error!(volume = %Reference::Volume(key), error = %e, "storing the volume's directories failed; will retry");
                self.lock().views[view].failed_gen = generation;
                return;
            }
        };
        let root = match root_seal {
            Sealed::Stored(file) => file,
            Sealed::Planned(index) => stored[index],
        };
        let commit = |state: &mut State| {
            for (dir, file) in plan.iter().zip(&stored) {
                if let Some(Inode {
                    node: Node::Dir(node),
                    ..
                }) = state.inodes.get_mut(&dir.ino)
                {
                    if node.version == dir.version {
                        node.stored = Some(*file);
                        node.dirty = false;
                    }
                }
            }
        };
        if Some(root) == old_root {
            let mut state = self.lock();
            commit(&mut state);
            state.views[view].published_gen = generation;
            return;
        }
        match self.backend.publish_root(&owner, sequence + 1, root) {
            Ok(()) => {
                let mut state = self.lock();
                commit(&mut state);
                let v = &mut state.views[view];
                v.sequence = sequence + 1;
                v.root_file = Some(root);
                v.root_time = unix_now();
                v.published_gen = generation;
                info!(volume = %Reference::Volume(key), sequence = v.sequence, root = %Reference::File(root), "published");
            }
            Err(BackendError::Conflict { held_sequence }) => {
                error!(
                    volume = %Reference::Volume(key),
                    unpublished_root = %Reference::File(root),
                    held_sequence,
                    "lost update: another writer published this volume first; this mount's \
                     changes are kept only in the unpublished root named here, and the mount \
                     now shows the other writer's state"
                );
                let winner = self.backend.get_root(&key);
                let mut state = self.lock();
                let v = &mut state.views[view];
                v.lost.push((v.published_gen, generation));
                if v.lost.len() > 16 {
                    v.lost.remove(0);
                }
                v.published_gen = generation;
                match winner {
                    Ok(Some(record)) => reset_view(&mut state, view, &record),
                    Ok(None) => warn!("conflict but no root record found"),
                    Err(e) => warn!(error = %e, "reading the winning root failed"),
                }
            }
            Err(e) => {
                error!(volume = %Reference::Volume(key), error = %e, "publishing the root failed; will retry");
                let mut state = self.lock();
                commit(&mut state);
                state.views[view].failed_gen = generation;
            }
        }
    }

    /// Re-reads root records of live views; adopts newer ones where nothing is
    /// unpublished here.
    pub fn refresh(&self) {
        let keys: Vec<(usize, VolumeKey)> = {
            let state = self.lock();
            state
                .views
                .iter()
                .enumerate()
                .filter(|(_, v)| v.history.is_none())
                .map(|(i, v)| (i, v.key))
                .collect()
        };
        for (view, key) in keys {
            let record = match self.backend.get_root(&key) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e) => {
                    warn!(volume = %Reference::Volume(key), error = %e, "refresh failed");
                    continue;
                }
            };
            let mut state = self.lock();
            let v = &state.views[view];
            if record.sequence > v.sequence && v.change_gen == v.published_gen && v.writers == 0 {
                info!(volume = %Reference::Volume(key), sequence = record.sequence, "newer root adopted");
                reset_view(&mut state, view, &record);
            }
        }
    }

    /// Sleeps the publisher until woken by a change or `timeout`.
    pub fn wait_for_work(&self, timeout: Duration) {
        let state = self.lock();
        if self.stop.load(Ordering::SeqCst)
            || state.views.iter().any(|v| {
                v.writable() && v.change_gen > v.published_gen && v.failed_gen < v.change_gen
            })
        {
            return;
        }
        let _ = self.wake.wait_timeout(state, timeout);
    }

    /// Wakes the publisher.
    pub fn wake_publisher(&self) {
        self.wake.notify_all();
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

fn lock_buffer(buffer: &Mutex<WriteBuffer>) -> MutexGuard<'_, WriteBuffer> {
    buffer.lock().unwrap_or_else(|p| p.into_inner())
}

fn special_inode(node: Node, parent: Ino) -> Inode {
    Inode {
        parent,
        view: None,
        node,
        mode: 0o555,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
    }
}

fn new_ino(state: &mut State) -> Ino {
    let ino = state.next_ino;
    state.next_ino += 1;
    ino
}

fn child_of(state: &State, parent: Ino, name: &str) -> Result<Ino> {
    match state.inodes.get(&parent).map(|i| &i.node) {
        Some(Node::Dir(DirNode {
            children: Some(children),
            ..
        })) => children.get(name).copied().ok_or(FsError::NotFound),
        Some(Node::Dir(_)) => Err(FsError::Io("directory not loaded".into())),
        Some(_) => Err(FsError::NotDir),
        None => Err(FsError::NotFound),
    }
}

fn children_mut(state: &mut State, dir: Ino) -> Result<&mut BTreeMap<String, Ino>> {
    match state.inodes.get_mut(&dir).map(|i| &mut i.node) {
        Some(Node::Dir(DirNode {
            children: Some(children),
            ..
        })) => Ok(children),
        _ => Err(FsError::NotDir),
    }
}

fn writable_view(state: &State, dir: Ino) -> Result<usize> {
    let inode = state.inodes.get(&dir).ok_or(FsError::NotFound)?;
    let view = inode.view.ok_or(FsError::ReadOnly)?;
    if !state.views[view].writable() {
        return Err(FsError::ReadOnly);
    }
    match inode.node {
        Node::Dir(_) => Ok(view),
        _ => Err(FsError::NotDir),
    }
}

fn is_view_root(state: &State, ino: Ino) -> bool {
    state
        .inodes
        .get(&ino)
        .and_then(|i| i.view)
        .is_some_and(|v| state.views[v].root == ino)
}

/// A file's content changed to `size` bytes: its size, mtime and ctime follow.
fn file_resized(state: &mut State, ino: Ino, size: u64) {
    if let Some(Inode {
        node: Node::File(file),
        mtime,
        ctime,
        ..
    }) = state.inodes.get_mut(&ino)
    {
        file.size = size;
        let at = now();
        *mtime = at;
        *ctime = at;
    }
}

/// Marks `dir` and its ancestors dirty, stamps `dir`'s times, and counts a change of
/// its volume.
fn touch_dir(state: &mut State, dir: Ino, at: SystemTime) {
    let Some(view) = state.inodes.get(&dir).and_then(|i| i.view) else {
        return;
    };
    if let Some(inode) = state.inodes.get_mut(&dir) {
        inode.mtime = at;
        inode.ctime = at;
    }
    let root = state.views[view].root;
    let mut at_ino = dir;
    // Bounded by the depth of the tree, which is bounded by the inode count.
    for _ in 0..=state.inodes.len() {
        let Some(inode) = state.inodes.get_mut(&at_ino) else {
            break;
        };
        if let Node::Dir(d) = &mut inode.node {
            d.dirty = true;
            d.version += 1;
        }
        if at_ino == root {
            break;
        }
        at_ino = inode.parent;
    }
    state.views[view].change_gen += 1;
}

fn add_view(
    state: &mut State,
    key: VolumeKey,
    owner: Option<Arc<KeyPair>>,
    history: Option<u64>,
    record: Option<&RootRecord>,
) -> usize {
    let index = state.views.len();
    let root = new_ino(state);
    let versions = new_ino(state);
    let node = match record {
        Some(record) => DirNode {
            stored: Some(root_file(record)),
            children: None,
            dirty: false,
            version: 0,
        },
        None => DirNode {
            stored: None,
            children: Some(BTreeMap::new()),
            dirty: false,
            version: 0,
        },
    };
    let mtime = record.map_or(UNIX_EPOCH, |r| UNIX_EPOCH + Duration::from_secs(r.time));
    state.inodes.insert(
        root,
        Inode {
            parent: TOP,
            view: Some(index),
            node: Node::Dir(node),
            mode: if owner.is_some() && history.is_none() {
                0o755
            } else {
                0o555
            },
            mtime,
            ctime: mtime,
        },
    );
    state.inodes.insert(
        versions,
        special_inode(Node::Versions { view: index }, root),
    );
    state.views.push(View {
        key,
        owner,
        history,
        root,
        versions,
        sequence: record.map_or(0, |r| r.sequence),
        root_file: record.map(root_file),
        root_time: record.map_or(0, |r| r.time),
        change_gen: 0,
        published_gen: 0,
        failed_gen: 0,
        lost: Vec::new(),
        writers: 0,
    });
    if history.is_none() {
        state.by_key.insert(key, index);
    }
    index
}

/// Points a live view at another root; its old inodes stay for handles still open.
fn reset_view(state: &mut State, view: usize, record: &RootRecord) {
    let v = &mut state.views[view];
    v.sequence = record.sequence;
    v.root_file = Some(root_file(record));
    v.root_time = record.time;
    let root = v.root;
    if let Some(inode) = state.inodes.get_mut(&root) {
        inode.node = Node::Dir(DirNode {
            stored: Some(root_file(record)),
            children: None,
            dirty: false,
            version: 0,
        });
        inode.mtime = UNIX_EPOCH + Duration::from_secs(record.time);
        inode.ctime = inode.mtime;
    }
}

/// A directory of a publish: stored already, or the index of its plan entry.
enum Sealed {
    Stored(FileId),
    Planned(usize),
}

/// An entry of a planned directory: ready, or a subdirectory planned earlier.
enum PlannedKind {
    Ready(EntryKind),
    Subdirectory(usize),
}

/// A dirty directory to store, as it was when the publish began.
struct PlannedDir {
    ino: Ino,
    version: u64,
    previous: Option<PreviousRoot>,
    entries: Vec<(String, PlannedKind, u32, i64, u32)>,
}

/// Plans the directory `ino` and its dirty descendants, children before parents.
fn snapshot(
    state: &mut State,
    ino: Ino,
    previous: Option<PreviousRoot>,
    plan: &mut Vec<PlannedDir>,
) -> Result<Sealed> {
    let (children, version) = match state.inodes.get(&ino).map(|i| &i.node) {
        Some(Node::Dir(dir)) => {
            if let (false, Some(stored)) = (dir.dirty, dir.stored) {
                return Ok(Sealed::Stored(stored));
            }
            match &dir.children {
                Some(c) => (
                    c.iter().map(|(n, i)| (n.clone(), *i)).collect::<Vec<_>>(),
                    dir.version,
                ),
                None => {
                    return dir
                        .stored
                        .map(Sealed::Stored)
                        .ok_or_else(|| FsError::Io("unloaded directory".into()));
                }
            }
        }
        _ => return Err(FsError::Io("not a directory".into())),
    };
    let mut entries = Vec::with_capacity(children.len());
    for (name, child) in children {
        let kind = match state.inodes.get(&child).map(|i| &i.node) {
            Some(Node::File(file)) => PlannedKind::Ready(EntryKind::File(file.content.clone())),
            Some(Node::Symlink(target)) => PlannedKind::Ready(EntryKind::Symlink(target.clone())),
            Some(Node::Dir(_)) => match snapshot(state, child, None, plan)? {
                Sealed::Stored(file) => PlannedKind::Ready(EntryKind::Dir(file)),
                Sealed::Planned(index) => PlannedKind::Subdirectory(index),
            },
            _ => continue,
        };
        let Some(inode) = state.inodes.get(&child) else {
            continue;
        };
        let since = inode.mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
        entries.push((
            name,
            kind,
            inode.mode,
            since.as_secs() as i64,
            since.subsec_nanos(),
        ));
    }
    plan.push(PlannedDir {
        ino,
        version,
        previous,
        entries,
    });
    Ok(Sealed::Planned(plan.len() - 1))
}

/// Stores a plan's directories in order; returns their files.
fn store_plan(
    backend: &dyn Backend,
    owner: &KeyPair,
    plan: &[PlannedDir],
) -> std::result::Result<Vec<FileId>, BackendError> {
    let mut stored: Vec<FileId> = Vec::with_capacity(plan.len());
    for dir in plan {
        let entries = dir
            .entries
            .iter()
            .map(|(name, kind, mode, secs, nanos)| DirEntry {
                name: name.clone(),
                kind: match kind {
                    PlannedKind::Ready(kind) => kind.clone(),
                    // Children are planned before their parents.
                    PlannedKind::Subdirectory(index) => EntryKind::Dir(stored[*index]),
                },
                mode: *mode,
                mtime_secs: *secs,
                mtime_nanos: *nanos,
            })
            .collect();
        let bytes = Directory {
            previous: dir.previous,
            entries,
        }
        .encode();
        stored.push(backend.put_file(owner, &mut &bytes[..])?);
    }
    Ok(stored)
}
