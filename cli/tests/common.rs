//! What the `cairn` process tests share: running the binary with its own `CAIRN_HOME`,
//! and starting a long-running command until it prints a line. Starting, stopping and
//! waiting for child processes is `cairn_testkit::process`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use cairn_testkit::Devnet;
use cairn_testkit::process::{ChildProcess, START_WITHIN};

/// The binary under test.
pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// `cairn ARGS` with `home` as `CAIRN_HOME`, no inherited `CAIRN_API`, no stdin.
pub fn command(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(CAIRN);
    command
        .args(args)
        .env("CAIRN_HOME", home)
        .env_remove("CAIRN_API")
        .stdin(Stdio::null());
    command
}

/// Starts `cairn ARGS` and waits (bounded) for a stdout line starting with `prefix`;
/// returns the process (stopped and reaped on drop) and the rest of that line.
pub fn start(home: &Path, args: &[&str], prefix: &str) -> (ChildProcess, String) {
    let what = format!("`cairn {}`", args.join(" "));
    let mut process = ChildProcess::spawn(what, command(home, args), None).unwrap();
    let rest = process.wait_for_line(prefix, START_WITHIN).unwrap();
    (process, rest)
}

/// `cairn devnet` of `nodes` nodes in `dir`, with `home` as `CAIRN_HOME`.
pub fn devnet(home: &Path, dir: &Path, nodes: usize) -> Devnet {
    Devnet::start(command(home, &[]), nodes, dir, None).unwrap()
}

/// Runs `cairn ARGS` to its end.
pub fn cairn(home: &Path, args: &[&str]) -> Output {
    command(home, args).output().unwrap()
}

/// Runs `cairn ARGS`, which must succeed; its stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = cairn(home, args);
    assert!(
        out.status.success(),
        "`cairn {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cairn ARGS`, which must fail; its stderr.
pub fn fails(home: &Path, args: &[&str]) -> String {
    let out = cairn(home, args);
    assert!(
        !out.status.success(),
        "`cairn {}` should fail",
        args.join(" ")
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
