//! The stored form of a volume: every directory is a cairn file (owned by the volume
//! key) holding a postcard-encoded [`Directory`], entries sorted by name. The root
//! directory also carries the previous root, the chain `.versions/` walks.
//!
//! Small files (at most [`INLINE_MAX`] bytes) live inside their directory entry, so
//! they cost no put of their own; larger ones are separate stored files.
//! Uses only `cairn_core::id` and serde/postcard.

use cairn_core::id::FileId;
use serde::{Deserialize, Serialize};

/// Files up to this many bytes are stored inline in their directory entry.
pub const INLINE_MAX: u64 = 4096;

/// The first bytes of every directory file: a tag and the format version.
pub const DIRECTORY_MAGIC: [u8; 8] = *b"cairndr1";

/// Largest directory file the mount will decode (a bound against hostile sizes).
pub const DIRECTORY_MAX_BYTES: u64 = 256 << 20;

/// A file's bytes: inline, or a stored cairn file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileContent {
    /// The bytes themselves (at most [`INLINE_MAX`]).
    Inline(Vec<u8>),
    /// A stored file of `size` bytes.
    Stored {
        /// The stored file.
        file: FileId,
        /// Its size in bytes.
        size: u64,
    },
}

impl FileContent {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            FileContent::Inline(bytes) => bytes.len() as u64,
            FileContent::Stored { size, .. } => *size,
        }
    }
}

/// What a directory entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    File(FileContent),
    /// A directory, stored as its own directory file.
    Dir(FileId),
    /// A symbolic link and its target.
    Symlink(String),
}

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The name (no `/`, not empty, not `.` or `..`).
    pub name: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_secs: i64,
    /// Modification time, nanoseconds within the second.
    pub mtime_nanos: u32,
}

/// The root a volume had before this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousRoot {
    /// Its sequence number.
    pub sequence: u64,
    /// Its root directory file.
    pub root: FileId,
    /// When it was published, unix seconds.
    pub time: u64,
}

/// A directory as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Only in a volume's root directory: the root before it.
    pub previous: Option<PreviousRoot>,
    /// Entries, sorted by name, names unique.
    pub entries: Vec<DirEntry>,
}

/// Why a directory file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeDirectoryError {
    /// It does not start with [`DIRECTORY_MAGIC`].
    #[error("not a cairn directory (bad tag or version)")]
    BadMagic,
    /// The postcard body does not decode.
    #[error("malformed directory: {0}")]
    Malformed(#[from] postcard::Error),
    /// Names out of order, repeated, or not valid names.
    #[error("directory entry {name:?} is out of order, repeated or not a valid name")]
    BadEntry {
        /// The offending name.
        name: String,
    },
}

/// Whether `name` may be a directory entry.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl Directory {
    /// The stored bytes: magic, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = DIRECTORY_MAGIC.to_vec();
        // Encoding plain data into a Vec cannot fail.
        if let Ok(body) = postcard::to_stdvec(self) {
            out.extend_from_slice(&body);
        }
        out
    }

    /// Decodes and checks the entry order.
    pub fn decode(bytes: &[u8]) -> Result<Directory, DecodeDirectoryError> {
        let body = bytes
            .strip_prefix(&DIRECTORY_MAGIC[..])
            .ok_or(DecodeDirectoryError::BadMagic)?;
        let directory: Directory = postcard::from_bytes(body)?;
        let mut last: Option<&str> = None;
        for entry in &directory.entries {
            if !valid_name(&entry.name) || last.is_some_and(|l| l >= entry.name.as_str()) {
                return Err(DecodeDirectoryError::BadEntry {
                    name: entry.name.clone(),
                });
            }
            last = Some(&entry.name);
        }
        Ok(directory)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use cairn_core::id::Id;

    #[test]
    fn round_trip_and_order_checked() {
        let dir = Directory {
            previous: Some(PreviousRoot {
                sequence: 3,
                root: FileId(Id::hash(b"r")),
                time: 9,
            }),
            entries: vec![
                DirEntry {
                    name: "a".into(),
                    kind: EntryKind::File(FileContent::Inline(b"hi".to_vec())),
                    mode: 0o644,
                    mtime_secs: 1,
                    mtime_nanos: 2,
                },
                DirEntry {
                    name: "b".into(),
                    kind: EntryKind::Symlink("a".into()),
                    mode: 0o777,
                    mtime_secs: 1,
                    mtime_nanos: 2,
                },
            ],
        };
        let bytes = dir.encode();
        assert_eq!(Directory::decode(&bytes).unwrap(), dir);
        let mut swapped = dir.clone();
        swapped.entries.reverse();
        assert!(matches!(
            Directory::decode(&swapped.encode()),
            Err(DecodeDirectoryError::BadEntry { .. })
        ));
        assert!(matches!(
            Directory::decode(b"garbage"),
            Err(DecodeDirectoryError::BadMagic)
        ));
    }
}
