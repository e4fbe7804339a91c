//! Errors, and the form in which the init and the container's pid 1 send them back.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// What went wrong in the sandbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `op` names it (and what it was for), `path` the path
    /// it was given (empty when there is none).
    #[error("{op}{}: {source}", path_suffix(.path))]
    Sys {
        /// The operation, e.g. `mount overlay` or `pivot_root`.
        op: String,
        /// The path involved (a host path, or a path inside the container).
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The command could not be executed (runc's wording). `code` is what a shell
    /// would exit with: 127 when it is not found, 126 when it cannot be executed.
    #[error("exec: \"{program}\": {message}")]
    Exec {
        /// `args[0]` as given.
        program: String,
        /// Why, e.g. `executable file not found in $PATH`.
        message: String,
        /// 127 (not found) or 126 (found but not executable).
        code: i32,
    },
    /// The spec cannot be run as given.
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    /// [`Cancel::cancel`](crate::Cancel::cancel) was called; the container was killed.
    #[error("cancelled")]
    Cancelled,
    /// User namespaces are unavailable or could not be set up.
    #[error("{0}")]
    UserNamespace(String),
    /// The sandbox's init process failed in an unexpected way.
    #[error("sandbox init: {0}")]
    Init(String),
}

fn path_suffix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" {path}")
    }
}

impl Error {
    pub(crate) fn sys(
        op: impl Into<String>,
        path: impl fmt::Display,
        source: impl Into<io::Error>,
    ) -> Self {
        Self::Sys {
            op: op.into(),
            path: path.to_string(),
            source: source.into(),
        }
    }
}

/// An error as the init or pid 1 reports it over the report pipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ChildError {
    Sys {
        op: String,
        path: String,
        errno: i32,
    },
    Exec {
        program: String,
        message: String,
        code: i32,
    },
    Invalid(String),
}

impl ChildError {
    pub(crate) fn sys(
        op: impl Into<String>,
        path: impl fmt::Display,
        err: rustix::io::Errno,
    ) -> Self {
        Self::Sys {
            op: op.into(),
            path: path.to_string(),
            errno: err.raw_os_error(),
        }
    }

    pub(crate) fn io(op: impl Into<String>, path: impl fmt::Display, err: &io::Error) -> Self {
        Self::Sys {
            op: op.into(),
            path: path.to_string(),
            // Errors without an errno (none are expected) read as EIO.
            errno: err.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl From<ChildError> for Error {
    fn from(e: ChildError) -> Self {
        match e {
            ChildError::Sys { op, path, errno } => Error::Sys {
                op,
                path,
                source: io::Error::from_raw_os_error(errno),
            },
            ChildError::Exec {
                program,
                message,
                code,
            } => Error::Exec {
                program,
                message,
                code,
            },
            ChildError::Invalid(m) => Error::InvalidSpec(m),
        }
    }
}

/// Adds the operation and path to a rustix result, for the child side.
pub(crate) trait Ctx<T> {
    fn ctx(self, op: &str, path: impl fmt::Display) -> Result<T, ChildError>;
}

impl<T> Ctx<T> for Result<T, rustix::io::Errno> {
    fn ctx(self, op: &str, path: impl fmt::Display) -> Result<T, ChildError> {
        self.map_err(|e| ChildError::sys(op, path, e))
    }
}

impl<T> Ctx<T> for Result<T, io::Error> {
    fn ctx(self, op: &str, path: impl fmt::Display) -> Result<T, ChildError> {
        self.map_err(|e| ChildError::io(op, path, &e))
    }
}
