//! cairn's integration tests: one binary, one module per area.

mod store;
mod store_crash;
