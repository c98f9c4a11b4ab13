//! A network partition and its healing, with node processes in two network namespaces
//! joined by a veth pair (as two hosts would be), made and removed by the test.
//!
//! Needs root (CI runs as root) and `ip` from iproute2.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cairn_testkit::{ProcessCluster, wait_until};

use crate::common::CAIRN;

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

fn run(hosts: &Hosts, host: usize, home: &Path, args: &[&str]) -> Output {
    hosts.cairn(host, home, args).output().unwrap()
}

#[test]
fn a_partitioned_network_serves_what_each_side_can_read_and_heals() {
    let hosts = Hosts::new();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // Three nodes on each host (a0 a1 a2, b0 b1 b2), all joining through a0; one API
    // on each side (a0 and b0).
    let names = hosts.names.clone();
    let addrs = [hosts.addr(0), hosts.addr(1)];
    let nodes = ProcessCluster::builder(Path::new(CAIRN), 6)
        .configure(|i, spec| {
            let host = i / 3;
            spec.launcher = ["ip", "netns", "exec", &names[host]]
                .map(String::from)
                .to_vec();
            spec.listen = format!("{}:0", addrs[host]);
            spec.api = i % 3 == 0;
            spec.args.extend(["-k", "1", "-m", "3"].map(String::from));
            // Both hosts are in one /24 (10.213.0.0/24): the overlay's limit of ids per
            // subnet would keep two of the six in each leaf set.
            spec.args
                .extend(["--max-ids-per-subnet", "64"].map(String::from));
        })
        .start()
        .unwrap();
    let apis = [
        nodes.node(0).api.clone().unwrap(),
        nodes.node(3).api.clone().unwrap(),
    ];
    // The ids in the leaf set of host `host`'s API node (its API is inside the
    // namespace, so `cairn status` runs there).
    let leaf_set = |host: usize| -> Vec<String> {
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
        ids
    };
    // Each API node's leaf set holds all 5 others.
    let merged = || {
        let sizes = [leaf_set(0).len(), leaf_set(1).len()];
        if sizes.iter().all(|n| *n >= 5) {
            Ok(())
        } else {
            Err(format!("the API nodes' leaf sets hold {sizes:?} nodes"))
        }
    };
    wait_until(Duration::from_secs(60), "the leaf sets to fill", merged).unwrap();

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
    wait_until(
        Duration::from_secs(60),
        "each side's leaf set to hold only its own 2 other nodes",
        || {
            let sizes = [leaf_set(0).len(), leaf_set(1).len()];
            if sizes.iter().all(|n| *n <= 2) {
                Ok(())
            } else {
                Err(format!("the API nodes' leaf sets hold {sizes:?} nodes"))
            }
        },
    )
    .unwrap();
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
    wait_until(
        Duration::from_secs(60),
        "the overlay to merge after the partition healed",
        merged,
    )
    .unwrap();
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
    wait_until(
        Duration::from_secs(90),
        "every file's fragments back to one copy each",
        || {
            for (reference, _) in &files {
                let out = run(
                    &hosts,
                    0,
                    &home,
                    &["stat", reference, "--json", "--api", &apis[0]],
                );
                let stat: serde_json::Value =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                let blocks = stat["blocks"].as_array().cloned().unwrap_or_default();
                let settled = !blocks.is_empty()
                    && blocks.iter().all(|b| {
                        b["holders"].as_array().is_some_and(|h| {
                            h.iter()
                                .all(|ids| ids.as_array().is_some_and(|ids| ids.len() == 1))
                        })
                    });
                if !settled {
                    return Err(format!(
                        "{reference}: fragments are not back to one copy each: {}",
                        serde_json::to_string(&stat["blocks"]).unwrap_or_default()
                    ));
                }
            }
            Ok(())
        },
    )
    .unwrap();
    drop(nodes);
}
