//! rbuild's content store: blobs by digest in an OCI image layout, layers
//! written and applied as tar streams, and unpacked layer snapshots.

pub mod error;
pub mod gc;
pub mod index;
pub mod layer;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use error::{Error, Result};

/// This boot's id (`/proc/sys/kernel/random/boot_id`), if the kernel says:
/// what was written without a flush is trusted only within the boot that
/// wrote it.
pub fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}
pub use store::{Descriptor, Index, Store};

/// A content digest, `algorithm:hex` (rbuild writes sha256).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The digest a finished hasher computed.
    pub fn from_sha256(hasher: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// Parses `sha256:<64 hex>` (and sha384/sha512), refusing anything else,
    /// so a digest can never be used to build a path outside `blobs/`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidDigest(s.to_string());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let len = match alg {
            "sha256" => 64,
            "sha384" => 96,
            "sha512" => 128,
            _ => return Err(bad()),
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad());
        }
        Ok(Digest(s.to_string()))
    }

    /// `sha256`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map_or("sha256", |(a, _)| a)
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(_, h)| h)
    }

    /// `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
