//! The two byte stores of the mount: [`WriteBuffer`], the dirty content of a file
//! being written (in memory up to [`SPILL_AT`], then in an unnamed temp file, never
//! whole in memory), and [`BlockCache`], verified blocks of stored files, bounded in
//! bytes, with read-ahead for sequential readers. Uses [`crate::backend`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};

use cairn_core::id::FileId;

use crate::backend::{Backend, BackendError};

/// A dirty buffer moves from memory to a temp file past this size.
pub const SPILL_AT: u64 = 1 << 20;

/// The unit of fetching and caching stored files.
pub const BLOCK: u64 = 4 << 20;

/// Blocks fetched ahead of a sequential reader.
pub const READ_AHEAD_BLOCKS: u64 = 3;

enum Bytes {
    Memory(Vec<u8>),
    Spilled(File),
}

/// The content of a file being written.
pub struct WriteBuffer {
    bytes: Bytes,
    len: u64,
    /// Changed since it was last stored.
    pub dirty: bool,
}

impl WriteBuffer {
    /// An empty buffer.
    pub fn empty() -> WriteBuffer {
        WriteBuffer {
            bytes: Bytes::Memory(Vec::new()),
            len: 0,
            dirty: false,
        }
    }

    /// A buffer holding the whole of `reader` (streamed, spilling as it grows).
    pub fn from_reader(reader: &mut dyn Read) -> io::Result<WriteBuffer> {
        let mut buffer = WriteBuffer::empty();
        let mut chunk = vec![0u8; 256 << 10];
        loop {
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                return Ok(buffer);
            }
            let at = buffer.len;
            buffer.write_at(at, &chunk[..n])?;
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn spill_if_needed(&mut self, new_len: u64) -> io::Result<()> {
        if let Bytes::Memory(memory) = &self.bytes {
            if new_len > SPILL_AT {
                let file = tempfile::tempfile()?;
                file.write_all_at(memory, 0)?;
                self.bytes = Bytes::Spilled(file);
            }
        }
        Ok(())
    }

    /// Writes `data` at `offset`, growing (with zeros) as needed.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        self.spill_if_needed(end.max(self.len))?;
        match &mut self.bytes {
            Bytes::Memory(memory) => {
                let end = end as usize;
                if memory.len() < end {
                    memory.resize(end, 0);
                }
                memory[offset as usize..end].copy_from_slice(data);
            }
            Bytes::Spilled(file) => {
                if offset > self.len {
                    file.set_len(offset)?;
                }
                file.write_all_at(data, offset)?;
            }
        }
        self.len = self.len.max(end);
        self.dirty = true;
        Ok(())
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read_at(&self, offset: u64, size: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(size).min(self.len);
        if offset >= end {
            return Ok(Vec::new());
        }
        match &self.bytes {
            Bytes::Memory(memory) => Ok(memory[offset as usize..end as usize].to_vec()),
            Bytes::Spilled(file) => {
                let mut out = vec![0u8; (end - offset) as usize];
                file.read_exact_at(&mut out, offset)?;
                Ok(out)
            }
        }
    }

    /// Truncates or extends (with zeros) to `len`.
    pub fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.spill_if_needed(len)?;
        match &mut self.bytes {
            Bytes::Memory(memory) => memory.resize(len as usize, 0),
            Bytes::Spilled(file) => file.set_len(len)?,
        }
        self.len = len;
        self.dirty = true;
        Ok(())
    }

    /// A reader over the whole content, for storing it.
    pub fn reader(&self) -> BufferReader<'_> {
        BufferReader {
            buffer: self,
            position: 0,
        }
    }
}

/// Reads a [`WriteBuffer`] from the start.
pub struct BufferReader<'a> {
    buffer: &'a WriteBuffer,
    position: u64,
}

impl Read for BufferReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let chunk = self.buffer.read_at(self.position, out.len() as u64)?;
        out[..chunk.len()].copy_from_slice(&chunk);
        self.position += chunk.len() as u64;
        Ok(chunk.len())
    }
}

type BlockKey = (FileId, u64);
type Fetch = Arc<(Mutex<Option<Result<Arc<Vec<u8>>, String>>>, Condvar)>;

#[derive(Default)]
struct CacheState {
    blocks: HashMap<BlockKey, Arc<Vec<u8>>>,
    /// Least recently used first.
    order: VecDeque<BlockKey>,
    bytes: u64,
    in_flight: HashMap<BlockKey, Fetch>,
    /// Blocks ordered from the read-ahead threads and not yet started.
    queued: HashSet<BlockKey>,
}

/// Threads that fetch blocks ahead of sequential readers. A fixed few, rather than a
/// thread per block: fewer threads also means fewer allocator arenas holding freed
/// blocks, which keeps the mount's resident memory near the cache bound.
const READ_AHEAD_THREADS: usize = 3;

type PrefetchOrder = (FileId, u64, u64);

/// Verified blocks of stored files, bounded in bytes, least recently used evicted.
pub struct BlockCache {
    backend: Arc<dyn Backend>,
    capacity: u64,
    state: Mutex<CacheState>,
    prefetch: Mutex<Option<std::sync::mpsc::Sender<PrefetchOrder>>>,
}

impl BlockCache {
    /// A cache holding at most `capacity` bytes of blocks (at least one block).
    pub fn new(backend: Arc<dyn Backend>, capacity: u64) -> Arc<BlockCache> {
        let (orders, receiver) = std::sync::mpsc::channel::<PrefetchOrder>();
        let cache = Arc::new(BlockCache {
            backend,
            capacity: capacity.max(BLOCK),
            state: Mutex::new(CacheState::default()),
            prefetch: Mutex::new(Some(orders)),
        });
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..READ_AHEAD_THREADS {
            let receiver = Arc::clone(&receiver);
            // Weak: the workers end when the cache is dropped (the sender with it).
            let cache = Arc::downgrade(&cache);
            let _ = std::thread::Builder::new()
                .name("cairn-read-ahead".into())
                .spawn(move || {
                    loop {
                        let order = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((file, file_size, index)) = order else {
                            return;
                        };
                        let Some(cache) = cache.upgrade() else {
                            return;
                        };
                        cache.lock().queued.remove(&(file, index));
                        // Errors surface to the reader that later asks for this block.
                        let _ = cache.block(file, file_size, index);
                    }
                });
        }
        cache
    }

    /// Stops the read-ahead threads.
    pub fn shutdown(&self) {
        self.prefetch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes `[offset, offset + size)` of a stored file of `file_size` bytes; blocks
    /// `ahead` of the last one read are fetched in the background.
    pub fn read(
        self: &Arc<Self>,
        file: FileId,
        file_size: u64,
        offset: u64,
        size: u64,
        ahead: u64,
    ) -> Result<Vec<u8>, BackendError> {
        let end = offset.saturating_add(size).min(file_size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let index = at / BLOCK;
            let block = self.block(file, file_size, index)?;
            let within = (at - index * BLOCK) as usize;
            let take = ((end - at) as usize).min(block.len().saturating_sub(within));
            if take == 0 {
                return Err(BackendError::Unavailable(format!(
                    "block {index} of {file:?} is shorter than the file says"
                )));
            }
            out.extend_from_slice(&block[within..within + take]);
            at += take as u64;
        }
        if ahead > 0 && end > offset {
            let last = (end - 1) / BLOCK;
            let blocks = file_size.div_ceil(BLOCK);
            for index in last + 1..(last + 1 + ahead).min(blocks) {
                self.prefetch(file, file_size, index);
            }
        }
        Ok(out)
    }

    fn prefetch(self: &Arc<Self>, file: FileId, file_size: u64, index: u64) {
        let key = (file, index);
        {
            let mut state = self.lock();
            if state.blocks.contains_key(&key)
                || state.in_flight.contains_key(&key)
                || !state.queued.insert(key)
            {
                return;
            }
        }
        if let Some(orders) = &*self.prefetch.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = orders.send((file, file_size, index));
        }
    }

    fn block(
        &self,
        file: FileId,
        file_size: u64,
        index: u64,
    ) -> Result<Arc<Vec<u8>>, BackendError> {
        let key = (file, index);
        let (fetch, mine) = {
            let mut state = self.lock();
            if let Some(block) = state.blocks.get(&key).cloned() {
                if let Some(position) = state.order.iter().position(|k| *k == key) {
                    state.order.remove(position);
                }
                state.order.push_back(key);
                return Ok(block);
            }
            match state.in_flight.get(&key) {
                Some(fetch) => (Arc::clone(fetch), false),
                None => {
                    let fetch: Fetch = Arc::new((Mutex::new(None), Condvar::new()));
                    state.in_flight.insert(key, Arc::clone(&fetch));
                    (fetch, true)
                }
            }
        };
        if mine {
            let start = index * BLOCK;
            let length = BLOCK.min(file_size.saturating_sub(start));
            let result = self
                .backend
                .read_range(&file, start, Some(length))
                .and_then(|mut reader| {
                    let mut bytes = Vec::with_capacity(length as usize);
                    reader
                        .read_to_end(&mut bytes)
                        .map_err(|e| BackendError::Unavailable(e.to_string()))?;
                    Ok(Arc::new(bytes))
                });
            let mut state = self.lock();
            state.in_flight.remove(&key);
            if let Ok(block) = &result {
                state.bytes += block.len() as u64;
                state.blocks.insert(key, Arc::clone(block));
                state.order.push_back(key);
                while state.bytes > self.capacity {
                    let Some(old) = state.order.pop_front() else {
                        break;
                    };
                    if let Some(evicted) = state.blocks.remove(&old) {
                        state.bytes -= evicted.len() as u64;
                    }
                }
            }
            drop(state);
            let (slot, ready) = &*fetch;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(result.as_ref().map(Arc::clone).map_err(|e| e.to_string()));
            ready.notify_all();
            return result;
        }
        let (slot, ready) = &*fetch;
        let mut answer = slot.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: the fetching thread always fills the slot when its read ends.
        while answer.is_none() {
            answer = ready.wait(answer).unwrap_or_else(|p| p.into_inner());
        }
        match answer.as_ref() {
            Some(Ok(block)) => Ok(Arc::clone(block)),
            Some(Err(message)) => Err(BackendError::Unavailable(message.clone())),
            None => Err(BackendError::Unavailable("fetch vanished".into())),
        }
    }

    /// Bytes of blocks held now.
    pub fn held_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Files with blocks in flight (for tests of the bound).
    pub fn in_flight_files(&self) -> HashSet<FileId> {
        self.lock().in_flight.keys().map(|(f, _)| *f).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn buffer_spills_and_reads_back() {
        let mut buffer = WriteBuffer::empty();
        buffer.write_at(10, b"abc").unwrap();
        assert_eq!(buffer.read_at(0, 13).unwrap()[10..], *b"abc");
        let big = vec![7u8; (SPILL_AT + 5) as usize];
        buffer.write_at(0, &big).unwrap();
        assert!(matches!(buffer.bytes, Bytes::Spilled(_)));
        assert_eq!(buffer.len(), SPILL_AT + 5);
        buffer.set_len(3).unwrap();
        let mut all = Vec::new();
        buffer.reader().read_to_end(&mut all).unwrap();
        assert_eq!(all, vec![7u8; 3]);
    }

    #[test]
    fn cache_stays_within_its_bound_and_reads_right_bytes() {
        use crate::backend::MemoryBackend;
        use cairn_core::crypto::KeyPair;
        let backend = Arc::new(MemoryBackend::new());
        let bytes: Vec<u8> = (0..(10 * BLOCK + 123)).map(|i| (i % 251) as u8).collect();
        let file = backend
            .put_file(&KeyPair::from_secret_bytes(&[1; 32]), &mut &bytes[..])
            .unwrap();
        let cache = BlockCache::new(backend, 2 * BLOCK);
        let size = bytes.len() as u64;
        let mut at = 0;
        while at < size {
            let chunk = cache
                .read(file, size, at, 128 << 10, READ_AHEAD_BLOCKS)
                .unwrap();
            assert_eq!(chunk, bytes[at as usize..(at as usize + chunk.len())]);
            assert!(cache.held_bytes() <= 2 * BLOCK, "{}", cache.held_bytes());
            at += chunk.len() as u64;
        }
        // a read across a block boundary
        let across = cache.read(file, size, BLOCK - 5, 10, 0).unwrap();
        assert_eq!(across, bytes[(BLOCK - 5) as usize..(BLOCK + 5) as usize]);
    }
}
