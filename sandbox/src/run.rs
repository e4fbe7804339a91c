//! The caller's side of [`run`]: spawn the init, stream the output, collect the
//! report.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;

use crate::error::Error;
use crate::init::Report;
use crate::{Cancel, ContainerSpec, MountKind, Rootfs, RunResult, Stream, INIT_ARG};

/// How often a blocked [`run`] looks at its [`Cancel`] token.
const CANCEL_TICK: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 50_000_000,
};

/// Runs `spec.args` in a new container and waits for it.
///
/// Callable from any thread, concurrently. Output chunks are passed to `output`
/// as they arrive, stdout and stderr apart; stdin is `/dev/null`. A process that
/// ran, whatever its exit status, gives `Ok`; `Err` means the container could
/// not be set up ([`Error::Sys`] names the syscall and the path), the command
/// could not be executed ([`Error::Exec`], runc's wording, 127/126), or `cancel`
/// fired ([`Error::Cancelled`]: the whole pid namespace was killed).
///
/// The program must call [`init_hook`](crate::init_hook) first thing in `main`:
/// this spawns `/proc/self/exe` as the container's init.
pub fn run(
    spec: &ContainerSpec,
    output: &mut dyn FnMut(Stream, &[u8]),
    cancel: &Cancel,
) -> Result<RunResult, Error> {
    validate(spec)?;
    let json = serde_json::to_vec(spec).map_err(|e| Error::InvalidSpec(e.to_string()))?;

    // The spec goes over a memfd: no size limit, and no deadlock against a pipe
    // the init has not started reading yet.
    let memfd = rustix::fs::memfd_create("rbuild-sandbox-spec", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| Error::sys("memfd_create", "", e))?;
    std::fs::File::from(
        memfd
            .try_clone()
            .map_err(|e| Error::sys("dup", "memfd", e))?,
    )
    .write_all(&json)
    .map_err(|e| Error::sys("write", "spec memfd", e))?;
    drop(json);

    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::sys("pipe", "", e))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (lifeline_r, lifeline_w) = pipe()?;

    let inherited = [
        memfd.as_raw_fd(),
        report_w.as_raw_fd(),
        lifeline_r.as_raw_fd(),
    ];
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("rbuild-sandbox-init")
        .arg(INIT_ARG)
        .args(inherited.iter().map(|fd| fd.to_string()))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    // SAFETY: the closure runs between fork and exec and only calls fcntl on
    // descriptors that the OwnedFds above keep open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherited {
                crate::sys::clear_cloexec(fd)?;
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| Error::sys("spawn sandbox init", "/proc/self/exe", e))?;
    // Our copies of the child's ends must go, or the pipes never reach EOF.
    drop(cmd);
    drop((memfd, report_w, lifeline_r));

    let mut guard = InitGuard {
        child: Some(child),
        lifeline: Some(lifeline_w),
    };
    let mut streams: [(Option<OwnedFd>, Option<Stream>); 3] = [
        (Some(out_r), Some(Stream::Stdout)),
        (Some(err_r), Some(Stream::Stderr)),
        (Some(report_r), None),
    ];
    let mut report = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cancelled = false;
    while streams.iter().any(|(fd, _)| fd.is_some()) {
        if !cancelled && cancel.is_cancelled() {
            cancelled = true;
            // Closing the lifeline makes the init SIGKILL pid 1, which takes the
            // whole pid namespace with it.
            guard.lifeline = None;
        }
        let mut ready = [false; 3];
        {
            let mut pfds = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(3);
            for (i, (fd, _)) in streams.iter().enumerate() {
                if let Some(fd) = fd {
                    pfds.push(PollFd::new(fd, PollFlags::IN));
                    which.push(i);
                }
            }
            match rustix::event::poll(&mut pfds, Some(&CANCEL_TICK)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(Error::sys("poll", "", e)),
            }
            for (p, i) in pfds.iter().zip(which) {
                ready[i] = !p.revents().is_empty();
            }
        }
        for (i, (slot, stream)) in streams.iter_mut().enumerate() {
            let Some(fd) = slot.as_ref().filter(|_| ready[i]) else {
                continue;
            };
            match rustix::io::read(fd.as_fd(), &mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => match stream {
                    Some(s) => output(*s, &buf[..n]),
                    None => report.extend_from_slice(&buf[..n]),
                },
                Err(Errno::INTR) | Err(Errno::AGAIN) => {}
                Err(e) => return Err(Error::sys("read", "container output", e)),
            }
        }
    }

    let init_status = guard.wait();
    if cancelled {
        return Err(Error::Cancelled);
    }
    let mut created = Vec::new();
    let mut failed = None;
    let mut exit = None;
    for line in report.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Report>(line) {
            Ok(Report::Created(c)) => created.extend(c),
            Ok(Report::Failed(e)) => failed = Some(e),
            Ok(Report::Exit(s)) => exit = Some(s),
            Err(e) => return Err(Error::Init(format!("unreadable report from the init: {e}"))),
        }
    }
    if let Some(e) = failed {
        return Err(e.into());
    }
    match exit {
        Some(status) => Ok(RunResult { status, created }),
        None => Err(Error::Init(format!(
            "it ended ({}) without reporting the container's status",
            match init_status {
                Some(s) => s.to_string(),
                None => "status unknown".to_owned(),
            }
        ))),
    }
}

/// Kills and reaps the init however `run` is left (error, panic in `output`).
struct InitGuard {
    child: Option<Child>,
    lifeline: Option<OwnedFd>,
}

impl InitGuard {
    fn wait(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        child.wait().ok()
    }
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        // The init kills pid 1 when the lifeline closes, then exits.
        self.lifeline = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }
}

/// Rejects what cannot cross to the init or would be refused later with a less
/// clear message.
fn validate(spec: &ContainerSpec) -> Result<(), Error> {
    let bad = |m: String| Err(Error::InvalidSpec(m));
    if spec.args.is_empty() {
        return bad("no command (args is empty)".into());
    }
    for s in spec.args.iter().chain(&spec.env) {
        if s.contains('\0') {
            return bad(format!("{s:?} contains a NUL byte"));
        }
    }
    if !spec.cwd.starts_with('/') {
        return bad(format!("cwd {:?} is not absolute", spec.cwd));
    }
    if spec.uid == u32::MAX || spec.gid == u32::MAX || spec.additional_gids.contains(&u32::MAX) {
        return bad("uid/gid 4294967295 (-1) is not a valid id".into());
    }
    let mut paths: Vec<&std::path::Path> = Vec::new();
    match &spec.rootfs {
        Rootfs::Overlay {
            lower, upper, work, ..
        } => {
            if lower.is_empty() {
                return bad("overlay rootfs has no lower layer".into());
            }
            paths.extend(lower.iter().map(|p| p.as_path()));
            paths.push(upper);
            paths.push(work);
        }
        Rootfs::Dir(p) => paths.push(p),
    }
    for m in &spec.mounts {
        if !m.target.starts_with('/') {
            return bad(format!("mount target {:?} is not absolute", m.target));
        }
        match &m.kind {
            MountKind::Bind { source, .. } => paths.push(source),
            MountKind::Overlay {
                lower, upper_work, ..
            } => {
                if lower.is_empty() {
                    return bad(format!("overlay mount at {} has no lower layer", m.target));
                }
                paths.extend(lower.iter().map(|p| p.as_path()));
                if let Some((u, w)) = upper_work {
                    paths.push(u);
                    paths.push(w);
                }
            }
            MountKind::Tmpfs { .. } => {}
            MountKind::File { uid, gid, .. } => {
                if *uid == u32::MAX || *gid == u32::MAX {
                    return bad(format!(
                        "file mount at {}: uid/gid -1 is not valid",
                        m.target
                    ));
                }
            }
        }
    }
    for (target, src) in &spec.etc_files {
        if !target.starts_with('/') {
            return bad(format!("etc file target {target:?} is not absolute"));
        }
        paths.push(src);
    }
    for p in paths {
        if p.to_str().is_none() {
            return bad(format!("host path {} is not UTF-8", p.display()));
        }
        if !p.is_absolute() {
            return bad(format!("host path {} is not absolute", p.display()));
        }
    }
    Ok(())
}
