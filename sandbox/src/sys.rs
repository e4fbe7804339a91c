//! The few system calls rustix does not offer, wrapped once, with their safety
//! arguments, so the rest of the crate stays in safe code.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use rustix::io::Errno;
use rustix::process::Pid;

/// What [`fork`] returns.
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// `fork()`.
///
/// # Safety
///
/// The calling process must be single-threaded (the sandbox's init, freshly
/// exec'd): in a multi-threaded process the child could inherit locks held by
/// threads that do not exist in it.
pub(crate) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, which is
    // what makes the child free to allocate and run arbitrary code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        // fork returned a positive pid, so from_raw cannot fail; the fallback
        // keeps this free of unwrap all the same.
        p => Pid::from_raw(p)
            .map(Forked::Parent)
            .ok_or_else(|| io::Error::other("fork returned an invalid pid")),
    }
}

/// Clears `FD_CLOEXEC` on a descriptor so it survives `execve`. Used in
/// `pre_exec`, between fork and exec: it only calls fcntl, which is
/// async-signal-safe.
pub(crate) fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: the caller passes a descriptor that its OwnedFd keeps open for
    // the duration of the spawn; the borrow does not outlive this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(io::Error::from)
}

/// Marks every descriptor from `first` up as close-on-exec, so nothing the
/// init inherited by accident leaks into the container's process.
pub(crate) fn cloexec_from(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on open
    // descriptors; no memory is passed. ENOSYS/EINVAL on kernels before 5.11
    // are harmless: the descriptors the sandbox opens are all O_CLOEXEC anyway.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Brings the loopback interface up in the current network namespace
/// (`SIOCGIFFLAGS`/`SIOCSIFFLAGS` on a datagram socket).
pub(crate) fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags member of the
    // ifreq we own; the socket is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_flags just above, so reading that union
    // member is reading initialized data.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads the ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resets every signal to its default action and unblocks all signals, so the
/// container's process does not inherit ignored signals: the Rust runtime's
/// SIGPIPE, and the glibc-internal 32 and 33 that std's spawn leaves ignored
/// (glibc's own `signal()` refuses to touch those, hence the raw syscall).
pub(crate) fn reset_signals() {
    // An all-zero kernel `struct sigaction` is SIG_DFL, no flags, empty mask,
    // whatever the architecture's field order; 64 bytes cover every layout.
    let dfl = [0u64; 8];
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // The kernel's sigset is 8 bytes (16 on MIPS); it insists on the exact size.
        for sigsetsize in [8usize, 16] {
            // SAFETY: rt_sigaction reads a kernel sigaction from `dfl`, which is
            // larger than any architecture's, and writes nothing (old is null).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<libc::c_void>(),
                    sigsetsize,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
    set_signal_mask(&[], libc::SIG_SETMASK);
}

/// Applies `how` (SIG_BLOCK, SIG_UNBLOCK, SIG_SETMASK) with the given signals.
pub(crate) fn set_signal_mask(signals: &[libc::c_int], how: libc::c_int) {
    let set = sigset(signals);
    // SAFETY: `set` is an initialized sigset_t on our stack; the old mask is
    // not requested.
    unsafe {
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the set before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own.
    unsafe {
        libc::sigemptyset(&mut set);
    }
    for &s in signals {
        // SAFETY: as above; invalid numbers are rejected by sigaddset.
        unsafe {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Waits for one of `signals` (which must be blocked) and returns its number and
/// `si_code`.
pub(crate) fn wait_signal(signals: &[libc::c_int]) -> io::Result<(libc::c_int, libc::c_int)> {
    let set = sigset(signals);
    loop {
        // SAFETY: siginfo_t is plain old data, all-zero is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `info` are valid for the call's duration.
        let sig = unsafe { libc::sigwaitinfo(&set, &mut info) };
        if sig >= 0 {
            return Ok((sig, info.si_code));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Sends a signal given by number (rustix's `Signal` only names the standard ones).
pub(crate) fn kill(pid: Pid, sig: libc::c_int) {
    // SAFETY: kill takes no memory; a stale pid at worst gets ESRCH.
    unsafe {
        libc::kill(pid.as_raw_nonzero().get(), sig);
    }
}

/// `execve`; returns only on failure.
pub(crate) fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> Errno {
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // SAFETY: path, argv and envp are NUL-terminated strings kept alive by the
    // borrowed CStrings, and both pointer arrays end with a null pointer.
    unsafe {
        libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
    }
    Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::NOEXEC)
}

/// Makes the mount at `path` (and, with `recursive`, every mount below it)
/// read-only with `mount_setattr` (Linux 5.12). Err(ENOSYS) on older kernels.
pub(crate) fn mount_setattr_rdonly(path: &CStr, recursive: bool) -> Result<(), Errno> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `path` is NUL-terminated and `attr` is a mount_attr (version 0
    // layout) that lives across the call; its size is passed along.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::NOSYS))
    } else {
        Ok(())
    }
}

/// The user name of `uid` from the passwd database (NSS included), if any.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain old data, all-zero is valid.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to memory we own for the whole call, and
        // `buf.len()` is its true size.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`,
        // which is still alive.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned());
    }
}
