//! RUN: an exec op in the sandbox, on an overlay of its input's layers;
//! its layer is the overlay's upperdir.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_cache::layer::{self, LayerDescriptor};
use rbuild_sandbox as sandbox;

use crate::graph::{CacheSharing, Exec, MountKind, NetworkMode, SecurityMode};

use super::error::{ExecError, Result};
use super::progress::Event;
use super::source::{Kind, Source};
use super::{diff, user, FsState, Solver, Value};

/// The hostname every RUN sees, as in BuildKit.
pub const HOSTNAME: &str = "buildkitsandbox";

/// How many trailing output lines a failure shows.
const TAIL_LINES: usize = 20;

/// Removes a directory tree when dropped (the op's scratch space).
struct Scratch(PathBuf);

/// What a step's mounts hold until it ends: cache mount locks, ssh agent
/// relays.
struct Held<'a> {
    locks: &'a mut Vec<File>,
    agents: &'a mut Vec<super::agent::AgentProxy>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Solver {
    /// Runs an exec op; returns its filesystem and the layer it added.
    pub(super) fn run_exec(
        &self,
        op: usize,
        exec: &Exec,
        inputs: &[Value],
    ) -> Result<(Value, Option<LayerDescriptor>)> {
        let base = match inputs.first() {
            Some(Value::Fs(fs)) => fs.clone(),
            _ => {
                return Err(ExecError::Internal(
                    "exec op without a root filesystem".into(),
                ))
            }
        };
        let view = self.view(&base)?;
        let native = native_snapshotter();
        let scratch = Scratch(self.store().temp_path("exec"));
        let upper = scratch.0.join("upper");
        let work = scratch.0.join("work");
        fs::create_dir_all(&upper)?;
        fs::create_dir_all(&work)?;
        // The copying snapshotter: a full copy of the base, diffed after.
        let copied = scratch.0.join("rootfs");
        let (rootfs, stamps) = if native {
            materialize(&view, "/", &copied, true)?;
            let stamps = diff::stamp_tree(&copied)?;
            (sandbox::Rootfs::Dir(copied.clone()), Some(stamps))
        } else {
            let mut lower: Vec<PathBuf> = self.snapshots(&base)?.into_iter().rev().collect();
            if lower.is_empty() {
                // Scratch: overlay needs a lowerdir; an empty one stands in.
                let empty = scratch.0.join("empty");
                fs::create_dir_all(&empty)?;
                lower.push(empty);
            }
            (
                sandbox::Rootfs::Overlay {
                    lower,
                    upper: upper.clone(),
                    work,
                    userxattr: self.rootless,
                },
                None,
            )
        };

        let who = user::resolve(&view, &exec.user)?;
        let mut env = exec.env.clone();
        let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
        if !has(&env, "HOME") {
            env.push(format!("HOME={}", who.home));
        }
        for p in &self.proxy_env {
            let key = p.split('=').next().unwrap_or_default();
            if !has(&env, key) {
                env.push(p.clone());
            }
        }

        let etc = scratch.0.join("etc");
        fs::create_dir_all(&etc)?;
        let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
        fs::write(etc.join("resolv.conf"), resolv)?;
        fs::write(
            etc.join("hosts"),
            format!("127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        )?;
        fs::write(etc.join("hostname"), format!("{HOSTNAME}\n"))?;

        let mut mounts = Vec::new();
        let mut locks = Vec::new();
        let mut agents = Vec::new();
        for m in &exec.mounts {
            let held = Held {
                locks: &mut locks,
                agents: &mut agents,
            };
            if let Some(mount) = self.sandbox_mount(m, inputs, &scratch.0, &mut env, held)? {
                mounts.push(mount);
            }
        }

        let spec = sandbox::ContainerSpec {
            rootfs,
            args: exec.args.clone(),
            env,
            cwd: if exec.cwd.is_empty() {
                "/".into()
            } else {
                exec.cwd.clone()
            },
            uid: who.uid,
            gid: who.gid,
            additional_gids: who.additional_gids,
            hostname: HOSTNAME.into(),
            network: match exec.network {
                NetworkMode::None => sandbox::Network::None,
                NetworkMode::Host | NetworkMode::Default => sandbox::Network::Host,
            },
            mounts,
            capabilities: match exec.security {
                SecurityMode::Insecure => sandbox::Capabilities::All,
                SecurityMode::Sandbox => sandbox::Capabilities::Default,
            },
            etc_files: vec![
                ("/etc/resolv.conf".into(), etc.join("resolv.conf")),
                ("/etc/hosts".into(), etc.join("hosts")),
                ("/etc/hostname".into(), etc.join("hostname")),
            ],
            // BuildKit leaves no_new_privs off, so setuid helpers (sudo) work in RUN as in Docker.
            no_new_privs: false,
        };

        let mut tail: Vec<String> = Vec::new();
        let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let progress = Arc::clone(&self.progress);
        let emit = |line: String, tail: &mut Vec<String>| {
            progress.event(Event::Log {
                op,
                line: line.clone(),
            });
            tail.push(line);
            if tail.len() > TAIL_LINES {
                tail.remove(0);
            }
        };
        let result = sandbox::run(
            &spec,
            &mut |stream, chunk| {
                let i = usize::from(stream == sandbox::Stream::Stderr);
                partial[i].extend_from_slice(chunk);
                while let Some(pos) = partial[i].iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial[i].drain(..=pos).collect();
                    emit(
                        String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                        &mut tail,
                    );
                }
            },
            &self.cancel,
        )
                .map_err(|e| {
            if !native && e.to_string().contains("overlay") {
                // This kernel or filesystem cannot do overlay here: later
                // RUNs copy instead.
                NATIVE_FALLBACK.store(true, std::sync::atomic::Ordering::Relaxed);
                return ExecError::User(format!(
                    "running {:?}: {e} (overlayfs is not usable here: set RBUILD_SNAPSHOTTER=native)",
                    exec.args.join(" ")
                ));
            }
            ExecError::User(format!("running {:?}: {e}", exec.args.join(" ")))
        })?;
        for rest in partial.iter_mut() {
            if !rest.is_empty() {
                let line = String::from_utf8_lossy(rest).into_owned();
                emit(line, &mut tail);
                rest.clear();
            }
        }
        drop(locks);
        let code = match result.status {
            sandbox::ExitStatus::Exited(0) => None,
            sandbox::ExitStatus::Exited(c) => Some(format!("exit code: {c}")),
            sandbox::ExitStatus::Signaled(s) => Some(format!("killed by signal {s}")),
        };
        if let Some(code) = code {
            let mut msg = format!(
                "process {:?} did not complete successfully: {code}",
                exec.args.join(" ")
            );
            if !tail.is_empty() {
                msg.push_str("\n------ last lines of output ------\n");
                msg.push_str(&tail.join("\n"));
            }
            return Err(ExecError::User(msg));
        }
        let skip: HashSet<String> = result
            .created
            .iter()
            .map(|p| p.trim_start_matches('/').to_string())
            .collect();
        let lower_dir = |rel: &str| -> Option<(u32, u32, u32)> {
            let f = view.lookup(&format!("/{rel}"), false).ok()??;
            f.meta
                .is_dir()
                .then(|| (f.meta.mode() & 0o7777, f.meta.uid(), f.meta.gid()))
        };
        let added = match &stamps {
            Some(before) => diff::write_tree_diff(
                self.store(),
                &copied,
                before,
                &skip,
                &lower_dir,
                self.options.epoch,
            )?,
            None => diff::write_upper_layer(
                self.store(),
                &upper,
                &skip,
                &lower_dir,
                self.options.epoch,
            )?,
        };
        let mut layers = base.layers;
        layers.extend(added.clone());
        Ok((Value::Fs(FsState { layers }), added))
    }

    /// The snapshot directories of a filesystem's layers, bottom first.
    fn snapshots(&self, fs: &FsState) -> Result<Vec<PathBuf>> {
        self.ensure_local(&fs.layers)?;
        fs.layers
            .iter()
            .map(|l| Ok(layer::snapshot(self.store(), l)?))
            .collect()
    }

    fn sandbox_mount(
        &self,
        m: &crate::graph::Mount,
        inputs: &[Value],
        scratch: &Path,
        env: &mut Vec<String>,
        held: Held<'_>,
    ) -> Result<Option<sandbox::Mount>> {
        let Held { locks, agents } = held;
        let target = m.target.clone();
        let kind = match &m.kind {
            MountKind::Bind {
                input,
                source,
                readwrite,
            } => {
                let value = inputs
                    .get(*input)
                    .ok_or_else(|| ExecError::Internal("bind mount input missing".into()))?;
                self.bind_mount(value, source, *readwrite, scratch)?
            }
            MountKind::Cache {
                id,
                sharing,
                from,
                readonly,
                mode,
                uid,
                gid,
            } => {
                let dir = self.cache_mount_dir(
                    id,
                    *sharing,
                    *mode,
                    *uid,
                    *gid,
                    from.as_ref(),
                    inputs,
                    scratch,
                    locks,
                )?;
                sandbox::MountKind::Bind {
                    source: dir,
                    readonly: *readonly,
                }
            }
            MountKind::Tmpfs { size } => sandbox::MountKind::Tmpfs {
                size: *size,
                mode: 0o1777,
            },
            MountKind::Secret {
                id,
                env: env_name,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(value) = self.secrets.get(id) else {
                    if *required {
                        return Err(ExecError::User(format!(
                            "secret {id} not found (give it with --secret id={id},src=FILE)"
                        )));
                    }
                    return Ok(None);
                };
                if let Some(name) = env_name {
                    env.push(format!("{name}={}", String::from_utf8_lossy(value)));
                    if target.is_empty() {
                        return Ok(None);
                    }
                }
                sandbox::MountKind::File {
                    content: value.clone(),
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                }
            }
            MountKind::Ssh {
                id,
                required,
                mode,
                uid,
                gid,
            } => {
                let Some(agent) = self.ssh.get(id) else {
                    if *required {
                        return Err(ExecError::User(format!(
                            "no ssh agent for id {id:?} (give one with --ssh {id}[=SOCKET|KEY])"
                        )));
                    }
                    return Ok(None);
                };
                // A relay socket with the mount's owner and mode. As in
                // BuildKit, the first ssh mount is SSH_AUTH_SOCK.
                let socket = scratch.join(format!("ssh-{}.sock", unique()));
                let proxy = super::agent::AgentProxy::start(agent, &socket, *uid, *gid, *mode)
                    .map_err(|e| ExecError::User(format!("--ssh {id}: {e}")))?;
                agents.push(proxy);
                if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
                    env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                sandbox::MountKind::Bind {
                    source: socket,
                    readonly: false,
                }
            }
        };
        Ok(Some(sandbox::Mount { target, kind }))
    }

    /// A bind mount of a context path or another stage's path.
    fn bind_mount(
        &self,
        value: &Value,
        source: &str,
        readwrite: bool,
        scratch: &Path,
    ) -> Result<sandbox::MountKind> {
        match value {
            Value::Fs(fs) if source == "/" || source.is_empty() => {
                let lower: Vec<PathBuf> = self.snapshots(fs)?.into_iter().rev().collect();
                let upper_work = if readwrite {
                    Some(fresh_pair(scratch)?)
                } else {
                    None
                };
                Ok(sandbox::MountKind::Overlay {
                    lower,
                    upper_work,
                    userxattr: self.rootless,
                })
            }
            Value::Fs(fs) => {
                let view = self.view(fs)?;
                let dest = scratch.join(format!("bind-{}", unique()));
                materialize(&view, source, &dest, readwrite)?;
                Ok(sandbox::MountKind::Bind {
                    source: dest,
                    readonly: !readwrite,
                })
            }
            Value::Context(ctx) => {
                let dest = scratch.join(format!("bind-{}", unique()));
                materialize(ctx.as_ref(), source, &dest, readwrite)?;
                Ok(sandbox::MountKind::Bind {
                    source: dest,
                    readonly: !readwrite,
                })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn cache_mount_dir(
        &self,
        id: &str,
        sharing: CacheSharing,
        mode: u32,
        uid: u32,
        gid: u32,
        from: Option<&(usize, String)>,
        inputs: &[Value],
        scratch: &Path,
        locks: &mut Vec<File>,
    ) -> Result<PathBuf> {
        let key = cache_mount_key(id);
        let base = self.store().root().join("cachemounts");
        fs::create_dir_all(&base)?;
        let lock_path = base.join(format!("{key}.lock"));
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        let dir = match sharing {
            CacheSharing::Shared => base.join(&key),
            CacheSharing::Locked => {
                lock.lock()?;
                base.join(&key)
            }
            CacheSharing::Private => match lock.try_lock() {
                Ok(()) => base.join(&key),
                // Someone else has it: this run gets a private, throwaway one.
                Err(_) => scratch.join(format!("cache-{}", unique())),
            },
        };
        locks.push(lock);
        if !dir.exists() {
            let tmp = base.join(format!(".new-{key}-{}", unique()));
            match from {
                Some((input, path)) => {
                    let value = inputs
                        .get(*input)
                        .ok_or_else(|| ExecError::Internal("cache mount input".into()))?;
                    match value {
                        Value::Fs(fs) => materialize(&self.view(fs)?, path, &tmp, true)?,
                        Value::Context(ctx) => materialize(ctx.as_ref(), path, &tmp, true)?,
                    }
                }
                None => fs::create_dir_all(&tmp)?,
            }
            fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
            std::os::unix::fs::lchown(&tmp, Some(uid), Some(gid))?;
            if fs::rename(&tmp, &dir).is_err() {
                // Another build created it first; theirs is as good.
                let _ = fs::remove_dir_all(&tmp);
            }
        }
        Ok(dir)
    }
}

/// The name of cache mount `id`'s directory under `ROOT/cachemounts/`.
pub fn cache_mount_key(id: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(id.as_bytes()))
}

/// The ids of the cache mounts `graph`'s RUN steps use.
pub fn cache_mount_ids(graph: &crate::graph::Graph) -> Vec<String> {
    let mut ids: Vec<String> = graph
        .ops
        .iter()
        .filter_map(|o| match &o.kind {
            crate::graph::OpKind::Exec(e) => Some(e.mounts.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|m| match &m.kind {
            MountKind::Cache { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Set when overlay failed once in this process (automatic mode).
static NATIVE_FALLBACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Which snapshotter RUN uses: `RBUILD_SNAPSHOTTER=overlay|native`, else
/// overlay unless it already failed here.
fn native_snapshotter() -> bool {
    match std::env::var("RBUILD_SNAPSHOTTER").as_deref() {
        Ok("native") => true,
        Ok("overlay") => false,
        _ => NATIVE_FALLBACK.load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn fresh_pair(scratch: &Path) -> Result<(PathBuf, PathBuf)> {
    let n = unique();
    let upper = scratch.join(format!("rw-upper-{n}"));
    let work = scratch.join(format!("rw-work-{n}"));
    fs::create_dir_all(&upper)?;
    fs::create_dir_all(&work)?;
    Ok((upper, work))
}

/// Copies `path` of a source into `dest` (hard-linking files when they
/// will not be written to), with owners and modes, symlinks as links.
fn materialize(source: &dyn Source, path: &str, dest: &Path, writable: bool) -> Result<()> {
    let Some(top) = source.lookup(path, true)? else {
        return Err(ExecError::User(format!(
            "failed to mount {path:?}: not found"
        )));
    };
    let place = |entry: &super::source::SrcEntry, at: &Path| -> Result<()> {
        match &entry.kind {
            Kind::Dir => fs::create_dir_all(at)?,
            Kind::File => {
                if writable || fs::hard_link(&entry.real, at).is_err() {
                    fs::copy(&entry.real, at)?;
                }
            }
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, at)?,
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => {
                use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
                let (ft, dev) = match entry.kind {
                    Kind::Char(a, b) => (FileType::CharacterDevice, makedev(a, b)),
                    Kind::Block(a, b) => (FileType::BlockDevice, makedev(a, b)),
                    _ => (FileType::Fifo, 0),
                };
                // Devices need privileges a rootless build may not have:
                // then the copy simply lacks them (and the diff cannot
                // report them deleted).
                if mknodat(CWD, at, ft, Mode::from_raw_mode(entry.mode), dev).is_err() {
                    return Ok(());
                }
            }
            _ => return Ok(()),
        }
        // A hard link shares its inode with the snapshot: its metadata is
        // already right and must not be touched.
        let linked = !matches!(entry.kind, Kind::Symlink(_))
            && fs::symlink_metadata(at).map(|m| m.ino()).ok()
                == fs::symlink_metadata(&entry.real).map(|m| m.ino()).ok();
        if !linked {
            if !matches!(entry.kind, Kind::Symlink(_)) {
                fs::set_permissions(at, fs::Permissions::from_mode(entry.mode))?;
            }
            let _ = std::os::unix::fs::lchown(at, Some(entry.uid), Some(entry.gid));
        }
        Ok(())
    };
    if top.kind != Kind::Dir {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        return place(&top, dest);
    }
    place(&top, dest)?;
    let prefix = if top.path == "/" {
        "/".to_string()
    } else {
        format!("{}/", top.path)
    };
    let mut dirs: BTreeMap<PathBuf, u32> = BTreeMap::new();
    for e in source.walk(&top.path)? {
        let Some(rel) = e.path.strip_prefix(&prefix) else {
            continue;
        };
        let at = dest.join(rel);
        if e.kind == Kind::Dir {
            fs::create_dir_all(&at)?;
            dirs.insert(at.clone(), e.mode);
            let _ = std::os::unix::fs::lchown(&at, Some(e.uid), Some(e.gid));
            continue;
        }
        place(&e, &at)?;
    }
    for (d, mode) in dirs.into_iter().rev() {
        fs::set_permissions(&d, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
