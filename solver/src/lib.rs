//! rbuild's solver: the build graph IR, the build context, and executing
//! the graph (behind the `exec` feature).

pub mod graph;

#[cfg(feature = "exec")]
pub mod exec;

#[cfg(feature = "exec")]
pub mod context;
