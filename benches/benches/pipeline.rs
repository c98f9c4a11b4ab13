//! bench pipeline
fn main() {}
