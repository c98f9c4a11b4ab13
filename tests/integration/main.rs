//! cairn's integration tests: one binary, one module per area.

mod bounds;
mod mount;
mod network;
mod pipeline;
mod repair;
mod rogue;
mod roots;
mod store;
mod store_crash;
mod store_full_disk;
mod testkit;
