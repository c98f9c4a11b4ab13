//! What the `cairn` process tests share: running the binary with its own `CAIRN_HOME`,
//! children killed on drop, waiting (bounded) for a line a long-running command prints.

// Each test binary uses a part of this module.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The binary under test.
pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// A child process killed (and reaped) on drop, on every path.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
/// returns the process and the rest of that line.
pub fn start(home: &Path, args: &[&str], prefix: &str) -> (Guard, String) {
    let mut child = command(home, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix(&wanted) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let rest = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("`cairn {}` did not print {prefix:?}", args.join(" ")));
    (guard, rest)
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

/// `len` seeded pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Writes `len` seeded bytes to `path`; returns them.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let data = bytes(len, seed);
    std::fs::write(path, &data).unwrap();
    data
}
