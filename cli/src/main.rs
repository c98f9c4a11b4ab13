//! `cairn`: the command line.

fn main() {}
