//! Layers kept as snapshots only, their blobs made when an image needs
//! them.
//!
//! A file op's layer tar is extracted into its snapshot while it is
//! produced, hashed on the way (its diffID, and its digest: the store keeps
//! layers uncompressed), and its [`TarSplit`] is stored beside the
//! snapshot. No blob is written: a layer of a stage that is only copied
//! from never needs one, and a step stacked on it finds its snapshot ready
//! instead of unpacking a blob. When an image that contains the layer is
//! tagged, exported or pushed, [`materialize`] writes the blob from the
//! snapshot and the split, checked against the digest.
//!
//! Where an entry's content already exists as an identical file in
//! another snapshot (COPY --from), the file is hard linked rather than
//! written (see [`super::ApplyOptions::links`]): snapshots are never
//! written to after they are published.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::apply::{apply_layer, remove_tree, ApplyOptions, ApplyStats, OverlayXattr, Whiteouts};
use super::blob::{
    io_to_error, plain_sink, write_from_reader, Compression, LayerDescriptor, LayerSink,
    CHUNKS_IN_FLIGHT,
};
use super::snapshot::{
    new_tmp_dir, publish, snapshot_dir, snapshot_info, write_marker, SnapshotInfo, TAR_SPLIT_FILE,
};
use super::split::{read_split, write_split, SplitReader};
use super::tar_writer::{Origin, SplitRecord, TarWriter};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::Digest;

/// Reads a tar stream arriving as chunks over a channel, hashing it.
struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    size: u64,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.len().min(self.chunk.len() - self.pos);
                buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.rx.recv() {
                Ok(chunk) => {
                    self.hasher.update(&chunk);
                    self.size += chunk.len() as u64;
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
    }
}

/// Writes a file op's layer as a snapshot only (see the module docs):
/// `build` writes the entries, exactly as for
/// [`write_layer`](super::write_layer), and gets the same layer (same
/// diffID and digest, uncompressed). `links` names entries whose content
/// may be hard linked from existing snapshot files.
pub fn write_layer_snapshot<F>(
    store: &Store,
    clamp_mtime: Option<i64>,
    links: Option<Arc<BTreeMap<String, PathBuf>>>,
    build: F,
) -> Result<LayerDescriptor>
where
    F: FnOnce(&mut TarWriter<LayerSink>) -> io::Result<()>,
{
    let context = store.root().join("tmp");
    let tmp = new_tmp_dir(store)?;
    let fs_dir = tmp.join("fs");
    let ns = OverlayXattr::detect();
    let opts = ApplyOptions {
        whiteouts: Whiteouts::Overlay(ns),
        chown: true,
        same_owner_required: false,
        links,
    };
    let (tx, rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let result = std::thread::scope(|scope| {
        let applier = scope.spawn(|| -> (Result<ApplyStats>, Digest, u64) {
            let mut reader = ChunkReader {
                rx,
                chunk: Vec::new(),
                pos: 0,
                hasher: Sha256::new(),
                size: 0,
            };
            let stats = apply_layer(&mut reader, &fs_dir, &opts);
            // Whatever is left (after an error): the producer must never block.
            let _ = io::copy(&mut reader, &mut io::sink());
            let digest = Digest::from_sha256(std::mem::take(&mut reader.hasher));
            (stats, digest, reader.size)
        });
        let produced = (|| -> Result<_> {
            let mut tar = TarWriter::new(plain_sink(tx), clamp_mtime).recording_split();
            build(&mut tar).map_err(|e| io_to_error(e, &context))?;
            let (sink, split) = tar
                .finish_with_split()
                .map_err(|e| Error::io(&context, e))?;
            sink.finish_plain().map_err(|e| Error::io(&context, e))?;
            split.ok_or_else(|| Error::Corrupt("the tar split was not recorded".into()))
        })();
        let applied = applier.join().map_err(|_| {
            Error::io(
                &context,
                io::Error::other("snapshot writer thread panicked"),
            )
        });
        (produced, applied)
    });
    let finish = || -> Result<LayerDescriptor> {
        let split = result.0?;
        let (stats, digest, size) = result.1?;
        let stats = stats?;
        write_split(&tmp.join(TAR_SPLIT_FILE), &split)?;
        let info = SnapshotInfo {
            diff_id: digest.clone(),
            digest: digest.clone(),
            overlay_xattrs: ns.name().to_string(),
            entries: stats.entries,
            bytes: stats.bytes,
            implicit_dirs: stats.implicit_dirs,
            skipped: stats.skipped,
            warnings: stats.warnings,
            unsynced_boot: None,
            tar_split: true,
        };
        write_marker(&tmp, info)?;
        // A snapshot of this layer unpacked from a blob that is gone since
        // stays (it may be a running step's lowerdir) and ours is dropped:
        // give the layer its blob back from ours first.
        if snapshot_info(store, &digest).is_some_and(|i| !i.tar_split) && !store.has_blob(&digest) {
            let reader = SplitReader::new(split.clone(), &fs_dir, digest.clone(), false)?;
            blob_from(store, reader, &digest)?;
        }
        publish(store, &digest, &tmp)?;
        Ok(LayerDescriptor {
            diff_id: digest.clone(),
            digest,
            size,
            media_type: Compression::None.media_type().to_string(),
        })
    };
    let out = finish();
    if out.is_err() {
        let _ = remove_tree(&tmp);
    }
    out
}

/// The snapshot directory of the uncompressed layer `digest` (its
/// diffID too) kept without its blob, when it is complete and its split
/// is there.
fn split_snapshot(store: &Store, digest: &Digest) -> Option<PathBuf> {
    let info = snapshot_info(store, digest)?;
    let dir = snapshot_dir(store, digest);
    (info.tar_split && &info.digest == digest && dir.join(TAR_SPLIT_FILE).is_file()).then_some(dir)
}

/// Whether the layer can be had: its blob is stored, or it is kept as a
/// snapshot its blob can be made from.
pub fn layer_available(store: &Store, layer: &LayerDescriptor) -> bool {
    store.has_blob(&layer.digest)
        || (layer.digest == layer.diff_id && split_snapshot(store, &layer.digest).is_some())
}

/// The tar stream of an uncompressed layer kept as a snapshot, verified
/// against `digest` when read to the end; `None` when there is no such
/// snapshot.
pub(crate) fn open_split_layer(store: &Store, digest: &Digest) -> Result<Option<SplitReader>> {
    split_layer(store, digest, true)
}

fn split_layer(store: &Store, digest: &Digest, verify: bool) -> Result<Option<SplitReader>> {
    let Some(dir) = split_snapshot(store, digest) else {
        return Ok(None);
    };
    let split = read_split(&dir.join(TAR_SPLIT_FILE))?;
    SplitReader::new(split, &dir.join("fs"), digest.clone(), verify).map(Some)
}

/// The files of a layer kept as a snapshot that were read from source
/// files known not to have changed while they were read: entry path →
/// (where the file is in the snapshot, its source's [`Origin`]). Empty
/// when the snapshot is not there or has no split. An op writing its layer
/// again may link such a file when its source still has that origin (see
/// [`super::ApplyOptions::links`], which also checks the metadata).
pub fn snapshot_origins(store: &Store, diff_id: &Digest) -> BTreeMap<String, (PathBuf, Origin)> {
    let mut out = BTreeMap::new();
    let Some(info) = snapshot_info(store, diff_id) else {
        return out;
    };
    if !info.tar_split {
        return out;
    }
    let dir = snapshot_dir(store, diff_id);
    let Ok(split) = read_split(&dir.join(TAR_SPLIT_FILE)) else {
        return out;
    };
    let fs_dir = dir.join("fs");
    for record in split.records {
        if let SplitRecord::File {
            path,
            origin: Some(origin),
            ..
        } = record
        {
            out.insert(path.clone(), (fs_dir.join(&path), origin));
        }
    }
    out
}

/// Makes sure the layer's blob is in the store, writing it from its
/// snapshot if it was kept as one. True when it wrote it (its content was
/// hashed on the way: no need to verify it again). A snapshot that no
/// longer gives the layer's digest is an error, [`Error::Corrupt`].
pub fn materialize(store: &Store, layer: &LayerDescriptor) -> Result<bool> {
    if store.has_blob(&layer.digest) {
        return Ok(false);
    }
    // The blob writer hashes what it writes: that is the check.
    let Some(reader) = split_layer(store, &layer.digest, false)? else {
        return Err(Error::MissingBlob(layer.digest.clone()));
    };
    blob_from(store, reader, &layer.digest)?;
    Ok(true)
}

/// Writes the blob `digest` (an uncompressed layer: digest = diffID) from
/// `reader`, which does not verify: the blob pipeline's hash is the check.
fn blob_from(store: &Store, reader: SplitReader, digest: &Digest) -> Result<()> {
    let source = store.root().join("snapshots").join(digest.hex());
    write_from_reader(store, reader, Compression::None, digest, &source).map(|_| ())
}

/// Removes the snapshot of a layer that can no longer give its blob.
pub fn discard_snapshot(store: &Store, layer: &LayerDescriptor) {
    super::snapshot::remove_snapshot(store, layer.diff_id.hex());
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::layer::{open_layer, write_layer, EntryMeta};

    fn entries(tar: &mut TarWriter<LayerSink>, linked: &std::path::Path) -> io::Result<()> {
        let m = |mode: u32, mtime: i64, nsec: u32| EntryMeta {
            mode,
            uid: 0,
            gid: 0,
            mtime,
            mtime_nsec: nsec,
            xattrs: Vec::new(),
        };
        tar.dir("d", &m(0o755, 10, 0))?;
        tar.file("d/a.txt", &m(0o644, 11, 5), 6, &mut &b"alpha\n"[..])?;
        tar.file("d/empty", &m(0o600, 12, 0), 0, &mut &b""[..])?;
        // A name too long for ustar (a PAX record) and an odd size.
        let long = format!("d/{}", "n".repeat(150));
        tar.file(&long, &m(0o644, 13, 0), 1001, &mut &[7u8; 1001][..])?;
        tar.symlink("d/link", &m(0o777, 14, 0), "a.txt")?;
        tar.hardlink("d/hard", &m(0o644, 11, 5), "d/a.txt")?;
        let md = std::fs::metadata(linked)?;
        let mut f = std::fs::File::open(linked)?;
        tar.file("d/linked", &EntryMeta::from_metadata(&md), md.len(), &mut f)?;
        tar.dir("e", &m(0o700, 15, 0))
    }

    #[test]
    fn a_snapshot_only_layer_is_the_same_layer_and_reads_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let source = dir.path().join("source.bin");
        std::fs::write(&source, vec![3u8; 70_000]).unwrap();
        let blob = write_layer(&store, Compression::None, None, |t| entries(t, &source)).unwrap();
        let mut expected = Vec::new();
        open_layer(&store, &blob.digest)
            .unwrap()
            .read_to_end(&mut expected)
            .unwrap();
        store.discard_blob(&blob.digest);

        let links = Arc::new(BTreeMap::from([("d/linked".to_string(), source.clone())]));
        let lazy =
            write_layer_snapshot(&store, None, Some(links), |t| entries(t, &source)).unwrap();
        assert_eq!(lazy, blob);
        assert!(!store.has_blob(&lazy.digest));
        assert!(layer_available(&store, &lazy));
        let fs_dir = snapshot_dir(&store, &lazy.diff_id).join("fs");
        assert_eq!(std::fs::read(fs_dir.join("d/a.txt")).unwrap(), b"alpha\n");
        let linked = std::fs::metadata(fs_dir.join("d/linked")).unwrap();
        assert_eq!(linked.ino(), std::fs::metadata(&source).unwrap().ino());

        let mut got = Vec::new();
        open_layer(&store, &lazy.digest)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert!(got == expected, "the reassembled tar differs");
        assert!(materialize(&store, &lazy).unwrap());
        assert!(store.has_blob(&lazy.digest));
        assert!(!materialize(&store, &lazy).unwrap());
    }

    #[test]
    fn a_changed_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let source = dir.path().join("source.bin");
        std::fs::write(&source, b"x").unwrap();
        let lazy = write_layer_snapshot(&store, None, None, |t| entries(t, &source)).unwrap();
        let fs_dir = snapshot_dir(&store, &lazy.diff_id).join("fs");
        std::fs::write(fs_dir.join("d/a.txt"), b"ALPHA\n").unwrap();
        assert!(matches!(materialize(&store, &lazy), Err(Error::Corrupt(_))));
        assert!(!store.has_blob(&lazy.digest));
        let mut r = open_layer(&store, &lazy.digest).unwrap();
        assert!(io::copy(&mut r, &mut io::sink()).is_err());
        std::fs::remove_file(fs_dir.join("d/a.txt")).unwrap();
        assert!(materialize(&store, &lazy).is_err());
    }
}
