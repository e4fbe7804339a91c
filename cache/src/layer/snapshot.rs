//! Unpacked layer snapshots: `ROOT/snapshots/<diffid-hex>/fs`, the
//! lowerdirs of RUN's overlays.
//!
//! A snapshot is unpacked into `snapshots/.tmp-<hex>-…`, completed with a
//! marker file inside it, and published by renaming the whole directory:
//! `snapshots/<hex>` either does not exist or is complete, unless something
//! other than this code left it there, in which case it is redone. An
//! exclusive lock on `snapshots/.lock-<hex>` makes concurrent callers (in
//! this process or others) unpack a layer once; the second waits and finds
//! it done. Names starting with `.` under `snapshots/` are this
//! bookkeeping, never snapshots.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::apply::{apply_layer, remove_tree, ApplyOptions, OverlayXattr, Whiteouts};
use super::blob::{open_layer, LayerDescriptor};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::{boot_id, Digest};

/// The completion marker inside `snapshots/<hex>/`.
pub const SNAPSHOT_MARKER: &str = "complete.json";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What a snapshot's marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// The layer's diffID.
    pub diff_id: Digest,
    /// The blob it was unpacked from.
    pub digest: Digest,
    /// Which xattr namespace holds opaque markers (`trusted` or `user`):
    /// the overlay must be mounted to match (`userxattr` for `user`).
    pub overlay_xattrs: String,
    /// Tar entries read.
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Directories the layer only implies (no entry of their own): a
    /// union view takes their metadata from the layers below.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub implicit_dirs: Vec<String>,
    /// Entries skipped (e.g. devices where mknod is not permitted).
    pub skipped: u64,
    /// Warnings from unpacking.
    pub warnings: Vec<String>,
    /// The boot it was written in, when it was not flushed to disk: after
    /// a crash of the machine its files may be torn, so another boot
    /// unpacks it again. (A killed process loses nothing the kernel has.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_boot: Option<String>,
    /// The snapshot was written straight from its layer's tar stream, with
    /// the stream's split ([`super::split`]) beside it in
    /// [`TAR_SPLIT_FILE`]: the layer's blob may not exist, and is made from
    /// the snapshot when an image needs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tar_split: bool,
}

/// The file beside a snapshot's `fs/` holding its layer's tar split.
pub const TAR_SPLIT_FILE: &str = "tar-split.zst";

/// Writes a snapshot's marker. Flushing a whole unpacked layer to disk
/// (syncfs) would make every step wait for the disk; instead the marker
/// records the boot, and a snapshot from an earlier boot that was never
/// flushed counts as absent. Without a boot id, it is flushed.
pub(crate) fn write_marker(dir: &Path, mut info: SnapshotInfo) -> Result<()> {
    info.unsynced_boot = boot_id().map(str::to_string);
    let marker = dir.join(SNAPSHOT_MARKER);
    let bytes = serde_json::to_vec_pretty(&info).map_err(Error::json)?;
    let mut f = File::create(&marker).map_err(|e| Error::io(&marker, e))?;
    f.write_all(&bytes).map_err(|e| Error::io(&marker, e))?;
    if info.unsynced_boot.is_none() {
        rustix::fs::syncfs(&f).map_err(|e| Error::io(&marker, e.into()))?;
    }
    Ok(())
}

/// Where the snapshot of the layer with `diff_id` lives (its `fs` is the
/// directory to mount).
pub fn snapshot_dir(store: &Store, diff_id: &Digest) -> PathBuf {
    store.root().join("snapshots").join(diff_id.hex())
}

/// The marker of a complete snapshot, if there is one.
pub fn snapshot_info(store: &Store, diff_id: &Digest) -> Option<SnapshotInfo> {
    let dir = snapshot_dir(store, diff_id);
    if !dir.join("fs").is_dir() {
        return None;
    }
    let bytes = fs::read(dir.join(SNAPSHOT_MARKER)).ok()?;
    let info: SnapshotInfo = serde_json::from_slice(&bytes).ok()?;
    match &info.unsynced_boot {
        Some(boot) if Some(boot.as_str()) != boot_id() => None,
        _ => Some(info),
    }
}

/// Takes the exclusive lock of snapshot `hex` (`snapshots/.lock-<hex>`),
/// held until the returned file is dropped.
fn lock_snapshot(snaps: &Path, hex: &str) -> Result<File> {
    let lock_path = snaps.join(format!(".lock-{hex}"));
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?;
    // rustix's flock rather than `File::lock`, which needs Rust 1.89 (the
    // workspace's MSRV is 1.85).
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io(&lock_path, e.into()))?;
    Ok(lock)
}

/// Moves `dir` (snapshot `hex`, or what is left of it) aside atomically
/// to a `.trash-` name, which the collector treats as debris, and returns
/// that name; the caller deletes it.
fn move_aside(snaps: &Path, hex: &str, dir: &Path) -> io::Result<PathBuf> {
    let trash = snaps.join(format!(
        ".trash-{hex}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    fs::rename(dir, &trash)?;
    Ok(trash)
}

/// Unpacks a stored layer into `ROOT/snapshots/<diffid-hex>/fs` once and
/// returns that path. Whiteouts are stored for overlayfs (0/0 character
/// devices, `overlay.opaque` xattrs in the namespace
/// [`OverlayXattr::detect`] picks), since each snapshot is one lowerdir of
/// a stack. The content is checked against the layer's diffID and the
/// blob's digest; a failed unpack leaves nothing behind. Concurrent callers
/// for the same layer all get the complete snapshot, unpacked once.
pub fn snapshot(store: &Store, layer: &LayerDescriptor) -> Result<PathBuf> {
    let final_dir = snapshot_dir(store, &layer.diff_id);
    let fs_dir = final_dir.join("fs");
    if snapshot_info(store, &layer.diff_id).is_some() {
        return Ok(fs_dir);
    }
    let snaps = store.root().join("snapshots");
    fs::create_dir_all(&snaps).map_err(|e| Error::io(&snaps, e))?;
    let hex = layer.diff_id.hex();
    let lock = lock_snapshot(&snaps, hex)?;
    if snapshot_info(store, &layer.diff_id).is_some() {
        return Ok(fs_dir);
    }

    // Holding the layer's lock, any directory for it here is debris of a
    // crash (or of another tool): move it aside atomically, then delete.
    if fs::symlink_metadata(&final_dir).is_ok() {
        let trash = move_aside(&snaps, hex, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        remove_tree(&trash).map_err(|e| Error::io(&trash, e))?;
    }
    let stale_prefix = format!(".tmp-{hex}-");
    for ent in fs::read_dir(&snaps)
        .map_err(|e| Error::io(&snaps, e))?
        .flatten()
    {
        if ent.file_name().to_string_lossy().starts_with(&stale_prefix) {
            let p = ent.path();
            remove_tree(&p).map_err(|e| Error::io(&p, e))?;
        }
    }

    let tmp = snaps.join(format!(
        "{stale_prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result =
        unpack_into(store, layer, &tmp).and_then(|()| match fs::rename(&tmp, &final_dir) {
            Ok(()) => {
                if let Ok(d) = File::open(&snaps) {
                    let _ = d.sync_all();
                }
                Ok(())
            }
            // Someone published it anyway (say, its lock file was deleted
            // meanwhile): theirs is as good as ours.
            Err(_) if snapshot_info(store, &layer.diff_id).is_some() => {
                let _ = remove_tree(&tmp);
                Ok(())
            }
            Err(e) => Err(Error::io(&final_dir, e)),
        });
    if let Err(e) = result {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    drop(lock);
    Ok(fs_dir)
}

/// A fresh directory under `snapshots/` for a snapshot being written
/// elsewhere than [`snapshot`]: debris for the collector if the process
/// dies, published with [`publish`].
pub(crate) fn new_tmp_dir(store: &Store) -> Result<PathBuf> {
    let snaps = store.root().join("snapshots");
    let tmp = snaps.join(format!(
        ".tmp-new-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let fs_dir = tmp.join("fs");
    fs::create_dir_all(&fs_dir).map_err(|e| Error::io(&fs_dir, e))?;
    // Overlay shows the lowerdir root's mode as the container's `/`.
    rustix::fs::chmod(&fs_dir, rustix::fs::Mode::from_raw_mode(0o755))
        .map_err(|e| Error::io(&fs_dir, e.into()))?;
    Ok(tmp)
}

/// Publishes `tmp` (complete, with its marker) as the snapshot of
/// `diff_id`, unless a complete one is there already; `tmp` is gone
/// afterwards either way.
pub(crate) fn publish(store: &Store, diff_id: &Digest, tmp: &Path) -> Result<()> {
    let result = (|| -> Result<()> {
        let snaps = store.root().join("snapshots");
        let hex = diff_id.hex();
        let lock = lock_snapshot(&snaps, hex)?;
        if snapshot_info(store, diff_id).is_some() {
            return Ok(());
        }
        let final_dir = snapshot_dir(store, diff_id);
        if fs::symlink_metadata(&final_dir).is_ok() {
            let trash =
                move_aside(&snaps, hex, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
            remove_tree(&trash).map_err(|e| Error::io(&trash, e))?;
        }
        fs::rename(tmp, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        if let Ok(d) = File::open(&snaps) {
            let _ = d.sync_all();
        }
        drop(lock);
        Ok(())
    })();
    let _ = remove_tree(tmp);
    result
}

/// Removes the snapshot `snapshots/<hex>`: under its lock, renamed aside
/// first (a `.trash-` directory, debris for the collector), so a process
/// killed meanwhile never leaves a marker over half a tree. True if it was
/// there.
pub(crate) fn remove_snapshot(store: &Store, hex: &str) -> bool {
    let snaps = store.root().join("snapshots");
    let dir = snaps.join(hex);
    // Without the lock (say, a read-only lock file), moving aside is still
    // atomic: only a concurrent publisher could race it.
    let lock = lock_snapshot(&snaps, hex);
    let moved = move_aside(&snaps, hex, &dir);
    drop(lock);
    match moved {
        Ok(trash) => {
            let _ = remove_tree(&trash);
            true
        }
        Err(_) => false,
    }
}

/// Unpacks and verifies the layer into `tmp/fs`, writes the marker, and
/// records the boot (see [`write_marker`]).
fn unpack_into(store: &Store, layer: &LayerDescriptor, tmp: &Path) -> Result<()> {
    let fs_dir = tmp.join("fs");
    fs::create_dir_all(&fs_dir).map_err(|e| Error::io(&fs_dir, e))?;
    // Overlay shows the lowerdir root's mode as the container's `/`.
    rustix::fs::chmod(&fs_dir, rustix::fs::Mode::from_raw_mode(0o755))
        .map_err(|e| Error::io(&fs_dir, e.into()))?;
    let ns = OverlayXattr::detect();
    let opts = ApplyOptions {
        whiteouts: Whiteouts::Overlay(ns),
        chown: true,
        same_owner_required: false,
        links: None,
    };
    let mut reader = HashingReader {
        inner: open_layer(store, &layer.digest)?,
        hasher: Sha256::new(),
    };
    let stats = apply_layer(&mut reader, &fs_dir, &opts)?;
    let got = Digest::from_sha256(reader.hasher);
    if got != layer.diff_id {
        return Err(Error::Corrupt(format!(
            "layer {} unpacks to content with digest {got}, not its diffID {}",
            layer.digest, layer.diff_id
        )));
    }
    let info = SnapshotInfo {
        diff_id: layer.diff_id.clone(),
        digest: layer.digest.clone(),
        overlay_xattrs: ns.name().to_string(),
        entries: stats.entries,
        bytes: stats.bytes,
        skipped: stats.skipped,
        warnings: stats.warnings,
        implicit_dirs: stats.implicit_dirs,
        unsynced_boot: None,
        tar_split: false,
    };
    write_marker(tmp, info)
}

/// Hashes what passes through (the decompressed tar: its diffID).
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unflushed_snapshot_from_another_boot_is_absent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let diff_id = Digest::sha256(b"layer");
        let snap = snapshot_dir(&store, &diff_id);
        fs::create_dir_all(snap.join("fs")).unwrap();
        let mut info = SnapshotInfo {
            diff_id: diff_id.clone(),
            digest: diff_id.clone(),
            overlay_xattrs: "trusted".into(),
            entries: 0,
            bytes: 0,
            implicit_dirs: Vec::new(),
            skipped: 0,
            warnings: Vec::new(),
            unsynced_boot: None,
            tar_split: false,
        };
        write_marker(&snap, info.clone()).unwrap();
        assert!(snapshot_info(&store, &diff_id).is_some());
        if boot_id().is_some() {
            info.unsynced_boot = Some("an-earlier-boot".into());
            fs::write(
                snap.join(SNAPSHOT_MARKER),
                serde_json::to_vec(&info).unwrap(),
            )
            .unwrap();
            assert!(snapshot_info(&store, &diff_id).is_none());
        }
    }
}
