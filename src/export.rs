//! Exporters: where a built image goes besides the store — an OCI or
//! docker archive, the final filesystem as a directory or a tar.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rbuild_cache::layer::{self, Compression, LayerDescriptor};
use rbuild_cache::store::{media, Descriptor, Index, REF_NAME};
use rbuild_cache::{Digest, Store};
use rbuild_solver::exec::image::{Manifest, StoredImage};

/// An export failure.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing the destination failed.
    #[error("{path}: {source}")]
    Io {
        /// The destination.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rbuild_cache::Error),
    /// Building the filesystem failed.
    #[error("{0}")]
    Other(String),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Media types for an exported manifest: OCI or Docker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTypes {
    /// OCI image spec types.
    Oci,
    /// Docker schema 2 types.
    Docker,
}

/// An image as it is exported: possibly recompressed layers and a new
/// manifest (whose digest is what `containerimage.digest` reports).
#[derive(Debug, Clone)]
pub struct ExportedImage {
    /// The manifest's descriptor.
    pub manifest: Descriptor,
    /// The config digest (the image ID).
    pub config: Descriptor,
    /// The layer blobs.
    pub layers: Vec<Descriptor>,
}

/// The layer of `l` compressed as asked, compressing it at most once per
/// (diffID, compression): the result is remembered in the store.
pub fn compressed_layer(
    store: &Store,
    l: &LayerDescriptor,
    compression: Compression,
) -> Result<LayerDescriptor, ExportError> {
    // A blob already compressed the asked way is reused as it is (as
    // BuildKit does without force-compression): recompressing a pulled
    // layer would change its digest and defeat cross-repository mounts.
    if Compression::from_media_type(&l.media_type).map(|c| c.name()) == Some(compression.name()) {
        return Ok(LayerDescriptor {
            media_type: compression.media_type().to_string(),
            ..l.clone()
        });
    }
    let key = format!("{}-{}", l.diff_id.hex(), compression_key(compression));
    let memo_dir = store.root().join("compressed");
    let memo = memo_dir.join(&key);
    if let Ok(bytes) = std::fs::read(&memo) {
        if let Ok(d) = serde_json::from_slice::<LayerDescriptor>(&bytes) {
            if store.has_blob(&d.digest) {
                return Ok(d);
            }
        }
    }
    let d = layer::recompress_layer(store, l, compression)?;
    std::fs::create_dir_all(&memo_dir).map_err(io_err(&memo_dir))?;
    let bytes = serde_json::to_vec(&d).map_err(|e| ExportError::Other(e.to_string()))?;
    store.write_file_atomic(&memo, &bytes)?;
    Ok(d)
}

fn compression_key(c: Compression) -> String {
    match c {
        Compression::None => "none".into(),
        Compression::Gzip { level } => format!("gzip{level}"),
        Compression::Zstd { level } => format!("zstd{level}"),
    }
}

/// Prepares `image` for export: layers compressed as asked, manifest in the
/// asked media types, everything written into the store.
pub fn prepare(
    store: &Store,
    image: &StoredImage,
    compression: Compression,
    types: MediaTypes,
) -> Result<ExportedImage, ExportError> {
    let mut layers = Vec::new();
    for l in &image.layers {
        let c = compressed_layer(store, l, compression)?;
        let media_type = match types {
            MediaTypes::Oci => c.media_type.clone(),
            MediaTypes::Docker => compression.docker_media_type().to_string(),
        };
        layers.push(Descriptor::new(media_type, c.digest, c.size));
    }
    let (config_type, manifest_type) = match types {
        MediaTypes::Oci => (media::CONFIG, media::MANIFEST),
        MediaTypes::Docker => (media::DOCKER_CONFIG, media::DOCKER_MANIFEST),
    };
    let config = Descriptor::new(
        config_type,
        image.config_digest.clone(),
        image.manifest_doc.config.size,
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest_type.into()),
        config: config.clone(),
        layers: layers.clone(),
        annotations: BTreeMap::new(),
    };
    let (digest, size, _) = store.write_json(&manifest)?;
    let mut desc = Descriptor::new(manifest_type, digest, size);
    desc.platform = image.manifest.platform.clone();
    Ok(ExportedImage {
        manifest: desc,
        config,
        layers,
    })
}

/// Deterministic tar entries for archives.
struct ArchiveWriter<W: Write> {
    tar: tar::Builder<W>,
    mtime: u64,
}

impl<W: Write> ArchiveWriter<W> {
    fn new(w: W, mtime: u64) -> Self {
        let mut tar = tar::Builder::new(w);
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        ArchiveWriter { tar, mtime }
    }

    fn header(&self, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(kind);
        h
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        let mut h = self.header(0, 0o755, tar::EntryType::Directory);
        self.tar.append_data(&mut h, path, io::empty())
    }

    fn bytes(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        let mut h = self.header(data.len() as u64, 0o644, tar::EntryType::Regular);
        self.tar.append_data(&mut h, path, data)
    }

    fn blob(&mut self, store: &Store, digest: &Digest) -> io::Result<()> {
        let path = store.blob_path(digest);
        let size = std::fs::metadata(&path)?.len();
        let mut h = self.header(size, 0o644, tar::EntryType::Regular);
        let mut reader = store.open_blob(digest).map_err(io::Error::other)?;
        self.tar.append_data(
            &mut h,
            format!("blobs/{}/{}", digest.algorithm(), digest.hex()),
            &mut reader,
        )
    }

    fn finish(self) -> io::Result<W> {
        self.tar.into_inner()
    }
}

fn blobs_of(image: &ExportedImage) -> Vec<Digest> {
    let mut out = vec![image.manifest.digest.clone(), image.config.digest.clone()];
    out.extend(image.layers.iter().map(|l| l.digest.clone()));
    out.sort();
    out.dedup();
    out
}

/// Opens `dest` for writing, `-` meaning stdout.
fn open_dest(dest: &Path) -> Result<Box<dyn Write>, ExportError> {
    if dest == Path::new("-") {
        return Ok(Box::new(io::stdout().lock()));
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    let f = File::create(dest).map_err(io_err(dest))?;
    Ok(Box::new(BufWriter::with_capacity(1 << 20, f)))
}

/// The tag of a full reference (`docker.io/library/app:1` → `1`).
fn tag_of(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    let last = last.split('@').next().unwrap_or(last);
    last.split_once(':')
        .map_or("latest", |(_, t)| t)
        .to_string()
}

/// Docker's short form of a reference, as `docker save` writes it:
/// `docker.io/library/app:1` → `app:1`, `docker.io/me/app:1` → `me/app:1`.
fn familiar(name: &str) -> String {
    let short = name.strip_prefix("docker.io/").unwrap_or(name);
    short
        .strip_prefix("library/")
        .filter(|s| !s.contains('/'))
        .unwrap_or(short)
        .to_string()
}

/// `-o type=oci`: an OCI layout as a tar.
pub fn write_oci_archive(
    store: &Store,
    image: &ExportedImage,
    names: &[String],
    dest: &Path,
    mtime: u64,
) -> Result<(), ExportError> {
    let mut index = Index::default();
    let mut manifest = image.manifest.clone();
    if let Some(first) = names.first() {
        // containerd's convention, which BuildKit follows: the full name in
        // io.containerd.image.name, only the tag in ref.name.
        manifest.annotations.insert(REF_NAME.into(), tag_of(first));
        manifest
            .annotations
            .insert("io.containerd.image.name".into(), first.clone());
    }
    index.manifests.push(manifest);
    let mut w = ArchiveWriter::new(open_dest(dest)?, mtime);
    let err = io_err(dest);
    w.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(&err)?;
    w.bytes(
        "index.json",
        &serde_json::to_vec(&index).map_err(|e| ExportError::Other(e.to_string()))?,
    )
    .map_err(&err)?;
    w.dir("blobs/").map_err(&err)?;
    w.dir("blobs/sha256/").map_err(&err)?;
    for d in blobs_of(image) {
        w.blob(store, &d).map_err(&err)?;
    }
    w.finish()
        .and_then(|mut out: Box<dyn Write>| out.flush())
        .map_err(&err)?;
    Ok(())
}

/// `-o type=docker`: the `docker save` layout (manifest.json plus an OCI
/// layout), loadable by `docker load` and `skopeo`.
pub fn write_docker_archive(
    store: &Store,
    image: &ExportedImage,
    names: &[String],
    dest: &Path,
    mtime: u64,
) -> Result<(), ExportError> {
    let blob = |d: &Digest| format!("blobs/{}/{}", d.algorithm(), d.hex());
    let manifest_json = serde_json::json!([{
        "Config": blob(&image.config.digest),
                "RepoTags": names.iter().map(|n| familiar(n)).collect::<Vec<_>>(),
        "Layers": image.layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
    }]);
    let mut index = Index::default();
    let mut manifest = image.manifest.clone();
    if let Some(first) = names.first() {
        manifest
            .annotations
            .insert("io.containerd.image.name".into(), first.clone());
        manifest.annotations.insert(REF_NAME.into(), tag_of(first));
    }
    index.manifests.push(manifest);
    let mut w = ArchiveWriter::new(open_dest(dest)?, mtime);
    let err = io_err(dest);
    w.bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(&err)?;
    w.bytes(
        "index.json",
        &serde_json::to_vec(&index).map_err(|e| ExportError::Other(e.to_string()))?,
    )
    .map_err(&err)?;
    w.bytes(
        "manifest.json",
        &serde_json::to_vec(&manifest_json).map_err(|e| ExportError::Other(e.to_string()))?,
    )
    .map_err(&err)?;
    w.dir("blobs/").map_err(&err)?;
    w.dir("blobs/sha256/").map_err(&err)?;
    for d in blobs_of(image) {
        w.blob(store, &d).map_err(&err)?;
    }
    w.finish()
        .and_then(|mut out: Box<dyn Write>| out.flush())
        .map_err(&err)?;
    Ok(())
}

/// `-o type=local`: the final filesystem, layers applied in order.
pub fn write_local(store: &Store, image: &StoredImage, dest: &Path) -> Result<(), ExportError> {
    std::fs::create_dir_all(dest).map_err(io_err(dest))?;
    for l in &image.layers {
        let reader = layer::open_layer(store, &l.digest)?;
        layer::apply_layer(reader, dest, &layer::ApplyOptions::layer())
            .map_err(|e| ExportError::Other(format!("applying layer {}: {e}", l.digest)))?;
    }
    Ok(())
}

/// `-o type=tar`: the final filesystem as one tar.
pub fn write_fs_tar(store: &Store, image: &StoredImage, dest: &Path) -> Result<(), ExportError> {
    let tmp = store.temp_path("fs-export");
    let result = (|| {
        write_local(store, image, &tmp)?;
        let out = open_dest(dest)?;
        let mut tar = tar::Builder::new(out);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", &tmp).map_err(io_err(dest))?;
        tar.into_inner()
            .and_then(|mut o| o.flush())
            .map_err(io_err(dest))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
