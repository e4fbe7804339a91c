//! Errors of the content store.

use std::io;
use std::path::{Path, PathBuf};

use crate::Digest;

/// Something the store could not do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A blob the store should have is missing.
    #[error("blob {0} is missing from the store")]
    MissingBlob(Digest),
    /// Stored data does not match its digest or format.
    #[error("{0}")]
    Corrupt(String),
    /// Not a digest rbuild accepts.
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    InvalidDigest(String),
    /// A layer tries to write outside its root or otherwise cannot be applied.
    #[error("refusing layer entry {entry:?}: {reason}")]
    Hostile {
        /// The entry's path as written in the tar.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A source file changed while a layer was made from it (the layer
    /// is not kept; writing it again reads the file as it is now).
    #[error("{0} changed while it was copied")]
    SourceChanged(String),
    /// The cache-key index could not be read or written.
    #[error("cache index {0}")]
    Index(String),
    /// A JSON document could not be written.
    #[error("JSON: {0}")]
    Json(serde_json::Error),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A JSON serialisation error.
    pub fn json(e: serde_json::Error) -> Self {
        Error::Json(e)
    }

    /// An error while reading blob `digest`: corrupt content stays distinguishable.
    pub fn from_read(digest: &Digest, path: &Path, e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::InvalidData {
            Error::Corrupt(format!("{e} ({})", path.display()))
        } else {
            let _ = digest;
            Error::io(path, e)
        }
    }
}

/// Result alias for the store.
pub type Result<T, E = Error> = std::result::Result<T, E>;
