//! Record replication: a keeper keeps every record it holds (file certificates and
//! volume root records) on the other nodes closest to the record's key, so that a
//! record outlives its first keepers (without its certificate a file's blocks can be
//! neither read nor repaired). Whether a keeper needs this node's record is
//! [`RecordReplicate`]'s decision, written once for both kinds over
//! [`cairn_past::records::Record`]; this module pages through the store, drives the
//! machine for each record and counts what it gave.
//!
//! Owns: [`Node::replicate_records`] (and the per-kind calls the maintenance task
//! makes), [`RecordCursors`] (where each kind's next pass starts), and [`Kept`] (how
//! the store lists and reads a kind of record).
//!
//! May use: [`super`] (the node, its store, counters, view and `drive_maintenance`),
//! [`cairn_past::records`], [`cairn_store`].
//!
//! # Paging
//! A pass visits at most [`RECORDS_PER_PASS`] records of a kind, starting after the
//! last one the previous pass visited, and starts over once a page comes back short:
//! every record is visited once every `⌈records / RECORDS_PER_PASS⌉` passes (run after
//! a leaf-set change that touches the node's neighbourhood, and on every slow pass).

use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::crypto::{FileCertificate, RootRecord};
use cairn_core::id::{FileId, NodeId, VolumeKey};
use cairn_past::records::{Record, RecordReplicate};
use cairn_store::{DiskStore, NodeStore, StoreError};

use super::{Counters, Node, lock, unix_now};
use crate::gateway::GatewayError;

/// Most records of one kind a replication pass visits.
pub(crate) const RECORDS_PER_PASS: usize = 4096;

/// Where each kind's next replication pass starts: after this subject (`None`: from
/// the first).
#[derive(Debug, Default)]
pub(crate) struct RecordCursors {
    certificates: Option<FileId>,
    roots: Option<VolumeKey>,
}

/// A kind of record as this node's store keeps it.
pub(crate) trait Kept: Record<Subject: Send + 'static> + Send + 'static {
    /// Up to `limit` subjects held, in order, after `after`.
    fn page(
        store: &DiskStore,
        after: Option<&Self::Subject>,
        limit: usize,
    ) -> Result<Vec<Self::Subject>, StoreError>;

    /// The signed record held for `subject`.
    fn get(store: &DiskStore, subject: &Self::Subject) -> Result<Option<Vec<u8>>, StoreError>;

    /// This kind's cursor.
    fn cursor(cursors: &mut RecordCursors) -> &mut Option<Self::Subject>;

    /// The counter of records given to keepers that lacked them.
    fn given(counters: &Counters) -> &AtomicU64;
}

impl Kept for FileCertificate {
    fn page(
        store: &DiskStore,
        after: Option<&FileId>,
        limit: usize,
    ) -> Result<Vec<FileId>, StoreError> {
        store.certificate_files(after, limit)
    }

    fn get(store: &DiskStore, file: &FileId) -> Result<Option<Vec<u8>>, StoreError> {
        store.get_certificate(file)
    }

    fn cursor(cursors: &mut RecordCursors) -> &mut Option<FileId> {
        &mut cursors.certificates
    }

    fn given(counters: &Counters) -> &AtomicU64 {
        &counters.certificates_replicated
    }
}

impl Kept for RootRecord {
    fn page(
        store: &DiskStore,
        after: Option<&VolumeKey>,
        limit: usize,
    ) -> Result<Vec<VolumeKey>, StoreError> {
        store.root_volumes(after, limit)
    }

    fn get(store: &DiskStore, volume: &VolumeKey) -> Result<Option<Vec<u8>>, StoreError> {
        store.get_root(volume)
    }

    fn cursor(cursors: &mut RecordCursors) -> &mut Option<VolumeKey> {
        &mut cursors.roots
    }

    fn given(counters: &Counters) -> &AtomicU64 {
        &counters.roots_replicated
    }
}

impl Node {
    /// One replication pass over the certificates held here (see the module's paging).
    pub(crate) async fn replicate_certificates(&self, members: &[NodeId]) {
        self.replicate_records::<FileCertificate>(members, RECORDS_PER_PASS)
            .await;
    }

    /// One replication pass over the root records held here.
    pub(crate) async fn replicate_roots(&self, members: &[NodeId]) {
        self.replicate_records::<RootRecord>(members, RECORDS_PER_PASS)
            .await;
    }

    /// One pass of replication of the records of kind `R` held here: the next `page`
    /// of them after the kind's cursor, each driven through [`RecordReplicate`] towards
    /// the `certificate_replicas` nodes closest to its key among `members` (this
    /// node's view, itself included).
    pub(crate) async fn replicate_records<R: Kept>(&self, members: &[NodeId], page: usize) {
        let subjects = match self.next_page::<R>(page).await {
            Ok(subjects) => subjects,
            Err(e) => {
                tracing::warn!("listing the {}s held here failed: {e}", R::NAME);
                return;
            }
        };
        let replicas = self.config().past.certificate_replicas;
        for subject in subjects {
            if self.is_stopped() {
                return;
            }
            let read = self
                .blocking(move |node| R::get(node.store(), &subject))
                .await;
            let Ok(Ok(Some(bytes))) = read else {
                continue; // gone since it was listed, or unreadable
            };
            let machine = RecordReplicate::<R, GatewayError>::from_view(
                subject,
                bytes,
                unix_now(),
                self.id(),
                members.iter().copied(),
                replicas,
                |id| self.address_of(id),
            );
            match self.drive_maintenance(machine).await {
                Ok(done) => {
                    let given = u64::try_from(done.given.len()).unwrap_or(u64::MAX);
                    R::given(&self.inner.counters).fetch_add(given, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(%subject, "{} not replicated: {e}", R::NAME),
            }
        }
    }

    /// The next `page` subjects of kind `R` after its cursor, moving the cursor past
    /// them; after the last page the cursor goes back to the start.
    async fn next_page<R: Kept>(&self, page: usize) -> Result<Vec<R::Subject>, String> {
        let after = *R::cursor(&mut lock(&self.inner.record_cursors));
        let listed = self
            .blocking(move |node| {
                let first = R::page(node.store(), after.as_ref(), page)?;
                if first.is_empty() && after.is_some() {
                    // The previous pass ended on the last record: start over now.
                    return R::page(node.store(), None, page);
                }
                Ok(first)
            })
            .await?
            .map_err(|e| e.to_string())?;
        *R::cursor(&mut lock(&self.inner.record_cursors)) = if listed.len() < page {
            None
        } else {
            listed.last().copied()
        };
        Ok(listed)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use cairn_core::crypto::{KeyPair, Signed};
    use cairn_core::id::{Id, ManifestHash};

    use super::*;

    /// A signed certificate of the file `name` of `owner`.
    pub(crate) fn certificate(owner: &KeyPair, name: &[u8]) -> (FileId, Vec<u8>) {
        let body = FileCertificate {
            file_id: FileId::derive(name, &owner.public_key().0, 0),
            name_digest: Id::hash(name),
            name_salt: 0,
            manifest_hash: ManifestHash(Id::hash(name)),
            manifest_salt: 0,
            manifest_fragments: Vec::new(),
            size: 1,
            k: 2,
            m: 1,
            created_at: unix_now() - 10,
            expires_at: None,
            owner: owner.public_key(),
        };
        let file = body.file_id;
        (file, Signed::sign(owner, body).unwrap().to_bytes().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn certificates_past_the_first_page_are_replicated_on_later_passes() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let (keeper, other) = crate::tests::two_quiet_keepers(&dirs, |_| {}).await;
        let owner = KeyPair::from_secret_bytes(&[7; 32]);
        let files: Vec<FileId> = (0..5u8)
            .map(|i| {
                let (file, bytes) = certificate(&owner, &[b'f', i]);
                keeper.store().put_certificate(&file, &bytes).unwrap();
                file
            })
            .collect();
        let held_by_other = || {
            files
                .iter()
                .filter(|file| other.store().get_certificate(file).unwrap().is_some())
                .count()
        };
        let members = [keeper.id(), other.id()];
        // Two certificates a pass: the first pass gives the first page only.
        keeper
            .replicate_records::<FileCertificate>(&members, 2)
            .await;
        assert_eq!(held_by_other(), 2);
        keeper
            .replicate_records::<FileCertificate>(&members, 2)
            .await;
        keeper
            .replicate_records::<FileCertificate>(&members, 2)
            .await;
        assert_eq!(held_by_other(), 5, "every page was visited");
        assert_eq!(
            keeper
                .counters()
                .certificates_replicated
                .load(Ordering::Relaxed),
            5
        );
        // The next pass starts over, and finds every keeper current.
        keeper
            .replicate_records::<FileCertificate>(&members, 2)
            .await;
        assert_eq!(
            keeper
                .counters()
                .certificates_replicated
                .load(Ordering::Relaxed),
            5
        );
        other.shutdown().await;
        keeper.shutdown().await;
    }
}
