//! (erasure: being written)
