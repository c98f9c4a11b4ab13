//! bench micro
fn main() {}
