//! The `cairn` binary end to end, in one test binary (link time on 2 cores): the CLI
//! as a person drives it (`cli`), volumes and mounts (`mount`), and a network
//! partition between two network namespaces (`partition`). Processes are started and
//! awaited through `cairn-testkit` (`common` holds what is particular to the binary).

mod cli;
mod common;
mod mount;
mod partition;
