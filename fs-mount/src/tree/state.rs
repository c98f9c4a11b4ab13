//! The mount's state behind the lock: the inode table ([`Inode`], [`Node`]), the
//! volume views ([`View`]: a mounted volume or one of its earlier roots) and the
//! open handles, with the edits every operation makes to them (new inodes and
//! views, finding and changing a directory's children, marking directories dirty).
//! Plain functions over `&State`/`&mut State`: nothing here locks or does I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_core::crypto::{KeyPair, RootRecord};
use cairn_core::id::{FileId, VolumeKey};
use fuser::FileType;

use super::error::{FsError, Result};
use super::{Ino, TOP, now};
use crate::backend::root_file;
use crate::buffer::WriteBuffer;
use crate::volume::FileContent;

pub(super) struct DirNode {
    /// The stored directory file, if this state has been stored.
    pub(super) stored: Option<FileId>,
    /// Loaded entries.
    pub(super) children: Option<BTreeMap<String, Ino>>,
    /// Changed since stored.
    pub(super) dirty: bool,
    /// Counts changes, so a publish knows which directories changed while it stored.
    pub(super) version: u64,
}

pub(super) struct FileNode {
    /// The last stored content.
    pub(super) content: FileContent,
    /// Current size (the buffer's while one exists).
    pub(super) size: u64,
    pub(super) buffer: Option<Arc<Mutex<WriteBuffer>>>,
    pub(super) open: u32,
    pub(super) unlinked: bool,
}

pub(super) enum Node {
    Top,
    Refs,
    RefFile { file: FileId, size: u64 },
    Versions { view: usize },
    Dir(DirNode),
    File(FileNode),
    Symlink(String),
}

pub(super) struct Inode {
    pub(super) parent: Ino,
    pub(super) view: Option<usize>,
    pub(super) node: Node,
    pub(super) mode: u32,
    pub(super) mtime: SystemTime,
    pub(super) ctime: SystemTime,
}

pub(super) struct View {
    pub(super) key: VolumeKey,
    pub(super) owner: Option<Arc<KeyPair>>,
    /// `Some(sequence)` for a `.versions/<sequence>` view.
    pub(super) history: Option<u64>,
    pub(super) root: Ino,
    pub(super) versions: Ino,
    pub(super) sequence: u64,
    pub(super) root_file: Option<FileId>,
    pub(super) root_time: u64,
    pub(super) change_gen: u64,
    pub(super) published_gen: u64,
    pub(super) failed_gen: u64,
    /// Ranges `(after, through]` of change generations lost to another writer.
    pub(super) lost: Vec<(u64, u64)>,
    /// Files of this view holding a write buffer.
    pub(super) writers: u32,
}

impl View {
    pub(super) fn writable(&self) -> bool {
        self.owner.is_some() && self.history.is_none()
    }
}

pub(super) struct OpenFile {
    pub(super) ino: Ino,
    /// Where the last read ended: a read starting there is sequential.
    pub(super) last_end: u64,
}

/// Everything mutable of a mount.
pub struct State {
    pub(super) inodes: HashMap<Ino, Inode>,
    pub(super) next_ino: Ino,
    pub(super) views: Vec<View>,
    pub(super) by_key: HashMap<VolumeKey, usize>,
    pub(super) history_views: HashMap<(usize, u64), usize>,
    pub(super) ref_files: HashMap<FileId, Ino>,
    pub(super) dir_handles: HashMap<u64, Vec<(Ino, FileType, String)>>,
    pub(super) files: HashMap<u64, OpenFile>,
    pub(super) next_handle: u64,
}

pub(super) fn special_inode(node: Node, parent: Ino) -> Inode {
    Inode {
        parent,
        view: None,
        node,
        mode: 0o555,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
    }
}

pub(super) fn new_ino(state: &mut State) -> Ino {
    let ino = state.next_ino;
    state.next_ino += 1;
    ino
}

pub(super) fn child_of(state: &State, parent: Ino, name: &str) -> Result<Ino> {
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

pub(super) fn children_mut(state: &mut State, dir: Ino) -> Result<&mut BTreeMap<String, Ino>> {
    match state.inodes.get_mut(&dir).map(|i| &mut i.node) {
        Some(Node::Dir(DirNode {
            children: Some(children),
            ..
        })) => Ok(children),
        _ => Err(FsError::NotDir),
    }
}

pub(super) fn writable_view(state: &State, dir: Ino) -> Result<usize> {
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

pub(super) fn is_view_root(state: &State, ino: Ino) -> bool {
    state
        .inodes
        .get(&ino)
        .and_then(|i| i.view)
        .is_some_and(|v| state.views[v].root == ino)
}

/// A file's content changed to `size` bytes: its size, mtime and ctime follow.
pub(super) fn file_resized(state: &mut State, ino: Ino, size: u64) {
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
pub(super) fn touch_dir(state: &mut State, dir: Ino, at: SystemTime) {
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

pub(super) fn add_view(
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
