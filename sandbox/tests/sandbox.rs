//! Real-namespace tests of rbuild-sandbox, on busybox root filesystems built in
//! temp dirs. They need root; the rootless cases create a throwaway user with
//! subordinate ids and run this same binary as that user.
//!
//! The binary has its own small runner (harness = false): the sandbox
//! re-executes `/proc/self/exe` as its init, so `init_hook()` must come first in
//! `main`, which libtest does not allow. Usage: `cargo test -p rbuild-sandbox
//! [-- FILTER]`.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rbuild_sandbox::{
    enter_user_namespace, init_hook, run, Cancel, Capabilities, ContainerSpec, Error, ExitStatus,
    Mount, MountKind, Namespace, Network, Rootfs, RunResult, Stream,
};

// ---------------------------------------------------------------- runner

enum Outcome {
    Pass,
    Skip(String),
}

type TestFn = fn() -> Outcome;

const TESTS: &[(&str, TestFn)] = &[
    ("echo_stdout_stderr", echo_stdout_stderr),
    ("exit_codes", exit_codes),
    ("signals", signals),
    ("env_cwd_ids", env_cwd_ids),
    ("hostname_and_etc_files", hostname_and_etc_files),
    ("network_none_vs_host", network_none_vs_host),
    ("pid_namespace", pid_namespace),
    ("host_fs_unreachable", host_fs_unreachable),
    (
        "mount_refused_with_default_caps",
        mount_refused_with_default_caps,
    ),
    ("capabilities_default", capabilities_default),
    ("capabilities_insecure", capabilities_insecure),
    ("secret_file_mount", secret_file_mount),
    ("bind_mounts_ro_rw", bind_mounts_ro_rw),
    ("tmpfs_mount", tmpfs_mount),
    ("overlay_rootfs", overlay_rootfs),
    ("overlay_mounts", overlay_mounts),
    ("dev_sys_proc", dev_sys_proc),
    ("signals_reset_for_process", signals_reset_for_process),
    (
        "mount_target_symlinks_stay_inside",
        mount_target_symlinks_stay_inside,
    ),
    ("exec_errors", exec_errors),
    ("setup_errors_name_the_path", setup_errors_name_the_path),
    ("large_output", large_output),
    ("concurrent_runs", concurrent_runs),
    ("cancel_kills_namespace", cancel_kills_namespace),
    ("killed_caller_leaves_nothing", killed_caller_leaves_nothing),
    ("rootless_full_range", rootless_full_range),
    ("rootless_single_id", rootless_single_id),
    (
        "rootless_parent_forwards_signals",
        rootless_parent_forwards_signals,
    ),
    ("overhead_true", overhead_true),
];

fn main() {
    init_hook();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("__rootless") => rootless_child(&args[2..]),
        Some("__victim") => victim(&args[2..]),
        _ => {}
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-')).cloned();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    let selected: Vec<_> = TESTS
        .iter()
        .filter(|(n, _)| filter.as_deref().is_none_or(|f| n.contains(f)))
        .collect();
    let root = rustix::process::geteuid().is_root();
    println!("\nrunning {} tests", selected.len());
    let start = Instant::now();
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    let mut failures = Vec::new();
    for (name, f) in &selected {
        if !root {
            println!("test {name} ... ignored, needs root (namespaces, mounts, a throwaway user)");
            ignored += 1;
            continue;
        }
        let t = Instant::now();
        match std::panic::catch_unwind(f) {
            Ok(Outcome::Pass) => {
                println!("test {name} ... ok ({:.2}s)", t.elapsed().as_secs_f64());
                passed += 1;
            }
            Ok(Outcome::Skip(why)) => {
                println!("test {name} ... ignored, {why}");
                ignored += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED ({:.2}s)", t.elapsed().as_secs_f64());
                failures.push(*name);
                failed += 1;
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:\n    {}", failures.join("\n    "));
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; {ignored} ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
        TESTS.len() - selected.len(),
        start.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(101);
    }
}

// ---------------------------------------------------------------- fixtures

const PATH: &str = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";

/// A temp dir holding a busybox root filesystem at `rootfs`.
struct Fixture {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-sandbox-test")
            .tempdir()
            .expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        make_busybox_rootfs(&rootfs);
        Self { dir, rootfs }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn spec(&self, script: &str) -> ContainerSpec {
        spec_for(Rootfs::Dir(self.rootfs.clone()), &["/bin/sh", "-c", script])
    }
}

fn make_busybox_rootfs(rootfs: &Path) {
    for d in [
        "bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr/bin", "var",
    ] {
        fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    // `busybox --install -s` links to the path the kernel reports for the
    // running busybox: /usr/bin/busybox on a merged-/usr host. Put it there.
    let real = fs::canonicalize("/bin/busybox").expect("busybox");
    let inside = rootfs.join(real.strip_prefix("/").expect("absolute"));
    fs::create_dir_all(inside.parent().expect("parent")).expect("mkdir");
    fs::copy(&real, &inside).expect("copy busybox");
    let st = Command::new("/bin/busybox")
        .args(["--install", "-s"])
        .arg(rootfs.join("bin"))
        .status()
        .expect("busybox --install");
    assert!(st.success());
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").expect("group");
}

fn spec_for(rootfs: Rootfs, args: &[&str]) -> ContainerSpec {
    let mut s = ContainerSpec::new(rootfs, args.iter().map(|a| a.to_string()).collect());
    s.env = vec![PATH.to_owned()];
    s.network = Network::None;
    s
}

#[derive(Debug)]
struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    created: Vec<String>,
}

fn try_run(spec: &ContainerSpec) -> Result<Out, Error> {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let RunResult { status, created } = run(
        spec,
        &mut |s, b| match s {
            Stream::Stdout => stdout.extend_from_slice(b),
            Stream::Stderr => stderr.extend_from_slice(b),
        },
        &Cancel::new(),
    )?;
    Ok(Out {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        created,
    })
}

fn must_run(spec: &ContainerSpec) -> Out {
    match try_run(spec) {
        Ok(o) => o,
        Err(e) => panic!("run {:?} failed: {e}", spec.args),
    }
}

/// Runs and insists on exit 0.
fn ok(spec: &ContainerSpec) -> Out {
    let o = must_run(spec);
    assert_eq!(o.status, ExitStatus::Exited(0), "{:?}: {o:?}", spec.args);
    o
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    Some(buf[..n].to_vec())
}

/// Host pids of `sleep` processes with `needle` as an argument.
fn sleep_pids(needle: &str) -> Vec<u32> {
    pids_with_arg(needle)
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .collect()
}

/// Host pids whose command line contains `needle` as an argument.
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) {
            if cmd.split(|&b| b == 0).any(|a| a == needle.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces, so start after ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unique(prefix: u32) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{}",
        prefix + std::process::id() % 1000 * 10,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

// ---------------------------------------------------------------- tests

fn echo_stdout_stderr() -> Outcome {
    let fx = Fixture::new();
    let o = ok(&fx.spec("echo out; echo err >&2; echo out2"));
    assert_eq!(o.stdout, "out\nout2\n");
    assert_eq!(o.stderr, "err\n");
    Outcome::Pass
}

fn exit_codes() -> Outcome {
    let fx = Fixture::new();
    assert_eq!(must_run(&fx.spec("exit 3")).status, ExitStatus::Exited(3));
    assert_eq!(must_run(&fx.spec("false")).status, ExitStatus::Exited(1));
    let o = must_run(&spec_for(Rootfs::Dir(fx.rootfs.clone()), &["/bin/true"]));
    assert!(o.status.success());
    assert_eq!(must_run(&fx.spec("exit 255")).status.code(), 255);
    Outcome::Pass
}

fn signals() -> Outcome {
    let fx = Fixture::new();
    // A child killed by a signal, seen by the shell.
    let o = ok(&fx.spec("sleep 100 & kill -TERM $!; wait $!; echo $?"));
    assert_eq!(o.stdout.trim(), "143");
    // pid 1 of a pid namespace ignores signals it has no handler for (as in Docker).
    let o = ok(&fx.spec("kill -TERM $$; echo alive"));
    assert_eq!(o.stdout.trim(), "alive");
    // A fault kills even pid 1: Signaled(SIGSEGV).
    let src = fx.path("crash.c");
    fs::write(
        &src,
        "int main(void) { volatile int *p = 0; *p = 1; return 0; }\n",
    )
    .expect("write");
    let built = Command::new("cc")
        .args(["-static", "-O0", "-o"])
        .arg(fx.rootfs.join("crash"))
        .arg(&src)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        return Outcome::Skip(
            "no static C toolchain for the SIGSEGV case (the rest passed)".into(),
        );
    }
    let o = must_run(&spec_for(Rootfs::Dir(fx.rootfs.clone()), &["/crash"]));
    assert_eq!(o.status, ExitStatus::Signaled(11));
    assert_eq!(o.status.code(), 128 + 11);
    Outcome::Pass
}

fn env_cwd_ids() -> Outcome {
    let fx = Fixture::new();
    let mut s = spec_for(Rootfs::Dir(fx.rootfs.clone()), &["/bin/env"]);
    s.env = vec![
        PATH.into(),
        "FOO=bar baz".into(),
        "EMPTY=".into(),
        "A=1=2".into(),
    ];
    let o = ok(&s);
    assert_eq!(o.stdout, format!("{PATH}\nFOO=bar baz\nEMPTY=\nA=1=2\n"));

    let mut s =
        fx.spec("pwd; id; stat -c '%u:%g %a' /work /work/sub; touch mine; stat -c '%u:%g' mine");
    s.cwd = "/work/sub".into();
    s.uid = 0;
    let o = ok(&s);
    assert_eq!(o.created, ["/work", "/work/sub"]);
    // Supplementary groups are exactly additional_gids: none here.
    assert_eq!(
        o.stdout,
        "/work/sub\nuid=0(root) gid=0(root)\n0:0 755\n0:0 755\n0:0\n"
    );

    let mut s = fx.spec("id; cd /tmp && touch f && stat -c '%u:%g' f");
    s.uid = 1000;
    s.gid = 1001;
    s.additional_gids = vec![10, 20];
    let o = ok(&s);
    assert_eq!(o.stdout, "uid=1000 gid=1001 groups=10,20\n1000:1001\n");
    Outcome::Pass
}

fn hostname_and_etc_files() -> Outcome {
    let fx = Fixture::new();
    let hosts = fx.path("hosts");
    let resolv = fx.path("resolv.conf");
    let hostname = fx.path("hostname");
    fs::write(&hosts, "127.0.0.1 localhost\n").expect("write");
    fs::write(&resolv, "nameserver 192.0.2.53\n").expect("write");
    fs::write(&hostname, "box\n").expect("write");
    fs::write(fx.rootfs.join("etc/resolv.conf"), "original\n").expect("write");
    let mut s = fx.spec(
        "hostname; cat /etc/hostname /etc/hosts /etc/resolv.conf; echo x >> /etc/hosts 2>/dev/null && echo writable || echo refused",
    );
    s.hostname = "box".into();
    s.etc_files = vec![
        ("/etc/resolv.conf".into(), resolv.clone()),
        ("/etc/hosts".into(), hosts.clone()),
        ("/etc/hostname".into(), hostname.clone()),
    ];
    let o = ok(&s);
    assert_eq!(
        o.stdout,
        "box\nbox\n127.0.0.1 localhost\nnameserver 192.0.2.53\nrefused\n"
    );
    // Only the missing ones were created, and as empty files.
    assert_eq!(o.created, ["/etc/hosts", "/etc/hostname"]);
    assert_eq!(fs::read(fx.rootfs.join("etc/hosts")).expect("read"), b"");
    assert_eq!(
        fs::read_to_string(fx.rootfs.join("etc/resolv.conf")).expect("read"),
        "original\n"
    );
    assert_eq!(
        fs::read_to_string(&hosts).expect("read"),
        "127.0.0.1 localhost\n"
    );
    Outcome::Pass
}

fn network_none_vs_host() -> Outcome {
    let fx = Fixture::new();
    let script = "ls /sys/class/net | tr '\\n' ' '; echo; cat /sys/class/net/lo/flags";
    let o = ok(&fx.spec(script));
    // 0x9 = IFF_UP | IFF_LOOPBACK.
    assert_eq!(o.stdout, "lo \n0x9\n");
    let mut s = fx.spec("ls /sys/class/net | tr '\\n' ' '");
    s.network = Network::Host;
    let o = ok(&s);
    let mut host: Vec<String> = fs::read_dir("/sys/class/net")
        .expect("read")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    assert_eq!(o.stdout.split_whitespace().collect::<Vec<_>>(), host);
    Outcome::Pass
}

fn pid_namespace() -> Outcome {
    let fx = Fixture::new();
    let o = ok(&fx.spec("echo $$; ps -o pid,args; true"));
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "1");
    let procs: Vec<(String, String)> = lines[2..]
        .iter()
        .map(|l| {
            let l = l.trim();
            let (pid, args) = l.split_once(' ').unwrap_or((l, ""));
            (pid.to_owned(), args.trim().to_owned())
        })
        .collect();
    assert_eq!(procs.len(), 2, "only the shell and ps: {procs:?}");
    assert_eq!(procs[0].0, "1");
    assert!(
        procs[0].1.starts_with("/bin/sh -c echo $$; ps"),
        "{procs:?}"
    );
    // busybox runs the ps applet in a forked shell: "{ps} <the shell's args>".
    assert!(
        procs[1].1.starts_with("{ps}") || procs[1].1.starts_with("ps"),
        "{procs:?}"
    );
    Outcome::Pass
}

fn host_fs_unreachable() -> Outcome {
    let fx = Fixture::new();
    let marker = fx.path("outside-marker");
    fs::write(&marker, "host\n").expect("write");
    let script = format!(
        "ls -a / | tr '\\n' ' '; echo; test -e {m} && echo reachable; cd /../../..; pwd; ls /proc/1/root/ | tr '\\n' ' '",
        m = marker.display()
    );
    let o = ok(&fx.spec(&script));
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], ". .. bin dev etc proc root sys tmp usr var ");
    assert_eq!(lines[1], "/");
    assert_eq!(lines[2], "bin dev etc proc root sys tmp usr var ");
    assert!(!o.stdout.contains("reachable"));
    Outcome::Pass
}

fn mount_refused_with_default_caps() -> Outcome {
    let fx = Fixture::new();
    let o = must_run(&fx.spec("mount -t tmpfs none /tmp"));
    assert_ne!(o.status, ExitStatus::Exited(0));
    assert!(
        o.stderr.to_lowercase().contains("permission denied") || o.stderr.contains("not permitted"),
        "{o:?}"
    );
    let mut s = fx.spec("mount -t tmpfs none /tmp && grep -c ' /tmp ' /proc/mounts");
    s.capabilities = Capabilities::All;
    assert_eq!(ok(&s).stdout, "1\n");
    Outcome::Pass
}

fn cap_lines(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn capabilities_default() -> Outcome {
    let fx = Fixture::new();
    let s = spec_for(
        Rootfs::Dir(fx.rootfs.clone()),
        &["/bin/grep", "^Cap", "/proc/self/status"],
    );
    let caps = cap_lines(&ok(&s).stdout);
    let want = |v: &str| -> Vec<(String, String)> {
        [
            ("CapInh", "0000000000000000"),
            ("CapPrm", v),
            ("CapEff", v),
            ("CapBnd", "00000000a80425fb"),
            ("CapAmb", "0000000000000000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    assert_eq!(caps, want("00000000a80425fb"));
    let mut s = s.clone();
    s.uid = 1000;
    assert_eq!(cap_lines(&ok(&s).stdout), want("0000000000000000"));
    Outcome::Pass
}

fn capabilities_insecure() -> Outcome {
    let fx = Fixture::new();
    // "All" is every capability the host grants (its bounding set: this
    // machine, for one, has no CAP_SYS_RESOURCE).
    let status = fs::read_to_string("/proc/self/status").expect("read");
    let host = cap_lines(&status)
        .into_iter()
        .find(|(k, _)| k == "CapBnd")
        .expect("CapBnd")
        .1;
    let mut s = spec_for(
        Rootfs::Dir(fx.rootfs.clone()),
        &["/bin/grep", "^Cap[BEP]", "/proc/self/status"],
    );
    s.capabilities = Capabilities::All;
    let caps = cap_lines(&ok(&s).stdout);
    assert!(caps.iter().all(|(_, v)| *v == host), "{caps:?} vs {host}");
    assert_eq!(caps.len(), 3);
    Outcome::Pass
}

fn secret_file_mount() -> Outcome {
    let fx = Fixture::new();
    let secret = format!("s3cret-{}", unique(7));
    let mut s = fx.spec(
        "cat /run/secrets/token; echo; stat -c '%a %u %g' /run/secrets/token; \
         echo x > /run/secrets/token 2>/dev/null && echo writable || echo refused; \
         grep -c ' /run/secrets/token ' /proc/self/mountinfo",
    );
    s.mounts = vec![Mount {
        target: "/run/secrets/token".into(),
        kind: MountKind::File {
            content: secret.clone().into_bytes(),
            mode: 0o400,
            uid: 0,
            gid: 0,
        },
    }];
    let o = ok(&s);
    assert_eq!(o.stdout, format!("{secret}\n400 0 0\nrefused\n1\n"));
    assert_eq!(o.created, ["/run", "/run/secrets", "/run/secrets/token"]);
    assert_eq!(
        fs::read(fx.rootfs.join("run/secrets/token")).expect("mount point"),
        b""
    );
    // Debug output never shows the content.
    assert!(!format!("{s:?}").contains(&secret));
    // Nothing on disk holds it.
    let grep = Command::new("grep")
        .args(["-r", "-l", &secret])
        .arg(fx.dir.path())
        .output()
        .expect("grep");
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );

    // Readable by its owner when the process is not root.
    s.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        "cat /run/secrets/token".into(),
    ];
    s.uid = 1000;
    s.gid = 1000;
    s.mounts[0].kind = MountKind::File {
        content: b"for 1000".to_vec(),
        mode: 0o400,
        uid: 1000,
        gid: 1000,
    };
    assert_eq!(ok(&s).stdout, "for 1000");
    Outcome::Pass
}

fn bind_mounts_ro_rw() -> Outcome {
    let fx = Fixture::new();
    let data = fx.path("data");
    fs::create_dir(&data).expect("mkdir");
    fs::write(data.join("f"), "hello\n").expect("write");
    let single = fx.path("single.txt");
    fs::write(&single, "one file\n").expect("write");
    let mut s = fx.spec(
        "cat /ro/f; touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused; \
         echo w > /rw/new && echo rw-ok; cat /etc/single.txt; \
         echo y >> /etc/single.txt 2>/dev/null && echo file-writable || echo file-refused",
    );
    s.mounts = vec![
        Mount {
            target: "/ro".into(),
            kind: MountKind::Bind {
                source: data.clone(),
                readonly: true,
            },
        },
        Mount {
            target: "/rw".into(),
            kind: MountKind::Bind {
                source: data.clone(),
                readonly: false,
            },
        },
        Mount {
            target: "/etc/single.txt".into(),
            kind: MountKind::Bind {
                source: single.clone(),
                readonly: true,
            },
        },
    ];
    let o = ok(&s);
    assert_eq!(
        o.stdout,
        "hello\nro-refused\nrw-ok\none file\nfile-refused\n"
    );
    assert_eq!(fs::read_to_string(data.join("new")).expect("read"), "w\n");
    assert!(!data.join("x").exists());
    assert_eq!(o.created, ["/ro", "/rw", "/etc/single.txt"]);
    assert!(fx
        .rootfs
        .join("etc/single.txt")
        .metadata()
        .expect("stat")
        .is_file());
    Outcome::Pass
}

fn tmpfs_mount() -> Outcome {
    let fx = Fixture::new();
    let mut s = fx.spec("stat -c %a /scratch; grep ' /scratch ' /proc/self/mounts | cut -d' ' -f3,4; echo data > /scratch/file");
    s.mounts = vec![Mount {
        target: "/scratch".into(),
        kind: MountKind::Tmpfs {
            size: 1 << 20,
            mode: 0o1777,
        },
    }];
    let o = ok(&s);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "1777");
    assert!(
        lines[1].starts_with("tmpfs rw,nosuid,nodev"),
        "{}",
        lines[1]
    );
    assert!(lines[1].contains("size=1024k"), "{}", lines[1]);
    assert_eq!(o.created, ["/scratch"]);
    assert_eq!(
        fs::read_dir(fx.rootfs.join("scratch"))
            .expect("read")
            .count(),
        0
    );
    Outcome::Pass
}

/// Builds lower layers and runs the whiteout/opaque script on an overlay
/// rootfs; returns the upper dir. Used by the root and the rootless tests.
fn overlay_scenario(base: &Path, userxattr: bool, uid_for_file: u32) -> PathBuf {
    let lower1 = base.join("lower1");
    make_busybox_rootfs(&lower1);
    // Like a scratch-based image: the sandbox must make these mount points.
    for d in ["dev", "proc", "sys"] {
        fs::remove_dir(lower1.join(d)).expect("rmdir");
    }
    fs::write(lower1.join("a"), "a\n").expect("write");
    fs::create_dir_all(lower1.join("d")).expect("mkdir");
    fs::write(lower1.join("d/x"), "x\n").expect("write");
    let lower2 = base.join("lower2");
    fs::create_dir_all(&lower2).expect("mkdir");
    fs::write(lower2.join("top"), "top\n").expect("write");
    let upper = base.join("upper");
    let work = base.join("work");
    fs::create_dir_all(&upper).expect("mkdir");
    fs::create_dir_all(&work).expect("mkdir");
    let rootfs = Rootfs::Overlay {
        lower: vec![lower2, lower1.clone()],
        upper: upper.clone(),
        work,
        userxattr,
    };
    let mut s = spec_for(
        rootfs.clone(),
        &[
            "/bin/sh",
            "-c",
            "cat /top /d/x; echo new > /new; rm /a; rm -rf /d && mkdir /d && touch /d/y",
        ],
    );
    s.env.push("HOME=/root".into());
    let o = ok(&s);
    assert_eq!(o.stdout, "top\nx\n");
    // The mount points the sandbox made are reported.
    assert_eq!(o.created, ["/proc", "/dev", "/sys"]);
    // A file written by uid `uid_for_file` (tmp is 1777).
    let mut s = spec_for(rootfs, &["/bin/touch", "/tmp/by-uid"]);
    s.uid = uid_for_file;
    s.gid = uid_for_file;
    ok(&s);
    assert_eq!(
        fs::read_to_string(lower1.join("a")).expect("lower untouched"),
        "a\n"
    );
    upper
}

fn check_overlay_upper(upper: &Path, xattr_ns: &str) {
    assert_eq!(
        fs::read_to_string(upper.join("new")).expect("read"),
        "new\n"
    );
    let a = fs::symlink_metadata(upper.join("a")).expect("whiteout");
    assert!(a.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(a.rdev(), 0, "whiteout is 0/0");
    assert_eq!(
        xattr(&upper.join("d"), &format!("{xattr_ns}.overlay.opaque")).as_deref(),
        Some(&b"y"[..])
    );
    assert!(upper.join("d/y").exists());
    assert!(!upper.join("d/x").exists());
}

fn overlay_rootfs() -> Outcome {
    let fx = Fixture::new();
    let upper = overlay_scenario(fx.dir.path(), false, 1000);
    check_overlay_upper(&upper, "trusted");
    assert_eq!(
        fs::metadata(upper.join("tmp/by-uid")).expect("stat").uid(),
        1000
    );
    Outcome::Pass
}

fn overlay_mounts() -> Outcome {
    let fx = Fixture::new();
    let (l1, l2, up, wk) = (fx.path("l1"), fx.path("l2"), fx.path("up"), fx.path("wk"));
    for d in [&l1, &l2, &up, &wk] {
        fs::create_dir(d).expect("mkdir");
    }
    fs::write(l1.join("one"), "1\n").expect("write");
    fs::write(l2.join("two"), "2\n").expect("write");
    let mut s = fx.spec(
        "cat /stage/one /stage/two /single/one; touch /stage/x 2>/dev/null && echo stage-writable || echo stage-refused; \
         touch /single/x 2>/dev/null && echo single-writable || echo single-refused; echo w > /rw/w && cat /rw/one",
    );
    s.mounts = vec![
        Mount {
            target: "/stage".into(),
            kind: MountKind::Overlay {
                lower: vec![l2.clone(), l1.clone()],
                upper_work: None,
                userxattr: false,
            },
        },
        Mount {
            target: "/single".into(),
            kind: MountKind::Overlay {
                lower: vec![l1.clone()],
                upper_work: None,
                userxattr: false,
            },
        },
        Mount {
            target: "/rw".into(),
            kind: MountKind::Overlay {
                lower: vec![l1.clone()],
                upper_work: Some((up.clone(), wk.clone())),
                userxattr: false,
            },
        },
    ];
    let o = ok(&s);
    assert_eq!(o.stdout, "1\n2\n1\nstage-refused\nsingle-refused\n1\n");
    assert_eq!(fs::read_to_string(up.join("w")).expect("read"), "w\n");
    assert!(!l1.join("w").exists());
    Outcome::Pass
}

fn dev_sys_proc() -> Outcome {
    let fx = Fixture::new();
    let o = ok(&fx.spec(
        "ls /dev | tr '\\n' ' '; echo; echo x > /dev/null && head -c 3 /dev/zero | wc -c; \
         stat -c %a /dev/shm; touch /dev/shm/x && echo shm-ok; \
         touch /sys/x 2>/dev/null && echo sys-writable || echo sys-refused; \
         echo x > /proc/sys/kernel/domainname 2>/dev/null && echo sysctl-writable || echo sysctl-refused; \
         for f in /dev/fd /dev/stdout /dev/ptmx; do readlink $f; done; ls /dev/pts | tr '\\n' ' '; echo; \
         for p in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do [ -e $p ] && cat $p | wc -c; done | sort -u; \
         for p in /proc/acpi /proc/scsi /sys/firmware; do [ -d $p ] && ls $p | wc -l; done | sort -u",
    ));
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero "
    );
    let masked_files = fs::read_dir("/proc").is_ok()
        && [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/proc/sched_debug",
        ]
        .iter()
        .any(|p| Path::new(p).exists());
    let masked_dirs = ["/proc/acpi", "/proc/scsi", "/sys/firmware"]
        .iter()
        .any(|p| Path::new(p).is_dir());
    let mut want = vec![
        "3",
        "1777",
        "shm-ok",
        "sys-refused",
        "sysctl-refused",
        "/proc/self/fd",
        "/proc/self/fd/1",
        "pts/ptmx",
        "ptmx ",
    ];
    if masked_files {
        want.push("0");
    }
    if masked_dirs {
        want.push("0");
    }
    assert_eq!(lines[1..], want[..], "{o:?}");
    // Privileged: /proc/sys writable (uts-namespaced, so harmless), kcore not masked.
    let mut s =
        fx.spec("echo rbuild > /proc/sys/kernel/domainname && cat /proc/sys/kernel/domainname");
    s.capabilities = Capabilities::All;
    assert_eq!(ok(&s).stdout, "rbuild\n");
    Outcome::Pass
}

fn signals_reset_for_process() -> Outcome {
    let fx = Fixture::new();
    let s = spec_for(
        Rootfs::Dir(fx.rootfs.clone()),
        &["/bin/grep", "^Sig[BI]", "/proc/self/status"],
    );
    assert_eq!(
        ok(&s).stdout,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
    // So `yes | head` ends the way it does in a shell on the host.
    let o = ok(&fx.spec("yes | head -c 4; echo"));
    assert_eq!(o.stdout, "y\ny\n\n");
    assert_eq!(o.stderr, "");
    Outcome::Pass
}

fn mount_target_symlinks_stay_inside() -> Outcome {
    let fx = Fixture::new();
    let hostside = fx.path("hostside");
    fs::create_dir(&hostside).expect("mkdir");
    // An absolute symlink to a host path, and one climbing with "..".
    std::os::unix::fs::symlink(&hostside, fx.rootfs.join("abs")).expect("symlink");
    std::os::unix::fs::symlink("../../../../../..", fx.rootfs.join("var/up")).expect("symlink");
    std::os::unix::fs::symlink("var/target", fx.rootfs.join("rel")).expect("symlink");
    let tmpfs = |t: &str| Mount {
        target: t.into(),
        kind: MountKind::Tmpfs {
            size: 0,
            mode: 0o755,
        },
    };
    let mut s = fx.spec("true");
    s.mounts = vec![tmpfs("/abs/m1"), tmpfs("/var/up/m2"), tmpfs("/rel/m3")];
    let o = ok(&s);
    assert_eq!(
        fs::read_dir(&hostside).expect("read").count(),
        0,
        "nothing created on the host"
    );
    let inside = hostside.strip_prefix("/").expect("absolute");
    assert!(fx.rootfs.join(inside).join("m1").is_dir());
    assert!(fx.rootfs.join("m2").is_dir());
    assert!(fx.rootfs.join("var/target/m3").is_dir());
    // /tmp exists in the rootfs; everything below it was made, inside.
    let mut want: Vec<String> = Vec::new();
    let mut acc = String::new();
    for c in inside.components() {
        acc.push('/');
        acc.push_str(&c.as_os_str().to_string_lossy());
        if acc != "/tmp" {
            want.push(acc.clone());
        }
    }
    want.push(format!("{acc}/m1"));
    want.extend(["/m2".into(), "/var/target".into(), "/var/target/m3".into()]);
    assert_eq!(o.created, want);
    Outcome::Pass
}

fn exec_errors() -> Outcome {
    let fx = Fixture::new();
    let root = Rootfs::Dir(fx.rootfs.clone());
    let err = |args: &[&str]| match try_run(&spec_for(root.clone(), args)) {
        Err(Error::Exec {
            program,
            message,
            code,
        }) => (program, message, code),
        other => panic!("{args:?}: expected an exec error, got {other:?}"),
    };
    let (p, m, c) = err(&["no-such-command"]);
    assert_eq!(
        (p.as_str(), m.as_str(), c),
        ("no-such-command", "executable file not found in $PATH", 127)
    );
    let e = try_run(&spec_for(root.clone(), &["no-such-command"])).expect_err("fails");
    assert_eq!(
        e.to_string(),
        "exec: \"no-such-command\": executable file not found in $PATH"
    );
    assert_eq!(err(&["/nope"]).2, 127);
    assert_eq!(
        err(&["/etc/passwd"]),
        ("/etc/passwd".into(), "permission denied".into(), 126)
    );
    assert_eq!(err(&["/bin"]).2, 126);
    fs::write(fx.rootfs.join("bad.sh"), "#!/no/such/interpreter\n").expect("write");
    fs::set_permissions(fx.rootfs.join("bad.sh"), fs::Permissions::from_mode(0o755))
        .expect("chmod");
    assert_eq!(
        err(&["/bad.sh"]),
        ("/bad.sh".into(), "no such file or directory".into(), 127)
    );
    // A relative name resolves through the spec's PATH, not the caller's.
    let mut s = spec_for(root.clone(), &["true"]);
    s.env = vec!["PATH=/nowhere".into()];
    assert!(matches!(try_run(&s), Err(Error::Exec { code: 127, .. })));
    s.env = vec![];
    assert!(must_run(&s).status.success(), "default PATH when unset");
    Outcome::Pass
}

fn setup_errors_name_the_path() -> Outcome {
    let fx = Fixture::new();
    let mut s = fx.spec("true");
    s.mounts = vec![Mount {
        target: "/x".into(),
        kind: MountKind::Bind {
            source: "/nonexistent/source".into(),
            readonly: false,
        },
    }];
    let e = try_run(&s).expect_err("missing source");
    assert!(matches!(e, Error::Sys { .. }));
    assert_eq!(
        e.to_string(),
        "open /nonexistent/source: No such file or directory (os error 2)"
    );

    let mut s = fx.spec("true");
    s.rootfs = Rootfs::Overlay {
        lower: vec![fx.rootfs.clone()],
        upper: fx.path("no-upper"),
        work: fx.path("no-work"),
        userxattr: false,
    };
    let e = try_run(&s).expect_err("missing upper");
    assert!(e.to_string().contains("no-upper"), "{e}");

    let mut s = fx.spec("true");
    s.args.clear();
    assert!(matches!(try_run(&s), Err(Error::InvalidSpec(_))));
    let mut s = fx.spec("true");
    s.uid = 4242;
    s.additional_gids = vec![u32::MAX];
    assert!(matches!(try_run(&s), Err(Error::InvalidSpec(_))));
    Outcome::Pass
}

fn large_output() -> Outcome {
    let fx = Fixture::new();
    let s = fx.spec("yes abcdefghi | head -c 3000000; yes err | head -c 500000 >&2");
    let o = ok(&s);
    assert_eq!(o.stdout.len(), 3_000_000);
    assert_eq!(o.stderr.len(), 500_000);
    assert!(o.stdout.starts_with("abcdefghi\nabc"));
    Outcome::Pass
}

fn concurrent_runs() -> Outcome {
    let fx = Fixture::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let s = fx.spec(&format!("echo run {i}; sleep 0.2; echo $$"));
                scope.spawn(move || ok(&s).stdout)
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().expect("thread"), format!("run {i}\n1\n"));
        }
    });
    Outcome::Pass
}

fn cancel_kills_namespace() -> Outcome {
    let fx = Fixture::new();
    let (a, b) = (unique(9100), unique(9200));
    let s = fx.spec(&format!("sleep {a} & sleep {b} & echo started; wait"));
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    let handle = std::thread::spawn(move || {
        let t = Instant::now();
        let r = run(&s, &mut |_, _| {}, &c2);
        (r, t)
    });
    let mut pids = Vec::new();
    wait_for("both sleeps", Duration::from_secs(10), || {
        pids = [sleep_pids(&a), sleep_pids(&b)].concat();
        pids.len() == 2
    });
    let t = Instant::now();
    cancel.cancel();
    let (r, _) = handle.join().expect("thread");
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "cancel took {:?}",
        t.elapsed()
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived"
        );
    }
    Outcome::Pass
}

/// `__victim ROOTFS ARG`: runs `sleep ARG` in a sandbox; the test SIGKILLs us.
fn victim(args: &[String]) -> ! {
    let (Some(rootfs), Some(arg)) = (args.first(), args.get(1)) else {
        std::process::exit(2)
    };
    let s = spec_for(
        Rootfs::Dir(rootfs.into()),
        &["/bin/sh", "-c", &format!("sleep {arg} & exec sleep {arg}")],
    );
    let _ = run(&s, &mut |_, _| {}, &Cancel::new());
    std::process::exit(0)
}

fn killed_caller_leaves_nothing() -> Outcome {
    let fx = Fixture::new();
    let arg = unique(9300);
    let child = Command::new("/proc/self/exe")
        .arg("__victim")
        .arg(&fx.rootfs)
        .arg(&arg)
        .spawn()
        .expect("spawn victim");
    let victim_pid = child.id();
    // Whatever happens below, the victim must not outlive the test.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    wait_for("the victim's sleeps", Duration::from_secs(10), || {
        sleep_pids(&arg).len() == 2
    });
    let inits: Vec<u32> = pids_with_arg(rbuild_sandbox::INIT_ARG)
        .into_iter()
        .filter(|&p| parent_pid(p) == Some(victim_pid))
        .collect();
    assert_eq!(inits.len(), 1, "one init under the victim");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim_pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("kill");
    let _ = child.0.wait();
    wait_for("the container to go", Duration::from_secs(5), || {
        sleep_pids(&arg).is_empty() && !Path::new(&format!("/proc/{}", inits[0])).exists()
    });
    Outcome::Pass
}

// ---------------------------------------------------------------- rootless

/// A user made for one test, with /etc/subuid and /etc/subgid lines; removed
/// (user and lines) on drop.
struct ThrowawayUser {
    name: String,
    uid: u32,
    lines: Option<String>,
}

impl ThrowawayUser {
    fn create(ranges: Option<(u32, u32)>) -> Result<Self, String> {
        let name = format!("rbsbx{}", unique(0));
        let st = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/bin/sh",
                "--user-group",
                &name,
            ])
            .status()
            .map_err(|e| format!("useradd: {e}"))?;
        if !st.success() {
            return Err(format!("useradd {name} failed"));
        }
        let mut user = Self {
            name: name.clone(),
            uid: 0,
            lines: None,
        };
        let out = Command::new("id")
            .args(["-u", &name])
            .output()
            .map_err(|e| e.to_string())?;
        user.uid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "id -u".to_string())?;
        // useradd may have allocated ranges itself (SUB_UID_MIN in login.defs):
        // the test decides what the user has.
        for f in ["/etc/subuid", "/etc/subgid"] {
            if let Ok(text) = fs::read_to_string(f) {
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        !l.starts_with(&format!("{name}:"))
                            && !l.starts_with(&format!("{}:", user.uid))
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                fs::write(f, kept).map_err(|e| format!("{f}: {e}"))?;
            }
        }
        if let Some((start, count)) = ranges {
            let line = format!("{name}:{start}:{count}\n");
            for f in ["/etc/subuid", "/etc/subgid"] {
                let mut text = fs::read_to_string(f).unwrap_or_default();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&line);
                fs::write(f, text).map_err(|e| format!("{f}: {e}"))?;
            }
            user.lines = Some(line);
        }
        Ok(user)
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        if let Some(line) = &self.lines {
            for f in ["/etc/subuid", "/etc/subgid"] {
                if let Ok(text) = fs::read_to_string(f) {
                    let _ = fs::write(f, text.replace(line.as_str(), ""));
                }
            }
        }
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// Runs `__rootless CASE DIR` as the user; returns its KEY=VALUE lines.
/// `__rootless CASE DIR` as the user, DIR owned by the user.
fn as_user(user: &ThrowawayUser, case: &str, dir: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    rustix::fs::chown(
        dir,
        Some(rustix::fs::Uid::from_raw(user.uid)),
        Some(rustix::fs::Gid::from_raw(user.uid)),
    )
    .expect("chown");
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(["__rootless", case])
        .arg(dir)
        .uid(user.uid)
        .gid(user.uid)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", dir)
        .env("TMPDIR", dir);
    cmd
}

fn run_as(user: &ThrowawayUser, case: &str, dir: &Path) -> Vec<(String, String)> {
    let out = as_user(user, case, dir)
        .output()
        .expect("spawn rootless child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rootless child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    print!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.starts_with("note: "))
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], k: &str) -> &'a str {
    kv.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("rootless child did not report {k}: {kv:?}"))
}

fn userns_possible() -> Option<String> {
    for tool in ["useradd", "userdel", "newuidmap", "newgidmap"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

const SUBID_START: u32 = 300_000;

fn rootless_full_range() -> Outcome {
    if let Some(why) = userns_possible() {
        return Outcome::Skip(format!("rootless test not possible: {why}"));
    }
    let user = match ThrowawayUser::create(Some((SUBID_START, 65536))) {
        Ok(u) => u,
        Err(e) => return Outcome::Skip(format!("cannot create a throwaway user: {e}")),
    };
    let dir = tempfile::Builder::new()
        .prefix("rbuild-rootless")
        .tempdir()
        .expect("tempdir");
    let kv = run_as(&user, "full", dir.path());
    assert_eq!(
        get(&kv, "namespace"),
        "rootless full_range=true warning=None"
    );
    assert_eq!(
        get(&kv, "uid_map"),
        format!("0 {} 1 | 1 {SUBID_START} 65536", user.uid)
    );
    assert_eq!(get(&kv, "id"), "uid=0(root) gid=0(root)");
    assert_eq!(get(&kv, "caps"), "CapBnd:\t00000000a80425fb");
    assert_eq!(get(&kv, "robinds"), "127.0.0.1 localhost file-ro dir-ro");
    let host_ifaces = fs::read_dir("/sys/class/net").expect("read").count();
    assert_eq!(get(&kv, "hostnet"), format!("{host_ifaces} sys-ro"));
    assert_eq!(get(&kv, "id1000"), "uid=1000 gid=1000 groups=10,1000");
    let upper = dir.path().join("overlay/upper");
    check_overlay_upper(&upper, "user");
    // Namespace root is the user on disk; uid 1000 is subuid_start + 999.
    assert_eq!(
        fs::metadata(upper.join("new")).expect("stat").uid(),
        user.uid
    );
    let by = fs::metadata(upper.join("tmp/by-uid")).expect("stat");
    assert_eq!((by.uid(), by.gid()), (SUBID_START + 999, SUBID_START + 999));
    Outcome::Pass
}

fn rootless_single_id() -> Outcome {
    if let Some(why) = userns_possible() {
        return Outcome::Skip(format!("rootless test not possible: {why}"));
    }
    let user = match ThrowawayUser::create(None) {
        Ok(u) => u,
        Err(e) => return Outcome::Skip(format!("cannot create a throwaway user: {e}")),
    };
    let dir = tempfile::Builder::new()
        .prefix("rbuild-rootless")
        .tempdir()
        .expect("tempdir");
    let kv = run_as(&user, "single", dir.path());
    assert!(
        get(&kv, "namespace")
            .starts_with("rootless full_range=false warning=Some(\"no subordinate ids for "),
        "{kv:?}"
    );
    assert!(get(&kv, "namespace").contains("_apt"));
    assert_eq!(get(&kv, "uid_map"), format!("0 {} 1", user.uid));
    assert_eq!(get(&kv, "id"), "uid=0(root) gid=0(root)");
    assert_eq!(
        get(&kv, "id1000"),
        "setgroups (setgroups is denied in a single-id user namespace) [1000, 10]: Operation not permitted (os error 1)"
    );
    assert_eq!(
        get(&kv, "id1000-nogroups"),
        "setresgid (not mapped in this user namespace: rootless without subordinate ids?) 1000: Invalid argument (os error 22)"
    );
    Outcome::Pass
}

fn rootless_parent_forwards_signals() -> Outcome {
    if let Some(why) = userns_possible() {
        return Outcome::Skip(format!("rootless test not possible: {why}"));
    }
    let user = match ThrowawayUser::create(Some((SUBID_START, 65536))) {
        Ok(u) => u,
        Err(e) => return Outcome::Skip(format!("cannot create a throwaway user: {e}")),
    };
    let dir = tempfile::Builder::new()
        .prefix("rbuild-rootless")
        .tempdir()
        .expect("tempdir");
    let arg = unique(9400);
    let mut child = as_user(&user, "sleep", dir.path())
        .arg(&arg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("the rootless sleep", Duration::from_secs(10), || {
        sleep_pids(&arg).len() == 1
    });
    // The bootstrap parent (our child) forwards SIGTERM to the namespaced
    // process, which dies of it, taking its container along, and the parent
    // exits with 128 + 15.
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("kill");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143));
    wait_for("the container to go", Duration::from_secs(5), || {
        sleep_pids(&arg).is_empty()
    });
    Outcome::Pass
}

/// The rootless side: `__rootless CASE DIR`, as the throwaway user.
fn rootless_child(args: &[String]) -> ! {
    let (Some(case), Some(dir)) = (args.first(), args.get(1)) else {
        std::process::exit(2)
    };
    let dir = PathBuf::from(dir);
    let ns = match enter_user_namespace() {
        Ok(Namespace::ExitParent(code)) => std::process::exit(code),
        Ok(ns) => ns,
        Err(e) => {
            println!("error={e}");
            std::process::exit(3)
        }
    };
    match &ns {
        Namespace::Rootless {
            full_range,
            warning,
        } => {
            println!("namespace=rootless full_range={full_range} warning={warning:?}")
        }
        other => println!("namespace={other:?}"),
    }
    if case == "sleep" {
        let rootfs = dir.join("rootfs");
        make_busybox_rootfs(&rootfs);
        let arg = args.get(2).cloned().unwrap_or_default();
        let _ = run(
            &spec_for(Rootfs::Dir(rootfs), &["/bin/sleep", &arg]),
            &mut |_, _| {},
            &Cancel::new(),
        );
        std::process::exit(0)
    }
    let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    let map: Vec<String> = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    println!("uid_map={}", map.join(" | "));
    assert!(rbuild_sandbox::running_in_user_namespace());

    let rootfs = dir.join("rootfs");
    make_busybox_rootfs(&rootfs);
    let root = Rootfs::Dir(rootfs.clone());
    println!(
        "id={}",
        ok(&spec_for(root.clone(), &["/bin/id"])).stdout.trim()
    );
    let caps = ok(&spec_for(
        root.clone(),
        &["/bin/grep", "^CapBnd", "/proc/self/status"],
    ));
    println!("caps={}", caps.stdout.trim());
    // Host network: no sysfs of our own allowed, so the host's, read-only.
    let mut s = spec_for(
        root.clone(),
        &[
            "/bin/sh",
            "-c",
            "ls /sys/class/net | grep -c . ; touch /sys/x 2>/dev/null || echo sys-ro",
        ],
    );
    s.network = Network::Host;
    let words: Vec<String> = ok(&s)
        .stdout
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    println!("hostnet={}", words.join(" "));
    // Read-only binds (file and directory) on the user's filesystem: the
    // remount must keep the flags the kernel locked.
    let hosts = dir.join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n").expect("write");
    let mut s = spec_for(
        root.clone(),
        &[
            "/bin/sh",
            "-c",
            "cat /etc/hosts; echo x >> /etc/hosts 2>/dev/null || echo file-ro; touch /data/x 2>/dev/null || echo dir-ro",
        ],
    );
    s.etc_files = vec![("/etc/hosts".into(), hosts)];
    s.mounts = vec![Mount {
        target: "/data".into(),
        kind: MountKind::Bind {
            source: dir.join("rootfs/etc"),
            readonly: true,
        },
    }];
    let words: Vec<String> = ok(&s)
        .stdout
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    println!("robinds={}", words.join(" "));
    let mut s = spec_for(root.clone(), &["/bin/id"]);
    s.uid = 1000;
    s.gid = 1000;
    s.additional_gids = vec![1000, 10];
    match try_run(&s) {
        Ok(o) => println!("id1000={}", o.stdout.trim()),
        Err(e) => println!("id1000={e}"),
    }
    s.additional_gids.clear();
    match try_run(&s) {
        Ok(o) => println!("id1000-nogroups={}", o.stdout.trim()),
        Err(e) => println!("id1000-nogroups={e}"),
    }
    if case == "full" {
        let base = dir.join("overlay");
        fs::create_dir(&base).expect("mkdir");
        overlay_scenario(&base, true, 1000);
        let overlay = Rootfs::Overlay {
            lower: vec![base.join("lower1")],
            upper: base.join("upper"),
            work: base.join("work"),
            userxattr: true,
        };
        for (what, rootfs) in [("dir rootfs", root.clone()), ("overlay rootfs", overlay)] {
            let mut times = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                ok(&spec_for(rootfs.clone(), &["/bin/true"]));
                times.push(t.elapsed());
            }
            times.sort();
            println!(
                "note: rootless run(/bin/true), {what}: median {:.1} ms (min {:.1}, max {:.1}) over 20",
                ms(times[10]),
                ms(times[0]),
                ms(times[19])
            );
        }
    }
    std::process::exit(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn overhead_true() -> Outcome {
    let fx = Fixture::new();
    let measure = |rootfs: Rootfs, what: &str| {
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            ok(&spec_for(rootfs.clone(), &["/bin/true"]));
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "    note: root run(/bin/true), {what}: median {:.1} ms (min {:.1}, max {:.1}) over 20",
            ms(times[10]),
            ms(times[0]),
            ms(times[19])
        );
        times[10]
    };
    measure(Rootfs::Dir(fx.rootfs.clone()), "dir rootfs");
    let (up, wk) = (fx.path("up"), fx.path("wk"));
    fs::create_dir(&up).expect("mkdir");
    fs::create_dir(&wk).expect("mkdir");
    let median = measure(
        Rootfs::Overlay {
            lower: vec![fx.rootfs.clone()],
            upper: up,
            work: wk,
            userxattr: false,
        },
        "overlay rootfs",
    );
    assert!(
        median < Duration::from_secs(1),
        "a run of /bin/true should not take a second"
    );
    Outcome::Pass
}
