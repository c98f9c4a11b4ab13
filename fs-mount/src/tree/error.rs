//! Why a filesystem operation failed: [`FsError`], the conversions from the
//! backend's and the buffers' errors, and [`FsError::errno`], the one mapping to
//! the errnos the kernel is told.

use crate::backend::BackendError;

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

pub(super) type Result<T> = std::result::Result<T, FsError>;
