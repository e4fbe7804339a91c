//! The sandbox's init process (started by [`crate::run`] as
//! `/proc/self/exe __rbuild-sandbox-init SPEC_FD REPORT_FD LIFELINE_FD`) and the
//! container's pid 1 that it forks.
//!
//! The init is single-threaded (it has just been exec'd), so it may fork and
//! the child may allocate freely. Everything it has to say goes to the report
//! pipe as JSON lines ([`Report`]); stdout and stderr belong to the container.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};
use serde::{Deserialize, Serialize};

use crate::error::{ChildError, Ctx};
use crate::mounts::{cstring, fd_path, is_dir, make_readonly, resolve, Create, Created};
use crate::sys::{self, Forked};
use crate::{
    Capabilities, ContainerSpec, ExitStatus, MountKind, Network, Rootfs, DEFAULT_CAPABILITIES,
};

/// One message on the report pipe.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// From pid 1, before exec (also before reporting a setup failure).
    Created(Vec<String>),
    /// From pid 1 or the init: setup or exec failed.
    Failed(ChildError),
    /// From the init: how pid 1 ended.
    Exit(ExitStatus),
}

struct Reporter(OwnedFd);

impl Reporter {
    fn send(&self, r: &Report) {
        let Ok(mut line) = serde_json::to_vec(r) else {
            return;
        };
        line.push(b'\n');
        let mut buf = &line[..];
        // Errors are ignored: if the caller is gone, nobody is left to tell.
        while !buf.is_empty() {
            match rustix::io::write(&self.0, buf) {
                Ok(n) => buf = &buf[n..],
                Err(Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// The init's entry point; never returns.
pub(crate) fn main() -> ! {
    let args: Vec<String> = std::env::args().collect();
    let fds: Option<Vec<OwnedFd>> = args
        .get(2..5)
        .and_then(|a| a.iter().map(|s| take_fd(s)).collect());
    let Some([spec, report, lifeline]) = fds.and_then(|v| <[OwnedFd; 3]>::try_from(v).ok()) else {
        eprintln!(
            "{} is rbuild's internal sandbox init; it is not meant to be run by hand",
            crate::INIT_ARG
        );
        std::process::exit(125);
    };
    // Keep them from the container's process.
    for fd in [&spec, &report, &lifeline] {
        let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    }
    let report = Reporter(report);
    match init(spec, &report, lifeline) {
        Ok(status) => report.send(&Report::Exit(status)),
        Err(e) => report.send(&Report::Failed(e)),
    }
    std::process::exit(0)
}

/// Takes ownership of an inherited descriptor named on the command line,
/// after checking that it is open and not stdio.
fn take_fd(s: &str) -> Option<OwnedFd> {
    let n: RawFd = s.parse().ok()?;
    if n <= 2 {
        return None;
    }
    // SAFETY: F_GETFD takes no memory; it only tells whether `n` is open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: `n` is open (checked above) and was passed to this freshly exec'd
    // process by `run` for this purpose only; nothing else in the process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

fn init(spec_fd: OwnedFd, report: &Reporter, lifeline: OwnedFd) -> Result<ExitStatus, ChildError> {
    let mut file = std::fs::File::from(spec_fd);
    let mut json = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut json))
        .ctx("read spec", "")?;
    drop(file);
    let spec: ContainerSpec =
        serde_json::from_slice(&json).map_err(|e| ChildError::Invalid(format!("spec: {e}")))?;
    drop(json);

    let mut flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWUTS | UnshareFlags::NEWIPC | UnshareFlags::NEWPID;
    if spec.network == Network::None {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: unshare_unsafe is unsafe only because of CLONE_FILES, which is not
    // used; the process is single-threaded.
    unsafe { rustix::thread::unshare_unsafe(flags) }.ctx("unshare namespaces", "")?;

    // SAFETY: this process is single-threaded (freshly exec'd, no threads started).
    match unsafe { sys::fork() }.ctx("fork", "")? {
        Forked::Child => container(&spec, report, &lifeline),
        Forked::Parent(pid) => Ok(supervise(pid, &lifeline)),
    }
}

/// Waits for pid 1; kills it (and so its pid namespace) when the lifeline from
/// the caller closes, which happens on cancel and when the caller dies.
fn supervise(pid: Pid, lifeline: &OwnedFd) -> ExitStatus {
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    let tick = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    let mut killed = false;
    loop {
        let mut fds = Vec::with_capacity(2);
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        if !killed {
            fds.push(PollFd::new(lifeline, PollFlags::IN));
        }
        // Without a pidfd (Linux < 5.3), or once the lifeline is spent, poll on a tick.
        let timeout = if pidfd.is_some() { None } else { Some(&tick) };
        let _ = rustix::event::poll(&mut fds, timeout);
        let lifeline_gone = !killed && fds.last().is_some_and(|f| !f.revents().is_empty());
        drop(fds);
        if lifeline_gone {
            sys::kill(pid, libc::SIGKILL);
            killed = true;
        }
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(Some((_, st))) => {
                if let Some(sig) = st.terminating_signal() {
                    return ExitStatus::Signaled(sig);
                }
                return ExitStatus::Exited(st.exit_status().unwrap_or(0));
            }
            Ok(None) | Err(Errno::INTR) => {}
            // ECHILD cannot happen for our own child; treat anything else as lost.
            Err(_) => return ExitStatus::Signaled(libc::SIGKILL),
        }
    }
}

/// pid 1 of the new pid namespace: set up the container and exec the command.
fn container(spec: &ContainerSpec, report: &Reporter, lifeline: &OwnedFd) -> ! {
    let mut created = Vec::new();
    let result = setup(spec, lifeline, &mut created);
    report.send(&Report::Created(created));
    let err = match result {
        Ok(exec) => exec.exec(),
        Err(e) => e,
    };
    report.send(&Report::Failed(err));
    std::process::exit(1)
}

/// Descriptors of the host paths a spec names, opened before the staging tmpfs
/// can hide them (they may well live under /tmp).
struct Sources {
    rootfs: Vec<OwnedFd>,
    mounts: Vec<Vec<OwnedFd>>,
    etc: Vec<OwnedFd>,
}

fn open_host(path: &std::path::Path, dir: bool) -> Result<OwnedFd, ChildError> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    rustix::fs::open(path, flags, Mode::empty()).ctx("open", path.display())
}

impl Sources {
    fn open(spec: &ContainerSpec) -> Result<Self, ChildError> {
        let rootfs = match &spec.rootfs {
            Rootfs::Overlay {
                lower, upper, work, ..
            } => {
                let mut v = Vec::with_capacity(lower.len() + 2);
                for p in lower.iter().chain([upper, work]) {
                    v.push(open_host(p, true)?);
                }
                v
            }
            Rootfs::Dir(p) => vec![open_host(p, true)?],
        };
        let mut mounts = Vec::with_capacity(spec.mounts.len());
        for m in &spec.mounts {
            mounts.push(match &m.kind {
                MountKind::Bind { source, .. } => vec![open_host(source, false)?],
                MountKind::Overlay {
                    lower, upper_work, ..
                } => {
                    let mut v = Vec::new();
                    for p in lower {
                        v.push(open_host(p, true)?);
                    }
                    if let Some((u, w)) = upper_work {
                        v.push(open_host(u, true)?);
                        v.push(open_host(w, true)?);
                    }
                    v
                }
                MountKind::Tmpfs { .. } | MountKind::File { .. } => Vec::new(),
            });
        }
        let mut etc = Vec::with_capacity(spec.etc_files.len());
        for (_, src) in &spec.etc_files {
            etc.push(open_host(src, false)?);
        }
        Ok(Self {
            rootfs,
            mounts,
            etc,
        })
    }
}

/// overlayfs options naming the layers by `/proc/self/fd/N`: immune to the
/// staging mount, and short, so even a hundred layers fit in one page.
fn overlay_options(
    lower: &[OwnedFd],
    upper_work: Option<(&OwnedFd, &OwnedFd)>,
    userxattr: bool,
) -> String {
    let lowers: Vec<String> = lower.iter().map(|fd| fd_path(fd.as_fd())).collect();
    let mut o = format!("lowerdir={}", lowers.join(":"));
    if let Some((u, w)) = upper_work {
        // index=off: copy-up never keeps lower hard links together, so a
        // write to one path of a layer never shows through another (lower
        // snapshots share inodes: rbuild links unchanged files).
        o.push_str(&format!(
            ",upperdir={},workdir={},index=off",
            fd_path(u.as_fd()),
            fd_path(w.as_fd())
        ));
    }
    if userxattr {
        o.push_str(",userxattr");
    }
    o
}

fn describe_overlay(
    lower: &[std::path::PathBuf],
    upper_work: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let l: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let mut s = format!("lowerdir={}", l.join(":"));
    if let Some((u, w)) = upper_work {
        s.push_str(&format!(
            " upperdir={} workdir={}",
            u.display(),
            w.display()
        ));
    }
    s
}

fn mount_overlay(
    target: &str,
    options: String,
    readonly: bool,
    what: &str,
) -> Result<(), ChildError> {
    let flags = if readonly {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    let data = cstring(options)?;
    rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str())
        .ctx("mount overlay (the kernel log says why)", what)
}

fn mount_tmpfs(
    target: &str,
    flags: MountFlags,
    options: &str,
    what: &str,
) -> Result<(), ChildError> {
    let data = cstring(options.to_owned())?;
    rustix::mount::mount("tmpfs", target, "tmpfs", flags, data.as_c_str()).ctx("mount tmpfs", what)
}

/// Directories the staging tmpfs may cover in our private mount namespace (as
/// bubblewrap does with /tmp); the first that exists is used.
const STAGING: &[&str] = &["/tmp", "/run", "/mnt", "/var/tmp"];

/// Host device nodes bind-mounted into /dev (a user namespace may not mknod).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Docker's masked paths: covered with an empty read-only tmpfs (directories)
/// or /dev/null (files) unless the container is privileged.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Docker's read-only paths, so that root in the container cannot change the
/// host's sysctls and friends.
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn setup(
    spec: &ContainerSpec,
    lifeline: &OwnedFd,
    created_out: &mut Vec<String>,
) -> Result<Exec, ChildError> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .ctx("prctl(PR_SET_PDEATHSIG)", "")?;
    // The init cannot die before us unless killed, but the caller can: if the
    // lifeline already reads as closed, nobody wants this container any more.
    let mut probe = [PollFd::new(lifeline, PollFlags::IN)];
    if rustix::event::poll(
        &mut probe,
        Some(&rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }),
    )
    .unwrap_or(0)
        > 0
    {
        std::process::exit(1);
    }
    // Modes of what we create are exact; the process gets Docker's 022 later.
    rustix::process::umask(Mode::empty());

    let sources = Sources::open(spec)?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .ctx("make mounts private", "/")?;

    let staging = STAGING
        .iter()
        .copied()
        .find(|p| {
            rustix::fs::stat(*p)
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir())
        })
        .ok_or_else(|| {
            ChildError::Invalid(format!(
                "none of {STAGING:?} exists to stage the container's root"
            ))
        })?;
    mount_tmpfs(
        staging,
        MountFlags::NOSUID | MountFlags::NODEV,
        "mode=700",
        staging,
    )?;
    let staging_fd = rustix::fs::open(
        staging,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", staging)?;
    rustix::fs::mkdirat(&staging_fd, "root", Mode::from_raw_mode(0o755)).ctx("mkdir", staging)?;
    let root_path = format!("{staging}/root");

    // The root filesystem.
    match &spec.rootfs {
        Rootfs::Overlay {
            lower,
            upper,
            work,
            userxattr,
        } => {
            let n = lower.len();
            let opts = overlay_options(
                &sources.rootfs[..n],
                Some((&sources.rootfs[n], &sources.rootfs[n + 1])),
                *userxattr,
            );
            mount_overlay(
                &root_path,
                opts,
                false,
                &describe_overlay(lower, Some((upper, work))),
            )?;
        }
        Rootfs::Dir(dir) => {
            rustix::mount::mount_bind_recursive(
                fd_path(sources.rootfs[0].as_fd()),
                root_path.as_str(),
            )
            .ctx("bind mount rootfs", dir.display())?;
        }
    }
    let root = rustix::fs::open(
        root_path.as_str(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", &root_path)?;
    let root = root.as_fd();
    let mut created = Created::new(root);
    let result = populate(
        spec,
        &sources,
        root,
        staging_fd.as_fd(),
        staging,
        &mut created,
    );
    created_out.append(&mut created.paths);
    result?;

    // Enter the root: pivot_root(".", ".") stacks the old root on top of the new
    // one at "."; detaching it leaves the container's tree alone, and the host's
    // filesystem unreachable.
    rustix::process::fchdir(root).ctx("chdir", "container root")?;
    rustix::process::pivot_root(".", ".").ctx("pivot_root", &root_path)?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).ctx("detach old root", "")?;
    rustix::process::chdir("/").ctx("chdir", "/")?;
    drop(sources);
    drop(staging_fd);

    let newroot = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", "/")?;
    let mut created = Created::new(newroot.as_fd());
    let cwd = resolve(newroot.as_fd(), &spec.cwd, Create::Dir, &mut created);
    created_out.append(&mut created.paths);
    let cwd = cwd?;
    rustix::process::fchdir(&cwd.fd).ctx("chdir", &spec.cwd)?;

    Exec::prepare(spec)
}

/// Everything between the root filesystem and pivot_root.
fn populate(
    spec: &ContainerSpec,
    sources: &Sources,
    root: BorrowedFd<'_>,
    staging_fd: BorrowedFd<'_>,
    staging: &str,
    created: &mut Created,
) -> Result<(), ChildError> {
    // /proc: a new procfs shows this pid namespace only.
    let t = resolve(root, "/proc", Create::Dir, created)?;
    rustix::mount::mount(
        "proc",
        t.proc_path().as_str(),
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )
    .ctx("mount proc", "/proc")?;

    setup_dev(root, created)?;

    // /sys, read-only: a new sysfs where allowed (it needs the network
    // namespace's owner: real root, or a new network namespace), else the host's.
    let t = resolve(root, "/sys", Create::Dir, created)?;
    let ro = MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    if rustix::mount::mount("sysfs", t.proc_path().as_str(), "sysfs", ro, None).is_err() {
        // Recursive: in a user namespace the kernel refuses a plain bind of a
        // tree whose submounts (cgroups, …) are locked, as it would uncover
        // what they hide.
        rustix::mount::mount_bind_recursive("/sys", t.proc_path().as_str())
            .ctx("bind mount", "/sys")?;
        let t = resolve(root, "/sys", Create::No, created)?;
        make_readonly(&t.proc_path(), true)?;
    }

    if spec.capabilities == Capabilities::Default {
        for p in MASKED {
            let t = match resolve(root, p, Create::No, created) {
                Ok(t) => t,
                Err(ChildError::Sys { errno, .. }) if errno == libc::ENOENT => continue,
                Err(e) => return Err(e),
            };
            if is_dir(t.fd.as_fd()) {
                mount_tmpfs(&t.proc_path(), ro, "mode=755", p)?;
            } else {
                rustix::mount::mount_bind("/dev/null", t.proc_path().as_str()).ctx("mask", p)?;
            }
        }
        for p in READONLY {
            let t = match resolve(root, p, Create::No, created) {
                Ok(t) => t,
                Err(ChildError::Sys { errno, .. }) if errno == libc::ENOENT => continue,
                Err(e) => return Err(e),
            };
            rustix::mount::mount_bind_recursive(t.proc_path().as_str(), t.proc_path().as_str())
                .ctx("bind mount", p)?;
            let t = resolve(root, p, Create::No, created)?;
            make_readonly(&t.proc_path(), true)?;
        }
    }

    for ((target, src), fd) in spec.etc_files.iter().zip(&sources.etc) {
        let create = if is_dir(fd.as_fd()) {
            Create::Dir
        } else {
            Create::File
        };
        let t = resolve(root, target, create, created)?;
        rustix::mount::mount_bind(fd_path(fd.as_fd()), t.proc_path().as_str())
            .ctx("bind mount", src.display())?;
        let t = resolve(root, target, Create::No, created)?;
        make_readonly(&t.proc_path(), false)?;
    }

    let mut secrets = 0usize;
    for (m, fds) in spec.mounts.iter().zip(&sources.mounts) {
        match &m.kind {
            MountKind::Bind { source, readonly } => {
                bind(
                    root,
                    &m.target,
                    &fds[0],
                    *readonly,
                    &source.display().to_string(),
                    created,
                )?;
            }
            MountKind::Overlay {
                lower,
                upper_work,
                userxattr,
            } => {
                if lower.is_empty() {
                    return Err(ChildError::Invalid(format!(
                        "overlay mount at {} has no lower layer",
                        m.target
                    )));
                }
                if upper_work.is_none() && lower.len() == 1 {
                    // overlayfs wants two layers without an upper; one is a read-only bind.
                    bind(
                        root,
                        &m.target,
                        &fds[0],
                        true,
                        &lower[0].display().to_string(),
                        created,
                    )?;
                    continue;
                }
                let n = lower.len();
                let uw = upper_work.as_ref().map(|_| (&fds[n], &fds[n + 1]));
                let opts = overlay_options(&fds[..n], uw, *userxattr);
                let what = describe_overlay(
                    lower,
                    upper_work.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
                );
                let t = resolve(root, &m.target, Create::Dir, created)?;
                mount_overlay(&t.proc_path(), opts, upper_work.is_none(), &what)?;
            }
            MountKind::Tmpfs { size, mode } => {
                let t = resolve(root, &m.target, Create::Dir, created)?;
                let mut opts = format!("mode={:o}", mode & 0o7777);
                if *size > 0 {
                    opts.push_str(&format!(",size={size}"));
                }
                mount_tmpfs(
                    &t.proc_path(),
                    MountFlags::NOSUID | MountFlags::NODEV,
                    &opts,
                    &m.target,
                )?;
            }
            MountKind::File {
                content,
                mode,
                uid,
                gid,
            } => {
                // The content goes to the staging tmpfs, which no path reaches once
                // the old root is detached; only the bind mount keeps it alive.
                if secrets == 0 {
                    rustix::fs::mkdirat(staging_fd, "files", Mode::from_raw_mode(0o700))
                        .ctx("mkdir", staging)?;
                }
                secrets += 1;
                let name = format!("files/{secrets}");
                let f = rustix::fs::openat(
                    staging_fd,
                    name.as_str(),
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .ctx("create file for", &m.target)?;
                let mut buf = &content[..];
                while !buf.is_empty() {
                    match rustix::io::write(&f, buf) {
                        Ok(n) => buf = &buf[n..],
                        Err(Errno::INTR) => {}
                        Err(e) => return Err(ChildError::sys("write file for", &m.target, e)),
                    }
                }
                rustix::fs::fchown(
                    &f,
                    Some(rustix::fs::Uid::from_raw(*uid)),
                    Some(rustix::fs::Gid::from_raw(*gid)),
                )
                .ctx(&format!("chown {uid}:{gid} file for"), &m.target)?;
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777))
                    .ctx("chmod file for", &m.target)?;
                bind(root, &m.target, &f, true, &m.target, created)?;
            }
        }
    }

    if !spec.hostname.is_empty() {
        rustix::system::sethostname(spec.hostname.as_bytes()).ctx("sethostname", &spec.hostname)?;
    }
    if spec.network == Network::None {
        sys::loopback_up().ctx("bring up", "lo")?;
    }
    Ok(())
}

/// Bind-mounts `src` (a directory or a file) at `target`, read-only if asked.
fn bind(
    root: BorrowedFd<'_>,
    target: &str,
    src: &OwnedFd,
    readonly: bool,
    what: &str,
    created: &mut Created,
) -> Result<(), ChildError> {
    let create = if is_dir(src.as_fd()) {
        Create::Dir
    } else {
        Create::File
    };
    let t = resolve(root, target, create, created)?;
    rustix::mount::mount_bind_recursive(fd_path(src.as_fd()), t.proc_path().as_str())
        .ctx("bind mount", what)?;
    if readonly {
        let t = resolve(root, target, Create::No, created)?;
        make_readonly(&t.proc_path(), true)?;
    }
    Ok(())
}

/// A minimal /dev on a tmpfs: host device nodes bind-mounted, a private devpts,
/// a /dev/shm and the usual symlinks.
fn setup_dev(root: BorrowedFd<'_>, created: &mut Created) -> Result<(), ChildError> {
    let t = resolve(root, "/dev", Create::Dir, created)?;
    mount_tmpfs(
        &t.proc_path(),
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        "mode=755,size=65536k",
        "/dev",
    )?;
    let dev = resolve(root, "/dev", Create::No, created)?;
    let dev = dev.fd.as_fd();
    for name in DEVICES {
        let host = format!("/dev/{name}");
        if rustix::fs::stat(host.as_str()).is_err() {
            continue; // e.g. no /dev/tty on the host: leave it out.
        }
        let node = rustix::fs::openat(
            dev,
            *name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        )
        .ctx("create", &host)?;
        rustix::mount::mount_bind(host.as_str(), fd_path(node.as_fd())).ctx("bind mount", &host)?;
    }
    rustix::fs::mkdirat(dev, "pts", Mode::from_raw_mode(0o755)).ctx("mkdir", "/dev/pts")?;
    let pts = rustix::fs::openat(
        dev,
        "pts",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", "/dev/pts")?;
    let flags = MountFlags::NOSUID | MountFlags::NOEXEC;
    let with_gid = c"newinstance,ptmxmode=0666,mode=0620,gid=5";
    if rustix::mount::mount("devpts", fd_path(pts.as_fd()), "devpts", flags, with_gid).is_err() {
        // gid 5 (tty) is not mapped in a single-id user namespace.
        rustix::mount::mount(
            "devpts",
            fd_path(pts.as_fd()),
            "devpts",
            flags,
            c"newinstance,ptmxmode=0666,mode=0620",
        )
        .ctx("mount devpts", "/dev/pts")?;
    }
    rustix::fs::mkdirat(dev, "shm", Mode::from_raw_mode(0o1777)).ctx("mkdir", "/dev/shm")?;
    let shm = rustix::fs::openat(
        dev,
        "shm",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("open", "/dev/shm")?;
    mount_tmpfs(
        &fd_path(shm.as_fd()),
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "mode=1777,size=65536k",
        "/dev/shm",
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        rustix::fs::symlinkat(target, dev, name).ctx("symlink", format!("/dev/{name}"))?;
    }
    Ok(())
}

/// The command, ready to exec once credentials are dropped.
struct Exec {
    program: String,
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    capabilities: Capabilities,
    no_new_privs: bool,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Exec {
    fn prepare(spec: &ContainerSpec) -> Result<Self, ChildError> {
        let nul = |_| ChildError::Invalid("argument or environment contains a NUL byte".into());
        let argv = spec
            .args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(nul))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = spec
            .env
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(nul))
            .collect::<Result<Vec<_>, _>>()?;
        let program = spec.args.first().cloned().unwrap_or_default();
        let path_var = spec
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let path = look_path(&program, path_var)?;
        Ok(Self {
            path: CString::new(path).map_err(nul)?,
            program,
            argv,
            envp,
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.additional_gids.clone(),
            capabilities: spec.capabilities,
            no_new_privs: spec.no_new_privs,
        })
    }

    /// Drops to the process's credentials and capabilities and execs. Returns
    /// only with the reason it could not.
    fn exec(self) -> ChildError {
        match self.drop_privileges() {
            Ok(()) => {}
            Err(e) => return e,
        }
        sys::reset_signals();
        sys::cloexec_from(3);
        let errno = sys::execve(&self.path, &self.argv, &self.envp);
        let (message, code) = match errno {
            Errno::NOENT => ("no such file or directory".to_owned(), 127),
            Errno::ACCESS => ("permission denied".to_owned(), 126),
            Errno::NOEXEC => ("exec format error".to_owned(), 126),
            e => (std::io::Error::from(e).to_string(), 126),
        };
        ChildError::Exec {
            program: self.program,
            message,
            code,
        }
    }

    fn drop_privileges(&self) -> Result<(), ChildError> {
        let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
            .min(63);
        let all = if last_cap == 63 {
            u64::MAX
        } else {
            (1u64 << (last_cap + 1)) - 1
        };
        let allowed = match self.capabilities {
            Capabilities::Default => DEFAULT_CAPABILITIES,
            Capabilities::All => all,
        };
        for cap in 0..=last_cap {
            let bit = 1u64 << cap;
            if allowed & bit == 0 {
                rustix::thread::remove_capability_from_bounding_set(
                    CapabilitySet::from_bits_retain(bit),
                )
                .ctx("drop capability from bounding set", cap)?;
            }
        }

        let groups: Vec<rustix::fs::Gid> = self
            .groups
            .iter()
            .map(|&g| rustix::fs::Gid::from_raw(g))
            .collect();
        match rustix::thread::set_thread_groups(&groups) {
            Ok(()) => {}
            // With setgroups denied (a single-id user namespace), an empty list
            // is what the process has anyway.
            Err(Errno::PERM) if groups.is_empty() => {}
            Err(e) => {
                let denied = e == Errno::PERM
                    && std::fs::read_to_string("/proc/self/setgroups")
                        .is_ok_and(|s| s.trim() == "deny");
                let op = if denied {
                    "setgroups (setgroups is denied in a single-id user namespace)"
                } else {
                    "setgroups"
                };
                return Err(ChildError::sys(op, format!("{:?}", self.groups), e));
            }
        }
        // EINVAL from setresuid/setresgid means the id has no mapping.
        let unmapped = |op: &str, e: Errno| {
            if e == Errno::INVAL {
                format!(
                    "{op} (not mapped in this user namespace: rootless without subordinate ids?)"
                )
            } else {
                op.to_owned()
            }
        };
        let gid = rustix::fs::Gid::from_raw(self.gid);
        rustix::thread::set_thread_res_gid(gid, gid, gid)
            .map_err(|e| ChildError::sys(unmapped("setresgid", e), format!("{}", self.gid), e))?;
        let uid = rustix::fs::Uid::from_raw(self.uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid)
            .map_err(|e| ChildError::sys(unmapped("setresuid", e), format!("{}", self.uid), e))?;

        // For uid 0, execve gives permitted = effective = the bounding set; for
        // anyone else nothing (as Docker). Inheritable stays empty (as Docker
        // since CVE-2022-24769), and so does ambient.
        let current = rustix::thread::capabilities(None).ctx("capget", "")?;
        let allowed = CapabilitySet::from_bits_retain(allowed);
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: current.effective & allowed,
                permitted: current.permitted & allowed,
                inheritable: CapabilitySet::empty(),
            },
        )
        .ctx("capset", "")?;
        let _ = rustix::thread::clear_ambient_capability_set();

        // Changing credentials cleared the parent-death signal: set it again.
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
            .ctx("prctl(PR_SET_PDEATHSIG)", "")?;
        if self.no_new_privs {
            rustix::thread::set_no_new_privs(true).ctx("prctl(PR_SET_NO_NEW_PRIVS)", "")?;
        }
        rustix::process::umask(Mode::from_raw_mode(0o022));
        Ok(())
    }
}

/// Finds the program like Go's `exec.LookPath` (which runc uses): a name with a
/// `/` is taken as is, anything else is searched in `PATH`; a candidate must be
/// a non-directory with an execute bit.
fn look_path(program: &str, path_var: &str) -> Result<String, ChildError> {
    let check = |p: &str| -> Result<(), (String, i32)> {
        match rustix::fs::stat(p) {
            Ok(st) => {
                if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() {
                    Err(("is a directory".into(), 126))
                } else if st.st_mode & 0o111 == 0 {
                    Err(("permission denied".into(), 126))
                } else {
                    Ok(())
                }
            }
            Err(e) => Err((format!("stat {p}: {}", errno_text(e)), 127)),
        }
    };
    let fail = |message: String, code| ChildError::Exec {
        program: program.to_owned(),
        message,
        code,
    };
    if program.is_empty() {
        return Err(fail("executable file not found in $PATH".into(), 127));
    }
    if program.contains('/') {
        return check(program)
            .map(|()| program.to_owned())
            .map_err(|(m, c)| fail(m, c));
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = format!("{dir}/{program}");
        if check(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(fail("executable file not found in $PATH".into(), 127))
}

/// Go-style lowercase text for an errno.
fn errno_text(e: Errno) -> String {
    match e {
        Errno::NOENT => "no such file or directory".into(),
        Errno::ACCESS => "permission denied".into(),
        Errno::NOTDIR => "not a directory".into(),
        Errno::LOOP => "too many levels of symbolic links".into(),
        e => std::io::Error::from(e).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_path_follows_go_rules() {
        let e = look_path("surely-not-a-command-xyz", "/usr/bin:/bin").expect_err("missing");
        assert!(
            matches!(e, ChildError::Exec { code: 127, ref message, .. } if message == "executable file not found in $PATH")
        );
        // A directory or a non-executable file in PATH is skipped; found later it is not.
        assert_eq!(
            look_path("sh", "/nonexistent::/etc:/bin").expect("sh"),
            "/bin/sh"
        );
        let e = look_path("/etc/passwd", "").expect_err("not executable");
        assert!(matches!(e, ChildError::Exec { code: 126, .. }));
        let e = look_path("/etc", "").expect_err("a directory");
        assert!(
            matches!(e, ChildError::Exec { code: 126, ref message, .. } if message == "is a directory")
        );
        let e = look_path("/nonexistent/x", "").expect_err("missing");
        assert!(
            matches!(e, ChildError::Exec { code: 127, ref message, .. } if message == "stat /nonexistent/x: no such file or directory")
        );
    }

    #[test]
    fn report_round_trips() {
        let r = Report::Failed(ChildError::sys("mount proc", "/proc", Errno::PERM));
        let json = serde_json::to_vec(&r).expect("serialize");
        let Report::Failed(e) = serde_json::from_slice(&json).expect("parse") else {
            panic!("wrong variant")
        };
        assert_eq!(
            crate::Error::from(e).to_string(),
            "mount proc /proc: Operation not permitted (os error 1)"
        );
    }
}
