//! A network partition and its healing, with node processes in two network namespaces
//! joined by a veth pair (as two hosts would be), made and removed by the test.
//!
//! Needs root (CI runs as root) and `ip` from iproute2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "`ip {}` failed (this test needs root and iproute2): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and a veth pair between them; removed on drop.
struct Hosts {
    names: [String; 2],
    links: [String; 2],
}

impl Hosts {
    fn new() -> Hosts {
        let tag = std::process::id() % 100_000;
        let hosts = Hosts {
            names: [format!("cairn-a{tag}"), format!("cairn-b{tag}")],
            links: [format!("ca{tag}"), format!("cb{tag}")],
        };
        for name in &hosts.names {
            ip(&["netns", "add", name]);
        }
        ip(&[
            "link",
            "add",
            &hosts.links[0],
            "type",
            "veth",
            "peer",
            "name",
            &hosts.links[1],
        ]);
        for i in 0..2 {
            ip(&["link", "set", &hosts.links[i], "netns", &hosts.names[i]]);
            let addr = format!("{}/24", hosts.addr(i));
            ip(&[
                "-n",
                &hosts.names[i],
                "addr",
                "add",
                &addr,
                "dev",
                &hosts.links[i],
            ]);
            ip(&["-n", &hosts.names[i], "link", "set", "lo", "up"]);
        }
        hosts.connect(true);
        hosts
    }

    fn addr(&self, i: usize) -> String {
        format!("10.213.0.{}", i + 1)
    }

    /// Brings the link between the hosts up or down.
    fn connect(&self, up: bool) {
        for i in 0..2 {
            let state = if up { "up" } else { "down" };
            ip(&["-n", &self.names[i], "link", "set", &self.links[i], state]);
        }
    }

    /// `cairn ARGS` run on host `i`.
    fn cairn(&self, i: usize, home: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.names[i], CAIRN])
            .args(args)
            .env("CAIRN_HOME", home)
            .env_remove("CAIRN_API")
            .stdin(Stdio::null());
        command
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

/// A node process, killed on drop.
struct NodeProcess {
    child: Child,
    addr: String,
    api: Option<String>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(
    hosts: &Hosts,
    host: usize,
    home: &Path,
    dir: &Path,
    bootstrap: Option<&str>,
    api: bool,
) -> NodeProcess {
    let listen = format!("{}:0", hosts.addr(host));
    let mut args = vec![
        "node",
        "run",
        "--data",
        dir.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    args.extend(["--tick-ms", "300", "-k", "1", "-m", "3"]);
    if let Some(bootstrap) = bootstrap {
        args.extend(["--bootstrap", bootstrap]);
    }
    if api {
        args.extend(["--api", "127.0.0.1:0"]);
    }
    let mut child = hosts
        .cairn(host, home, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut node = NodeProcess {
        child,
        addr: String::new(),
        api: None,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.addr.is_empty() || (api && node.api.is_none()) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the node did not start in time");
        if let Some(rest) = line.strip_prefix("cairn node ") {
            node.addr = rest.rsplit(' ').next().unwrap().to_string();
        } else if let Some(rest) = line.strip_prefix("api on http://") {
            node.api = Some(rest.trim().to_string());
        }
    }
    node
}

fn run(hosts: &Hosts, host: usize, home: &Path, args: &[&str]) -> Output {
    hosts.cairn(host, home, args).output().unwrap()
}

#[test]
fn a_partitioned_network_serves_what_each_side_can_read_and_heals() {
    let hosts = Hosts::new();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = |name: &str| tmp.path().join(name);
    // Three nodes on each host; one API on each side.
    let a0 = start_node(&hosts, 0, &home, &dir("a0"), None, true);
    let seed = a0.addr.clone();
    let mut nodes = vec![];
    for (host, name, api) in [
        (0, "a1", false),
        (0, "a2", false),
        (1, "b0", true),
        (1, "b1", false),
        (1, "b2", false),
    ] {
        nodes.push(start_node(
            &hosts,
            host,
            &home,
            &dir(name),
            Some(&seed),
            api,
        ));
    }
    let apis = [a0.api.clone().unwrap(), nodes[2].api.clone().unwrap()];
    // Let the leaf sets fill.
    std::thread::sleep(Duration::from_secs(3));

    // Files of one block each, coded 1+3: every block (the manifest's too) has 4
    // fragments on 4 of the 6 nodes, so each host holds at least one of each (a host
    // has only 3 nodes), and 1 is enough to read. The certificate's 4 keepers likewise
    // span both hosts. So both sides can read every file during the partition.
    let mut files = vec![];
    for i in 0..6u8 {
        let path = tmp.path().join(format!("file-{i}"));
        let data: Vec<u8> = (0..100_000u32)
            .map(|j| (j as u8) ^ i.wrapping_mul(37))
            .collect();
        std::fs::write(&path, &data).unwrap();
        let out = run(
            &hosts,
            0,
            &home,
            &["put", path.to_str().unwrap(), "--api", &apis[0]],
        );
        assert!(
            out.status.success(),
            "put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.push((
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            data,
        ));
    }
    let read = |host: usize, reference: &str| -> Option<Vec<u8>> {
        let out = run(
            &hosts,
            host,
            &home,
            &["get", reference, "--api", &apis[host]],
        );
        out.status.success().then_some(out.stdout)
    };

    hosts.connect(false);
    // Past failure detection (3 ticks of 300 ms, and probes): each side sees only itself.
    std::thread::sleep(Duration::from_secs(5));
    for (reference, data) in &files {
        let sides: Vec<Option<Vec<u8>>> = (0..2).map(|host| read(host, reference)).collect();
        for got in sides.iter().flatten() {
            assert!(got == data, "a side served wrong bytes for {reference}");
        }
        assert!(
            sides.iter().all(Option::is_some),
            "{reference} was not readable on both sides of the partition"
        );
    }

    hosts.connect(true);
    // The halves find each other again: each API node's leaf set holds all 5 others.
    let deadline = Instant::now() + Duration::from_secs(60);
    let merged = |host: usize| {
        let out = run(
            &hosts,
            host,
            &home,
            &["status", "--json", "--api", &apis[host]],
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut ids: Vec<String> = ["leaf_left", "leaf_right"]
            .iter()
            .flat_map(|side| status[*side].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids.dedup();
        ids.len() >= 5
    };
    while !(merged(0) && merged(1)) {
        assert!(
            Instant::now() < deadline,
            "the overlay did not merge after the partition healed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every file reads on both sides, and no fragment is lost or left duplicated:
    // repair brings every block back to exactly one holder per fragment.
    for (reference, data) in &files {
        for host in 0..2 {
            assert!(
                read(host, reference).as_ref() == Some(data),
                "{reference} on host {host}"
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    for (reference, _) in &files {
        loop {
            let out = run(
                &hosts,
                0,
                &home,
                &["stat", reference, "--json", "--api", &apis[0]],
            );
            let stat: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let blocks = stat["blocks"].as_array().cloned().unwrap_or_default();
            let settled = !blocks.is_empty()
                && blocks.iter().all(|b| {
                    b["holders"].as_array().is_some_and(|h| {
                        h.iter()
                            .all(|ids| ids.as_array().is_some_and(|ids| ids.len() == 1))
                    })
                });
            if settled {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{reference}: fragments are not back to one copy each: {}",
                serde_json::to_string(&stat["blocks"]).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    drop(nodes);
}
