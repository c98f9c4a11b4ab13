//! Where the pipeline's fragments and certificates go and come from: the put side
//! ([`FragmentSink`]) and the get side ([`FragmentSource`]), and what a store's failure
//! means to the pipeline ([`FailureKind`], through [`StoreFailure`]).
//!
//! Owns: the two traits, [`PendingBlock`] (a sink's token for a block in flight),
//! [`FailureKind`] and [`StoreFailure`], and [`BoxedStoreError`], the boxed form in which a
//! store's error becomes the source of a [`PutError`](crate::PutError) or a
//! [`GetError`](crate::GetError).
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`], [`cairn_core::erasure`].

use std::convert::Infallible;
use std::error::Error as StdError;

use cairn_core::crypto::{FileCertificate, Signed};
use cairn_core::erasure::{Fragment, FragmentRef};
use cairn_core::id::{FileId, FragmentHash, PlacementKey};

/// A boxed error from a store, kept as the source of a pipeline error.
pub type BoxedStoreError = Box<dyn StdError + Send + Sync + 'static>;

/// What a store's failure means to the pipeline: the one thing [`put`](crate::put) and
/// [`get`](crate::get) decide on after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The store could not place a block's `n` fragments at this placement key (the
    /// nodes around it are full or refused): [`put`](crate::put) diverts the block to
    /// the key of the next salt (PAST's file diversion). Only a sink reports it, and
    /// only from [`FragmentSink::put_block_fragments`], [`FragmentSink::start_block`],
    /// [`FragmentSink::finish_block`] and [`FragmentSink::restart_block`].
    Refused,
    /// The store found the fragment's bytes damaged: [`get`](crate::get) skips it and
    /// counts it corrupt in [`GetStats`](crate::GetStats).
    Corrupt,
    /// Anything else: [`put`](crate::put) fails at once, and [`get`](crate::get) skips
    /// the fragment and counts it unavailable (the store could not answer).
    Other,
}

/// An error a store returns, able to say what kind of failure it is.
///
/// A store for which another placement key cannot help (one local disk) never answers
/// [`FailureKind::Refused`]; one that cannot tell damaged bytes from a failed read never
/// answers [`FailureKind::Corrupt`].
pub trait StoreFailure: StdError + Send + Sync + 'static {
    /// What this failure means to the pipeline.
    fn kind(&self) -> FailureKind;
}

/// A store that cannot fail.
impl StoreFailure for Infallible {
    fn kind(&self) -> FailureKind {
        match *self {}
    }
}

/// Where [`put`](crate::put) sends fragments and certificates.
///
/// Implemented by the local store, the network, and the in-memory test double.
///
/// Contract: `put_fragment` is idempotent (a file with repeated blocks stores the same
/// `(key, index)` more than once, with equal bytes); a fragment is addressed by its
/// block's placement key and its index. A placement refusal
/// ([`FailureKind::Refused`]) is reported only for a whole block.
pub trait FragmentSink {
    /// What can go wrong storing into this sink.
    type Error: StoreFailure;

    /// Stores fragment `fragment.index` of the block at `key`. `hash` is its
    /// [`fragment_hash`](cairn_core::erasure::fragment_hash), computed once by the encoder,
    /// for a store or a remote node to check the bytes against without trusting the
    /// sender's arithmetic (and without the caller hashing twice).
    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), Self::Error>;

    /// Stores all the fragments of one block (the `n` of a data block, or of the
    /// manifest block) at `key`, each with its hash; [`put`](crate::put) calls this once
    /// per block. A store that can commit a group at once overrides it (the local disk
    /// store syncs once per block instead of once per fragment); the default calls
    /// [`Self::put_fragment`] for each, in order, and stops at the first error.
    ///
    /// An error of kind [`FailureKind::Refused`] means the store could not place the
    /// block's `n` fragments at this placement key, so that [`put`](crate::put) diverts
    /// the block to another key; any other error fails the put at once.
    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), Self::Error> {
        fragments
            .iter()
            .try_for_each(|(fragment, hash)| self.put_fragment(key, *fragment, hash))
    }

    /// Stores a file certificate.
    fn put_certificate(&self, certificate: &Signed<FileCertificate>) -> Result<(), Self::Error>;

    /// How many blocks [`put`](crate::put) may have started ([`Self::start_block`]) and
    /// not yet finished ([`Self::finish_block`]) at once: the put window. 1 (the
    /// default) is a synchronous store: each block is stored before the next is read.
    fn blocks_in_flight(&self) -> usize {
        1
    }

    /// Starts storing the fragments of one block at `key` and returns a token to
    /// confirm it with ([`Self::finish_block`]). A store with a window keeps its own
    /// copy of the fragments (the caller reuses its buffer as soon as this returns)
    /// and may report a placement refusal now or at the finish. The default stores
    /// the block now ([`Self::put_block_fragments`]) and returns a ready token.
    fn start_block(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<PendingBlock, Self::Error> {
        self.put_block_fragments(key, fragments)?;
        Ok(PendingBlock(0))
    }

    /// Waits until the block of `pending` is stored. On a placement refusal
    /// ([`FailureKind::Refused`]) the store keeps its copy of the fragments, so
    /// [`Self::restart_block`] can place them at another key; on success or any other
    /// error it drops the copy. The default (a block stored at its start) is `Ok`.
    fn finish_block(&self, pending: PendingBlock) -> Result<(), Self::Error> {
        let _ = pending;
        Ok(())
    }

    /// Starts storing again, at `new_key`, the fragments of a block whose placement
    /// was refused (by [`Self::finish_block`], or by an earlier restart): file
    /// diversion discovered after the caller's buffer was reused. Returns the token to
    /// finish it with; after a refusal here the old token may be restarted again.
    /// `None`: this store kept no copy (the default: its `finish_block` never refuses).
    fn restart_block(
        &self,
        pending: PendingBlock,
        new_key: &PlacementKey,
    ) -> Option<Result<PendingBlock, Self::Error>> {
        let _ = (pending, new_key);
        None
    }
}

/// Where [`get`](crate::get) fetches fragments and certificates from.
///
/// Implemented by the local store, the network, and the in-memory test double.
///
/// Contract: `get_fragment` need not check anything: it may return missing, stale,
/// truncated or relabelled bytes, or an error, and the pipeline checks every fragment
/// against its hash and skips the bad ones. An error of kind [`FailureKind::Corrupt`]
/// means the store found the fragment's bytes damaged (counted as corrupt in
/// [`GetStats`](crate::GetStats)); any other, that it could not answer (unavailable).
pub trait FragmentSource {
    /// What can go wrong fetching from this source.
    type Error: StoreFailure;

    /// Fetches fragment `index` of the block at `key`; `Ok(None)` if nobody has it.
    fn get_fragment(&self, key: &PlacementKey, index: u16)
    -> Result<Option<Fragment>, Self::Error>;

    /// Fetches fragments `indexes` of the block at `key`: one result per index, in
    /// order. [`get`](crate::get) asks for a block's first `k` fragments in one call,
    /// so a network store overrides this to fetch them in parallel; the default asks
    /// [`Self::get_fragment`] for each in turn.
    fn get_block_fragments(
        &self,
        key: &PlacementKey,
        indexes: &[u16],
    ) -> Vec<Result<Option<Fragment>, Self::Error>> {
        indexes
            .iter()
            .map(|&index| self.get_fragment(key, index))
            .collect()
    }

    /// Hints that [`get`](crate::get) will soon ask for fragments `indexes` of the block
    /// at `key` ([`Self::get_block_fragments`] with the same arguments): a network
    /// store starts fetching them now, while the current block is decoded and written.
    /// The default does nothing. A hint never followed by the fetch must not leak.
    fn prefetch(&self, key: &PlacementKey, indexes: &[u16]) {
        let _ = (key, indexes);
    }

    /// Fetches the certificate of `file`; `Ok(None)` if nobody has it.
    fn get_certificate(
        &self,
        file: &FileId,
    ) -> Result<Option<Signed<FileCertificate>>, Self::Error>;

    /// Waits `delay` before [`get`](crate::get) fetches a block again
    /// ([`BlockRetry`](crate::BlockRetry)). The default sleeps the thread; a test
    /// double counts instead.
    fn pause(&self, delay: std::time::Duration) {
        std::thread::sleep(delay);
    }
}

/// A block a store has started storing and not yet confirmed
/// ([`FragmentSink::start_block`]): an opaque id the store chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PendingBlock(pub u64);

impl<S: FragmentSink + ?Sized> FragmentSink for &S {
    type Error = S::Error;
    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), S::Error> {
        (**self).put_fragment(key, fragment, hash)
    }
    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), S::Error> {
        (**self).put_block_fragments(key, fragments)
    }
    fn put_certificate(&self, certificate: &Signed<FileCertificate>) -> Result<(), S::Error> {
        (**self).put_certificate(certificate)
    }
    fn blocks_in_flight(&self) -> usize {
        (**self).blocks_in_flight()
    }
    fn start_block(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<PendingBlock, S::Error> {
        (**self).start_block(key, fragments)
    }
    fn finish_block(&self, pending: PendingBlock) -> Result<(), S::Error> {
        (**self).finish_block(pending)
    }
    fn restart_block(
        &self,
        pending: PendingBlock,
        new_key: &PlacementKey,
    ) -> Option<Result<PendingBlock, S::Error>> {
        (**self).restart_block(pending, new_key)
    }
}

impl<S: FragmentSource + ?Sized> FragmentSource for &S {
    type Error = S::Error;
    fn get_fragment(&self, key: &PlacementKey, index: u16) -> Result<Option<Fragment>, S::Error> {
        (**self).get_fragment(key, index)
    }
    fn get_block_fragments(
        &self,
        key: &PlacementKey,
        indexes: &[u16],
    ) -> Vec<Result<Option<Fragment>, S::Error>> {
        (**self).get_block_fragments(key, indexes)
    }
    fn prefetch(&self, key: &PlacementKey, indexes: &[u16]) {
        (**self).prefetch(key, indexes)
    }
    fn get_certificate(&self, file: &FileId) -> Result<Option<Signed<FileCertificate>>, S::Error> {
        (**self).get_certificate(file)
    }
}
