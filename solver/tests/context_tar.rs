//! Contexts sent as a tar on stdin, including hostile tars.
#![cfg(feature = "exec")]

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rbuild_solver::context::{Context, DockerIgnore, EntryKind, Error, Lookup};

/// One ustar header + data, written by hand so hostile names (which the
/// `tar` crate's builder refuses) can be produced.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8], mode: u32) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
        let s = format!("{v:0width$o}\0", width = len - 1);
        h[off..off + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, mode as u64);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, 1_600_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn good_tar() -> Vec<u8> {
    let mut t = Vec::new();
    raw_entry(&mut t, "./", b'5', "", b"", 0o755);
    raw_entry(
        &mut t,
        "Dockerfile",
        b'0',
        "",
        b"FROM scratch\nCOPY . /\n",
        0o644,
    );
    raw_entry(
        &mut t,
        ".dockerignore",
        b'0',
        "",
        b"*.log\n**/*.log\n",
        0o644,
    );
    raw_entry(&mut t, "app/", b'5', "", b"", 0o750);
    raw_entry(
        &mut t,
        "app/run.sh",
        b'0',
        "",
        b"#!/bin/sh\necho hi\n",
        0o755,
    );
    raw_entry(&mut t, "app/debug.log", b'0', "", b"noise", 0o644);
    raw_entry(&mut t, "app/current", b'2', "run.sh", b"", 0o777);
    raw_entry(&mut t, "app/hard", b'1', "app/run.sh", b"", 0o755);
    raw_entry(&mut t, "deep/er/file", b'0', "", b"implicit parents", 0o600);
    raw_entry(&mut t, "fifo", b'6', "", b"", 0o644);
    finish(t)
}

fn check_good(dest: &Path, tc: rbuild_solver::context::TarContext) {
    assert_eq!(
        tc.dockerfile.as_deref(),
        Some(&b"FROM scratch\nCOPY . /\n"[..])
    );
    assert_eq!(tc.skipped, 1, "the fifo is skipped");
    let c = tc.context;
    // `*.log` alone would not reach app/debug.log: `*` stops at `/`.
    assert_eq!(
        c.ignore().patterns(),
        ["*.log", "**/*.log"],
        ".dockerignore read from the tar"
    );
    let all = c.walk(".").unwrap();
    let p: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        p,
        [
            ".dockerignore",
            "Dockerfile",
            "app",
            "app/current",
            "app/hard",
            "app/run.sh",
            "deep",
            "deep/er",
            "deep/er/file"
        ]
    );
    assert!(matches!(
        c.lookup("app/debug.log").unwrap(),
        Lookup::Excluded(_)
    ));
    let run = all.iter().find(|e| e.path == "app/run.sh").unwrap();
    assert_eq!(run.mode & 0o7777, 0o755);
    assert_eq!(run.mtime, 1_600_000_000);
    assert_eq!(run.nlink, 2, "hard link shares the inode");
    let app = all.iter().find(|e| e.path == "app").unwrap();
    assert_eq!(app.mode & 0o7777, 0o750);
    let cur = all.iter().find(|e| e.path == "app/current").unwrap();
    assert_eq!(
        cur.kind,
        EntryKind::Symlink {
            target: "run.sh".into()
        }
    );
    assert_eq!(
        fs::read(dest.join("deep/er/file")).unwrap(),
        b"implicit parents"
    );
}

#[test]
fn extracts_plain_tar() {
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("ctx");
    let tc = Context::from_tar(
        std::io::Cursor::new(good_tar()),
        &dest,
        None,
        Some("Dockerfile"),
    )
    .unwrap();
    check_good(&dest, tc);
    // The caller's ignore rules win over the tar's `.dockerignore`.
    let dest2 = t.path().join("ctx2");
    let tc = Context::from_tar(
        std::io::Cursor::new(good_tar()),
        &dest2,
        Some(DockerIgnore::parse("app").unwrap()),
        None,
    )
    .unwrap();
    assert!(tc.dockerfile.is_none());
    assert!(!tc
        .context
        .walk(".")
        .unwrap()
        .iter()
        .any(|e| e.path.starts_with("app")));
}

#[test]
fn extracts_gzip_tar() {
    // Real gzip output (dynamic Huffman blocks, several window lengths), if
    // the gzip tool is present; the decoder's own unit tests cover the rest.
    let Ok(mut child) = Command::new("gzip")
        .arg("-c")
        .arg("-6")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
    else {
        eprintln!("gzip not installed; skipping");
        return;
    };
    let mut tar = good_tar();
    // Make it big and repetitive enough to need many blocks and back-references.
    let mut big = Vec::new();
    for i in 0..200_000u32 {
        big.extend_from_slice(format!("line {} {}\n", i, i % 97).as_bytes());
    }
    tar.truncate(tar.len() - 1024);
    raw_entry(&mut tar, "big.txt", b'0', "", &big, 0o644);
    let tar = finish(tar);
    let mut stdin = child.stdin.take().unwrap();
    let input = tar.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let gz = child.wait_with_output().unwrap().stdout;
    writer.join().unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b]);
    let t = tempfile::tempdir().unwrap();
    let dest = t.path().join("ctx");
    let tc = Context::from_tar(
        std::io::Cursor::new(gz.clone()),
        &dest,
        None,
        Some("Dockerfile"),
    )
    .unwrap();
    assert_eq!(fs::read(dest.join("big.txt")).unwrap(), big);
    // Corruption is detected, not silently extracted.
    let mut bad = gz.clone();
    let n = bad.len();
    bad[n - 8] ^= 0xff;
    let t2 = tempfile::tempdir().unwrap();
    assert!(Context::from_tar(
        std::io::Cursor::new(bad.clone()),
        &t2.path().join("x"),
        None,
        None
    )
    .is_err());
    drop(tc);
}

#[test]
fn refuses_hostile_tars() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("victim"), b"original").unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", {
            let mut v = Vec::new();
            raw_entry(&mut v, "../outside/victim", b'0', "", b"pwned", 0o644);
            finish(v)
        }),
        ("absolute", {
            let mut v = Vec::new();
            raw_entry(
                &mut v,
                &format!("{}/victim", outside.display()),
                b'0',
                "",
                b"pwned",
                0o644,
            );
            finish(v)
        }),
        ("write through symlink dir", {
            let mut v = Vec::new();
            raw_entry(
                &mut v,
                "link",
                b'2',
                &outside.display().to_string(),
                b"",
                0o777,
            );
            raw_entry(&mut v, "link/victim", b'0', "", b"pwned", 0o644);
            finish(v)
        }),
        ("dir through relative symlink", {
            let mut v = Vec::new();
            raw_entry(&mut v, "up", b'2', "../outside", b"", 0o777);
            raw_entry(&mut v, "up/newdir/", b'5', "", b"", 0o755);
            finish(v)
        }),
        ("hardlink outside", {
            let mut v = Vec::new();
            raw_entry(&mut v, "h", b'1', "../outside/victim", b"", 0o644);
            finish(v)
        }),
    ];
    for (what, tar) in cases {
        let dest = t.path().join(format!("dest-{}", what.replace(' ', "-")));
        let err =
            Context::from_tar(std::io::Cursor::new(tar.clone()), &dest, None, None).unwrap_err();
        assert!(matches!(err, Error::HostileTar { .. }), "{what}: {err}");
        assert!(
            err.to_string().starts_with("refusing tar entry"),
            "{what}: {err}"
        );
        assert_eq!(
            fs::read(outside.join("victim")).unwrap(),
            b"original",
            "{what}"
        );
        assert!(!outside.join("newdir").exists(), "{what}");
    }

    // A symlink entry followed by a regular file of the same name replaces
    // the link instead of writing through it.
    let mut v = Vec::new();
    raw_entry(
        &mut v,
        "f",
        b'2',
        &outside.join("victim").display().to_string(),
        b"",
        0o777,
    );
    raw_entry(&mut v, "f", b'0', "", b"replaced", 0o644);
    let dest = t.path().join("dest-replace");
    let tc = Context::from_tar(std::io::Cursor::new(finish(v)), &dest, None, None).unwrap();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"replaced");
    assert_eq!(
        fs::symlink_metadata(dest.join("f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    drop(tc);

    // Something that is not a tar is refused.
    let err = Context::from_tar(
        std::io::Cursor::new(b"BZh91AY&SY".to_vec()),
        &t.path().join("bz"),
        None,
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains("not a tar archive"), "{err}");
}
