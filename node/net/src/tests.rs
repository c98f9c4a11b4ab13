//! Tests of the transport on loopback: real sockets, `127.0.0.1:0`, short timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::wire::{self, Frame, Hello, Proof};
use super::*;
use cairn_core::id::Difficulty;
use cairn_core::rng::Rng;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Msg {
    Ping(u32),
    Pong(u32),
    Blob(Vec<u8>),
    Note(String),
    Bytes(#[serde(with = "cairn_core::codec::bytes")] Vec<u8>),
}

/// How long a test waits for something that should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(3);

fn config() -> NetConfig {
    NetConfig {
        connect_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        // The tests' keys are fixed bytes, which solve no puzzle.
        key_difficulty: Difficulty::NONE,
        ..NetConfig::default()
    }
}

fn key(seed: u8) -> Arc<KeyPair> {
    Arc::new(KeyPair::from_secret_bytes(&[seed; 32]))
}

async fn node(seed: u8, config: NetConfig) -> (Transport<Msg>, mpsc::Receiver<Incoming<Msg>>) {
    Transport::bind(key(seed), "127.0.0.1:0".parse().unwrap(), None, config)
        .await
        .unwrap()
}

/// Answers every request (a `Ping(n)` with `Pong(n)`, anything else with itself) and
/// passes one-way messages on to the returned receiver.
fn serve_echo(mut incoming: mpsc::Receiver<Incoming<Msg>>) -> mpsc::Receiver<(Peer, Msg)> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(item) = incoming.recv().await {
            match item {
                Incoming::Request { msg, reply, .. } => reply.reply(match msg {
                    Msg::Ping(n) => Msg::Pong(n),
                    other => other,
                }),
                Incoming::Message { from, msg } => {
                    let _ = tx.send((from, msg)).await;
                }
            }
        }
    });
    rx
}

/// `a` pings `b` with `n`, then `b` pings `a` with `n + 1`; each gets its pong.
async fn pings_both_ways(a: &Transport<Msg>, b: &Transport<Msg>, n: u32) {
    assert_eq!(
        a.request(&b.me(), Msg::Ping(n)).await.unwrap(),
        Msg::Pong(n)
    );
    assert_eq!(
        b.request(&a.me(), Msg::Ping(n + 1)).await.unwrap(),
        Msg::Pong(n + 1)
    );
}

/// Passes every request's responder to the test, unanswered.
fn serve_held(
    mut incoming: mpsc::Receiver<Incoming<Msg>>,
) -> mpsc::Receiver<(Msg, Responder<Msg>)> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(item) = incoming.recv().await {
            if let Incoming::Request { msg, reply, .. } = item {
                let _ = tx.send((msg, reply)).await;
            }
        }
    });
    rx
}

/// Waits until `check` holds, failing the test at a deadline.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

#[tokio::test]
async fn a_request_is_answered_and_a_one_way_message_arrives_with_its_proven_sender() {
    let (a, _a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let mut b_messages = serve_echo(b_in);

    assert_eq!(
        a.request(&b.me(), Msg::Ping(7)).await.unwrap(),
        Msg::Pong(7)
    );
    a.send(&b.me(), Msg::Note("hello".into())).await.unwrap();
    let (from, msg) = within("one-way message", b_messages.recv()).await.unwrap();
    assert_eq!(msg, Msg::Note("hello".into()));
    assert_eq!(
        from,
        a.me(),
        "the sender is known by its proven id and advertised addr"
    );
    assert_eq!(a.id(), key(1).public_key().node_id());

    let stats = a.stats();
    assert_eq!((stats.requests_sent, stats.requests_failed), (1, 0));
    assert_eq!(stats.in_flight, 0);
    assert!(
        stats.bytes_sent > 0 && stats.bytes_received > 0,
        "{stats:?}"
    );
}

#[tokio::test]
async fn an_eight_mib_message_round_trips() {
    let (a, _a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let _b_messages = serve_echo(b_in);
    let mut blob = vec![0u8; 8 * 1024 * 1024];
    Rng::new(8).fill_bytes(&mut blob);

    let answer = a.request(&b.me(), Msg::Blob(blob.clone())).await.unwrap();
    assert!(
        answer == Msg::Blob(blob),
        "the 8 MiB blob came back changed"
    );
    assert!(b.stats().bytes_received > 8 * 1024 * 1024);
}

#[tokio::test]
async fn a_message_over_the_frame_limit_is_refused_before_sending() {
    let small = NetConfig {
        max_frame_bytes: 1024,
        ..config()
    };
    let (a, _a_in) = node(1, small).await;
    let (b, b_in) = node(2, config()).await;
    let _b_messages = serve_echo(b_in);

    let error = a
        .request(&b.me(), Msg::Blob(vec![0; 2000]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, NetError::FrameTooLarge { max: 1024, .. }),
        "{error:?}"
    );
    // The connection was not harmed by the refusal.
    assert_eq!(
        a.request(&b.me(), Msg::Ping(1)).await.unwrap(),
        Msg::Pong(1)
    );
}

#[tokio::test]
async fn two_nodes_talk_both_ways_over_one_connection_shared_by_concurrent_requests() {
    let (a, a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let _a_messages = serve_echo(a_in);
    let _b_messages = serve_echo(b_in);

    pings_both_ways(&a, &b, 1).await;

    let mut requests = JoinSet::new();
    for n in 0..50u32 {
        let (from, to) = if n % 2 == 0 {
            (a.clone(), b.me())
        } else {
            (b.clone(), a.me())
        };
        requests.spawn(async move { (n, from.request(&to, Msg::Ping(n)).await) });
    }
    let mut answered = 0;
    while let Some(joined) = requests.join_next().await {
        let (n, answer) = joined.unwrap();
        assert_eq!(answer.unwrap(), Msg::Pong(n));
        answered += 1;
    }
    assert_eq!(answered, 50);

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.connections_opened, sa.connections_accepted),
        (1, 0),
        "{sa:?}"
    );
    assert_eq!(
        (sb.connections_opened, sb.connections_accepted),
        (0, 1),
        "{sb:?}"
    );
}

#[tokio::test]
async fn concurrent_first_requests_share_one_dial() {
    let (a, _a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let _b_messages = serve_echo(b_in);

    let mut requests = JoinSet::new();
    for n in 0..20u32 {
        let (a, to) = (a.clone(), b.me());
        requests.spawn(async move { a.request(&to, Msg::Ping(n)).await });
    }
    while let Some(joined) = requests.join_next().await {
        joined.unwrap().unwrap();
    }
    assert_eq!(a.stats().connections_opened, 1);
    assert_eq!(b.stats().connections_accepted, 1);
}

#[tokio::test]
async fn identify_proves_the_id_and_a_request_to_the_wrong_id_fails() {
    let (a, _a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let _b_messages = serve_echo(b_in);

    let proven = a.identify(b.local_addr()).await.unwrap();
    assert_eq!(proven, b.me());
    assert_eq!(
        a.request(&proven, Msg::Ping(3)).await.unwrap(),
        Msg::Pong(3)
    );
    assert_eq!(
        a.stats().connections_opened,
        1,
        "identify's connection is reused"
    );

    let impostor = Peer {
        id: key(9).public_key().node_id(),
        addr: b.local_addr(),
    };
    match a.request(&impostor, Msg::Ping(4)).await {
        Err(NetError::WrongPeer { expected, proven }) => {
            assert_eq!(expected, impostor.id);
            assert_eq!(proven, b.id());
        }
        other => panic!("expected WrongPeer, got {other:?}"),
    }
    assert_eq!(a.stats().handshakes_failed, 1);
}

#[tokio::test]
async fn connecting_to_ourselves_is_refused() {
    let (a, _a_in) = node(1, config()).await;
    assert!(matches!(
        a.identify(a.local_addr()).await,
        Err(NetError::SelfConnect)
    ));
    assert!(matches!(
        a.request(&a.me(), Msg::Ping(1)).await,
        Err(NetError::SelfConnect)
    ));
}

#[tokio::test]
async fn an_unspecified_listen_address_needs_an_advertised_one() {
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = Transport::<Msg>::bind(key(1), any, None, config()).await;
    assert!(matches!(refused, Err(NetError::NeedAdvertise { .. })));

    let advertised: SocketAddr = "192.0.2.7:4000".parse().unwrap();
    let (t, _in) = Transport::<Msg>::bind(key(1), any, Some(advertised), config())
        .await
        .unwrap();
    assert_eq!(t.advertised(), advertised);
    assert_ne!(t.local_addr().port(), 0, "port 0 is resolved");
}

/// Connects to `addr`, sends `bytes` and half-closes; returns once the server has
/// closed the connection (failing the test if it does not).
async fn send_raw_and_expect_close(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut sink = Vec::new();
    // The server's own hello may come first; then it must hang up.
    let read = within(
        "the server to close the connection",
        stream.read_to_end(&mut sink),
    )
    .await;
    // A reset is as good as a close.
    drop(read);
}

/// A hello as the raw clients send it.
fn hello(signer: &KeyPair, magic: [u8; 5]) -> Hello {
    Hello {
        magic,
        version: wire::PROTOCOL_VERSION,
        public_key: signer.public_key(),
        nonce: [7; 32],
        advertised: "127.0.0.1:9".parse().unwrap(),
    }
}

/// After each misbehaving raw client, the server has counted it, closed it, and still
/// answers a well-behaved transport.
async fn check_still_serves(good: &Transport<Msg>, server: &Transport<Msg>, n: u32) {
    assert_eq!(
        good.request(&server.me(), Msg::Ping(n)).await.unwrap(),
        Msg::Pong(n)
    );
}

#[tokio::test]
async fn misbehaving_raw_clients_are_closed_counted_and_harmless() {
    let (good, _good_in) = node(1, config()).await;
    let (server, server_in) = node(2, config()).await;
    let _messages = serve_echo(server_in);
    let addr = server.local_addr();
    let stranger = KeyPair::from_secret_bytes(&[5; 32]);

    // Garbage before any handshake.
    let mut garbage = vec![0u8; 64];
    Rng::new(1).fill_bytes(&mut garbage);
    let mut raw = TcpStream::connect(addr).await.unwrap();
    send_raw_and_expect_close(&mut raw, &garbage).await;
    eventually("garbage counted", || server.stats().handshakes_failed == 1).await;
    check_still_serves(&good, &server, 1).await;

    // A well-formed hello with the wrong magic.
    let frame = wire::encode_frame(&hello(&stranger, *b"nope!"), 512).unwrap();
    let mut raw = TcpStream::connect(addr).await.unwrap();
    send_raw_and_expect_close(&mut raw, &frame).await;
    eventually("wrong magic counted", || {
        server.stats().handshakes_failed == 2
    })
    .await;
    check_still_serves(&good, &server, 2).await;

    // A valid hello, then a proof whose signature is not the stranger's.
    let mut bytes = wire::encode_frame(&hello(&stranger, wire::MAGIC), 512).unwrap();
    let forged = Proof {
        signature: [0x42; 64],
    };
    bytes.extend(wire::encode_frame(&forged, 512).unwrap());
    let mut raw = TcpStream::connect(addr).await.unwrap();
    send_raw_and_expect_close(&mut raw, &bytes).await;
    eventually("bad signature counted", || {
        server.stats().handshakes_failed == 3
    })
    .await;
    check_still_serves(&good, &server, 3).await;

    // A proof made by another key than the one in the hello.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    let theirs = read_hello(&mut raw).await;
    let mut bytes = wire::encode_frame(&hello(&stranger, wire::MAGIC), 512).unwrap();
    let other = KeyPair::from_secret_bytes(&[6; 32]);
    let stolen = Proof {
        signature: other.sign_domain(
            wire::HANDSHAKE_DOMAIN,
            &wire::proof_message(
                &theirs.nonce,
                &stranger.public_key(),
                &"127.0.0.1:9".parse().unwrap(),
            ),
        ),
    };
    bytes.extend(wire::encode_frame(&stolen, 512).unwrap());
    send_raw_and_expect_close(&mut raw, &bytes).await;
    eventually("foreign proof counted", || {
        server.stats().handshakes_failed == 4
    })
    .await;
    check_still_serves(&good, &server, 4).await;

    // After a genuine handshake: a length prefix far over the limit. The server must
    // hang up without waiting for (or allocating) the 4 GiB it announces.
    let mut raw = authenticated_raw_client(addr, &stranger).await;
    send_raw_and_expect_close(&mut raw, &u32::MAX.to_be_bytes()).await;
    eventually("oversized frame counted", || {
        server.stats().frames_refused == 1
    })
    .await;
    check_still_serves(&good, &server, 5).await;

    // A frame cut short: 100 bytes announced, 10 sent, then the write side closed.
    let mut raw = authenticated_raw_client(addr, &stranger).await;
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend([1u8; 10]);
    raw.write_all(&truncated).await.unwrap();
    raw.shutdown().await.unwrap();
    send_raw_and_expect_close(&mut raw, &[]).await;
    eventually("truncated frame counted", || {
        server.stats().frames_refused == 2
    })
    .await;
    check_still_serves(&good, &server, 6).await;

    // A frame whose body is not a frame: an unknown variant.
    let mut raw = authenticated_raw_client(addr, &stranger).await;
    send_raw_and_expect_close(&mut raw, &[0, 0, 0, 2, 0xff, 0x7f]).await;
    eventually("malformed frame counted", || {
        server.stats().frames_refused == 3
    })
    .await;
    check_still_serves(&good, &server, 7).await;

    // A valid frame with trailing bytes after the message.
    let mut raw = authenticated_raw_client(addr, &stranger).await;
    let mut frame = wire::encode_frame(&Frame::OneWay(Msg::Ping(1)), 1024).unwrap();
    frame.push(0);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    send_raw_and_expect_close(&mut raw, &frame).await;
    eventually("trailing bytes counted", || {
        server.stats().frames_refused == 4
    })
    .await;
    check_still_serves(&good, &server, 8).await;

    assert_eq!(server.stats().handshakes_failed, 4);
    assert_eq!(good.stats().requests_failed, 0);
}

async fn read_hello(raw: &mut TcpStream) -> Hello {
    let body = within("the server's hello", wire::read_frame(raw, 512, PATIENCE))
        .await
        .unwrap()
        .unwrap();
    wire::decode_body(&body).unwrap()
}

/// A raw socket that has passed the handshake as `who`.
async fn authenticated_raw_client(addr: SocketAddr, who: &KeyPair) -> TcpStream {
    authenticated_from("127.0.0.1", addr, who).await
}

/// The frame of request `id` carrying `msg`.
fn request_frame(id: u64, msg: Msg) -> Vec<u8> {
    wire::encode_frame(&Frame::Request { id, msg }, 1024).unwrap()
}

#[tokio::test]
async fn a_dropped_responder_fails_the_request_at_once() {
    let (a, _a_in) = node(1, config()).await;
    let (b, mut b_in) = node(2, config()).await;
    tokio::spawn(async move {
        while let Some(item) = b_in.recv().await {
            drop(item);
        }
    });

    let started = tokio::time::Instant::now();
    match a.request(&b.me(), Msg::Ping(1)).await {
        Err(NetError::Remote(reason)) => assert_eq!(reason, "no answer"),
        other => panic!("expected Remote, got {other:?}"),
    }
    // Far below the 5 s request timeout: the error came back, not the timer.
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_is_counted() {
    let short = NetConfig {
        request_timeout: Duration::from_millis(300),
        ..config()
    };
    let (a, _a_in) = node(1, short).await;
    let (b, b_in) = node(2, config()).await;
    let mut held = serve_held(b_in);

    let error = a.request(&b.me(), Msg::Ping(1)).await.unwrap_err();
    assert!(matches!(error, NetError::Timeout), "{error:?}");
    let stats = a.stats();
    assert_eq!(
        (
            stats.requests_timed_out,
            stats.requests_failed,
            stats.in_flight
        ),
        (1, 1, 0)
    );
    // The late answer is ignored, and the connection still works.
    let (_, late) = held.recv().await.unwrap();
    late.reply(Msg::Pong(1));
    let next = tokio::spawn({
        let (a, to) = (a.clone(), b.me());
        async move { a.request(&to, Msg::Ping(2)).await }
    });
    let (msg, reply) = within("the second request", held.recv()).await.unwrap();
    assert_eq!(msg, Msg::Ping(2));
    reply.reply(Msg::Pong(2));
    assert_eq!(next.await.unwrap().unwrap(), Msg::Pong(2));
}

#[tokio::test]
async fn requests_past_the_in_flight_limit_wait_for_a_slot() {
    let two = NetConfig {
        max_in_flight_per_peer: 2,
        ..config()
    };
    let (a, _a_in) = node(1, two).await;
    let (b, b_in) = node(2, config()).await;
    let mut held = serve_held(b_in);

    let mut requests = JoinSet::new();
    for n in 0..3u32 {
        let (a, to) = (a.clone(), b.me());
        requests.spawn(async move { (n, a.request(&to, Msg::Ping(n)).await) });
    }
    let first = within("first request", held.recv()).await.unwrap();
    let second = within("second request", held.recv()).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), held.recv())
            .await
            .is_err(),
        "a third request got through while two were outstanding"
    );
    assert_eq!(
        a.stats().in_flight,
        3,
        "the waiting request counts as in flight"
    );

    let Msg::Ping(n) = first.0 else {
        panic!("{:?}", first.0)
    };
    first.1.reply(Msg::Pong(n));
    let third = within("third request after a slot freed", held.recv())
        .await
        .unwrap();
    for (msg, reply) in [second, third] {
        let Msg::Ping(n) = msg else { panic!("{msg:?}") };
        reply.reply(Msg::Pong(n));
    }
    while let Some(joined) = requests.join_next().await {
        let (n, answer) = joined.unwrap();
        assert_eq!(answer.unwrap(), Msg::Pong(n));
    }
}

#[tokio::test]
async fn a_peer_that_shuts_down_fails_pending_requests_and_is_redialled_when_back() {
    let (a, _a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let b_peer = b.me();
    let mut held = serve_held(b_in);

    let pending = tokio::spawn({
        let a = a.clone();
        async move { a.request(&b_peer, Msg::Ping(1)).await }
    });
    let _held_reply = within("the request to arrive", held.recv()).await.unwrap();
    b.shutdown();
    let failed = within("the pending request to fail", pending)
        .await
        .unwrap();
    assert!(
        matches!(failed, Err(NetError::Closed | NetError::Io(_))),
        "{failed:?}"
    );
    eventually("the dead connection to leave the pool", || {
        lock(&a.inner.peers).is_empty()
    })
    .await;

    // Nobody listens: a clean, prompt error.
    let refused = within("a request to a dead peer", a.request(&b_peer, Msg::Ping(2))).await;
    assert!(matches!(refused, Err(NetError::Io(_))), "{refused:?}");
    drop(b);

    // Back on the same port with the same key: the next request dials again.
    let (b_again, b_again_in) = Transport::<Msg>::bind(key(2), b_peer.addr, None, config())
        .await
        .unwrap();
    let _messages = serve_echo(b_again_in);
    assert_eq!(b_again.me(), b_peer);
    assert_eq!(
        a.request(&b_peer, Msg::Ping(3)).await.unwrap(),
        Msg::Pong(3)
    );
    assert_eq!(a.stats().connections_opened, 2);
}

#[tokio::test]
async fn shutdown_fails_our_own_calls_and_ends_the_incoming_queue() {
    let (a, mut a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let _messages = serve_echo(b_in);
    a.request(&b.me(), Msg::Ping(1)).await.unwrap();

    a.shutdown();
    assert!(matches!(
        a.request(&b.me(), Msg::Ping(2)).await,
        Err(NetError::Closed)
    ));
    assert!(matches!(
        a.send(&b.me(), Msg::Ping(2)).await,
        Err(NetError::Closed)
    ));
    assert!(
        within("the incoming queue to end", a_in.recv())
            .await
            .is_none()
    );
    // The peer notices and drops its side.
    eventually("b to drop the connection", || {
        lock(&b.inner.peers).is_empty()
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_redialled_on_demand() {
    let idle = NetConfig {
        idle_timeout: Duration::from_millis(200),
        ..config()
    };
    let (a, _a_in) = node(1, idle.clone()).await;
    let (b, b_in) = node(2, idle).await;
    let _messages = serve_echo(b_in);

    a.request(&b.me(), Msg::Ping(1)).await.unwrap();
    eventually("the idle connection to close", || {
        lock(&a.inner.peers).is_empty() && lock(&b.inner.peers).is_empty()
    })
    .await;
    a.request(&b.me(), Msg::Ping(2)).await.unwrap();
    assert_eq!(a.stats().connections_opened, 2);
}

#[test]
fn the_frame_encoding_is_pinned() {
    let frame = wire::encode_frame(
        &Frame::Request {
            id: 300,
            msg: Msg::Note("hi".into()),
        },
        1024,
    )
    .unwrap();
    #[rustfmt::skip]
    let expected = [
        0, 0, 0, 7,  // length of what follows, big-endian
        1,           // Frame::Request
        0xac, 0x02,  // id 300 as a varint
        3,           // Msg::Note
        2, b'h', b'i', // the string, length-prefixed
    ];
    assert_eq!(frame, expected);

    // An error response encoded without knowing M is the same bytes as with it.
    let typed: Frame<Msg> = Frame::Response {
        id: 5,
        result: Err(NO_ANSWER.into()),
    };
    assert_eq!(
        error_response(5, NO_ANSWER).unwrap(),
        wire::encode_frame(&typed, 1024).unwrap()
    );
}

#[test]
fn the_hello_and_proof_encodings_are_pinned() {
    let signer = KeyPair::from_secret_bytes(&[5; 32]);
    let frame = wire::encode_frame(&hello(&signer, wire::MAGIC), 512).unwrap();
    let mut expected = vec![0, 0, 0, 76];
    expected.extend(b"cairn"); // magic
    expected.push(1); // version 1 as a varint
    expected.extend(signer.public_key().0); // 32 raw bytes
    expected.extend([7; 32]); // nonce
    expected.extend([0, 127, 0, 0, 1, 9]); // SocketAddr::V4, 127.0.0.1, port 9 (varint)
    assert_eq!(frame, expected);

    let proof = wire::encode_frame(
        &Proof {
            signature: [0xab; 64],
        },
        512,
    )
    .unwrap();
    let mut expected = vec![0, 0, 0, 64];
    expected.extend([0xab; 64]); // the signature, raw
    assert_eq!(proof, expected);
    let decoded: Proof = wire::decode_body(&proof[4..]).unwrap();
    assert_eq!(decoded.signature, [0xab; 64]);
}

#[tokio::test]
async fn random_bytes_never_panic_the_frame_reader_or_decoders() {
    let mut rng = Rng::new(42);
    for round in 0..3000 {
        let len = (rng.next_u64() % 80) as usize;
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        // Half the inputs announce a plausible length, so bodies get decoded too.
        if round % 2 == 0 && len >= 4 {
            let body = (len - 4).saturating_sub((rng.next_u64() % 3) as usize) as u32;
            bytes[..4].copy_from_slice(&body.to_be_bytes());
        }
        let mut reader = &bytes[..];
        // Bounded: every pass consumes at least the 4-byte prefix or ends.
        for _ in 0..32 {
            match wire::read_frame(&mut reader, 1024, Duration::from_secs(1)).await {
                Ok(Some(body)) => {
                    let _ = wire::decode_body::<Frame<Msg>>(&body);
                    let _ = wire::decode_body::<Hello>(&body);
                    let _ = wire::decode_body::<Proof>(&body);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[tokio::test]
async fn a_node_that_drops_its_receiver_still_gets_answers_on_the_same_connection() {
    let (a, a_in) = node(1, config()).await;
    drop(a_in);
    let (b, b_in) = node(2, config()).await;
    let _messages = serve_echo(b_in);

    // b's messages to a are dropped, and its request is answered "no answer".
    b.send(&a.me(), Msg::Note("unheard".into())).await.unwrap();
    match b.request(&a.me(), Msg::Ping(1)).await {
        Err(NetError::Remote(reason)) => assert_eq!(reason, NO_ANSWER),
        other => panic!("expected Remote, got {other:?}"),
    }
    // The connection b opened survives and carries a's own request and its answer.
    assert_eq!(
        a.request(&b.me(), Msg::Ping(2)).await.unwrap(),
        Msg::Pong(2)
    );
    assert_eq!(a.stats().connections_opened, 0);
    assert_eq!(b.stats().connections_opened, 1);
}

/// Loopback figures for the report, not a check of speed: run with
/// `cargo test -p cairn-net tests::measure -- --ignored --nocapture` (the dev profile
/// builds dependencies at opt-level 3 and this crate at 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints figures"]
async fn measure_loopback_request_rates() {
    let (a, _a_in) = node(1, config()).await;
    let (b, b_in) = node(2, config()).await;
    let _messages = serve_echo(b_in);
    let to = b.me();
    a.request(&to, Msg::Ping(0)).await.unwrap();

    // Small requests, 64 outstanding at a time.
    let count = 20_000u32;
    let started = std::time::Instant::now();
    let mut requests = JoinSet::new();
    for worker in 0..64u32 {
        let a = a.clone();
        requests.spawn(async move {
            for n in (worker..count).step_by(64) {
                assert_eq!(a.request(&to, Msg::Ping(n)).await.unwrap(), Msg::Pong(n));
            }
        });
    }
    while let Some(joined) = requests.join_next().await {
        joined.unwrap();
    }
    let small = started.elapsed();
    println!(
        "small requests, 64 in flight: {count} in {small:?} = {:.0} requests/s",
        f64::from(count) / small.as_secs_f64()
    );

    // 1 MiB requests echoed back, 8 outstanding at a time (2 MiB crosses per request),
    // as a plain Vec<u8> field and as one with `#[serde(with = "net::bytes")]`.
    let mut blob = vec![0u8; 1024 * 1024];
    Rng::new(1).fill_bytes(&mut blob);
    let blob = Arc::new(blob);
    for as_bytes in [false, true] {
        let rounds = 512usize;
        let started = std::time::Instant::now();
        let mut requests = JoinSet::new();
        for _ in 0..8 {
            let (a, blob) = (a.clone(), Arc::clone(&blob));
            requests.spawn(async move {
                for _ in 0..rounds / 8 {
                    let msg = if as_bytes {
                        Msg::Bytes(blob.to_vec())
                    } else {
                        Msg::Blob(blob.to_vec())
                    };
                    let answer = a.request(&to, msg).await.unwrap();
                    assert!(matches!(
                        &answer,
                        Msg::Blob(echoed) | Msg::Bytes(echoed) if echoed[..] == blob[..]
                    ));
                }
            });
        }
        while let Some(joined) = requests.join_next().await {
            joined.unwrap();
        }
        let large = started.elapsed();
        println!(
            "1 MiB echo requests ({}), 8 in flight: {rounds} in {large:?} = {:.0} MiB/s each way",
            if as_bytes {
                "net::bytes field"
            } else {
                "plain Vec<u8> field"
            },
            rounds as f64 / large.as_secs_f64()
        );
    }
}

#[test]
fn the_bytes_helper_keeps_the_wire_format_and_round_trips() {
    for len in [0usize, 1, 127, 128, 300, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let plain = postcard::to_stdvec(&Msg::Blob(payload.clone())).unwrap();
        let fast = postcard::to_stdvec(&Msg::Bytes(payload.clone())).unwrap();
        assert_eq!(plain[0], 2, "Msg::Blob");
        assert_eq!(fast[0], 4, "Msg::Bytes");
        assert_eq!(
            plain[1..],
            fast[1..],
            "same bytes after the variant, len {len}"
        );
        let decoded: Msg = wire::decode_body(&fast).unwrap();
        assert_eq!(decoded, Msg::Bytes(payload));
    }
    // A length claiming more than the input holds is refused, not allocated.
    let lying = [4u8, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3];
    assert!(wire::decode_body::<Msg>(&lying).is_err());
}

#[test]
fn handles_can_cross_tasks_and_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_and_sync::<Transport<Msg>>();
    send::<Responder<Msg>>();
    send::<Incoming<Msg>>();
    send_and_sync::<NetError>();
}

/// A key whose node id solves the puzzle at `difficulty`.
fn solving_key(difficulty: Difficulty) -> Arc<KeyPair> {
    let key = KeyPair::generate_solving(difficulty, difficulty.attempt_bound(), |_| {});
    Arc::new(key.expect("a key within the bound"))
}

#[tokio::test]
async fn a_key_below_the_difficulty_is_refused_in_the_handshake_either_way_and_counted() {
    let difficulty = Difficulty(8);
    let puzzle = NetConfig {
        key_difficulty: difficulty,
        ..config()
    };
    let any = "127.0.0.1:0".parse().unwrap();
    let (server, server_in) =
        Transport::<Msg>::bind(solving_key(difficulty), any, None, puzzle.clone())
            .await
            .unwrap();
    let _messages = serve_echo(server_in);
    // A fixed key that falls short of 8 bits (255 keys in 256 do), on a node that
    // checks nothing itself: the attacker's side.
    let weak = (1..=255u8)
        .map(key)
        .find(|k| !k.public_key().node_id().meets(difficulty))
        .unwrap();
    let weak_id = weak.public_key().node_id();
    let (weak_node, _weak_in) = Transport::<Msg>::bind(weak, any, None, config())
        .await
        .unwrap();

    // It dials: the server refuses its hello, and no session starts.
    let refused = weak_node
        .request(&server.me(), Msg::Note("let me in".into()))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    eventually("the refusal counted", || {
        server.stats().key_below_difficulty == 1
    })
    .await;
    assert_eq!(server.stats().connections_accepted, 0);
    assert_eq!(server.stats().handshakes_failed, 1);

    // The server dials it: refused on our side too, with the evidence.
    match server.request(&weak_node.me(), Msg::Ping(1)).await {
        Err(NetError::KeyBelowDifficulty(below)) => {
            assert_eq!(below.id, weak_id);
            assert_eq!(below.needed, difficulty);
            assert!(below.bits < 8);
        }
        other => panic!("expected KeyBelowDifficulty, got {other:?}"),
    }
    assert_eq!(server.stats().key_below_difficulty, 2);
    assert_eq!(server.stats().connections_opened, 0);

    // A key that solves the puzzle gets in, both ways.
    let (strong, strong_in) = Transport::<Msg>::bind(solving_key(difficulty), any, None, puzzle)
        .await
        .unwrap();
    let _strong_messages = serve_echo(strong_in);
    pings_both_ways(&strong, &server, 2).await;
    assert_eq!(server.stats().connections_accepted, 1);
    assert_eq!(server.stats().key_below_difficulty, 2);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let quick = NetConfig {
        handshake_timeout: Duration::from_millis(200),
        ..config()
    };
    let (server, _server_in) = node(2, quick).await;
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    // Says nothing; the server sends its hello, then hangs up.
    send_raw_and_expect_close(&mut raw, &[]).await;
    assert_eq!(server.stats().handshakes_failed, 1);
}

/// A plain TCP connection to `addr` from the loopback address `source` (any of
/// 127.0.0.0/8 reaches the listener, and each counts as another address).
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// `connect_from`, then the handshake as `who`.
async fn authenticated_from(source: &str, addr: SocketAddr, who: &KeyPair) -> TcpStream {
    let mut raw = connect_from(source, addr).await;
    within(
        "raw handshake",
        wire::handshake(
            &mut raw,
            who,
            "127.0.0.1:9".parse().unwrap(),
            Difficulty::NONE,
        ),
    )
    .await
    .unwrap();
    raw
}

/// Whether the server hung up on `raw` (it reads until the end, discarding).
async fn hung_up(raw: &mut TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, raw.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn inbound_connections_past_the_per_address_and_total_caps_are_refused_and_counted() {
    let capped = NetConfig {
        max_inbound_per_address: 2,
        max_inbound: 3,
        ..config()
    };
    let (server, server_in) = node(2, capped).await;
    let _messages = serve_echo(server_in);
    let addr = server.local_addr();

    let _first = authenticated_from("127.0.0.2", addr, &key(10)).await;
    let _second = authenticated_from("127.0.0.2", addr, &key(11)).await;
    // A third from the same address is closed before its handshake.
    let mut third = connect_from("127.0.0.2", addr).await;
    assert!(hung_up(&mut third).await, "the third connection stays open");
    assert_eq!(server.stats().inbound_refused_per_address, 1);

    // Another address still gets in, up to the total of three.
    let _other = authenticated_from("127.0.0.3", addr, &key(12)).await;
    let mut fourth = connect_from("127.0.0.4", addr).await;
    assert!(
        hung_up(&mut fourth).await,
        "the fourth connection stays open"
    );
    assert_eq!(server.stats().inbound_refused, 1);
    assert_eq!(server.stats().inbound_connections, 3);

    // A connection that goes gives its place back.
    drop(_first);
    eventually("the closed connection to leave the count", || {
        server.stats().inbound_connections == 2
    })
    .await;
    let (good, _good_in) = node(1, config()).await;
    check_still_serves(&good, &server, 1).await;
}

#[tokio::test]
async fn handshakes_are_limited_per_address_not_shared_by_everyone() {
    let capped = NetConfig {
        max_handshakes_per_address: 2,
        ..config()
    };
    let (server, server_in) = node(2, capped).await;
    let _messages = serve_echo(server_in);
    let addr = server.local_addr();

    // Two silent sockets from one address hold its handshake slots...
    let _silent: Vec<TcpStream> = vec![
        connect_from("127.0.0.2", addr).await,
        connect_from("127.0.0.2", addr).await,
    ];
    let mut third = connect_from("127.0.0.2", addr).await;
    assert!(hung_up(&mut third).await, "a third handshake was let in");
    assert_eq!(server.stats().handshakes_refused, 1);
    // ...and a node elsewhere still completes its handshake at once.
    let (good, _good_in) = node(1, config()).await;
    check_still_serves(&good, &server, 1).await;
    assert_eq!(server.stats().handshakes_failed, 0);
}

#[tokio::test]
async fn a_second_inbound_connection_from_one_id_replaces_the_first() {
    let (server, server_in) = node(2, config()).await;
    let _messages = serve_echo(server_in);
    let addr = server.local_addr();
    let who = key(10);

    let mut first = authenticated_raw_client(addr, &who).await;
    let mut second = authenticated_raw_client(addr, &who).await;
    assert!(hung_up(&mut first).await, "the older connection stays open");
    assert_eq!(server.stats().inbound_replaced, 1);
    assert_eq!(lock(&server.inner.peers).len(), 1);

    // The newer one is served.
    second
        .write_all(&request_frame(1, Msg::Ping(7)))
        .await
        .unwrap();
    let body = within("the answer", wire::read_frame(&mut second, 1024, PATIENCE))
        .await
        .unwrap()
        .unwrap();
    let answer: Frame<Msg> = wire::decode_body(&body).unwrap();
    assert_eq!(
        answer,
        Frame::Response {
            id: 1,
            result: Ok(Msg::Pong(7))
        }
    );
}

#[tokio::test]
async fn a_peer_that_never_reads_its_answers_is_dropped_at_the_write_budget() {
    let budget = NetConfig {
        max_frame_bytes: 2 << 20,
        write_budget_bytes: 4 << 20,
        ..config()
    };
    let (server, mut server_in) = node(2, budget).await;
    // Every request is answered with 1 MiB.
    tokio::spawn(async move {
        while let Some(item) = server_in.recv().await {
            if let Incoming::Request { reply, .. } = item {
                reply.reply(Msg::Bytes(vec![7; 1 << 20]));
            }
        }
    });
    let addr = server.local_addr();
    let mut reader = authenticated_raw_client(addr, &key(10)).await;
    // 512 requests (512 MiB of answers), and not one byte read.
    let mut requests = Vec::new();
    for id in 0..512u64 {
        requests.extend(request_frame(id, Msg::Ping(0)));
    }
    let write = reader.write_all(&requests);
    // The server may hang up before it has read them all.
    let _ = within("writing the requests", write).await;
    eventually("the connection to be dropped over budget", || {
        server.stats().write_budget_exceeded == 1
    })
    .await;
    eventually("the connection to leave the pool", || {
        lock(&server.inner.peers).is_empty()
    })
    .await;
    let (good, _good_in) = node(1, config()).await;
    good.send(&server.me(), Msg::Ping(1)).await.unwrap();
    assert_eq!(server.stats().write_budget_exceeded, 1);
}

#[tokio::test]
async fn a_peers_unanswered_requests_are_bounded_across_its_connections() {
    let two = NetConfig {
        max_in_flight_per_peer: 2,
        ..config()
    };
    let (server, server_in) = node(2, two).await;
    let mut held = serve_held(server_in);
    let addr = server.local_addr();
    let who = key(10);
    let request = |id: u64| request_frame(id, Msg::Ping(id as u32));

    let mut first = authenticated_raw_client(addr, &who).await;
    first.write_all(&request(1)).await.unwrap();
    first.write_all(&request(2)).await.unwrap();
    let one = within("request 1", held.recv()).await.unwrap();
    let _two = within("request 2", held.recv()).await.unwrap();
    // Reconnecting does not buy more slots: the new connection's request waits.
    let mut second = authenticated_raw_client(addr, &who).await;
    second.write_all(&request(3)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), held.recv())
            .await
            .is_err(),
        "a third request got through while two were unanswered"
    );
    // Another peer is not held up by this one.
    let (good, _good_in) = node(1, config()).await;
    let other = tokio::spawn({
        let (good, to) = (good.clone(), server.me());
        async move { good.request(&to, Msg::Ping(9)).await }
    });
    let (msg, reply) = within("the other peer's request", held.recv())
        .await
        .unwrap();
    assert_eq!(msg, Msg::Ping(9));
    reply.reply(Msg::Pong(9));
    assert_eq!(other.await.unwrap().unwrap(), Msg::Pong(9));
    // Answering one of the first two lets the third in.
    one.1.reply(Msg::Pong(1));
    let (msg, _third) = within("request 3", held.recv()).await.unwrap();
    assert_eq!(msg, Msg::Ping(3));
}

#[tokio::test]
async fn dials_past_the_limit_wait_for_a_slot() {
    let one = NetConfig {
        max_dials: 1,
        ..config()
    };
    let (a, _a_in) = node(1, one).await;
    // A listener that accepts and never speaks holds a's only dial slot until the
    // handshake timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holding = tokio::spawn({
        let a = a.clone();
        async move { a.identify(silent_addr).await }
    });
    let (_socket, _) = within("the silent dial", silent.accept()).await.unwrap();
    let (b, b_in) = node(2, config()).await;
    let _messages = serve_echo(b_in);
    let waiting = tokio::spawn({
        let (a, to) = (a.clone(), b.me());
        async move { a.request(&to, Msg::Ping(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        b.stats().connections_accepted,
        0,
        "a second dial ran while the only slot was taken"
    );
    assert!(
        holding.await.unwrap().is_err(),
        "the silent peer cannot pass"
    );
    assert_eq!(
        within("the waiting request", waiting)
            .await
            .unwrap()
            .unwrap(),
        Msg::Pong(1)
    );
}
