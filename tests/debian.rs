//! The slow suite (opt in with `RBUILD_SLOW_TESTS=1`): a real Debian base
//! and apt in RUN. A bookworm rootfs is made once with `debootstrap
//! --variant=minbase` from the mirror this machine's apt uses and kept in
//! /var/tmp/rbuild-debian (delete it to start over); rbuild turns it into
//! an OCI layout (`FROM scratch` + `COPY rootfs/ /`), and then builds
//! `FROM debian` + `RUN apt-get update && apt-get install -y hello`, as root
//! and as a throwaway unprivileged user. The package's files must be in the
//! image and apt's `partial` directories owned by `_apt` in the RUN layer.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;

const CACHE_DIR: &str = "/var/tmp/rbuild-debian";
const SUITE: &str = "bookworm";
const TAG: &str = "deb:latest";
const SUBID_START: u32 = 460_000;

fn slow_enabled(what: &str) -> bool {
    if std::env::var("RBUILD_SLOW_TESTS").as_deref() != Ok("1") {
        eprintln!("note: skipping {what}: set RBUILD_SLOW_TESTS=1 to run the slow Debian tests");
        return false;
    }
    if !is_root() {
        eprintln!("note: skipping {what}: debootstrap needs root");
        return false;
    }
    need("debootstrap", what)
}

/// Debian mirrors named in this machine's apt sources (one-line and deb822
/// formats), security and update suites left out; deb.debian.org last.
fn apt_mirrors() -> Vec<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut out: Vec<String> = Vec::new();
    let mut add = |uri: &str| {
        let uri = uri.trim_end_matches('/').to_string();
        if (uri.starts_with("http://") || uri.starts_with("https://"))
            && !uri.contains("security")
            && !out.contains(&uri)
        {
            out.push(uri);
        }
    };
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("deb ") {
                // deb [options] URI suite components
                let rest = if rest.trim_start().starts_with('[') {
                    rest.split_once(']').map(|x| x.1).unwrap_or("")
                } else {
                    rest
                };
                if let Some(uri) = rest.split_whitespace().next() {
                    add(uri);
                }
            } else if let Some(uris) = line.strip_prefix("URIs:") {
                for uri in uris.split_whitespace() {
                    add(uri);
                }
            }
        }
    }
    add("http://deb.debian.org/debian");
    out
}

/// The first mirror that serves bookworm's Release file.
fn reachable_mirror() -> Option<String> {
    for m in apt_mirrors() {
        let ok = quiet_status(
            std::process::Command::new("curl")
                .args(["-sfI", "--max-time", "15"])
                .arg(format!("{m}/dists/{SUITE}/Release")),
        );
        if ok {
            return Some(m);
        }
        eprintln!("note: mirror {m} is not reachable");
    }
    None
}

/// The cached minbase rootfs (`CACHE_DIR/ctx/rootfs`), made on first use.
fn debian_rootfs() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cache = Path::new(CACHE_DIR);
    let rootfs = cache.join("ctx/rootfs");
    let done = cache.join("complete");
    if done.exists() && rootfs.join("usr/bin/apt-get").exists() {
        return rootfs;
    }
    let mirror = reachable_mirror().expect("no Debian mirror reachable from this machine");
    let tmp = cache.join(format!("rootfs.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(cache.join("ctx")).unwrap();
    let t = Instant::now();
    let out = std::process::Command::new("debootstrap")
        .args(["--variant=minbase", SUITE])
        .arg(&tmp)
        .arg(&mirror)
        .output()
        .expect("debootstrap runs");
    assert!(
        out.status.success(),
        "debootstrap failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "note: debootstrap {SUITE} from {mirror} took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // As Debian's own images: no downloaded packages, no package lists.
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        for e in std::fs::read_dir(tmp.join(dir)).unwrap().flatten() {
            if e.file_type().unwrap().is_file() {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
    }
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::rename(&tmp, &rootfs).unwrap();
    std::fs::write(&done, format!("{mirror}\n")).unwrap();
    rootfs
}

/// `_apt`'s uid in the rootfs.
fn apt_uid(rootfs: &Path) -> u64 {
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0] == "_apt").then(|| f[2].parse().unwrap())
        })
        .expect("_apt in the rootfs's passwd")
}

/// The Debian base as an OCI layout made by rbuild (as root), once per
/// test process, in `CACHE_DIR/layouts/<pid>` (world-readable; the layouts
/// of earlier processes are removed).
fn debian_layout() -> &'static Path {
    static LAYOUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LAYOUT.get_or_init(|| {
        let layouts = Path::new(CACHE_DIR).join("layouts");
        std::fs::create_dir_all(&layouts).unwrap();
        for e in std::fs::read_dir(&layouts).unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !Path::new("/proc").join(&pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let dir = layouts.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_layout(&dir)
    })
}

fn make_layout(dir: &Path) -> PathBuf {
    let rootfs = debian_rootfs();
    let ctx = rootfs.parent().unwrap();
    write_file(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nCMD [\"bash\"]\n",
    );
    let store = dir.join("base-store");
    let archive = dir.join("debian.tar");
    let t = Instant::now();
    ok(build(&store)
        .arg("-o")
        .arg(format!(
            "type=oci,dest={},compression=uncompressed,name=debian:latest",
            archive.display()
        ))
        .arg(ctx));
    eprintln!(
        "note: rbuild made the Debian base layout in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let layout = dir.join("debian-layout");
    untar(&archive, &layout);
    std::fs::remove_file(&archive).unwrap();
    let _ = std::fs::remove_dir_all(&store);
    // Readable by the throwaway user.
    for d in [
        Path::new(CACHE_DIR),
        &Path::new(CACHE_DIR).join("layouts"),
        dir,
    ] {
        chmod(d, 0o755);
    }
    ok(tool("chmod").args(["-R", "a+rX"]).arg(&layout));
    layout
}

const DOCKERFILE: &str = "FROM debian\n\
    RUN apt-get update && apt-get install -y --no-install-recommends hello\n\
    RUN hello > /hello-out && dpkg -s hello | grep -E '^Status:' > /hello-status\n";

/// Checks the image of `DOCKERFILE`.
fn check_image(img: &StoredImage, apt: u64) {
    let hello = &img["/usr/bin/hello"];
    assert_eq!(hello.kind, Kind::File);
    assert_eq!(hello.mode & 0o111, 0o111, "hello is executable");
    assert!(img.has("/usr/share/doc/hello/copyright"));
    assert_eq!(img.text("/hello-out"), "Hello, world!\n");
    assert_eq!(img.text("/hello-status"), "Status: install ok installed\n");
    // The apt RUN's layer: the package and apt's _apt-owned directories.
    let base_layers = 1;
    let run = &img.layers[base_layers];
    assert!(
        run.iter().any(|e| e.path == "usr/bin/hello"),
        "hello is in the apt RUN's layer"
    );
    let partial: Vec<&LayerEntry> = run
        .iter()
        .filter(|e| {
            e.path == "var/lib/apt/lists/partial" || e.path == "var/cache/apt/archives/partial"
        })
        .collect();
    assert!(
        !partial.is_empty(),
        "apt's partial directories are in the layer:\n{}",
        show_layer(run)
    );
    for e in partial {
        assert_eq!(e.uid, apt, "{} owned by _apt ({apt})", e.path);
    }
    for e in run {
        assert!(
            e.uid < 65_536 && e.gid < 65_536,
            "{} owned {}:{} (a host id?)",
            e.path,
            e.uid,
            e.gid
        );
        for f in [
            "etc/resolv.conf",
            "etc/hosts",
            "etc/hostname",
            "proc",
            "sys",
            "dev",
        ] {
            assert!(
                e.path != f && !e.path.starts_with(&format!("{f}/")),
                "{}",
                e.path
            );
        }
    }
}

#[test]
fn debian_apt_get_install_as_root() {
    if !slow_enabled("debian_apt_get_install_as_root") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("rbuild-debian")
        .tempdir()
        .unwrap();
    let layout = debian_layout();
    let apt = apt_uid(&debian_rootfs());
    let ctx = tmp.path().join("ctx");
    write_file(&ctx.join("Dockerfile"), DOCKERFILE);
    let store = tmp.path().join("store");
    let t = Instant::now();
    ok(build(&store)
        .arg(format!(
            "--build-context=debian=oci-layout://{}:latest",
            layout.display()
        ))
        .args(["-t", TAG])
        .arg(&ctx));
    eprintln!(
        "note: FROM debian + apt-get install hello (root) took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    check_image(&StoredImage::load(&store, TAG), apt);
}

#[test]
fn debian_apt_get_install_rootless() {
    if !slow_enabled("debian_apt_get_install_rootless") {
        return;
    }
    if let Some(why) = rootless_unavailable() {
        eprintln!("note: skipping debian_apt_get_install_rootless: {why}");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("rbuild-debian-rl")
        .tempdir()
        .unwrap();
    let layout = debian_layout();
    let apt = apt_uid(&debian_rootfs());
    let user = TestUser::create("rbdeb", Some((SUBID_START, 65_536))).expect("throwaway user");
    let home = tmp.path().join("home");
    let ctx = home.join("ctx");
    write_file(&ctx.join("Dockerfile"), DOCKERFILE);
    let store = home.join("store");
    user.own(&home);
    let t = Instant::now();
    let out = user
        .command(rbuild_bin(), &home)
        .env("RBUILD_ROOT", &store)
        .env("TMPDIR", &home)
        .args(["build", "--progress=plain"])
        .arg(format!(
            "--build-context=debian=oci-layout://{}:latest",
            layout.display()
        ))
        .args(["-t", TAG])
        .arg(&ctx)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rootless apt build failed:\n{stderr}");
    eprintln!(
        "note: FROM debian + apt-get install hello (rootless) took {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(!stderr.contains("warning:"), "{stderr}");
    check_image(&StoredImage::load(&store, TAG), apt);
}
