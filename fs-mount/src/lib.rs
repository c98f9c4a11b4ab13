//! The cairn FUSE filesystem: the whole network mounted as a tree whose top level
//! names volumes by key (self-certifying path names, as in SFS), with any stored file
//! readable under `.refs/<file ref>`.
//!
//! Not built yet: this crate holds its place in the workspace so that the
//! dependency direction `cli -> fs-mount -> node` is fixed from the start. See
//! `DESIGN.md`, "The filesystem", and the open issue that builds it.
