//! The content store: an OCI image layout on disk.
//!
//! `ROOT/oci-layout`, `ROOT/index.json` (tags as
//! `org.opencontainers.image.ref.name`) and `ROOT/blobs/sha256/…`, so that
//! `skopeo inspect oci:ROOT:name:tag` reads it. Beside them: `tmp/` for
//! writes in progress (same filesystem, so a rename publishes them) and
//! `snapshots/` for unpacked layers. Every write is temp + fsync + rename;
//! every blob read by digest is verified as it is read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::Digest;

/// OCI media types rbuild writes.
pub mod media {
    /// OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Uncompressed layer.
    pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// Gzip layer.
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Zstd layer.
    pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker uncompressed layer.
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
}

/// The annotation OCI layouts use for tags.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Platform (in indexes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// A descriptor without annotations or platform.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            annotations: Default::default(),
            platform: None,
        }
    }
}

/// `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The index media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests, tagged through their annotations.
    pub manifests: Vec<Descriptor>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media::INDEX.into()),
            manifests: Vec::new(),
        }
    }
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Opens the store at `root`, creating the layout when it is missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for dir in ["blobs/sha256", "tmp", "snapshots"] {
            fs::create_dir_all(root.join(dir)).map_err(|e| Error::io(&root.join(dir), e))?;
        }
        let store = Store { root };
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            store.write_file_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let index = store.root.join("index.json");
        if !index.exists() {
            let _lock = store.lock()?;
            if !index.exists() {
                let bytes = serde_json::to_vec(&Index::default()).map_err(Error::json)?;
                store.write_file_atomic(&index, &bytes)?;
            }
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// Whether blob `digest` is present (not verified).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// A fresh path under `tmp/` for a write in progress.
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Starts writing a blob; [`BlobWriter::commit`] publishes it.
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>> {
        let path = self.temp_path("blob");
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(BlobWriter {
            store: self,
            path,
            file: Some(io::BufWriter::with_capacity(1 << 20, file)),
            hasher: Sha256::new(),
            size: 0,
            sync: true,
        })
    }

    /// Writes `bytes` as a blob and returns its digest and size.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::sha256(bytes);
        if fs::metadata(self.blob_path(&digest)).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok((digest, bytes.len() as u64));
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes).map_err(|e| Error::io(&w.path, e))?;
        w.commit()
    }

    /// Writes a JSON document as a blob.
    pub fn write_json<T: Serialize>(&self, value: &T) -> Result<(Digest, u64, Vec<u8>)> {
        let bytes = serde_json::to_vec(value).map_err(Error::json)?;
        let (d, s) = self.write_blob(&bytes)?;
        Ok((d, s, bytes))
    }

    /// Opens a blob for reading; the reader fails at the end if the content
    /// does not match the digest.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifiedReader> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::MissingBlob(digest.clone())
            } else {
                Error::io(&path, e)
            }
        })?;
        Ok(VerifiedReader {
            inner: BufReader::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            expected: digest.clone(),
            done: false,
        })
    }

    /// Reads blob `digest` through and checks its content.
    pub fn verify_blob(&self, digest: &Digest) -> Result<()> {
        let mut reader = self.open_blob(digest)?;
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| Error::from_read(digest, &self.blob_path(digest), e))?;
        Ok(())
    }

    /// Removes blob `digest` (damaged, or unreferenced): renamed away
    /// first, so no reader ever opens a half-deleted file by its digest.
    pub fn discard_blob(&self, digest: &Digest) {
        let path = self.blob_path(digest);
        let aside = self.temp_path("discard");
        if fs::rename(&path, &aside).is_ok() {
            let _ = fs::remove_file(&aside);
        }
    }

    /// Reads a whole (small) blob, verified.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut out)
            .map_err(|e| Error::from_read(digest, &self.blob_path(digest), e))?;
        Ok(out)
    }

    /// Reads a JSON blob, verified.
    pub fn read_json<T: for<'de> Deserialize<'de>>(&self, digest: &Digest) -> Result<T> {
        let bytes = self.read_blob(digest)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("blob {digest} is not the expected JSON: {e}")))
    }

    /// Takes the store's lock (exclusive; for index updates). Dropped to release.
    pub fn lock(&self) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.lock().map_err(|e| Error::io(&path, e))?;
        Ok(StoreLock { _file: file })
    }

    /// The current `index.json`.
    pub fn index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))
    }

    /// Changes `index.json` under the lock, atomically.
    pub fn update_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut index = self.index()?;
        let out = f(&mut index)?;
        let bytes = serde_json::to_vec_pretty(&index).map_err(Error::json)?;
        self.write_file_atomic(&self.root.join("index.json"), &bytes)?;
        Ok(out)
    }

    /// Points tag `name` (e.g. `app:1`) at `manifest`, replacing any old target.
    pub fn tag(&self, name: &str, manifest: &Descriptor) -> Result<()> {
        // Re-tagging what a tag already names writes nothing (a no-change
        // rebuild should not rewrite index.json).
        if let Some(current) = self.resolve_tag(name)? {
            let mut d = manifest.clone();
            d.annotations.insert(REF_NAME.into(), name.into());
            if current == d {
                return Ok(());
            }
        }
        self.update_index(|index| {
            index
                .manifests
                .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(name));
            let mut d = manifest.clone();
            d.annotations.insert(REF_NAME.into(), name.into());
            index.manifests.push(d);
            Ok(())
        })
    }

    /// Removes tag `name`; returns whether it existed.
    pub fn untag(&self, name: &str) -> Result<bool> {
        self.update_index(|index| {
            let before = index.manifests.len();
            index
                .manifests
                .retain(|d| d.annotations.get(REF_NAME).map(String::as_str) != Some(name));
            Ok(index.manifests.len() != before)
        })
    }

    /// The manifest a tag points at.
    pub fn resolve_tag(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(name)))
    }

    /// Remembers that blob `digest` is also in repository `name`
    /// (`registry/repository`), so a push to another repository of that
    /// registry can mount it instead of uploading it (containerd keeps the
    /// same fact as a "distribution source" label).
    pub fn add_source(&self, digest: &Digest, name: &str) -> Result<()> {
        let mut names = self.sources(digest);
        if names.iter().any(|n| n == name) {
            return Ok(());
        }
        names.push(name.to_string());
        let dir = self.root.join("sources");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        self.write_file_atomic(&dir.join(digest.hex()), names.join("\n").as_bytes())
    }

    /// The repositories blob `digest` is known to be in.
    pub fn sources(&self, digest: &Digest) -> Vec<String> {
        fs::read_to_string(self.root.join("sources").join(digest.hex()))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Writes `bytes` to `path` through a temp file, fsyncs and renames.
    pub fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let tmp = self.temp_path("file");
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_parent(path);
        Ok(())
    }
}

fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}

/// Holds the store lock until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// A blob being written: hashed as it goes, published by [`BlobWriter::commit`].
pub struct BlobWriter<'a> {
    store: &'a Store,
    path: PathBuf,
    file: Option<io::BufWriter<File>>,
    hasher: Sha256,
    size: u64,
    sync: bool,
}

impl BlobWriter<'_> {
    /// Publishes the blob without flushing it to disk. For blobs the build
    /// cache makes (layers): their index records carry the boot they were
    /// written in, and another boot hashes them again before trusting them
    /// (see [`crate::index::FileStamp`]), so a machine crash cannot pass a
    /// torn layer off as a good one, and no build waits for the disk.
    pub fn without_fsync(mut self) -> Self {
        self.sync = false;
        self
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fsyncs and renames the blob into place; returns its digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64)> {
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::Corrupt("blob writer used twice".into()))?;
        let file = file
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        if self.sync {
            file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        }
        let digest = Digest::from_sha256(std::mem::take(&mut self.hasher));
        let dest = self.store.blob_path(&digest);
        // A blob already there of another size is damaged: ours replaces it.
        if fs::metadata(&dest).is_ok_and(|m| m.len() == self.size) {
            let _ = fs::remove_file(&self.path);
        } else {
            fs::rename(&self.path, &dest).map_err(|e| Error::io(&dest, e))?;
            if self.sync {
                sync_parent(&dest);
            }
        }
        Ok((digest, self.size))
    }
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("blob writer is finished"))?;
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for BlobWriter<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Reads a blob and fails with `InvalidData` at EOF if its digest is wrong.
pub struct VerifiedReader {
    inner: BufReader<File>,
    hasher: Sha256,
    expected: Digest,
    done: bool,
}

impl Read for VerifiedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            if !self.done {
                self.done = true;
                let got = Digest::from_sha256(std::mem::take(&mut self.hasher));
                if got != self.expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "blob {} is corrupt: its content hashes to {got}",
                            self.expected
                        ),
                    ));
                }
            }
            return Ok(0);
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_corruption_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (d, size) = store.write_blob(b"hello").unwrap();
        assert_eq!(size, 5);
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        fs::write(store.blob_path(&d), b"hellp").unwrap();
        let err = store.read_blob(&d).unwrap_err().to_string();
        assert!(err.contains("corrupt"), "{err}");
        assert!(matches!(
            store.read_blob(&Digest::sha256(b"absent")),
            Err(Error::MissingBlob(_))
        ));
    }

    #[test]
    fn tags_live_in_index_json() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (d, size) = store.write_blob(b"{}").unwrap();
        let desc = Descriptor::new(media::MANIFEST, d, size);
        store.tag("app:1", &desc).unwrap();
        store.tag("app:1", &desc).unwrap();
        assert_eq!(store.index().unwrap().manifests.len(), 1);
        assert!(store.resolve_tag("app:1").unwrap().is_some());
        assert!(store.untag("app:1").unwrap());
        assert!(store.resolve_tag("app:1").unwrap().is_none());
        assert!(dir.path().join("oci-layout").is_file());
    }
}
