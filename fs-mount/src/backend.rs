//! What the filesystem needs from the network, as one trait: store a file, read a
//! verified byte range of one, and read or publish a volume's root record.
//!
//! [`MemoryBackend`] is the in-process twin the filesystem is tested on; the network
//! implementation wraps the node's HTTP API client. Uses only `cairn_core::{id, crypto}`.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_core::crypto::{KeyPair, RootRecord};
use cairn_core::id::{FileId, Id, VolumeKey};

/// Network capacity and use, as statfs reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Bytes the network can store in all.
    pub total_bytes: u64,
    /// Bytes stored now.
    pub used_bytes: u64,
}

/// Why the network could not do what the filesystem asked.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No such file, or no such volume.
    #[error("not found")]
    NotFound,
    /// Someone published this sequence or a higher one first: a lost update.
    #[error("root conflict: the network already holds sequence {held_sequence}")]
    Conflict {
        /// The sequence the network holds.
        held_sequence: u64,
    },
    /// The network cannot supply verified bytes (or accept these) right now.
    #[error("network unavailable: {0}")]
    Unavailable(String),
    /// The network has no room for the file.
    #[error("the network is full")]
    Full,
    /// Reading the bytes to store failed locally.
    #[error("reading the bytes to store: {0}")]
    Local(#[source] io::Error),
}

/// The root record's directory as a file id.
///
/// The one place that knows how [`RootRecord::root`] is typed, so a change of that
/// field's type is a one-line change here.
pub fn root_file(record: &RootRecord) -> FileId {
    record.root
}

/// A root record pointing at `root`.
pub fn make_root_record(volume: VolumeKey, sequence: u64, root: FileId, time: u64) -> RootRecord {
    RootRecord {
        volume,
        sequence,
        root,
        time,
    }
}

/// Everything the filesystem needs from the network.
pub trait Backend: Send + Sync + 'static {
    /// Stores bytes as a file owned (signed) by `owner`; returns its id.
    fn put_file(&self, owner: &KeyPair, reader: &mut dyn Read) -> Result<FileId, BackendError>;
    /// Bytes `[offset, offset + length)` of a stored file (`None` = to the end), verified.
    fn read_range(
        &self,
        file: &FileId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, BackendError>;
    /// The size of a stored file (for `.refs/<file ref>`).
    fn file_size(&self, file: &FileId) -> Result<u64, BackendError>;
    /// The highest valid root record of a volume (`None`: never published).
    fn get_root(&self, volume: &VolumeKey) -> Result<Option<RootRecord>, BackendError>;
    /// Publishes `sequence` → `root` for the volume of `owner`.
    fn publish_root(
        &self,
        owner: &KeyPair,
        sequence: u64,
        root: FileId,
    ) -> Result<(), BackendError>;
    /// Network capacity and use, for statfs.
    fn capacity(&self) -> Result<Capacity, BackendError>;
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Default)]
struct MemoryState {
    files: HashMap<FileId, std::sync::Arc<Vec<u8>>>,
    roots: HashMap<VolumeKey, RootRecord>,
    puts: u64,
    unavailable: bool,
}

/// An in-process backend: files and root records in memory. Behaves as the network
/// does for the filesystem (conflicts on replayed sequences, `NotFound`), and can be
/// told to fail reads, to test the EIO path.
#[derive(Default)]
pub struct MemoryBackend {
    state: Mutex<MemoryState>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// While `true`, every read answers [`BackendError::Unavailable`].
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// How many files have been stored (directories included).
    pub fn put_count(&self) -> u64 {
        self.lock().puts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // A panic elsewhere cannot leave the maps half-updated: every change is one insert.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn put_file(&self, owner: &KeyPair, reader: &mut dyn Read) -> Result<FileId, BackendError> {
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(BackendError::Local)?;
        let mut state = self.lock();
        state.puts += 1;
        let id = FileId(Id::hash_parts(&[
            &owner.public_key().0,
            &state.puts.to_be_bytes(),
            &bytes,
        ]));
        state.files.insert(id, std::sync::Arc::new(bytes));
        Ok(id)
    }

    fn read_range(
        &self,
        file: &FileId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, BackendError> {
        let state = self.lock();
        if state.unavailable {
            return Err(BackendError::Unavailable(
                "memory backend told to fail".into(),
            ));
        }
        let bytes = state.files.get(file).ok_or(BackendError::NotFound)?.clone();
        let len = bytes.len() as u64;
        let start = offset.min(len);
        let end = length.map_or(len, |l| start.saturating_add(l).min(len));
        let mut cursor = io::Cursor::new(ArcBytes(bytes));
        cursor.set_position(start);
        Ok(Box::new(cursor.take(end - start)))
    }

    fn file_size(&self, file: &FileId) -> Result<u64, BackendError> {
        let state = self.lock();
        if state.unavailable {
            return Err(BackendError::Unavailable(
                "memory backend told to fail".into(),
            ));
        }
        Ok(state.files.get(file).ok_or(BackendError::NotFound)?.len() as u64)
    }

    fn get_root(&self, volume: &VolumeKey) -> Result<Option<RootRecord>, BackendError> {
        Ok(self.lock().roots.get(volume).cloned())
    }

    fn publish_root(
        &self,
        owner: &KeyPair,
        sequence: u64,
        root: FileId,
    ) -> Result<(), BackendError> {
        let volume = owner.public_key().volume_key();
        let mut state = self.lock();
        if let Some(held) = state.roots.get(&volume) {
            if held.sequence >= sequence {
                return Err(BackendError::Conflict {
                    held_sequence: held.sequence,
                });
            }
        }
        state
            .roots
            .insert(volume, make_root_record(volume, sequence, root, unix_now()));
        Ok(())
    }

    fn capacity(&self) -> Result<Capacity, BackendError> {
        let state = self.lock();
        let used = state.files.values().map(|f| f.len() as u64).sum();
        Ok(Capacity {
            total_bytes: 1 << 40,
            used_bytes: used,
        })
    }
}

/// Shared bytes readable through a cursor.
struct ArcBytes(std::sync::Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
