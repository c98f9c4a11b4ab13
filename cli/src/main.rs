//! `cairn`: the command line of the cairn storage network.
//!
//! Each subcommand lives in its own module; this file only parses arguments, sets up
//! logging (`RUST_LOG`, default `warn`) and prints errors with their whole chain.

mod demo;
mod files;
mod keys;
mod sim;

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
    /// Store a file; prints its reference (`cairn:f:...`).
    ///
    /// The file is cut into 1 MiB blocks, each erasure-coded into k + m fragments,
    /// and a certificate signed by your owner key covers it all. Until networked nodes
    /// exist, fragments go to the local store (`--store`).
    Put(files::PutArgs),
    /// Fetch a file by reference, verifying every fragment and block.
    Get(files::GetArgs),
    /// Show the local store's usage, or describe a stored file.
    Stat(files::StatArgs),
    /// Run cairn's main job with no setup: store a file, damage the store, get it back.
    Demo(demo::DemoArgs),
    /// Run the deterministic simulator (Pastry routing at up to 100,000 nodes).
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => keys::keygen(args),
        Command::Put(args) => files::put_command(args),
        Command::Get(args) => files::get_command(args),
        Command::Stat(args) => files::stat_command(args),
        Command::Demo(args) => demo::demo(args),
        Command::Sim(args) => sim::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
