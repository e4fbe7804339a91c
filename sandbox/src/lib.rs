//! The rootless Linux container that RUN steps execute in.
//!
//! This is the only crate in the workspace with `unsafe` and raw syscalls
//! (rustix first, `libc` for what rustix lacks: fork, execve, signals, an ioctl).
//!
//! Three entry points, in the order a program calls them:
//!
//! 1. [`init_hook`], first thing in `main()`: when the process was started as the
//!    sandbox's internal init (`<exe> __rbuild-sandbox-init …`) it sets up the
//!    container and never returns.
//! 2. [`enter_user_namespace`], early in `main()` while still single-threaded: as a
//!    normal user it re-executes the program inside a user namespace mapped from
//!    `/etc/subuid`/`/etc/subgid`, so everything afterwards runs as namespace root.
//! 3. [`run`], from any thread, any number of times concurrently: runs one
//!    command in a fresh container described by a [`ContainerSpec`].
//!
//! How [`run`] works: it spawns `/proc/self/exe __rbuild-sandbox-init` (a fresh,
//! single-threaded process, so that forking it later is safe) and hands it the
//! spec in a memfd. The init unshares mount, uts, ipc, pid (and net) namespaces
//! and forks; the child is pid 1 of the new pid namespace, builds the root
//! filesystem, pivots into it, drops privileges and execs the command. The init
//! waits for it and reports its status. A pipe (the "lifeline") from the calling
//! process to the init tells it to kill pid 1 — and with it the whole pid
//! namespace — on cancel or when the caller dies, even by SIGKILL.

#![warn(missing_docs)]

mod error;
mod init;
mod mounts;
mod run;
mod sys;
mod userns;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use error::Error;
pub use run::run;
pub use userns::{enter_user_namespace, running_in_user_namespace, Namespace};

/// The `argv[1]` that makes a process the sandbox's internal init (see [`init_hook`]).
pub const INIT_ARG: &str = "__rbuild-sandbox-init";

/// Docker's default capability set as a bit mask (`CapBnd`/`CapEff` in
/// `/proc/<pid>/status`): CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
/// SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE,
/// SETFCAP.
pub const DEFAULT_CAPABILITIES: u64 = 0x0000_0000_a804_25fb;

/// Must be called first thing in `main()`, while the process is single-threaded.
///
/// If `argv[1]` is [`INIT_ARG`], this process is the sandbox's init started by
/// [`run`]: it sets up the container, waits for it and exits; it never returns.
/// Otherwise it returns at once.
pub fn init_hook() {
    if std::env::args_os().nth(1).is_some_and(|a| a == INIT_ARG) {
        init::main();
    }
}

/// The container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rootfs {
    /// An overlay mounted inside the container's mount namespace: writes land in
    /// `upper` (deletions as 0/0 character devices, replaced directories marked
    /// opaque with `trusted.overlay.opaque`, or `user.overlay.opaque` with
    /// `userxattr`).
    Overlay {
        /// Lower layers, top first (overlayfs's `lowerdir` order). At least one.
        lower: Vec<PathBuf>,
        /// The upper (writable) directory.
        upper: PathBuf,
        /// overlayfs's work directory: empty, on the same filesystem as `upper`.
        work: PathBuf,
        /// Use `user.overlay.*` xattrs; required inside a user namespace
        /// (see [`running_in_user_namespace`]), needs Linux 5.11.
        userxattr: bool,
    },
    /// An existing directory, used read-write as it is.
    Dir(PathBuf),
}

/// The container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// Share the caller's network namespace (BuildKit's `--network=host`, and
    /// what a rootless build without a network helper gets).
    Host,
    /// A new network namespace with only `lo`, brought up.
    None,
}

/// The container process's capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Capabilities {
    /// Docker's default set ([`DEFAULT_CAPABILITIES`]), with Docker's masked and
    /// read-only `/proc` and `/sys` paths.
    Default,
    /// Every capability and no masked paths (`RUN --security=insecure`).
    All,
}

/// What a [`Mount`] mounts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A bind mount (recursive) of a host directory or file.
    Bind {
        /// The host path.
        source: PathBuf,
        /// Mount it read-only (recursively where the kernel supports it).
        readonly: bool,
    },
    /// An overlay of directories, e.g. another stage's filesystem. Read-only when
    /// there is no upper directory.
    Overlay {
        /// Lower layers, top first. At least one.
        lower: Vec<PathBuf>,
        /// `(upper, work)` for a writable overlay.
        upper_work: Option<(PathBuf, PathBuf)>,
        /// Use `user.overlay.*` xattrs (inside a user namespace).
        userxattr: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        /// Size limit in bytes; 0 = the kernel's default (half of RAM).
        size: u64,
        /// Permission bits of its root, e.g. `0o1777`.
        mode: u32,
    },
    /// A read-only file with this content, e.g. a secret: it lives on a private
    /// tmpfs, never on disk.
    File {
        /// The file's content.
        content: Vec<u8>,
        /// Permission bits, e.g. `0o400`.
        mode: u32,
        /// Owner (a uid inside the container).
        uid: u32,
        /// Group (a gid inside the container).
        gid: u32,
    },
}

impl fmt::Debug for MountKind {
    // Hand-written so that a secret's content never ends up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { source, readonly } => f
                .debug_struct("Bind")
                .field("source", source)
                .field("readonly", readonly)
                .finish(),
            Self::Overlay {
                lower,
                upper_work,
                userxattr,
            } => f
                .debug_struct("Overlay")
                .field("lower", lower)
                .field("upper_work", upper_work)
                .field("userxattr", userxattr)
                .finish(),
            Self::Tmpfs { size, mode } => f
                .debug_struct("Tmpfs")
                .field("size", size)
                .field("mode", &format_args!("{mode:#o}"))
                .finish(),
            Self::File {
                content,
                mode,
                uid,
                gid,
            } => f
                .debug_struct("File")
                .field("content", &format_args!("<{} bytes>", content.len()))
                .field("mode", &format_args!("{mode:#o}"))
                .field("uid", uid)
                .field("gid", gid)
                .finish(),
        }
    }
}

/// A mount inside the container, applied after the root filesystem, `/proc`,
/// `/dev`, `/sys` and the etc files, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container. Created if missing (resolved inside
    /// the root filesystem: symlinks never lead out of it).
    pub target: String,
    /// What to mount there.
    pub kind: MountKind,
}

/// Everything needed to run one command in a container.
///
/// Host paths must be valid UTF-8 (they cross to the init process as JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// argv. `args[0]` is looked up in the `PATH` of [`env`](Self::env) when it
    /// contains no `/` (like runc; `/usr/local/sbin:…:/bin` when `PATH` is unset).
    pub args: Vec<String>,
    /// The environment, exactly: `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// Working directory inside the container; created (root, 0755) if missing.
    pub cwd: String,
    /// The process's uid inside the container.
    pub uid: u32,
    /// The process's gid inside the container.
    pub gid: u32,
    /// Supplementary groups (the caller resolves them from the image's /etc/group).
    pub additional_gids: Vec<u32>,
    /// The container's hostname (empty: left as the new uts namespace has it).
    pub hostname: String,
    /// Host network or none.
    pub network: Network,
    /// Extra mounts, in order.
    pub mounts: Vec<Mount>,
    /// Capability set.
    pub capabilities: Capabilities,
    /// Files bind-mounted read-only, `(container path, host file)`: typically
    /// `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`, prepared by the caller.
    pub etc_files: Vec<(String, PathBuf)>,
    /// Set `no_new_privs` so setuid binaries (sudo, su) cannot gain privileges.
    /// BuildKit leaves it off (`sudo` in a RUN step works); so does [`ContainerSpec::new`].
    pub no_new_privs: bool,
}

impl ContainerSpec {
    /// A spec with BuildKit's defaults: root, cwd `/`, hostname `buildkitsandbox`,
    /// host network, Docker's default capabilities, no mounts and no environment.
    pub fn new(rootfs: Rootfs, args: Vec<String>) -> Self {
        Self {
            rootfs,
            args,
            env: Vec::new(),
            cwd: "/".to_owned(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: "buildkitsandbox".to_owned(),
            network: Network::Host,
            mounts: Vec::new(),
            capabilities: Capabilities::Default,
            etc_files: Vec::new(),
            no_new_privs: false,
        }
    }
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl ExitStatus {
    /// True for `Exited(0)`.
    pub fn success(self) -> bool {
        self == Self::Exited(0)
    }

    /// The code a shell would show: the exit code, or 128 + the signal.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exit code {c}"),
            Self::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// How the process ended.
    pub status: ExitStatus,
    /// Paths (absolute, inside the container, symlinks resolved) that the sandbox
    /// created in the root filesystem because they were missing: mount points for
    /// `/proc`, `/dev`, `/sys`, the etc files and the mounts, and the cwd. Parents
    /// come before their children. The caller leaves them out of the layer if
    /// they are still empty.
    pub created: Vec<String>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The process's stdout.
    Stdout,
    /// The process's stderr.
    Stderr,
}

/// A cancellation token for [`run`]: clone it, hand a clone to whoever may
/// cancel, and call [`Cancel::cancel`]. The whole pid namespace is killed within
/// about 50 ms and `run` returns [`Error::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels every [`run`] using this token (or a clone of it).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_codes() {
        assert!(ExitStatus::Exited(0).success());
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(9).to_string(), "killed by signal 9");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let m = MountKind::File {
            content: b"hunter2".to_vec(),
            mode: 0o400,
            uid: 0,
            gid: 0,
        };
        let shown = format!("{m:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<7 bytes>"));
    }

    #[test]
    fn cancel_is_shared_by_clones() {
        let c = Cancel::new();
        let d = c.clone();
        assert!(!d.is_cancelled());
        c.cancel();
        assert!(d.is_cancelled());
    }
}
