//! The collection of uploads never certified: the daemon's side of
//! [`cairn_past::admission`]. Every `collect_period` the collect task pages through
//! the charges this node holds ([`COLLECT_PAGE`] at a time, on the blocking pool), and
//! for each charge whose grant expired more than `PastConfig::uncertified_grace` ago it
//! looks the file's certificate up at its keepers ([`RecordFind`]) and hands the
//! answer to [`uncertified_verdict`]; [`cairn_past::Holder::settle_upload`] carries the
//! verdict out. The decisions are past's; this module only pages, asks and counts.
//!
//! Owns: [`COLLECT_PAGE`], [`Node::collect_uncertified`] (one pass), the collect task,
//! [`CollectPass`] (what a pass did).
//!
//! May use: [`super`] (the node, `drive`, `blocking`), [`cairn_past`], [`cairn_store`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{Node, unix_now};
use cairn_core::crypto::FileCertificate;
use cairn_core::id::FileId;
use cairn_past::admission::{
    CertificateSearch, UploadVerdict, collection_due, uncertified_verdict,
};
use cairn_past::records::FindError;
use cairn_past::{Settled, UnixSeconds};
use cairn_store::{ChargeCursor, NodeStore};

/// Charges read from the store at a time: a pass never holds more than this many in
/// memory, and each page is one short task on the blocking pool.
pub const COLLECT_PAGE: usize = 256;

/// The most certificate searches a pass remembers (one per file: a file's fragments
/// on one node share one search); cleared past it, which costs a search again.
const SEARCHES_REMEMBERED: usize = 4096;

/// What one collection pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectPass {
    /// Charges read.
    pub charges: u64,
    /// Uploads whose certificate was found: their charges are certified now.
    pub certified: u64,
    /// Fragments deleted: their last charge was of an upload never certified.
    pub fragments_collected: u64,
    /// Bytes those fragments freed.
    pub bytes_collected: u64,
}

impl Node {
    /// One collection pass at `now` over every charge held, `page` charges at a time
    /// (see the module docs). Counted in `/metrics`.
    pub async fn collect_uncertified(&self, now: UnixSeconds, page: usize) -> CollectPass {
        let past = self.config().past;
        let mut pass = CollectPass::default();
        let mut searches: HashMap<FileId, CertificateSearch> = HashMap::new();
        let mut cursor: Option<ChargeCursor> = None;
        loop {
            if self.is_stopped() {
                break;
            }
            let after = cursor;
            let listed = self
                .blocking(move |node| node.store().charges_after(after.as_ref(), page.max(1)))
                .await;
            let listed = match listed {
                Ok(Ok(listed)) if !listed.is_empty() => listed,
                Ok(Ok(_)) => break,
                failed => {
                    tracing::warn!("the collection pass could not list charges: {failed:?}");
                    break;
                }
            };
            cursor = listed.last().map(|(at, _)| *at);
            for (at, charge) in listed {
                pass.charges += 1;
                if !collection_due(&charge, now, past.uncertified_grace) {
                    continue;
                }
                if searches.len() >= SEARCHES_REMEMBERED {
                    searches.clear();
                }
                let search = match searches.get(&charge.file) {
                    Some(search) => *search,
                    None => {
                        let search = self.search_certificate(charge.file).await;
                        searches.insert(charge.file, search);
                        search
                    }
                };
                let verdict = uncertified_verdict(
                    &charge,
                    now,
                    past.uncertified_grace,
                    search,
                    past.certificate_replicas,
                );
                if verdict == UploadVerdict::Keep {
                    continue;
                }
                let settled = self
                    .blocking(move |node| node.inner.holder.settle_upload(&at, verdict))
                    .await;
                match settled {
                    Ok(Ok(Settled::Certified)) => pass.certified += 1,
                    Ok(Ok(Settled::FragmentCollected { bytes })) => {
                        tracing::info!(key = %at.key, index = at.index, file = %charge.file, bytes, "collected a fragment of an upload never certified");
                        pass.fragments_collected += 1;
                        pass.bytes_collected += bytes;
                    }
                    Ok(Ok(Settled::Kept | Settled::ChargeCollected)) => {}
                    failed => {
                        tracing::warn!(key = %at.key, index = at.index, "settling an upload failed: {failed:?}");
                    }
                }
            }
        }
        let counters = self.counters();
        counters
            .uncertified_fragments_collected
            .fetch_add(pass.fragments_collected, Ordering::Relaxed);
        counters
            .uncertified_bytes_collected
            .fetch_add(pass.bytes_collected, Ordering::Relaxed);
        counters
            .uploads_certified
            .fetch_add(pass.certified, Ordering::Relaxed);
        pass
    }

    /// Asks `file`'s certificate keepers (two more than keep it, as a reader does)
    /// whether they hold its certificate.
    async fn search_certificate(&self, file: FileId) -> CertificateSearch {
        match self.drive(self.record_find::<FileCertificate>(file)).await {
            Ok(found) if found.record.is_some() => CertificateSearch::Certified,
            Ok(found) => CertificateSearch::NoneHeld {
                answered: found.answered,
                forged: found.forged.len(),
            },
            Err(FindError::Unreached(_) | FindError::NoReplicas | FindError::Stalled) => {
                CertificateSearch::Unreached
            }
        }
    }
}

/// The collect task: a pass every `collect_period`, ending with the node.
pub(crate) async fn collect_task(node: Node) {
    let period = node.config().maintenance.collect_period;
    loop {
        tokio::time::sleep(period).await;
        if node.is_stopped() {
            return;
        }
        node.collect_uncertified(unix_now(), COLLECT_PAGE).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use cairn_core::crypto::{KeyPair, Signed, UploadGrant};
    use cairn_core::erasure::fragment_hash;
    use cairn_core::id::{Id, PlacementKey};
    use cairn_past::{PastRequest, PastResponse, Refusal, StoreRequest};

    fn store_request(owner: &KeyPair, name: &[u8], key: u8, expires_in: u64) -> StoreRequest {
        let now = unix_now();
        let grant = UploadGrant::new(name, 0, owner.public_key(), now - 1, expires_in + 1);
        let bytes = vec![key; 4096];
        StoreRequest {
            grant: Signed::sign(owner, grant).unwrap().to_bytes().unwrap(),
            key: PlacementKey(Id([key; 32])),
            index: 0,
            hash: fragment_hash(0, &bytes),
            bytes,
            replicas: 3,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_over_quota_is_refused_and_one_never_certified_is_collected_later() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        // Both keep every certificate: a majority of the keepers is both.
        let (holder, keeper) = crate::tests::two_quiet_keepers(&dirs, |config| {
            config.past.owner_quota = Some(3 * 4096);
        })
        .await;
        // Until each has the other in its leaf set, a search could find one keeper.
        let know_each_other = async {
            loop {
                let (a, b) = (holder.overlay_view(), keeper.overlay_view());
                if a.left.contains(&keeper.id()) && b.left.contains(&holder.id()) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), know_each_other)
            .await
            .expect("two nodes see each other");
        let owner = KeyPair::from_secret_bytes(&[7; 32]);
        let grace = holder.config().past.uncertified_grace;
        // Three uploads: junk never certified, a certified one, and junk on page 2.
        let junk = store_request(&owner, b"junk", 1, 60);
        let kept = store_request(&owner, b"kept", 2, 60);
        let later = store_request(&owner, b"later", 3, 60);
        for request in [&junk, &kept, &later] {
            holder
                .inner
                .holder
                .store_fragment(request, false, unix_now())
                .unwrap();
        }
        // A fourth upload is over the owner's quota: refused, counted.
        let over = store_request(&owner, b"over", 4, 60);
        let refused = holder
            .handle_past(holder.id(), PastRequest::Store(over))
            .await;
        assert!(
            matches!(
                refused,
                PastResponse::Refused(Refusal::OverQuota { used: 12288, .. })
            ),
            "{refused:?}"
        );
        assert_eq!(
            holder
                .counters()
                .owner_quota_refused
                .load(Ordering::Relaxed),
            1
        );
        let (kept_file, certificate) = crate::records::tests::certificate(&owner, b"kept");
        for node in [&holder, &keeper] {
            node.store()
                .put_certificate(&kept_file, &certificate)
                .unwrap();
        }
        let held = |key: u8| {
            holder
                .store()
                .fragment_info(&PlacementKey(Id([key; 32])), 0)
                .unwrap()
                .is_some()
        };

        // Before the grant and the grace are over, nothing is touched.
        let early = holder.collect_uncertified(unix_now() + grace, 1).await;
        assert_eq!((early.charges, early.fragments_collected), (3, 0));
        assert!(held(1) && held(2) && held(3));

        // After: both junk uploads go (one page of one charge at a time), the
        // certified one stays and is never looked up again.
        let late = unix_now() + 60 + grace + 1;
        let pass = holder.collect_uncertified(late, 1).await;
        assert_eq!(pass.fragments_collected, 2, "{pass:?}");
        assert_eq!(pass.bytes_collected, 2 * 4096);
        assert_eq!(pass.certified, 1);
        assert!(!held(1) && held(2) && !held(3));
        let owner_key = owner.public_key().owner_key();
        assert_eq!(holder.store().owner_usage(&owner_key), 4096);
        assert_eq!(
            holder
                .counters()
                .uncertified_fragments_collected
                .load(Ordering::Relaxed),
            2
        );
        let again = holder.collect_uncertified(late, 1).await;
        assert_eq!((again.certified, again.fragments_collected), (0, 0));

        keeper.shutdown().await;
        holder.shutdown().await;
    }
}
