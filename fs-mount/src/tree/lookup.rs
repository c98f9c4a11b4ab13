//! Reading the namespace: loading a directory's entries from the network on first
//! use, getattr, lookup (the top level of volumes, `.refs/<file ref>`,
//! `.versions/<sequence>`), directory listings for readdir, and readlink.
//! Its network calls (directory files, root records, file sizes through
//! [`crate::backend`]) are made without the state lock.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, UNIX_EPOCH};

use cairn_core::id::{FileId, Reference};
use fuser::{FileAttr, FileType};

use super::error::{FsError, Result};
use super::state::{DirNode, FileNode, Inode, Node, add_view, child_of, new_ino, special_inode};
use super::{Ino, MAX_VERSION_WALK, REFS, REFS_NAME, Shared, VERSIONS_NAME};
use crate::backend::{Backend, BackendError};
use crate::volume::{DIRECTORY_MAX_BYTES, Directory, EntryKind};

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
    /// Loads a directory's entries if they are not loaded (a network read, without
    /// the state lock).
    pub(super) fn ensure_loaded(&self, ino: Ino) -> Result<()> {
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
}
