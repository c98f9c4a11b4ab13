//! The publisher: storing a volume's dirty directories bottom-up and publishing its
//! new root (a lost update to another writer is recorded and the winner adopted),
//! waiting for a publish (fsync), re-reading root records to adopt newer roots, and
//! the publisher thread's sleep and wake-up. The thread itself is in
//! [`crate::mount`]. Its calls to [`crate::backend`] are made without the state
//! lock (see `publish_view`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use cairn_core::crypto::{KeyPair, RootRecord};
use cairn_core::id::{FileId, Reference, VolumeKey};
use tracing::{error, info, warn};

use super::error::{FsError, Result};
use super::state::{DirNode, Inode, Node, State};
use super::{Ino, Shared};
use crate::backend::{Backend, BackendError, root_file, unix_now};
use crate::volume::{DirEntry, Directory, EntryKind, PreviousRoot};

/// How long fsync waits for its publish before failing with EIO.
const PUBLISH_WAIT: Duration = Duration::from_secs(300);

impl Shared {
    /// Waits until a publish covering every change so far to `ino`'s volume completed.
    pub fn wait_published(&self, ino: Ino) -> Result<()> {
        let mut state = self.lock();
        let Some(view) = state.inodes.get(&ino).and_then(|i| i.view) else {
            return Ok(());
        };
        if !state.views[view].writable() {
            return Ok(());
        }
        let target = state.views[view].change_gen;
        self.wake.notify_all();
        let deadline = Instant::now() + PUBLISH_WAIT;
        loop {
            let v = &state.views[view];
            if v.lost
                .iter()
                .any(|(after, through)| *after < target && target <= *through)
            {
                return Err(FsError::Lost);
            }
            if v.published_gen >= target {
                return Ok(());
            }
            if v.failed_gen >= target {
                return Err(FsError::Io("publishing the volume's root failed".into()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FsError::Io("timed out waiting for the publish".into()));
            }
            state = self
                .published
                .wait_timeout(state, left.min(Duration::from_millis(500)))
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Whether any writable volume has changes not yet published.
    pub fn has_pending(&self) -> bool {
        self.lock()
            .views
            .iter()
            .any(|v| v.writable() && v.change_gen > v.published_gen)
    }

    /// Publishes every volume with unpublished changes (run by the publisher).
    pub fn publish_pending(&self) {
        let pending: Vec<usize> = {
            let state = self.lock();
            (0..state.views.len())
                .filter(|&v| {
                    let view = &state.views[v];
                    view.writable() && view.change_gen > view.published_gen
                })
                .collect()
        };
        for view in pending {
            self.publish_view(view);
        }
        self.published.notify_all();
    }

    /// One publish of one volume, in three steps so that no network call holds the
    /// state lock: snapshot the dirty directories (locked), store them bottom-up and
    /// publish the root (unlocked), then record the stored ids of the directories
    /// that did not change meanwhile (locked). A directory changed meanwhile stays
    /// dirty, and its change generation is above the one published, so the next
    /// round stores it again.
    fn publish_view(&self, view: usize) {
        let (generation, owner, key, sequence, old_root, plan, root_seal) = {
            let mut state = self.lock();
            let v = &state.views[view];
            let Some(owner) = v.owner.clone() else {
                return;
            };
            let previous = v.root_file.map(|root| PreviousRoot {
                sequence: v.sequence,
                root,
                time: v.root_time,
            });
            let (generation, key, sequence, old_root, root_ino) =
                (v.change_gen, v.key, v.sequence, v.root_file, v.root);
            let mut plan = Vec::new();
            match snapshot(&mut state, root_ino, previous, &mut plan) {
                Ok(root_seal) => (generation, owner, key, sequence, old_root, plan, root_seal),
                Err(e) => {
                    error!(volume = %Reference::Volume(key), error = %e, "snapshotting the volume failed");
                    state.views[view].failed_gen = generation;
                    return;
                }
            }
        };
        let stored = match store_plan(&*self.backend, &owner, &plan) {
            Ok(stored) => stored,
            Err(e) => {
                error!(volume = %Reference::Volume(key), error = %e, "storing the volume's directories failed; will retry");
                self.lock().views[view].failed_gen = generation;
                return;
            }
        };
        let root = match root_seal {
            Sealed::Stored(file) => file,
            Sealed::Planned(index) => stored[index],
        };
        let commit = |state: &mut State| {
            for (dir, file) in plan.iter().zip(&stored) {
                if let Some(Inode {
                    node: Node::Dir(node),
                    ..
                }) = state.inodes.get_mut(&dir.ino)
                {
                    if node.version == dir.version {
                        node.stored = Some(*file);
                        node.dirty = false;
                    }
                }
            }
        };
        if Some(root) == old_root {
            let mut state = self.lock();
            commit(&mut state);
            state.views[view].published_gen = generation;
            return;
        }
        match self.backend.publish_root(&owner, sequence + 1, root) {
            Ok(()) => {
                let mut state = self.lock();
                commit(&mut state);
                let v = &mut state.views[view];
                v.sequence = sequence + 1;
                v.root_file = Some(root);
                v.root_time = unix_now();
                v.published_gen = generation;
                info!(volume = %Reference::Volume(key), sequence = v.sequence, root = %Reference::File(root), "published");
            }
            Err(BackendError::Conflict { held_sequence }) => {
                error!(
                    volume = %Reference::Volume(key),
                    unpublished_root = %Reference::File(root),
                    held_sequence,
                    "lost update: another writer published this volume first; this mount's \
                     changes are kept only in the unpublished root named here, and the mount \
                     now shows the other writer's state"
                );
                let winner = self.backend.get_root(&key);
                let mut state = self.lock();
                let v = &mut state.views[view];
                v.lost.push((v.published_gen, generation));
                if v.lost.len() > 16 {
                    v.lost.remove(0);
                }
                v.published_gen = generation;
                match winner {
                    Ok(Some(record)) => reset_view(&mut state, view, &record),
                    Ok(None) => warn!("conflict but no root record found"),
                    Err(e) => warn!(error = %e, "reading the winning root failed"),
                }
            }
            Err(e) => {
                error!(volume = %Reference::Volume(key), error = %e, "publishing the root failed; will retry");
                let mut state = self.lock();
                commit(&mut state);
                state.views[view].failed_gen = generation;
            }
        }
    }

    /// Re-reads root records of live views; adopts newer ones where nothing is
    /// unpublished here.
    pub fn refresh(&self) {
        let keys: Vec<(usize, VolumeKey)> = {
            let state = self.lock();
            state
                .views
                .iter()
                .enumerate()
                .filter(|(_, v)| v.history.is_none())
                .map(|(i, v)| (i, v.key))
                .collect()
        };
        for (view, key) in keys {
            let record = match self.backend.get_root(&key) {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e) => {
                    warn!(volume = %Reference::Volume(key), error = %e, "refresh failed");
                    continue;
                }
            };
            let mut state = self.lock();
            let v = &state.views[view];
            if record.sequence > v.sequence && v.change_gen == v.published_gen && v.writers == 0 {
                info!(volume = %Reference::Volume(key), sequence = record.sequence, "newer root adopted");
                reset_view(&mut state, view, &record);
            }
        }
    }

    /// Sleeps the publisher until woken by a change or `timeout`.
    pub fn wait_for_work(&self, timeout: Duration) {
        let state = self.lock();
        if self.stop.load(Ordering::SeqCst)
            || state.views.iter().any(|v| {
                v.writable() && v.change_gen > v.published_gen && v.failed_gen < v.change_gen
            })
        {
            return;
        }
        let _ = self.wake.wait_timeout(state, timeout);
    }

    /// Wakes the publisher.
    pub fn wake_publisher(&self) {
        self.wake.notify_all();
    }
}

/// Points a live view at another root; its old inodes stay for handles still open.
fn reset_view(state: &mut State, view: usize, record: &RootRecord) {
    let v = &mut state.views[view];
    v.sequence = record.sequence;
    v.root_file = Some(root_file(record));
    v.root_time = record.time;
    let root = v.root;
    if let Some(inode) = state.inodes.get_mut(&root) {
        inode.node = Node::Dir(DirNode {
            stored: Some(root_file(record)),
            children: None,
            dirty: false,
            version: 0,
        });
        inode.mtime = UNIX_EPOCH + Duration::from_secs(record.time);
        inode.ctime = inode.mtime;
    }
}

/// A directory of a publish: stored already, or the index of its plan entry.
enum Sealed {
    Stored(FileId),
    Planned(usize),
}

/// An entry of a planned directory: ready, or a subdirectory planned earlier.
enum PlannedKind {
    Ready(EntryKind),
    Subdirectory(usize),
}

/// A dirty directory to store, as it was when the publish began.
struct PlannedDir {
    ino: Ino,
    version: u64,
    previous: Option<PreviousRoot>,
    entries: Vec<(String, PlannedKind, u32, i64, u32)>,
}

/// Plans the directory `ino` and its dirty descendants, children before parents.
fn snapshot(
    state: &mut State,
    ino: Ino,
    previous: Option<PreviousRoot>,
    plan: &mut Vec<PlannedDir>,
) -> Result<Sealed> {
    let (children, version) = match state.inodes.get(&ino).map(|i| &i.node) {
        Some(Node::Dir(dir)) => {
            if let (false, Some(stored)) = (dir.dirty, dir.stored) {
                return Ok(Sealed::Stored(stored));
            }
            match &dir.children {
                Some(c) => (
                    c.iter().map(|(n, i)| (n.clone(), *i)).collect::<Vec<_>>(),
                    dir.version,
                ),
                None => {
                    return dir
                        .stored
                        .map(Sealed::Stored)
                        .ok_or_else(|| FsError::Io("unloaded directory".into()));
                }
            }
        }
        _ => return Err(FsError::Io("not a directory".into())),
    };
    let mut entries = Vec::with_capacity(children.len());
    for (name, child) in children {
        let kind = match state.inodes.get(&child).map(|i| &i.node) {
            Some(Node::File(file)) => PlannedKind::Ready(EntryKind::File(file.content.clone())),
            Some(Node::Symlink(target)) => PlannedKind::Ready(EntryKind::Symlink(target.clone())),
            Some(Node::Dir(_)) => match snapshot(state, child, None, plan)? {
                Sealed::Stored(file) => PlannedKind::Ready(EntryKind::Dir(file)),
                Sealed::Planned(index) => PlannedKind::Subdirectory(index),
            },
            _ => continue,
        };
        let Some(inode) = state.inodes.get(&child) else {
            continue;
        };
        let since = inode.mtime.duration_since(UNIX_EPOCH).unwrap_or_default();
        entries.push((
            name,
            kind,
            inode.mode,
            since.as_secs() as i64,
            since.subsec_nanos(),
        ));
    }
    plan.push(PlannedDir {
        ino,
        version,
        previous,
        entries,
    });
    Ok(Sealed::Planned(plan.len() - 1))
}

/// Stores a plan's directories in order; returns their files.
fn store_plan(
    backend: &dyn Backend,
    owner: &KeyPair,
    plan: &[PlannedDir],
) -> std::result::Result<Vec<FileId>, BackendError> {
    let mut stored: Vec<FileId> = Vec::with_capacity(plan.len());
    for dir in plan {
        let entries = dir
            .entries
            .iter()
            .map(|(name, kind, mode, secs, nanos)| DirEntry {
                name: name.clone(),
                kind: match kind {
                    PlannedKind::Ready(kind) => kind.clone(),
                    // Children are planned before their parents.
                    PlannedKind::Subdirectory(index) => EntryKind::Dir(stored[*index]),
                },
                mode: *mode,
                mtime_secs: *secs,
                mtime_nanos: *nanos,
            })
            .collect();
        let bytes = Directory {
            previous: dir.previous,
            entries,
        }
        .encode();
        stored.push(backend.put_file(owner, &mut &bytes[..])?);
    }
    Ok(stored)
}
