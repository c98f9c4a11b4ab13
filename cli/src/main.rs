//! `cairn`: the command line of the cairn storage network.
//!
//! Each subcommand lives in its own module; this file only parses arguments, sets up
//! logging (`RUST_LOG`, default `warn`) and prints errors with their whole chain.

mod bench;
mod chart;
mod churn_report;
mod daemon;
mod demo;
mod files;
mod keys;
mod mount;
mod remote;
mod sim;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// cairn: a peer-to-peer storage network of erasure-coded, owner-certified files.
#[derive(Parser)]
#[command(name = "cairn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create an owner key (ed25519), saved with mode 0600.
    ///
    /// The key signs your file certificates: whoever holds it can store and reclaim
    /// files in your name. Keep a copy; a lost key cannot be recovered.
    Keygen(keys::KeygenArgs),
    /// Store a file in the network; prints its reference (`cairn:f:...`).
    ///
    /// The file is cut into 1 MiB blocks, each erasure-coded into k + m fragments
    /// placed on the k + m nodes closest to the block's key. Your owner key signs an
    /// upload grant first and the file certificate last; it never leaves this process.
    Put(remote::PutArgs),
    /// Fetch a file by reference; every fragment and block is verified by the node.
    Get(remote::GetArgs),
    /// Describe a stored file: certificate, blocks, which node holds which fragment.
    Stat(remote::StatArgs),
    /// Reclaim a file's storage everywhere (owner only).
    Rm(remote::RmArgs),
    /// Show the node behind the API: id, leaf set, storage.
    Status(remote::StatusArgs),
    /// Run a storage node (`cairn node run --help`).
    Node(daemon::NodeArgs),
    /// Start a local network of N nodes in one command, with the API on the CLI's
    /// default address, so that `cairn put` in another terminal just works.
    Devnet(daemon::DevnetArgs),
    /// Erasure coding on one machine, no network: store a file in a local store,
    /// damage every block, get it back.
    Demo(demo::DemoArgs),
    /// Benchmarks with real node processes (`cairn bench churn --help`).
    Bench(bench::BenchArgs),
    /// Volumes: named, signed trees of files that `cairn mount` shows
    /// (`cairn volume create`, `cairn volume ls`).
    Volume(volume::VolumeArgs),
    /// Mount the network as a filesystem (root and /dev/fuse needed), in the foreground
    /// until Ctrl-C, SIGTERM or `cairn umount DIR`.
    ///
    /// The top level of DIR lists your volumes (`cairn:v:<key>`), writable; any other
    /// volume opens read-only at DIR/cairn:v:<key>, any stored file at
    /// DIR/.refs/cairn:f:<id>, and earlier states of a volume at
    /// DIR/<volume>/.versions/<sequence>/. A file is stored when closed (or fsync'd),
    /// and a new signed root is published shortly after; fsync waits for it. See
    /// docs/SEMANTICS.md.
    Mount(mount::MountArgs),
    /// Unmount a `cairn mount` (it publishes pending changes, then exits).
    Umount(mount::UmountArgs),
    /// Run the deterministic simulator (Pastry routing at up to 100,000 nodes; durability
    /// under churn, erasure coding against replication).
    Sim(sim::SimArgs),
}

/// `$CAIRN_HOME`, or `~/.cairn`: where keys and the local store live by default.
pub fn cairn_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CAIRN_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("HOME").map_or_else(
        || PathBuf::from(".cairn"),
        |h| PathBuf::from(h).join(".cairn"),
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // fuser warns that its own unmount failed after `cairn umount` has already
    // unmounted (EINVAL): noise, and our code reports real failures. The simulated
    // nodes' warnings are the logs a real node keeps to itself (`cairn bench churn`
    // leaves them in the nodes' log files), not the experiment's output.
    let default_filter = match cli.command {
        Command::Sim(_) => "warn,fuser::mnt=error,cairn_past=error",
        _ => "warn,fuser::mnt=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Keygen(args) => keys::keygen(args),
        Command::Put(args) => remote::put_command(args),
        Command::Get(args) => remote::get_command(args),
        Command::Stat(args) => remote::stat_command(args),
        Command::Rm(args) => remote::rm_command(args),
        Command::Status(args) => remote::status_command(args),
        Command::Node(args) => daemon::node_command(args),
        Command::Devnet(args) => daemon::devnet_command(args),
        Command::Demo(args) => demo::demo(args),
        Command::Sim(args) => sim::run(args),
        Command::Volume(args) => volume::volume_command(args),
        Command::Mount(args) => mount::mount_command(args),
        Command::Umount(args) => mount::umount_command(args),
        Command::Bench(args) => bench::bench_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
