//! rbuild's solver: the build graph IR, and (later) cache keys and scheduling.

pub mod graph;
