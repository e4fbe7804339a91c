//! The Dockerfile frontend: parse, expand, lower to the build graph.

pub mod shell;
