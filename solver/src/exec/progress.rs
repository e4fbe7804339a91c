//! Progress events from the solver; the CLI decides how to show them.

use std::time::Duration;

use crate::graph::OpId;

/// Something that happened to an op.
#[derive(Debug, Clone)]
pub enum Event {
    /// The op started.
    Started {
        /// Which op.
        op: OpId,
        /// Its progress name.
        name: String,
    },
    /// The op finished.
    Done {
        /// Which op.
        op: OpId,
        /// How long it took.
        elapsed: Duration,
        /// Whether its result came from the cache.
        cached: bool,
    },
    /// The op failed.
    Failed {
        /// Which op.
        op: OpId,
        /// Why.
        error: String,
    },
    /// A line of output from the op.
    Log {
        /// Which op.
        op: OpId,
        /// The line, without its newline.
        line: String,
    },
    /// Something the user should know that does not fail the build.
    Warning {
        /// The message.
        message: String,
    },
}

/// Receives progress events, from any thread.
pub trait Progress: Send + Sync {
    /// Handles one event.
    fn event(&self, event: Event);
}

/// Discards events.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event) {}
}
