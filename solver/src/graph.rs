//! The build graph IR.
