//! Errors while executing the graph.

use std::io;

/// Why an op (or the build) failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Something in the user's input: a missing source, an unknown user.
    #[error("{0}")]
    User(String),
    /// The feature an op needs has not landed yet.
    #[error("{0} is not supported yet by this version of rbuild")]
    Unsupported(String),
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] rbuild_cache::Error),
    /// An I/O error.
    #[error(transparent)]
    Io(io::Error),
    /// A registry failed.
    #[error(transparent)]
    Registry(#[from] rbuild_registry::Error),
    /// A cached layer kept as a snapshot no longer gives its content (its
    /// files were changed behind rbuild's back). The snapshot is gone, so
    /// solving again rebuilds the steps that made it.
    #[error("a cached layer was damaged: {0}")]
    DamagedCache(String),
    /// A step the plan expected from the cache was not there: the solve
    /// starts again, solving everything (never shown to users).
    #[error("internal: a cached step was not found after all")]
    Replan,
    /// A bug: an invariant of the graph did not hold.
    #[error("internal error: {0}")]
    Internal(String),
    /// An op failed; names which.
    #[error("{name}: {source}")]
    Op {
        /// The op's progress name.
        name: String,
        /// What went wrong.
        #[source]
        source: Box<ExecError>,
    },
}

/// Result alias for execution.
pub type Result<T, E = ExecError> = std::result::Result<T, E>;
