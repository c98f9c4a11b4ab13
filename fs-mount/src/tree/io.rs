//! Open files: open, read (from the write buffer, inline bytes or the block cache,
//! with read-ahead for sequential reads), write (into the file's write buffer),
//! flush, release and fsync, and storing a dirty write buffer as the file's new
//! content. Uses [`crate::buffer`] (write buffers, the block cache) and
//! [`crate::backend`] (file puts); a buffer's lock is taken before the state lock.

use std::sync::{Arc, Mutex, MutexGuard};

use cairn_core::id::FileId;

use super::error::{FsError, Result};
use super::state::{FileNode, Inode, Node, OpenFile, file_resized, touch_dir};
use super::{Ino, Shared, now};
use crate::buffer::{READ_AHEAD_BLOCKS, WriteBuffer};
use crate::volume::{FileContent, INLINE_MAX};

/// How far from the end of the last read a read may start and still count as
/// sequential (for read-ahead).
const SEQUENTIAL_SLACK: u64 = 4 << 20;

impl Shared {
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
    pub(super) fn ensure_buffer(
        &self,
        ino: Ino,
        keep: Option<u64>,
    ) -> Result<Arc<Mutex<WriteBuffer>>> {
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

    pub(super) fn drop_buffer_if_closed(&self, ino: Ino) {
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
}

pub(super) fn lock_buffer(buffer: &Mutex<WriteBuffer>) -> MutexGuard<'_, WriteBuffer> {
    buffer.lock().unwrap_or_else(|p| p.into_inner())
}
