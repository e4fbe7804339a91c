//! Walking, lookups, COPY wildcards and path safety of build contexts.
#![cfg(feature = "exec")]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use rbuild_solver::context::{Context, DockerIgnore, EntryKind, Error, Lookup};

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn ctx(root: &Path, ignore: &str) -> Context {
    Context::open(root, DockerIgnore::parse(ignore).unwrap()).unwrap()
}

fn paths(entries: &[rbuild_solver::context::Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "Dockerfile", "FROM scratch\n");
    write(r, "a-b", "x");
    write(r, "a/c", "x");
    write(r, "a/d/e.txt", "x");
    write(r, "keep/one", "1");
    write(r, "keep/sub/two", "2");
    write(r, "node_modules/pkg/index.js", "x");
    write(r, "logs/app.log", "x");
    write(r, "logs/keep.log", "x");
    write(r, "src/main.rs", "x");
    write(r, "src/lib.rs", "x");
    write(r, "src/nested/mod.rs", "x");
    t
}

#[test]
fn walk_is_sorted_parents_first() {
    let t = tree();
    let c = ctx(t.path(), "");
    let all = c.walk(".").unwrap();
    // Byte order per directory, depth first: `a/...` before `a-b` even though
    // '-' < '/' in plain string order.
    assert_eq!(
        paths(&all),
        [
            "Dockerfile",
            "a",
            "a/c",
            "a/d",
            "a/d/e.txt",
            "a-b",
            "keep",
            "keep/one",
            "keep/sub",
            "keep/sub/two",
            "logs",
            "logs/app.log",
            "logs/keep.log",
            "node_modules",
            "node_modules/pkg",
            "node_modules/pkg/index.js",
            "src",
            "src/lib.rs",
            "src/main.rs",
            "src/nested",
            "src/nested/mod.rs",
        ]
    );
    assert_eq!(
        paths(&c.walk("src").unwrap()),
        [
            "src/lib.rs",
            "src/main.rs",
            "src/nested",
            "src/nested/mod.rs"
        ]
    );
    let e = all.iter().find(|e| e.path == "a/c").unwrap();
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.size, 1);
    assert_eq!(e.mode & 0o170000, 0o100000);
}

#[test]
fn exclusions_and_reinclusions() {
    let t = tree();
    // Everything out, then `keep/**` back: `keep` itself is excluded by `*`
    // but is still sent because entries under it are re-included.
    let c = ctx(t.path(), "*\n!keep/**\n");
    assert_eq!(
        paths(&c.walk(".").unwrap()),
        ["keep", "keep/one", "keep/sub", "keep/sub/two"]
    );

    // An excluded directory containing one re-included file.
    let c = ctx(t.path(), "logs\n!logs/keep.log\nnode_modules\n");
    let all = c.walk(".").unwrap();
    let p = paths(&all);
    assert!(p.contains(&"logs") && p.contains(&"logs/keep.log"), "{p:?}");
    assert!(
        !p.contains(&"logs/app.log") && !p.iter().any(|x| x.starts_with("node_modules")),
        "{p:?}"
    );

    // Wildcard exception: BuildKit walks into every excluded dir.
    let c = ctx(t.path(), "*\n!**/*.rs\n");
    assert_eq!(
        paths(&c.walk(".").unwrap()),
        [
            "src",
            "src/lib.rs",
            "src/main.rs",
            "src/nested",
            "src/nested/mod.rs"
        ]
    );

    // Lookups tell "excluded" from "missing".
    let c = ctx(t.path(), "logs\n!logs/keep.log\nDockerfile\n");
    assert!(matches!(
        c.lookup("logs/app.log").unwrap(),
        Lookup::Excluded(_)
    ));
    assert!(matches!(
        c.lookup("logs/keep.log").unwrap(),
        Lookup::Found(_)
    ));
    assert!(matches!(c.lookup("logs").unwrap(), Lookup::Found(_)));
    assert!(matches!(
        c.lookup("Dockerfile").unwrap(),
        Lookup::Excluded(_)
    ));
    assert_eq!(c.lookup("nope").unwrap(), Lookup::Missing);
    // ... while the Dockerfile itself stays readable for the frontend.
    assert_eq!(c.read_file("Dockerfile").unwrap(), b"FROM scratch\n");
    let msg = Error::NotFound {
        path: "Dockerfile".into(),
        excluded: true,
    }
    .to_string();
    assert!(msg.contains("excluded by .dockerignore"), "{msg}");
}

#[test]
fn glob_uses_filepath_match_per_component() {
    let t = tree();
    let c = ctx(t.path(), "logs/app.log");
    let g = |p: &str| {
        c.glob(p)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect::<Vec<_>>()
    };
    assert_eq!(g("src/*.rs"), ["src/lib.rs", "src/main.rs"]);
    assert_eq!(g("src/*"), ["src/lib.rs", "src/main.rs", "src/nested"]);
    // `*` does not cross `/`; there is no `**`.
    assert_eq!(g("*.rs"), Vec::<String>::new());
    assert_eq!(g("**/*.rs"), ["src/lib.rs", "src/main.rs"]);
    assert_eq!(g("*/*/*.rs"), ["src/nested/mod.rs"]);
    assert_eq!(g("src/[lm]*.rs"), ["src/lib.rs", "src/main.rs"]);
    assert_eq!(g("src/?ib.rs"), ["src/lib.rs"]);
    // A matched directory is returned once, not its contents.
    assert_eq!(g("ke*"), ["keep"]);
    assert_eq!(g("a*"), ["a", "a-b"]);
    // Excluded files never match.
    assert_eq!(g("logs/*.log"), ["logs/keep.log"]);
    // No wildcard: a plain lookup.
    assert_eq!(g("src/main.rs"), ["src/main.rs"]);
    assert_eq!(g("missing/*"), Vec::<String>::new());
    assert!(matches!(
        c.glob("src/[").unwrap_err(),
        Error::BadWildcard { .. }
    ));
}

#[test]
fn dotdot_cannot_leave_the_context() {
    let t = tree();
    let c = ctx(t.path(), "");
    for bad in ["../x", "a/../../x", "..", "src/../../../etc/passwd"] {
        let err = c.lookup(bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("forbidden path outside the build context: {bad}")
        );
        assert!(c.walk(bad).is_err());
        assert!(c.glob(bad).is_err());
        assert!(c.resolve_scoped(bad).is_err());
    }
    // `..` that stays inside is fine, and a leading `/` is the root.
    assert!(matches!(c.lookup("src/../a/c").unwrap(), Lookup::Found(_)));
    assert!(matches!(c.lookup("/a/c").unwrap(), Lookup::Found(_)));
}

#[test]
fn symlinks_are_listed_never_followed_and_resolve_scoped_clamps() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", "s");
    let t = tree();
    let r = t.path();
    symlink(outside.path(), r.join("out")).unwrap();
    symlink("/etc", r.join("abs")).unwrap();
    symlink("../../..", r.join("src/up")).unwrap();
    symlink("a", r.join("toa")).unwrap();
    symlink("loop2", r.join("loop1")).unwrap();
    symlink("loop1", r.join("loop2")).unwrap();
    let c = ctx(r, "");
    let all = c.walk(".").unwrap();
    let out = all.iter().find(|e| e.path == "out").unwrap();
    assert_eq!(
        out.kind,
        EntryKind::Symlink {
            target: outside.path().display().to_string()
        }
    );
    assert!(
        !all.iter().any(|e| e.path.starts_with("out/")),
        "walked through a symlink"
    );
    // Lookups do not pass through symlinked directories either.
    assert_eq!(c.lookup("out/secret").unwrap(), Lookup::Missing);
    assert_eq!(c.lookup("toa/c").unwrap(), Lookup::Missing);
    assert!(matches!(
        c.walk("out").unwrap_err(),
        Error::NotADirectory { .. }
    ));

    // Scoped resolution: absolute targets are relative to the root, `..`
    // stops at the root.
    assert_eq!(c.resolve_scoped("toa/c").unwrap(), "a/c");
    assert_eq!(c.resolve_scoped("abs/passwd").unwrap(), "etc/passwd");
    assert_eq!(c.resolve_scoped("src/up").unwrap(), ".");
    assert_eq!(c.resolve_scoped("src/up/a/c").unwrap(), "a/c");
    assert_eq!(c.resolve_scoped("toa/../Dockerfile").unwrap(), "Dockerfile");
    assert!(matches!(
        c.resolve_scoped("loop1").unwrap_err(),
        Error::TooManyLinks { .. }
    ));
    // The outside dir's absolute path re-rooted inside the context: absent.
    let resolved = c.resolve_scoped("out/secret").unwrap();
    assert!(
        matches!(c.lookup(&resolved).unwrap(), Lookup::Missing),
        "{resolved}"
    );
    // glob follows symlinks in the fixed prefix, scoped.
    let g: Vec<String> = c
        .glob("toa/*")
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(g, ["a/c", "a/d"]);
    // read_file resolves within the root and cannot read outside.
    assert!(c.read_file("out/secret").is_err());
}
