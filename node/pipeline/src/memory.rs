//! [`MemoryFragments`], the pipeline's test double: an in-memory [`FragmentSink`] and
//! [`FragmentSource`] with hooks to delete, corrupt, truncate, relabel and fail
//! fragments, to refuse placements, and to defer confirming blocks as the network does.
//!
//! Compiled only for the pipeline's own tests and with the `test-double` feature, which
//! the integration tests and the benches turn on as a dev-dependency: never in a node.
//!
//! May use: [`cairn_core::id`], [`cairn_core::crypto`], [`cairn_core::erasure`], and
//! the traits of [`crate::store`].

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use cairn_core::crypto::{FileCertificate, Signed};
use cairn_core::erasure::{Fragment, FragmentRef};
use cairn_core::id::{FileId, FragmentHash, PlacementKey};

use crate::store::{FailureKind, FragmentSink, FragmentSource, PendingBlock, StoreFailure};

/// The errors [`MemoryFragments`] returns when a hook tells it to fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectedFailure {
    /// A fragment set to fail with [`MemoryFragments::fail`] was read.
    #[error("injected failure reading fragment {index} at {key}")]
    Read {
        /// The placement key.
        key: PlacementKey,
        /// The fragment index.
        index: u16,
    },
    /// Fragments were put at a key set with [`MemoryFragments::refuse_placement`]: a
    /// placement refusal, as when the nodes around a key are full.
    #[error("injected refusal: no room to place the fragments of the block at {key}")]
    PlacementRefused {
        /// The placement key.
        key: PlacementKey,
    },
    /// Fragments were put at a key set with [`MemoryFragments::fail_puts`]: any other
    /// store failure (not a placement refusal).
    #[error("injected failure storing a fragment at {key}")]
    Write {
        /// The placement key.
        key: PlacementKey,
    },
    /// A deferring store ([`MemoryFragments::deferring`]) was asked to finish or
    /// restart a block it does not have in flight.
    #[error("no block {0:?} in flight")]
    NotInFlight(PendingBlock),
    /// A deferring store was asked to store a group at once while blocks were still
    /// unconfirmed: the pipeline must finish every block before the manifest block.
    #[error("a group stored at {key} while {in_flight} block(s) were unconfirmed")]
    OutOfOrder {
        /// The placement key of the group.
        key: PlacementKey,
        /// Blocks started and not finished.
        in_flight: usize,
    },
}

/// What a deferring [`MemoryFragments`] holds of the blocks it has not confirmed.
#[derive(Default)]
struct Deferred {
    /// The put window it advertises.
    window: usize,
    /// The next token.
    next: u64,
    /// Blocks started and not finished: their key (the latest restart's) and their own
    /// copy of the fragments.
    in_flight: HashMap<u64, (PlacementKey, Vec<Fragment>)>,
    /// The most blocks in flight at once.
    peak: usize,
    /// Blocks restarted at another key.
    restarts: u64,
}

#[derive(Default)]
struct MemoryInner {
    fragments: HashMap<(PlacementKey, u16), Fragment>,
    /// Reads that fail: for ever (`None`) or this many more times.
    failing: HashMap<(PlacementKey, u16), Option<u32>>,
    /// Every [`FragmentSource::pause`] asked for, in order (none is slept).
    pauses: Vec<std::time::Duration>,
    refusing_placement: HashSet<PlacementKey>,
    failing_puts: HashSet<PlacementKey>,
    certificates: HashMap<FileId, Signed<FileCertificate>>,
    deferred: Option<Deferred>,
}

/// An in-memory [`FragmentSink`] and [`FragmentSource`] for tests and benches, with
/// hooks to damage what it holds the ways real stores and peers do.
#[derive(Default)]
pub struct MemoryFragments {
    inner: Mutex<MemoryInner>,
}

impl std::fmt::Debug for MemoryFragments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        write!(
            f,
            "MemoryFragments {{ fragments: {}, certificates: {} }}",
            inner.fragments.len(),
            inner.certificates.len()
        )
    }
}

impl MemoryFragments {
    /// An empty store.
    pub fn new() -> MemoryFragments {
        MemoryFragments::default()
    }

    /// An empty store with a put window of `window` blocks, like the network's: a
    /// started block ([`FragmentSink::start_block`]) is copied and held unconfirmed
    /// until finished, and only then stored, so placement refusals
    /// ([`Self::refuse_placement`]) and failures ([`Self::fail_puts`]) are reported
    /// late, by [`FragmentSink::finish_block`]. A refused block can be restarted at
    /// another key. A group stored at once ([`FragmentSink::put_block_fragments`])
    /// while blocks are unconfirmed is refused ([`InjectedFailure::OutOfOrder`]).
    pub fn deferring(window: usize) -> MemoryFragments {
        let store = MemoryFragments::default();
        store.lock().deferred = Some(Deferred {
            window,
            ..Deferred::default()
        });
        store
    }

    /// For a deferring store: the most blocks that were in flight at once.
    pub fn peak_blocks_in_flight(&self) -> usize {
        self.lock().deferred.as_ref().map_or(0, |d| d.peak)
    }

    /// For a deferring store: blocks started and not finished now.
    pub fn blocks_unconfirmed(&self) -> usize {
        self.lock()
            .deferred
            .as_ref()
            .map_or(0, |d| d.in_flight.len())
    }

    /// For a deferring store: blocks restarted at another key after a late refusal.
    pub fn blocks_restarted(&self) -> u64 {
        self.lock().deferred.as_ref().map_or(0, |d| d.restarts)
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        // A panic elsewhere while holding the lock leaves plain maps, still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fragments held.
    pub fn fragment_count(&self) -> usize {
        self.lock().fragments.len()
    }

    /// Bytes of fragments held.
    pub fn fragment_bytes(&self) -> u64 {
        self.lock()
            .fragments
            .values()
            .map(|f| f.bytes.len() as u64)
            .sum()
    }

    /// Removes fragment `index` at `key`; true if it was there.
    pub fn delete(&self, key: &PlacementKey, index: u16) -> bool {
        self.lock().fragments.remove(&(*key, index)).is_some()
    }

    /// Applies `change` to the stored fragment `index` at `key` (its bytes or the index
    /// it claims); false if there is none.
    pub fn tamper(
        &self,
        key: &PlacementKey,
        index: u16,
        change: impl FnOnce(&mut Fragment),
    ) -> bool {
        match self.lock().fragments.get_mut(&(*key, index)) {
            Some(fragment) => {
                change(fragment);
                true
            }
            None => false,
        }
    }

    /// Flips bit `bit` (modulo the fragment's length) of fragment `index` at `key`.
    pub fn flip_bit(&self, key: &PlacementKey, index: u16, bit: usize) -> bool {
        self.tamper(key, index, |fragment| {
            let bits = fragment.bytes.len() * 8;
            if bits > 0 {
                fragment.bytes[(bit % bits) / 8] ^= 1 << (bit % 8);
            }
        })
    }

    /// Cuts fragment `index` at `key` to `len` bytes.
    pub fn truncate(&self, key: &PlacementKey, index: u16, len: usize) -> bool {
        self.tamper(key, index, |fragment| fragment.bytes.truncate(len))
    }

    /// Swaps the stored fragments `a` and `b` at `key`, each keeping its claimed index:
    /// asking for `a` returns the fragment that says it is `b`.
    pub fn swap(&self, key: &PlacementKey, a: u16, b: u16) -> bool {
        let mut inner = self.lock();
        let (Some(fa), Some(fb)) = (
            inner.fragments.remove(&(*key, a)),
            inner.fragments.remove(&(*key, b)),
        ) else {
            return false;
        };
        inner.fragments.insert((*key, a), fb);
        inner.fragments.insert((*key, b), fa);
        true
    }

    /// Makes reads of fragment `index` at `key` fail with [`InjectedFailure::Read`].
    pub fn fail(&self, key: &PlacementKey, index: u16) {
        self.lock().failing.insert((*key, index), None);
    }

    /// Makes the next `reads` reads of fragment `index` at `key` fail with
    /// [`InjectedFailure::Read`], as a holder that is restarting does.
    pub fn fail_for(&self, key: &PlacementKey, index: u16, reads: u32) {
        self.lock().failing.insert((*key, index), Some(reads));
    }

    /// The waits a get asked for ([`FragmentSource::pause`]), in order. This store
    /// records them and returns at once.
    pub fn pauses(&self) -> Vec<std::time::Duration> {
        self.lock().pauses.clone()
    }

    /// Makes puts at `key` fail with [`InjectedFailure::PlacementRefused`], which
    /// is of kind [`FailureKind::Refused`]: [`put`](crate::put) then diverts.
    pub fn refuse_placement(&self, key: &PlacementKey) {
        self.lock().refusing_placement.insert(*key);
    }

    /// Makes puts at `key` fail with [`InjectedFailure::Write`], which is not a
    /// placement refusal.
    pub fn fail_puts(&self, key: &PlacementKey) {
        self.lock().failing_puts.insert(*key);
    }

    /// Removes the certificate of `file`; true if it was there.
    pub fn delete_certificate(&self, file: &FileId) -> bool {
        self.lock().certificates.remove(file).is_some()
    }

    /// Replaces the stored certificate of its file (to test forged certificates).
    pub fn replace_certificate(&self, certificate: Signed<FileCertificate>) {
        self.lock()
            .certificates
            .insert(certificate.body.file_id, certificate);
    }
}

impl StoreFailure for InjectedFailure {
    fn kind(&self) -> FailureKind {
        match self {
            InjectedFailure::PlacementRefused { .. } => FailureKind::Refused,
            InjectedFailure::Read { .. }
            | InjectedFailure::Write { .. }
            | InjectedFailure::NotInFlight(_)
            | InjectedFailure::OutOfOrder { .. } => FailureKind::Other,
        }
    }
}

impl FragmentSink for MemoryFragments {
    type Error = InjectedFailure;

    /// Stores without checking `hash`: this double holds what it is given, so tests
    /// can also plant bad fragments through the hooks.
    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        _hash: &FragmentHash,
    ) -> Result<(), InjectedFailure> {
        let mut inner = self.lock();
        if inner.refusing_placement.contains(key) {
            return Err(InjectedFailure::PlacementRefused { key: *key });
        }
        if inner.failing_puts.contains(key) {
            return Err(InjectedFailure::Write { key: *key });
        }
        inner
            .fragments
            .insert((*key, fragment.index), fragment.to_owned());
        Ok(())
    }

    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), InjectedFailure> {
        let in_flight = self
            .lock()
            .deferred
            .as_ref()
            .map_or(0, |d| d.in_flight.len());
        if in_flight > 0 {
            return Err(InjectedFailure::OutOfOrder {
                key: *key,
                in_flight,
            });
        }
        fragments
            .iter()
            .try_for_each(|(fragment, hash)| self.put_fragment(key, *fragment, hash))
    }

    fn put_certificate(
        &self,
        certificate: &Signed<FileCertificate>,
    ) -> Result<(), InjectedFailure> {
        self.lock()
            .certificates
            .insert(certificate.body.file_id, certificate.clone());
        Ok(())
    }

    fn blocks_in_flight(&self) -> usize {
        self.lock().deferred.as_ref().map_or(1, |d| d.window)
    }

    fn start_block(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<PendingBlock, InjectedFailure> {
        let mut inner = self.lock();
        let Some(deferred) = inner.deferred.as_mut() else {
            drop(inner);
            self.put_block_fragments(key, fragments)?;
            return Ok(PendingBlock(0));
        };
        let copy = fragments.iter().map(|(f, _)| f.to_owned()).collect();
        let token = deferred.next;
        deferred.next += 1;
        deferred.in_flight.insert(token, (*key, copy));
        deferred.peak = deferred.peak.max(deferred.in_flight.len());
        Ok(PendingBlock(token))
    }

    fn finish_block(&self, pending: PendingBlock) -> Result<(), InjectedFailure> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(deferred) = inner.deferred.as_mut() else {
            return Ok(());
        };
        let Some((key, _)) = deferred.in_flight.get(&pending.0) else {
            return Err(InjectedFailure::NotInFlight(pending));
        };
        let key = *key;
        if inner.refusing_placement.contains(&key) {
            // Kept for a restart elsewhere.
            return Err(InjectedFailure::PlacementRefused { key });
        }
        let Some((_, fragments)) = deferred.in_flight.remove(&pending.0) else {
            return Err(InjectedFailure::NotInFlight(pending));
        };
        if inner.failing_puts.contains(&key) {
            return Err(InjectedFailure::Write { key });
        }
        for fragment in fragments {
            inner.fragments.insert((key, fragment.index), fragment);
        }
        Ok(())
    }

    fn restart_block(
        &self,
        pending: PendingBlock,
        new_key: &PlacementKey,
    ) -> Option<Result<PendingBlock, InjectedFailure>> {
        let mut inner = self.lock();
        let deferred = inner.deferred.as_mut()?;
        Some(match deferred.in_flight.get_mut(&pending.0) {
            Some((key, _)) => {
                *key = *new_key;
                deferred.restarts += 1;
                Ok(pending)
            }
            None => Err(InjectedFailure::NotInFlight(pending)),
        })
    }
}

impl FragmentSource for MemoryFragments {
    type Error = InjectedFailure;

    fn get_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
    ) -> Result<Option<Fragment>, InjectedFailure> {
        let mut inner = self.lock();
        match inner.failing.get_mut(&(*key, index)) {
            Some(None) => return Err(InjectedFailure::Read { key: *key, index }),
            Some(Some(left)) if *left > 0 => {
                *left -= 1;
                return Err(InjectedFailure::Read { key: *key, index });
            }
            _ => {}
        }
        Ok(inner.fragments.get(&(*key, index)).cloned())
    }

    fn pause(&self, delay: std::time::Duration) {
        self.lock().pauses.push(delay);
    }

    fn get_certificate(
        &self,
        file: &FileId,
    ) -> Result<Option<Signed<FileCertificate>>, InjectedFailure> {
        Ok(self.lock().certificates.get(file).cloned())
    }
}
