//! The client pipeline over this machine's own store: [`LocalFragments`] implements
//! [`FragmentSink`] and [`FragmentSource`] on any [`NodeStore`] (the sled-indexed
//! [`DiskStore`] for `cairn put`/`get` until the network exists, [`MemoryStore`] in
//! tests).
//!
//! [`DiskStore`]: cairn_store::DiskStore
//! [`MemoryStore`]: cairn_store::MemoryStore

use crate::store::{FailureKind, FragmentSink, FragmentSource, StoreFailure};
use cairn_core::crypto::{FileCertificate, Signed, VerifyError};
use cairn_core::erasure::{Fragment, FragmentRef};
use cairn_core::id::{FileId, FragmentHash, PlacementKey};
use cairn_store::{NodeStore, OfferedFragment, StoreError};

/// A [`FragmentSink`] and [`FragmentSource`] that is one local [`NodeStore`]: every
/// fragment of every block goes to it, and certificates are verified before they are
/// stored.
///
/// It never reports a placement refusal ([`FailureKind::Refused`]):
/// every placement key lands on the same store, so diverting a block to another key
/// cannot find room a full store lacks; a full store fails the put at once.
#[derive(Debug)]
pub struct LocalFragments<S>(pub S);

/// What can go wrong between the pipeline and a local store.
#[derive(Debug, thiserror::Error)]
pub enum LocalStoreError {
    /// The store refused or failed (full, corrupt, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A certificate that does not verify is never stored, and one read back that
    /// does not decode is reported, not believed.
    #[error("the certificate of file {file} is not valid")]
    Certificate {
        /// The file.
        file: FileId,
        /// Why.
        #[source]
        source: VerifyError,
    },
}

/// A failed read of a fragment whose bytes no longer match their hash is
/// [`FailureKind::Corrupt`]; nothing else is told apart (a full store fails the put).
impl StoreFailure for LocalStoreError {
    fn kind(&self) -> FailureKind {
        match self {
            LocalStoreError::Store(StoreError::Corrupt { .. }) => FailureKind::Corrupt,
            LocalStoreError::Store(_) | LocalStoreError::Certificate { .. } => FailureKind::Other,
        }
    }
}

impl<S: NodeStore> FragmentSink for LocalFragments<S> {
    type Error = LocalStoreError;

    fn put_fragment(
        &self,
        key: &PlacementKey,
        fragment: FragmentRef<'_>,
        hash: &FragmentHash,
    ) -> Result<(), LocalStoreError> {
        self.0
            .put_fragment(key, fragment.index, hash, fragment.bytes)?;
        Ok(())
    }

    /// One group commit per block ([`NodeStore::put_fragments`]): all the
    /// block's fragments are stored or none, with one sync for the lot.
    fn put_block_fragments(
        &self,
        key: &PlacementKey,
        fragments: &[(FragmentRef<'_>, FragmentHash)],
    ) -> Result<(), LocalStoreError> {
        let offered: Vec<OfferedFragment<'_>> = fragments
            .iter()
            .map(|(fragment, hash)| OfferedFragment {
                index: fragment.index,
                hash: *hash,
                bytes: fragment.bytes,
            })
            .collect();
        self.0.put_fragments(key, &offered)?;
        Ok(())
    }

    fn put_certificate(
        &self,
        certificate: &Signed<FileCertificate>,
    ) -> Result<(), LocalStoreError> {
        let file = certificate.body.file_id;
        let invalid = |source| LocalStoreError::Certificate { file, source };
        certificate.verify().map_err(invalid)?;
        self.0
            .put_certificate(&file, &certificate.to_bytes().map_err(invalid)?)?;
        Ok(())
    }
}

impl<S: NodeStore> FragmentSource for LocalFragments<S> {
    type Error = LocalStoreError;

    fn get_fragment(
        &self,
        key: &PlacementKey,
        index: u16,
    ) -> Result<Option<Fragment>, LocalStoreError> {
        Ok(self
            .0
            .get_fragment(key, index)?
            .map(|bytes| Fragment { index, bytes }))
    }

    fn get_certificate(
        &self,
        file: &FileId,
    ) -> Result<Option<Signed<FileCertificate>>, LocalStoreError> {
        let Some(bytes) = self.0.get_certificate(file)? else {
            return Ok(None);
        };
        Signed::from_bytes(&bytes)
            .map(Some)
            .map_err(|source| LocalStoreError::Certificate {
                file: *file,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GetOptions, GetTarget, PutOptions, get, put};
    use cairn_core::crypto::KeyPair;
    use cairn_core::erasure::ErasureParams;
    use cairn_store::{DiskStore, MemoryStore};

    #[test]
    fn round_trip_through_the_disk_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let owner = KeyPair::from_secret_bytes(&[3; 32]);
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 1000) as u8)
            .collect();
        let options = PutOptions::new(ErasureParams::DEFAULT, 1_700_000_000);
        let receipt = {
            let store = LocalFragments(DiskStore::open(dir.path(), 1 << 30).unwrap());
            put(&data[..], b"data.bin", &owner, &options, &store).unwrap()
        };
        let store = LocalFragments(DiskStore::open(dir.path(), 1 << 30).unwrap());
        let cairn_core::id::Reference::File(file) = receipt.reference else {
            panic!("a put returns a file reference")
        };
        let mut out = Vec::new();
        get(
            GetTarget::File(file),
            &mut out,
            &store,
            &GetOptions::new(1_700_000_001),
        )
        .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn a_byte_flipped_on_disk_is_counted_corrupt_and_worked_around() {
        let owner = KeyPair::from_secret_bytes(&[5; 32]);
        let disk = MemoryStore::new(1 << 30);
        let store = LocalFragments(disk);
        let data = vec![9u8; 300_000];
        let options = PutOptions::new(ErasureParams::DEFAULT, 1);
        let receipt = put(&data[..], b"f", &owner, &options, &store).unwrap();
        let block = &receipt.manifest.blocks[0];
        let key = cairn_core::id::PlacementKey::for_block(&block.hash, block.salt);
        assert!(store.0.corrupt_fragment(&key, 0, 10, 0x01));
        let mut out = Vec::new();
        let stats = get(
            GetTarget::Certificate(&receipt.certificate),
            &mut out,
            &store,
            &GetOptions::new(1),
        )
        .unwrap();
        assert_eq!(out, data);
        assert_eq!(
            (stats.skipped_corrupt, stats.skipped_unavailable),
            (1, 0),
            "{:?}",
            stats.skipped
        );
    }

    #[test]
    fn a_full_store_refuses_the_put_with_its_reason() {
        let owner = KeyPair::from_secret_bytes(&[4; 32]);
        // Room for two of the block's six 250 000-byte fragments, not for the block.
        let store = LocalFragments(MemoryStore::new(600_000));
        let data = vec![7u8; 1_000_000];
        let error = put(
            &data[..],
            b"big",
            &owner,
            &PutOptions::new(ErasureParams::DEFAULT, 1),
            &store,
        )
        .unwrap_err();
        let chain = format!(
            "{error}: {}",
            std::error::Error::source(&error).map_or(String::new(), |s| s.to_string())
        );
        assert!(chain.contains("full"), "{chain}");
        // The block went as one group: none of its fragments took space.
        assert_eq!(store.0.used(), 0, "a refused block left fragments behind");
    }

    #[test]
    fn a_block_that_does_not_fit_on_disk_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let owner = KeyPair::from_secret_bytes(&[6; 32]);
        let store = LocalFragments(DiskStore::open(dir.path(), 600_000).unwrap());
        let data = vec![8u8; 1_000_000];
        let options = PutOptions::new(ErasureParams::DEFAULT, 1);
        assert!(put(&data[..], b"big", &owner, &options, &store).is_err());
        assert_eq!(store.0.used(), 0);
        let everything = cairn_core::id::PlacementKey(cairn_core::id::Id::ZERO);
        assert_eq!(
            store.0.placement_keys_in(&everything, &everything).unwrap(),
            vec![]
        );
        let bodies: usize = std::fs::read_dir(store.0.bodies_dir())
            .unwrap()
            .map(|fan| std::fs::read_dir(fan.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(bodies, 0, "body files left by a refused block");
    }
}
