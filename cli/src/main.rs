//! `cairn`: the command line.

use clap::Parser;

mod sim;

/// cairn: a peer-to-peer storage network.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Experiments in the deterministic simulator.
    Sim(sim::SimArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Sim(args) => sim::run(args),
    }
}
