//! The placement experiment (PAST §5).
