//! The `cairn` binary end to end: a devnet and node processes started by the test,
//! driven by the CLI as a person would.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cairn_testkit::ProcessCluster;
use cairn_testkit::fixtures::seeded_file;

use crate::common::{devnet, fails, ok};

#[test]
fn devnet_put_get_stat_rm_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let dir = tmp.path().join("devnet");
    let devnet = devnet(&home, &dir, 6);
    let api = devnet.api.clone();
    let input = tmp.path().join("input.bin");
    let data = seeded_file(&input, (2 << 20) + 12_345, 7);
    let api_args = ["--api", api.as_str()];
    let with_api = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(api_args.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let run = |args: &[&str]| {
        ok(
            &home,
            &with_api(args)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    };
    let run_fails = |args: &[&str]| {
        fails(
            &home,
            &with_api(args)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    };

    let reference = run(&["put", input.to_str().unwrap()]).trim().to_string();
    assert!(reference.starts_with("cairn:f:"), "{reference}");
    assert!(
        home.join("owner.key").exists(),
        "the first put created the owner key"
    );

    let output = tmp.path().join("output.bin");
    run(&["get", &reference, "-o", output.to_str().unwrap()]);
    assert!(
        std::fs::read(&output).unwrap() == data,
        "get gave other bytes"
    );

    let stat = run(&["stat", &reference]);
    assert!(stat.contains("2.0 MiB"), "{stat}");
    assert!(
        stat.contains("6/6"),
        "stat shows every fragment live: {stat}"
    );
    let status = run(&["status"]);
    assert!(status.contains("joined:     true"), "{status}");

    run(&["rm", &reference]);
    let error = run_fails(&["get", &reference]);
    assert!(error.contains("no file"), "{error}");

    let error = run_fails(&["get", "cairn:f:not-a-reference"]);
    assert!(error.contains("reference"), "{error}");
    drop(devnet);

    let error = fails(&home, &["status", "--api", &api]);
    assert!(error.contains("cannot reach the cairn API"), "{error}");
}

#[test]
fn node_processes_survive_a_kill_and_a_restart_on_their_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // Five `cairn node run` processes joined through node 0, which serves the API.
    let mut nodes = ProcessCluster::start(Path::new(crate::common::CAIRN), 5).unwrap();
    let api = nodes.node(0).api.clone().unwrap();
    let first_addr = ok(&home, &["status", "--api", &api])
        .lines()
        .find_map(|l| l.strip_prefix("address:").map(|a| a.trim().to_string()))
        .unwrap();
    assert_eq!(
        first_addr,
        nodes.node(0).listen,
        "status shows the node's address"
    );
    let input = tmp.path().join("input.bin");
    let data = seeded_file(&input, 700_000, 3);
    let reference = ok(
        &home,
        &[
            "put",
            input.to_str().unwrap(),
            "-k",
            "2",
            "-m",
            "1",
            "--api",
            &api,
        ],
    )
    .trim()
    .to_string();
    let output = tmp.path().join("output.bin");
    let get = || {
        let _ = std::fs::remove_file(&output);
        ok(
            &home,
            &[
                "get",
                &reference,
                "-o",
                output.to_str().unwrap(),
                "--api",
                &api,
            ],
        );
        assert!(
            std::fs::read(&output).unwrap() == data,
            "get gave other bytes"
        );
    };
    get();

    // kill -9 one node process: the file still reads (m = 1).
    let id = nodes.node(2).id.clone();
    nodes.kill(2);
    get();
    // Restarted on its data dir and address it comes back with the same id, and the
    // file reads with another node down instead.
    let restarted = nodes.restart(2).unwrap();
    assert_eq!(restarted.id, id, "a restarted node keeps its id");
    nodes.kill(3);
    get();
}

#[test]
fn a_minute_of_churn_on_sixteen_node_processes_loses_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let out = ok(
        &home,
        &[
            "bench",
            "churn",
            "--nodes",
            "16",
            "--files",
            "8",
            "--size",
            "256KiB",
            "--duration",
            "60",
            "--mean-session",
            "60",
            "--mode",
            "mixed",
            "--readers",
            "2",
            "--tick-ms",
            "300",
            "--repair-timeout",
            "120",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["durability"], 1.0, "{report}");
    assert!(report["kills"].as_u64().unwrap() > 0, "{report}");
    // Issue 10's goal at 60 s mean sessions: at least 99.9% of reads succeed (a block
    // out of reach for a moment is waited for, not failed).
    let availability = report["availability"].as_f64().unwrap();
    assert!(availability >= 0.999, "{report}");
    // Every block must still have at least k live fragments at the end (decodable and
    // repairable). Full redundancy (n) within the repair timeout is what the bench
    // measures (`time_to_full_redundancy_s`); it came back in all but one of a dozen
    // runs here, and that one stayed short with no file lost: see docs/repair.md.
    let k = report["k"].as_u64().unwrap();
    let final_min_live = report["final_min_live"].as_u64();
    assert!(
        final_min_live.is_some_and(|live| live >= k),
        "a block ended with fewer than k live fragments: {report}"
    );
    // Lost blocks are named: none here, since every file read and no block ended below k.
    let lost = report["lost_blocks"].as_array();
    assert!(
        lost.is_some_and(Vec::is_empty),
        "lost_blocks should be an empty array: {report}"
    );
    if report["time_to_full_redundancy_s"].is_null() {
        eprintln!("full redundancy did not come back within the repair timeout: {report}");
    }
    eprintln!("churn in CI: {report}");
}

#[test]
fn sim_churn_reports_what_bench_churn_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let args = [
        "sim",
        "churn",
        "--nodes",
        "8",
        "--files",
        "4",
        "--size",
        "64KiB",
        "--duration",
        "20",
        "--mean-session",
        "20",
        "--mode",
        "restart",
        "--seed",
        "1",
        "--json",
    ];
    let out = ok(&home, &args);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for field in [
        "availability",
        "durability",
        "p50_ms",
        "p99_ms",
        "repair_bytes_per_stored_byte",
        "time_to_full_redundancy_s",
        "final_sample_s",
        "final_min_live",
        "final_mean_live",
        "final_blocks_below_k",
        "final_stat_failures",
        "lost_blocks",
        "reads",
        "failed_reads",
        "kills",
        "files",
        "nodes",
        "k",
        "m",
        "duration_s",
        "mean_session_s",
        "mode",
        "seed",
    ] {
        assert!(report.get(field).is_some(), "no {field}: {report}");
    }
    assert_eq!(report["durability"], 1.0, "{report}");
    assert_eq!(report["mode"], "restart");
    assert_eq!(report["files"], 4);
    assert!(report["kills"].as_u64().unwrap() > 0, "{report}");
    assert!(report["reads"].as_u64().unwrap() > 0, "{report}");
    assert!(report["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["lost_blocks"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    // The same seed replays the same run.
    let again = ok(&home, &args);
    assert_eq!(out, again);
}

#[test]
fn cairn_status_shows_an_owners_usage_and_a_put_past_the_owner_quota_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    // Three nodes that each let one owner store 1 MiB.
    let nodes = ProcessCluster::builder(Path::new(crate::common::CAIRN), 3)
        .configure(|_, spec| spec.args.extend(["--owner-quota".into(), "1MiB".into()]))
        .start()
        .unwrap();
    nodes.settle(std::time::Duration::from_secs(60)).unwrap();
    let api = nodes.node(0).api.clone().unwrap();
    let put = |name: &str, size: usize| {
        let input = tmp.path().join(name);
        seeded_file(&input, size, 5);
        let path = input.to_str().unwrap().to_string();
        ["put", &path, "-k", "2", "-m", "1", "--api", &api].map(str::to_string)
    };
    let small = put("small.bin", 200_000);
    ok(&home, &small.iter().map(String::as_str).collect::<Vec<_>>());

    let status = ok(&home, &["status", "--api", &api]);
    assert!(
        status.contains("quota:      1.0 MiB per owner; 1 owner(s) store here"),
        "{status}"
    );
    let you = status
        .lines()
        .find(|l| l.starts_with("you:"))
        .unwrap_or_else(|| panic!("status shows the owner's usage: {status}"));
    assert!(
        you.contains("stored on this node of your 1.0 MiB quota"),
        "{you}"
    );
    assert!(!you.contains(" 0 B "), "the small file is counted: {you}");

    // 4 MB with k = 2 is 2 MB on each of the three nodes: past every quota.
    let big = put("big.bin", 4_000_000);
    let error = fails(&home, &big.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        error.contains("over its quota"),
        "the refusal names the quota: {error}"
    );
}
