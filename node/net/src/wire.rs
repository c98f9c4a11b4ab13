//! The bytes on a connection: length-prefixed frames, the handshake messages and the
//! frame enum that carries messages after the handshake.
//!
//! Everything here works on any `AsyncRead`/`AsyncWrite`, so tests can feed it byte
//! slices; the connection tasks in the parent module own the sockets. With the
//! `fuzzing` feature, [`fuzzing`] drives these decoders for the fuzz targets
//! (`node/fuzz-targets`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{NetError, Peer};
use cairn_core::crypto::{KeyPair, PublicKey};
use cairn_core::id::Difficulty;

/// The first bytes of every [`Hello`]: not a cairn node otherwise.
pub(super) const MAGIC: [u8; 5] = *b"cairn";
/// The protocol version this code speaks. A peer with another version is refused.
pub(super) const PROTOCOL_VERSION: u16 = 1;
/// Domain tag of the handshake signature (see [`proof_message`]).
pub(super) const HANDSHAKE_DOMAIN: &[u8] = b"cairn/handshake/v1";
/// The largest handshake frame: a [`Hello`] is under 100 bytes, a [`Proof`] 64.
pub(super) const MAX_HANDSHAKE_FRAME: usize = 512;
/// Bytes of the length prefix of a frame.
pub(super) const LENGTH_PREFIX: usize = 4;
/// How much of a large frame's body is allocated before its bytes arrive: a peer that
/// announces 24 MiB and sends nothing costs us this, not 24 MiB.
const BODY_CHUNK: usize = 64 * 1024;

/// What each side sends first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 5],
    /// [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The sender's node key; its id is `SHA-256(public_key)`.
    pub public_key: PublicKey,
    /// Fresh random bytes the other side must sign: a proof cannot be replayed.
    pub nonce: [u8; 32],
    /// The address the sender can be reached at (covered by its proof).
    pub advertised: SocketAddr,
}

/// What each side sends once it has the other's [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Proof {
    /// Signature over [`proof_message`], with [`HANDSHAKE_DOMAIN`].
    #[serde(with = "signature_bytes")]
    pub signature: [u8; 64],
}

/// serde has no impls for `[u8; 64]`; two 32-byte halves encode to the same 64 raw
/// bytes in postcard (fixed-size arrays carry no length).
mod signature_bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        let mut halves = [[0u8; 32]; 2];
        halves[0].copy_from_slice(&bytes[..32]);
        halves[1].copy_from_slice(&bytes[32..]);
        halves.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let halves = <[[u8; 32]; 2]>::deserialize(d)?;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&halves[0]);
        bytes[32..].copy_from_slice(&halves[1]);
        Ok(bytes)
    }
}

/// The frames after the handshake. Variants are appended, never reordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Frame<M> {
    /// A message that expects no answer.
    OneWay(M),
    /// A request; the answer comes back as a `Response` with the same `id`.
    Request {
        /// Chosen by the requester, unique among its outstanding requests on this
        /// connection.
        id: u64,
        /// The request.
        msg: M,
    },
    /// The answer to request `id`: a message, or why there is none.
    Response {
        /// The request answered.
        id: u64,
        /// The answer, or the responder's reason for not giving one.
        result: Result<M, String>,
    },
}

/// The bytes `signer` signs to prove its key to the side that sent `peer_nonce`:
/// `peer_nonce ‖ signer's public key ‖ postcard(signer's advertised address)`.
pub(super) fn proof_message(
    peer_nonce: &[u8; 32],
    signer: &PublicKey,
    signer_advertised: &SocketAddr,
) -> Vec<u8> {
    // A SocketAddr always encodes; were it not to, the signature would cover no
    // address and the other side's check would fail, refusing the connection.
    let address = postcard::to_stdvec(signer_advertised).unwrap_or_default();
    let mut out = Vec::with_capacity(32 + 32 + address.len());
    out.extend_from_slice(peer_nonce);
    out.extend_from_slice(&signer.0);
    out.extend_from_slice(&address);
    out
}

/// Encodes `value` as one frame: 4-byte big-endian length, then postcard.
pub(super) fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, NetError> {
    let mut out = postcard::to_extend(value, vec![0u8; LENGTH_PREFIX])
        .map_err(|e| NetError::Malformed(format!("cannot encode a frame: {e}")))?;
    let len = out.len() - LENGTH_PREFIX;
    let prefix = match u32::try_from(len) {
        Ok(prefix) if len <= max => prefix,
        _ => return Err(NetError::FrameTooLarge { len, max }),
    };
    out[..LENGTH_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Decodes the body of one frame. Every byte must be used: trailing bytes are as
/// malformed as missing ones.
pub(super) fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, NetError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(NetError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(NetError::Malformed(e.to_string())),
    }
}

/// Why [`read_frame`] returned no frame.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The announced length is over the limit; nothing was allocated for it.
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        got: usize,
    },
    /// The body did not arrive within the body timeout.
    Stalled,
    /// The socket failed.
    Io(std::io::Error),
}

/// Reads one frame body. `Ok(None)` is a clean end of stream between frames.
///
/// Waiting for a frame to begin is not bounded here (the connection's idle timer
/// bounds it); once its length has arrived, the body must follow within
/// `body_timeout`. A length over `max` is refused before anything is allocated, and
/// the body buffer grows as bytes arrive rather than being allocated up front.
pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    body_timeout: Duration,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    let mut got = 0;
    // Bounded: each pass reads at least one byte of the four, or returns.
    while got < LENGTH_PREFIX {
        let n = reader
            .read(&mut prefix[got..])
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(ReadError::Truncated { got })
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(ReadError::TooLarge { len, max });
    }
    let mut body = Vec::with_capacity(len.min(BODY_CHUNK));
    let mut limited = (&mut *reader).take(len as u64);
    match tokio::time::timeout(body_timeout, limited.read_to_end(&mut body)).await {
        Err(_) => Err(ReadError::Stalled),
        Ok(Err(e)) => Err(ReadError::Io(e)),
        Ok(Ok(n)) if n < len => Err(ReadError::Truncated {
            got: LENGTH_PREFIX + n,
        }),
        Ok(Ok(_)) => Ok(Some(body)),
    }
}

/// Runs the symmetric handshake on a fresh connection; the caller bounds it with the
/// handshake timeout. Returns the proven peer: its id is derived from the key that
/// signed our nonce, its address is the one it advertised (and signed). A peer whose
/// key does not solve the puzzle at `difficulty` is refused as soon as its hello
/// arrives, before we sign anything for it.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    me: &KeyPair,
    advertised: SocketAddr,
    difficulty: Difficulty,
) -> Result<Peer, NetError> {
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let my_key = me.public_key();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        public_key: my_key,
        nonce,
        advertised,
    };
    write_all(stream, &encode_frame(&hello, MAX_HANDSHAKE_FRAME)?).await?;
    let theirs: Hello = read_handshake_frame(stream).await?;
    if theirs.magic != MAGIC {
        return Err(NetError::Handshake(format!(
            "wrong magic {:02x?} (not a cairn node)",
            theirs.magic
        )));
    }
    if theirs.version != PROTOCOL_VERSION {
        return Err(NetError::Handshake(format!(
            "protocol version {} (we speak {PROTOCOL_VERSION})",
            theirs.version
        )));
    }
    if theirs.public_key == my_key {
        return Err(NetError::SelfConnect);
    }
    theirs.public_key.check_difficulty(difficulty)?;
    let signature = me.sign_domain(
        HANDSHAKE_DOMAIN,
        &proof_message(&theirs.nonce, &my_key, &advertised),
    );
    write_all(
        stream,
        &encode_frame(&Proof { signature }, MAX_HANDSHAKE_FRAME)?,
    )
    .await?;
    let proof: Proof = read_handshake_frame(stream).await?;
    theirs
        .public_key
        .verify_domain(
            HANDSHAKE_DOMAIN,
            &proof_message(&nonce, &theirs.public_key, &theirs.advertised),
            &proof.signature,
        )
        .map_err(|e| NetError::Handshake(format!("bad proof: {e}")))?;
    Ok(Peer {
        id: theirs.public_key.node_id(),
        addr: theirs.advertised,
    })
}

async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<(), NetError> {
    writer.write_all(bytes).await?;
    writer.flush().await?;
    Ok(())
}

async fn read_handshake_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<T, NetError> {
    // The caller's handshake timeout bounds the whole exchange, body included.
    match read_frame(reader, MAX_HANDSHAKE_FRAME, Duration::MAX).await {
        Ok(Some(body)) => decode_body(&body)
            .map_err(|e| NetError::Handshake(format!("malformed handshake message: {e}"))),
        Ok(None) => Err(NetError::Handshake("closed during the handshake".into())),
        Err(ReadError::TooLarge { len, max }) => Err(NetError::Handshake(format!(
            "handshake frame of {len} bytes (at most {max})"
        ))),
        Err(ReadError::Truncated { got }) => Err(NetError::Handshake(format!(
            "closed inside a handshake frame after {got} bytes"
        ))),
        Err(ReadError::Stalled) => Err(NetError::Handshake("stalled".into())),
        Err(ReadError::Io(e)) => Err(NetError::Io(e)),
    }
}

/// The byte decoders of this module, driven the way a connection drives them, for the
/// fuzz targets (`node/fuzz-targets`, feature `fuzzing`). A frame that decodes is
/// re-encoded, and the check panics if that does not give the same value back: the
/// panic is the fuzzer's finding.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use std::fmt::Debug;
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::{
        Frame, HANDSHAKE_DOMAIN, Hello, LENGTH_PREFIX, MAGIC, MAX_HANDSHAKE_FRAME,
        PROTOCOL_VERSION, Proof, decode_body, encode_frame, proof_message, read_frame,
    };
    use cairn_core::crypto::KeyPair;

    /// What [`read_frames`] or [`read_handshake`] made of a stream.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct StreamRead {
        /// Frames that were read and decoded.
        pub decoded: usize,
        /// Whether the stream ended cleanly between frames (otherwise it was refused:
        /// a frame over the limit, truncated, or malformed).
        pub clean_end: bool,
    }

    /// Reads `stream` as a connection's reader does after the handshake: frames of at
    /// most `max` bytes, each decoded as a `Frame<M>`, until the stream ends or a frame
    /// is refused (the connection would be closed there).
    pub fn read_frames<M>(stream: &[u8], max: usize) -> StreamRead
    where
        M: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        read_stream(stream, max, |_, body| decoded_round_trip::<Frame<M>>(body))
    }

    /// Reads `stream` as the handshake does: a [`Hello`], then a [`Proof`], each in a
    /// frame of at most [`MAX_HANDSHAKE_FRAME`] bytes, then frames as [`read_frames`]
    /// reads them (with the largest frame `max`).
    pub fn read_handshake<M>(stream: &[u8], max: usize) -> StreamRead
    where
        M: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let mut read = StreamRead::default();
        let mut rest = stream;
        for step in 0..2 {
            let Some((body, after)) = split_frame(rest, MAX_HANDSHAKE_FRAME) else {
                read.clean_end = rest.is_empty();
                return read;
            };
            let decoded = if step == 0 {
                decoded_round_trip::<Hello>(&body)
            } else {
                decoded_round_trip::<Proof>(&body)
            };
            if !decoded {
                return read;
            }
            read.decoded += 1;
            rest = after;
        }
        let frames = read_frames::<M>(rest, max);
        StreamRead {
            decoded: read.decoded + frames.decoded,
            clean_end: frames.clean_end,
        }
    }

    /// A whole frame (length prefix included) of a one-way message: a seed.
    pub fn one_way_frame<M: Serialize>(msg: M) -> Option<Vec<u8>> {
        encode_frame(&Frame::OneWay(msg), usize::MAX).ok()
    }

    /// A whole frame of request `id`: a seed.
    pub fn request_frame<M: Serialize>(id: u64, msg: M) -> Option<Vec<u8>> {
        encode_frame(&Frame::Request { id, msg }, usize::MAX).ok()
    }

    /// A whole frame of the answer to request `id`: a seed.
    pub fn response_frame<M: Serialize>(id: u64, result: Result<M, String>) -> Option<Vec<u8>> {
        encode_frame(&Frame::Response { id, result }, usize::MAX).ok()
    }

    /// The two handshake frames `key` sends, a [`Hello`] and its [`Proof`] for
    /// `peer_nonce`: a seed.
    pub fn handshake_frames(
        key: &KeyPair,
        nonce: [u8; 32],
        advertised: SocketAddr,
        peer_nonce: &[u8; 32],
    ) -> Option<Vec<u8>> {
        let public_key = key.public_key();
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            public_key,
            nonce,
            advertised,
        };
        let signature = key.sign_domain(
            HANDSHAKE_DOMAIN,
            &proof_message(peer_nonce, &public_key, &advertised),
        );
        let mut out = encode_frame(&hello, MAX_HANDSHAKE_FRAME).ok()?;
        out.extend(encode_frame(&Proof { signature }, MAX_HANDSHAKE_FRAME).ok()?);
        Some(out)
    }

    /// Reads frames off `stream` with [`read_frame`] and hands each body to `decode`,
    /// until the stream ends, a frame is refused, or `decode` says it is malformed.
    fn read_stream(
        stream: &[u8],
        max: usize,
        mut decode: impl FnMut(usize, &[u8]) -> bool,
    ) -> StreamRead {
        let mut read = StreamRead::default();
        let mut rest = stream;
        // Bounded: every frame read consumes at least its length prefix.
        loop {
            let Some((body, after)) = split_frame(rest, max) else {
                read.clean_end = rest.is_empty();
                return read;
            };
            if !decode(read.decoded, &body) {
                return read;
            }
            read.decoded += 1;
            rest = after;
        }
    }

    /// One frame off the front of `stream`, read by [`read_frame`] (the decoder a
    /// connection uses), and what follows it; `None` at the end or when it is refused.
    fn split_frame(stream: &[u8], max: usize) -> Option<(Vec<u8>, &[u8])> {
        let mut reader = stream;
        let body = block_on(read_frame(&mut reader, max, Duration::from_secs(3600)))?;
        match body {
            Ok(Some(body)) => Some((body, reader)),
            Ok(None) | Err(_) => None,
        }
    }

    /// Decodes `body` as a `T` the way a connection does; where it decodes, its
    /// re-encoding must decode to the same value and be no longer than `body`, so an
    /// answer built from it fits where it came from.
    fn decoded_round_trip<T>(body: &[u8]) -> bool
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let Ok(value) = decode_body::<T>(body) else {
            return false;
        };
        let encoded = match encode_frame(&value, usize::MAX) {
            Ok(encoded) => encoded,
            Err(e) => panic!("a decoded frame does not encode again: {e}"),
        };
        let again = &encoded[LENGTH_PREFIX..];
        assert!(
            again.len() <= body.len(),
            "re-encoding grew a frame from {} to {} bytes",
            body.len(),
            again.len()
        );
        match decode_body::<T>(again) {
            Ok(decoded) => assert_eq!(decoded, value, "a re-encoded frame decodes differently"),
            Err(e) => panic!("a re-encoded frame does not decode: {e}"),
        }
        true
    }

    /// Runs `future` on this thread's current-thread runtime (timers enabled, as
    /// [`read_frame`]'s body timeout needs); `None` if no runtime could be built.
    fn block_on<F: Future>(future: F) -> Option<F::Output> {
        thread_local! {
            static RUNTIME: Option<tokio::runtime::Runtime> =
                tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .ok();
        }
        RUNTIME.with(|runtime| runtime.as_ref().map(|r| r.block_on(future)))
    }
}
