//! The registry client: one HTTP client per registry host, credentials
//! looked up once, every request retried on transient failures.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use sha2::{Digest as _, Sha256};

use crate::auth::{self, Credentials};
use crate::error::{classify, classify_io, Class, Error};
use crate::target::{is_loopback, Target};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

const ACCEPT: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Registries (`host[:port]`) that may be spoken to over plain http or
    /// with unverified certificates, besides loopback ones.
    pub insecure: Vec<String>,
    /// Tries per request before giving up on transient failures.
    pub attempts: u32,
    /// The first pause between tries; it doubles each time.
    pub backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure: Vec::new(),
            attempts: 5,
            backoff: Duration::from_millis(250),
        }
    }
}

/// A manifest or index as the registry served it, verified.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its bytes, exactly as served (the digest is over these).
    pub bytes: Bytes,
    /// Its digest.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
}

impl Manifest {
    /// True for an index (manifest list).
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

/// Progress of one blob transfer.
#[derive(Debug, Clone)]
pub enum Transfer {
    /// Bytes moved so far.
    Bytes(u64),
    /// The transfer failed and starts again.
    Retrying {
        /// The try about to start (2 for the first retry).
        attempt: u32,
        /// Why the previous one failed.
        error: String,
    },
}

/// How a blob got to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The repository already had it.
    Exists,
    /// Mounted from another repository of the same registry.
    Mounted(String),
    /// Uploaded.
    Uploaded,
}

struct Host {
    client: oci_client::Client,
    auth: RegistryAuth,
    source: Option<PathBuf>,
    authorized: tokio::sync::Mutex<HashSet<(String, bool)>>,
}

/// A client for every registry a build talks to.
pub struct Registry {
    options: Options,
    hosts: tokio::sync::Mutex<HashMap<String, Arc<Host>>>,
}

/// A failed step of a transfer: the registry's fault or ours.
enum Failure {
    Remote(Class),
    Local(std::io::Error),
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn client(protocol: ClientProtocol, insecure: bool) -> oci_client::Client {
    oci_client::Client::new(ClientConfig {
        protocol,
        accept_invalid_certificates: insecure,
        use_monolithic_push: true,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("rbuild/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    })
}

impl Registry {
    /// A client with `options`.
    pub fn new(options: Options) -> Self {
        Registry {
            options,
            hosts: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// True when `registry` may be spoken to without TLS verification.
    pub fn allows_insecure(&self, registry: &str) -> bool {
        is_loopback(registry) || self.options.insecure.iter().any(|h| h == registry)
    }

    async fn host(&self, registry: &str) -> Result<Arc<Host>, Error> {
        let mut hosts = self.hosts.lock().await;
        if let Some(h) = hosts.get(registry) {
            return Ok(Arc::clone(h));
        }
        let found = auth::lookup(registry)?;
        let auth = match found.credentials {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => RegistryAuth::Basic(username, password),
        };
        let client = if self.allows_insecure(registry) {
            // As Docker does for insecure registries: https when the
            // registry speaks it (certificate unchecked), else plain http.
            let https = client(ClientProtocol::Https, true);
            let probe = Target::new(registry, "library/probe", None, None).oci();
            match https
                .auth(&probe, &RegistryAuth::Anonymous, RegistryOperation::Pull)
                .await
            {
                Err(OciDistributionError::RequestError(_)) => client(ClientProtocol::Http, true),
                _ => https,
            }
        } else {
            client(ClientProtocol::Https, false)
        };
        let host = Arc::new(Host {
            client,
            auth,
            source: found.source,
            authorized: tokio::sync::Mutex::new(HashSet::new()),
        });
        hosts.insert(registry.to_string(), Arc::clone(&host));
        Ok(host)
    }

    /// Turns a classified failure into the error the user sees.
    fn error(&self, host: &Host, target: &Target, what: &str, class: Class) -> Error {
        let registry = target.registry.clone();
        match class {
            Class::Auth(detail) => {
                let hint = match &host.source {
                    Some(file) => format!(
                        "the registry refused the credentials for {registry} in {}: check them (docker login {registry})",
                        file.display()
                    ),
                    None => format!(
                        "no credentials for {registry} were found: log in (docker login {registry}) or add them to $DOCKER_CONFIG/config.json or $REGISTRY_AUTH_FILE"
                    ),
                };
                Error::Unauthorized {
                    registry,
                    detail,
                    hint,
                }
            }
            Class::NotFound(detail) => Error::NotFound {
                what: what.to_string(),
                detail,
            },
            Class::Transient(detail) => {
                let lower = detail.to_ascii_lowercase();
                let tls = ["invalidcontenttype", "certificate", "tls", "handshake"]
                    .iter()
                    .any(|w| lower.contains(w));
                if tls && !self.allows_insecure(&registry) {
                    Error::Insecure {
                        detail: format!(
                            "{detail}\nif {registry} serves plain http or a self-signed certificate, allow it with --insecure-registry {registry}"
                        ),
                        registry,
                    }
                } else {
                    Error::Unreachable { registry, detail }
                }
            }
            Class::Mismatch { expected, actual } => Error::DigestMismatch {
                registry,
                what: what.to_string(),
                expected,
                actual,
            },
            Class::Fatal(detail) => Error::Registry { registry, detail },
        }
    }

    async fn pause(&self, attempt: u32) {
        let factor = 1u32 << (attempt - 1).min(5);
        let wait = (self.options.backoff * factor).min(Duration::from_secs(4));
        tokio::time::sleep(wait).await;
    }

    /// Runs `f` until it succeeds, fails for good, or runs out of tries.
    async fn retry<T, F, Fut>(
        &self,
        host: &Host,
        target: &Target,
        what: &str,
        mut f: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let class = classify(&e);
                    if matches!(class, Class::Transient(_)) && attempt < self.options.attempts {
                        self.pause(attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(self.error(host, target, what, class));
                }
            }
        }
    }

    /// Gets a token (or settles on Basic auth) for `op` on the target's
    /// repository, once per repository and operation.
    async fn authorize(
        &self,
        host: &Host,
        target: &Target,
        op: RegistryOperation,
    ) -> Result<(), Error> {
        let key = (
            target.repository.clone(),
            matches!(op, RegistryOperation::Push),
        );
        let mut done = host.authorized.lock().await;
        if done.contains(&key) {
            return Ok(());
        }
        let oci = target.oci();
        self.retry(host, target, &target.to_string(), || {
            host.client.auth(&oci, &host.auth, op)
        })
        .await?;
        done.insert(key);
        Ok(())
    }

    /// Fetches the manifest or index `target` names, verifying it against
    /// the digest asked for (or the one the registry announced).
    pub async fn manifest(&self, target: &Target) -> Result<Manifest, Error> {
        let host = self.host(&target.registry).await?;
        self.authorize(&host, target, RegistryOperation::Pull)
            .await?;
        let oci = target.oci();
        let what = target.to_string();
        let (bytes, announced) = self
            .retry(&host, target, &what, || {
                host.client.pull_manifest_raw(&oci, &host.auth, ACCEPT)
            })
            .await?;
        let actual = sha256(&bytes);
        let expected = target.digest.clone().unwrap_or(announced);
        if expected.starts_with("sha256:") && expected != actual {
            return Err(Error::DigestMismatch {
                registry: target.registry.clone(),
                what: format!("manifest {what}"),
                expected,
                actual,
            });
        }
        let media_type =
            media_type_of(&bytes).map_err(|e| Error::Invalid(format!("{what}: {e}")))?;
        Ok(Manifest {
            bytes,
            digest: actual,
            media_type,
        })
    }

    /// Streams blob `digest` into the writer `open` makes, verifying it as
    /// it arrives; a transfer that fails midway starts over with a fresh
    /// writer. Returns the writer holding the whole, verified blob.
    pub async fn fetch_blob<W, F>(
        &self,
        target: &Target,
        digest: &str,
        size: u64,
        mut open: F,
        progress: &(dyn Fn(Transfer) + Sync),
    ) -> Result<W, Error>
    where
        W: Write,
        F: FnMut() -> std::io::Result<W>,
    {
        let host = self.host(&target.registry).await?;
        self.authorize(&host, target, RegistryOperation::Pull)
            .await?;
        let oci = target.oci();
        let what = format!("blob {digest}");
        let mut attempt = 1;
        loop {
            let mut out = open()?;
            let result: Result<(), Failure> = async {
                let mut stream = host
                    .client
                    .pull_blob_stream(&oci, digest)
                    .await
                    .map_err(|e| Failure::Remote(classify(&e)))?;
                let mut done = 0u64;
                while let Some(chunk) = stream.stream.next().await {
                    let chunk = chunk.map_err(|e| Failure::Remote(classify_io(&e)))?;
                    out.write_all(&chunk).map_err(Failure::Local)?;
                    done += chunk.len() as u64;
                    if size > 0 && done > size {
                        return Err(Failure::Remote(Class::Fatal(format!(
                            "{what} is larger than the {size} bytes its descriptor says"
                        ))));
                    }
                    progress(Transfer::Bytes(done));
                }
                if size > 0 && done != size {
                    return Err(Failure::Remote(Class::Transient(format!(
                        "{what} ended after {done} of {size} bytes"
                    ))));
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => return Ok(out),
                Err(Failure::Local(e)) => return Err(Error::Local(e)),
                Err(Failure::Remote(Class::Transient(e))) if attempt < self.options.attempts => {
                    attempt += 1;
                    progress(Transfer::Retrying { attempt, error: e });
                    self.pause(attempt - 1).await;
                }
                Err(Failure::Remote(class)) => return Err(self.error(&host, target, &what, class)),
            }
        }
    }

    /// True when the target's repository has blob `digest`.
    pub async fn has_blob(&self, target: &Target, digest: &str) -> Result<bool, Error> {
        let host = self.host(&target.registry).await?;
        self.authorize(&host, target, RegistryOperation::Push)
            .await?;
        let oci = target.oci();
        self.retry(&host, target, &format!("blob {digest}"), || {
            host.client.blob_exists(&oci, digest)
        })
        .await
    }

    /// Asks the registry to link blob `digest` from repository `from` into
    /// the target's repository; false when it would not (the blob must
    /// then be uploaded).
    pub async fn mount_blob(
        &self,
        target: &Target,
        from: &str,
        digest: &str,
    ) -> Result<bool, Error> {
        let host = self.host(&target.registry).await?;
        self.authorize(&host, target, RegistryOperation::Push)
            .await?;
        let source = Target::new(target.registry.clone(), from, None, None);
        // Reading `from` needs a pull token for it, which Basic auth and
        // anonymous registries do not; a failure only means no mount.
        let _ = self
            .authorize(&host, &source, RegistryOperation::Pull)
            .await;
        Ok(host
            .client
            .mount_blob(&target.oci(), &source.oci(), digest)
            .await
            .is_ok())
    }

    /// Uploads blob `digest` of `size` bytes, streaming it from the file
    /// `open` opens (again on each try).
    pub async fn push_blob<F>(
        &self,
        target: &Target,
        digest: &str,
        size: u64,
        open: F,
        progress: &(dyn Fn(Transfer) + Sync),
    ) -> Result<(), Error>
    where
        F: Fn() -> std::io::Result<std::fs::File>,
    {
        let host = self.host(&target.registry).await?;
        self.authorize(&host, target, RegistryOperation::Push)
            .await?;
        let oci = target.oci();
        let what = format!("blob {digest}");
        let mut attempt = 1;
        loop {
            let file = tokio::fs::File::from_std(open()?);
            let sent = Arc::new(AtomicU64::new(0));
            let stream = file_stream(file, Arc::clone(&sent));
            let push = host
                .client
                .push_blob_stream(&oci, stream, digest, Some(size));
            tokio::pin!(push);
            let result = loop {
                tokio::select! {
                    r = &mut push => break r,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        progress(Transfer::Bytes(sent.load(Ordering::Relaxed)));
                    }
                }
            };
            match result {
                Ok(_) => {
                    progress(Transfer::Bytes(size));
                    return Ok(());
                }
                Err(e) => {
                    let class = classify(&e);
                    if let Class::Transient(msg) = &class {
                        if attempt < self.options.attempts {
                            attempt += 1;
                            progress(Transfer::Retrying {
                                attempt,
                                error: msg.clone(),
                            });
                            self.pause(attempt - 1).await;
                            continue;
                        }
                    }
                    return Err(self.error(&host, target, &what, class));
                }
            }
        }
    }

    /// Puts a manifest under the target's tag (or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        target: &Target,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, Error> {
        let host = self.host(&target.registry).await?;
        self.authorize(&host, target, RegistryOperation::Push)
            .await?;
        let oci = target.oci();
        let body = Bytes::copy_from_slice(bytes);
        let content_type = http::HeaderValue::from_str(media_type)
            .map_err(|e| Error::Invalid(format!("media type {media_type:?}: {e}")))?;
        self.retry(&host, target, &target.to_string(), || {
            host.client
                .push_manifest_raw(&oci, body.clone(), content_type.clone())
        })
        .await?;
        Ok(sha256(bytes))
    }
}

/// A file as a stream of chunks, counting what was read.
fn file_stream(
    file: tokio::fs::File,
    sent: Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::try_unfold((file, sent), |(mut file, sent)| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::with_capacity(1 << 20);
        while buf.len() < buf.capacity() {
            if file.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        sent.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(Some((buf.freeze(), (file, sent))))
    })
}

/// The media type a manifest declares, or the one its shape implies.
fn media_type_of(bytes: &[u8]) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Err("the image uses Docker's schema 1 manifest format, which rbuild cannot read: push it again with a current client".into());
    }
    if let Some(m) = value.get("mediaType").and_then(|v| v.as_str()) {
        return match m {
            OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST => Ok(m.to_string()),
            other => Err(format!("unsupported manifest media type {other}")),
        };
    }
    Ok(if value.get("manifests").is_some() {
        OCI_INDEX.to_string()
    } else if value.get("layers").is_some() {
        OCI_MANIFEST.to_string()
    } else {
        return Err("the manifest has neither layers nor manifests".into());
    })
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_declared_or_implied() {
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","layers":[]}"#).unwrap(),
            DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            media_type_of(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        let schema1 = media_type_of(br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap_err();
        assert!(schema1.contains("schema 1"), "{schema1}");
        assert!(media_type_of(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#).is_err());
        assert!(media_type_of(b"not json").is_err());
    }
}
