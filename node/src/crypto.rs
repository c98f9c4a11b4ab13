//! (crypto: being written)
