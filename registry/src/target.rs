//! What a registry operation is about: a repository in a registry, and a
//! tag or digest in it.

use std::fmt;

/// A repository in a registry, with the tag or digest an operation names.
///
/// The frontend parses and normalises references (`alpine` →
/// `docker.io/library/alpine:latest`); this crate takes them already
/// split, so it never second-guesses Docker's normalisation rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Registry host and port as written, e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/alpine`.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if any; it wins over the tag.
    pub digest: Option<String>,
}

impl Target {
    /// A target for `registry/repository[:tag][@digest]`.
    pub fn new(
        registry: impl Into<String>,
        repository: impl Into<String>,
        tag: Option<String>,
        digest: Option<String>,
    ) -> Self {
        Target {
            registry: registry.into(),
            repository: repository.into(),
            tag,
            digest,
        }
    }

    /// The same repository, naming `digest`.
    pub fn at_digest(&self, digest: &str) -> Target {
        Target {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag or digest the registry is asked for (`latest` when neither).
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host requests go to: Docker Hub's API lives at
    /// `registry-1.docker.io`, as Docker resolves it.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }

    pub(crate) fn oci(&self) -> oci_client::Reference {
        match &self.digest {
            Some(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.clone(),
            ),
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                self.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

/// The host that serves `registry`'s API.
pub(crate) fn host_of(registry: &str) -> &str {
    match registry {
        "docker.io" | "index.docker.io" => "registry-1.docker.io",
        other => other,
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// True when `host` (with or without a port) names this machine: Docker
/// and BuildKit allow plain http to such registries without being told.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        }),
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "registry:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn display_and_reference() {
        let t = Target::new("127.0.0.1:5000", "ns/app", Some("1".into()), None);
        assert_eq!(t.to_string(), "127.0.0.1:5000/ns/app:1");
        assert_eq!(t.reference(), "1");
        let d = t.at_digest("sha256:abc");
        assert_eq!(d.reference(), "sha256:abc");
        assert_eq!(d.to_string(), "127.0.0.1:5000/ns/app:1@sha256:abc");
        assert_eq!(
            Target::new("docker.io", "library/alpine", None, None).host(),
            "registry-1.docker.io"
        );
    }
}
