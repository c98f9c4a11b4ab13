//! bench store
fn main() {}
