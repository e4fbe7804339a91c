//! Path resolution confined to the container's root, and mount helpers.
//!
//! Mount targets are resolved one component at a time with `O_PATH|O_NOFOLLOW`,
//! symlinks expanded by hand against the container's root (as `RESOLVE_IN_ROOT`
//! or runc's securejoin do), so a hostile image cannot point a mount point at
//! the host. The mount then goes to `/proc/self/fd/N` of the resolved
//! descriptor, so nothing can swap the path between resolution and mount.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::MountFlags;

use crate::error::{ChildError, Ctx};

/// What to create when a path's last component is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    /// Nothing: a missing path is an error.
    No,
    /// A directory (0755).
    Dir,
    /// An empty file (0644), as a mount point for a file.
    File,
}

/// A path resolved inside the container's root.
pub(crate) struct Resolved {
    /// An `O_PATH` descriptor of it.
    pub fd: OwnedFd,
}

impl Resolved {
    /// The magic-link path to the descriptor, for mount(2).
    pub fn proc_path(&self) -> String {
        fd_path(self.fd.as_fd())
    }
}

/// `/proc/self/fd/N`.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Tracks what [`resolve`] created, and on which mount the rootfs is, so that
/// only entries made on the root filesystem itself are reported.
pub(crate) struct Created {
    pub paths: Vec<String>,
    root_mnt_id: Option<u64>,
}

impl Created {
    pub fn new(root: BorrowedFd<'_>) -> Self {
        Self {
            paths: Vec::new(),
            root_mnt_id: mnt_id(root),
        }
    }

    fn record(&mut self, parent: BorrowedFd<'_>, path: String) {
        // A directory created inside a tmpfs or bind mount is not in the layer;
        // without STATX_MNT_ID (Linux < 5.8) report it anyway: harmless.
        let on_root = match (self.root_mnt_id, mnt_id(parent)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if on_root {
            self.paths.push(path);
        }
    }
}

fn mnt_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let st = rustix::fs::statx(
        fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::MNT_ID,
    )
    .ok()?;
    (st.stx_mask & rustix::fs::StatxFlags::MNT_ID.bits() != 0).then_some(st.stx_mnt_id)
}

/// The most symlinks one resolution may expand, as the kernel's ELOOP limit.
const MAX_SYMLINKS: u32 = 40;

/// Resolves `path` (absolute or not, always taken from `root`) inside `root`,
/// creating what is missing when `create` says so: intermediate directories
/// always as directories, the last component as `create` asks. Created entries
/// are recorded in `created`, parents first.
pub(crate) fn resolve(
    root: BorrowedFd<'_>,
    path: &str,
    create: Create,
    created: &mut Created,
) -> Result<Resolved, ChildError> {
    // (descriptor, name) of each directory below the root on the current path.
    let mut stack: Vec<(OwnedFd, String)> = Vec::new();
    let mut queue: VecDeque<String> = components(path).collect();
    let mut symlinks = 0;
    let mut retries = 0;
    let joined = |stack: &[(OwnedFd, String)], name: &str| {
        let mut p = String::new();
        for (_, n) in stack {
            p.push('/');
            p.push_str(n);
        }
        p.push('/');
        p.push_str(name);
        p
    };

    while let Some(name) = queue.pop_front() {
        if name == "." {
            continue;
        }
        if name == ".." {
            // Never above the root: ".." of the root is the root, as in a chroot.
            stack.pop();
            continue;
        }
        let last = queue.is_empty();
        let parent = stack.last().map_or(root, |(fd, _)| fd.as_fd());
        let here = joined(&stack, &name);
        match rustix::fs::openat(
            parent,
            name.as_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).ctx("stat", &here)?;
                let ft = FileType::from_raw_mode(st.st_mode);
                if ft == FileType::Symlink {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(ChildError::sys("resolve", &here, Errno::LOOP));
                    }
                    let target = rustix::fs::readlinkat(parent, name.as_str(), Vec::new())
                        .ctx("readlink", &here)?;
                    let target = target.to_string_lossy().into_owned();
                    if target.starts_with('/') {
                        stack.clear();
                    }
                    for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                        queue.push_front(c);
                    }
                    continue;
                }
                if !last && ft != FileType::Directory {
                    return Err(ChildError::sys("resolve", &here, Errno::NOTDIR));
                }
                stack.push((fd, name));
            }
            Err(Errno::NOENT) if create != Create::No => {
                let kind = if last { create } else { Create::Dir };
                let made = match kind {
                    Create::File => rustix::fs::openat(
                        parent,
                        name.as_str(),
                        OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::WRONLY
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .map(drop),
                    _ => rustix::fs::mkdirat(parent, name.as_str(), Mode::from_raw_mode(0o755)),
                };
                match made {
                    Ok(()) => created.record(parent, here),
                    // Someone else made it between our open and our create: look again.
                    Err(Errno::EXIST) if retries < 8 => retries += 1,
                    Err(e) => return Err(ChildError::sys("create", &here, e)),
                }
                queue.push_front(name);
            }
            Err(e) => return Err(ChildError::sys("open", &here, e)),
        }
    }

    let fd = match stack.pop() {
        Some((fd, _)) => fd,
        None => rustix::io::fcntl_dupfd_cloexec(root, 0).ctx("dup", "/")?,
    };
    Ok(Resolved { fd })
}

fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/').filter(|c| !c.is_empty()).map(str::to_owned)
}

/// Whether the descriptor is a directory.
pub(crate) fn is_dir(fd: BorrowedFd<'_>) -> bool {
    rustix::fs::fstat(fd)
        .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
        .unwrap_or(false)
}

/// A C string for mount(2) data. Option strings built here never contain NUL
/// (paths were checked before they got here), so a failure is reported, not hidden.
pub(crate) fn cstring(s: String) -> Result<CString, ChildError> {
    CString::new(s).map_err(|_| ChildError::Invalid("mount options contain a NUL byte".into()))
}

/// Makes the mount whose root is at `path` read-only. A plain remount must
/// repeat the mount's other flags: in a user namespace the kernel refuses to
/// drop flags it locked (nosuid, nodev, noexec, atime), and elsewhere
/// omitting them would silently clear them.
pub(crate) fn make_readonly(path: &str, recursive: bool) -> Result<(), ChildError> {
    if recursive {
        let c = cstring(path.to_owned())?;
        match crate::sys::mount_setattr_rdonly(&c, true) {
            Ok(()) => return Ok(()),
            // Before Linux 5.12: fall back to the top mount only.
            Err(Errno::NOSYS) => {}
            Err(e) => return Err(ChildError::sys("mount_setattr read-only", path, e)),
        }
    }
    let st = rustix::fs::statvfs(path).ctx("statvfs", path)?;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    use rustix::fs::StatVfsMountFlags as S;
    for (s, m) in [
        (S::NOSUID, MountFlags::NOSUID),
        (S::NODEV, MountFlags::NODEV),
        (S::NOEXEC, MountFlags::NOEXEC),
        (S::NOATIME, MountFlags::NOATIME),
        (S::NODIRATIME, MountFlags::NODIRATIME),
        (S::RELATIME, MountFlags::RELATIME),
    ] {
        if st.f_flag.contains(s) {
            flags |= m;
        }
    }
    rustix::mount::mount_remount(path, flags, "").ctx("remount read-only", path)
}
