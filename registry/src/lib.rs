//! rbuild's OCI distribution client: resolve, pull and push images.
//!
//! Built on `oci-client` for the wire protocol and token flow, and on
//! `docker_credential` for Docker's credential files and helpers. What this
//! crate adds: one client per registry host with credentials looked up once,
//! plain http only where allowed (loopback hosts and `--insecure-registry`),
//! retries with backoff on 429, 5xx and dropped connections, verification
//! of every manifest and blob against its digest as it streams, and errors
//! that say what to do.
//!
//! It knows nothing of the store: blobs stream into whatever writer the
//! caller opens and out of whatever file it names.

pub mod auth;
mod client;
mod error;
mod target;

pub use client::{
    Manifest, Options, Pushed, Registry, Transfer, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
    OCI_INDEX, OCI_MANIFEST,
};
pub use error::Error;
pub use target::{is_loopback, Target};
