//! A blocking client of a node's local API: what the CLI, the tests and the mount use.
//!
//! The owner key stays in the caller's process: [`ApiClient::put`] signs an upload
//! grant, streams the bytes, checks the certificate the node proposes (same file, same
//! owner, as many bytes as were sent) and only then signs and publishes it;
//! [`ApiClient::remove`] signs a reclaim; [`ApiClient::publish_root`] signs a volume's
//! root record, and [`ApiClient::get_root`] verifies the one the node returns. A
//! client (and its clones) remembers the highest root sequence it has seen of each
//! volume, verified or published by itself, and refuses a lower one (or none) from a
//! gateway later ([`ClientError::RootRolledBack`]): a node cannot roll a reader back.
//! [`ApiClient::open_range`] reads part of a file (what the mount reads through).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use ureq::http::Response;

use super::ReclaimReport;
use super::{
    CertificateAnswer, ErrorBody, FILE_SIZE_HEADER, FileStatAnswer, GRANT_HEADER, PublishAnswer,
    PutAnswer, RECLAIM_HEADER, RootAnswer, RootConflictBody, StatusAnswer, decode_hex, encode_hex,
};
use cairn_core::crypto::{
    Certificate, FileCertificate, KeyPair, PublicKey, ReclaimCertificate, RootRecord, Signed,
    UploadGrant,
};
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{FileId, Reference, VolumeKey};

pub use super::RootPublished;

/// How long an upload grant lives: long enough for a slow upload of a big file.
pub const GRANT_LIFETIME_SECS: u64 = 24 * 3600;

/// Why a call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the API's address.
    #[error(
        "cannot reach the cairn API at {base} ({reason}). Is a node running with --api, or \
         `cairn devnet`? Point the CLI elsewhere with --api or CAIRN_API."
    )]
    Unreachable {
        /// The API's base URL.
        base: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The transfer broke off.
    #[error("the transfer broke off")]
    Transfer(#[source] io::Error),
    /// The HTTP exchange failed in some other way.
    #[error("talking to {base}")]
    Http {
        /// The API's base URL.
        base: String,
        /// Why.
        #[source]
        source: ureq::Error,
    },
    /// The answer is not what this client expects.
    #[error("the API's answer is not understood: {0}")]
    Protocol(String),
    /// The key given is not the file's owner's: only the owner can reclaim it.
    #[error("{file} belongs to owner {owner}, not to the key given")]
    NotOwner {
        /// The file.
        file: FileId,
        /// Its owner.
        owner: PublicKey,
    },
    /// The node proposed a certificate this client will not sign.
    #[error("not signing the node's certificate: {0}")]
    Certificate(String),
    /// Fewer bytes arrived than the node announced.
    #[error("the node sent {got} of {expected} bytes; the file is incomplete")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// A replica of the volume holds sequence `held_sequence` (at least the one
    /// published): the update lost to another writer, or was a replay.
    #[error(
        "someone else published sequence {held_sequence} of this volume; your update was not applied"
    )]
    RootConflict {
        /// The highest sequence a replica holds.
        held_sequence: u64,
    },
    /// The node served an older root record of the volume (or none) than this client
    /// has already seen: a rollback, refused.
    #[error(
        "the node served sequence {served:?} of volume {volume}, but this client has seen sequence {seen}; refusing to go back"
    )]
    RootRolledBack {
        /// The volume.
        volume: VolumeKey,
        /// The sequence served (`None`: the node said there is none).
        served: Option<u64>,
        /// The highest sequence this client has seen.
        seen: u64,
    },
}

/// What a put stored.
#[derive(Debug, Clone)]
pub struct PutOutcome {
    /// The file's reference.
    pub reference: Reference,
    /// The node's report of the upload.
    pub stored: PutAnswer,
    /// How many nodes keep the certificate.
    pub certificate_replicas: usize,
}

/// A blocking client of the API at one address.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
    /// The highest root sequence seen of each volume, shared by clones.
    seen_roots: Arc<Mutex<HashMap<VolumeKey, u64>>>,
}

impl ApiClient {
    /// A client of the API at `address` (`host:port` or `http://host:port`), sending
    /// `token` as `Authorization: Bearer` when given.
    pub fn new(address: &str, token: Option<String>) -> ApiClient {
        let base = if address.starts_with("http://") || address.starts_with("https://") {
            address.trim_end_matches('/').to_string()
        } else {
            format!("http://{address}")
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build();
        ApiClient {
            base,
            agent: config.into(),
            token,
            seen_roots: Arc::default(),
        }
    }

    /// The highest root sequence of `volume` this client has seen (verified from a
    /// node, or published by itself), if any.
    pub fn seen_root_sequence(&self, volume: &VolumeKey) -> Option<u64> {
        self.seen_roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(volume)
            .copied()
    }

    /// Refuses `served` if it is below the highest sequence of `volume` seen (`None`:
    /// the node said there is none); otherwise remembers it if it is the highest.
    fn check_root_sequence(
        &self,
        volume: &VolumeKey,
        served: Option<u64>,
    ) -> Result<(), ClientError> {
        let mut seen = self
            .seen_roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let highest = seen.get(volume).copied();
        if let Some(highest) = highest
            && served.is_none_or(|s| s < highest)
        {
            return Err(ClientError::RootRolledBack {
                volume: *volume,
                served,
                seen: highest,
            });
        }
        if let Some(sequence) = served {
            seen.insert(*volume, highest.map_or(sequence, |h| h.max(sequence)));
        }
        Ok(())
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorised<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn failed(&self, error: ureq::Error) -> ClientError {
        let unreachable = |reason: String| ClientError::Unreachable {
            base: self.base.clone(),
            reason,
        };
        match error {
            ureq::Error::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::AddrNotAvailable
                        | io::ErrorKind::TimedOut
                ) =>
            {
                unreachable(e.to_string())
            }
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                unreachable(error.to_string())
            }
            source => ClientError::Http {
                base: self.base.clone(),
                source,
            },
        }
    }

    /// Fails with the API's JSON error message unless the status is 2xx.
    fn check(mut response: Response<ureq::Body>) -> Result<Response<ureq::Body>, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    fn json<T: DeserializeOwned>(response: Response<ureq::Body>) -> Result<T, ClientError> {
        let mut response = Self::check(response)?;
        let text = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .authorised(self.agent.get(self.url(path)))
            .call()
            .map_err(|e| self.failed(e))?;
        Self::json(response)
    }

    /// Stores what `reader` yields as the file `name` of `owner` under `name_salt`
    /// (a new salt makes a new file), erasure-coded with `params` (`None`: the node's
    /// default).
    pub fn put(
        &self,
        reader: &mut dyn Read,
        name: &str,
        name_salt: u64,
        owner: &KeyPair,
        params: Option<ErasureParams>,
        now: u64,
    ) -> Result<PutOutcome, ClientError> {
        let grant = UploadGrant::new(
            name.as_bytes(),
            name_salt,
            owner.public_key(),
            now,
            GRANT_LIFETIME_SECS,
        );
        let signed_grant = Signed::sign(owner, grant.clone())
            .and_then(|s| s.to_bytes())
            .map_err(|e| ClientError::Certificate(e.to_string()))?;
        let mut counted = CountingReader {
            inner: reader,
            count: 0,
        };
        let url = match params {
            Some(params) => self.url(&format!("/v1/files?k={}&m={}", params.k(), params.m())),
            None => self.url("/v1/files"),
        };
        let response = self
            .authorised(self.agent.put(url))
            .header(GRANT_HEADER, encode_hex(&signed_grant))
            .content_type("application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut counted))
            .map_err(|e| self.failed(e))?;
        let stored: PutAnswer = Self::json(response)?;
        let certificate = check_proposed_certificate(&stored, &grant, counted.count)?;
        let signed = Signed::sign(owner, certificate)
            .and_then(|s| s.to_bytes())
            .map_err(|e| ClientError::Certificate(e.to_string()))?;
        let response = self
            .authorised(self.agent.post(self.url("/v1/certificates")))
            .content_type("application/octet-stream")
            .send(&signed[..])
            .map_err(|e| self.failed(e))?;
        let published: PublishAnswer = Self::json(response)?;
        let reference = published
            .reference
            .parse()
            .map_err(|e| ClientError::Protocol(format!("{e}")))?;
        Ok(PutOutcome {
            reference,
            stored,
            certificate_replicas: published.replicas,
        })
    }

    /// Streams the file `file` into `out`; returns its size. Fails (never silently
    /// short) if the node could not supply every verified byte.
    pub fn get(&self, file: &FileId, out: &mut dyn Write) -> Result<u64, ClientError> {
        self.get_with(file, out, &mut |_| {})
    }

    /// [`Self::get`], calling `progress(total)` once the size is known.
    pub fn get_with(
        &self,
        file: &FileId,
        out: &mut dyn Write,
        announce: &mut dyn FnMut(Option<u64>),
    ) -> Result<u64, ClientError> {
        let path = format!("/v1/files/{}", Reference::File(*file));
        let response = self
            .authorised(self.agent.get(self.url(&path)))
            .call()
            .map_err(|e| self.failed(e))?;
        let response = Self::check(response)?;
        let expected = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        announce(expected);
        let mut body = response.into_body().into_reader();
        let got = io::copy(&mut body, out).map_err(ClientError::Transfer)?;
        match expected {
            Some(expected) if expected != got => Err(ClientError::Short { got, expected }),
            _ => Ok(got),
        }
    }

    /// Signs `RootRecord { volume: key's volume, sequence, root, time: now }` and
    /// publishes it. Fails with [`ClientError::RootConflict`] if a replica already
    /// holds this sequence (another record) or a higher one: the update was lost.
    pub fn publish_root(
        &self,
        key: &KeyPair,
        sequence: u64,
        root: FileId,
        now: u64,
    ) -> Result<RootPublished, ClientError> {
        let record = RootRecord {
            volume: key.public_key().volume_key(),
            sequence,
            root,
            time: now,
        };
        let signed = Signed::sign(key, record)
            .and_then(|s| s.to_bytes())
            .map_err(|e| ClientError::Certificate(e.to_string()))?;
        let mut response = self
            .authorised(self.agent.put(self.url("/v1/roots")))
            .content_type("application/octet-stream")
            .send(&signed[..])
            .map_err(|e| self.failed(e))?;
        if response.status().as_u16() == 409 {
            let text = response
                .body_mut()
                .with_config()
                .limit(1 << 20)
                .read_to_string()
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let conflict: RootConflictBody = serde_json::from_str(&text)
                .map_err(|e| ClientError::Protocol(format!("a 409 without held_sequence: {e}")))?;
            return Err(ClientError::RootConflict {
                held_sequence: conflict.held_sequence,
            });
        }
        let published: RootPublished = Self::json(response)?;
        // Our own record, signed here: a later read must not go below it.
        let volume = key.public_key().volume_key();
        if self
            .seen_root_sequence(&volume)
            .is_none_or(|seen| seen < sequence)
        {
            self.check_root_sequence(&volume, Some(sequence))?;
        }
        Ok(published)
    }

    /// The highest valid root record the volume's replicas hold (verified here too:
    /// signed by the volume's key, for this volume); `None` if the volume has never
    /// been published.
    pub fn get_root(&self, volume: &VolumeKey) -> Result<Option<RootRecord>, ClientError> {
        let path = format!("/v1/roots/{}", Reference::Volume(*volume));
        let Some(signed) =
            self.get_signed::<RootRecord, RootAnswer>(&path, "root record", |a| a.record)?
        else {
            self.check_root_sequence(volume, None)?;
            return Ok(None);
        };
        let record = signed.body;
        if record.volume != *volume {
            return Err(ClientError::Protocol(format!(
                "asked for the root of volume {volume}, got one of {}",
                record.volume
            )));
        }
        self.check_root_sequence(volume, Some(record.sequence))?;
        Ok(Some(record))
    }

    /// A reader of bytes `[offset, offset + length)` of `file` (`length` `None`: to
    /// the end; both clamped to the file), and the file's whole size. The reader
    /// fails with an io error, never ends short silently, if the node cannot supply
    /// verified bytes.
    pub fn open_range(
        &self,
        file: &FileId,
        offset: u64,
        length: Option<u64>,
    ) -> Result<RangeReader, ClientError> {
        let mut path = format!("/v1/files/{}?offset={offset}", Reference::File(*file));
        if let Some(length) = length {
            path.push_str(&format!("&length={length}"));
        }
        let response = self
            .authorised(self.agent.get(self.url(&path)))
            .call()
            .map_err(|e| self.failed(e))?;
        let response = Self::check(response)?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ClientError::Protocol(format!("the answer has no {name} header")))
        };
        let len = header("content-length")?;
        let file_size = header(FILE_SIZE_HEADER)?;
        Ok(RangeReader {
            body: Box::new(response.into_body().into_reader()),
            len,
            remaining: len,
            file_size,
        })
    }

    /// Describes a file.
    pub fn stat(&self, file: &FileId) -> Result<FileStatAnswer, ClientError> {
        self.get_json(&format!("/v1/files/{}/stat", Reference::File(*file)))
    }

    /// GETs `path`, whose answer `A` carries a signed `C` in hex (`hex_of` takes it
    /// out), and verifies the signature; `None` on 404. `what` names it in errors.
    fn get_signed<C: Certificate, A: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        hex_of: impl FnOnce(A) -> String,
    ) -> Result<Option<Signed<C>>, ClientError> {
        let response = self
            .authorised(self.agent.get(self.url(path)))
            .call()
            .map_err(|e| self.failed(e))?;
        if response.status().as_u16() == 404 {
            return Ok(None);
        }
        let bytes = decode_hex(&hex_of(Self::json(response)?))
            .ok_or_else(|| ClientError::Protocol(format!("the {what} is not hex")))?;
        let signed = Signed::<C>::from_bytes(&bytes)
            .map_err(|e| ClientError::Protocol(format!("the {what}: {e}")))?;
        signed
            .verify()
            .map_err(|e| ClientError::Protocol(format!("the node served a bad {what}: {e}")))?;
        Ok(Some(signed))
    }

    /// The file's signed certificate, verified (`None`: no keeper holds one).
    pub fn certificate(
        &self,
        file: &FileId,
    ) -> Result<Option<Signed<FileCertificate>>, ClientError> {
        let path = format!("/v1/files/{}/certificate", Reference::File(*file));
        let Some(signed) =
            self.get_signed::<FileCertificate, CertificateAnswer>(&path, "certificate", |a| {
                a.certificate
            })?
        else {
            return Ok(None);
        };
        let certificate = &signed.body;
        if certificate.file_id != *file {
            return Err(ClientError::Protocol(format!(
                "asked for the certificate of {file}, got one of {}",
                certificate.file_id
            )));
        }
        Ok(Some(signed))
    }

    /// Reclaims a file: the owner's key signs a reclaim made from the file's
    /// certificate (which says how the file id derives from the owner's key, so that
    /// the reclaim verifies on its own wherever it travels).
    pub fn remove(
        &self,
        file: &FileId,
        owner: &KeyPair,
        now: u64,
    ) -> Result<ReclaimReport, ClientError> {
        let certificate = self.certificate(file)?.ok_or_else(|| ClientError::Api {
            status: 404,
            message: format!(
                "no keeper holds a certificate of {}",
                Reference::File(*file)
            ),
        })?;
        if certificate.body.owner != owner.public_key() {
            return Err(ClientError::NotOwner {
                file: *file,
                owner: certificate.body.owner,
            });
        }
        let reclaim = ReclaimCertificate::of(&certificate.body, now);
        let signed = Signed::sign(owner, reclaim)
            .and_then(|s| s.to_bytes())
            .map_err(|e| ClientError::Certificate(e.to_string()))?;
        let path = format!("/v1/files/{}", Reference::File(*file));
        let response = self
            .authorised(self.agent.delete(self.url(&path)))
            .header(RECLAIM_HEADER, encode_hex(&signed))
            .call()
            .map_err(|e| self.failed(e))?;
        Self::json(response)
    }

    /// The node's status.
    pub fn status(&self) -> Result<StatusAnswer, ClientError> {
        self.get_json("/v1/status")
    }

    /// The node's status with what `owner` has stored on it
    /// ([`StatusAnswer::owner_usage`]).
    pub fn status_of(&self, owner: &PublicKey) -> Result<StatusAnswer, ClientError> {
        self.get_json(&format!("/v1/status?owner={owner}"))
    }

    /// The node's Prometheus metrics, as text.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let response = self
            .authorised(self.agent.get(self.url("/metrics")))
            .call()
            .map_err(|e| self.failed(e))?;
        Self::check(response)?
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// Bytes of a range of a file, as the node streams them ([`ApiClient::open_range`]).
/// Ends only after exactly [`RangeReader::len`] bytes; a body that breaks off or ends
/// early is an io error ([`io::ErrorKind::UnexpectedEof`] when it just stops).
pub struct RangeReader {
    body: Box<dyn Read + Send>,
    len: u64,
    remaining: u64,
    file_size: u64,
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeReader")
            .field("len", &self.len)
            .field("remaining", &self.remaining)
            .field("file_size", &self.file_size)
            .finish()
    }
}

impl RangeReader {
    /// The whole file's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// How many bytes the range holds (clamped to the file).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.body.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the node sent {} of {} bytes of the range",
                    self.len - self.remaining,
                    self.len
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    count: u64,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// The node proposes the certificate; sign only what was asked for.
fn check_proposed_certificate(
    answer: &PutAnswer,
    grant: &UploadGrant,
    sent: u64,
) -> Result<FileCertificate, ClientError> {
    let refuse = |reason: String| ClientError::Certificate(reason);
    let bytes = decode_hex(&answer.certificate).ok_or_else(|| refuse("it is not hex".into()))?;
    let certificate: FileCertificate =
        postcard::from_bytes(&bytes).map_err(|e| refuse(format!("it does not decode: {e}")))?;
    if certificate.file_id != grant.file_id
        || certificate.owner != grant.owner
        || certificate.name_digest != grant.name_digest
        || certificate.name_salt != grant.name_salt
    {
        return Err(refuse("it is for another file or owner".into()));
    }
    if certificate.size != sent {
        return Err(refuse(format!(
            "it says {} bytes but {sent} were sent",
            certificate.size
        )));
    }
    Ok(certificate)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cairn_core::id::Id;

    #[test]
    fn a_lower_root_sequence_or_none_is_refused_once_a_higher_one_was_seen() {
        let client = ApiClient::new("127.0.0.1:9", None);
        let volume = VolumeKey(Id::hash(b"v"));
        let other = VolumeKey(Id::hash(b"w"));
        client.check_root_sequence(&volume, None).unwrap();
        client.check_root_sequence(&volume, Some(3)).unwrap();
        client.check_root_sequence(&volume, Some(3)).unwrap();
        client.check_root_sequence(&volume, Some(5)).unwrap();
        assert_eq!(client.seen_root_sequence(&volume), Some(5));
        // Clones share what was seen.
        let clone = client.clone();
        assert!(matches!(
            clone.check_root_sequence(&volume, Some(4)),
            Err(ClientError::RootRolledBack {
                served: Some(4),
                seen: 5,
                ..
            })
        ));
        assert!(matches!(
            client.check_root_sequence(&volume, None),
            Err(ClientError::RootRolledBack { served: None, .. })
        ));
        assert_eq!(
            client.seen_root_sequence(&volume),
            Some(5),
            "a refusal changes nothing"
        );
        // Another volume is its own.
        client.check_root_sequence(&other, Some(1)).unwrap();
    }
}
