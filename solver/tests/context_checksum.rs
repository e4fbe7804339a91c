//! Content checksums and the persistent per-file memo.
#![cfg(feature = "exec")]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rbuild_solver::context::{ChecksumMemo, Context, DockerIgnore, MemoStatus};

fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn sum(root: &Path) -> String {
    let c = Context::open(root, DockerIgnore::empty()).unwrap();
    c.checksum(&c.walk(".").unwrap()).unwrap().to_string()
}

fn set_mtime(path: &Path, t: SystemTime) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

#[test]
fn checksum_tracks_content_mode_owner_and_links_not_times() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "a.txt", b"hello");
    write(r, "dir/b.bin", &[0u8; 5000]);
    symlink("a.txt", r.join("link")).unwrap();
    let base = sum(r);
    assert!(base.starts_with("sha256:"));
    assert_eq!(sum(r), base, "stable across runs");

    // Touching mtimes changes nothing.
    set_mtime(
        &r.join("a.txt"),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    );
    set_mtime(
        &r.join("dir/b.bin"),
        SystemTime::now() + Duration::from_secs(3600),
    );
    assert_eq!(sum(r), base, "mtime must not count");

    // One byte.
    let mut data = vec![0u8; 5000];
    data[4321] = 1;
    write(r, "dir/b.bin", &data);
    let one_byte = sum(r);
    assert_ne!(one_byte, base);
    write(r, "dir/b.bin", &[0u8; 5000]);
    assert_eq!(sum(r), base, "restoring content restores the sum");

    // A mode.
    fs::set_permissions(r.join("a.txt"), fs::Permissions::from_mode(0o755)).unwrap();
    let mode = sum(r);
    assert_ne!(mode, base);
    fs::set_permissions(r.join("a.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    let restored = sum(r);

    // A link target.
    fs::remove_file(r.join("link")).unwrap();
    symlink("dir/b.bin", r.join("link")).unwrap();
    assert_ne!(sum(r), restored);
    fs::remove_file(r.join("link")).unwrap();
    symlink("a.txt", r.join("link")).unwrap();
    assert_eq!(sum(r), restored);

    // An owner: checked on the entries, since chown needs privileges.
    let c = Context::open(r, DockerIgnore::empty()).unwrap();
    let mut entries = c.walk(".").unwrap();
    let before = c.checksum(&entries).unwrap();
    entries[0].uid += 1;
    assert_ne!(c.checksum(&entries).unwrap(), before);
    entries[0].uid -= 1;
    entries[0].gid += 1;
    assert_ne!(c.checksum(&entries).unwrap(), before);

    // A rename with the same content is a different tree.
    fs::rename(r.join("a.txt"), r.join("a2.txt")).unwrap();
    assert_ne!(sum(r), restored);
}

#[test]
fn memo_skips_reads_of_unchanged_files_and_persists() {
    let t = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let db = store.path().join("context-memo.redb");
    let r = t.path().join("ctx");
    for i in 0..2000 {
        write(
            &r,
            &format!("d{}/f{i}.txt", i % 20),
            format!("file {i}\n").as_bytes(),
        );
    }
    // Let the files age past the racy window, so they may be memoized.
    std::thread::sleep(Duration::from_millis(1100));

    let memo = Arc::new(ChecksumMemo::open(&db));
    assert_eq!(memo.status(), &MemoStatus::Active);
    let c = Context::open(&r, DockerIgnore::empty())
        .unwrap()
        .with_memo(memo.clone());
    let entries = c.walk(".").unwrap();
    let first = c.checksum(&entries).unwrap();
    let s = c.counters().snapshot();
    assert_eq!(s.files_hashed, 2000);
    assert_eq!(s.memo_hits, 0);
    assert!(s.bytes_read > 0);
    assert_eq!(s.stat_calls, 2020, "one stat per entry");

    // Same process, unchanged tree: no reads at all.
    let before = c.counters().snapshot();
    let entries = c.walk(".").unwrap();
    assert_eq!(c.checksum(&entries).unwrap(), first);
    let after = c.counters().snapshot();
    assert_eq!(
        after.bytes_read, before.bytes_read,
        "second checksum read bytes"
    );
    assert_eq!(after.files_hashed, before.files_hashed);
    assert_eq!(after.memo_hits - before.memo_hits, 2000);
    memo.save().unwrap();
    assert_eq!(memo.len(), 2000);
    drop(c);
    drop(memo);

    // A modified file is rehashed; everything else comes from the memo,
    // which survived closing and reopening.
    write(&r, "d7/f7.txt", b"changed\n");
    let memo = Arc::new(ChecksumMemo::open(&db));
    assert_eq!(memo.status(), &MemoStatus::Active);
    let c = Context::open(&r, DockerIgnore::empty())
        .unwrap()
        .with_memo(memo.clone());
    let second = c.checksum(&c.walk(".").unwrap()).unwrap();
    assert_ne!(second, first);
    let s = c.counters().snapshot();
    assert_eq!(s.files_hashed, 1, "only the modified file is read");
    assert_eq!(s.bytes_read, 8);
    assert_eq!(s.memo_hits, 1999);
    // Without a memo the same answer comes back.
    assert_eq!(second.to_string(), sum(&r));
    memo.save().unwrap();

    // A second handle while the first is open (another build on the same
    // store): the memo is shared, so nothing is read again.
    let shared = ChecksumMemo::open(&db);
    assert_eq!(shared.status(), &MemoStatus::Active);
    let c2 = Context::open(&r, DockerIgnore::empty())
        .unwrap()
        .with_memo(Arc::new(shared));
    assert_eq!(c2.checksum(&c2.walk(".").unwrap()).unwrap(), second);
    // (The file changed above is too fresh to be memoized: read again.)
    assert_eq!(c2.counters().snapshot().files_hashed, 1);
    assert_eq!(c2.counters().snapshot().memo_hits, 1999);
    drop(memo);
}

#[test]
fn fresh_files_are_not_memoized_and_corrupt_memo_is_recreated() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("memo.redb");
    let r = t.path().join("ctx");
    write(&r, "new.txt", b"just written");
    let memo = Arc::new(ChecksumMemo::open(&db));
    let c = Context::open(&r, DockerIgnore::empty())
        .unwrap()
        .with_memo(memo.clone());
    c.checksum(&c.walk(".").unwrap()).unwrap();
    memo.save().unwrap();
    // Within the racy window the timestamp cannot vouch for the content.
    assert_eq!(memo.len(), 0);
    drop(c);
    drop(memo);

    fs::write(&db, b"this is not a redb file at all, just garbage bytes").unwrap();
    let memo = Arc::new(ChecksumMemo::open(&db).with_racy_window(Duration::ZERO));
    assert!(
        matches!(memo.status(), MemoStatus::Recreated { .. }),
        "{:?}",
        memo.status()
    );
    let c = Context::open(&r, DockerIgnore::empty())
        .unwrap()
        .with_memo(memo.clone());
    c.checksum(&c.walk(".").unwrap()).unwrap();
    memo.save().unwrap();
    assert_eq!(memo.len(), 1);

    // Missing directory for the db: created.
    let deep = t.path().join("a/b/c/memo.redb");
    assert_eq!(ChecksumMemo::open(&deep).status(), &MemoStatus::Active);
}

#[test]
fn file_digest_reads_only_on_miss() {
    let t = tempfile::tempdir().unwrap();
    let r = t.path().join("ctx");
    write(&r, "x", b"abc");
    let memo = ChecksumMemo::open(&t.path().join("m.redb")).with_racy_window(Duration::ZERO);
    let c = Context::open(&r, DockerIgnore::empty()).unwrap();
    let e = c.lookup("x").unwrap().found().unwrap();
    let d1 = memo.file_digest(&e, &r.join("x")).unwrap();
    let d2 = memo.file_digest(&e, &r.join("x")).unwrap();
    assert_eq!(d1, d2);
    assert_eq!(
        hex_of(&d1),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let s = memo.counters().snapshot();
    assert_eq!((s.files_hashed, s.memo_hits), (1, 1));
}

fn hex_of(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
