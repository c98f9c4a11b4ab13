//! Changes to the namespace of a writable volume: create, mkdir, symlink, unlink,
//! rmdir, rename (within one volume) and setattr (mode, size, mtime). Each marks the
//! changed directories dirty and wakes the publisher. Its only network calls are
//! loading a directory (`lookup`) and, for a truncate, storing the file (`io`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use fuser::FileAttr;

use super::error::{FsError, Result};
use super::io::lock_buffer;
use super::state::{
    DirNode, FileNode, Inode, Node, child_of, children_mut, file_resized, is_view_root, new_ino,
    touch_dir, writable_view,
};
use super::{Ino, Shared, TOP, VERSIONS_NAME, now};
use crate::volume::{FileContent, valid_name};

impl Shared {
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
}
