//! Errors and warnings about a Dockerfile, each tied to a span of its text.

use crate::source::Span;

/// A Dockerfile that cannot be built: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What is wrong, in BuildKit's wording where BuildKit has one.
    pub message: String,
    /// Where in the Dockerfile.
    pub span: Span,
    /// What the user can do about it, when we know.
    pub help: Option<String>,
}

impl Error {
    /// An error at `span`.
    pub fn new(message: impl Into<String>, span: Span) -> Self {
        Error {
            message: message.into(),
            span,
            help: None,
        }
    }

    /// Adds a hint on how to fix it.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// A build check (lint) finding, named after BuildKit's rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Warning {
    /// The rule name, e.g. `JSONArgsRecommended`.
    pub rule: &'static str,
    /// The rule's one-line description.
    pub description: &'static str,
    /// The finding, specific to this Dockerfile.
    pub message: String,
    /// Where it was found.
    pub span: Span,
}

/// Result alias for the frontend.
pub type Result<T, E = Error> = std::result::Result<T, E>;
