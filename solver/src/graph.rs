//! The build graph: what to build, with no Dockerfile syntax left in it.
//!
//! The frontend lowers a Dockerfile into a [`Graph`]: content-producing ops
//! (image and context sources, exec, file ops) linked by their inputs, and per
//! stage the image config the Dockerfile accumulated. Every op carries a
//! digest of its canonical definition and its inputs' digests, so the same
//! Dockerfile and arguments give the same digests on every machine, and any
//! change to an op changes its digest and its descendants' only.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A content digest, `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// The digest as `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or(&self.0, |(_, h)| h)
    }

    /// Wraps an already-formatted `algorithm:hex` string, checking its shape.
    pub fn parse(s: &str) -> Option<Self> {
        let (alg, hex) = s.split_once(':')?;
        let ok = match alg {
            "sha256" => hex.len() == 64,
            "sha384" => hex.len() == 96,
            "sha512" => hex.len() == 128,
            _ => false,
        };
        (ok && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An OCI platform: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Platform {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU architecture in Go's naming, e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// Architecture variant, e.g. `v7` for `arm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// Why a platform string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// Not `os[/arch[/variant]]` or one of the parts is unknown.
    #[error("{0:?}: unknown operating system or architecture: invalid argument")]
    Unknown(String),
    /// Too many `/`-separated parts or bad characters.
    #[error("{0:?}: invalid platform specifier format: invalid argument")]
    Format(String),
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
    "wasip1",
];

const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

impl Platform {
    /// The platform this binary runs on.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        let variant = (architecture == "arm").then(|| "v7".to_string());
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant,
        }
    }

    /// Parses `os[/arch[/variant]]` with containerd's normalisation
    /// (`x86_64` → `amd64`, `aarch64` → `arm64`, `arm64/v8` → `arm64`, a lone
    /// architecture takes the host OS, a lone OS the host architecture).
    pub fn parse(spec: &str) -> Result<Self, PlatformError> {
        let lower = spec.to_ascii_lowercase();
        if lower.is_empty()
            || !lower
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'/')
        {
            return Err(PlatformError::Format(spec.to_string()));
        }
        let parts: Vec<&str> = lower.split('/').collect();
        let host = Platform::host();
        let (os, arch, variant) = match parts.as_slice() {
            [one] => {
                if KNOWN_OS.contains(one) {
                    (
                        one.to_string(),
                        host.architecture.clone(),
                        host.variant.clone(),
                    )
                } else {
                    let (arch, variant) = normalize_arch(one, "");
                    if !KNOWN_ARCH.contains(&arch.as_str()) {
                        return Err(PlatformError::Unknown(spec.to_string()));
                    }
                    (host.os.clone(), arch, variant)
                }
            }
            [os, arch] => {
                let (arch, variant) = normalize_arch(arch, "");
                (os.to_string(), arch, variant)
            }
            [os, arch, variant] => {
                let (arch, variant) = normalize_arch(arch, variant);
                (os.to_string(), arch, variant)
            }
            _ => return Err(PlatformError::Format(spec.to_string())),
        };
        let os = if os == "macos" {
            "darwin".to_string()
        } else {
            os
        };
        if !KNOWN_OS.contains(&os.as_str()) || !KNOWN_ARCH.contains(&arch.as_str()) {
            return Err(PlatformError::Unknown(spec.to_string()));
        }
        Ok(Platform {
            os,
            architecture: arch,
            variant,
        })
    }
}

fn normalize_arch(arch: &str, variant: &str) -> (String, Option<String>) {
    let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
    match arch {
        "i386" => ("386".into(), None),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64".into(),
            if variant == "v1" { None } else { some(variant) },
        ),
        "aarch64" | "arm64" => (
            "arm64".into(),
            match variant {
                "8" | "v8" | "" => None,
                v => Some(v.to_string()),
            },
        ),
        "armhf" => ("arm".into(), Some("v7".into())),
        "armel" => ("arm".into(), Some("v6".into())),
        "arm" => (
            "arm".into(),
            Some(match variant {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                v => v.to_string(),
            }),
        ),
        other => (other.to_string(), some(variant)),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An index into [`Graph::ops`].
pub type OpId = usize;

/// The whole build: ops in dependency order and the stages they serve.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graph {
    /// Every op, each listed after all of its inputs. Identical ops appear once.
    pub ops: Vec<Op>,
    /// The stages the target needs, in Dockerfile order.
    pub stages: Vec<Stage>,
    /// Index into `stages` of the stage to export.
    pub target: usize,
    /// Proxy settings (`HTTP_PROXY=…`, both cases) from proxy build
    /// arguments. The executor adds them to every exec op's environment;
    /// they are in no digest and no history, like BuildKit's proxy env.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
}

impl Graph {
    /// The stage to export.
    pub fn target_stage(&self) -> &Stage {
        &self.stages[self.target]
    }

    /// All ops `id` depends on, transitively, plus `id` itself, in order.
    pub fn closure(&self, id: OpId) -> Vec<OpId> {
        let mut seen = vec![false; self.ops.len()];
        let mut stack = vec![id];
        while let Some(next) = stack.pop() {
            if std::mem::replace(&mut seen[next], true) {
                continue;
            }
            stack.extend(self.ops[next].inputs.iter().copied());
        }
        (0..self.ops.len()).filter(|&i| seen[i]).collect()
    }

    /// The ops stage `index`'s own instructions produce: what its root
    /// depends on, less its base image and the stages it reads from.
    pub fn stage_ops(&self, index: usize) -> Vec<OpId> {
        let Some(stage) = self.stages.get(index) else {
            return Vec::new();
        };
        let mut ops: std::collections::BTreeSet<OpId> =
            self.closure(stage.root).into_iter().collect();
        for (i, other) in self.stages.iter().enumerate() {
            if i != index && ops.contains(&other.root) && other.root != stage.root {
                for op in self.closure(other.root) {
                    ops.remove(&op);
                }
            }
        }
        if let Base::Stage { stage: base } = stage.base {
            if let Some(b) = self.stages.get(base) {
                for op in self.closure(b.root) {
                    ops.remove(&op);
                }
            }
        }
        // The base image or scratch: the end of the chain of first inputs.
        let mut base = stage.root;
        while let Some(&first) = self.ops[base].inputs.first() {
            base = first;
        }
        ops.remove(&base);
        ops.into_iter().collect()
    }
}

/// One op: what it does, what it reads, and its digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// Digest of the op's canonical definition and its inputs' digests.
    pub digest: Digest,
    /// Ops whose results this op reads, referred to by index from `kind`.
    pub inputs: Vec<OpId>,
    /// What the op does.
    pub kind: OpKind,
    /// How to show the op; not part of the digest.
    pub meta: OpMeta,
}

/// Presentation data for an op: never part of its digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpMeta {
    /// What progress output calls the op, e.g. `[build 2/4] RUN make`.
    pub name: String,
    /// The Dockerfile location it came from, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
}

/// A place in a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    /// 1-based first line.
    pub start_line: usize,
    /// 1-based last line.
    pub end_line: usize,
}

/// What an op does. Input indices refer to [`Op::inputs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OpKind {
    /// An empty filesystem.
    Scratch,
    /// An image's filesystem.
    Image(ImageSource),
    /// Files from a build context.
    Context(ContextSource),
    /// A git repository checkout.
    Git(GitSource),
    /// A file downloaded over http(s).
    Http(HttpSource),
    /// A command run in a container.
    Exec(Exec),
    /// File operations applied to input 0.
    File(FileOp),
    /// Layers of several inputs stacked in order (COPY --link).
    Merge,
}

/// An image reference to resolve and unpack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    /// The reference as written after expansion, e.g. `busybox:1.36`.
    pub reference: String,
    /// The platform to select from a multi-platform index.
    pub platform: Platform,
}

/// A build context: the main one (`context`) or a named one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSource {
    /// `context` for the main context, else the `--build-context` name.
    pub name: String,
}

/// A git repository (ADD of a git URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitSource {
    /// Repository URL.
    pub remote: String,
    /// Branch, tag or commit (`#ref` in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Subdirectory (`#ref:subdir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdir: Option<String>,
    /// Keep the `.git` directory.
    pub keep_git_dir: bool,
    /// Expected commit (`ADD --checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// A file fetched over http(s) (ADD of a URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSource {
    /// The URL.
    pub url: String,
    /// Expected content digest (`ADD --checksum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The file name to save it as.
    pub filename: String,
}

/// A command run in a container on input 0's filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// argv.
    pub args: Vec<String>,
    /// Environment, `KEY=value`, in order.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `user[:group]`, empty for root.
    pub user: String,
    /// Network mode.
    pub network: NetworkMode,
    /// Security mode.
    pub security: SecurityMode,
    /// Extra mounts; the root filesystem is always input 0.
    pub mounts: Vec<Mount>,
}

/// RUN --network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The default: host network for rootless builds, like rootless BuildKit.
    #[default]
    Default,
    /// No network (a fresh network namespace with only loopback).
    None,
    /// The host's network.
    Host,
}

/// RUN --security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    /// Docker's default capability set.
    #[default]
    Sandbox,
    /// All capabilities.
    Insecure,
}

/// A mount in an exec op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Where in the container.
    pub target: String,
    /// What is mounted.
    #[serde(flatten)]
    pub kind: MountKind,
}

/// The kinds of RUN --mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountKind {
    /// A path of an input, read-only unless `readwrite` (writes are discarded).
    Bind {
        /// Index into the op's inputs.
        input: usize,
        /// Path inside the input.
        source: String,
        /// Writable (the writes are thrown away).
        readwrite: bool,
    },
    /// A persistent cache directory.
    Cache {
        /// Cache id (defaults to the target).
        id: String,
        /// Concurrent access mode.
        sharing: CacheSharing,
        /// Seed content: index into the op's inputs, and a path in it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<(usize, String)>,
        /// Read-only.
        readonly: bool,
        /// Mode of the directory when created.
        mode: u32,
        /// Owner uid when created.
        uid: u32,
        /// Owner gid when created.
        gid: u32,
    },
    /// A tmpfs.
    Tmpfs {
        /// Size limit in bytes, 0 for the default.
        size: u64,
    },
    /// A secret, as a file or an environment variable.
    Secret {
        /// Secret id (`--secret id=…`).
        id: String,
        /// Set the secret as this environment variable instead of/as well as a file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        env: Option<String>,
        /// Fail when the secret is not provided.
        required: bool,
        /// File mode.
        mode: u32,
        /// File owner.
        uid: u32,
        /// File group.
        gid: u32,
    },
    /// An ssh agent socket.
    Ssh {
        /// ssh id (`--ssh id=…`).
        id: String,
        /// Fail when it is not provided.
        required: bool,
        /// Socket mode.
        mode: u32,
        /// Socket owner.
        uid: u32,
        /// Socket group.
        gid: u32,
    },
}

/// RUN --mount=type=cache,sharing=.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    /// Several writers at once.
    Shared,
    /// A new cache directory per concurrent writer.
    Private,
    /// One writer at a time.
    Locked,
}

/// File operations, applied in order on input 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOp {
    /// The actions.
    pub actions: Vec<FileAction>,
}

/// Owner for created files: a name or numeric id each, resolved in the
/// destination filesystem's /etc/passwd and /etc/group at execution time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// User name or uid.
    pub user: String,
    /// Group name or gid; when absent, the user's primary group (or the uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// How to set the mode of copied files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    /// An octal mode applied to everything copied.
    Octal(u32),
    /// A symbolic mode (`u+x,g-w`), applied relative to each file's mode.
    Symbolic(String),
}

/// One file action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FileAction {
    /// Copy paths from an input.
    Copy(Copy),
    /// Create a directory.
    Mkdir {
        /// Absolute path.
        path: String,
        /// Permissions.
        mode: u32,
        /// Create missing parents.
        parents: bool,
        /// Owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
    /// Create a file with given content (heredocs).
    Mkfile {
        /// Absolute path.
        path: String,
        /// Permissions.
        mode: u32,
        /// Content.
        data: String,
        /// Owner.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
    },
}

/// A COPY/ADD of paths from one input into input 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copy {
    /// Index into the op's inputs.
    pub input: usize,
    /// Source paths or patterns, relative to the input's root.
    pub sources: Vec<String>,
    /// Destination path, absolute. A trailing `/` means "into this directory".
    pub dest: String,
    /// Owner of the copied files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Mode of the copied files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chmod: Option<Chmod>,
    /// Patterns to leave out (`--exclude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Keep the sources' parent directories (`--parents`).
    pub parents: bool,
    /// Unpack local tar archives (ADD).
    pub unpack: bool,
    /// Sources are patterns that may match nothing only if this is set.
    pub allow_empty_wildcard: bool,
}

/// The image config a stage accumulates, in the Docker image JSON shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// USER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// EXPOSE, keys like `80/tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, EmptyObject>>,
    /// ENV, `KEY=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// VOLUME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, EmptyObject>>,
    /// WORKDIR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// LABEL (and MAINTAINER, `--label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// STOPSIGNAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Windows-only: the command line is already escaped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    /// HEALTHCHECK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// SHELL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// ONBUILD triggers, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
}

/// `{}` in JSON, the value type of ExposedPorts and Volumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmptyObject {}

/// HEALTHCHECK settings; durations in nanoseconds, 0 meaning "inherit".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", cmd]`.
    pub test: Vec<String>,
    /// --interval.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: u64,
    /// --timeout.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: u64,
    /// --start-period.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: u64,
    /// --start-interval.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: u64,
    /// --retries.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One history entry of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The instruction, as BuildKit records it (e.g. `RUN /bin/sh -c make # buildkit`).
    pub created_by: String,
    /// BuildKit writes `buildkit.dockerfile.v0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True for metadata-only instructions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
    /// The op whose result, diffed against its root input, is this entry's layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_op: Option<OpId>,
}

/// Where a stage starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Base {
    /// `FROM scratch`.
    Scratch,
    /// `FROM <image>`.
    Image {
        /// The reference after expansion.
        reference: String,
    },
    /// `FROM <earlier stage>`.
    Stage {
        /// Index into [`Graph::stages`].
        stage: usize,
    },
    /// `FROM <name>` where `--build-context name=…` provides it.
    Context {
        /// The context name.
        name: String,
    },
}

/// A build stage: its base, its final filesystem and its image config.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stage {
    /// `AS name`, lower-cased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Position among the Dockerfile's stages (0-based).
    pub index: usize,
    /// What the stage starts from.
    pub base: Base,
    /// The platform the stage builds for.
    pub platform: Platform,
    /// The op producing the stage's final root filesystem.
    pub root: OpId,
    /// The image config after the stage's last instruction.
    pub config: ImageConfig,
    /// The image's `author` (MAINTAINER), when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// History entries this stage adds on top of its base's.
    pub history: Vec<History>,
}

/// Serialises `value` canonically and returns its sha256 digest. Struct
/// fields serialise in declaration order and maps are `BTreeMap`s, so the
/// bytes depend only on the value.
pub fn canonical_digest<T: Serialize>(value: &T) -> Digest {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Digest::sha256(&bytes)
}

/// Builds a [`Graph`], computing digests and merging identical ops.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    ops: Vec<Op>,
    by_digest: BTreeMap<Digest, OpId>,
}

#[derive(Serialize)]
struct OpDefinition<'a> {
    kind: &'a OpKind,
    inputs: Vec<&'a Digest>,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an op (or finds the identical one already added) and returns its id.
    /// Inputs must already have been added.
    pub fn add(&mut self, kind: OpKind, inputs: Vec<OpId>, meta: OpMeta) -> OpId {
        let input_digests: Vec<&Digest> = inputs.iter().map(|&i| &self.ops[i].digest).collect();
        let digest = canonical_digest(&OpDefinition {
            kind: &kind,
            inputs: input_digests,
        });
        if let Some(&id) = self.by_digest.get(&digest) {
            return id;
        }
        let id = self.ops.len();
        self.ops.push(Op {
            digest: digest.clone(),
            inputs,
            kind,
            meta,
        });
        self.by_digest.insert(digest, id);
        id
    }

    /// The op with id `id`.
    pub fn op(&self, id: OpId) -> &Op {
        &self.ops[id]
    }

    /// Finishes the graph.
    pub fn finish(self, stages: Vec<Stage>, target: usize) -> Graph {
        Graph {
            ops: self.ops,
            stages,
            target,
            proxy_env: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parsing_normalises_like_containerd() {
        let p = |s: &str| Platform::parse(s).map(|p| p.to_string());
        assert_eq!(p("linux/amd64").as_deref(), Ok("linux/amd64"));
        assert_eq!(p("linux/x86_64").as_deref(), Ok("linux/amd64"));
        assert_eq!(p("linux/aarch64").as_deref(), Ok("linux/arm64"));
        assert_eq!(p("linux/arm64/v8").as_deref(), Ok("linux/arm64"));
        assert_eq!(p("linux/arm").as_deref(), Ok("linux/arm/v7"));
        assert_eq!(p("linux/arm/v6").as_deref(), Ok("linux/arm/v6"));
        assert_eq!(p("Linux/AMD64").as_deref(), Ok("linux/amd64"));
        assert!(p("linux/notanarch").is_err());
        assert!(p("nope/amd64").is_err());
        assert!(p("linux/amd64/v2/x").is_err());
        assert!(p("").is_err());
        assert!(p("linux amd64").is_err());
    }

    #[test]
    fn identical_ops_are_merged_and_digests_chain() {
        let mut b = GraphBuilder::new();
        let s1 = b.add(OpKind::Scratch, vec![], OpMeta::default());
        let s2 = b.add(
            OpKind::Scratch,
            vec![],
            OpMeta {
                name: "other".into(),
                location: None,
            },
        );
        assert_eq!(s1, s2);
        let m1 = b.add(OpKind::Merge, vec![s1], OpMeta::default());
        let m2 = b.add(OpKind::Merge, vec![s1, m1], OpMeta::default());
        assert_ne!(b.op(m1).digest, b.op(m2).digest);
    }

    #[test]
    fn digest_parse_checks_shape() {
        let d = Digest::sha256(b"x");
        assert_eq!(Digest::parse(d.as_str()), Some(d.clone()));
        assert_eq!(Digest::parse("sha256:abc"), None);
        assert_eq!(Digest::parse("md5:00"), None);
    }
}
