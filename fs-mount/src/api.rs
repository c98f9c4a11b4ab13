//! [`ApiBackend`]: the [`Backend`] over a node's HTTP API (`cairn_api::client`).
//! Files are stored with `put` (every put a fresh name salt, so a new file), read
//! with ranged gets the node verifies, and roots read and published through the
//! node's root endpoints.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_api::client::{ApiClient, ClientError};
use cairn_core::crypto::{KeyPair, RootRecord};
use cairn_core::id::{FileId, Id, Reference, VolumeKey};

use crate::backend::{Backend, BackendError, Capacity, unix_now};

/// The name every file the mount stores is put under (the salt makes each unique).
const STORED_NAME: &str = "cairn-fs";

/// The network, through one node's API.
pub struct ApiBackend {
    client: ApiClient,
    puts: AtomicU64,
    salt_seed: Id,
}

impl ApiBackend {
    /// A backend over `client`.
    pub fn new(client: ApiClient) -> ApiBackend {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        ApiBackend {
            client,
            puts: AtomicU64::new(0),
            salt_seed: Id::hash_parts(&[&nanos.to_be_bytes(), &std::process::id().to_be_bytes()]),
        }
    }

    /// A salt no other put of this process (or, with overwhelming odds, any other) used.
    fn next_salt(&self) -> u64 {
        let n = self.puts.fetch_add(1, Ordering::Relaxed);
        let id = Id::hash_parts(&[self.salt_seed.as_bytes(), &n.to_be_bytes()]);
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&id.as_bytes()[..8]);
        u64::from_be_bytes(salt)
    }
}

fn backend_error(e: ClientError) -> BackendError {
    match e {
        ClientError::RootConflict { held_sequence } => BackendError::Conflict { held_sequence },
        ClientError::Api { status: 404, .. } => BackendError::NotFound,
        ClientError::Api { status: 507, .. } => BackendError::Full,
        other => BackendError::Unavailable(format!("{other:#}")),
    }
}

impl Backend for ApiBackend {
    fn put_file(&self, owner: &KeyPair, reader: &mut dyn Read) -> Result<FileId, BackendError> {
        let outcome = self
            .client
            .put(
                reader,
                STORED_NAME,
                self.next_salt(),
                owner,
                None,
                unix_now(),
            )
            .map_err(backend_error)?;
        match outcome.reference {
            Reference::File(id) => Ok(id),
            other => Err(BackendError::Unavailable(format!(
                "the node answered a put with {other}, not a file"
            ))),
        }
    }

    fn read_range(
        &self,
        file: &FileId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, BackendError> {
        let reader = self
            .client
            .open_range(file, offset, length)
            .map_err(backend_error)?;
        Ok(Box::new(reader))
    }

    /// An empty range: the node finds and checks the certificate and fetches no block
    /// (a stat would ask every holder of every block).
    fn file_size(&self, file: &FileId) -> Result<u64, BackendError> {
        let empty = self
            .client
            .open_range(file, 0, Some(0))
            .map_err(backend_error)?;
        Ok(empty.file_size())
    }

    fn get_root(&self, volume: &VolumeKey) -> Result<Option<RootRecord>, BackendError> {
        self.client.get_root(volume).map_err(backend_error)
    }

    fn publish_root(
        &self,
        owner: &KeyPair,
        sequence: u64,
        root: FileId,
    ) -> Result<(), BackendError> {
        self.client
            .publish_root(owner, sequence, root, unix_now())
            .map(|_| ())
            .map_err(backend_error)
    }

    /// The network's storage, estimated: the API node's own capacity and use times the
    /// number of nodes it estimates from its leaf set (nodes of similar size assumed;
    /// no node knows every other's figures).
    fn capacity(&self) -> Result<Capacity, BackendError> {
        let status = self.client.status().map_err(backend_error)?;
        let nodes = status.network_nodes_estimate.max(1.0);
        let scale = |bytes: u64| (bytes as f64 * nodes).min(u64::MAX as f64) as u64;
        Ok(Capacity {
            total_bytes: scale(status.capacity),
            used_bytes: scale(status.used),
        })
    }
}
