//! (overlay: being written)
