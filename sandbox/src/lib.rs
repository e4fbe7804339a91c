//! The rootless container RUN executes in. (Being written.)
//!
//! This is the only crate with `unsafe` and raw syscalls.
