//! Resource bounds on real nodes (loopback, in this process): what a stranger on the
//! network or a misbehaving API client can make a node spend is refused past its
//! limit, counted in `/metrics`, and the node keeps serving everyone else. The
//! transport's own bounds (connection caps, write budget, per-peer requests) have unit
//! tests in `cairn-net`; these check them end to end where a real node is needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use cairn_api::client::ApiClient;
use cairn_api::{GRANT_HEADER, encode_hex};
use cairn_core::crypto::{KeyPair, Signed, UploadGrant};
use cairn_core::id::{Id, PlacementKey};
use cairn_daemon::unix_now;
use cairn_past::maintenance::MAX_NUDGE_KEYS;
use cairn_past::{PastRequest, PastResponse};
use cairn_testkit::fixtures::{bytes, get, owner, put};
use cairn_testkit::{Cluster, wait_until};

/// How long a test waits for something that should take well under a second.
const PATIENCE: Duration = Duration::from_secs(20);

/// The value of `cairn_<name>` in `client`'s node's `/metrics`.
fn metric(client: &ApiClient, name: &str) -> u64 {
    let text = ureq::get(format!("{}/metrics", client.base()))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    let prefix = format!("cairn_{name} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no metric {name} in /metrics"))
        .parse()
        .unwrap()
}

/// Waits until `cairn_<name>` reads `value`, failing the test at a deadline.
fn wait_for_metric(client: &ApiClient, name: &str, value: u64) {
    wait_until(
        PATIENCE,
        &format!("{name} to read {value}"),
        || match metric(client, name) {
            n if n == value => Ok(()),
            n => Err(n),
        },
    )
    .unwrap();
}

/// An owner's signed upload grant, hex, as `x-cairn-grant` carries it.
fn grant_header(owner: &KeyPair, name: &str) -> String {
    let grant = UploadGrant::new(name.as_bytes(), 0, owner.public_key(), unix_now(), 3600);
    encode_hex(&Signed::sign(owner, grant).unwrap().to_bytes().unwrap())
}

fn api_addr(client: &ApiClient) -> SocketAddr {
    client.base().trim_start_matches("http://").parse().unwrap()
}

#[test]
fn the_api_refuses_oversized_parameters_stalled_uploads_and_too_many_puts() {
    let mut cluster = Cluster::builder(6)
        .configure(|i, config| {
            if i == 0 {
                config.api.body_idle_timeout = Duration::from_millis(500);
                config.api.max_concurrent_puts = 1;
            }
        })
        .start();
    let client = cluster.api(0);
    let alice = owner(61);

    // k=1, m=255 with 64 MiB segments would be 16 GiB a block: refused, saying the limit.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut answer = agent
        .put(format!(
            "{}/v1/files?k=1&m=255&segment_size=67108864",
            client.base()
        ))
        .header(GRANT_HEADER, grant_header(&alice, "huge"))
        .send(&b"x"[..])
        .unwrap();
    assert_eq!(answer.status().as_u16(), 400);
    let text = answer.body_mut().read_to_string().unwrap();
    assert!(
        text.contains("17179869184 bytes per block") && text.contains("at most 67108864"),
        "{text}"
    );

    // A certificate body larger than any certificate (the limit is 64 KiB): refused.
    let too_large = agent
        .post(format!("{}/v1/certificates", client.base()))
        .send(&vec![0u8; 80 << 10][..])
        .unwrap();
    assert_eq!(too_large.status().as_u16(), 413);

    // An upload that sends its headers and a little of its body, then nothing.
    let mut stalled = std::net::TcpStream::connect(api_addr(&client)).unwrap();
    stalled.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = format!(
        "PUT /v1/files HTTP/1.1\r\nhost: cairn\r\n{GRANT_HEADER}: {}\r\ncontent-length: 1048576\r\n\r\n",
        grant_header(&alice, "stalled")
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&[7u8; 1000]).unwrap();
    wait_for_metric(&client, "api_puts_running", 1);

    // Meanwhile a second put is turned away at once, and told when to come back.
    let retry = agent
        .put(format!("{}/v1/files", client.base()))
        .header(GRANT_HEADER, grant_header(&alice, "busy"))
        .send(&b"x"[..])
        .unwrap();
    assert_eq!(retry.status().as_u16(), 503);
    assert_eq!(retry.headers().get("retry-after").unwrap(), "1");

    // The stalled upload fails with 408 once its body has been idle past the timeout.
    let mut response = Vec::new();
    let _ = stalled.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("idle timeout"), "{response}");

    // The slot is free again, and a put and a get work.
    wait_for_metric(&client, "api_puts_running", 0);
    let data = bytes(300_000, 61);
    let file = put(&client, &alice, &data, 1);
    assert_eq!(get(&client, &file), data);

    assert_eq!(metric(&client, "api_put_params_refused_total"), 1);
    assert_eq!(metric(&client, "api_puts_refused_busy_total"), 1);
    assert_eq!(metric(&client, "api_bodies_stalled_total"), 1);
    assert_eq!(metric(&client, "api_bodies_too_large_total"), 1);
}

#[test]
fn silent_connections_past_an_addresss_handshake_slots_are_refused_and_the_node_still_serves() {
    let mut cluster = Cluster::builder(6)
        .configure(|i, config| {
            if i == 0 {
                config.net.max_handshakes_per_address = 2;
                config.net.handshake_timeout = Duration::from_secs(10);
            }
        })
        .start();
    let client = cluster.api(0);
    let target = cluster.node(0).advertised();

    // Ten connections from one address that never say a word: two hold its
    // handshake slots, the other eight are closed at once.
    let silent = cluster.block_on(async move {
        let mut held = Vec::new();
        for _ in 0..10 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            held.push(socket.connect(target).await.unwrap());
        }
        held
    });
    wait_for_metric(&client, "net_handshakes_refused_total", 8);

    // Nodes on other addresses are not held up: a put through node 0 reaches them all.
    let alice = owner(62);
    let data = bytes(200_000, 62);
    let file = put(&client, &alice, &data, 0);
    assert_eq!(get(&client, &file), data);
    drop(silent);

    // A peer that nudges more keys than any holder sends in one request is refused.
    let keys: Vec<PlacementKey> = (0..=MAX_NUDGE_KEYS as u64)
        .map(|n| PlacementKey(Id::hash(&n.to_be_bytes())))
        .collect();
    let (asker, to) = (cluster.node(1).clone(), cluster.node(0).address());
    let from = asker.id();
    let answer = cluster
        .block_on(async move { asker.ask(&to, PastRequest::Reconcile { from, keys }).await });
    assert!(matches!(answer, Ok(PastResponse::Refused(_))), "{answer:?}");
    assert_eq!(metric(&client, "nudges_refused_total"), 1);
}
