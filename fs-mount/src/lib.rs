//! The cairn FUSE filesystem: the whole network mounted as a tree whose top level
//! names volumes by key (self-certifying path names, as in SFS), with any stored file
//! readable under `.refs/<file ref>` and every earlier root of a volume under
//! `<volume>/.versions/<sequence>/`.
//!
//! Layers, bottom up: [`backend`] (what the network must do: the [`Backend`] trait,
//! [`MemoryBackend`]), [`volume`] (the stored directory format), [`buffer`] (write
//! buffers and the block cache), [`tree`] (the state and every operation), `fuse`
//! (the kernel adapter) and [`mount`](mod@mount) (mount, unmount, the publisher thread).
//! Semantics are written down in `docs/SEMANTICS.md`.

pub mod api;
pub mod backend;
pub mod buffer;
mod fuse;
pub mod mount;
pub mod tree;
pub mod volume;

pub use api::ApiBackend;
pub use backend::{Backend, BackendError, Capacity, MemoryBackend};
pub use mount::{MountError, MountHandle, UnmountError, detach_stale, mount, unmount_path};
pub use tree::{FsError, MountConfig};
