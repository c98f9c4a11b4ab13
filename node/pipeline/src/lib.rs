//! The client pipeline: put a file (a stream of bytes) into a [`FragmentSink`] and get
//! it back from a [`FragmentSource`], checking everything on the way.
//!
//! Owns, one module per job:
//! - `store`: the two traits (where fragments and certificates go, and where they come
//!   from: the local sled store or the network), [`PendingBlock`], and what a store's
//!   error means to the pipeline ([`FailureKind`], through [`StoreFailure`]);
//! - `put`: [`put`], the split put ([`put_unsigned`] then [`finish_put`]) for callers
//!   that do not hold the owner's key, and file diversion; [`PutError`];
//! - `get`: [`get`], ranges, batched fetches and read-ahead; [`GetStats`], [`GetError`];
//! - `local`: [`LocalFragments`], the adapter that makes a local store both traits;
//! - `memory` (tests, and the `test-double` feature only): `MemoryFragments`, an
//!   in-memory store with hooks to delete, corrupt, truncate, relabel and fail
//!   fragments, to refuse placements and to defer confirmations.
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`], [`cairn_core::erasure`],
//! [`cairn_core::manifest`], and [`cairn_store`] only in [`LocalFragments`]. The
//! pipeline reaches stores only through the two traits.
//!
//! # Put
//! Reads one segment at a time into one reused buffer (the buffer is the block, then
//! its padding, then its parity: no copy between reading and storing), hashes and
//! encodes it, starts storing its `n` fragments at its placement key as one group
//! ([`FragmentSink::start_block`]), and records it in the manifest. A store with a
//! put window ([`FragmentSink::blocks_in_flight`], `W`) copies the fragments and
//! confirms them later ([`FragmentSink::finish_block`]), so up to `W` blocks wait
//! for their receipts while the next is read and encoded; before starting a block
//! with `W` in flight, the oldest is finished. Every block is finished before the
//! manifest is encoded and stored (at once, [`FragmentSink::put_block_fragments`])
//! as one more block, and last the file certificate, which covers the manifest hash,
//! is signed and stored. Peak memory: one segment's `n` fragments in the pipeline,
//! plus the store's copies of the `W` blocks in flight (`W × n` fragments; none for a
//! synchronous store, `W` = 1), plus the manifest.
//!
//! The signing is a seam: [`put_unsigned`] stores the blocks and the manifest and
//! returns the certificate body; the owner signs it wherever the key is (the CLI), and
//! [`finish_put`] checks and stores it. On the network the blocks go out under the
//! owner's [`UploadGrant`](cairn_core::crypto::UploadGrant), signed before the put
//! starts.
//!
//! File diversion (PAST): when the store says it cannot place a block's fragments at
//! its placement key (an error of kind [`FailureKind::Refused`]), the block is retried
//! at the keys of salt 1, 2, ... up to [`PutOptions::max_file_diversions`], and the
//! salt is recorded in its manifest entry (for the manifest block, in the
//! certificate), where get finds it. A refusal when the block is started is retried
//! from the pipeline's buffer; one reported when it is finished (the buffer holds
//! later blocks by then) is retried from the store's own copy
//! ([`FragmentSink::restart_block`]). Other store errors fail the put at once.
//!
//! # Get
//! Verifies the certificate (signature, owner, file id, expiry at the caller's `now`),
//! fetches and decodes the manifest block against the certified fragment hashes, checks
//! the manifest hash, then for each block fetches fragments data-first, decodes from the
//! first `k` that verify, checks the block hash and writes the block out. Fragments
//! are fetched in batches ([`FragmentSource::get_block_fragments`]): the first `k` of a
//! block in one call, the other `m` in a second only if fewer than `k` verified. A fragment
//! that is missing, fails to load or fails a check is skipped and counted in
//! [`GetStats`]; a block fails only when fewer than `k` good fragments remain.
//! Read-ahead: before fetching block `i`, get hints the store to fetch block `i + 1`'s
//! first `k` ([`FragmentSource::prefetch`]), so a network store fetches it while block
//! `i` is decoded and written.

mod get;
mod local;
#[cfg(any(test, feature = "test-double"))]
mod memory;
mod put;
mod store;
#[cfg(test)]
mod test_support;

pub use get::{
    BlockRetry, ByteRange, GetError, GetOptions, GetStats, GetTarget, MAX_SKIPPED_RECORDS,
    SkippedFragment, get,
};
pub use local::{LocalFragments, LocalStoreError};
#[cfg(any(test, feature = "test-double"))]
pub use memory::{InjectedFailure, MemoryFragments};
pub use put::{
    DEFAULT_MAX_FILE_DIVERSIONS, FileIdentity, PutError, PutOptions, PutReceipt, UnsignedPut,
    finish_put, put, put_unsigned,
};
pub use store::{
    BoxedStoreError, FailureKind, FragmentSink, FragmentSource, PendingBlock, StoreFailure,
};
