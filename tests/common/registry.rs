//! A real registry for the tests: Debian's `docker-registry` (CNCF
//! distribution 2.x) on a free port of 127.0.0.1 (or another local address),
//! with its own config, storage directory and log, optionally behind
//! htpasswd basic auth or a Bearer token server of our own (RS256 JWTs
//! signed with `openssl`, verified by the registry's `auth.token`); plus
//! skopeo helpers that talk to it and writers for the credential files
//! rbuild reads (`$DOCKER_CONFIG/config.json`, `$REGISTRY_AUTH_FILE`,
//! credential helpers).
//!
//! The storage is read directly, never through rbuild: which tags point at
//! which manifests, which blobs are on disk and linked into a repository,
//! whether an image's blobs are all there; a blob can be tampered with and
//! a tag deleted. The access log (`"METHOD PATH HTTP/1.1" STATUS …`) is
//! parsed to tell which requests a client made (uploads, mounts).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{sha256_file_fast, tool, wait_until};

/// The registry binary Debian's `docker-registry` package installs.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// Whether the registry and skopeo are here; prints why a test is skipped
/// when not.
pub fn registry_tools(what: &str) -> bool {
    if !Path::new(REGISTRY_BIN).exists() {
        eprintln!(
            "note: {REGISTRY_BIN} is missing (apt-get install docker-registry): skipping {what}"
        );
        return false;
    }
    super::need("skopeo", what)
}

/// A port of `ip` nothing listens on right now (bound, then released).
pub fn free_port_on(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    l.local_addr().unwrap().port()
}

/// A free port of 127.0.0.1.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A running `docker-registry`; killed (and its temp dir removed) on drop.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ip: String,
    port: u16,
    auth: Option<(String, String)>,
    /// With `start_token`: the token server the registry sends clients to.
    token: Option<TokenServer>,
}

impl Registry {
    /// Starts a registry on a free port of 127.0.0.1; with `auth`, behind
    /// htpasswd basic auth for that one user.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        Self::start_on("127.0.0.1", auth)
    }

    /// Starts a registry listening on a free port of `ip` (a local address).
    pub fn start_on(ip: &str, auth: Option<(&str, &str)>) -> Registry {
        Self::launch(ip, auth, false)
    }

    /// Starts a registry on a free port of 127.0.0.1 that asks for Bearer
    /// tokens (`auth.token`) from a token server of ours, which grants every
    /// scope asked to `user:pass` (Basic credentials on the token request,
    /// or the OAuth2 password grant) and refuses anyone else with 401.
    pub fn start_token(user: &str, pass: &str) -> Registry {
        Self::launch("127.0.0.1", Some((user, pass)), true)
    }

    fn launch(ip: &str, auth: Option<(&str, &str)>, token: bool) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-registry-")
            .tempdir()
            .expect("registry temp dir");
        std::fs::create_dir_all(dir.path().join("storage")).unwrap();
        // Skopeo reads this instead of the host's credentials.
        std::fs::write(dir.path().join("skopeo-auth.json"), br#"{"auths":{}}"#).unwrap();
        if let (Some((user, pass)), false) = (auth, token) {
            let out = std::process::Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd runs (apt-get install apache2-utils)");
            assert!(
                out.status.success(),
                "htpasswd -Bbn failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
        }
        let mut reg = Registry {
            child: None,
            dir,
            ip: ip.to_string(),
            port: 0,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            token: None,
        };
        if token {
            let (user, pass) = auth.expect("a token registry needs a user");
            reg.token = Some(TokenServer::start(reg.dir.path(), user, pass));
        }
        let mut last = String::new();
        for _ in 0..8 {
            reg.port = free_port_on(ip);
            reg.write_config();
            match reg.spawn() {
                Ok(()) => return reg,
                // Most likely another process took the port meanwhile.
                Err(e) => last = e,
            }
        }
        panic!("docker-registry did not start: {last}");
    }

    fn write_config(&self) {
        let d = self.dir.path();
        let mut cfg = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  \
             delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: rbuild-test-secret\n",
            storage = d.join("storage").display(),
            addr = self.host(),
        );
        // No `storage.cache` section: no blob descriptor cache, so a blob
        // changed on disk is served as it now is.
        if let Some(t) = &self.token {
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    \
                 issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                t.realm(),
                t.cert.display()
            ));
        } else if self.auth.is_some() {
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: rbuild-test-realm\n    path: {}\n",
                d.join("htpasswd").display()
            ));
        }
        std::fs::write(d.join("config.yml"), cfg).unwrap();
    }

    /// Starts the process and waits for `GET /v2/` to answer.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = std::process::Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            // REGISTRY_* variables override the config file: none leak in.
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{REGISTRY_BIN}: {e}"))?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "docker-registry exited ({st}) on {}:\n{}",
                    self.host(),
                    self.log()
                ));
            }
            if let Some(code) = self.v2_status() {
                if code == 200 || code == 401 {
                    return Ok(());
                }
            }
            if Instant::now() > end {
                self.kill();
                return Err(format!(
                    "docker-registry on {} did not answer GET /v2/ within 20 s:\n{}",
                    self.host(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The status code of `GET /v2/`, or `None` if nothing answers.
    pub fn v2_status(&self) -> Option<u16> {
        let addr = (self.ip.as_str(), self.port)
            .to_socket_addrs()
            .ok()?
            .next()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET /v2/ HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.host()
        )
        .ok()?;
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 12 {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&got).into_owned();
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// `IP:PORT` (what goes before `/repo` in a reference).
    pub fn host(&self) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{}", self.ip, self.port)
        } else {
            format!("{}:{}", self.ip, self.port)
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `HOST/reference`.
    pub fn reference(&self, reference: &str) -> String {
        format!("{}/{reference}", self.host())
    }

    /// The storage root directory (`storage.filesystem.rootdirectory`).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the content of blob `sha256:…`.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Bytes under the storage root (blobs, uploads in progress, links).
    pub fn storage_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let mut n = 0;
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    match e.file_type() {
                        Ok(t) if t.is_dir() => n += walk(&e.path()),
                        Ok(t) if t.is_file() => n += e.metadata().map(|m| m.len()).unwrap_or(0),
                        _ => {}
                    }
                }
            }
            n
        }
        walk(&self.storage())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// What the registry logged so far (access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The user and password it requires, if any.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the registry (SIGKILL: no graceful shutdown) and waits for it.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("docker-registry did not restart on {}: {last}", self.host());
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    // -----------------------------------------------------------------
    // skopeo, talking to this registry
    // -----------------------------------------------------------------

    /// `skopeo SUBCOMMAND` with credentials isolated from the host's.
    pub fn skopeo(&self, sub: &str) -> assert_cmd::Command {
        let mut cmd = tool("skopeo");
        cmd.env(
            "REGISTRY_AUTH_FILE",
            self.dir.path().join("skopeo-auth.json"),
        )
        .env_remove("DOCKER_CONFIG")
        .arg(sub);
        cmd
    }

    fn creds_args(&self, flag: &str) -> Vec<String> {
        match &self.auth {
            Some((u, p)) => vec![flag.to_string(), format!("{u}:{p}")],
            None => vec![],
        }
    }

    /// `skopeo inspect` of `docker://HOST/reference` (flags appended), its
    /// stdout or its stderr.
    fn inspect_with(&self, reference: &str, extra: &[&str]) -> Result<Vec<u8>, String> {
        let mut cmd = self.skopeo("inspect");
        cmd.arg("--tls-verify=false")
            .args(self.creds_args("--creds"))
            .args(extra)
            .arg(format!("docker://{}", self.reference(reference)));
        let out = cmd.output().expect("skopeo runs");
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `skopeo inspect` as JSON, or skopeo's error.
    pub fn try_inspect(&self, reference: &str) -> Result<Value, String> {
        self.inspect_with(reference, &[])
            .map(|b| serde_json::from_slice(&b).expect("skopeo inspect prints JSON"))
    }

    /// `skopeo inspect` as JSON (`Digest`, `Layers`, `Env`…); panics on error.
    pub fn inspect(&self, reference: &str) -> Value {
        self.try_inspect(reference)
            .unwrap_or_else(|e| panic!("skopeo inspect {}: {e}", self.reference(reference)))
    }

    /// The image config (`skopeo inspect --config`).
    pub fn config(&self, reference: &str) -> Value {
        let b = self
            .inspect_with(reference, &["--config"])
            .unwrap_or_else(|e| panic!("skopeo inspect --config {reference}: {e}"));
        serde_json::from_slice(&b).expect("config is JSON")
    }

    /// The manifest bytes as the registry serves them (`skopeo inspect --raw`).
    pub fn raw_manifest(&self, reference: &str) -> Vec<u8> {
        self.inspect_with(reference, &["--raw"])
            .unwrap_or_else(|e| panic!("skopeo inspect --raw {reference}: {e}"))
    }

    /// The manifest as JSON and its digest (our own SHA-256 of the bytes).
    pub fn manifest(&self, reference: &str) -> (String, Value) {
        let raw = self.raw_manifest(reference);
        (
            super::digest_of(&raw),
            serde_json::from_slice(&raw).expect("manifest is JSON"),
        )
    }

    /// The layer digests of the manifest of `reference`.
    pub fn layer_digests(&self, reference: &str) -> Vec<String> {
        let (_, m) = self.manifest(reference);
        m["layers"]
            .as_array()
            .unwrap_or_else(|| panic!("no layers in manifest of {reference}: {m:#}"))
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// `skopeo copy docker://HOST/reference oci:DIR:TAG`; skopeo verifies
    /// every blob's digest. Err is skopeo's stderr.
    pub fn try_copy_to_oci(&self, reference: &str, dir: &Path, tag: &str) -> Result<(), String> {
        let mut cmd = self.skopeo("copy");
        cmd.args(["--quiet", "--src-tls-verify=false"])
            .args(self.creds_args("--src-creds"))
            .arg(format!("docker://{}", self.reference(reference)))
            .arg(format!("oci:{}:{tag}", dir.display()));
        let out = cmd.output().expect("skopeo runs");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn copy_to_oci(&self, reference: &str, dir: &Path, tag: &str) {
        self.try_copy_to_oci(reference, dir, tag)
            .unwrap_or_else(|e| panic!("skopeo copy {reference} to {}: {e}", dir.display()));
    }

    /// `skopeo copy oci:LAYOUT:TAG docker://HOST/reference`; returns the
    /// manifest digest the registry now has for it.
    pub fn push_layout(&self, layout: &Path, tag: &str, reference: &str) -> String {
        let mut cmd = self.skopeo("copy");
        cmd.args(["--quiet", "--dest-tls-verify=false"])
            .args(self.creds_args("--dest-creds"))
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}", self.reference(reference)));
        super::ok(&mut cmd);
        self.manifest(reference).0
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if let Some(t) = self.token.take() {
            t.stop();
        }
    }
}

// ---------------------------------------------------------------------------
// Credentials rbuild reads
// ---------------------------------------------------------------------------

/// Standard base64 (with padding).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A Docker `config.json` document with `user:pass` for `host`.
pub fn auth_json(host: &str, user: &str, pass: &str) -> Value {
    json!({"auths": {host: {"auth": base64(format!("{user}:{pass}").as_bytes())}}})
}

/// Writes `dir/config.json` (for `DOCKER_CONFIG=dir`) with `user:pass`
/// for `host`; returns `dir`.
pub fn docker_config(dir: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&auth_json(host, user, pass)).unwrap(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// A `DOCKER_CONFIG` directory with no credentials at all.
pub fn empty_docker_config(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"auths":{}}"#).unwrap();
    dir.to_path_buf()
}

/// Writes an auth file (for `REGISTRY_AUTH_FILE`) with `user:pass` for
/// `host`; returns its path.
pub fn auth_file(path: &Path, host: &str, user: &str, pass: &str) -> PathBuf {
    std::fs::write(
        path,
        serde_json::to_vec_pretty(&auth_json(host, user, pass)).unwrap(),
    )
    .unwrap();
    path.to_path_buf()
}

// ---------------------------------------------------------------------------
// Local addresses that are not loopback literals
// ---------------------------------------------------------------------------

/// An IPv4 address of this machine outside 127.0.0.0/8 that can be bound.
pub fn non_loopback_ipv4() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_unspecified())
        .filter(|a| TcpListener::bind((*a, 0)).is_ok())
        .map(|a| a.to_string())
}

/// A name from /etc/hosts that resolves only to 127.0.0.1 but is not one
/// of the loopback spellings (`localhost`…), e.g. the machine's own name.
pub fn loopback_alias() -> Option<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("127.0.0.1") {
            continue;
        }
        for name in words {
            let lower = name.to_ascii_lowercase();
            if lower == "localhost" || lower.starts_with("localhost.") || lower.contains("ip6") {
                continue;
            }
            let Ok(addrs) = (name, 80).to_socket_addrs() else {
                continue;
            };
            let addrs: Vec<_> = addrs.collect();
            if !addrs.is_empty()
                && addrs
                    .iter()
                    .all(|a| a.ip() == std::net::IpAddr::from([127, 0, 0, 1]))
            {
                return Some(name.to_string());
            }
        }
    }
    None
}

/// Polls until `path`'s directory tree contains a file matching `pred`.
pub fn wait_for_file(root: &Path, secs: f64, pred: impl Fn(&Path) -> bool) -> bool {
    fn find(p: &Path, pred: &dyn Fn(&Path) -> bool) -> bool {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let path = e.path();
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    find(&path, pred)
                } else {
                    pred(&path)
                }
            })
    }
    wait_until(secs, || find(root, &pred))
}

// ---------------------------------------------------------------------------
// The process, the access log and the storage, read directly
// ---------------------------------------------------------------------------

impl Registry {
    /// The registry's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The length of the log now; `access_since(mark)` reads only the
    /// requests logged after it.
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    /// Every request of the access log.
    pub fn access(&self) -> Vec<Access> {
        self.access_since(0)
    }

    /// The requests of the access log written after `mark` (`log_mark`).
    pub fn access_since(&self, mark: usize) -> Vec<Access> {
        let log = self.log();
        log.get(mark..)
            .unwrap_or("")
            .lines()
            .filter_map(Access::parse)
            .collect()
    }

    /// The requests after `mark`, one `METHOD PATH -> STATUS` a line, for
    /// failure messages.
    pub fn show_access_since(&self, mark: usize) -> String {
        let lines: String = self
            .access_since(mark)
            .iter()
            .map(|a| format!("  {} {} -> {}\n", a.method, a.decoded_path(), a.status))
            .collect();
        if lines.is_empty() {
            "  (no requests)\n".into()
        } else {
            lines
        }
    }

    fn v2(&self) -> PathBuf {
        self.storage().join("docker/registry/v2")
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.v2().join("repositories").join(repo)
    }

    /// Whether the blob store has data for `digest`.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_data(digest).is_file()
    }

    /// A blob's bytes as stored (not verified).
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let p = self.blob_data(digest);
        std::fs::read(&p).unwrap_or_else(|e| panic!("registry blob {}: {e}", p.display()))
    }

    /// A stored JSON blob (manifest, index or config).
    pub fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest))
            .unwrap_or_else(|e| panic!("registry blob {digest} is not JSON: {e}"))
    }

    /// Every complete blob in the blob store: digest → size. (Uploads in
    /// progress live under `repositories/*/_uploads` and are not listed.)
    pub fn blobs(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let root = self.v2().join("blobs/sha256");
        for pre in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for b in std::fs::read_dir(pre.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(md) = std::fs::metadata(b.path().join("data")) {
                    out.insert(
                        format!("sha256:{}", b.file_name().to_string_lossy()),
                        md.len(),
                    );
                }
            }
        }
        out
    }

    /// Whether a blob's data on disk hashes to its digest.
    pub fn blob_verifies(&self, digest: &str) -> bool {
        let p = self.blob_data(digest);
        p.is_file() && format!("sha256:{}", sha256_file_fast(&p)) == digest
    }

    /// Flips every bit of the byte in the middle of a blob's data (the size
    /// stays); returns the offset.
    pub fn tamper_blob(&self, digest: &str) -> u64 {
        let p = self.blob_data(digest);
        let mut data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!data.is_empty(), "blob {digest} is empty");
        let at = data.len() / 2;
        data[at] ^= 0xff;
        std::fs::write(&p, &data).unwrap();
        assert!(
            !self.blob_verifies(digest),
            "tampering with {digest} changed nothing"
        );
        at as u64
    }

    /// Repository names (`ns/app`): the directories holding `_manifests`.
    pub fn repositories(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(self.v2().join("repositories"), String::new())];
        while let Some((dir, name)) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !e.path().is_dir() {
                    continue;
                }
                let fname = e.file_name().to_string_lossy().into_owned();
                if fname == "_manifests" {
                    out.push(name.clone());
                } else if !fname.starts_with('_') {
                    let child = if name.is_empty() {
                        fname
                    } else {
                        format!("{name}/{fname}")
                    };
                    stack.push((e.path(), child));
                }
            }
        }
        out.sort();
        out
    }

    /// The manifest digest the tag `repo:tag` points at, from storage.
    pub fn tag(&self, repo: &str, tag: &str) -> Option<String> {
        let link = self
            .repo_dir(repo)
            .join("_manifests/tags")
            .join(tag)
            .join("current/link");
        std::fs::read_to_string(link)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Every tag of every repository: `repo:tag` → manifest digest.
    pub fn tags(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for repo in self.repositories() {
            let dir = self.repo_dir(&repo).join("_manifests/tags");
            for t in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let tag = t.file_name().to_string_lossy().into_owned();
                if let Some(d) = self.tag(&repo, &tag) {
                    out.insert(format!("{repo}:{tag}"), d);
                }
            }
        }
        out
    }

    /// The tags, one `repo:tag -> digest` a line, for failure messages.
    pub fn show_tags(&self) -> String {
        let tags = self.tags();
        if tags.is_empty() {
            return "  (no tags)\n".into();
        }
        tags.iter()
            .map(|(t, d)| format!("  {t} -> {d}\n"))
            .collect()
    }

    /// Removes the tag `repo:tag` from storage; the manifest stays,
    /// reachable by digest.
    pub fn delete_tag(&self, repo: &str, tag: &str) {
        let dir = self.repo_dir(repo).join("_manifests/tags").join(tag);
        std::fs::remove_dir_all(&dir)
            .unwrap_or_else(|e| panic!("delete tag {repo}:{tag} ({}): {e}", dir.display()));
    }

    /// The blobs (layers and configs) linked into `repo`, which it serves.
    pub fn repo_blobs(&self, repo: &str) -> Vec<String> {
        let dir = self.repo_dir(repo).join("_layers/sha256");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("link").is_file())
            .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
            .collect();
        out.sort();
        out
    }

    /// Whether `repo` has the manifest revision `digest` (linked, with data).
    pub fn has_manifest(&self, repo: &str, digest: &str) -> bool {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.repo_dir(repo)
            .join("_manifests/revisions/sha256")
            .join(hex)
            .join("link")
            .is_file()
            && self.has_blob(digest)
    }

    /// What `repo` cannot serve of the image `manifest_digest` (or of each
    /// manifest of an index): the manifest itself, or a config or layer
    /// whose data is missing, has another size than its descriptor, does
    /// not hash to its digest, or is not linked into the repository. Empty
    /// when the image is whole.
    pub fn missing_blobs(&self, repo: &str, manifest_digest: &str) -> Vec<String> {
        if !self.has_manifest(repo, manifest_digest) {
            return vec![format!("{manifest_digest} (the manifest itself)")];
        }
        let doc = self.json(manifest_digest);
        if let Some(ms) = doc["manifests"].as_array() {
            return ms
                .iter()
                .flat_map(|m| self.missing_blobs(repo, m["digest"].as_str().unwrap()))
                .collect();
        }
        let linked = self.repo_blobs(repo);
        let mut descs = vec![doc["config"].clone()];
        descs.extend(doc["layers"].as_array().cloned().unwrap_or_default());
        let mut missing = Vec::new();
        for d in descs {
            let digest = d["digest"].as_str().expect("descriptor digest").to_string();
            let size = d["size"].as_u64().unwrap_or(0);
            if !self.has_blob(&digest) {
                missing.push(format!("{digest} (no data)"));
            } else if std::fs::metadata(self.blob_data(&digest)).unwrap().len() != size {
                missing.push(format!("{digest} (size is not the descriptor's {size})"));
            } else if !self.blob_verifies(&digest) {
                missing.push(format!("{digest} (data does not hash to the digest)"));
            } else if !linked.contains(&digest) {
                missing.push(format!("{digest} (not linked into {repo})"));
            }
        }
        missing
    }

    /// The layer digests of a stored image manifest, bottom first.
    pub fn manifest_layers(&self, manifest_digest: &str) -> Vec<String> {
        self.json(manifest_digest)["layers"]
            .as_array()
            .expect("manifest.layers")
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// The requests the token server answered (Bearer registries only).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(|t| t.requests.lock().unwrap().clone())
            .unwrap_or_default()
    }
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    /// The path with its query, as sent (`/v2/ns/app/blobs/uploads/?mount=…`).
    pub path: String,
    pub status: u16,
    pub user_agent: String,
}

impl Access {
    /// Parses `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"`.
    pub fn parse(line: &str) -> Option<Access> {
        let (_, rest) = line.split_once("] \"")?;
        let (request, rest) = rest.split_once("\" ")?;
        let mut req = request.split(' ');
        let method = req.next()?.to_string();
        let path = req.next()?.to_string();
        if !req.next()?.starts_with("HTTP/") {
            return None;
        }
        let status = rest.split(' ').next()?.parse().ok()?;
        let user_agent = rest
            .rsplit_once(" \"")
            .map(|(_, ua)| ua.trim_end_matches('"').to_string())
            .unwrap_or_default();
        Some(Access {
            method,
            path,
            status,
            user_agent,
        })
    }

    /// The path with `%XX` escapes decoded (`sha256%3A…` → `sha256:…`).
    pub fn decoded_path(&self) -> String {
        percent_decode(&self.path)
    }

    /// Whether this request finished a blob upload of `digest` to `repo`
    /// (the `PUT …/blobs/uploads/…?digest=` of a chunked or monolithic
    /// upload, or a single-request `POST …/blobs/uploads/?digest=`).
    pub fn uploads(&self, repo: &str, digest: &str) -> bool {
        let p = self.decoded_path();
        p.starts_with(&format!("/v2/{repo}/blobs/uploads/"))
            && (self.method == "PUT" || self.method == "POST")
            && p.contains(&format!("digest={digest}"))
            && !p.contains("mount=")
    }

    /// Whether this request mounted `digest` into `repo` from another
    /// repository (answered 201 Created).
    pub fn mounts(&self, repo: &str, digest: &str) -> bool {
        let p = self.decoded_path();
        self.method == "POST"
            && p.starts_with(&format!("/v2/{repo}/blobs/uploads/"))
            && p.contains(&format!("mount={digest}"))
            && self.status == 201
    }
}

/// A port of 127.0.0.1 that nothing listens on (checked by connecting).
pub fn closed_port() -> u16 {
    for _ in 0..20 {
        let p = free_port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return p;
        }
    }
    panic!("no closed port found on 127.0.0.1");
}

/// Decodes `%XX` escapes.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// URL-safe base64 without padding (JWT).
pub fn base64url(data: &[u8]) -> String {
    base64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Decodes standard or URL-safe base64 (padding optional); `None` when
/// malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.trim().bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        bits = bits << 6 | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Some(out)
}

/// Writes a Docker credential helper `DIR/docker-credential-NAME` that
/// answers `get` with `user`/`pass` for any server and appends the server
/// it was asked about to `DIR/NAME.log`. Returns `DIR` (to put on PATH).
pub fn credential_helper(dir: &Path, name: &str, user: &str, pass: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join(format!("{name}.log"));
    let script = format!(
        "#!/bin/sh\n\
         # A Docker credential helper for the tests.\n\
         case \"$1\" in\n\
         get)\n\
         \x20   read -r server\n\
         \x20   printf '%s\\n' \"$server\" >> '{log}'\n\
         \x20   printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}\\n' \"$server\"\n\
         \x20   ;;\n\
         list) echo '{{}}' ;;\n\
         *) cat >/dev/null ;;\n\
         esac\n",
        log = log.display(),
    );
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).unwrap();
    super::chmod(&path, 0o755);
    dir.to_path_buf()
}

/// The servers a `credential_helper` was asked about, in order.
pub fn helper_queries(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// Bearer token server
// ---------------------------------------------------------------------------

/// The `service` a token registry names in its challenge.
pub const TOKEN_SERVICE: &str = "rbuild-test-registry";
/// The `iss` of the tokens (checked by the registry).
pub const TOKEN_ISSUER: &str = "rbuild-test-issuer";

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub method: String,
    /// The user name that came with it, if any.
    pub user: Option<String>,
    /// The scopes asked, e.g. `repository:ns/app:pull,push`.
    pub scopes: Vec<String>,
    pub service: Option<String>,
    /// 200 (token granted) or 401.
    pub status: u16,
}

/// A minimal token server: `GET /token?service=…&scope=…` with Basic
/// credentials, or the OAuth2 password grant `POST /token`, answered with
/// an RS256 JWT whose `x5c` header holds a self-signed certificate (the
/// registry's `rootcertbundle`), granting every scope asked.
struct TokenServer {
    port: u16,
    cert: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenServer {
    fn start(dir: &Path, user: &str, pass: &str) -> TokenServer {
        assert!(
            super::have("openssl"),
            "openssl is needed for the token server"
        );
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        let out = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-subj", "/CN=rbuild-test-token-issuer"])
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let der = std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509 runs");
        assert!(der.status.success(), "openssl x509 -outform DER failed");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let ctx = TokenCtx {
            key,
            x5c: base64(&der.stdout),
            user: user.to_string(),
            pass: pass.to_string(),
            requests: Arc::clone(&requests),
        };
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = ctx.serve(s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TokenServer {
            port,
            cert,
            stop,
            thread: Some(thread),
            requests,
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct TokenCtx {
    key: PathBuf,
    x5c: String,
    user: String,
    pass: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenCtx {
    fn serve(&self, mut s: TcpStream) -> std::io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            data.extend_from_slice(&buf[..n]);
            if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            if data.len() > 1 << 20 {
                return Ok(());
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("").to_string();
        let target = request_line.next().unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let mut body = data[head_end..].to_vec();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while body.len() < len {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
        let mut params = parse_form(query);
        if method == "POST" {
            params.extend(parse_form(&String::from_utf8_lossy(&body)));
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone())
        };
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect();
        let basic = headers
            .get("authorization")
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(base64_decode)
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let (user, pass) = match basic.as_deref().and_then(|b| b.split_once(':')) {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (get("username"), get("password")),
        };
        let granted = target.starts_with("/token")
            && user.as_deref() == Some(self.user.as_str())
            && pass.as_deref() == Some(self.pass.as_str());
        let status = if granted { 200 } else { 401 };
        self.requests.lock().unwrap().push(TokenRequest {
            method,
            user: user.clone(),
            scopes: scopes.clone(),
            service: get("service"),
            status,
        });
        let (status_line, body) = if granted {
            let token = self.sign(user.as_deref().unwrap_or(""), &scopes);
            (
                "200 OK",
                json!({"token": token, "access_token": token, "expires_in": 600}).to_string(),
            )
        } else {
            (
                "401 Unauthorized",
                json!({"errors": [{"code": "UNAUTHORIZED",
                    "message": "authentication required: wrong user name or password"}]})
                .to_string(),
            )
        };
        let mut resp = format!(
            "HTTP/1.1 {status_line}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if !granted {
            resp.push_str("WWW-Authenticate: Basic realm=\"rbuild-test-token\"\r\n");
        }
        resp.push_str("\r\n");
        resp.push_str(&body);
        s.write_all(resp.as_bytes())?;
        s.flush()
    }

    /// An RS256 JWT granting every action of `scopes`.
    fn sign(&self, user: &str, scopes: &[String]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<Value> = scopes
            .iter()
            .filter_map(|s| {
                // type:name:actions
                let (rest, actions) = s.rsplit_once(':')?;
                let (ty, name) = rest.split_once(':')?;
                Some(json!({
                    "type": ty,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": TOKEN_SERVICE,
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now,
            "jti": format!("{now}-{}", scopes.join(" ")),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl dgst runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        format!("{signing_input}.{}", base64url(&out.stdout))
    }
}

/// `a=b&c=d` with `+` and `%XX` decoded.
fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}
