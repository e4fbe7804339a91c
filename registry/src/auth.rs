//! Credentials, found where Docker and Podman keep them.
//!
//! `REGISTRY_AUTH_FILE` (Podman's, and what CI systems set) is read first;
//! then `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`. Each file
//! may hold credentials inline (`auths`), or name a credential helper for
//! every registry (`credsStore`) or per registry (`credHelpers`).

use std::path::PathBuf;

use docker_credential::{CredentialRetrievalError, DockerCredential};

use crate::error::Error;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: anonymous access.
    Anonymous,
    /// A user name and password (or access token used as one).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
        }
    }
}

/// Credentials and the file they came from (for error messages).
#[derive(Debug, Clone)]
pub struct Found {
    /// The credentials.
    pub credentials: Credentials,
    /// The file that held them (or named their helper).
    pub source: Option<PathBuf>,
}

/// The files searched, in order.
pub fn config_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
        files.push(PathBuf::from(p));
    }
    let docker_dir = std::env::var_os("DOCKER_CONFIG")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
    if let Some(dir) = docker_dir {
        files.push(dir.join("config.json"));
    }
    files
}

/// The keys a registry's credentials may be stored under: Docker Hub's
/// are under its v1 index URL.
fn keys(registry: &str) -> Vec<String> {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => vec![
            "https://index.docker.io/v1/".into(),
            "docker.io".into(),
            "index.docker.io".into(),
        ],
        other => vec![other.to_string()],
    }
}

/// Looks up credentials for `registry` (host and port as written in the
/// reference). A missing file or a file without an entry for the registry
/// means anonymous access; an unreadable file or a failing helper is an
/// error, since silently going anonymous would hide the real problem.
pub fn lookup(registry: &str) -> Result<Found, Error> {
    lookup_in(&config_files(), registry)
}

/// [`lookup`] over the given files, first match wins.
pub fn lookup_in(files: &[PathBuf], registry: &str) -> Result<Found, Error> {
    for file in files.iter().cloned() {
        let text = match std::fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Credentials {
                    registry: registry.into(),
                    file,
                    detail: e.to_string(),
                })
            }
        };
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(&text) {
            return Err(Error::Credentials {
                registry: registry.into(),
                file,
                detail: format!("it is not valid JSON: {e}"),
            });
        }
        for key in keys(registry) {
            match docker_credential::get_credential_from_reader(text.as_slice(), &key) {
                Ok(DockerCredential::UsernamePassword(username, password)) => {
                    return Ok(Found {
                        credentials: Credentials::Basic { username, password },
                        source: Some(file),
                    })
                }
                Ok(DockerCredential::IdentityToken(token)) => {
                    // An identity token is a refresh token; registries that
                    // issue them also take it as the password of the
                    // `<token>` user in the token exchange.
                    return Ok(Found {
                        credentials: Credentials::Basic {
                            username: "<token>".into(),
                            password: token,
                        },
                        source: Some(file),
                    });
                }
                Err(CredentialRetrievalError::NoCredentialConfigured) => continue,
                // Helpers answer "credentials not found" for registries
                // they hold nothing for: Docker takes that as anonymous.
                Err(CredentialRetrievalError::HelperFailure { stdout, stderr, .. })
                    if stdout.contains("not found") || stderr.contains("not found") =>
                {
                    continue
                }
                Err(e) => {
                    return Err(Error::Credentials {
                        registry: registry.into(),
                        file,
                        detail: e.to_string().trim().to_string(),
                    })
                }
            }
        }
    }
    Ok(Found {
        credentials: Credentials::Anonymous,
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn auths_entries_and_precedence() {
        let dir = tempfile::tempdir().unwrap();
        // base64("alice:s3cret") and base64("bob:pw")
        let first = write(
            dir.path(),
            "auth.json",
            r#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6czNjcmV0"}}}"#,
        );
        let second = write(
            dir.path(),
            "config.json",
            r#"{"auths":{"127.0.0.1:5000":{"auth":"Ym9iOnB3"},"https://index.docker.io/v1/":{"auth":"Ym9iOnB3"},"other:1":{"username":"carol","password":"x"}}}"#,
        );
        let files = [first.clone(), second.clone()];
        let found = lookup_in(&files, "127.0.0.1:5000").unwrap();
        assert_eq!(found.credentials, basic("alice", "s3cret"));
        assert_eq!(found.source.as_deref(), Some(first.as_path()));
        let hub = lookup_in(&files, "docker.io").unwrap();
        assert_eq!(hub.credentials, basic("bob", "pw"));
        assert_eq!(hub.source.as_deref(), Some(second.as_path()));
        assert_eq!(
            lookup_in(&files, "other:1").unwrap().credentials,
            basic("carol", "x")
        );
        assert_eq!(
            lookup_in(&files, "nowhere:1").unwrap().credentials,
            Credentials::Anonymous
        );
    }

    #[test]
    fn missing_files_are_anonymous_and_broken_ones_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        assert_eq!(
            lookup_in(std::slice::from_ref(&missing), "r:1")
                .unwrap()
                .credentials,
            Credentials::Anonymous
        );
        let broken = write(dir.path(), "broken.json", "{not json");
        let err = lookup_in(&[broken], "r:1").unwrap_err().to_string();
        assert!(
            err.contains("broken.json") && err.contains("not valid JSON"),
            "{err}"
        );
    }

    #[test]
    fn credential_helpers_are_run() {
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-rbtest");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\nif [ \"$server\" = \"reg:1\" ]; then echo '{\"ServerURL\":\"reg:1\",\"Username\":\"h\",\"Secret\":\"s\"}'; else echo 'credentials not found in native keychain'; exit 1; fi\n",
        )
        .unwrap();

        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let config = write(dir.path(), "config.json", r#"{"credsStore":"rbtest"}"#);
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // The helper is found on PATH; only this test sets it.
        std::env::set_var("PATH", path);
        let found = lookup_in(std::slice::from_ref(&config), "reg:1").unwrap();
        assert_eq!(found.credentials, basic("h", "s"));
        let none = lookup_in(std::slice::from_ref(&config), "other:1").unwrap();
        assert_eq!(none.credentials, Credentials::Anonymous);
    }
}
