//! Hostile inputs: base images whose layers try to write outside their
//! root, COPY sources outside the context, context symlinks pointing out,
//! and corrupted blobs. Each must be refused with a clear error, and
//! nothing may be written outside the store and the outputs: every test
//! runs in a sandbox directory whose other contents (a sentinel tree) are
//! compared before and after, and the unique marker names the hostile
//! entries use are looked for in every ancestor directory and in /tmp.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use serde_json::json;

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Sandbox {
    tmp: tempfile::TempDir,
    /// Unique name the hostile entries write.
    marker: String,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let marker = format!(
            "rbuild-hostile-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let s = Sandbox { tmp, marker };
        // A sentinel tree that must stay as it is.
        write_file(&s.path("sentinel/keep.txt"), "keep\n");
        write_file(&s.path("sentinel/deep/er/file"), "deep\n");
        symlink("../keep.txt", &s.path("sentinel/deep/link"));
        std::fs::create_dir_all(s.path("w/x/y/z")).unwrap();
        s
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// The store and outputs live deep down so that `..` climbs land in
    /// directories this test watches.
    fn store(&self) -> PathBuf {
        self.path("w/x/y/z/store")
    }

    fn out(&self) -> PathBuf {
        self.path("w/x/y/z/out")
    }

    /// Everything in the sandbox except the store and the outputs.
    fn outside(&self) -> Tree {
        let store = self.store();
        let out = self.out();
        let skip = |p: &str| {
            let full = self.tmp.path().join(&p[1..]);
            full.starts_with(&store) || full.starts_with(&out)
        };
        dir_tree(self.tmp.path())
            .into_iter()
            .filter(|(p, _)| !skip(p))
            .map(|(p, mut n)| {
                // Reading a directory is fine; its listing is what counts.
                if n.kind == Kind::Dir {
                    n.mtime = 0;
                }
                (p, n)
            })
            .collect()
    }

    /// Runs a hostile build, asserting it fails (exit 1), that stderr says
    /// each of `says`, and that nothing changed outside the store/outputs.
    fn refused(&self, cmd: &mut assert_cmd::Command, says: &[&str]) -> String {
        let before = self.outside();
        let stderr = fails(cmd, 1);
        for s in says {
            assert!(
                stderr.to_lowercase().contains(&s.to_lowercase()),
                "the error must say {s:?}; stderr:\n{stderr}"
            );
        }
        self.assert_untouched(&before);
        eprintln!("refused as expected:\n{stderr}");
        stderr
    }

    fn assert_untouched(&self, before: &Tree) {
        let after = self.outside();
        let diffs = diff_trees(
            "before",
            before,
            "after",
            &after,
            Compare {
                modes: true,
                owners: true,
                file_mtimes: true,
            },
        );
        assert!(
            diffs.is_empty(),
            "the build changed files outside the store and outputs:\n{}",
            diffs.join("\n")
        );
        self.assert_marker_nowhere();
    }

    /// The marker is in no ancestor of the store, not in /tmp, not in /etc.
    fn assert_marker_nowhere(&self) {
        let mut dirs: Vec<PathBuf> = self.store().ancestors().map(Path::to_path_buf).collect();
        dirs.push(PathBuf::from("/tmp"));
        dirs.push(PathBuf::from("/etc"));
        dirs.push(std::env::temp_dir());
        for d in dirs {
            for p in [d.join(&self.marker), d.join("tmp").join(&self.marker)] {
                if std::fs::symlink_metadata(&p).is_ok() {
                    let _ = std::fs::remove_file(&p);
                    panic!("a hostile entry escaped to {}", p.display());
                }
            }
        }
    }

    /// No blob of the store and no output file holds `needle`.
    fn assert_secret_unread(&self, needle: &str) {
        for dir in [self.store(), self.out()] {
            if !dir.exists() {
                continue;
            }
            for (p, n) in dir_tree(&dir) {
                if n.kind == Kind::File {
                    let data = std::fs::read(dir.join(&p[1..])).unwrap();
                    let found = data.windows(needle.len()).any(|w| w == needle.as_bytes());
                    assert!(!found, "{}{p} holds the secret", dir.display());
                }
            }
        }
    }

    /// A build of `dockerfile` in `ctx` with `base` as an oci-layout context.
    fn build_from_layout(&self, layout: &Path, dockerfile: &str) -> assert_cmd::Command {
        let ctx = self.path("ctx");
        write_file(&ctx.join("Dockerfile"), dockerfile);
        write_file(&ctx.join("a.txt"), "a\n");
        let mut cmd = build(&self.store());
        cmd.args(["-t", "hostile:1", "-o"])
            .arg(format!("type=local,dest={}", self.out().display()))
            .arg(format!(
                "--build-context=base=oci-layout://{}:latest",
                layout.display()
            ))
            .arg(&ctx);
        cmd
    }

    fn hostile_layout(&self, entries: &[TarEntry]) -> PathBuf {
        let layout = self.path("layout");
        let good = make_tar(&[
            TarEntry::dir("etc/", 0o755),
            TarEntry::file("etc/hostname", b"base\n", 0o644),
        ]);
        write_layout(
            &layout,
            "latest",
            &[good, make_tar(entries)],
            json!({"config": {}}),
        );
        layout
    }
}

const FROM_BASE: &str = "FROM base\nLABEL hostile=1\nCOPY a.txt /a.txt\n";

#[test]
fn base_layer_with_dotdot_entry() {
    let s = Sandbox::new();
    let m = s.marker.clone();
    let layout = s.hostile_layout(&[
        TarEntry::file(&format!("../{m}"), b"escaped\n", 0o644),
        TarEntry::file(
            &format!("../../../../../../../../../../../../tmp/{m}"),
            b"x\n",
            0o644,
        ),
    ]);
    s.refused(&mut s.build_from_layout(&layout, FROM_BASE), &[".."]);
    assert!(!s.out().join("a.txt").exists());
}

#[test]
fn base_layer_with_absolute_entry() {
    let s = Sandbox::new();
    let m = s.marker.clone();
    let layout = s.hostile_layout(&[
        TarEntry::file(&format!("/etc/{m}"), b"absolute\n", 0o644),
        TarEntry::file(&format!("/tmp/{m}"), b"absolute\n", 0o644),
    ]);
    s.refused(
        &mut s.build_from_layout(&layout, FROM_BASE),
        &[&format!("/etc/{m}")],
    );
}

#[test]
fn base_layer_with_symlink_then_file_escape() {
    let s = Sandbox::new();
    let m = s.marker.clone();
    // evil -> ../../.. then evil/tmp/<marker>, as in the classic attack.
    let layout = s.hostile_layout(&[
        TarEntry::symlink("evil", "../../.."),
        TarEntry::file(&format!("evil/tmp/{m}"), b"pwned\n", 0o644),
    ]);
    s.refused(&mut s.build_from_layout(&layout, FROM_BASE), &["evil"]);

    // The same through a link that climbs all the way up.
    let s = Sandbox::new();
    let m = s.marker.clone();
    let layout = s.hostile_layout(&[
        TarEntry::dir("d/", 0o755),
        TarEntry::symlink("d/up", "../../../../../../../../../../../../../../.."),
        TarEntry::file(&format!("d/up/tmp/{m}"), b"pwned\n", 0o644),
    ]);
    s.refused(&mut s.build_from_layout(&layout, FROM_BASE), &["d/up"]);

    // An absolute link: refusing it is fine, and so is resolving it inside
    // the image root as containerd does (/tmp/<marker> in the image), but
    // never on the host.
    let s = Sandbox::new();
    let m = s.marker.clone();
    let layout = s.hostile_layout(&[
        TarEntry::dir("d/", 0o755),
        TarEntry::symlink("d/up", "/"),
        TarEntry::file(&format!("d/up/tmp/{m}"), b"pwned\n", 0o644),
    ]);
    let mut cmd = s.build_from_layout(&layout, FROM_BASE);
    let before = s.outside();
    let out = run(&mut cmd);
    s.assert_untouched(&before);
    if out.status.success() {
        let file = s.out().join("tmp").join(&m);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"pwned\n",
            "{}",
            file.display()
        );
        assert_eq!(
            std::fs::read_link(s.out().join("d/up")).unwrap(),
            Path::new("/")
        );
    } else {
        assert_eq!(out.status.code(), Some(1));
    }
}

#[test]
fn base_layer_with_hardlink_out_of_the_root() {
    for target in [
        "../../../../../../../../../../etc/hostname",
        "/etc/hostname",
    ] {
        let s = Sandbox::new();
        let secret = s.path("sentinel/keep.txt");
        let layout = s.hostile_layout(&[TarEntry::hardlink("stolen", target)]);
        let mut cmd = s.build_from_layout(&layout, FROM_BASE);
        let before = s.outside();
        let out = run(&mut cmd);
        eprintln!(
            "hardlink to {target}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            // Accepted only if the link was resolved inside the image root
            // (to the base's own /etc/hostname), never to a host file.
            let image = Layout::new(s.store()).tree(Some("hostile:1"));
            let stolen = image.get("/stolen").expect("/stolen in the image");
            assert_eq!(
                stolen.sha256.as_deref(),
                Some(sha256_hex(b"base\n").as_str()),
                "hardlink {target} took a host file's content"
            );
        } else {
            assert_eq!(out.status.code(), Some(1));
        }
        s.assert_untouched(&before);
        s.assert_secret_unread(&std::fs::read_to_string(secret).unwrap());
        let host = std::fs::read("/etc/hostname").unwrap_or_default();
        if host.len() > 3 && host != b"base\n" {
            s.assert_secret_unread(&String::from_utf8_lossy(&host));
        }
    }
}

#[test]
fn copy_from_outside_the_context() {
    let s = Sandbox::new();
    let secret = format!("TOPSECRET-{}", s.marker);
    write_file(&s.path("x"), &secret);
    write_file(&s.path("ctx/sub/keep.txt"), "keep\n");
    for (n, line) in [
        "COPY ../x /x",
        "ADD ../x /x",
        "COPY sub/../../x /x",
        "COPY keep.txt ../x /d/",
    ]
    .iter()
    .enumerate()
    {
        write_file(&s.path("ctx/keep.txt"), "k\n");
        let df = s.path(&format!("Dockerfile.{n}"));
        write_file(&df, format!("FROM scratch\n{line}\n"));
        let mut cmd = build(&s.store());
        cmd.args(["-t", "outside:1", "-f"])
            .arg(&df)
            .arg("-o")
            .arg(format!("type=local,dest={}", s.out().display()))
            .arg(s.path("ctx"));
        s.refused(&mut cmd, &["forbidden path outside the build context"]);
        s.assert_secret_unread(&secret);
    }
}

#[test]
fn context_symlinks_pointing_outside_are_never_followed() {
    let s = Sandbox::new();
    let secret = format!("TOPSECRET-{}", s.marker);
    write_file(&s.path("secret.txt"), &secret);
    let ctx = s.path("ctx");
    write_file(&ctx.join("a.txt"), "a\n");
    symlink("../secret.txt", &ctx.join("rel"));
    symlink(s.path("secret.txt").to_str().unwrap(), &ctx.join("abs"));
    symlink("..", &ctx.join("parent"));
    write_file(&ctx.join("Dockerfile"), "FROM scratch\nCOPY . /c/\n");
    let before = s.outside();
    ok(build(&s.store())
        .args(["-t", "links:1", "-o"])
        .arg(format!("type=local,dest={}", s.out().display()))
        .arg(&ctx));
    s.assert_untouched(&before);
    s.assert_secret_unread(&secret);
    let image = Layout::new(s.store()).tree(Some("links:1"));
    assert_eq!(image["/c/rel"].target.as_deref(), Some("../secret.txt"));
    assert_eq!(
        image["/c/abs"].target.as_deref(),
        s.path("secret.txt").to_str()
    );
    assert_eq!(image["/c/parent"].target.as_deref(), Some(".."));
    assert_eq!(image["/c/rel"].kind, Kind::Symlink);

    // As a source, a link is resolved inside the context: there is no
    // /secret.txt in it, so each of these fails, without reading the file.
    for src in ["rel", "abs", "parent/secret.txt"] {
        write_file(
            &ctx.join("Dockerfile"),
            format!("FROM scratch\nCOPY {src} /x\n"),
        );
        let _ = std::fs::remove_dir_all(s.out());
        s.refused(
            build(&s.store())
                .args(["-t", "links:2", "-o"])
                .arg(format!("type=local,dest={}", s.out().display()))
                .arg(&ctx),
            &["not found"],
        );
        s.assert_secret_unread(&secret);
    }
}

/// Flips one byte of `needle` inside the blob file at `path`.
fn corrupt(path: &Path, needle: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the content to corrupt is in the blob");
    data[at] ^= 0x20;
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    std::fs::write(path, data).unwrap();
}

fn layer_blob_holding(layout: &Layout, tag: &str, needle: &[u8]) -> PathBuf {
    let (_, m) = layout.manifest(Some(tag));
    for l in m["layers"].as_array().unwrap() {
        let p = layout.blob_path(l["digest"].as_str().unwrap());
        let data = std::fs::read(&p).unwrap();
        if data.windows(needle.len()).any(|w| w == needle) {
            return p;
        }
    }
    panic!("no layer of {tag} holds {needle:?}");
}

#[test]
fn corrupted_layer_blob_in_the_store() {
    let s = Sandbox::new();
    let ctx = s.path("ctx");
    write_file(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY data.txt /data.txt\n",
    );
    write_file(&ctx.join("data.txt"), "precious base data\n");
    ok(build(&s.store()).args(["-t", "base:1"]).arg(&ctx));
    let store = Layout::new(s.store());
    let blob = layer_blob_holding(&store, "base:1", b"precious base data");
    corrupt(&blob, b"precious");

    let child = s.path("child");
    write_file(
        &child.join("Dockerfile"),
        "FROM base:1\nCOPY b.txt /b.txt\n",
    );
    write_file(&child.join("b.txt"), "b\n");
    let mut cmd = build(&s.store());
    cmd.args(["-t", "child:1", "-o"])
        .arg(format!(
            "type=oci,dest={}",
            s.out().join("child.tar").display()
        ))
        .arg(&child);
    s.refused(&mut cmd, &["corrupt"]);
}

#[test]
fn corrupted_layer_blob_in_the_store_is_caught_before_tagging() {
    let s = Sandbox::new();
    let ctx = s.path("ctx");
    write_file(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY data.txt /data.txt\n",
    );
    write_file(&ctx.join("data.txt"), "precious base data\n");
    ok(build(&s.store()).args(["-t", "base:1"]).arg(&ctx));
    let store = Layout::new(s.store());
    let blob = layer_blob_holding(&store, "base:1", b"precious base data");
    corrupt(&blob, b"precious");
    let child = s.path("child");
    write_file(
        &child.join("Dockerfile"),
        "FROM base:1\nCOPY b.txt /b.txt\n",
    );
    write_file(&child.join("b.txt"), "b\n");
    // Only the store as output: the build must still notice the corrupt
    // base layer rather than tag an image whose layer does not verify.
    s.refused(
        build(&s.store()).args(["-t", "child:1"]).arg(&child),
        &["corrupt"],
    );
}

#[test]
fn corrupted_layer_blob_in_the_store_without_snapshots() {
    let s = Sandbox::new();
    let ctx = s.path("ctx");
    write_file(
        &ctx.join("Dockerfile"),
        "FROM scratch\nCOPY data.txt /data.txt\n",
    );
    write_file(&ctx.join("data.txt"), "precious base data\n");
    ok(build(&s.store()).args(["-t", "base:1"]).arg(&ctx));
    let store = Layout::new(s.store());
    let blob = layer_blob_holding(&store, "base:1", b"precious base data");
    corrupt(&blob, b"precious");
    // Without unpacked snapshots the base must be read from its blob.
    let _ = std::fs::remove_dir_all(s.store().join("snapshots"));
    let child = s.path("child");
    write_file(
        &child.join("Dockerfile"),
        "FROM base:1\nCOPY b.txt /b.txt\n",
    );
    write_file(&child.join("b.txt"), "b\n");
    s.refused(
        build(&s.store())
            .args(["-t", "child:1", "-o"])
            .arg(format!("type=local,dest={}", s.out().display()))
            .arg(&child),
        &["corrupt"],
    );
    assert!(!s.out().join("data.txt").exists());
}

#[test]
fn corrupted_blobs_in_an_oci_layout_context() {
    // A layer blob with one byte flipped.
    let s = Sandbox::new();
    let layout = s.path("layout");
    write_layout(
        &layout,
        "latest",
        &[make_tar(&[TarEntry::file(
            "data.txt",
            b"precious layout data\n",
            0o644,
        )])],
        json!({"config": {"Env": ["A=1"]}}),
    );
    let l = Layout::new(&layout);
    let blob = layer_blob_holding(&l, "latest", b"precious layout data");
    corrupt(&blob, b"precious");
    s.refused(&mut s.build_from_layout(&layout, FROM_BASE), &["corrupt"]);
    assert!(!s.out().join("data.txt").exists());

    // A config blob with one byte flipped.
    let s = Sandbox::new();
    let layout = s.path("layout");
    write_layout(
        &layout,
        "latest",
        &[make_tar(&[TarEntry::file("data.txt", b"data\n", 0o644)])],
        json!({"config": {"Env": ["SECRET=abcdef"]}}),
    );
    let l = Layout::new(&layout);
    let (_, m) = l.manifest(Some("latest"));
    corrupt(
        &l.blob_path(m["config"]["digest"].as_str().unwrap()),
        b"abcdef",
    );
    s.refused(&mut s.build_from_layout(&layout, FROM_BASE), &["corrupt"]);

    // A layer blob that is missing.
    let s = Sandbox::new();
    let layout = s.path("layout");
    write_layout(
        &layout,
        "latest",
        &[make_tar(&[TarEntry::file("data.txt", b"data\n", 0o644)])],
        json!({"config": {}}),
    );
    let l = Layout::new(&layout);
    let (_, m) = l.manifest(Some("latest"));
    std::fs::remove_file(l.blob_path(m["layers"][0]["digest"].as_str().unwrap())).unwrap();
    s.refused(&mut s.build_from_layout(&layout, FROM_BASE), &["missing"]);
}
