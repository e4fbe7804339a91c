//! RUN with rbuild run by an unprivileged user. The test (as root) makes a
//! throwaway user with its own /etc/subuid and /etc/subgid range (removed at
//! the end), gives it a store and a context, and runs the cargo-built rbuild
//! as that user, importing the busybox base from a world-readable OCI
//! layout. Images must hold the owners the container saw (0 and 1000), not
//! the host's; on disk the store belongs to the user and its subordinate
//! range. Skipped with a note when not root or without useradd/newuidmap.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Output;

use common::*;

const TAG: &str = "rl:latest";
/// The subordinate range the throwaway users get (away from the sandbox
/// crate's tests, which use 300000).
const SUBID_START: u32 = 420_000;
const SUBID_COUNT: u32 = 65_536;

struct Rootless {
    user: TestUser,
    tmp: tempfile::TempDir,
    root: PathBuf,
    ctx: PathBuf,
}

impl Rootless {
    fn new(ranges: Option<(u32, u32)>, what: &str) -> Option<Rootless> {
        if let Some(why) = rootless_unavailable() {
            eprintln!("note: skipping {what}: {why}");
            return None;
        }
        // Made as root before the user exists, so no rbuild runs as root later.
        let _ = busybox_layout();
        let user = TestUser::create("rbrl", ranges).expect("create a throwaway user");
        let tmp = tempfile::Builder::new()
            .prefix("rbuild-rootless")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("store");
        let ctx = tmp.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        user.own(tmp.path());
        Some(Rootless {
            user,
            tmp,
            root,
            ctx,
        })
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.ctx.join(rel);
        write_file(&p, content);
        self.user.own(&self.ctx);
    }

    /// `rbuild build --progress=plain <busybox> -t rl ARGS ctx` as the user.
    fn rbuild(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.user.command(rbuild_bin(), self.tmp.path());
        cmd.env("RBUILD_ROOT", &self.root)
            .env("TMPDIR", self.tmp.path())
            .args(["build", "--progress=plain"])
            .arg(busybox_flag())
            .args(["-t", TAG])
            .args(args)
            .arg(&self.ctx);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run rbuild as the throwaway user")
    }

    fn build_ok(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.rbuild(args, env);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "rootless build failed ({}):\n{stderr}",
            out.status
        );
        stderr
    }

    fn image(&self) -> StoredImage {
        StoredImage::load(&self.root, TAG)
    }
}

#[test]
fn rootless_run_keeps_container_owners() {
    let Some(rl) = Rootless::new(
        Some((SUBID_START, SUBID_COUNT)),
        "rootless_run_keeps_container_owners",
    ) else {
        return;
    };
    rl.write("d/f", "bound\n");
    let secret = rl.tmp.path().join("secret.txt");
    write_file(&secret, "rootless-s3cret");
    rl.user.own(&secret);
    rl.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN mkdir -p /data/sub /data/gone /opq/inner /u && echo one > /data/a && echo del > /data/del \\\n\
          && echo x > /data/gone/x && echo y > /opq/y && echo z > /opq/inner/z && echo u > /u/f \\\n\
          && echo m > /u/rootless-1000-marker && chown -R 1000:1000 /u && chmod 640 /u/f \\\n\
          && echo r > /rootless-root-marker && id -u > /id0\n\
         RUN rm /data/del && rm -rf /data/gone && rm -rf /opq && mkdir /opq && echo new > /opq/new \\\n\
          && echo more >> /data/a\n\
         USER 1000\n\
         RUN id -u > /tmp/uid && echo mine > /tmp/mine\n\
         USER user\n\
         RUN id > /tmp/id\n\
         USER root\n\
         RUN --mount=type=secret,id=s --mount=type=cache,target=/c --mount=type=bind,source=d,target=/d \\\n\
             --mount=type=tmpfs,target=/t \\\n\
             sed s/s3cret/REDACTED/ /run/secrets/s > /redacted && cat /d/f > /bound && echo c >> /c/log \\\n\
          && cat /c/log > /cachelog && echo t > /t/x && grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status > /caps\n\
         RUN ls -A /data > /ls-data && ls -A /opq > /ls-opq\n",
    );
    let secret_flag = format!("--secret=id=s,src={}", secret.display());
    let args = [secret_flag.as_str()];
    let progress = rl.build_ok(&args, &[]);
    assert!(
        !progress.contains("warning:"),
        "no warning with a full range:\n{progress}"
    );

    let img = rl.image();
    let layers = &img.layers[1..];
    assert_eq!(layers.len(), 6, "one layer per RUN");
    // Owners as the container saw them, never the host's ids.
    let host_ids = [rl.user.uid as u64, (SUBID_START + 999) as u64];
    for (i, l) in layers.iter().enumerate() {
        for e in l {
            assert!(
                [0, 1000].contains(&e.uid) && [0, 1000].contains(&e.gid),
                "RUN {} layer: {} owned {}:{}:\n{}",
                i + 1,
                e.path,
                e.uid,
                e.gid,
                show_layer(l)
            );
            assert!(!host_ids.contains(&e.uid));
        }
    }
    let l1 = &layers[0];
    for p in ["u", "u/f", "u/rootless-1000-marker"] {
        let e = l1.iter().find(|e| e.path == p).unwrap();
        assert_eq!((e.uid, e.gid), (1000, 1000), "{p}");
    }
    let f = l1.iter().find(|e| e.path == "u/f").unwrap();
    assert_eq!(f.mode, 0o640);
    for p in ["data/a", "rootless-root-marker", "id0"] {
        let e = l1.iter().find(|e| e.path == p).unwrap();
        assert_eq!((e.uid, e.gid), (0, 0), "{p}");
    }
    assert_eq!(img.text("/id0"), "0\n", "RUN runs as the container's root");

    // Whiteouts and the opaque directory, as written by a rootless overlay.
    let mut l2: Vec<&str> = layers[1].iter().map(|e| e.path.as_str()).collect();
    l2.sort();
    assert_eq!(
        l2,
        [
            "data",
            "data/.wh.del",
            "data/.wh.gone",
            "data/a",
            "opq",
            "opq/.wh..wh..opq",
            "opq/new"
        ],
        "{}",
        show_layer(&layers[1])
    );
    for e in &layers[1] {
        if e.path.contains(".wh.") {
            assert_eq!(e.kind, Kind::File, "{} is a regular whiteout file", e.path);
        }
    }
    for gone in ["/data/del", "/data/gone", "/opq/y", "/opq/inner"] {
        assert!(!img.has(gone), "{gone} still in the image");
    }
    assert_eq!(img.text("/data/a"), "one\nmore\n");
    // A later RUN on the rootless snapshots does not see what was deleted.
    assert_eq!(img.text("/ls-data"), "a\nsub\n");
    assert_eq!(img.text("/ls-opq"), "new\n");

    // USER 1000 and USER user.
    assert_eq!(img.text("/tmp/uid"), "1000\n");
    let mine = &img["/tmp/mine"];
    assert_eq!((mine.uid, mine.gid), (1000, 1000));
    assert!(img
        .text("/tmp/id")
        .starts_with("uid=1000(user) gid=1000(user)"));

    // Mounts and capabilities.
    assert_eq!(img.text("/bound"), "bound\n");
    assert_eq!(
        img.text("/redacted"),
        "rootless-REDACTED",
        "the secret was mounted"
    );
    assert_eq!(img.text("/cachelog"), "c\n");
    let caps = img.text("/caps");
    assert!(caps.contains("CapEff:\t00000000a80425fb"), "{caps}");
    assert!(caps.contains("CapBnd:\t00000000a80425fb"), "{caps}");
    assert!(caps.contains("NoNewPrivs:\t0"), "as BuildKit: {caps}");
    for p in ["/run/secrets", "/c", "/d", "/t"] {
        assert!(!img.has(p), "{p} left in the image");
    }

    // On disk: the store is the user's; what uid 1000 made inside belongs to
    // the user's subordinate uid START+999, root's to the user.
    let mut owners = BTreeSet::new();
    for p in files_under(&rl.root) {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let ok_id = |id: u32| {
            id == rl.user.uid
                || id == rl.user.gid
                || (SUBID_START..SUBID_START + SUBID_COUNT).contains(&id)
        };
        assert!(
            ok_id(md.uid()) && ok_id(md.gid()),
            "{} is owned {}:{}, outside the user's ids",
            p.display(),
            md.uid(),
            md.gid()
        );
        owners.insert(md.uid());
    }
    for blob in files_under(&rl.root.join("blobs")) {
        let md = std::fs::metadata(&blob).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (rl.user.uid, rl.user.gid),
            "{}",
            blob.display()
        );
    }
    let find = |name: &str| -> Vec<PathBuf> {
        files_under(&rl.root)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == name))
            .collect()
    };
    let root_marker = find("rootless-root-marker");
    assert!(
        !root_marker.is_empty(),
        "no unpacked RUN layer in the store"
    );
    for p in root_marker {
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (rl.user.uid, rl.user.gid),
            "{}",
            p.display()
        );
    }
    let user_marker = find("rootless-1000-marker");
    assert!(!user_marker.is_empty());
    for p in user_marker {
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (SUBID_START + 999, SUBID_START + 999),
            "{}",
            p.display()
        );
    }

    // An unchanged rebuild reuses every RUN.
    let again = rl.build_ok(&args, &[]);
    let runs: Vec<_> = plain_steps(&again)
        .into_iter()
        .filter(|(n, _)| n.contains("] RUN "))
        .collect();
    assert_eq!(runs.len(), 6, "{again}");
    assert!(runs.iter().all(|(_, s)| s == "CACHED"), "{again}");
    // The secret is nowhere in the user's store.
    assert!(files_containing(&rl.root, b"rootless-s3cret").is_empty());
}

/// Found failing with `bind mount /sys: Invalid argument`: a plain bind of
/// /sys is refused in a user namespace when /sys has locked submounts.
#[test]
fn rootless_run_with_the_host_network() {
    let Some(rl) = Rootless::new(
        Some((SUBID_START, SUBID_COUNT)),
        "rootless_run_with_the_host_network",
    ) else {
        return;
    };
    rl.write(
        "Dockerfile",
        "FROM busybox\n\
         RUN ls /sys/class/net > /net && echo hi > /x\n\
         RUN --network=none ls /sys/class/net > /none\n",
    );
    rl.build_ok(&[], &[]);
    let img = rl.image();
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    let got: Vec<String> = img.text("/net").lines().map(String::from).collect();
    assert_eq!(got, host, "the host's interfaces");
    assert_eq!(img.text("/x"), "hi\n");
    assert_eq!(img.text("/none"), "lo\n");
}

#[test]
fn rootless_without_subordinate_ids_warns_and_runs_as_root() {
    let Some(rl) = Rootless::new(
        None,
        "rootless_without_subordinate_ids_warns_and_runs_as_root",
    ) else {
        return;
    };
    rl.write(
        "Dockerfile",
        "FROM busybox\nRUN id -u > /id && echo hi > /x && mkdir /d && echo f > /d/f\n",
    );
    let progress = rl.build_ok(&[], &[]);
    let warning = progress
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning:\n{progress}"));
    assert!(
        warning.contains(&format!("no subordinate ids for {}", rl.user.name)),
        "{warning}"
    );
    assert!(
        warning.contains("RUN steps that switch to another user fail"),
        "names what will fail: {warning}"
    );
    assert!(
        warning.contains("--add-subuids"),
        "says how to fix it: {warning}"
    );
    let img = rl.image();
    assert_eq!(img.text("/id"), "0\n");
    for e in &img.layers[1] {
        assert_eq!((e.uid, e.gid), (0, 0), "{}", e.path);
    }
    for p in files_under(&rl.root) {
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(md.uid(), rl.user.uid, "{} on disk", p.display());
    }

    // What the warning said: switching users cannot work.
    rl.write(
        "Dockerfile",
        "FROM busybox\nUSER 1000\nRUN id -u > /tmp/id\n",
    );
    let out = rl.rbuild(&[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RUN id -u"), "{stderr}");
    assert!(
        stderr.contains("not mapped in this user namespace"),
        "{stderr}"
    );
}

#[test]
fn rootless_interrupt_cancels_the_running_step() {
    let Some(rl) = Rootless::new(
        Some((SUBID_START, SUBID_COUNT)),
        "rootless_interrupt_cancels_the_running_step",
    ) else {
        return;
    };
    let arg = format!("48.{}", std::process::id());
    rl.write(
        "Dockerfile",
        &format!("FROM busybox\nRUN echo start && sleep {arg} && echo end > /end\n"),
    );
    let mut cmd = rl.user.command(rbuild_bin(), rl.tmp.path());
    cmd.env("RBUILD_ROOT", &rl.root)
        .args(["build", "--progress=plain"])
        .arg(busybox_flag())
        .args(["-t", TAG])
        .arg(&rl.ctx)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    assert!(
        wait_until(20.0, || !pids_with_arg(&arg).is_empty()),
        "the RUN never started"
    );
    let started = std::time::Instant::now();
    // To the bootstrap parent alone: it forwards the signal into the namespace.
    send_signal(child.id(), "INT");
    let status = wait_child(&mut child, 10.0);
    let elapsed = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(elapsed.as_secs_f64() < 5.0, "took {elapsed:?}");
    assert!(stderr.contains("cancel"), "{stderr}");
    assert!(
        wait_until(3.0, || pids_with_arg(&arg).is_empty()),
        "the RUN's processes outlived the build"
    );
}

#[test]
fn rootless_small_range_warns_and_refuses_ids_beyond_it() {
    let Some(rl) = Rootless::new(
        Some((SUBID_START + 100_000, 2000)),
        "rootless_small_range_warns_and_refuses_ids_beyond_it",
    ) else {
        return;
    };
    rl.write(
        "Dockerfile",
        "FROM busybox\nRUN echo a > /a && chown 1999:1999 /a\nUSER 1000\nRUN id -u > /tmp/id\n",
    );
    let progress = rl.build_ok(&[], &[]);
    let warning = progress
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning:\n{progress}"));
    assert!(warning.contains("only 2000 subordinate ids"), "{warning}");
    let img = rl.image();
    assert_eq!(img.text("/tmp/id"), "1000\n");
    assert_eq!((img["/a"].uid, img["/a"].gid), (1999, 1999));
    // An id outside the range cannot exist in the namespace.
    rl.write(
        "Dockerfile",
        "FROM busybox\nRUN echo b > /b && chown 5000 /b\n",
    );
    let out = rl.rbuild(&[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("chown 5000"), "{stderr}");
}
