//! (sim: being written)
