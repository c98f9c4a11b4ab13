//! The HTTP server of a node's local API: what the `cairn` CLI and the FUSE mount talk
//! to (through [`cairn_api::client`]). It runs the client pipeline on the node's
//! behalf, over the network.
//!
//! Owns: the routes, their errors ([`ApiError`]), [`ApiServer`] and [`serve`]. The JSON
//! shapes, the header names and the hex form signed values travel in are
//! [`cairn_api`]'s.
//!
//! May use: the node ([`crate::Node`], its gateway), [`cairn_pipeline`], [`cairn_api`],
//! [`cairn_core`], `axum`, `tokio`.
//!
//! # Keys stay with the user
//! The node holds no owner key. A put is two requests: `PUT /v1/files` carries the
//! owner's signed upload grant (header `x-cairn-grant`, hex) and streams the bytes;
//! the node stores every block and answers with the unsigned certificate body; the
//! client checks and signs it and sends it to `POST /v1/certificates`, which makes the
//! file readable. `DELETE` carries an owner-signed reclaim (`x-cairn-reclaim`).
//!
//! | route | what |
//! |---|---|
//! | `PUT /v1/files?k=&m=&segment_size=` | store a stream; answers the certificate to sign |
//! | `POST /v1/certificates` | publish a signed certificate; answers the reference |
//! | `GET /v1/files/{ref}?offset=&length=` | the file's bytes, every block verified (Content-Length set); with `offset` (and optional `length`, default to the end) only that range, clamped to the file (an offset at or past the end answers an empty body); header `x-cairn-file-size` is the whole file's size |
//! | `GET /v1/files/{ref}/stat` | certificate, blocks, who holds which fragment |
//! | `GET /v1/files/{ref}/certificate` | `{"certificate": hex of the signed certificate}` (what a reclaim is made from); 404 if none |
//! | `DELETE /v1/files/{ref}` | reclaim (owner-signed) |
//! | `PUT /v1/roots` | publish a signed root record (body: `Signed<RootRecord>::to_bytes()`); answers `{"replicas", "sequence"}`; 409 `{"error", "held_sequence"}` when a replica holds that sequence or a higher one (a lost update) |
//! | `GET /v1/roots/{cairn:v:...}` | the highest valid root record the volume's replicas hold: `{"record": hex of the signed bytes, "sequence", "root": file id, "time"}`; 404 if none |
//! | `GET /v1/status?owner=` | node id, leaf set, storage, the per-owner quota; with `owner` (a public key, base32), what that owner has stored on this node |
//! | `GET /metrics` | Prometheus text |
//!
//! Errors are JSON `{"error": "..."}`: 400 malformed input (or put parameters over
//! the node's limit, which the message names), 401 missing token, 403 a signature that
//! is not the owner's (or the volume key's), 404 unknown file or volume, 408 a request
//! body that stalled, 409 a root record that lost to a higher (or rival) sequence, 413
//! a body over its size limit, 502 the network could not supply verified bytes, 503
//! (with `Retry-After`) too many puts at once, 507 the network cannot place the file
//! (with the reason).
//!
//! # Limits ([`ApiLimits`], in the node's configuration)
//! Every request body is read with an idle timeout: a body that sends nothing for
//! [`ApiLimits::body_idle_timeout`] fails (a put's blocking thread is given back). A
//! put's parameters are refused when one block's buffer (`n` fragments of
//! `ceil(segment / k)` bytes) would be over [`ApiLimits::max_block_bytes`] or one
//! fragment over the transport's frame limit; at most [`ApiLimits::max_concurrent_puts`]
//! puts run at once. Each refusal is counted (`cairn_api_*` in `/metrics`).

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::runtime::Handle;

use crate::gateway::Upload;
use crate::{GatewayError, NetworkFragments, Node, unix_now};
use cairn_api::{
    BlockAnswer, CertificateAnswer, ErrorBody, FILE_SIZE_HEADER, FileStatAnswer, GRANT_HEADER,
    OwnerUsage, PublishAnswer, PutAnswer, RECLAIM_HEADER, RootAnswer, RootConflictBody,
    RootPublished, StatusAnswer, decode_hex, encode_hex,
};
use cairn_core::crypto::{Certificate, FileCertificate, RootRecord, Signed, UploadGrant};
use cairn_core::erasure::ErasureParams;
use cairn_core::id::{FileId, Reference, VolumeKey};
use cairn_core::manifest::DEFAULT_SEGMENT_SIZE;
use cairn_pipeline::{
    BlockRetry, ByteRange, FileIdentity, GetOptions, GetTarget, PutError, PutOptions, put_unsigned,
};

/// An API error: an HTTP status and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// The message.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: status.as_u16(),
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    /// 503: the node is at a limit; the answer carries `Retry-After`.
    fn busy(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        }
        response
    }
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

impl From<GatewayError> for ApiError {
    fn from(error: GatewayError) -> ApiError {
        let status = match &error {
            GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::Placement(_) => StatusCode::INSUFFICIENT_STORAGE,
            GatewayError::BadReclaim(_) => StatusCode::FORBIDDEN,
            GatewayError::RootConflict { .. } => StatusCode::CONFLICT,
            GatewayError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(status, chain(&error))
    }
}

/// What one API client can make the node spend (part of the node's configuration,
/// [`crate::NodeConfig::api`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// A request body that sends nothing for this long fails (default 30 s).
    pub body_idle_timeout: Duration,
    /// Most bytes of one block's buffer in a put: `n` fragments of `ceil(segment / k)`
    /// bytes (default 64 MiB; a put holds its window of blocks in flight plus one).
    pub max_block_bytes: u64,
    /// Puts running at once; more are answered 503 (default 4).
    pub max_concurrent_puts: usize,
    /// Most bytes of a small body (a certificate, a root record; default 64 KiB).
    pub max_small_body: usize,
}

impl Default for ApiLimits {
    fn default() -> ApiLimits {
        ApiLimits {
            body_idle_timeout: Duration::from_secs(30),
            max_block_bytes: 64 << 20,
            max_concurrent_puts: 4,
            max_small_body: 64 << 10,
        }
    }
}

/// How long a client refused for too many puts is asked to wait, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// The refusals of the API, for `/metrics`.
#[derive(Debug, Default)]
struct ApiCounters {
    bodies_stalled: AtomicU64,
    params_refused: AtomicU64,
    puts_refused_busy: AtomicU64,
    bodies_too_large: AtomicU64,
}

/// Checks a put's parameters against the limits: one block's buffer (`n` fragments of
/// `ceil(segment / k)` bytes) at most `max_block_bytes`, and one fragment no larger
/// than `max_fragment_bytes` (what a frame can carry). The error says the limit.
pub fn check_put_params(
    params: ErasureParams,
    segment_size: u32,
    max_block_bytes: u64,
    max_fragment_bytes: u64,
) -> Result<(), String> {
    let fragment = params.fragment_len(segment_size as usize) as u64;
    let block = fragment.saturating_mul(u64::from(params.n()));
    let (k, m) = (params.k(), params.m());
    if block > max_block_bytes {
        return Err(format!(
            "k={k} m={m} segment_size={segment_size} needs {block} bytes per block ({} fragments of {fragment} bytes); this node allows at most {max_block_bytes} bytes per block",
            params.n()
        ));
    }
    if fragment > max_fragment_bytes {
        return Err(format!(
            "k={k} segment_size={segment_size} makes fragments of {fragment} bytes; a fragment may be at most {max_fragment_bytes} bytes (the transport's frame limit)"
        ));
    }
    Ok(())
}

/// Room in a frame kept for everything around a fragment's bytes.
const FRAME_OVERHEAD: u64 = 64 << 10;

/// How to serve the API.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Where to listen (127.0.0.1 by default).
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer <token>` when set; must be set to listen on
    /// anything but loopback.
    pub token: Option<String>,
}

/// A running API server: a task of its node (stopped with it), or stopped alone by
/// [`ApiServer::stop`] or its drop.
#[derive(Debug)]
pub struct ApiServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// A child of the node's token: cancelled with the node, or alone.
    stop: tokio_util::sync::CancellationToken,
}

impl ApiServer {
    /// Stops serving: no new connection is accepted, each open one ends after the
    /// request it is serving (within the node's shutdown patience when the node stops).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// Listening elsewhere than loopback needs a token.
    #[error(
        "the API may listen on {0} (not loopback) only with a token (--api-token or CAIRN_API_TOKEN)"
    )]
    NeedToken(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
}

#[derive(Clone)]
struct AppState {
    node: Node,
    token: Option<Arc<str>>,
    limits: ApiLimits,
    /// One permit per put running.
    puts: Arc<tokio::sync::Semaphore>,
    counters: Arc<ApiCounters>,
}

/// Starts serving the API of `node`.
pub async fn serve(node: Node, config: ApiConfig) -> Result<ApiServer, ApiStartError> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        return Err(ApiStartError::NeedToken(config.listen));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ApiStartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ApiStartError::Bind {
            addr: config.listen,
            source,
        })?;
    let stop = node.inner.tasks.token().child_token();
    let owner = node.clone();
    let limits = node.config().api.clone();
    let puts = Arc::new(tokio::sync::Semaphore::new(
        limits
            .max_concurrent_puts
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let state = AppState {
        node,
        token: config.token.map(Arc::from),
        limits,
        puts,
        counters: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/files", put(put_file))
        .route("/v1/certificates", post(post_certificate))
        .route("/v1/files/{reference}", get(get_file).delete(delete_file))
        .route("/v1/files/{reference}/stat", get(stat_file))
        .route("/v1/files/{reference}/certificate", get(get_certificate))
        .route("/v1/roots", put(put_root))
        .route("/v1/roots/{reference}", get(get_root))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    // Graceful: once stopped, the server waits for its connections (each spawned by
    // axum) to finish their requests, so the node's shutdown owns them too.
    let stopped = stop.clone().cancelled_owned();
    owner
        .inner
        .tasks
        .spawn_graceful("the API server", async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!("the API server stopped: {e}");
            }
        });
    tracing::info!(%addr, "API listening");
    Ok(ApiServer { addr, stop })
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_ref()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this API needs `Authorization: Bearer <token>` (set CAIRN_API_TOKEN)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn parse_file_reference(text: &str) -> Result<FileId, ApiError> {
    match Reference::from_str(text) {
        Ok(Reference::File(file)) => Ok(file),
        Ok(other) => Err(ApiError::bad_request(format!(
            "{text} is not a file reference ({other:?}); files are cairn:f:..."
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "{text:?} is not a cairn reference: {e}"
        ))),
    }
}

fn signed_header<T: cairn_core::crypto::Certificate>(
    headers: &HeaderMap,
    name: &str,
) -> Result<(Signed<T>, Vec<u8>), ApiError> {
    let text = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request(format!("the {name} header is missing")))?;
    let bytes = decode_hex(text)
        .ok_or_else(|| ApiError::bad_request(format!("the {name} header is not hex")))?;
    let signed = Signed::<T>::from_bytes(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the {name} header: {e}")))?;
    signed
        .verify()
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, format!("the {name} header: {e}")))?;
    Ok((signed, bytes))
}

/// Query of `PUT /v1/files`.
#[derive(Debug, Deserialize)]
pub struct PutQuery {
    /// Data fragments per block.
    pub k: Option<u16>,
    /// Parity fragments per block.
    pub m: Option<u16>,
    /// Bytes per block.
    pub segment_size: Option<u32>,
}

/// A blocking reader over the chunks of a request body, fed by an async task.
struct BodyReader {
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
    current: Bytes,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bounded: each pass takes a chunk or ends; empty chunks are skipped.
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// The next data chunk of `body` (`None` at its end), or an error if it broke off or
/// sent nothing for `idle` (a [`io::ErrorKind::TimedOut`] error, counted).
async fn next_chunk(
    body: &mut Body,
    idle: Duration,
    counters: &ApiCounters,
) -> Option<Result<Bytes, io::Error>> {
    // Bounded: each pass takes a frame within `idle`, or ends.
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                counters.bodies_stalled.fetch_add(1, Ordering::Relaxed);
                return Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the request body sent nothing for {idle:?} (the API's body idle timeout)"
                    ),
                )));
            }
            Ok(None) => return None,
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => return Some(Ok(data)),
                Err(_) => continue,
            },
            Ok(Some(Err(e))) => {
                return Some(Err(io::Error::other(format!("the upload broke off: {e}"))));
            }
        }
    }
}

/// Reads a small body whole: at most `state.limits.max_small_body` bytes (413 past
/// it), each chunk within the idle timeout (408 otherwise).
async fn small_body(state: &AppState, mut body: Body) -> Result<Vec<u8>, ApiError> {
    let max = state.limits.max_small_body;
    let mut bytes = Vec::new();
    while let Some(chunk) =
        next_chunk(&mut body, state.limits.body_idle_timeout, &state.counters).await
    {
        let chunk = chunk.map_err(body_error)?;
        if bytes.len().saturating_add(chunk.len()) > max {
            state
                .counters
                .bodies_too_large
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {max} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn body_error(error: io::Error) -> ApiError {
    let status = if error.kind() == io::ErrorKind::TimedOut {
        StatusCode::REQUEST_TIMEOUT
    } else {
        StatusCode::BAD_REQUEST
    };
    ApiError::new(status, error.to_string())
}

/// Feeds `body` into a bounded channel read by a [`BodyReader`] on a blocking thread (a
/// few chunks in flight: the upload waits for the pipeline, never buffers the file).
/// A body that sends nothing for `idle` ends the reader with an error.
fn body_reader(mut body: Body, idle: Duration, counters: Arc<ApiCounters>) -> BodyReader {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    // Detached, and bounded by its request: it ends with the body, or when the reader
    // (the request's pipeline) is gone.
    tokio::spawn(async move {
        loop {
            let Some(item) = next_chunk(&mut body, idle, &counters).await else {
                break;
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                break;
            }
        }
    });
    BodyReader {
        chunks: rx,
        current: Bytes::new(),
    }
}

async fn put_file(
    State(state): State<AppState>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::Json<PutAnswer>, ApiError> {
    let (grant, grant_bytes) = signed_header::<UploadGrant>(&headers, GRANT_HEADER)?;
    let now = unix_now();
    grant
        .body
        .check_time(now)
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, format!("the upload grant: {e}")))?;
    let default = state.node.config().default_params;
    let k = query.k.unwrap_or(default.k());
    let m = query.m.unwrap_or(default.m());
    let params = ErasureParams::new(k, m)
        .map_err(|e| ApiError::bad_request(format!("erasure parameters k={k} m={m}: {e}")))?;
    let mut options = PutOptions::new(params, now);
    options.segment_size = query.segment_size.unwrap_or(DEFAULT_SEGMENT_SIZE);
    let max_fragment =
        (state.node.config().net.max_frame_bytes as u64).saturating_sub(FRAME_OVERHEAD);
    if let Err(why) = check_put_params(
        params,
        options.segment_size,
        state.limits.max_block_bytes,
        max_fragment,
    ) {
        state
            .counters
            .params_refused
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::bad_request(why));
    }
    // Held by the blocking task, so a client that goes away does not free it early.
    let Ok(running) = Arc::clone(&state.puts).try_acquire_owned() else {
        state
            .counters
            .puts_refused_busy
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::busy(format!(
            "{} puts are running on this node (its limit); try again shortly",
            state.limits.max_concurrent_puts
        )));
    };
    options.name_salt = grant.body.name_salt;
    let identity = FileIdentity::from(&grant.body);
    let upload = Upload {
        grant: Arc::new(grant_bytes),
        file: grant.body.file_id,
    };
    let store = NetworkFragments::new(state.node.clone(), Handle::current(), Some(upload));
    let reader = body_reader(
        body,
        state.limits.body_idle_timeout,
        Arc::clone(&state.counters),
    );
    let unsigned = tokio::task::spawn_blocking(move || {
        let _running = running;
        put_unsigned(reader, &identity, &options, &store)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(put_error)?;
    state
        .node
        .counters()
        .files_put
        .fetch_add(1, Ordering::Relaxed);
    let certificate = postcard::to_stdvec(&unsigned.certificate)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(PutAnswer {
        certificate: encode_hex(&certificate),
        file_id: unsigned.certificate.file_id.to_string(),
        size: unsigned.certificate.size,
        blocks: unsigned.manifest.blocks.len() as u64,
        k: unsigned.certificate.k,
        m: unsigned.certificate.m,
        fragments_stored: unsigned.fragments_stored,
        diverted_blocks: unsigned.diverted_blocks,
    }))
}

fn put_error(error: PutError) -> ApiError {
    let status = match &error {
        PutError::CannotPlace { .. } => StatusCode::INSUFFICIENT_STORAGE,
        PutError::SegmentSize { .. } | PutError::Params(_) | PutError::FileTooLarge { .. } => {
            StatusCode::BAD_REQUEST
        }
        PutError::Read { source, .. } if source.kind() == io::ErrorKind::TimedOut => {
            StatusCode::REQUEST_TIMEOUT
        }
        PutError::Read { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, chain(&error))
}

async fn post_certificate(
    State(state): State<AppState>,
    body: Body,
) -> Result<axum::Json<PublishAnswer>, ApiError> {
    let body = small_body(&state, body).await?;
    let signed = Signed::<FileCertificate>::from_bytes(&body)
        .map_err(|e| ApiError::bad_request(format!("the certificate: {e}")))?;
    signed
        .verify()
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, format!("the certificate: {e}")))?;
    let replicas = state.node.publish_certificate(body).await?;
    Ok(axum::Json(PublishAnswer {
        reference: Reference::File(signed.body.file_id).to_string(),
        replicas,
    }))
}

/// A blocking writer into a response body channel.
struct BodyWriter {
    sender: Option<http_body_util::channel::Sender<Bytes, io::Error>>,
    runtime: Handle,
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(sender) = self.sender.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "response closed"));
        };
        self.runtime
            .block_on(sender.send_data(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Query of `GET /v1/files/{ref}`: an optional byte range.
#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    /// The first byte wanted (default 0).
    pub offset: Option<u64>,
    /// How many bytes (default: to the end).
    pub length: Option<u64>,
}

async fn get_file(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    Query(range): Query<RangeQuery>,
) -> Result<Response, ApiError> {
    let file = parse_file_reference(&reference)?;
    let node = state.node.clone();
    let certificate = node.find_certificate(file).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no file {reference} is stored in this network (no node has its certificate)"),
        )
    })?;
    let now = unix_now();
    certificate
        .body
        .check_time(now)
        .map_err(|e| ApiError::new(StatusCode::GONE, format!("{reference}: {e}")))?;
    let size = certificate.body.size;
    let range = ByteRange {
        offset: range.offset.unwrap_or(0),
        length: range.length,
    };
    let (start, end) = range.clamp(size);
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(FILE_SIZE_HEADER, size);
    if start == end {
        return response
            .body(Body::empty())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    }
    // Under churn a block is often out of reach for a moment (a holder restarting, a
    // repair under way): the reader waits a few seconds rather than fail.
    let options = GetOptions::new(now)
        .with_range(range)
        .with_retry(BlockRetry::NETWORK);
    let (sender, channel) = http_body_util::channel::Channel::<Bytes, io::Error>::new(2);
    let runtime = Handle::current();
    let store = NetworkFragments::new(node.clone(), runtime.clone(), None);
    tokio::task::spawn_blocking(move || {
        let mut writer = BodyWriter {
            sender: Some(sender),
            runtime,
        };
        let result = cairn_pipeline::get(
            GetTarget::Certificate(&certificate),
            &mut writer,
            &store,
            &options,
        );
        match result {
            Ok(_) => {
                node.counters().files_got.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(%file, "get failed mid-stream: {}", chain(&error));
                if let Some(sender) = writer.sender.take() {
                    // Aborts the response: the client sees a short body, never wrong bytes.
                    sender.abort(io::Error::other(chain(&error)));
                }
            }
        }
    });
    response
        .body(Body::new(channel))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn put_root(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let body = small_body(&state, body).await?;
    let signed = Signed::<RootRecord>::from_bytes(&body)
        .map_err(|e| ApiError::bad_request(format!("the root record: {e}")))?;
    signed
        .verify()
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, format!("the root record: {e}")))?;
    match state.node.publish_root(body).await {
        Ok(published) => Ok(axum::Json(RootPublished {
            replicas: published.replicas,
            sequence: published.sequence,
        })
        .into_response()),
        Err(error @ GatewayError::RootConflict { held_sequence, .. }) => Ok((
            StatusCode::CONFLICT,
            axum::Json(RootConflictBody {
                error: chain(&error),
                held_sequence,
            }),
        )
            .into_response()),
        Err(error) => Err(error.into()),
    }
}

fn parse_volume_reference(text: &str) -> Result<VolumeKey, ApiError> {
    match Reference::from_str(text) {
        Ok(Reference::Volume(volume)) => Ok(volume),
        Ok(other) => Err(ApiError::bad_request(format!(
            "{text} is not a volume reference ({other:?}); volumes are cairn:v:..."
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "{text:?} is not a cairn reference: {e}"
        ))),
    }
}

async fn get_root(
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> Result<axum::Json<RootAnswer>, ApiError> {
    let volume = parse_volume_reference(&reference)?;
    let signed = state.node.find_root(volume).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no replica holds a root record of volume {reference}"),
        )
    })?;
    Ok(axum::Json(RootAnswer {
        record: signed_hex(&signed)?,
        sequence: signed.body.sequence,
        root: signed.body.root.to_string(),
        time: signed.body.time,
    }))
}

async fn get_certificate(
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> Result<axum::Json<CertificateAnswer>, ApiError> {
    let file = parse_file_reference(&reference)?;
    let signed = state.node.find_certificate(file).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no keeper holds a certificate of {reference}"),
        )
    })?;
    Ok(axum::Json(CertificateAnswer {
        certificate: signed_hex(&signed)?,
    }))
}

/// A signed record as the API answers it: the hex of its signed bytes.
fn signed_hex<C: Certificate>(signed: &Signed<C>) -> Result<String, ApiError> {
    signed
        .to_bytes()
        .map(|bytes| encode_hex(&bytes))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn stat_file(
    State(state): State<AppState>,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let file = parse_file_reference(&reference)?;
    let stat = state.node.stat_file(file).await?;
    Ok(axum::Json(FileStatAnswer::from(stat)).into_response())
}

async fn delete_file(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let file = parse_file_reference(&reference)?;
    let (reclaim, bytes) =
        signed_header::<cairn_core::crypto::ReclaimCertificate>(&headers, RECLAIM_HEADER)?;
    if reclaim.body.file_id != file {
        return Err(ApiError::bad_request(format!(
            "the reclaim is for file {}, not {reference}",
            reclaim.body.file_id
        )));
    }
    let report = state.node.reclaim_file(bytes).await?;
    Ok(axum::Json(report).into_response())
}

impl From<crate::gateway::FileStat> for FileStatAnswer {
    fn from(stat: crate::gateway::FileStat) -> FileStatAnswer {
        let ids = |ids: &[cairn_core::id::NodeId]| ids.iter().map(ToString::to_string).collect();
        FileStatAnswer {
            reference: Reference::File(stat.certificate.file_id).to_string(),
            size: stat.certificate.size,
            k: stat.certificate.k,
            m: stat.certificate.m,
            owner: stat.certificate.owner.to_string(),
            created_at: stat.certificate.created_at,
            expires_at: stat.certificate.expires_at,
            blocks: stat
                .blocks
                .iter()
                .map(|b| BlockAnswer {
                    block: b.block.clone(),
                    key: b.key.to_string(),
                    salt: b.salt,
                    live: b.live,
                    holders: b.fragments.iter().map(|f| ids(&f.holders)).collect(),
                    pointers: b.fragments.iter().map(|f| ids(&f.pointers)).collect(),
                })
                .collect(),
            unreadable_blocks: stat.unreadable_blocks,
            degraded_blocks: stat.degraded_blocks,
        }
    }
}

/// The query of `GET /v1/status`.
#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    /// An owner's public key (base32): answer its usage too.
    owner: Option<String>,
}

async fn status(
    State(state): State<AppState>,
    Query(query): Query<StatusQuery>,
) -> Result<axum::Json<StatusAnswer>, ApiError> {
    let node = &state.node;
    let view = node.overlay_view();
    let store = node.store();
    use cairn_store::NodeStore;
    let owner_usage = match query.owner {
        Some(text) => {
            let owner = cairn_core::id::OwnerKey::from_str(text.trim()).map_err(|e| {
                ApiError::bad_request(format!("owner {text:?} is not a public key: {e}"))
            })?;
            Some(OwnerUsage {
                owner: owner.to_string(),
                used: store.owner_usage(&owner),
            })
        }
        None => None,
    };
    Ok(axum::Json(StatusAnswer {
        id: node.id().to_string(),
        address: node.advertised().to_string(),
        joined: view.joined,
        leaf_left: view.left.iter().map(ToString::to_string).collect(),
        leaf_right: view.right.iter().map(ToString::to_string).collect(),
        known_nodes: node.known_addresses(),
        used: store.used(),
        capacity: store.capacity(),
        free: store.free(),
        network_nodes_estimate: cairn_overlay::estimate_network_size(
            &node.id().0,
            &view.left.iter().map(|id| id.0).collect::<Vec<_>>(),
            &view.right.iter().map(|id| id.0).collect::<Vec<_>>(),
            node.config().overlay.leaf_set_size / 2,
        ),
        owner_quota: node.config().past.owner_quota,
        owners: store.owners_charged(),
        owner_usage,
    }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    use cairn_store::NodeStore;
    let node = &state.node;
    let c = node.counters();
    let api = &state.counters;
    let net = node.net_stats();
    let store = node.store();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (gauge, counter) = ("gauge", "counter");
    // One metric a line: name, kind, help, value.
    #[rustfmt::skip]
    let rows = [
        ("store_used_bytes", gauge, "Bytes of fragments and metadata records stored.", store.used()),
        ("store_capacity_bytes", gauge, "Configured capacity.", store.capacity()),
        ("store_owners_charged", gauge, "Owners with bytes charged here.", store.owners_charged() as u64),
        ("owner_quota_refused_total", counter, "Stores refused: their owner was over its quota here.", load(&c.owner_quota_refused)),
        ("uncertified_fragments_collected_total", counter, "Fragments deleted: their upload was never certified.", load(&c.uncertified_fragments_collected)),
        ("uncertified_bytes_collected_total", counter, "Bytes freed by deleting fragments of uploads never certified.", load(&c.uncertified_bytes_collected)),
        ("uploads_certified_total", counter, "Uploads the collection pass found certified.", load(&c.uploads_certified)),
        ("fragments_stored_total", counter, "Fragments stored here.", load(&c.fragments_stored)),
        ("fragments_diverted_total", counter, "Fragments diverted elsewhere.", load(&c.fragments_diverted)),
        ("fragments_served_total", counter, "Fragments served.", load(&c.fragments_served)),
        ("requests_refused_total", counter, "PAST requests refused.", load(&c.requests_refused)),
        ("requests_unauthorised_total", counter, "PAST requests refused for want of authority in this node's view (not the coordinator, a target not responsible, a store at a key this node is not responsible for).", load(&c.requests_unauthorised)),
        ("orders_refused_busy_total", counter, "Maintenance orders refused because their sender already had the most allowed being checked.", load(&c.orders_refused_busy)),
        ("locates_routed_total", counter, "Locates routed through the overlay.", load(&c.locates)),
        ("locates_local_total", counter, "Locates answered from the leaf set.", load(&c.locates_local)),
        ("locates_failed_total", counter, "Locates that failed.", load(&c.locates_failed)),
        ("locate_answers_rejected_total", counter, "Locate answers dropped: not from the closest node they name, unsorted, duplicated, too long or implausible.", load(&c.locate_answers_rejected)),
        ("locate_answers_suspicious_total", counter, "Locate answers sparser than the local leaf set by more than the density threshold (or short), routed again through another first hop.", load(&c.locate_answers_suspicious)),
        ("locate_answers_unmatched_total", counter, "Locate answers whose tag matched no pending locate (late, duplicated or sprayed).", load(&c.locate_answers_unmatched)),
        ("files_put_total", counter, "Files put through this API.", load(&c.files_put)),
        ("files_got_total", counter, "Files read through this API.", load(&c.files_got)),
        ("certificates_replicated_total", counter, "Certificates given to keepers that lacked them.", load(&c.certificates_replicated)),
        ("roots_replicated_total", counter, "Root records given to keepers that lacked them or held an older one.", load(&c.roots_replicated)),
        ("placements_failed_total", counter, "Blocks not placed at a key.", load(&c.placements_failed)),
        ("repair_bytes_total", counter, "Bytes of repair traffic (fetched, regenerated, handed off).", load(&c.repair_bytes)),
        ("fragments_regenerated_total", counter, "Fragments regenerated as coordinator.", load(&c.fragments_regenerated)),
        ("fragments_handed_off_total", counter, "Handoffs coordinated that completed.", load(&c.fragments_handed_off)),
        ("fragments_released_total", counter, "Surplus copies dropped.", load(&c.fragments_released)),
        ("fragments_forgotten_total", counter, "Fragments of reclaimed files deleted by maintenance.", load(&c.fragments_forgotten)),
        ("keys_reconciled_total", counter, "Keys reconciled as coordinator.", load(&c.keys_reconciled)),
        ("scrub_bytes_total", counter, "Bytes re-read by the scrub.", load(&c.scrub_bytes)),
        ("scrub_corrupt_total", counter, "Corrupt fragments found by the scrub.", load(&c.scrub_corrupt)),
        ("net_bytes_sent_total", counter, "Bytes sent.", net.bytes_sent),
        ("net_bytes_received_total", counter, "Bytes received.", net.bytes_received),
        ("net_connections_opened_total", counter, "Connections opened.", net.connections_opened),
        ("net_connections_accepted_total", counter, "Connections accepted.", net.connections_accepted),
        ("net_handshakes_failed_total", counter, "Handshakes refused.", net.handshakes_failed),
        ("net_frames_refused_total", counter, "Malformed or oversized frames.", net.frames_refused),
        ("net_requests_timed_out_total", counter, "Requests that timed out.", net.requests_timed_out),
        ("net_inbound_connections", gauge, "Inbound connections held (handshaking ones included).", net.inbound_connections),
        ("net_inbound_refused_total", counter, "Inbound connections refused: the node's total was reached.", net.inbound_refused),
        ("net_inbound_refused_per_address_total", counter, "Inbound connections refused: their address (IPv4, IPv6 /64) had its share.", net.inbound_refused_per_address),
        ("net_handshakes_refused_total", counter, "Inbound connections refused: their address had its handshakes running.", net.handshakes_refused),
        ("net_inbound_replaced_total", counter, "Inbound connections replaced by a newer one from the same peer.", net.inbound_replaced),
        ("net_write_budget_exceeded_total", counter, "Connections dropped: their peer's unread answers went over the write budget.", net.write_budget_exceeded),
        ("net_handshakes_refused_key_difficulty_total", counter, "Handshakes refused: the peer's key does not solve the network's puzzle.", net.key_below_difficulty),
        ("address_book_entries", gauge, "Addresses known.", node.known_addresses() as u64),
        ("addresses_evicted_total", counter, "Addresses dropped from the full address book.", load(&c.addresses_evicted)),
        ("ids_below_difficulty_total", counter, "Gossiped ids ignored: they do not solve the network's key puzzle.", load(&c.ids_below_difficulty)),
        ("overlay_candidate_probes_dropped_total", counter, "Gossiped ids not probed because the overlay's candidate probes were at their cap.", load(&c.candidate_probes_dropped)),
        ("overlay_subnet_places_refused_total", counter, "Leaf-set and routing-table places refused because the node's subnet (IPv4 /24, IPv6 /48) held the most ids allowed.", load(&c.subnet_places_refused)),
        ("nudges_refused_total", counter, "Reconcile requests refused for naming too many keys.", load(&c.nudges_refused)),
        ("maintenance_keys_dropped_total", counter, "Keys nudged or listed that the full maintenance queue dropped.", node.maintenance_keys_dropped()),
        ("root_conflicts_unproven_total", counter, "Root keepers that claimed a conflict without a record proving it.", load(&c.root_conflicts_unproven)),
        ("api_puts_running", gauge, "Puts running now.", (state.limits.max_concurrent_puts.max(1) - state.puts.available_permits()) as u64),
        ("api_bodies_stalled_total", counter, "API request bodies that went idle past the timeout.", load(&api.bodies_stalled)),
        ("api_bodies_too_large_total", counter, "API request bodies over their size limit.", load(&api.bodies_too_large)),
        ("api_put_params_refused_total", counter, "Puts refused for parameters over the node's limits.", load(&api.params_refused)),
        ("api_puts_refused_busy_total", counter, "Puts refused (503) because the most puts at once were running.", load(&api.puts_refused_busy)),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            text,
            "# HELP cairn_{name} {help}\n# TYPE cairn_{name} {kind}\ncairn_{name} {value}"
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn put_parameters_whose_block_buffer_is_over_the_limit_are_refused_with_the_limit() {
        let limits = ApiLimits::default();
        let frame = 24 * MIB - FRAME_OVERHEAD;
        // The defaults pass.
        check_put_params(
            ErasureParams::DEFAULT,
            DEFAULT_SEGMENT_SIZE,
            limits.max_block_bytes,
            frame,
        )
        .unwrap();
        // k=1, m=255 with 64 MiB segments: 256 fragments of 64 MiB, 16 GiB a block.
        let params = ErasureParams::new(1, 255).unwrap();
        let why = check_put_params(params, 64 << 20, limits.max_block_bytes, frame).unwrap_err();
        assert!(why.contains("17179869184 bytes per block"), "{why}");
        assert!(why.contains(&format!("at most {}", 64 * MIB)), "{why}");
        // Within the block budget but a fragment a frame cannot carry.
        let params = ErasureParams::new(1, 1).unwrap();
        let why = check_put_params(params, 32 << 20, limits.max_block_bytes, frame).unwrap_err();
        assert!(why.contains("frame limit"), "{why}");
        // Exactly at the limit passes; one more byte of fragment does not.
        let params = ErasureParams::new(4, 4).unwrap();
        check_put_params(params, 4 << 20, 8 * MIB, frame).unwrap();
        check_put_params(params, (4 << 20) + 1, 8 * MIB, frame).unwrap_err();
    }
}
