//! Shared helpers for the end-to-end tests of the `rbuild` binary: running
//! it, reading OCI layouts and image filesystems independently of rbuild's
//! own code (our own SHA-256, our own layer applier), crafting layouts by
//! hand, and finding the peer tools (skopeo, umoci, buildah).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use assert_cmd::Command;
use serde_json::{json, Value};
pub mod registry;

// ---------------------------------------------------------------------------
// Running rbuild and other tools
// ---------------------------------------------------------------------------

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `rbuild` with a clean environment and `root` as its store.
pub fn rbuild(root: &Path) -> Command {
    let mut cmd = Command::cargo_bin("rbuild").expect("rbuild binary");
    cmd.env_remove("BUILDKIT_PROGRESS")
        .env_remove("SOURCE_DATE_EPOCH")
        .env("RBUILD_ROOT", root)
        .env("NO_COLOR", "1");
    cmd
}

/// `rbuild build --progress=plain` with `root` as its store.
pub fn build(root: &Path) -> Command {
    let mut cmd = rbuild(root);
    cmd.arg("build").arg("--progress=plain");
    cmd
}

/// Runs `cmd` and returns its output, whatever the status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("command runs")
}

/// Runs `cmd` and asserts it succeeded, showing its stderr otherwise.
pub fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed ({:?}): {cmd:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cmd`, asserts it failed with exit status `code`, returns stderr.
pub fn fails(cmd: &mut Command, code: i32) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}: {cmd:?}\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// A command-line tool by name.
pub fn tool(name: &str) -> Command {
    Command::new(name)
}

/// Whether `name` is an executable on PATH.
pub fn have(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p).any(|d| {
                std::fs::metadata(d.join(name))
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// `have(name)`, printing a note when it is missing.
pub fn need(name: &str, what: &str) -> bool {
    if have(name) {
        true
    } else {
        eprintln!("note: `{name}` is not on PATH: skipping {what}");
        false
    }
}

/// Whether the tests run as root (then owners are real on disk).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether this test can run RUN steps (as root); says why it is skipped
/// when not.
pub fn root_only(what: &str) -> bool {
    if is_root() {
        true
    } else {
        eprintln!("note: not root: skipping {what} (RUN needs the rootful sandbox here; run_rootless.rs covers rootless builds)");
        false
    }
}

/// Runs a shell-free external command and returns stdout, asserting success.
pub fn ok_stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&ok(cmd).stdout).into_owned()
}

// ---------------------------------------------------------------------------
// SHA-256 (our own, so the tests do not trust rbuild's digests)
// ---------------------------------------------------------------------------

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Incremental SHA-256.
pub struct Sha256 {
    h: [u32; 8],
    buf: Vec<u8>,
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Sha256 {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            buf: Vec::with_capacity(64),
            len: 0,
        }
    }

    fn block(&mut self, b: &[u8]) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b2, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b2) ^ (a & c) ^ (b2 & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b2;
            b2 = a;
            a = t1.wrapping_add(t2);
        }
        for (s, v) in self.h.iter_mut().zip([a, b2, c, d, e, f, g, h]) {
            *s = s.wrapping_add(v);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.buf.is_empty() {
            let take = (64 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == 64 {
                let b = std::mem::take(&mut self.buf);
                self.block(&b);
                self.buf = b;
                self.buf.clear();
            }
        }
        while data.len() >= 64 {
            self.block(&data[..64]);
            data = &data[64..];
        }
        self.buf.extend_from_slice(data);
    }

    pub fn hex(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        while (self.buf.len() + pad.len()) % 64 != 56 {
            pad.push(0);
        }
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        let mut s = String::with_capacity(64);
        for v in self.h {
            let _ = write!(s, "{v:08x}");
        }
        s
    }
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.hex()
}

/// `sha256:…` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).expect("open file to hash");
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read file to hash");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.hex()
}

/// Deterministic pseudo-random bytes (for big files).
pub fn pattern_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Filesystem trees
// ---------------------------------------------------------------------------

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Other => "other",
        }
    }
}

/// One path of a filesystem tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// Hex SHA-256 of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target.
    pub target: Option<String>,
    pub mtime: i64,
    /// Created implicitly by a layer entry below it (no entry of its own).
    pub implicit: bool,
}

/// Paths (`/a/b`, the root left out) to nodes.
pub type Tree = BTreeMap<String, Node>;

/// The tree of a directory on disk (symlinks not followed).
pub fn dir_tree(root: &Path) -> Tree {
    let mut tree = Tree::new();
    walk(root, "", &mut tree);
    tree
}

fn walk(dir: &Path, prefix: &str, tree: &mut Tree) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}/{name}");
        let md = std::fs::symlink_metadata(e.path()).expect("lstat");
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid() as u64,
            gid: md.gid() as u64,
            size: if kind == Kind::File { md.len() } else { 0 },
            sha256: (kind == Kind::File).then(|| sha256_file(&e.path())),
            target: (kind == Kind::Symlink).then(|| {
                std::fs::read_link(e.path())
                    .expect("readlink")
                    .to_string_lossy()
                    .into_owned()
            }),
            mtime: md.mtime(),
            implicit: false,
        };
        tree.insert(path.clone(), node);
        if kind == Kind::Dir {
            walk(&e.path(), &path, tree);
        }
    }
}

/// Normalizes a tar entry name to `/a/b`; `None` for the root itself.
/// Refuses names that climb out with `..`.
fn clean_entry_name(raw: &str) -> Result<Option<String>, String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(format!("layer entry {raw:?} climbs out with `..`")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        Ok(None)
    } else {
        Ok(Some(format!("/{}", parts.join("/"))))
    }
}

fn remove_subtree(tree: &mut Tree, path: &str) {
    tree.remove(path);
    let prefix = format!("{path}/");
    let doomed: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        tree.remove(&k);
    }
}

/// Decompresses a layer blob by its magic bytes (gzip, zstd) or returns it.
pub fn decompress(blob: &[u8]) -> Vec<u8> {
    let prog: &[&str] = if blob.starts_with(&[0x1f, 0x8b]) {
        &["gzip", "-dc"]
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        &["zstd", "-dcq"]
    } else if blob.starts_with(b"BZh") {
        &["bzip2", "-dc"]
    } else if blob.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        &["xz", "-dc"]
    } else {
        return blob.to_vec();
    };
    let out = tool(prog[0])
        .args(&prog[1..])
        .write_stdin(blob.to_vec())
        .output()
        .unwrap_or_else(|e| panic!("{} runs: {e}", prog[0]));
    assert!(
        out.status.success(),
        "{} -d failed: {}",
        prog[0],
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Applies one (uncompressed) layer tar onto `tree` the way an OCI runtime
/// unpacks it: whiteouts remove, a directory entry over a directory updates
/// its metadata, anything else replaces. An entry below a symlink or
/// climbing out with `..` is an error (an image rbuild writes never has one).
pub fn apply_layer(tree: &mut Tree, layer: &[u8]) -> Result<(), String> {
    let mut ar = tar::Archive::new(layer);
    let entries = ar.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = clean_entry_name(&raw)? else {
            continue;
        };
        // Parents: create implicitly, refuse to go through a symlink.
        let comps: Vec<&str> = path[1..].split('/').collect();
        let mut parent = String::new();
        for c in &comps[..comps.len() - 1] {
            parent.push('/');
            parent.push_str(c);
            match tree.get(&parent) {
                Some(n) if n.kind == Kind::Dir => {}
                Some(n) if n.kind == Kind::Symlink => {
                    return Err(format!(
                        "layer entry {raw:?} goes through the symlink {parent}"
                    ))
                }
                Some(_) => {
                    return Err(format!(
                        "layer entry {raw:?} is below the non-directory {parent}"
                    ))
                }
                None => {
                    tree.insert(
                        parent.clone(),
                        Node {
                            kind: Kind::Dir,
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                            size: 0,
                            sha256: None,
                            target: None,
                            mtime: 0,
                            implicit: true,
                        },
                    );
                }
            }
        }
        let base = comps[comps.len() - 1];
        if let Some(hidden) = base.strip_prefix(".wh.") {
            let dir = &path[..path.len() - base.len() - 1];
            if hidden == ".wh..opq" {
                let keep = tree.get(dir).cloned();
                remove_subtree(tree, dir);
                if let Some(k) = keep {
                    tree.insert(dir.to_string(), k);
                }
            } else {
                remove_subtree(tree, &format!("{dir}/{hidden}"));
            }
            continue;
        }
        let h = entry.header().clone();
        let mode = h.mode().map_err(|e| e.to_string())? & 0o7777;
        let uid = h.uid().map_err(|e| e.to_string())?;
        let gid = h.gid().map_err(|e| e.to_string())?;
        let mtime = h.mtime().unwrap_or(0) as i64;
        let et = h.entry_type();
        let node = if et.is_dir() {
            Node {
                kind: Kind::Dir,
                mode,
                uid,
                gid,
                size: 0,
                sha256: None,
                target: None,
                mtime,
                implicit: false,
            }
        } else if et.is_symlink() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Node {
                kind: Kind::Symlink,
                mode,
                uid,
                gid,
                size: 0,
                sha256: None,
                target: Some(target),
                mtime,
                implicit: false,
            }
        } else if et.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let tpath = clean_entry_name(&target)?
                .ok_or_else(|| format!("hardlink {raw:?} to the root"))?;
            let t = tree
                .get(&tpath)
                .cloned()
                .ok_or_else(|| format!("hardlink {raw:?} to missing {target:?}"))?;
            t
        } else if et.is_file()
            || et == tar::EntryType::Continuous
            || et == tar::EntryType::GNUSparse
        {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(|e| e.to_string())?;
            Node {
                kind: Kind::File,
                mode,
                uid,
                gid,
                size: data.len() as u64,
                sha256: Some(sha256_hex(&data)),
                target: None,
                mtime,
                implicit: false,
            }
        } else {
            Node {
                kind: Kind::Other,
                mode,
                uid,
                gid,
                size: 0,
                sha256: None,
                target: None,
                mtime,
                implicit: false,
            }
        };
        match tree.get(&path) {
            Some(old) if old.kind == Kind::Dir && node.kind == Kind::Dir => {}
            Some(_) => remove_subtree(tree, &path),
            None => {}
        }
        tree.insert(path, node);
    }
    Ok(())
}

/// What `diff_trees` compares besides paths, kinds, content and link targets.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    pub modes: bool,
    pub owners: bool,
    /// Regular files' mtimes.
    pub file_mtimes: bool,
}

/// Human-readable differences between two trees (empty if equal).
pub fn diff_trees(a_name: &str, a: &Tree, b_name: &str, b: &Tree, cmp: Compare) -> Vec<String> {
    let mut out = Vec::new();
    for (p, na) in a {
        let Some(nb) = b.get(p) else {
            out.push(format!("{p}: in {a_name}, missing from {b_name}"));
            continue;
        };
        if na.kind != nb.kind {
            out.push(format!(
                "{p}: {} in {a_name}, {} in {b_name}",
                na.kind.name(),
                nb.kind.name()
            ));
            continue;
        }
        if na.sha256 != nb.sha256 {
            out.push(format!("{p}: content differs ({a_name} vs {b_name})"));
        }
        if na.target != nb.target {
            out.push(format!(
                "{p}: link target {:?} in {a_name}, {:?} in {b_name}",
                na.target, nb.target
            ));
        }
        if cmp.modes && na.kind != Kind::Symlink && na.mode != nb.mode {
            out.push(format!(
                "{p}: mode {:04o} in {a_name}, {:04o} in {b_name}",
                na.mode, nb.mode
            ));
        }
        if cmp.owners && (na.uid, na.gid) != (nb.uid, nb.gid) {
            out.push(format!(
                "{p}: owner {}:{} in {a_name}, {}:{} in {b_name}",
                na.uid, na.gid, nb.uid, nb.gid
            ));
        }
        if cmp.file_mtimes && na.kind == Kind::File && na.mtime != nb.mtime {
            out.push(format!(
                "{p}: mtime {} in {a_name}, {} in {b_name}",
                na.mtime, nb.mtime
            ));
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            out.push(format!("{p}: in {b_name}, missing from {a_name}"));
        }
    }
    out
}

/// A short listing of a tree, for failure messages.
pub fn show_tree(t: &Tree) -> String {
    let mut s = String::new();
    for (p, n) in t {
        let _ = write!(
            s,
            "  {p} {} {:04o} {}:{}",
            n.kind.name(),
            n.mode,
            n.uid,
            n.gid
        );
        if let Some(t) = &n.target {
            let _ = write!(s, " -> {t}");
        }
        if n.kind == Kind::File {
            let _ = write!(s, " ({} bytes)", n.size);
        }
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------------------
// OCI layouts
// ---------------------------------------------------------------------------

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout directory, read independently of rbuild.
pub struct Layout(pub PathBuf);

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout(dir.into())
    }

    pub fn index(&self) -> Value {
        read_json(&self.0.join("index.json"))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest has an algorithm");
        self.0.join("blobs").join(alg).join(hex)
    }

    /// A blob, its digest verified.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let p = self.blob_path(digest);
        let data = std::fs::read(&p).unwrap_or_else(|e| panic!("blob {}: {e}", p.display()));
        assert_eq!(digest_of(&data), digest, "blob {} is corrupt", p.display());
        data
    }

    pub fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).expect("blob is JSON")
    }

    /// The index descriptor tagged `tag` (`ref.name`), or the only one.
    pub fn descriptor(&self, tag: Option<&str>) -> Value {
        let index = self.index();
        let ms = index["manifests"].as_array().expect("index.manifests");
        match tag {
            Some(t) => ms
                .iter()
                .find(|m| m["annotations"][REF_NAME].as_str() == Some(t))
                .unwrap_or_else(|| {
                    panic!("no image tagged {t:?} in {}: {index:#}", self.0.display())
                })
                .clone(),
            None => {
                assert_eq!(
                    ms.len(),
                    1,
                    "expected one image in {}: {index:#}",
                    self.0.display()
                );
                ms[0].clone()
            }
        }
    }

    /// The image manifest for `tag` (following an index to linux/amd64 or the first).
    pub fn manifest(&self, tag: Option<&str>) -> (String, Value) {
        let desc = self.descriptor(tag);
        let mut digest = desc["digest"].as_str().expect("digest").to_string();
        let mut doc = self.json(&digest);
        while doc.get("manifests").is_some() {
            let ms = doc["manifests"].as_array().unwrap().clone();
            let pick = ms
                .iter()
                .find(|m| m["platform"]["architecture"] == "amd64")
                .unwrap_or(&ms[0]);
            digest = pick["digest"].as_str().unwrap().to_string();
            doc = self.json(&digest);
        }
        (digest, doc)
    }

    pub fn config(&self, tag: Option<&str>) -> Value {
        let (_, m) = self.manifest(tag);
        self.json(m["config"]["digest"].as_str().expect("config digest"))
    }

    /// The image's filesystem, applying its layers in order, and checking
    /// each layer's diffID against the config.
    pub fn tree(&self, tag: Option<&str>) -> Tree {
        let (_, m) = self.manifest(tag);
        let config = self.json(m["config"]["digest"].as_str().unwrap());
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let layers = m["layers"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            diff_ids.len(),
            layers.len(),
            "config diff_ids and manifest layers differ in number"
        );
        let mut tree = Tree::new();
        for (l, d) in layers.iter().zip(&diff_ids) {
            let blob = self.blob(l["digest"].as_str().unwrap());
            assert_eq!(blob.len() as u64, l["size"].as_u64().unwrap(), "layer size");
            let tar = decompress(&blob);
            assert_eq!(
                digest_of(&tar),
                d.as_str().unwrap(),
                "layer {} does not decompress to its diffID",
                l["digest"]
            );
            apply_layer(&mut tree, &tar).unwrap_or_else(|e| panic!("layer {}: {e}", l["digest"]));
        }
        tree
    }
}

pub fn read_json(p: &Path) -> Value {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()))
}

/// One entry of a hand-written tar.
#[derive(Clone, Debug)]
pub struct TarEntry {
    /// Written byte for byte into the header (no validation at all).
    pub name: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: Vec<u8>,
    pub link: Option<String>,
}

impl TarEntry {
    pub fn file(name: &str, data: &[u8], mode: u32) -> Self {
        TarEntry {
            name: name.into(),
            kind: tar::EntryType::Regular,
            mode,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            data: data.to_vec(),
            link: None,
        }
    }
    pub fn dir(name: &str, mode: u32) -> Self {
        TarEntry {
            kind: tar::EntryType::Directory,
            ..Self::file(name, b"", mode)
        }
    }
    pub fn symlink(name: &str, target: &str) -> Self {
        TarEntry {
            kind: tar::EntryType::Symlink,
            link: Some(target.into()),
            ..Self::file(name, b"", 0o777)
        }
    }
    pub fn hardlink(name: &str, target: &str) -> Self {
        TarEntry {
            kind: tar::EntryType::Link,
            link: Some(target.into()),
            ..Self::file(name, b"", 0o644)
        }
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }
}

/// A tar of `entries`, names written raw into ustar headers (so `../x` and
/// `/etc/x` can be crafted).
pub fn make_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        {
            let raw = h.as_old_mut();
            let n = e.name.as_bytes();
            assert!(n.len() < 100, "name too long for a raw header: {}", e.name);
            raw.name[..n.len()].copy_from_slice(n);
            if let Some(l) = &e.link {
                let l = l.as_bytes();
                assert!(l.len() < 100, "link too long");
                raw.linkname[..l.len()].copy_from_slice(l);
            }
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(e.data.len() as u64);
        h.set_cksum();
        b.append(&h, e.data.as_slice()).expect("append tar entry");
    }
    b.into_inner().expect("finish tar")
}

/// Writes a blob into a layout, returning its digest.
pub fn put_blob(dir: &Path, data: &[u8]) -> String {
    let d = digest_of(data);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    d
}

/// Writes (or adds to) an OCI layout at `dir` holding one image tagged
/// `tag`, whose layers are the given uncompressed tars and whose config is
/// `config` with `rootfs`, `os` and `architecture` filled in. Returns the
/// manifest digest.
pub fn write_layout(dir: &Path, tag: &str, layers: &[Vec<u8>], config: Value) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut config = config;
    let obj = config.as_object_mut().expect("config is an object");
    obj.entry("architecture").or_insert(json!("amd64"));
    obj.entry("os").or_insert(json!("linux"));
    let diff_ids: Vec<Value> = layers.iter().map(|l| json!(digest_of(l))).collect();
    obj.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(dir, &config_bytes);
    let layer_descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": put_blob(dir, l),
                "size": l.len(),
            })
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layer_descs,
    });
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let mdigest = put_blob(dir, &mbytes);
    let index_path = dir.join("index.json");
    let mut index = if index_path.exists() {
        read_json(&index_path)
    } else {
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
    };
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": mdigest,
        "size": mbytes.len(),
        "annotations": {REF_NAME: tag},
        "platform": {"architecture": "amd64", "os": "linux"},
    }));
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    mdigest
}

// ---------------------------------------------------------------------------
// Contexts on disk
// ---------------------------------------------------------------------------

/// Writes `content` to `path`, creating parent directories.
pub fn write_file(path: &Path, content: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

pub fn symlink(target: &str, link: &Path) {
    if let Some(p) = link.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

pub fn set_mtime(path: &Path, secs: u64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .unwrap();
    f.set_modified(t).unwrap();
}

/// Copies a directory tree, keeping symlinks as links and normalizing
/// modes (directories 0755, files 0644 or 0755 when executable), so a
/// checkout's umask does not leak into expectations.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    chmod(dst, 0o755);
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", src.display()))
        .map(|e| e.unwrap())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let from = e.path();
        let to = dst.join(e.file_name());
        let md = std::fs::symlink_metadata(&from).unwrap();
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&from).unwrap();
            std::os::unix::fs::symlink(t, &to).unwrap();
        } else if md.is_dir() {
            copy_tree(&from, &to);
        } else {
            std::fs::copy(&from, &to).unwrap();
            chmod(&to, if md.mode() & 0o100 != 0 { 0o755 } else { 0o644 });
        }
    }
}

/// Like `std::process::Command::status` for a tool, but quiet.
pub fn quiet_status(cmd: &mut std::process::Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Unpacks image `tag` of the layout at `layout` with umoci into `bundle`
/// and returns its rootfs; `--rootless` when not root.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let mut cmd = tool("umoci");
    cmd.arg("unpack");
    if !is_root() {
        cmd.arg("--rootless");
    }
    cmd.arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle);
    ok(&mut cmd);
    bundle.join("rootfs")
}

/// Extracts a tar file into `dest` with the `tar` crate (no ownership
/// restored, symlinks kept).
pub fn untar(archive: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let f = std::fs::File::open(archive).unwrap();
    let mut ar = tar::Archive::new(f);
    ar.set_preserve_permissions(true);
    ar.unpack(dest)
        .unwrap_or_else(|e| panic!("untar {}: {e}", archive.display()));
}

/// The entries of a tar file (names and raw bytes of regular files).
pub fn tar_members(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(data);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        out.insert(name, buf);
    }
    out
}

/// The tree under `dir` with everything except the listed top-level names
/// removed (helper for sentinel checks).
pub fn listing(dir: &Path) -> Vec<String> {
    dir_tree(dir).keys().cloned().collect()
}

// ---------------------------------------------------------------------------
// Build cases (testdata/build/<case>): runtime setup shared by build_cases
// and differential
// ---------------------------------------------------------------------------

/// Per-case runtime setup: special modes, owners, symlinks, big files,
/// crafted OCI layouts. Returns extra build flags.
pub fn case_setup(name: &str, ctx: &Path, tmp: &Path) -> Vec<String> {
    match name {
        "copy_dir_contents" | "copy_dir_new_dest_mode" => {
            if name == "copy_dir_new_dest_mode" {
                chmod(&ctx.join("src"), 0o750);
                return vec![];
            }
            chmod(&ctx.join("src"), 0o750);
            chmod(&ctx.join("src/sub"), 0o700);
            chmod(&ctx.join("src/sub/y.sh"), 0o755);
            vec![]
        }
        "copy_dir_merge_existing" => {
            chmod(&ctx.join("two/sub"), 0o700);
            vec![]
        }
        "copy_parents" | "copy_parents_dir_modes" => {
            chmod(&ctx.join("x"), 0o700);
            vec![]
        }
        "context_metadata" => {
            let a = ctx.join("owned.txt");
            if is_root() {
                std::os::unix::fs::chown(&a, Some(1234), Some(5678)).unwrap();
                std::os::unix::fs::chown(ctx.join("dir"), Some(99), Some(98)).unwrap();
            }
            chmod(&ctx.join("odd.txt"), 0o604);
            chmod(&ctx.join("dir"), 0o711);
            chmod(&ctx.join("dir/exec"), 0o750);
            set_mtime(&a, 1_234_567_890);
            set_mtime(&ctx.join("dir/exec"), 1_000_000_000);
            write_file(&ctx.join("empty"), "");
            write_file(&ctx.join("big.bin"), pattern_bytes(5 << 20, 7));
            write_file(&ctx.join("spa ce/ünï cödé.txt"), "unicode\n");
            vec![]
        }
        "symlinks_in_context" => {
            symlink("target.txt", &ctx.join("links/rel"));
            symlink("/etc/passwd", &ctx.join("links/abs"));
            symlink("../../outside.txt", &ctx.join("links/out"));
            symlink("nowhere", &ctx.join("links/dangling"));
            symlink("sub", &ctx.join("links/dirlink"));
            write_file(
                &ctx.parent().unwrap().join("outside.txt"),
                "SECRET outside the context\n",
            );
            vec![]
        }
        "symlink_source_scoped" => {
            // `out` climbs out of the context on the host, but BuildKit
            // resolves it inside the context root: /inside.txt.
            symlink("../../inside.txt", &ctx.join("links/out"));
            symlink("../inside.txt", &ctx.join("links/in"));
            write_file(
                &ctx.parent().unwrap().join("inside.txt"),
                "SECRET outside the context\n",
            );
            vec![]
        }
        "copy_through_base_symlink" => {
            std::fs::create_dir_all(ctx.join("rootfs/run/lock")).unwrap();
            symlink("/run", &ctx.join("rootfs/var/run"));
            symlink("../run/lock", &ctx.join("rootfs/var/lock"));
            vec![]
        }
        "copy_from_image" | "from_oci_layout_base" | "from_base_implicit_parent" => {
            let layout = tmp.join("base-layout");
            base_layout(&layout, name != "from_base_implicit_parent");
            vec![format!(
                "--build-context=base=oci-layout://{}:latest",
                layout.display()
            )]
        }
        "from_base_with_whiteouts" | "from_base_with_whiteouts_stage" => {
            // The second layer deletes a file, a file in a directory, and
            // hides a whole directory's old content (opaque whiteout).
            let layout = tmp.join("whiteout-layout");
            let l1 = make_tar(&[
                TarEntry::dir("dir/", 0o755),
                TarEntry::file("dir/a", b"a\n", 0o644),
                TarEntry::file("dir/b", b"b\n", 0o644),
                TarEntry::file("gone.txt", b"gone\n", 0o644),
                TarEntry::file("keep.txt", b"keep\n", 0o644),
                TarEntry::dir("opq/", 0o755),
                TarEntry::file("opq/x", b"x\n", 0o644),
                TarEntry::file("opq/y", b"y\n", 0o644),
                TarEntry::dir("opq/sub/", 0o755),
                TarEntry::file("opq/sub/s", b"s\n", 0o644),
            ]);
            let l2 = make_tar(&[
                TarEntry::file(".wh.gone.txt", b"", 0o644),
                TarEntry::file("dir/.wh.a", b"", 0o644),
                TarEntry::dir("opq/", 0o750),
                TarEntry::file("opq/.wh..wh..opq", b"", 0o644),
                TarEntry::file("opq/z", b"z\n", 0o644),
            ]);
            write_layout(&layout, "latest", &[l1, l2], json!({"config": {}}));
            vec![format!(
                "--build-context=base=oci-layout://{}:latest",
                layout.display()
            )]
        }
        _ => vec![],
    }
}

/// A hand-made base image: a small rootfs with owners and modes, and a
/// config with every field a stage inherits. Without `parent_entries`, the
/// second layer holds `app/old.txt` but no `app/` entry (valid: the
/// directory keeps its metadata from the first layer).
pub fn base_layout(dir: &Path, parent_entries: bool) {
    let layer1 = make_tar(&[
        TarEntry::dir("etc/", 0o755),
        TarEntry::file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nbase:x:300:301::/home/base:/bin/sh\n",
            0o644,
        ),
        TarEntry::file("etc/group", b"root:x:0:\nbase:x:301:\n", 0o644),
        TarEntry::dir("usr/", 0o755),
        TarEntry::dir("usr/share/", 0o755),
        TarEntry::dir("usr/share/base/", 0o750).owner(300, 301),
        TarEntry::file("usr/share/base/data.txt", b"base data\n", 0o640)
            .owner(300, 301)
            .mtime(1_500_000_000),
        TarEntry::symlink("usr/share/base/link", "data.txt"),
        TarEntry::dir("app/", 0o700).owner(300, 301),
    ]);
    let mut l2 = vec![TarEntry::file("app/old.txt", b"from layer 2\n", 0o600).owner(300, 301)];
    if parent_entries {
        l2.insert(0, TarEntry::dir("app/", 0o700).owner(300, 301));
    }
    let layer2 = make_tar(&l2);
    write_layout(
        dir,
        "latest",
        &[layer1, layer2],
        json!({
            "created": "2020-01-01T00:00:00Z",
            "author": "base author",
            "config": {
                "Env": ["PATH=/usr/bin:/bin", "BASE=1"],
                "Cmd": ["/bin/base-cmd"],
                "WorkingDir": "/app",
                "User": "base",
                "Labels": {"base.label": "yes", "shared": "base"},
                "ExposedPorts": {"22/tcp": {}},
                "Volumes": {"/base-data": {}},
                "StopSignal": "SIGINT"
            },
            "history": [
                {"created": "2020-01-01T00:00:00Z", "created_by": "base layer 1"},
                {"created": "2020-01-01T00:00:00Z", "created_by": "base meta", "empty_layer": true},
                {"created": "2020-01-01T00:00:00Z", "created_by": "base layer 2"}
            ]
        }),
    );
}

#[cfg(test)]
mod sha_tests {
    use super::*;

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Sha256::new();
        for chunk in pattern_bytes(1000, 1).chunks(7) {
            h.update(chunk);
        }
        assert_eq!(h.hex(), sha256_hex(&pattern_bytes(1000, 1)));
    }
}

// ---------------------------------------------------------------------------
// RUN tests: the busybox base, layers of stored images, plain progress,
// throwaway users for rootless runs
// ---------------------------------------------------------------------------

/// The `rbuild` binary cargo built for the tests.
pub fn rbuild_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("rbuild")
}

/// The busybox base (`testdata/busybox/make.sh`, made with this rbuild) as
/// an OCI layout tagged `latest`, made once per test process under the
/// target's tmp dir (world-readable, so a throwaway user can import it).
/// Layouts left by earlier processes that are gone are removed.
pub fn busybox_layout() -> &'static Path {
    static LAYOUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LAYOUT.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).unwrap();
        chmod(&base, 0o755);
        for e in std::fs::read_dir(&base).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("busybox-layout-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("busybox-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = base.join(format!("busybox-store-{}", std::process::id()));
        let out = std::process::Command::new(repo().join("testdata/busybox/make.sh"))
            .arg(&dir)
            .env("RBUILD", rbuild_bin())
            .env("RBUILD_ROOT", &store)
            .output()
            .expect("testdata/busybox/make.sh runs");
        let _ = std::fs::remove_dir_all(&store);
        assert!(
            out.status.success(),
            "testdata/busybox/make.sh failed (is busybox-static installed?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        chmod(&dir, 0o755);
        dir
    })
}

/// `--build-context=busybox=oci-layout://…`: `FROM busybox` uses the base.
pub fn busybox_flag() -> String {
    format!(
        "--build-context=busybox=oci-layout://{}:latest",
        busybox_layout().display()
    )
}

/// One entry of a layer tar, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// The name without a leading `./` or `/` and without a trailing `/`.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub data: Vec<u8>,
    pub link: Option<String>,
}

/// The entries of an (uncompressed) layer tar, in order.
pub fn layer_entries(tar: &[u8]) -> Vec<LayerEntry> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(tar);
    for e in ar.entries().expect("layer is a tar") {
        let mut e = e.expect("layer tar entry");
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let path = raw
            .trim_start_matches("./")
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let et = h.entry_type();
        let kind = if et.is_dir() {
            Kind::Dir
        } else if et.is_symlink() {
            Kind::Symlink
        } else if et.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        let link = e
            .link_name_bytes()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read layer entry");
        out.push(LayerEntry {
            path,
            kind,
            mode: h.mode().unwrap_or(0) & 0o7777,
            uid: h.uid().unwrap_or(u64::MAX),
            gid: h.gid().unwrap_or(u64::MAX),
            data,
            link,
        });
    }
    out
}

/// The layers (uncompressed tars, bottom first) of image `tag` in a store
/// (or any OCI layout); `tag` as in `index.json`, e.g. `app:latest`.
pub fn image_layers(root: &Path, tag: &str) -> Vec<Vec<u8>> {
    let layout = Layout::new(root);
    let (_, m) = layout.manifest(Some(tag));
    m["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| decompress(&layout.blob(l["digest"].as_str().unwrap())))
        .collect()
}

/// The layer digests of image `tag` in a store.
pub fn image_layer_digests(root: &Path, tag: &str) -> Vec<String> {
    let (_, m) = Layout::new(root).manifest(Some(tag));
    m["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

/// A layer's entries as `path kind mode uid:gid` lines, for messages.
pub fn show_layer(entries: &[LayerEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        let _ = writeln!(
            s,
            "  {} {} {:04o} {}:{}",
            e.path,
            e.kind.name(),
            e.mode,
            e.uid,
            e.gid
        );
    }
    s
}

/// The steps of `--progress=plain` output: (`[…] NAME` line without the
/// `#N `, final state: `CACHED`, `DONE`, `ERROR: …` or `` if none).
pub fn plain_steps(progress: &str) -> Vec<(String, String)> {
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    let mut states: BTreeMap<u64, String> = BTreeMap::new();
    for line in progress.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((n, text)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match names.entry(n) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(text.to_string());
            }
            std::collections::btree_map::Entry::Occupied(_) => {
                if text == "CACHED" || text.starts_with("DONE") || text.starts_with("ERROR") {
                    let state = if text.starts_with("DONE") {
                        "DONE".to_string()
                    } else {
                        text.to_string()
                    };
                    states.insert(n, state);
                }
            }
        }
    }
    names
        .into_iter()
        .map(|(n, name)| {
            let st = states.get(&n).cloned().unwrap_or_default();
            (name, st)
        })
        .collect()
}

/// The state of the one step whose name contains `needle`.
pub fn step_state(progress: &str, needle: &str) -> String {
    let steps = plain_steps(progress);
    let hits: Vec<_> = steps.iter().filter(|(n, _)| n.contains(needle)).collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one step named like {needle:?} in:\n{progress}"
    );
    hits[0].1.clone()
}

/// All regular files under `dir` (recursively, symlinks not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The files under `dir` whose content, or decompressed content (gzip,
/// zstd, …, and the members of tars), contains `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap_or_default();
            data_contains(&data, needle, 0)
        })
        .collect()
}

/// Whether `needle` is in `data`, or in its decompressed content, or in
/// one of its members if it is a tar (recursively, a few levels deep).
pub fn contains_deep(data: &[u8], needle: &[u8]) -> bool {
    data_contains(data, needle, 0)
}

fn data_contains(data: &[u8], needle: &[u8], depth: u32) -> bool {
    if contains_bytes(data, needle) {
        return true;
    }
    if depth > 2 {
        return false;
    }
    let compressed = data.starts_with(&[0x1f, 0x8b])
        || data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || data.starts_with(b"BZh")
        || data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]);
    if compressed {
        return data_contains(&decompress(data), needle, depth + 1);
    }
    // A tar (e.g. an exported archive): look into each member.
    if data.len() >= 512 && &data[257..262] == b"ustar" {
        let mut ar = tar::Archive::new(data);
        if let Ok(entries) = ar.entries() {
            for e in entries.flatten() {
                let mut e = e;
                let mut buf = Vec::new();
                if e.read_to_end(&mut buf).is_ok() && data_contains(&buf, needle, depth + 1) {
                    return true;
                }
            }
        }
    }
    false
}

/// A serializing lock for edits of /etc/passwd, /etc/subuid and friends by
/// the tests of one process (useradd refuses to run concurrently).
pub fn users_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A user made for one test (root only), with optional /etc/subuid and
/// /etc/subgid lines `NAME:START:COUNT`; the lines and the user are removed
/// on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    line: Option<String>,
}

impl TestUser {
    /// `useradd` a fresh user (no home, no automatic subordinate ids);
    /// `ranges` adds `(start, count)` to /etc/subuid and /etc/subgid.
    pub fn create(prefix: &str, ranges: Option<(u32, u32)>) -> Result<TestUser, String> {
        let _g = users_lock();
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}{}x{n}", std::process::id() % 100_000);
        let mut last = String::new();
        let mut made = false;
        for _ in 0..20 {
            let out = std::process::Command::new("useradd")
                .args([
                    "--no-create-home",
                    "--shell",
                    "/bin/sh",
                    "--user-group",
                    "-K",
                    "SUB_UID_COUNT=0",
                    "-K",
                    "SUB_GID_COUNT=0",
                    &name,
                ])
                .output()
                .map_err(|e| format!("useradd: {e}"))?;
            if out.status.success() {
                made = true;
                break;
            }
            // Another process holds /etc/passwd's lock: try again.
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if !made {
            return Err(format!("useradd {name} failed: {last}"));
        }
        let id = |flag: &str| -> Result<u32, String> {
            let out = std::process::Command::new("id")
                .args([flag, &name])
                .output()
                .map_err(|e| e.to_string())?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| format!("id {flag} {name}"))
        };
        let mut user = TestUser {
            name: name.clone(),
            uid: 0,
            gid: 0,
            line: None,
        };
        user.uid = id("-u")?;
        user.gid = id("-g")?;
        // Whatever useradd did, the test decides the ranges.
        for f in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = std::fs::read_to_string(f) {
                let kept: String = text
                    .lines()
                    .filter(|l| l.split(':').next() != Some(name.as_str()))
                    .map(|l| format!("{l}\n"))
                    .collect();
                if kept != text {
                    std::fs::write(f, kept).map_err(|e| format!("{f}: {e}"))?;
                }
            }
        }
        if let Some((start, count)) = ranges {
            let line = format!("{name}:{start}:{count}\n");
            for f in ["/etc/subuid", "/etc/subgid"] {
                let mut text = std::fs::read_to_string(f).unwrap_or_default();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&line);
                std::fs::write(f, text).map_err(|e| format!("{f}: {e}"))?;
            }
            user.line = Some(line);
        }
        Ok(user)
    }

    /// Gives `path` (recursively) to the user.
    pub fn own(&self, path: &Path) {
        let out = std::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(path)
            .output()
            .expect("chown runs");
        assert!(out.status.success(), "chown -R {}", path.display());
    }

    /// A command run as this user with a clean environment (PATH, HOME).
    pub fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        home: &Path,
    ) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(program);
        cmd.uid(self.uid)
            .gid(self.gid)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", home)
            .env("USER", &self.name)
            .env("NO_COLOR", "1")
            .current_dir(home);
        cmd
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _g = users_lock();
        if let Some(line) = &self.line {
            for f in ["/etc/subuid", "/etc/subgid"] {
                if let Ok(text) = std::fs::read_to_string(f) {
                    let _ = std::fs::write(f, text.replace(line.as_str(), ""));
                }
            }
        }
        for _ in 0..20 {
            let ok = std::process::Command::new("userdel")
                .arg(&self.name)
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok || !user_exists(&self.name) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .map(|t| t.lines().any(|l| l.split(':').next() == Some(name)))
        .unwrap_or(false)
}

/// Whether the tools a rootless test needs are here (root, useradd,
/// newuidmap…); `Some(why)` when not.
pub fn rootless_unavailable() -> Option<String> {
    if !is_root() {
        return Some("not running as root (the test creates a throwaway user)".into());
    }
    for t in ["useradd", "userdel", "newuidmap", "newgidmap", "chown"] {
        if !have(t) && !Path::new("/usr/sbin").join(t).exists() {
            return Some(format!("`{t}` is missing"));
        }
    }
    None
}

/// Hex SHA-256 of a file, with `sha256sum` for big files (our own SHA-256
/// is slow in unoptimized test builds).
pub fn sha256_file_fast(path: &Path) -> String {
    let big = std::fs::metadata(path)
        .map(|m| m.len() > 256 << 10)
        .unwrap_or(false);
    if big && have("sha256sum") {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum runs");
        assert!(out.status.success(), "sha256sum {}", path.display());
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    } else {
        sha256_file(path)
    }
}

/// An image of a store (or OCI layout) read once: its config, each layer's
/// entries, and the filesystem they make (whiteouts applied the OCI way).
pub struct StoredImage {
    pub manifest: Value,
    pub config: Value,
    /// Layer digests, bottom first.
    pub digests: Vec<String>,
    pub layers: Vec<Vec<LayerEntry>>,
    /// Path (no leading `/`) to the entry that made it.
    pub fs: BTreeMap<String, LayerEntry>,
}

impl StoredImage {
    /// Reads image `tag` (as in `index.json`), verifying every blob and
    /// each layer's diffID.
    pub fn load(root: &Path, tag: &str) -> StoredImage {
        let layout = Layout::new(root);
        let (_, manifest) = layout.manifest(Some(tag));
        let config = layout.json(manifest["config"]["digest"].as_str().unwrap());
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .expect("rootfs.diff_ids")
            .iter()
            .map(|d| d.as_str().unwrap().to_string())
            .collect();
        let mut digests = Vec::new();
        let mut layers = Vec::new();
        let mut fs: BTreeMap<String, LayerEntry> = BTreeMap::new();
        let descs = manifest["layers"]
            .as_array()
            .expect("manifest.layers")
            .clone();
        assert_eq!(descs.len(), diff_ids.len(), "layers vs diff_ids");
        for (l, diff_id) in descs.iter().zip(&diff_ids) {
            let digest = l["digest"].as_str().unwrap().to_string();
            let path = layout.blob_path(&digest);
            assert_eq!(
                format!("sha256:{}", sha256_file_fast(&path)),
                digest,
                "blob {} is corrupt",
                path.display()
            );
            let blob = std::fs::read(&path).unwrap();
            let tar = decompress(&blob);
            if tar.len() != blob.len() {
                assert_eq!(&digest_of(&tar), diff_id, "layer {digest} diffID");
            } else {
                assert_eq!(&digest, diff_id, "uncompressed layer {digest} diffID");
            }
            let entries = layer_entries(&tar);
            apply_entries(&mut fs, &entries);
            digests.push(digest);
            layers.push(entries);
        }
        StoredImage {
            manifest,
            config,
            digests,
            layers,
            fs,
        }
    }

    fn key(path: &str) -> &str {
        path.trim_start_matches('/').trim_end_matches('/')
    }

    pub fn get(&self, path: &str) -> Option<&LayerEntry> {
        self.fs.get(Self::key(path))
    }

    pub fn has(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// A regular file's content as text; panics when it is not one.
    pub fn text(&self, path: &str) -> String {
        let e = self
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the image:\n{}", self.listing()));
        assert_eq!(e.kind, Kind::File, "{path} is not a regular file");
        String::from_utf8_lossy(&e.data).into_owned()
    }

    pub fn listing(&self) -> String {
        let v: Vec<LayerEntry> = self.fs.values().cloned().collect();
        show_layer(&v)
    }

    /// `config.Env` as strings.
    pub fn env(&self) -> Vec<String> {
        self.config["config"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// Applies one layer's entries: its whiteouts hide what the layers below
/// made, then its entries are added (a directory over a directory keeps
/// what is below it; anything else replaces the subtree).
pub fn apply_entries(fs: &mut BTreeMap<String, LayerEntry>, entries: &[LayerEntry]) {
    let drop_subtree = |fs: &mut BTreeMap<String, LayerEntry>, p: &str, keep_self: bool| {
        let prefix = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        let doomed: Vec<String> = fs
            .keys()
            .filter(|k| k.starts_with(&prefix) || (!keep_self && k.as_str() == p))
            .cloned()
            .collect();
        for k in doomed {
            fs.remove(&k);
        }
    };
    for e in entries {
        let (dir, base) = match e.path.rsplit_once('/') {
            Some((d, b)) => (d, b),
            None => ("", e.path.as_str()),
        };
        if base == ".wh..wh..opq" {
            drop_subtree(fs, dir, true);
        } else if let Some(hidden) = base.strip_prefix(".wh.") {
            let p = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            drop_subtree(fs, &p, false);
        }
    }
    for e in entries {
        let base = e.path.rsplit('/').next().unwrap_or("");
        if base.starts_with(".wh.") || e.path.is_empty() {
            continue;
        }
        let mut e = e.clone();
        if e.kind == Kind::Other {
            if let Some(target) = &e.link {
                // A hard link: the target's content.
                let t = target.trim_start_matches("./").trim_start_matches('/');
                if let Some(t) = fs.get(t) {
                    e.kind = t.kind;
                    e.data = t.data.clone();
                }
            }
        }
        match fs.get(&e.path) {
            Some(old) if old.kind == Kind::Dir && e.kind == Kind::Dir => {}
            Some(_) => drop_subtree(fs, &e.path.clone(), false),
            None => {}
        }
        fs.insert(e.path.clone(), e);
    }
}

impl std::ops::Index<&str> for StoredImage {
    type Output = LayerEntry;

    fn index(&self, path: &str) -> &LayerEntry {
        self.get(path)
            .unwrap_or_else(|| panic!("{path} is not in the image:\n{}", self.listing()))
    }
}

/// Pids of the processes one of whose arguments is exactly `arg`.
pub fn pids_with_arg(arg: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
            if cmdline.split(|&b| b == 0).any(|a| a == arg.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub fn wait_until(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Sends `signal` (e.g. `INT`) to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(st.success(), "kill -{signal} {pid}");
}

/// Waits for a child for up to `secs` seconds; kills it and panics if it
/// does not end.
pub fn wait_child(child: &mut std::process::Child, secs: f64) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(secs, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    match status {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not end within {secs} s", child.id());
        }
    }
}
