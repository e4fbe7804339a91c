//! Layers end to end, on real files and real tars: writing, applying,
//! re-encoding, verifying, snapshots, and hostile input.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rbuild_cache::layer::{
    apply_layer, open_layer, recompress_layer, snapshot, snapshot_dir, snapshot_info,
    sniff_archive, write_layer, ApplyOptions, Compression, DeviceKind, EntryMeta, LayerDescriptor,
    OverlayXattr, TarWriter, Whiteouts,
};
use rbuild_cache::store::media;
use rbuild_cache::{Digest, Error, Store};

const ALL: [Compression; 3] = [
    Compression::None,
    Compression::GZIP_DEFAULT,
    Compression::ZSTD_DEFAULT,
];

fn meta(mode: u32, uid: u32, gid: u32, mtime: i64) -> EntryMeta {
    EntryMeta {
        mode,
        uid,
        gid,
        mtime,
        ..EntryMeta::default()
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

fn lget(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn long_name() -> String {
    format!("deep/{}/{}", "d".repeat(120), "f".repeat(110))
}

/// A layer with one of every kind of entry.
fn rich_layer(t: &mut TarWriter<impl Write>) -> std::io::Result<()> {
    let mut d = meta(0o755, 0, 0, 1_600_000_000);
    d.mtime_nsec = 123_456_789;
    t.dir("bin", &meta(0o755, 0, 0, 1_600_000_001))?;
    let content = b"#!/bin/sh\necho hello\n";
    let mut suid = meta(0o4755, 0, 0, 1_600_000_002);
    suid.mtime_nsec = 500_000_000;
    t.file("bin/tool", &suid, content.len() as u64, &mut &content[..])?;
    t.hardlink("bin/tool-link", &suid, "bin/tool")?;
    t.symlink("bin/sh", &meta(0o777, 0, 0, 1_600_000_003), "tool")?;
    t.symlink("bin/abs", &meta(0o777, 0, 0, 1_600_000_003), "/bin/tool")?;
    t.dir("data", &d)?;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    t.file(
        "data/big",
        &meta(0o640, 1000, 1001, 1_600_000_004),
        big.len() as u64,
        &mut &big[..],
    )?;
    t.file(
        "data/empty",
        &meta(0o600, 65534, 65534, 1_600_000_005),
        0,
        &mut &b""[..],
    )?;
    let mut x = meta(0o644, 0, 0, 1_600_000_006);
    x.xattrs = vec![
        ("user.rbuild".into(), b"v\0binary\n".to_vec()),
        ("user.a".into(), b"1".to_vec()),
    ];
    t.file("data/xattr", &x, 2, &mut &b"hi"[..])?;
    t.file(
        "data/\u{e9}t\u{e9}",
        &meta(0o644, 0, 0, 1_600_000_007),
        1,
        &mut &b"e"[..],
    )?;
    t.device(
        "dev/null",
        &meta(0o666, 0, 0, 1_600_000_008),
        DeviceKind::Char,
        1,
        3,
    )?;
    t.device(
        "dev/fifo",
        &meta(0o620, 0, 5, 1_600_000_009),
        DeviceKind::Fifo,
        0,
        0,
    )?;
    let mut xd = meta(0o1777, 0, 0, 1_600_000_010);
    xd.xattrs = vec![("user.dir".into(), b"yes".to_vec())];
    t.dir("tmp", &xd)?;
    t.dir("srv", &meta(0o2750, 0, 50, 1_600_000_011))?;
    t.file(
        &long_name(),
        &meta(0o644, 0, 0, 1_600_000_012),
        4,
        &mut &b"long"[..],
    )?;
    t.file(
        "huge-ids",
        &meta(0o644, 3_000_000, 4_000_000, 1_600_000_013),
        0,
        &mut &b""[..],
    )?;
    Ok(())
}

fn check_rich(root: &Path) {
    let md = |p: &str| fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let tool = md("bin/tool");
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid kept after chown");
    assert_eq!(
        (tool.mtime(), tool.mtime_nsec()),
        (1_600_000_002, 500_000_000)
    );
    assert_eq!(
        fs::read(root.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        md("bin/tool-link").ino(),
        tool.ino(),
        "hard link shares the inode"
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(
        fs::read_link(root.join("bin/abs")).unwrap(),
        Path::new("/bin/tool")
    );
    assert_eq!(md("bin/sh").mtime(), 1_600_000_003, "symlink mtime");
    let data = md("data");
    assert_eq!(
        (data.mode() & 0o7777, data.mtime(), data.mtime_nsec()),
        (0o755, 1_600_000_000, 123_456_789)
    );
    let big = md("data/big");
    assert_eq!(
        (big.uid(), big.gid(), big.mode() & 0o7777, big.len()),
        (1000, 1001, 0o640, 3_000_000)
    );
    let expect: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    assert!(fs::read(root.join("data/big")).unwrap() == expect);
    assert_eq!((md("data/empty").uid(), md("data/empty").len()), (65534, 0));
    assert_eq!(
        lget(&root.join("data/xattr"), "user.rbuild").unwrap(),
        b"v\0binary\n"
    );
    assert_eq!(lget(&root.join("data/xattr"), "user.a").unwrap(), b"1");
    assert_eq!(fs::read(root.join("data/\u{e9}t\u{e9}")).unwrap(), b"e");
    let null = md("dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (
            rustix::fs::major(null.rdev()),
            rustix::fs::minor(null.rdev())
        ),
        (1, 3)
    );
    assert_eq!(null.mode() & 0o7777, 0o666);
    let fifo = md("dev/fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!((fifo.mode() & 0o7777, fifo.gid()), (0o620, 5));
    let tmp = md("tmp");
    assert_eq!((tmp.mode() & 0o7777, tmp.mtime()), (0o1777, 1_600_000_010));
    assert_eq!(lget(&root.join("tmp"), "user.dir").unwrap(), b"yes");
    let srv = md("srv");
    assert_eq!((srv.mode() & 0o7777, srv.gid()), (0o2750, 50));
    assert_eq!(fs::read(root.join(long_name())).unwrap(), b"long");
    let huge = md("huge-ids");
    assert_eq!((huge.uid(), huge.gid()), (3_000_000, 4_000_000));
}

/// The tests that check owners, devices and `trusted.*` xattrs need real
/// root (CI and the development machines run them as root).
fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("not root: skipped");
    }
    root
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn round_trip_with_every_compression() {
    if !is_root() {
        return;
    }
    let (dir, store) = store();
    for c in ALL {
        let layer = write_layer(&store, c, None, rich_layer).unwrap();
        assert_eq!(layer.media_type, c.media_type());
        assert_eq!(
            store.blob_path(&layer.digest).metadata().unwrap().len(),
            layer.size
        );
        let tar = read_all(open_layer(&store, &layer.digest).unwrap());
        assert_eq!(
            Digest::sha256(&tar),
            layer.diff_id,
            "{c:?}: diffID is the tar's digest"
        );
        if c == Compression::None {
            assert_eq!(layer.digest, layer.diff_id);
        } else {
            assert_ne!(layer.digest, layer.diff_id);
            assert!(layer.size < tar.len() as u64 / 2, "{c:?} compresses");
        }
        let root = dir.path().join(format!("root-{}", c.name()));
        fs::create_dir(&root).unwrap();
        let stats = apply_layer(
            open_layer(&store, &layer.digest).unwrap(),
            &root,
            &ApplyOptions::layer(),
        )
        .unwrap();
        assert_eq!(stats.skipped, 0, "{:?}", stats.warnings);
        assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
        assert_eq!(stats.bytes, 3_000_000 + 21 + 2 + 1 + 4);
        check_rich(&root);
    }
}

#[test]
fn gnu_tar_reads_our_layers() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("no tar(1): skipped");
        return;
    }
    let (dir, store) = store();
    let layer = write_layer(&store, Compression::None, None, rich_layer).unwrap();
    let out = Command::new("tar")
        .arg("-tvf")
        .arg(store.blob_path(&layer.digest))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(&long_name()), "{listing}");
    assert!(
        listing.contains("bin/tool-link link to bin/tool"),
        "{listing}"
    );
    let x = dir.path().join("x");
    fs::create_dir(&x).unwrap();
    let st = Command::new("tar")
        .arg("--xattrs")
        .arg("--xattrs-include=user.*")
        .arg("-xf")
        .arg(store.blob_path(&layer.digest))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        lget(&x.join("data/xattr"), "user.rbuild").unwrap(),
        b"v\0binary\n"
    );
}

#[test]
fn layers_are_deterministic_and_clamped() {
    let (_dir, store) = store();
    for c in ALL {
        let a = write_layer(&store, c, None, rich_layer).unwrap();
        let b = write_layer(&store, c, None, rich_layer).unwrap();
        assert_eq!(a, b, "{c:?}");
    }
    let clamp = 1_000_000_000;
    let build = |t: &mut TarWriter<_>| {
        let mut late = meta(0o644, 0, 0, 2_000_000_000);
        late.mtime_nsec = 7;
        t.file("late", &late, 1, &mut &b"x"[..])?;
        let mut at = meta(0o644, 0, 0, clamp);
        at.mtime_nsec = 1;
        t.file("at-clamp-plus-1ns", &at, 0, &mut &b""[..])?;
        t.file("early", &meta(0o644, 1000, 1000, 5), 0, &mut &b""[..])?;
        t.whiteout("gone")?;
        t.opaque("dir")
    };
    let layer = write_layer(&store, Compression::None, Some(clamp), build).unwrap();
    let tar = read_all(open_layer(&store, &layer.digest).unwrap());
    let mut archive = tar::Archive::new(&tar[..]);
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        assert!(h.as_ustar().is_some(), "ustar headers");
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
        if let Some(pax) = e.pax_extensions().unwrap() {
            for r in pax {
                let k = r.unwrap().key().unwrap().to_string();
                assert!(k != "atime" && k != "ctime" && k != "mtime", "{k}");
            }
        }
        seen.push((
            String::from_utf8_lossy(&e.path_bytes()).into_owned(),
            h.mtime().unwrap(),
            h.mode().unwrap(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("late".into(), clamp as u64, 0o644),
            ("at-clamp-plus-1ns".into(), clamp as u64, 0o644),
            ("early".into(), 5, 0o644),
            (".wh.gone".into(), 0, 0),
            ("dir/.wh..wh..opq".into(), 0, 0),
        ]
    );
    // Exactly five headers (no PAX block: the clamp dropped the
    // sub-second parts), one data block and two zero blocks.
    assert_eq!(tar.len(), 512 * 5 + 512 + 1024);
}

#[test]
fn writer_refuses_wrong_sizes_and_build_errors_leave_no_blob() {
    let (_dir, store) = store();
    let blobs = || {
        fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs();
    let short = write_layer(&store, Compression::GZIP_DEFAULT, None, |t| {
        t.file("f", &meta(0o644, 0, 0, 0), 10, &mut &b"abc"[..])
    });
    assert!(matches!(short, Err(Error::Io { .. })), "{short:?}");
    let long = write_layer(&store, Compression::ZSTD_DEFAULT, None, |t| {
        t.file("f", &meta(0o644, 0, 0, 0), 1, &mut &b"abc"[..])
    });
    assert!(long.is_err());
    let custom = write_layer(&store, Compression::None, None, |_| {
        Err(std::io::Error::other(Error::Corrupt(
            "source went away".into(),
        )))
    });
    assert!(matches!(custom, Err(Error::Corrupt(m)) if m == "source went away"));
    assert_eq!(blobs(), before);
    assert_eq!(
        fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0,
        "temp blobs removed"
    );
}

/// Writes `build` as an uncompressed layer and applies it onto `root`.
fn apply_built(
    store: &Store,
    root: &Path,
    opts: &ApplyOptions,
    build: impl FnOnce(&mut TarWriter<rbuild_cache::layer::LayerSink>) -> std::io::Result<()>,
) -> rbuild_cache::layer::ApplyStats {
    let layer = write_layer(store, Compression::None, None, build).unwrap();
    apply_layer(open_layer(store, &layer.digest).unwrap(), root, opts).unwrap()
}

#[test]
fn whiteouts_and_opaque_directories() {
    if !is_root() {
        return;
    }
    let (dir, store) = store();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let f = meta(0o644, 0, 0, 100);
    let d = meta(0o755, 0, 0, 100);
    apply_built(&store, &root, &ApplyOptions::layer(), |t| {
        t.dir("a", &d)?;
        t.file("a/x", &f, 1, &mut &b"x"[..])?;
        t.file("a/y", &f, 1, &mut &b"y"[..])?;
        t.file("c", &f, 0, &mut &b""[..])?;
        t.dir("d", &d)?;
        t.file("d/old", &f, 0, &mut &b""[..])?;
        t.dir("d/sub", &d)?;
        t.file("d/sub/old2", &f, 0, &mut &b""[..])?;
        t.file("d/sub/kept-by-name", &f, 0, &mut &b""[..])?;
        t.symlink("var-run", &meta(0o777, 0, 0, 1), "/run")?;
        t.dir("run", &d)?;
        t.file("run/pid", &f, 0, &mut &b""[..])
    });
    let upper = |t: &mut TarWriter<_>| {
        t.whiteout("a/x")?;
        t.whiteout("c")?;
        t.dir("d", &meta(0o700, 0, 0, 200))?;
        // Sorts before the marker: this layer's own entry must survive it.
        t.file("d/-early", &f, 0, &mut &b""[..])?;
        t.opaque("d")?;
        t.file("d/new", &f, 0, &mut &b""[..])?;
        t.file("d/sub/kept-by-name", &f, 1, &mut &b"n"[..])?;
        t.whiteout("var-run/pid")?;
        t.whiteout("never-existed")
    };
    apply_built(&store, &root, &ApplyOptions::layer(), upper);
    let exists = |p: &str| fs::symlink_metadata(root.join(p)).is_ok();
    assert!(!exists("a/x") && exists("a/y") && !exists("c"));
    assert!(!exists("d/old") && exists("d/-early") && exists("d/new"));
    assert!(
        exists("d/sub/kept-by-name") && !exists("d/sub/old2"),
        "opaque reaches into merged subdirs"
    );
    assert!(
        !exists("run/pid"),
        "whiteout through an absolute symlink stays in root"
    );
    assert_eq!(fs::metadata(root.join("d")).unwrap().mode() & 0o777, 0o700);

    // Overlay form: nothing deleted, whiteouts recorded for overlayfs.
    let lower = dir.path().join("overlay");
    fs::create_dir(&lower).unwrap();
    let opts = ApplyOptions {
        whiteouts: Whiteouts::Overlay(OverlayXattr::Trusted),
        ..ApplyOptions::layer()
    };
    apply_built(&store, &lower, &opts, upper);
    let wh = fs::symlink_metadata(lower.join("a/x")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        lget(&lower.join("d"), "trusted.overlay.opaque").unwrap(),
        b"y"
    );
    assert!(lower.join("d/new").is_file());

    // Keep: ADD extracts .wh. names as files.
    let add = dir.path().join("add");
    fs::create_dir(&add).unwrap();
    apply_built(&store, &add, &ApplyOptions::archive(), upper);
    assert!(add.join("a/.wh.x").is_file() && add.join("d/.wh..wh..opq").is_file());
}

#[test]
fn later_entries_replace_earlier_ones() {
    let (dir, store) = store();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(root.join("was-dir/inner")).unwrap();
    fs::write(root.join("was-file"), b"old").unwrap();
    fs::write(root.join("lower-target"), b"lower").unwrap();
    fs::write(root.join("shared"), b"shared").unwrap();
    fs::hard_link(root.join("shared"), root.join("shared-link")).unwrap();
    let f = meta(0o644, 0, 0, 1);
    apply_built(&store, &root, &ApplyOptions::layer(), |t| {
        t.file("was-dir", &f, 1, &mut &b"f"[..])?;
        t.dir("was-file", &meta(0o755, 0, 0, 1))?;
        t.file("twice", &f, 1, &mut &b"1"[..])?;
        t.file("twice", &f, 1, &mut &b"2"[..])?;
        t.dir("merge", &meta(0o700, 0, 0, 1))?;
        t.file("merge/a", &f, 0, &mut &b""[..])?;
        t.dir("merge", &meta(0o751, 0, 0, 2))?;
        t.hardlink("to-lower", &f, "lower-target")?;
        t.file("shared-link", &f, 3, &mut &b"new"[..])?;
        t.symlink("sym", &meta(0o777, 0, 0, 1), "x")?;
        t.file("sym", &f, 1, &mut &b"s"[..])
    });
    assert_eq!(fs::read(root.join("was-dir")).unwrap(), b"f");
    assert!(root.join("was-file").is_dir());
    assert_eq!(fs::read(root.join("twice")).unwrap(), b"2");
    let m = fs::metadata(root.join("merge")).unwrap();
    assert_eq!(
        (m.mode() & 0o777, m.mtime()),
        (0o751, 2),
        "the last dir entry's metadata wins"
    );
    assert!(root.join("merge/a").exists());
    assert_eq!(fs::read(root.join("to-lower")).unwrap(), b"lower");
    assert_eq!(
        fs::read(root.join("shared")).unwrap(),
        b"shared",
        "replacing a hard link never writes through it"
    );
    assert_eq!(fs::read(root.join("sym")).unwrap(), b"s");
    assert!(!fs::symlink_metadata(root.join("sym"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn chown_false_keeps_the_current_owner() {
    let (dir, store) = store();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let opts = ApplyOptions {
        chown: false,
        ..ApplyOptions::archive()
    };
    apply_built(&store, &root, &opts, |t| {
        t.file("f", &meta(0o640, 1234, 5678, 1), 0, &mut &b""[..])
    });
    let md = fs::metadata(root.join("f")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
            0o640
        )
    );
}

// ---- hostile input -------------------------------------------------------

/// A raw ustar header with `name` and `link` copied as bytes, bypassing
/// every writer-side check.
fn raw_header(name: &[u8], typeflag: u8, link: &[u8], size: usize) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name);
    b[100..108].copy_from_slice(b"0000644\0");
    b[108..116].copy_from_slice(b"0000000\0");
    b[116..124].copy_from_slice(b"0000000\0");
    b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    b[136..148].copy_from_slice(b"00000000000\0");
    b[156] = typeflag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> Self {
        RawTar(Vec::new())
    }
    fn entry(mut self, name: &str, typeflag: u8, link: &str, data: &[u8]) -> Self {
        self.0.extend_from_slice(&raw_header(
            name.as_bytes(),
            typeflag,
            link.as_bytes(),
            data.len(),
        ));
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn pax_path(mut self, path: &[u8]) -> Self {
        let mut rec = Vec::new();
        let len = path.len() + " path=\n".len();
        let len = len + len.to_string().len();
        rec.extend_from_slice(format!("{len} path=").as_bytes());
        rec.extend_from_slice(path);
        rec.push(b'\n');
        self.0
            .extend_from_slice(&raw_header(b"PaxHeaders.0/x", b'x', b"", rec.len()));
        self.0.extend_from_slice(&rec);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn done(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// Applies `tar` in `sentinel/root` and checks that it is refused as
/// hostile and that `sentinel` still holds only `root` and `bait`.
fn assert_hostile(tar: Vec<u8>, why: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let sentinel = dir.join("sentinel");
    let root = sentinel.join("root");
    fs::create_dir_all(&root).unwrap();
    fs::write(sentinel.join("bait"), b"bait").unwrap();
    let err = apply_layer(&tar[..], &root, &ApplyOptions::layer()).unwrap_err();
    assert!(
        matches!(err, Error::Hostile { .. }),
        "{why}: expected Hostile, got {err:?}"
    );
    eprintln!("{why}: {err}");
    let mut names: Vec<_> = fs::read_dir(&sentinel)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["bait", "root"],
        "{why}: something was written beside root"
    );
    assert_eq!(fs::read(sentinel.join("bait")).unwrap(), b"bait");
    assert!(!dir.join("escape").exists());
    root
}

#[test]
fn hostile_entries_are_refused_and_write_nothing_outside() {
    assert_hostile(
        RawTar::new().entry("../escape", b'0', "", b"x").done(),
        "dot-dot name",
    );
    assert_hostile(
        RawTar::new().entry("a/../../escape", b'0', "", b"x").done(),
        "dot-dot inside a name",
    );
    assert_hostile(
        RawTar::new().entry("/abs", b'0', "", b"x").done(),
        "absolute name",
    );
    assert_hostile(
        RawTar::new()
            .pax_path(b"nul\0name")
            .entry("x", b'0', "", b"x")
            .done(),
        "NUL in a PAX path",
    );
    let root = assert_hostile(
        RawTar::new()
            .entry("l", b'2', "../../..", b"")
            .entry("l/escape", b'0', "", b"x")
            .done(),
        "write under a symlink climbing out",
    );
    assert!(
        fs::symlink_metadata(root.join("l"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the symlink itself is harmless"
    );
    assert_hostile(
        RawTar::new()
            .entry("a", b'2', "b/../..", b"")
            .entry("a/bait", b'0', "", b"x")
            .done(),
        "symlink whose target climbs through a missing dir",
    );
    assert_hostile(
        RawTar::new()
            .entry("l1", b'2', "l2", b"")
            .entry("l2", b'2', "..", b"")
            .entry("l1/bait", b'0', "", b"x")
            .done(),
        "symlink chain",
    );
    assert_hostile(
        RawTar::new().entry("h", b'1', "../bait", b"").done(),
        "hard link to ../",
    );
    assert_hostile(
        RawTar::new().entry("h", b'1', "/etc/passwd", b"").done(),
        "hard link to an absolute path",
    );
    assert_hostile(
        RawTar::new()
            .entry("l", b'2', "../..", b"")
            .entry("h", b'1', "l/bait", b"")
            .done(),
        "hard link through an escaping symlink",
    );
    assert_hostile(
        RawTar::new().entry("h", b'1', "missing", b"").done(),
        "hard link to nothing",
    );
    assert_hostile(
        RawTar::new()
            .entry("l", b'2', "..", b"")
            .entry("l/.wh.bait", b'0', "", b"")
            .done(),
        "whiteout through an escape",
    );
    assert_hostile(
        RawTar::new().entry(".wh..", b'0', "", b"").done(),
        "whiteout of the parent",
    );
    assert_hostile(
        RawTar::new()
            .entry("loop", b'2', "loop", b"")
            .entry("loop/x", b'0', "", b"")
            .done(),
        "symlink loop",
    );
    assert_hostile(
        RawTar::new().entry("./", b'2', "/", b"").done(),
        "symlink replacing root",
    );
    assert_hostile(
        RawTar::new()
            .entry("f", b'0', "", b"")
            .entry("f/x", b'0', "", b"")
            .done(),
        "file as a parent",
    );
}

#[test]
fn absolute_symlinks_resolve_inside_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let marker = format!("rbuild-test-{}", std::process::id());
    let tar = RawTar::new()
        .entry("./etc2", b'2', "/etc", b"")
        .entry(&format!("etc2/{marker}"), b'0', "", b"in root")
        .entry("var/run", b'2', "/run", b"")
        .entry("var/run/x.pid", b'0', "", b"1")
        .entry("lib", b'2', "usr/lib", b"")
        .entry("lib/libc.so", b'0', "", b"elf")
        .entry("lib-link", b'1', "lib/libc.so", b"")
        .done();
    let stats = apply_layer(&tar[..], &root, &ApplyOptions::layer()).unwrap();
    assert_eq!(stats.entries, 7);
    assert!(
        !Path::new("/etc").join(&marker).exists(),
        "host /etc untouched"
    );
    assert_eq!(
        fs::read(root.join("etc").join(&marker)).unwrap(),
        b"in root"
    );
    assert_eq!(fs::read(root.join("run/x.pid")).unwrap(), b"1");
    assert_eq!(fs::read(root.join("usr/lib/libc.so")).unwrap(), b"elf");
    assert_eq!(fs::read(root.join("lib-link")).unwrap(), b"elf");
}

#[test]
fn entries_replace_symlinks_instead_of_writing_through_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(dir.path().join("bait"), b"bait").unwrap();
    fs::create_dir(dir.path().join("bait-dir")).unwrap();
    let tar = RawTar::new()
        .entry("evil-file", b'2', "../bait", b"")
        .entry("evil-file", b'0', "", b"pwned")
        .entry("evil-dir", b'2', "../bait-dir", b"")
        .entry("evil-dir/", b'5', "", b"")
        .entry("evil-node", b'2', "../bait", b"")
        .entry("evil-node", b'6', "", b"")
        .entry("evil-link", b'2', "/../../bait", b"")
        .done();
    apply_layer(&tar[..], &root, &ApplyOptions::layer()).unwrap();
    assert_eq!(fs::read(dir.path().join("bait")).unwrap(), b"bait");
    assert_eq!(
        fs::read_dir(dir.path().join("bait-dir")).unwrap().count(),
        0
    );
    assert_eq!(fs::read(root.join("evil-file")).unwrap(), b"pwned");
    assert!(fs::symlink_metadata(root.join("evil-dir"))
        .unwrap()
        .is_dir());
    assert!(fs::symlink_metadata(root.join("evil-node"))
        .unwrap()
        .file_type()
        .is_fifo());
    // Symlinks are stored as they are, whatever they point at.
    assert_eq!(
        fs::read_link(root.join("evil-link")).unwrap(),
        Path::new("/../../bait")
    );
}

// ---- store: re-encoding, verification, snapshots ---------------------------

#[test]
fn recompress_keeps_the_diff_id() {
    let (_dir, store) = store();
    let plain = write_layer(&store, Compression::None, None, rich_layer).unwrap();
    let tar = read_all(open_layer(&store, &plain.digest).unwrap());
    let gz = recompress_layer(&store, &plain, Compression::GZIP_DEFAULT).unwrap();
    assert_eq!(gz.diff_id, plain.diff_id);
    assert_ne!(gz.digest, plain.digest);
    assert_eq!(gz.media_type, media::LAYER_GZIP);
    let direct_gz = write_layer(&store, Compression::GZIP_DEFAULT, None, rich_layer).unwrap();
    assert_eq!(gz, direct_gz, "the same bytes whichever way they were made");
    let zst = recompress_layer(&store, &gz, Compression::Zstd { level: 9 }).unwrap();
    assert_eq!(zst.diff_id, plain.diff_id);
    assert_ne!(zst.digest, gz.digest);
    assert!(read_all(open_layer(&store, &zst.digest).unwrap()) == tar);
    let back = recompress_layer(&store, &zst, Compression::None).unwrap();
    assert_eq!(back, plain);
    let lying = LayerDescriptor {
        diff_id: Digest::sha256(b"not it"),
        ..gz.clone()
    };
    assert!(matches!(
        recompress_layer(&store, &lying, Compression::ZSTD_DEFAULT),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn corrupt_blobs_are_detected_by_the_reader() {
    let (dir, store) = store();
    for c in ALL {
        let layer = write_layer(&store, c, None, rich_layer).unwrap();
        let path = store.blob_path(&layer.digest);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let mut out = Vec::new();
        let err = open_layer(&store, &layer.digest)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        eprintln!("{c:?}: {err}");
        let root = dir.path().join(format!("r-{}", c.name()));
        fs::create_dir(&root).unwrap();
        let err = apply_layer(
            open_layer(&store, &layer.digest).unwrap(),
            &root,
            &ApplyOptions::layer(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{c:?}: {err:?}");
        fs::remove_file(&path).unwrap();
    }
}

#[test]
fn snapshots_unpack_once_and_recover_from_debris() {
    if !is_root() {
        return;
    }
    let (_dir, store) = store();
    let layer = write_layer(&store, Compression::GZIP_DEFAULT, None, |t| {
        rich_layer(t)?;
        t.whiteout("bin/old")?;
        t.opaque("tmp")
    })
    .unwrap();
    let fs_dir = snapshot(&store, &layer).unwrap();
    assert_eq!(fs_dir, snapshot_dir(&store, &layer.diff_id).join("fs"));
    check_rich(&fs_dir);
    let wh = fs::symlink_metadata(fs_dir.join("bin/old")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteouts in overlay form"
    );
    let info = snapshot_info(&store, &layer.diff_id).unwrap();
    assert_eq!(info.overlay_xattrs, OverlayXattr::detect().name());
    assert_eq!(
        lget(&fs_dir.join("tmp"), OverlayXattr::detect().opaque_name()).unwrap(),
        b"y"
    );

    // A second call finds it: a file added since is still there.
    fs::write(fs_dir.join("proof"), b"").unwrap();
    assert_eq!(snapshot(&store, &layer).unwrap(), fs_dir);
    assert!(fs_dir.join("proof").exists(), "not unpacked again");

    // Debris without a marker is removed and redone.
    let snap = snapshot_dir(&store, &layer.diff_id);
    fs::remove_file(snap.join(rbuild_cache::layer::SNAPSHOT_MARKER)).unwrap();
    assert_eq!(snapshot(&store, &layer).unwrap(), fs_dir);
    assert!(!fs_dir.join("proof").exists(), "redone from scratch");
    check_rich(&fs_dir);

    // Concurrent callers on a fresh layer: all get the complete snapshot.
    let other = write_layer(&store, Compression::ZSTD_DEFAULT, None, |t| {
        t.file("only", &meta(0o644, 0, 0, 0), 2, &mut &b"ok"[..])
    })
    .unwrap();
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| s.spawn(|| snapshot(&store, &other).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths
        .iter()
        .all(|p| p == &paths[0] && p.join("only").is_file()));
    let leftovers: Vec<_> = fs::read_dir(store.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".tmp") || n.starts_with(".trash"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A layer whose content is not its diffID leaves nothing behind.
    let lying = LayerDescriptor {
        diff_id: Digest::sha256(b"lie"),
        ..other.clone()
    };
    assert!(matches!(snapshot(&store, &lying), Err(Error::Corrupt(_))));
    assert!(!snapshot_dir(&store, &lying.diff_id).exists());
}

// ---- ADD's archive sniffing ------------------------------------------------

#[test]
fn sniff_archive_recognises_compressed_tars_and_passes_other_files_through() {
    let tar = {
        let mut t = TarWriter::new(Vec::new(), None);
        t.file("hello.txt", &meta(0o644, 0, 0, 0), 5, &mut &b"hello"[..])
            .unwrap();
        t.finish().unwrap()
    };
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let bz = {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let xz = {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(&tar).unwrap();
        e.finish().unwrap()
    };
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    for (what, bytes) in [
        ("plain", &tar),
        ("gzip", &gz),
        ("bzip2", &bz),
        ("xz", &xz),
        ("zstd", &zst),
    ] {
        let (r, is_tar) = sniff_archive(Box::new(Cursor::new(bytes.clone()))).unwrap();
        assert!(is_tar, "{what}");
        assert!(read_all(r) == tar, "{what}: decompressed stream");
    }
    let text = b"just some text, not an archive\n".repeat(40);
    let gz_text = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&text).unwrap();
        e.finish().unwrap()
    };
    let mut broken = vec![0x1f, 0x8b];
    broken.extend_from_slice(&text);
    for (what, bytes) in [
        ("text", text.clone()),
        ("gzipped text", gz_text),
        ("broken gzip", broken),
        ("tiny", b"x".to_vec()),
    ] {
        let (r, is_tar) = sniff_archive(Box::new(Cursor::new(bytes.clone()))).unwrap();
        assert!(!is_tar, "{what}");
        assert!(
            read_all(r) == bytes,
            "{what}: original bytes come back unchanged"
        );
    }
    // An extracted ADD archive goes through apply_layer with Keep.
    let dir = tempfile::tempdir().unwrap();
    let (r, _) = sniff_archive(Box::new(Cursor::new(xz))).unwrap();
    apply_layer(r, dir.path(), &ApplyOptions::archive()).unwrap();
    assert_eq!(fs::read(dir.path().join("hello.txt")).unwrap(), b"hello");
}

#[test]
fn compression_names_and_levels() {
    assert_eq!(
        Compression::parse("gzip", None),
        Ok(Compression::Gzip { level: 6 })
    );
    assert_eq!(
        Compression::parse("zstd", None),
        Ok(Compression::Zstd { level: 3 })
    );
    assert_eq!(
        Compression::parse("zstd", Some(19)),
        Ok(Compression::Zstd { level: 19 })
    );
    assert_eq!(
        Compression::parse("uncompressed", Some(3)),
        Ok(Compression::None)
    );
    assert!(Compression::parse("gzip", Some(10)).is_err());
    assert!(Compression::parse("brotli", None).is_err());
    assert_eq!(
        Compression::GZIP_DEFAULT.docker_media_type(),
        media::DOCKER_LAYER_GZIP
    );
    assert_eq!(Compression::None.docker_media_type(), media::DOCKER_LAYER);
    assert_eq!(
        Compression::from_media_type(media::LAYER_ZSTD),
        Some(Compression::ZSTD_DEFAULT)
    );
}

// ---- rootless --------------------------------------------------------------

/// Runs `userns_child` inside `unshare --user --map-root-user` (a one-uid
/// map, as rootless rbuild has without subordinate ids): chown to unmapped
/// ids and mknod of real devices fail there.
#[test]
fn applies_in_a_single_uid_user_namespace() {
    let exe = std::env::current_exe().unwrap();
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("unshare --user unavailable: skipped");
        return;
    }
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(&exe)
        .args(["--exact", "userns_child", "--ignored", "--nocapture"])
        .env("RBUILD_USERNS_CHILD", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by applies_in_a_single_uid_user_namespace inside a user namespace"]
fn userns_child() {
    if std::env::var_os("RBUILD_USERNS_CHILD").is_none() {
        return;
    }
    assert_eq!(OverlayXattr::detect(), OverlayXattr::User);
    let (dir, store) = store();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let stats = apply_built(&store, &root, &ApplyOptions::layer(), |t| {
        t.file("owned", &meta(0o4755, 1000, 1000, 7), 1, &mut &b"x"[..])?;
        t.device("dev/null", &meta(0o666, 0, 0, 7), DeviceKind::Char, 1, 3)?;
        t.device("dev/fifo", &meta(0o600, 0, 0, 7), DeviceKind::Fifo, 0, 0)?;
        t.dir("ro", &meta(0o555, 0, 0, 7))?;
        t.file("ro/inside", &meta(0o444, 0, 0, 7), 0, &mut &b""[..])
    });
    eprintln!("{stats:?}");
    assert_eq!(stats.skipped, 1);
    assert!(
        stats.warnings.iter().any(|w| w.contains("owners")),
        "{:?}",
        stats.warnings
    );
    assert!(
        stats.warnings.iter().any(|w| w.contains("dev/null")),
        "{:?}",
        stats.warnings
    );
    let owned = fs::metadata(root.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.mode() & 0o7777), (0, 0o4755));
    assert!(fs::symlink_metadata(root.join("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(root.join("ro/inside").exists());

    // Snapshots use user.overlay.* and can still make 0/0 whiteouts.
    let layer = write_layer(&store, Compression::None, None, |t| {
        t.whiteout("gone")?;
        t.dir("o", &meta(0o755, 0, 0, 0))?;
        t.opaque("o")
    })
    .unwrap();
    let fs_dir = snapshot(&store, &layer).unwrap();
    assert!(fs::symlink_metadata(fs_dir.join("gone"))
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        lget(&fs_dir.join("o"), "user.overlay.opaque").unwrap(),
        b"y"
    );
}

// ---- throughput ------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// ~200 MB of mixed content: half text-like, a quarter random, a quarter
/// sparse binary, in files of 4 KiB to 8 MiB.
fn mixed_files() -> Vec<(String, Vec<u8>)> {
    const WORDS: &[&str] = &[
        "the",
        "layer",
        "image",
        "build",
        "cache",
        "return",
        "fn",
        "struct",
        "impl",
        "error",
        "config",
        "lib",
        "usr",
        "share",
        "doc",
        "0x1f",
        "{",
        "}",
        "let",
        "mut",
        "self",
        "=>",
        "println!",
        "copyright",
        "license",
        "debian",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut files = Vec::new();
    let mut total = 0usize;
    let mut i = 0;
    while total < 200 << 20 {
        let size = match rng.next() % 10 {
            0..=5 => 4096 + (rng.next() % 60_000) as usize,
            6..=8 => 64 << 10 | (rng.next() % (1 << 20)) as usize,
            _ => (1 << 20) + (rng.next() % (7 << 20)) as usize,
        };
        let kind = rng.next() % 4;
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            match kind {
                0 | 1 => {
                    data.extend_from_slice(
                        WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes(),
                    );
                    data.push(if rng.next() & 7 == 0 { b'\n' } else { b' ' });
                }
                2 => data.extend_from_slice(&rng.next().to_le_bytes()),
                _ => {
                    let v = rng.next();
                    data.extend_from_slice(&[0u8; 56]);
                    data.extend_from_slice(&(v % 1000).to_le_bytes());
                }
            }
        }
        data.truncate(size);
        total += size;
        files.push((format!("data/{:03}/file-{i:05}", i % 97), data));
        i += 1;
    }
    files
}

#[test]
#[ignore = "benchmark: cargo test --release -p rbuild-cache --test layers -- --ignored --nocapture throughput"]
fn throughput() {
    let files = mixed_files();
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let (dir, store) = store();
    let build = |t: &mut TarWriter<rbuild_cache::layer::LayerSink>| {
        let mut dirs: Vec<&str> = files
            .iter()
            .map(|(p, _)| p.rsplit_once('/').map_or("", |x| x.0))
            .collect();
        dirs.sort();
        dirs.dedup();
        t.dir("data", &meta(0o755, 0, 0, 0))?;
        for d in dirs {
            t.dir(d, &meta(0o755, 0, 0, 0))?;
        }
        for (p, d) in &files {
            t.file(p, &meta(0o644, 0, 0, 0), d.len() as u64, &mut &d[..])?;
        }
        Ok(())
    };
    let mb = total as f64 / 1e6;
    println!(
        "input: {} files, {mb:.0} MB, {} threads available",
        files.len(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut plain = None;
    for c in [
        Compression::None,
        Compression::GZIP_DEFAULT,
        Compression::Zstd { level: 3 },
    ] {
        let t0 = Instant::now();
        let layer = write_layer(&store, c, None, build).unwrap();
        let w = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let n = std::io::copy(
            &mut open_layer(&store, &layer.digest).unwrap(),
            &mut std::io::sink(),
        )
        .unwrap();
        let r = t1.elapsed().as_secs_f64();
        println!(
            "{:>12}: write {:7.1} MB/s ({w:.2} s), read+verify {:7.1} MB/s, ratio {:.3} ({} -> {} bytes)",
            c.name(),
            mb / w,
            mb / r,
            layer.size as f64 / n as f64,
            n,
            layer.size
        );
        if c == Compression::None {
            plain = Some(layer);
        }
    }
    let plain = plain.unwrap();
    for c in [Compression::GZIP_DEFAULT, Compression::Zstd { level: 3 }] {
        let t0 = Instant::now();
        recompress_layer(&store, &plain, c).unwrap();
        println!(
            "{:>12}: recompress from the stored tar {:7.1} MB/s",
            c.name(),
            mb / t0.elapsed().as_secs_f64()
        );
    }
    let root = dir.path().join("apply");
    fs::create_dir(&root).unwrap();
    let t0 = Instant::now();
    apply_layer(
        open_layer(&store, &plain.digest).unwrap(),
        &root,
        &ApplyOptions::layer(),
    )
    .unwrap();
    println!(
        "{:>12}: apply {:7.1} MB/s",
        "uncompressed",
        mb / t0.elapsed().as_secs_f64()
    );
}
