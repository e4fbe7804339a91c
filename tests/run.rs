//! RUN, end to end, as root: each test builds a small Dockerfile on the
//! busybox base (`testdata/busybox/make.sh`, imported with
//! `--build-context busybox=oci-layout://…`) into its own store and checks
//! what came out: the layer tars themselves (whiteouts, opaque directories,
//! modes, owners, no runtime leftovers), the image config, the files RUN
//! wrote, exit codes and error text, and the cache (`CACHED` steps in
//! `--progress=plain`). Skipped with a note when not root (see
//! `run_rootless.rs` for rootless runs).

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;

const TAG: &str = "img:latest";

/// A store and a context directory of one test.
struct Fx {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ctx: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::Builder::new()
            .prefix("rbuild-run")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("store");
        let ctx = tmp.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        Fx {
            root,
            ctx,
            _tmp: tmp,
        }
    }

    fn dockerfile(&self, text: &str) {
        write_file(&self.ctx.join("Dockerfile"), text);
    }

    /// `rbuild build --progress=plain -t img <busybox> ARGS ctx`.
    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = build(&self.root);
        cmd.arg(busybox_flag())
            .args(["-t", TAG])
            .args(args)
            .arg(&self.ctx);
        cmd
    }

    /// Builds and asserts success; returns the progress (stderr).
    fn build(&self, args: &[&str]) -> String {
        let out = ok(&mut self.cmd(args));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.cmd(args))
    }

    /// Builds with extra environment variables; returns the progress.
    fn build_env(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let mut cmd = self.cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        String::from_utf8_lossy(&ok(&mut cmd).stderr).into_owned()
    }

    /// The image built last.
    fn image(&self) -> StoredImage {
        StoredImage::load(&self.root, TAG)
    }

    /// The layers the Dockerfile's steps added on top of busybox.
    fn added_layers(&self) -> Vec<Vec<LayerEntry>> {
        let img = self.image();
        assert!(img.layers.len() > 1, "no layer on top of the base");
        img.layers[1..].to_vec()
    }
}

fn paths(entries: &[LayerEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

fn entry<'a>(entries: &'a [LayerEntry], path: &str) -> &'a LayerEntry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} is not in the layer:\n{}", show_layer(entries)))
}

/// A file's content in the image.
fn file_text(fx: &Fx, path: &str) -> String {
    fx.image().text(path)
}

/// Every entry's parent directory entry, when present, comes before it.
fn assert_parents_first(entries: &[LayerEntry]) {
    for (i, e) in entries.iter().enumerate() {
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            if let Some(j) = entries.iter().position(|p| p.path == parent) {
                assert!(j < i, "{} comes before its parent {parent}", e.path);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

#[test]
fn layers_record_creates_changes_and_deletes() {
    if !root_only("layers_record_creates_changes_and_deletes") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN mkdir -p /data/sub /data/gone/deeper /data/keepdir /opq/inner /untouched/deep \\\n\
          && echo one > /data/a && echo del > /data/del && echo x > /data/gone/x \\\n\
          && echo y > /opq/y && echo z > /opq/inner/z && echo base > /data/sub/f \\\n\
          && echo u > /untouched/deep/u && ln -s a /data/link \\\n\
          && chown 1000:1000 /data/a && chmod 600 /data/a && chmod 750 /data/keepdir\n\
         RUN rm /data/del && rm -rf /data/gone && rm -rf /opq && mkdir /opq && echo new > /opq/new \\\n\
          && echo more >> /data/sub/f && chmod 640 /data/sub/f && chown 1000:100 /data/sub/f \\\n\
          && echo top > /newtop && rm /etc/group && echo extra:x:2000:2000::/:/bin/sh >> /etc/passwd \\\n\
          && rmdir /var/tmp\n",
    );
    fx.build(&[]);
    let layers = fx.added_layers();
    assert_eq!(layers.len(), 2, "one layer per RUN");

    // RUN 1: what it created, with modes, owners, content, link targets.
    let l1 = &layers[0];
    assert_parents_first(l1);
    let mut got: Vec<&str> = paths(l1);
    got.sort();
    assert_eq!(
        got,
        [
            "data",
            "data/a",
            "data/del",
            "data/gone",
            "data/gone/deeper",
            "data/gone/x",
            "data/keepdir",
            "data/link",
            "data/sub",
            "data/sub/f",
            "opq",
            "opq/inner",
            "opq/inner/z",
            "opq/y",
            "untouched",
            "untouched/deep",
            "untouched/deep/u",
        ],
        "RUN 1 layer:\n{}",
        show_layer(l1)
    );
    let a = entry(l1, "data/a");
    assert_eq!(
        (a.kind, a.mode, a.uid, a.gid, a.data.as_slice()),
        (Kind::File, 0o600, 1000, 1000, &b"one\n"[..])
    );
    let keep = entry(l1, "data/keepdir");
    assert_eq!((keep.kind, keep.mode, keep.uid), (Kind::Dir, 0o750, 0));
    let link = entry(l1, "data/link");
    assert_eq!(
        (link.kind, link.link.as_deref()),
        (Kind::Symlink, Some("a"))
    );
    assert_eq!(entry(l1, "data").mode, 0o755, "umask 022 in RUN");

    // RUN 2: whiteouts, an opaque directory, changed files, untouched
    // parents left out.
    let l2 = &layers[1];
    assert_parents_first(l2);
    let mut got: Vec<&str> = paths(l2);
    got.sort();
    assert_eq!(
        got,
        [
            "data",
            "data/.wh.del",
            "data/.wh.gone",
            "data/sub",
            "data/sub/f",
            "etc",
            "etc/.wh.group",
            "etc/passwd",
            "newtop",
            "opq",
            "opq/.wh..wh..opq",
            "opq/new",
            "var",
            "var/.wh.tmp",
        ],
        "RUN 2 layer:\n{}",
        show_layer(l2)
    );
    for wh in [
        "data/.wh.del",
        "data/.wh.gone",
        "etc/.wh.group",
        "var/.wh.tmp",
    ] {
        let e = entry(l2, wh);
        assert_eq!(e.kind, Kind::File, "{wh} is a regular file");
        assert!(e.data.is_empty(), "{wh} is empty");
    }
    assert!(entry(l2, "opq/.wh..wh..opq").data.is_empty());
    assert_eq!(entry(l2, "opq").kind, Kind::Dir);
    let f = entry(l2, "data/sub/f");
    assert_eq!(
        (f.mode, f.uid, f.gid, f.data.as_slice()),
        (0o640, 1000, 100, &b"base\nmore\n"[..])
    );
    assert!(
        entry(l2, "etc/passwd")
            .data
            .ends_with(b"extra:x:2000:2000::/:/bin/sh\n"),
        "etc/passwd modified in place"
    );
    // A directory whose content changed keeps its own metadata.
    assert_eq!(entry(l2, "var").mode, 0o755);

    // The image as a whole, applied by our own reader.
    let tree = fx.image();
    for gone in [
        "/data/del",
        "/data/gone",
        "/data/gone/x",
        "/opq/y",
        "/opq/inner",
        "/etc/group",
        "/var/tmp",
    ] {
        assert!(!tree.has(gone), "{gone} is still in the image");
    }
    for kept in [
        "/data/a",
        "/data/keepdir",
        "/untouched/deep/u",
        "/opq/new",
        "/bin/busybox",
    ] {
        assert!(tree.has(kept), "{kept} is missing from the image");
    }
    assert_eq!(file_text(&fx, "/data/sub/f"), "base\nmore\n");
}

#[test]
fn run_layers_hold_no_runtime_files() {
    if !root_only("run_layers_hold_no_runtime_files") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("d/f"), "f\n");
    let secret = fx.ctx.parent().unwrap().join("secret.txt");
    write_file(&secret, "s3cret\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN --mount=type=bind,source=d,target=/home/user/ctx --mount=type=cache,target=/var/cache/c \\\n\
             --mount=type=tmpfs,target=/root/t --mount=type=secret,id=s1 \\\n\
             --mount=type=secret,id=s1,target=/etc/sec echo hi > /x\n\
         RUN --mount=type=secret,id=s1 --mount=type=bind,source=d,target=/newdir/ctx \\\n\
             mkdir -p /run/foo && touch /run/foo/y\n\
         RUN --mount=type=bind,source=d,target=/etc/ctx touch /etc/newfile \\\n\
             && cat /etc/hosts /etc/resolv.conf /etc/hostname > /dev/null && ls /proc/self /dev/null /sys/kernel > /dev/null\n\
         RUN --network=none ls -la /dev /tmp > /tmp/listing\n\
         RUN --mount=type=tmpfs,target=/tmp touch /tmp/in-tmpfs && echo 1 > /after-tmpfs\n",
    );
    fx.build(&[&format!("--secret=id=s1,src={}", secret.display())]);
    let layers = fx.added_layers();
    let want: [&[&str]; 5] = [
        &["x"],
        &["run", "run/foo", "run/foo/y"],
        &["etc", "etc/newfile"],
        &["tmp", "tmp/listing"],
        &["after-tmpfs"],
    ];
    assert_eq!(layers.len(), want.len());
    let forbidden = [
        "proc",
        "dev",
        "sys",
        "etc/resolv.conf",
        "etc/hosts",
        "etc/hostname",
        "run/secrets",
        "home/user/ctx",
        "var/cache",
        "root/t",
        "etc/sec",
        "newdir",
        "etc/ctx",
        "tmp/in-tmpfs",
    ];
    for (i, (l, w)) in layers.iter().zip(want).enumerate() {
        for e in l {
            for f in forbidden {
                assert!(
                    e.path != f && !e.path.starts_with(&format!("{f}/")),
                    "RUN {} layer holds {}:\n{}",
                    i + 1,
                    e.path,
                    show_layer(l)
                );
            }
        }
        let mut got = paths(l);
        got.sort();
        assert_eq!(got, w, "RUN {} layer:\n{}", i + 1, show_layer(l));
    }
    // The base's /etc files are untouched in the image.
    let tree = fx.image();
    for p in [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/run/secrets",
        "/proc",
        "/dev",
        "/sys",
    ] {
        assert!(!tree.has(p), "{p} is in the image");
    }
}

// ---------------------------------------------------------------------------
// Users, working directory, environment, shell, forms
// ---------------------------------------------------------------------------

#[test]
fn user_numeric_owns_what_run_writes() {
    if !root_only("user_numeric_owns_what_run_writes") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         USER 1000\n\
         RUN id -u > /tmp/uid && id -g > /tmp/gid && echo mine > /tmp/mine && mkdir /tmp/d \\\n\
          && (touch /not-allowed 2>/dev/null || echo denied > /tmp/denied)\n",
    );
    fx.build(&[]);
    let layers = fx.added_layers();
    let l = layers.last().unwrap();
    for p in ["tmp/uid", "tmp/gid", "tmp/mine", "tmp/d", "tmp/denied"] {
        let e = entry(l, p);
        assert_eq!(
            (e.uid, e.gid),
            (1000, 1000),
            "{p} owner:\n{}",
            show_layer(l)
        );
    }
    assert_eq!(entry(l, "tmp").uid, 0, "/tmp stays root's");
    assert_eq!(file_text(&fx, "/tmp/uid"), "1000\n");
    assert_eq!(file_text(&fx, "/tmp/gid"), "1000\n");
    assert_eq!(file_text(&fx, "/tmp/denied"), "denied\n");
    assert!(!fx.image().has("/not-allowed"));
    assert_eq!(fx.image().config["config"]["User"], "1000");
}

#[test]
fn user_by_name_from_passwd() {
    if !root_only("user_by_name_from_passwd") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         USER user\n\
         RUN id > /tmp/id && echo \"$HOME\" > /tmp/home\n\
         USER nobody\n\
         RUN id -u > /tmp/nobody\n",
    );
    fx.build(&[]);
    let id = file_text(&fx, "/tmp/id");
    assert!(id.starts_with("uid=1000(user) gid=1000(user)"), "id: {id}");
    assert_eq!(file_text(&fx, "/tmp/home"), "/home/user\n");
    assert_eq!(file_text(&fx, "/tmp/nobody"), "65534\n");
    let tree = fx.image();
    let n = &tree["/tmp/id"];
    assert_eq!((n.uid, n.gid), (1000, 1000));
    let n = &tree["/tmp/nobody"];
    assert_eq!((n.uid, n.gid), (65534, 65534));
}

#[test]
fn unknown_user_is_a_clear_error() {
    if !root_only("unknown_user_is_a_clear_error") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile("FROM busybox\nUSER nosuchuser\nRUN true\n");
    let err = fails(&mut fx.cmd(&[]), 1);
    assert!(err.contains("nosuchuser"), "{err}");
}

#[test]
fn workdir_creates_the_cwd() {
    if !root_only("workdir_creates_the_cwd") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         WORKDIR /w/x\n\
         RUN pwd > /tmp/pwd && touch here\n\
         WORKDIR rel\n\
         RUN pwd > /tmp/pwd2\n\
         USER 1000\n\
         WORKDIR /owned\n\
         RUN touch mine\n",
    );
    fx.build(&[]);
    assert_eq!(file_text(&fx, "/tmp/pwd"), "/w/x\n");
    assert_eq!(file_text(&fx, "/tmp/pwd2"), "/w/x/rel\n");
    let tree = fx.image();
    assert_eq!(tree["/w/x"].kind, Kind::Dir);
    assert_eq!(tree["/w/x/rel"].kind, Kind::Dir);
    assert_eq!(tree["/w/x/here"].kind, Kind::File);
    // As BuildKit: WORKDIR makes the directory as the current USER.
    assert_eq!((tree["/owned"].uid, tree["/owned"].gid), (1000, 1000));
    assert_eq!(tree["/owned/mine"].uid, 1000);
    assert_eq!(fx.image().config["config"]["WorkingDir"], "/owned");
}

#[test]
fn env_and_args_are_visible_and_home_is_set() {
    if !root_only("env_and_args_are_visible_and_home_is_set") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         ARG A1=argval\n\
         ARG A2\n\
         ENV E1=envval E2=\"two words\"\n\
         RUN echo \"A1=$A1 A2=$A2 E1=$E1 E2=$E2 HOME=$HOME\" > /env && echo \"$PATH\" > /path\n",
    );
    fx.build(&["--build-arg", "A2=from-cli"]);
    assert_eq!(
        file_text(&fx, "/env"),
        "A1=argval A2=from-cli E1=envval E2=two words HOME=/root\n"
    );
    assert_eq!(
        file_text(&fx, "/path"),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    let env: Vec<String> = fx.image().config["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(env.contains(&"E1=envval".to_string()), "{env:?}");
    assert!(env.contains(&"E2=two words".to_string()), "{env:?}");
    assert!(
        !env.iter()
            .any(|e| e.starts_with("A1=") || e.starts_with("A2=") || e.starts_with("HOME=")),
        "build args and HOME stay out of the config: {env:?}"
    );
}

#[test]
fn shell_instruction_changes_the_shell() {
    if !root_only("shell_instruction_changes_the_shell") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN printf '#!/bin/sh\\nprintf \"%%s|\" \"$@\" > /shell-args\\n' > /myshell && chmod 755 /myshell\n\
         SHELL [\"/myshell\", \"-z\"]\n\
         RUN hello   world\n\
         SHELL [\"/bin/sh\", \"-xc\"]\n\
         RUN echo traced > /traced\n",
    );
    let progress = fx.build(&[]);
    assert_eq!(file_text(&fx, "/shell-args"), "-z|hello   world|");
    assert_eq!(file_text(&fx, "/traced"), "traced\n");
    assert!(
        progress.contains("+ echo traced"),
        "sh -x trace shown:\n{progress}"
    );
    let history: Vec<String> = fx.image().config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["created_by"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        history
            .iter()
            .any(|h| h.starts_with("RUN /myshell -z hello   world")),
        "{history:?}"
    );
}

#[test]
fn exec_form_runs_without_a_shell() {
    if !root_only("exec_form_runs_without_a_shell") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN [\"/bin/touch\", \"/$HOME-literal\"]\n\
         RUN [\"sh\", \"-c\", \"echo $0:$1 > /exec\", \"zero\", \"one\"]\n",
    );
    fx.build(&[]);
    let tree = fx.image();
    assert!(tree.has("/$HOME-literal"), "no shell expanded $HOME");
    assert_eq!(file_text(&fx, "/exec"), "zero:one\n");
}

#[test]
fn heredoc_runs_plain_and_with_shebang() {
    if !root_only("heredoc_runs_plain_and_with_shebang") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN <<EOT\n\
         set -e\n\
         echo heredoc > /hd\n\
         echo \"$0\" > /hd0\n\
         EOT\n\
         RUN <<EOT\n\
         #!/bin/sh\n\
         echo \"shebang\" > /sb\n\
         echo \"$0\" > /sb0\n\
         EOT\n\
         RUN cat <<EOF > /catted\n\
         from cat $HOME\n\
         EOF\n",
    );
    fx.build(&[]);
    assert_eq!(file_text(&fx, "/hd"), "heredoc\n");
    assert_eq!(file_text(&fx, "/hd0"), "/bin/sh\n");
    assert_eq!(file_text(&fx, "/sb"), "shebang\n");
    let sb0 = file_text(&fx, "/sb0");
    assert!(
        sb0.trim_end().ends_with("EOT"),
        "shebang script run as a file: $0={sb0}"
    );
    assert_eq!(file_text(&fx, "/catted"), "from cat /root\n");
}

// ---------------------------------------------------------------------------
// Failure and cache
// ---------------------------------------------------------------------------

#[test]
fn failing_run_reports_and_keeps_earlier_steps() {
    if !root_only("failing_run_reports_and_keeps_earlier_steps") {
        return;
    }
    let fx = Fx::new();
    let failing = "RUN i=0; while [ $i -lt 30 ]; do echo out-line-$i; i=$((i+1)); done; exit 3";
    fx.dockerfile(&format!(
        "FROM busybox\nRUN echo one > /one\n{failing}\nRUN echo never > /never\n"
    ));
    let out = fx.run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "build fails with 1:\n{stderr}");
    let err = &stderr[stderr.rfind("error:").expect("an error: line")..];
    assert!(
        err.contains("/3] RUN i=0; while [ $i -lt 30 ]"),
        "names the step:\n{err}"
    );
    assert!(err.contains("exit 3\""), "shows the command:\n{err}");
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("out-line-29"), "tail of the output:\n{err}");
    assert!(err.contains("out-line-20"), "tail of the output:\n{err}");
    assert!(!err.contains("out-line-0\n"), "only the tail:\n{err}");
    assert_eq!(step_state(&stderr, "RUN echo one"), "DONE");
    assert!(!stderr.contains("RUN echo never"), "later step not run");
    assert!(
        Layout::new(&fx.root).index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["annotations"][REF_NAME] != TAG),
        "no image tagged after a failure"
    );
    let blobs_after_failure: Vec<String> = files_under(&fx.root.join("blobs/sha256"))
        .iter()
        .map(|p| format!("sha256:{}", p.file_name().unwrap().to_string_lossy()))
        .collect();

    // Fixed: the first RUN is reused, its layer was stored by the failed build.
    fx.dockerfile(&format!(
        "FROM busybox\nRUN echo one > /one\n{}\nRUN echo never > /never\n",
        failing.replace("exit 3", "true")
    ));
    let progress = fx.build(&[]);
    assert_eq!(
        step_state(&progress, "RUN echo one"),
        "CACHED",
        "{progress}"
    );
    assert_eq!(step_state(&progress, "RUN i=0"), "DONE", "{progress}");
    assert_eq!(
        step_state(&progress, "RUN echo never"),
        "DONE",
        "{progress}"
    );
    let digests = image_layer_digests(&fx.root, TAG);
    assert!(
        blobs_after_failure.contains(&digests[1]),
        "the first RUN's layer {} was in the store after the failed build",
        digests[1]
    );
}

#[test]
fn unchanged_rebuild_is_cached() {
    if !root_only("unchanged_rebuild_is_cached") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("d/f"), "f\n");
    fx.dockerfile(
        "FROM busybox AS other\n\
         RUN echo o > /o\n\
         FROM busybox\n\
         RUN echo 1 > /1\n\
         RUN --mount=type=bind,source=d,target=/d cat /d/f > /2\n\
         RUN --mount=type=cache,target=/c echo x >> /c/x && echo 3 > /3\n\
         RUN --mount=type=bind,from=other,source=/o,target=/o cat /o > /4\n\
         RUN --network=none echo 5 > /5\n",
    );
    let first = fx.build(&[]);
    let runs: Vec<_> = plain_steps(&first)
        .into_iter()
        .filter(|(n, _)| n.contains("] RUN "))
        .collect();
    assert_eq!(runs.len(), 6, "{first}");
    assert!(runs.iter().all(|(_, s)| s == "DONE"), "{runs:?}");
    let layers = image_layer_digests(&fx.root, TAG);
    let second = fx.build(&[]);
    let runs: Vec<_> = plain_steps(&second)
        .into_iter()
        .filter(|(n, _)| n.contains("] RUN "))
        .collect();
    assert_eq!(runs.len(), 6, "{second}");
    assert!(
        runs.iter().all(|(_, s)| s == "CACHED"),
        "every RUN is CACHED:\n{second}"
    );
    assert_eq!(image_layer_digests(&fx.root, TAG), layers);
    // --no-cache runs them all again.
    let third = fx.build(&["--no-cache"]);
    assert!(plain_steps(&third)
        .iter()
        .filter(|(n, _)| n.contains("] RUN "))
        .all(|(_, s)| s == "DONE"));
}

#[test]
fn editing_a_bound_context_file_reruns_the_run() {
    if !root_only("editing_a_bound_context_file_reruns_the_run") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("d/f"), "v1\n");
    write_file(&fx.ctx.join("unrelated.txt"), "u1\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN echo before > /before\n\
         RUN --mount=type=bind,source=d,target=/d cat /d/f > /seen\n\
         RUN echo after > /after\n",
    );
    fx.build(&[]);
    assert_eq!(file_text(&fx, "/seen"), "v1\n");
    // A file outside the mount's source: everything stays cached.
    write_file(&fx.ctx.join("unrelated.txt"), "u2\n");
    let p = fx.build(&[]);
    assert_eq!(step_state(&p, "RUN --mount=type=bind"), "CACHED", "{p}");
    // The bound file: that RUN and the ones after it run again.
    write_file(&fx.ctx.join("d/f"), "v2\n");
    let p = fx.build(&[]);
    assert_eq!(step_state(&p, "RUN echo before"), "CACHED", "{p}");
    assert_eq!(step_state(&p, "RUN --mount=type=bind"), "DONE", "{p}");
    assert_eq!(step_state(&p, "RUN echo after"), "DONE", "{p}");
    assert_eq!(file_text(&fx, "/seen"), "v2\n");
}

// ---------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------

#[test]
fn bind_mount_of_the_context_readonly_and_rw() {
    if !root_only("bind_mount_of_the_context_readonly_and_rw") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("d/f"), "ctxfile\n");
    write_file(&fx.ctx.join("d/sub/g"), "g\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN --mount=type=bind,source=d,target=/ctx cat /ctx/f /ctx/sub/g > /ro-read \\\n\
          && (touch /ctx/new 2> /ro-err; echo $? > /ro-rc)\n\
         RUN --mount=type=bind,source=d,target=/ctx,rw echo w > /ctx/written && rm /ctx/f \\\n\
          && cat /ctx/written > /rw-read && ls /ctx > /rw-ls\n\
         RUN --mount=type=bind,target=/whole cat /whole/d/f > /whole-read && ls /whole > /whole-ls\n\
         RUN --mount=type=bind,source=d,target=/ctx cat /ctx/f > /ro-again && ls /ctx > /ro-ls\n",
    );
    fx.build(&[]);
    assert_eq!(file_text(&fx, "/ro-read"), "ctxfile\ng\n");
    assert_ne!(
        file_text(&fx, "/ro-rc"),
        "0\n",
        "read-only bind refused the write"
    );
    assert!(file_text(&fx, "/ro-err").contains("Read-only file system"));
    assert_eq!(file_text(&fx, "/rw-read"), "w\n");
    assert_eq!(file_text(&fx, "/rw-ls"), "sub\nwritten\n");
    assert_eq!(file_text(&fx, "/whole-read"), "ctxfile\n");
    assert_eq!(file_text(&fx, "/whole-ls"), "Dockerfile\nd\n");
    // rw writes were discarded: not in the context, not in the next RUN.
    assert_eq!(file_text(&fx, "/ro-again"), "ctxfile\n");
    assert_eq!(file_text(&fx, "/ro-ls"), "f\nsub\n");
    assert!(
        !fx.ctx.join("d/written").exists(),
        "rw mount wrote to the context"
    );
    assert_eq!(
        std::fs::read_to_string(fx.ctx.join("d/f")).unwrap(),
        "ctxfile\n"
    );
    let tree = fx.image();
    assert!(!tree.has("/ctx") && !tree.has("/whole"));
}

#[test]
fn bind_mount_from_a_stage() {
    if !root_only("bind_mount_from_a_stage") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox AS build\n\
         RUN mkdir /out && echo built > /out/artifact && chown 1000:1000 /out/artifact\n\
         FROM busybox\n\
         RUN --mount=type=bind,from=build,source=/out,target=/o cat /o/artifact > /got \\\n\
          && stat -c '%u:%g' /o/artifact > /got-owner && (touch /o/x 2>/dev/null; echo $? > /o-rc)\n\
         RUN --mount=type=bind,from=build,target=/b,rw echo gone > /b/out/artifact && cat /b/out/artifact > /rw\n\
         RUN --mount=type=bind,from=build,source=/out,target=/o cat /o/artifact > /again\n",
    );
    fx.build(&[]);
    assert_eq!(file_text(&fx, "/got"), "built\n");
    assert_eq!(file_text(&fx, "/got-owner"), "1000:1000\n");
    assert_ne!(file_text(&fx, "/o-rc"), "0\n");
    assert_eq!(file_text(&fx, "/rw"), "gone\n");
    assert_eq!(file_text(&fx, "/again"), "built\n", "rw changes discarded");
    let tree = fx.image();
    assert!(!tree.has("/out"), "the other stage's files stay out");
    assert!(!tree.has("/o") && !tree.has("/b"));
}

#[test]
fn cache_mounts_persist_across_builds() {
    if !root_only("cache_mounts_persist_across_builds") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN --mount=type=cache,target=/c echo first >> /c/log && echo b1 > /b1\n\
         RUN --mount=type=cache,target=/a,id=shared1 echo a >> /a/log\n\
         RUN --mount=type=cache,target=/b,id=shared1,sharing=locked cat /b/log > /shared-seen\n\
         RUN --mount=type=cache,target=/p,id=priv,sharing=private echo p > /p/f\n\
         RUN --mount=type=cache,target=/q,id=other ls -A /q > /other-ls\n\
         RUN --mount=type=cache,target=/m,mode=0700,uid=1000,gid=1000 stat -c '%a %u:%g' /m > /m-stat\n",
    );
    fx.build(&[]);
    assert_eq!(file_text(&fx, "/shared-seen"), "a\n", "same id, same cache");
    assert_eq!(file_text(&fx, "/other-ls"), "", "another id is empty");
    assert_eq!(file_text(&fx, "/m-stat"), "700 1000:1000\n");
    let tree = fx.image();
    for p in ["/c", "/a", "/b", "/p", "/q", "/m"] {
        assert!(!tree.has(p), "cache mount {p} left in the image");
    }
    // A second build with different commands sees what the first left.
    fx.dockerfile(
        "FROM busybox\n\
         RUN --mount=type=cache,target=/elsewhere,id=/c cat /elsewhere/log > /c-seen\n\
         RUN --mount=type=cache,target=/c echo second >> /c/log && cat /c/log > /c-log\n\
         RUN --mount=type=cache,target=/x,id=shared1,sharing=shared cat /x/log > /shared-again\n\
         RUN --mount=type=cache,target=/p,id=priv,sharing=private cat /p/f > /priv-seen\n",
    );
    fx.build(&[]);
    assert_eq!(
        file_text(&fx, "/c-seen"),
        "first\n",
        "a cache mount's id defaults to its target"
    );
    assert_eq!(file_text(&fx, "/c-log"), "first\nsecond\n");
    assert_eq!(file_text(&fx, "/shared-again"), "a\n");
    assert_eq!(file_text(&fx, "/priv-seen"), "p\n");
}

#[test]
fn tmpfs_mount_is_a_tmpfs_and_leaves_nothing() {
    if !root_only("tmpfs_mount_is_a_tmpfs_and_leaves_nothing") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN --mount=type=tmpfs,target=/tt echo t > /tt/x && grep ' /tt ' /proc/mounts > /tt-mount \\\n\
          && cat /tt/x > /tt-read\n\
         RUN ls -A /tt > /tt-after 2>&1 || true\n",
    );
    fx.build(&[]);
    assert!(
        file_text(&fx, "/tt-mount").starts_with("tmpfs /tt tmpfs "),
        "{}",
        file_text(&fx, "/tt-mount")
    );
    assert_eq!(file_text(&fx, "/tt-read"), "t\n");
    assert!(file_text(&fx, "/tt-after").contains("No such file"));
    assert!(!fx.image().has("/tt"));
}

#[test]
fn secret_mounts_as_file_and_env() {
    if !root_only("secret_mounts_as_file_and_env") {
        return;
    }
    let fx = Fx::new();
    let secret = fx.ctx.parent().unwrap().join("secret.txt");
    write_file(&secret, "file-s3cret-value");
    fx.dockerfile(
        "FROM busybox\n\
         RUN --mount=type=secret,id=s1 cat /run/secrets/s1 | wc -c > /s1-len \\\n\
          && stat -c '%a %u:%g' /run/secrets/s1 > /s1-stat \\\n\
          && (echo x > /run/secrets/s1 2>/dev/null; echo $? > /s1-write-rc)\n\
         RUN --mount=type=secret,id=s1,target=/opt/sec,mode=0440,uid=1000,gid=1000 \\\n\
             stat -c '%a %u:%g' /opt/sec > /opt-stat && test \"$(cat /opt/sec)\" = file-s3cret-value && echo same > /opt-same\n\
         RUN --mount=type=secret,id=s2,env=MY_SECRET test \"$MY_SECRET\" = env-s3cret-value && echo ok > /env-ok \\\n\
          && (test -e /run/secrets/s2 && echo file > /s2-file || echo nofile > /s2-file)\n\
         RUN --mount=type=secret,id=s2,env=MY_SECRET,target=/s2 test \"$(cat /s2)\" = \"$MY_SECRET\" && echo both > /both\n\
         RUN --mount=type=secret,id=absent echo optional > /optional\n\
         RUN echo \"${MY_SECRET:-unset}\" > /after\n",
    );
    fx.build_env(
        &[
            &format!("--secret=id=s1,src={}", secret.display()),
            "--secret=id=s2,env=RB_TEST_SECRET",
        ],
        &[("RB_TEST_SECRET", "env-s3cret-value")],
    );
    assert_eq!(file_text(&fx, "/s1-len").trim(), "17");
    assert_eq!(file_text(&fx, "/s1-stat"), "400 0:0\n");
    assert_ne!(file_text(&fx, "/s1-write-rc"), "0\n");
    assert_eq!(file_text(&fx, "/opt-stat"), "440 1000:1000\n");
    assert_eq!(file_text(&fx, "/opt-same"), "same\n");
    assert_eq!(file_text(&fx, "/env-ok"), "ok\n");
    assert_eq!(
        file_text(&fx, "/s2-file"),
        "nofile\n",
        "env= alone mounts no file"
    );
    assert_eq!(file_text(&fx, "/both"), "both\n");
    assert_eq!(file_text(&fx, "/optional"), "optional\n");
    assert_eq!(
        file_text(&fx, "/after"),
        "unset\n",
        "the env var is only in its RUN"
    );
    let tree = fx.image();
    for p in ["/run/secrets", "/run", "/opt/sec", "/opt", "/s2"] {
        assert!(!tree.has(p), "{p} left in the image");
    }
    for l in image_layers(&fx.root, TAG) {
        assert!(
            !contains_bytes(&l, b"s3cret-value"),
            "a secret is in a layer"
        );
    }
}

#[test]
fn missing_required_secret_is_a_clear_error() {
    if !root_only("missing_required_secret_is_a_clear_error") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\nRUN echo first > /first\nRUN --mount=type=secret,id=token,required=true cat /run/secrets/token\n",
    );
    let err = fails(&mut fx.cmd(&[]), 1);
    let last = &err[err.rfind("error:").unwrap()..];
    assert!(
        last.contains("RUN --mount=type=secret,id=token,required=true"),
        "{last}"
    );
    assert!(last.contains("secret token not found"), "{last}");
    assert!(
        last.contains("--secret id=token"),
        "says how to give it: {last}"
    );
    // A missing --secret source file is bad usage.
    let err = fails(
        &mut fx.cmd(&["--secret=id=token,src=/nonexistent/rbuild-secret"]),
        2,
    );
    assert!(err.contains("/nonexistent/rbuild-secret"), "{err}");
}

// ---------------------------------------------------------------------------
// Network
// ---------------------------------------------------------------------------

fn host_interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn network_none_has_only_lo_default_is_the_host_network() {
    if !root_only("network_none_has_only_lo_default_is_the_host_network") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN --network=none ls /sys/class/net > /none && cat /proc/net/dev > /none-dev \\\n\
          && (ip link set lo up 2>/dev/null; ping -c1 -W1 127.0.0.1 > /dev/null 2>&1; echo $? > /none-ping)\n\
         RUN ls /sys/class/net > /default && cat /proc/net/dev > /default-dev\n\
         RUN --network=host ls /sys/class/net > /host\n\
         RUN --network=default hostname > /hostname\n",
    );
    fx.build(&[]);
    assert_eq!(file_text(&fx, "/none"), "lo\n");
    let none_dev = file_text(&fx, "/none-dev");
    let ifaces: Vec<&str> = none_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(
        ifaces,
        ["lo"],
        "/proc/net/dev in --network=none:\n{none_dev}"
    );
    let host = host_interfaces();
    let lines = |s: String| -> Vec<String> { s.lines().map(String::from).collect() };
    assert_eq!(lines(file_text(&fx, "/default")), host);
    assert_eq!(lines(file_text(&fx, "/host")), host);
    assert!(host.len() > 1, "this machine has more than lo: {host:?}");
    assert_eq!(file_text(&fx, "/hostname"), "buildkitsandbox\n");
    // The whole build with --network=none.
    fx.dockerfile("FROM busybox\nRUN ls /sys/class/net > /cli-none\n");
    fx.build(&["--network=none"]);
    assert_eq!(file_text(&fx, "/cli-none"), "lo\n");
}

#[test]
fn special_files_and_metadata_only_changes() {
    if !root_only("special_files_and_metadata_only_changes") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN mkdir /h && echo data > /h/a && ln /h/a /h/b && mkfifo /h/fifo && mknod /h/null c 1 3 \\\n\
          && chmod 4755 /h/a && mkdir /h/sticky && chmod 1777 /h/sticky && chown 100000:200000 /h/sticky\n\
         RUN chmod 700 /home && chmod 640 /etc/passwd && touch -d '2001-01-01 00:00:00' /etc/group\n\
         RUN rm /h/a && mkdir /h/a && rm -rf /h/sticky && echo f > /h/sticky && ln -sf /bin/busybox /bin/vi2\n",
    );
    fx.build(&[]);
    let layers = fx.added_layers();
    let l1 = &layers[0];
    let a = entry(l1, "h/a");
    assert_eq!(
        (a.kind, a.mode, a.data.as_slice()),
        (Kind::File, 0o4755, &b"data\n"[..])
    );
    let b = entry(l1, "h/b");
    assert!(
        b.link.as_deref().map(|l| l.trim_start_matches('/')) == Some("h/a") || b.data == b"data\n",
        "h/b is a hard link to h/a (or a copy): {b:?}"
    );
    assert_eq!(entry(l1, "h/fifo").kind, Kind::Other);
    assert_eq!(entry(l1, "h/null").kind, Kind::Other);
    let st = entry(l1, "h/sticky");
    assert_eq!((st.mode, st.uid, st.gid), (0o1777, 100000, 200000));

    // Metadata-only changes carry the whole file and nothing else.
    let l2 = &layers[1];
    let mut got = paths(l2);
    got.sort();
    assert_eq!(
        got,
        ["etc", "etc/group", "etc/passwd", "home"],
        "{}",
        show_layer(l2)
    );
    let passwd = entry(l2, "etc/passwd");
    assert_eq!(passwd.mode, 0o640);
    assert!(
        passwd.data.starts_with(b"root:x:0:0:"),
        "content copied up with the mode"
    );
    assert_eq!(entry(l2, "home").mode, 0o700);
    assert!(entry(l2, "etc/group").data.starts_with(b"root:x:0:"));
    let raw = image_layers(&fx.root, TAG);
    let mut ar = tar::Archive::new(&raw[2][..]);
    let group_mtime = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_string_lossy().trim_end_matches('/') == "etc/group")
        .map(|e| e.header().mtime().unwrap())
        .unwrap();
    assert_eq!(group_mtime, 978_307_200, "touch -d mtime kept");

    // Replacements.
    let img = fx.image();
    assert_eq!(img["/h/a"].kind, Kind::Dir, "file replaced by a directory");
    assert_eq!(
        img["/h/sticky"].kind,
        Kind::File,
        "directory replaced by a file"
    );
    assert_eq!(
        img.text("/h/b"),
        "data\n",
        "the hard link keeps the content"
    );
    assert_eq!(img["/bin/vi2"].link.as_deref(), Some("/bin/busybox"));
}

#[test]
fn source_date_epoch_makes_run_images_reproducible() {
    if !root_only("source_date_epoch_makes_run_images_reproducible") {
        return;
    }
    let dockerfile = "FROM busybox\n\
                      RUN mkdir -p /d/e && echo x > /d/e/f && rm /etc/group && touch /tmp/t\n\
                      RUN --mount=type=cache,target=/c echo y > /y && date > /c/date\n";
    let mut digests = Vec::new();
    for _ in 0..2 {
        let fx = Fx::new();
        fx.dockerfile(dockerfile);
        fx.build_env(&[], &[("SOURCE_DATE_EPOCH", "1000000000")]);
        let img = fx.image();
        let raw = image_layers(&fx.root, TAG);
        for l in &raw[1..] {
            let mut ar = tar::Archive::new(&l[..]);
            for e in ar.entries().unwrap() {
                let e = e.unwrap();
                assert!(
                    e.header().mtime().unwrap() <= 1_000_000_000,
                    "{} has an mtime after SOURCE_DATE_EPOCH",
                    e.path().unwrap().display()
                );
            }
        }
        assert_eq!(img.config["created"], "2001-09-09T01:46:40Z");
        let (digest, _) = Layout::new(&fx.root).manifest(Some(TAG));
        digests.push(digest);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(digests[0], digests[1], "same inputs, same image digest");
}

#[test]
fn whiteouts_hide_files_from_later_runs() {
    if !root_only("whiteouts_hide_files_from_later_runs") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN mkdir -p /data/gone /opq/inner && echo 1 > /data/del && echo x > /data/gone/x \\\n\
          && echo y > /opq/y && echo z > /opq/inner/z && echo k > /data/keep\n\
         RUN rm /data/del && rm -rf /data/gone && rm -rf /opq && mkdir /opq && echo new > /opq/new && rm /etc/group\n\
         RUN ls -A /data > /ls-data; ls -A /opq > /ls-opq; ls -A /etc > /ls-etc; (ls /data/gone 2>&1 || true) > /ls-gone\n\
         RUN mkdir /data/gone && ls -A /data/gone > /ls-recreated\n",
    );
    fx.build(&[]);
    let img = fx.image();
    assert_eq!(img.text("/ls-data"), "keep\n");
    assert_eq!(img.text("/ls-opq"), "new\n");
    assert!(!img.text("/ls-etc").contains("group"));
    assert!(img.text("/ls-gone").contains("No such file"));
    assert_eq!(
        img.text("/ls-recreated"),
        "",
        "a recreated directory is empty"
    );
}

#[test]
fn interrupt_cancels_the_running_step() {
    if !root_only("interrupt_cancels_the_running_step") {
        return;
    }
    let fx = Fx::new();
    let arg = format!("47.{}", std::process::id());
    fx.dockerfile(&format!(
        "FROM busybox\nRUN echo fast > /fast\nRUN echo start && sleep {arg} && echo end > /end\n"
    ));
    let mut child = std::process::Command::new(rbuild_bin())
        .env("RBUILD_ROOT", &fx.root)
        .args(["build", "--progress=plain"])
        .arg(busybox_flag())
        .args(["-t", TAG])
        .arg(&fx.ctx)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(20.0, || !pids_with_arg(&arg).is_empty()),
        "the RUN never started"
    );
    let started = std::time::Instant::now();
    send_signal(child.id(), "INT");
    let status = wait_child(&mut child, 10.0);
    let elapsed = started.elapsed();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(elapsed.as_secs_f64() < 5.0, "took {elapsed:?} to stop");
    assert!(stderr.contains("cancel"), "{stderr}");
    assert!(
        wait_until(3.0, || pids_with_arg(&arg).is_empty()),
        "the RUN's processes outlived the build: {:?}",
        pids_with_arg(&arg)
    );
    // The step before it stays cached.
    fx.dockerfile("FROM busybox\nRUN echo fast > /fast\nRUN echo done > /done\n");
    let p = fx.build(&[]);
    assert_eq!(step_state(&p, "RUN echo fast"), "CACHED", "{p}");
}

#[test]
fn concurrent_builds_share_a_store_and_locked_caches_take_turns() {
    if !root_only("concurrent_builds_share_a_store_and_locked_caches_take_turns") {
        return;
    }
    let fx = Fx::new();
    let mut children = Vec::new();
    for who in ["a", "b"] {
        let ctx = fx.ctx.join(who);
        write_file(
            &ctx.join("Dockerfile"),
            format!(
                "FROM busybox\n\
                 RUN --mount=type=cache,id=lk,target=/c,sharing=locked \\\n\
                     if [ -e /c/busy ]; then echo overlap > /overlap; fi; touch /c/busy; sleep 0.6; rm /c/busy; \\\n\
                     echo {who} >> /c/log; echo {who} > /who\n\
                 RUN echo {who} > /{who}\n"
            ),
        );
        children.push(
            std::process::Command::new(rbuild_bin())
                .env("RBUILD_ROOT", &fx.root)
                .args(["build", "--progress=plain"])
                .arg(busybox_flag())
                .args(["-t", &format!("{who}:latest")])
                .arg(&ctx)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    let started = std::time::Instant::now();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        started.elapsed().as_secs_f64() >= 1.2,
        "sharing=locked runs one at a time"
    );
    for who in ["a", "b"] {
        let img = StoredImage::load(&fx.root, &format!("{who}:latest"));
        assert_eq!(img.text("/who"), format!("{who}\n"));
        assert_eq!(img.text(&format!("/{who}")), format!("{who}\n"));
        assert!(
            !img.has("/overlap"),
            "{who} ran while the other held the cache"
        );
    }
    // Both wrote to the one cache.
    fx.dockerfile("FROM busybox\nRUN --mount=type=cache,id=lk,target=/c sort /c/log > /log\n");
    fx.build(&[]);
    assert_eq!(fx.image().text("/log"), "a\nb\n");
}

#[test]
fn cache_keys_follow_buildkit() {
    if !root_only("cache_keys_follow_buildkit") {
        return;
    }
    let fx = Fx::new();
    let secret = fx.ctx.parent().unwrap().join("secret.txt");
    write_file(&secret, "one");
    write_file(&fx.ctx.join("ignored.txt"), "ignored\n");
    write_file(&fx.ctx.join(".dockerignore"), "ignored.txt\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN echo pre > /pre\n\
         ARG V=1\n\
         RUN echo after-arg > /after-arg\n\
         RUN --mount=type=secret,id=s cat /run/secrets/s | wc -c > /slen\n\
         USER 1000\n\
         RUN echo as-user > /tmp/as-user\n",
    );
    let sec = format!("--secret=id=s,src={}", secret.display());
    let p = fx.build(&[&sec]);
    assert!(plain_steps(&p)
        .iter()
        .filter(|(n, _)| n.contains("] RUN"))
        .all(|(_, s)| s == "DONE"));
    // A build arg: the steps after its ARG run again.
    let p = fx.build(&[&sec, "--build-arg=V=2"]);
    assert_eq!(step_state(&p, "RUN echo pre"), "CACHED", "{p}");
    assert_eq!(step_state(&p, "RUN echo after-arg"), "DONE", "{p}");
    assert_eq!(step_state(&p, "RUN echo as-user"), "DONE", "{p}");
    // A secret's value is not part of the cache key (as in BuildKit).
    write_file(&secret, "changed");
    let p = fx.build(&[&sec, "--build-arg=V=2"]);
    assert_eq!(step_state(&p, "id=s cat"), "CACHED", "{p}");
    assert_eq!(fx.image().text("/slen").trim(), "3", "the cached result");
    // The network mode is.
    let p = fx.build(&[&sec, "--build-arg=V=2", "--network=none"]);
    assert_eq!(step_state(&p, "RUN echo pre"), "DONE", "{p}");
    // A .dockerignore'd file is not in the context a RUN can bind.
    fx.dockerfile("FROM busybox\nRUN --mount=type=bind,source=ignored.txt,target=/i cat /i\n");
    let err = fails(&mut fx.cmd(&[]), 1);
    assert!(
        err.contains("ignored.txt") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn runs_without_changes_add_no_layer() {
    if !root_only("runs_without_changes_add_no_layer") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\nRUN true\nRUN cat /etc/passwd > /dev/null && ls -la /home > /dev/null\nRUN echo x > /x\n",
    );
    fx.build(&[]);
    let img = fx.image();
    assert_eq!(img.layers.len(), 2, "only `RUN echo x` adds a layer");
    let history: Vec<(String, bool)> = img.config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap().to_string(),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let runs: Vec<&(String, bool)> = history
        .iter()
        .filter(|(c, _)| c.starts_with("RUN "))
        .collect();
    assert_eq!(runs.len(), 3, "{history:?}");
    assert!(
        runs[0].1 && runs[1].1 && !runs[2].1,
        "empty_layer marks: {history:?}"
    );
}

#[test]
fn mounts_over_existing_paths_leave_them_alone() {
    if !root_only("mounts_over_existing_paths_leave_them_alone") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("file.txt"), "over\n");
    write_file(&fx.ctx.join("d/x"), "x\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN --mount=type=bind,source=file.txt,target=/etc/group --mount=type=bind,source=d,target=/home \\\n\
             cat /etc/group > /g && ls /home > /h\n\
         RUN --mount=type=tmpfs,target=/var rm -rf /var/tmp; echo 1 > /one\n\
         RUN --mount=type=cache,target=/root echo c > /root/c && echo 2 > /two\n",
    );
    fx.build(&[]);
    let layers = fx.added_layers();
    let got: Vec<Vec<&str>> = layers.iter().map(|l| paths(l)).collect();
    assert_eq!(got, [vec!["g", "h"], vec!["one"], vec!["two"]]);
    let img = fx.image();
    assert_eq!(img.text("/g"), "over\n");
    assert_eq!(img.text("/h"), "x\n");
    assert!(
        img.text("/etc/group").starts_with("root:x:0:"),
        "the base's file is back"
    );
    assert!(img.has("/home/user") && img.has("/var/tmp") && img.has("/root"));
    assert!(!img.has("/root/c"));
}

/// Create, modify, delete, replace, mount: what the two snapshotters must
/// agree on.
const SNAPSHOTTER_CASE: &str = "FROM busybox\n\
    RUN mkdir -p /data/sub /data/gone/deeper /opq/inner /u && echo one > /data/a && echo del > /data/del \\\n\
     && echo x > /data/gone/x && echo y > /opq/y && echo z > /opq/inner/z && echo base > /data/sub/f \\\n\
     && ln -s a /data/link && chown -R 1000:1000 /u && chmod 600 /data/a\n\
    RUN rm /data/del && rm -rf /data/gone && rm -rf /opq && mkdir /opq && echo new > /opq/new \\\n\
     && echo more >> /data/sub/f && chmod 640 /data/sub/f && chown 1000:100 /data/sub/f \\\n\
     && rm /etc/group && echo extra:x:2000:2000::/:/bin/sh >> /etc/passwd && rmdir /var/tmp \\\n\
     && chmod 700 /home && rm /data/link && ln -s sub /data/link && rm /data/a && mkdir /data/a\n\
    RUN --mount=type=bind,target=/ctx --mount=type=cache,target=/var/cache/x --mount=type=secret,id=s \\\n\
        --mount=type=tmpfs,target=/tmp/t echo m > /m && touch /tmp/keep && touch /tmp/gone && rm /tmp/gone\n\
    RUN rm -rf /data && mkdir /data && echo again > /data/again && mv /u /u2\n\
    RUN touch /opq/new && echo same > /same && chmod 4755 /same && echo same > /same\n";

/// The filesystem after each layer, as comparable lines (no mtimes).
fn fs_after_each_layer(img: &StoredImage) -> Vec<Vec<String>> {
    let mut fs = std::collections::BTreeMap::new();
    let mut out = Vec::new();
    for l in &img.layers {
        apply_entries(&mut fs, l);
        out.push(
            fs.values()
                .map(|e: &LayerEntry| {
                    format!(
                        "{} {} {:o} {}:{} {} {:?}",
                        e.path,
                        e.kind.name(),
                        e.mode,
                        e.uid,
                        e.gid,
                        sha256_hex(&e.data),
                        e.link
                    )
                })
                .collect(),
        );
    }
    out
}

/// The native (copying) snapshotter and overlay give the same filesystem
/// after every RUN. (Their layers may encode it differently: overlay marks
/// a replaced directory opaque where native writes a whiteout per old
/// entry, so the layer digests differ between the two.)
#[test]
fn native_snapshotter_matches_overlay() {
    if !root_only("native_snapshotter_matches_overlay") {
        return;
    }
    let mut results = Vec::new();
    for snapshotter in ["overlay", "native"] {
        let fx = Fx::new();
        let secret = fx.ctx.parent().unwrap().join("secret.txt");
        write_file(&secret, "s");
        write_file(&fx.ctx.join("f"), "f\n");
        fx.dockerfile(SNAPSHOTTER_CASE);
        fx.build_env(
            &[&format!("--secret=id=s,src={}", secret.display())],
            &[
                ("RBUILD_SNAPSHOTTER", snapshotter),
                ("SOURCE_DATE_EPOCH", "1000000000"),
            ],
        );
        results.push(fs_after_each_layer(&fx.image()));
    }
    assert_eq!(results[0].len(), results[1].len(), "layer count");
    for (i, (o, n)) in results[0].iter().zip(&results[1]).enumerate() {
        let only_o: Vec<&String> = o.iter().filter(|l| !n.contains(l)).collect();
        let only_n: Vec<&String> = n.iter().filter(|l| !o.contains(l)).collect();
        assert!(
            only_o.is_empty() && only_n.is_empty(),
            "after layer {i}: overlay only {only_o:#?}\nnative only {only_n:#?}"
        );
    }
}

#[test]
fn native_snapshotter_deletes_special_files() {
    if !root_only("native_snapshotter_deletes_special_files") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN mkdir /data && mkfifo /data/fifo /fifo2 && mknod /data/null c 1 3 && echo a > /data/a\n\
         RUN rm -rf /data /fifo2 && mkdir /data && echo again > /data/again\n",
    );
    fx.build_env(&[], &[("RBUILD_SNAPSHOTTER", "native")]);
    let img = fx.image();
    for gone in ["/data/fifo", "/data/null", "/data/a", "/fifo2"] {
        assert!(
            !img.has(gone),
            "{gone} is back:\n{}",
            show_layer(&img.layers[2])
        );
    }
    assert!(img.has("/data/again"));
}

#[test]
fn hard_links_across_directories() {
    if !root_only("hard_links_across_directories") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN mkdir /aa /zz && echo data > /aa/x && ln /aa/x /zz/x && echo d2 > /zz/y && ln /zz/y /aa/y\n\
         RUN cat /aa/x /zz/x /aa/y /zz/y > /read\n",
    );
    fx.build(&[]);
    let layers = fx.added_layers();
    // Every hard link entry names an entry written before it.
    for (i, e) in layers[0].iter().enumerate() {
        if e.kind == Kind::Other {
            if let Some(t) = &e.link {
                assert!(
                    layers[0][..i].iter().any(|p| &p.path == t),
                    "{} links to {t}, which is not before it:\n{}",
                    e.path,
                    show_layer(&layers[0])
                );
            }
        }
    }
    assert_eq!(fx.image().text("/read"), "data\ndata\nd2\nd2\n");
}

#[test]
fn hard_links_with_the_native_snapshotter() {
    if !root_only("hard_links_with_the_native_snapshotter") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox\n\
         RUN mkdir /h && echo data > /h/a && ln /h/a /h/b && ln /h/a /h/c\n\
         RUN cat /h/a /h/b /h/c > /read\n",
    );
    fx.build_env(&[], &[("RBUILD_SNAPSHOTTER", "native")]);
    assert_eq!(fx.image().text("/read"), "data\ndata\ndata\n");
}
