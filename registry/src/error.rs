//! Registry errors, each saying what went wrong and what to do about it.

use std::path::PathBuf;

use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest or blob does not exist.
    #[error("{what}: not found in the registry ({detail})")]
    NotFound {
        /// The reference or blob asked for.
        what: String,
        /// The registry's words.
        detail: String,
    },
    /// The registry refused the credentials, or wants some and got none.
    #[error("{registry}: authentication failed ({detail}); {hint}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The registry's words.
        detail: String,
        /// What to do.
        hint: String,
    },
    /// The registry could not be reached, even after retries.
    #[error("cannot reach registry {registry}: {detail}")]
    Unreachable {
        /// The registry.
        registry: String,
        /// Why, from the network stack.
        detail: String,
    },
    /// Content did not hash to the digest it was fetched by.
    #[error("{what} from {registry} does not match its digest {expected} (its content hashes to {actual}): the registry's copy is corrupt or was tampered with")]
    DigestMismatch {
        /// The registry.
        registry: String,
        /// What was fetched (`blob sha256:…`, a manifest reference).
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// Any other answer the registry gave.
    #[error("{registry}: {detail}")]
    Registry {
        /// The registry.
        registry: String,
        /// What happened.
        detail: String,
    },
    /// Plain http was needed but not allowed.
    #[error("{registry}: {detail}")]
    Insecure {
        /// The registry.
        registry: String,
        /// What happened.
        detail: String,
    },
    /// A credentials file or helper failed.
    #[error("cannot get credentials for {registry} from {}: {detail}", file.display())]
    Credentials {
        /// The registry.
        registry: String,
        /// The config file.
        file: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Reading or writing local content failed.
    #[error("{0}")]
    Local(#[from] std::io::Error),
    /// The registry sent something that is not a usable manifest.
    #[error("{0}")]
    Invalid(String),
}

/// How to react to a failed request.
#[derive(Debug)]
pub(crate) enum Class {
    /// Worth another try: 429, 5xx, dropped or refused connections.
    Transient(String),
    /// Credentials missing or refused.
    Auth(String),
    /// 404.
    NotFound(String),
    /// Streamed content hashed to something else.
    Mismatch { expected: String, actual: String },
    /// Nothing another try would change.
    Fatal(String),
}

/// The error and every cause below it, `: `-joined, as reqwest's own
/// message ("error sending request") hides the interesting part.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn by_status(code: u16, detail: String) -> Class {
    match code {
        401 | 403 => Class::Auth(detail),
        404 => Class::NotFound(detail),
        408 | 429 | 500..=599 => Class::Transient(detail),
        _ => Class::Fatal(detail),
    }
}

fn mismatch(e: &DigestError) -> Option<Class> {
    match e {
        DigestError::VerificationError { expected, actual } => Some(Class::Mismatch {
            expected: expected.clone(),
            actual: actual.clone(),
        }),
        _ => None,
    }
}

/// An io error from a blob stream: a digest mismatch detected while
/// streaming, or the connection dropping under it.
pub(crate) fn classify_io(e: &std::io::Error) -> Class {
    if let Some(d) = e.get_ref().and_then(|i| i.downcast_ref::<DigestError>()) {
        if let Some(c) = mismatch(d) {
            return c;
        }
    }
    Class::Transient(chain(e))
}

pub(crate) fn classify(e: &OciDistributionError) -> Class {
    match e {
        OciDistributionError::AuthenticationFailure(m) => Class::Auth(m.trim().to_string()),
        OciDistributionError::UnauthorizedError { url } => {
            Class::Auth(format!("401 Unauthorized for {url}"))
        }
        OciDistributionError::ServerError { code, message, url } => {
            let m = message.trim();
            let detail = if m.is_empty() {
                format!("HTTP {code} for {url}")
            } else {
                format!("HTTP {code}: {m}")
            };
            by_status(*code, detail)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let detail = envelope
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        format!("{:?}", e.code)
                    } else {
                        e.message.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            match envelope.errors.first().map(|e| &e.code) {
                Some(OciErrorCode::Unauthorized | OciErrorCode::Denied) => Class::Auth(detail),
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound,
                ) => Class::NotFound(detail),
                Some(OciErrorCode::Toomanyrequests) => Class::Transient(detail),
                _ => Class::Fatal(detail),
            }
        }
        OciDistributionError::RequestError(r) => match r.status() {
            Some(s) => by_status(s.as_u16(), chain(r)),
            None => Class::Transient(chain(r)),
        },
        OciDistributionError::IoError(io) => classify_io(io),
        OciDistributionError::DigestError(d) => {
            mismatch(d).unwrap_or_else(|| Class::Fatal(d.to_string()))
        }
        other => Class::Fatal(chain(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://r/v2/x/manifests/1".into(),
            message: String::new(),
        }
    }

    #[test]
    fn statuses_decide_whether_to_retry() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(&server(code)), Class::Transient(_)),
                "{code}"
            );
        }
        for code in [401, 403] {
            assert!(matches!(classify(&server(code)), Class::Auth(_)), "{code}");
        }
        assert!(matches!(classify(&server(404)), Class::NotFound(_)));
        assert!(matches!(classify(&server(400)), Class::Fatal(_)));
    }

    #[test]
    fn a_digest_mismatch_in_a_stream_is_not_retried() {
        let e = std::io::Error::other(DigestError::VerificationError {
            expected: "sha256:aa".into(),
            actual: "sha256:bb".into(),
        });
        match classify_io(&e) {
            Class::Mismatch { expected, actual } => {
                assert_eq!(expected, "sha256:aa");
                assert_eq!(actual, "sha256:bb");
            }
            other => panic!("{other:?}"),
        }
        let dropped = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(classify_io(&dropped), Class::Transient(_)));
    }
}
