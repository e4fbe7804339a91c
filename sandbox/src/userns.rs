//! The rootless bootstrap: put the whole program in a user namespace.
//!
//! A normal user re-executes the program (same argv, plus an environment
//! marker) as a child that unshares a user and a mount namespace. The parent
//! maps the child's ids with the setuid helpers `newuidmap`/`newgidmap` from
//! `/etc/subuid`/`/etc/subgid` (0 → the user, 1..=N → the subordinate range),
//! then waits and forwards signals. Without subordinate ranges the child maps
//! just itself (0 → the user) and the caller gets a warning.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::io::Errno;
use rustix::mount::MountPropagationFlags;
use rustix::process::{Pid, Signal};
use rustix::thread::UnshareFlags;

use crate::error::Error;
use crate::sys;

/// Where [`enter_user_namespace`] left the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespace {
    /// Real root: no user namespace, but a private mount namespace.
    Root,
    /// Namespace root in a new user namespace with a private mount namespace.
    Rootless {
        /// The user's subordinate ids are mapped (1..=N inside); false means only
        /// uid/gid 0 exist inside.
        full_range: bool,
        /// What will not work, and how to fix it, for the caller to show.
        warning: Option<String>,
    },
    /// This is the waiting parent: its child did the work and ended. The caller
    /// must exit with this code (128 + signal if the child was killed) at once.
    ExitParent(i32),
}

/// The environment marker telling the re-executed child what to do.
const MARKER: &str = "_RBUILD_SANDBOX_USERNS";

/// Rootless bootstrap; call early in `main` (after [`init_hook`](crate::init_hook)),
/// while the process is single-threaded.
///
/// As real root: unshares a private mount namespace (mounts vanish with the
/// process) and returns [`Namespace::Root`]. As a normal user: re-executes the
/// program inside a new user and mount namespace; in the parent this returns
/// [`Namespace::ExitParent`] once the child has finished, in the child
/// [`Namespace::Rootless`]. Errors when user namespaces are unavailable or the
/// id mapping fails.
pub fn enter_user_namespace() -> Result<Namespace, Error> {
    if let Some(marker) = std::env::var_os(MARKER) {
        // Not inherited by anything this process starts (a nested rbuild).
        std::env::remove_var(MARKER);
        let marker = marker.to_string_lossy().into_owned();
        return child(&marker);
    }
    if rustix::process::geteuid().is_root() {
        // SAFETY: only CLONE_NEWNS, no CLONE_FILES; the caller is single-threaded
        // (the kernel refuses with EINVAL otherwise, reported below).
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNS) }
            .map_err(|e| Error::sys(single_threaded_hint("unshare(CLONE_NEWNS)", e), "", e))?;
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(|e| Error::sys("make mounts private", "/", e))?;
        return Ok(Namespace::Root);
    }
    parent()
}

/// Whether this process runs in a user namespace other than the initial one
/// (so overlay mounts need `userxattr`).
pub fn running_in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let lines: Vec<Vec<&str>> = map
                .lines()
                .map(|l| l.split_whitespace().collect())
                .collect();
            lines != [vec!["0", "0", "4294967295"]]
        }
        Err(_) => false,
    }
}

fn single_threaded_hint(op: &str, e: Errno) -> String {
    if e == Errno::INVAL {
        format!("{op} (the process must still be single-threaded)")
    } else {
        op.to_owned()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// newuidmap/newgidmap with subordinate ranges.
    Full,
    /// No subordinate ranges for the user.
    NoRanges,
    /// newuidmap/newgidmap are missing.
    NoHelpers,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::NoRanges => "noranges",
            Mode::NoHelpers => "nohelpers",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Mode::Full, Mode::NoRanges, Mode::NoHelpers]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// `(first host id, count)` ranges for the user in a subid file.
fn subid_ranges(file: &Path, name: Option<&str>, id: u32) -> Vec<(u32, u32)> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let id = id.to_string();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        let [who, start, count] = f[..] else { continue };
        if who != id && Some(who) != name {
            continue;
        }
        if let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) {
            if count > 0 && start.checked_add(count).is_some() {
                out.push((start, count));
            }
        }
    }
    out
}

fn find_helper(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// newuidmap/newgidmap arguments after the pid: `0 <own id> 1`, then each
/// subordinate range from 1 up.
fn map_args(own: u32, ranges: &[(u32, u32)]) -> Vec<String> {
    let mut args = vec!["0".to_owned(), own.to_string(), "1".to_owned()];
    let mut inside: u64 = 1;
    for &(start, count) in ranges {
        args.extend([inside.to_string(), start.to_string(), count.to_string()]);
        inside += u64::from(count);
    }
    args
}

fn unavailable_reason() -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("user namespaces are disabled (sysctl user.max_user_namespaces=0); rootless rbuild needs them: set it to e.g. 15000, or run rbuild as root".into());
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some("unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=0); rootless rbuild needs them: set it to 1, or run rbuild as root".into());
    }
    None
}

fn parent() -> Result<Namespace, Error> {
    if let Some(reason) = unavailable_reason() {
        return Err(Error::UserNamespace(reason));
    }
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let name = sys::user_name(uid);
    let subuids = subid_ranges(Path::new("/etc/subuid"), name.as_deref(), uid);
    let subgids = subid_ranges(Path::new("/etc/subgid"), name.as_deref(), uid);
    let helpers = find_helper("newuidmap").zip(find_helper("newgidmap"));
    let mode = match (&helpers, subuids.is_empty() || subgids.is_empty()) {
        (_, true) => Mode::NoRanges,
        (None, false) => Mode::NoHelpers,
        (Some(_), false) => Mode::Full,
    };
    let count = subuids
        .iter()
        .chain(&subgids)
        .map(|r| r.1)
        .min()
        .unwrap_or(0);

    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::sys("pipe", "", e))
    };
    let (p2c_r, p2c_w) = pipe()?;
    let (c2p_r, c2p_w) = pipe()?;
    let me = rustix::process::getpid();
    let marker = format!(
        "{}:{}:{}:{}:{}:{}:{}",
        me.as_raw_nonzero(),
        p2c_r.as_raw_fd(),
        c2p_w.as_raw_fd(),
        mode.as_str(),
        count,
        uid,
        gid
    );

    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(argv0).args(args).env(MARKER, marker);
    let inherited = [p2c_r.as_raw_fd(), c2p_w.as_raw_fd()];
    // SAFETY: runs between fork and exec; fcntl and prctl are async-signal-safe
    // and the descriptors stay open (our OwnedFds) until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for fd in inherited {
                sys::clear_cloexec(fd)?;
            }
            // If this waiting parent is killed, the build goes with it.
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The signals we are about to wait for are blocked here, and a
            // blocked mask survives exec: the child must get them.
            sys::set_signal_mask(&[], libc::SIG_SETMASK);
            Ok(())
        });
    }
    // Signals are taken synchronously while we wait (unblocked again in the child).
    const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD];
    sys::set_signal_mask(&SIGNALS, libc::SIG_BLOCK);
    let unblock = || sys::set_signal_mask(&SIGNALS, libc::SIG_UNBLOCK);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            unblock();
            return Err(Error::sys(
                "re-execute in a user namespace",
                "/proc/self/exe",
                e,
            ));
        }
    };
    drop(cmd);
    drop((p2c_r, c2p_w));
    let Some(pid) = Pid::from_raw(child.id() as i32) else {
        unblock();
        return Err(Error::UserNamespace(
            "spawned child has an invalid pid".into(),
        ));
    };

    // The child says when it has unshared; EOF means it failed (and said why).
    let mut byte = [0u8; 1];
    let mut c2p = std::fs::File::from(c2p_r);
    let ready = matches!(c2p.read(&mut byte), Ok(1));
    if ready && mode == Mode::Full {
        if let Some((newuidmap, newgidmap)) = &helpers {
            let mapped = run_helper(newuidmap, pid, &map_args(uid, &subuids))
                .and_then(|()| run_helper(newgidmap, pid, &map_args(gid, &subgids)));
            if let Err(e) = mapped {
                sys::kill(pid, libc::SIGKILL);
                let _ = child.wait();
                unblock();
                return Err(e);
            }
        }
    }
    if ready {
        let _ = std::fs::File::from(p2c_w).write_all(b"G");
    }

    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) => {}
            Err(e) => {
                unblock();
                return Err(Error::sys("wait", "child", e));
            }
        }
        match sys::wait_signal(&SIGNALS) {
            // A terminal's ^C or hangup reached the whole foreground process
            // group, the child included: only forward what was sent to us alone.
            Ok((sig, code)) if sig != libc::SIGCHLD && code != libc::SI_KERNEL => {
                sys::kill(pid, sig)
            }
            Ok(_) => {}
            Err(e) => {
                unblock();
                return Err(Error::sys("sigwaitinfo", "", e));
            }
        }
    };
    unblock();
    use std::os::unix::process::ExitStatusExt;
    Ok(Namespace::ExitParent(
        match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 1,
        },
    ))
}

fn run_helper(helper: &Path, pid: Pid, args: &[String]) -> Result<(), Error> {
    let out = Command::new(helper)
        .arg(pid.as_raw_nonzero().to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::sys("run", helper.display(), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::UserNamespace(format!(
        "{} {} {} failed ({}): {}",
        helper.display(),
        pid.as_raw_nonzero(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Takes an inherited descriptor named in the marker, checking it is open.
fn take_fd(s: &str) -> Option<OwnedFd> {
    let n: RawFd = s.parse().ok()?;
    if n <= 2 {
        return None;
    }
    // SAFETY: F_GETFD takes no memory; it only tells whether `n` is open.
    if unsafe { libc::fcntl(n, libc::F_GETFD) } == -1 {
        return None;
    }
    // SAFETY: `n` is open and was passed to this freshly exec'd process by the
    // bootstrap parent for this purpose only; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(n) })
}

fn child(marker: &str) -> Result<Namespace, Error> {
    let bad = || Error::UserNamespace(format!("malformed {MARKER} marker in the environment"));
    let f: Vec<&str> = marker.split(':').collect();
    let [ppid, p2c, c2p, mode, count, uid, gid] = f[..] else {
        return Err(bad());
    };
    let ppid: i32 = ppid.parse().map_err(|_| bad())?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(ppid) {
        return Err(Error::UserNamespace(format!(
            "{MARKER} is set but this process was not started by rbuild's bootstrap (stale environment?)"
        )));
    }
    let (Some(p2c), Some(c2p), Some(mode)) = (take_fd(p2c), take_fd(c2p), Mode::parse(mode)) else {
        return Err(bad());
    };
    let count: u32 = count.parse().map_err(|_| bad())?;
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = gid.parse().map_err(|_| bad())?;
    for fd in [&p2c, &c2p] {
        let _ = rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC);
    }

    // SAFETY: no CLONE_FILES; the caller is single-threaded (EINVAL otherwise,
    // reported below).
    if let Err(e) =
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS) }
    {
        let why = match e {
            Errno::INVAL => "the process must still be single-threaded when enter_user_namespace is called".to_owned(),
            Errno::NOSPC | Errno::USERS => "too many user namespaces (sysctl user.max_user_namespaces)".to_owned(),
            Errno::PERM | Errno::ACCESS => "unprivileged user namespaces are not allowed here (sysctl kernel.unprivileged_userns_clone, a container's seccomp profile, or SELinux/AppArmor policy)".to_owned(),
            e => std::io::Error::from(e).to_string(),
        };
        return Err(Error::UserNamespace(format!(
            "cannot create a user namespace: {why}; run rbuild as root instead"
        )));
    }
    let _ = std::fs::File::from(c2p).write_all(b"1");

    if mode == Mode::Full {
        let mut go = [0u8; 1];
        if !matches!(std::fs::File::from(p2c).read(&mut go), Ok(1)) {
            return Err(Error::UserNamespace(
                "the id mapping was not set up (see the parent's error)".into(),
            ));
        }
    } else {
        drop(p2c);
        // An unprivileged process may map its own ids only, and only with
        // setgroups denied.
        let write = |file: &str, content: String| {
            std::fs::write(file, content).map_err(|e| Error::sys("write", file, e))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
        write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    }
    rustix::thread::set_thread_res_gid(
        rustix::fs::Gid::ROOT,
        rustix::fs::Gid::ROOT,
        rustix::fs::Gid::ROOT,
    )
    .map_err(|e| Error::sys("setresgid", "0", e))?;
    rustix::thread::set_thread_res_uid(
        rustix::fs::Uid::ROOT,
        rustix::fs::Uid::ROOT,
        rustix::fs::Uid::ROOT,
    )
    .map_err(|e| Error::sys("setresuid", "0", e))?;
    // In case a credential change cleared it; and the parent may have died
    // before it was (re)armed.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(ppid) {
        std::process::exit(1);
    }
    rustix::mount::mount_change("/", MountPropagationFlags::PRIVATE | MountPropagationFlags::REC).map_err(|e| {
        if e == Errno::PERM || e == Errno::ACCESS {
            Error::UserNamespace(
                "mounting is denied inside the user namespace (Ubuntu 23.10+ restricts unprivileged user namespaces through AppArmor: sysctl kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile allowing userns for rbuild)".into(),
            )
        } else {
            Error::sys("make mounts private", "/", e)
        }
    })?;

    let name = sys::user_name(uid).unwrap_or_else(|| format!("uid {uid}"));
    let fix = format!(
        "add a range with `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}`"
    );
    let single = "running in a single-id user namespace (only root exists inside the build): RUN steps that switch to another user fail (e.g. Debian's apt dropping privileges to _apt: add `-o APT::Sandbox::User=root`), and so does creating files owned by other users";
    let warning = match mode {
        Mode::Full if count < 65536 => Some(format!(
            "only {count} subordinate ids for {name} in /etc/subuid or /etc/subgid: images that use ids above {count} will fail; {fix}"
        )),
        Mode::Full => None,
        Mode::NoRanges => Some(format!("no subordinate ids for {name} in /etc/subuid and /etc/subgid: {single}; {fix}")),
        Mode::NoHelpers => Some(format!(
            "newuidmap/newgidmap not found: {single}; install them (Debian/Ubuntu: `apt install uidmap`)"
        )),
    };
    Ok(Namespace::Rootless {
        full_range: mode == Mode::Full,
        warning,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_ranges_by_name_or_uid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("subuid");
        std::fs::write(
            &f,
            "# comment\nalice:100000:65536\n\nbob:200000:65536\n1000:300000:10\nalice:bad:1\nalice:400000:0\nalice:500000:5\n",
        )
        .expect("write");
        assert_eq!(
            subid_ranges(&f, Some("alice"), 1000),
            [(100000, 65536), (300000, 10), (500000, 5)]
        );
        assert_eq!(subid_ranges(&f, Some("carol"), 1001), []);
        assert_eq!(subid_ranges(&f, None, 1000), [(300000, 10)]);
        assert_eq!(
            subid_ranges(&dir.path().join("missing"), Some("alice"), 1),
            []
        );
    }

    #[test]
    fn map_args_stack_ranges_after_root() {
        assert_eq!(map_args(1000, &[]), ["0", "1000", "1"]);
        assert_eq!(
            map_args(1000, &[(100000, 65536), (300000, 10)]),
            ["0", "1000", "1", "1", "100000", "65536", "65537", "300000", "10"]
        );
    }
}
