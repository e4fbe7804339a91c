//! Layer blobs: writing a tar stream into the store in one pass (tar →
//! sha256 diffID → compression → sha256 digest → blob), re-encoding stored
//! layers, and reading them back as verified tar streams.

use std::io::{self, Cursor, Read, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::ScopedJoinHandle;

use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::ZWriter;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::tar_writer::TarWriter;
use crate::error::{Error, Result};
use crate::store::{media, BlobWriter, Descriptor, Store};
use crate::Digest;

/// Docker has no zstd layer type of its own; this is the one containerd and
/// BuildKit use (`MediaTypeDockerSchema2LayerZstd`) in Docker manifests.
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain tar (what the local store keeps).
    None,
    /// Gzip at `level` (0–9), written in parallel by gzp.
    Gzip {
        /// 0 (store) to 9 (best).
        level: u32,
    },
    /// Zstandard at `level` (-7–22), multithreaded.
    Zstd {
        /// Negative levels are faster, 22 is the densest.
        level: i32,
    },
}

impl Compression {
    /// Gzip's default level, as Docker and BuildKit use.
    pub const GZIP_DEFAULT: Compression = Compression::Gzip { level: 6 };
    /// Zstd's default level, as zstd itself and BuildKit use.
    pub const ZSTD_DEFAULT: Compression = Compression::Zstd { level: 3 };

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::None => media::LAYER,
            Compression::Gzip { .. } => media::LAYER_GZIP,
            Compression::Zstd { .. } => media::LAYER_ZSTD,
        }
    }

    /// The media type for Docker schema 2 manifests and docker-archive.
    pub fn docker_media_type(&self) -> &'static str {
        match self {
            Compression::None => media::DOCKER_LAYER,
            Compression::Gzip { .. } => media::DOCKER_LAYER_GZIP,
            Compression::Zstd { .. } => DOCKER_LAYER_ZSTD,
        }
    }

    /// The name `parse` accepts: `uncompressed`, `gzip` or `zstd`.
    pub fn name(&self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// Parses BuildKit's `compression=` / `compression-level=` values:
    /// `gzip` (level 0–9, default 6), `zstd` (level -7–22, default 3) or
    /// `uncompressed` (where a level is ignored, as BuildKit does).
    pub fn parse(name: &str, level: Option<i32>) -> Result<Self, String> {
        match name {
            "uncompressed" => Ok(Compression::None),
            "gzip" => match level {
                None => Ok(Compression::GZIP_DEFAULT),
                Some(l @ 0..=9) => Ok(Compression::Gzip {
                    level: l.unsigned_abs(),
                }),
                Some(l) => Err(format!("gzip compression level {l} is out of range 0-9")),
            },
            "zstd" => match level {
                None => Ok(Compression::ZSTD_DEFAULT),
                Some(l @ -7..=22) => Ok(Compression::Zstd { level: l }),
                Some(l) => Err(format!("zstd compression level {l} is out of range -7-22")),
            },
            other => Err(format!(
                "unknown compression {other:?}: expected gzip, zstd or uncompressed"
            )),
        }
    }

    /// The kind of compression a layer media type names (OCI or Docker),
    /// at its default level.
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        match media_type {
            media::LAYER | media::DOCKER_LAYER => Some(Compression::None),
            media::LAYER_GZIP | media::DOCKER_LAYER_GZIP => Some(Compression::GZIP_DEFAULT),
            media::LAYER_ZSTD | DOCKER_LAYER_ZSTD => Some(Compression::ZSTD_DEFAULT),
            _ => None,
        }
    }
}

/// A layer blob in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerDescriptor {
    /// Digest of the uncompressed tar (the image config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Digest of the blob as stored.
    pub digest: Digest,
    /// Size of the blob as stored.
    pub size: u64,
    /// OCI media type of the blob.
    pub media_type: String,
}

impl LayerDescriptor {
    /// The OCI descriptor for a manifest's `layers`.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(self.media_type.clone(), self.digest.clone(), self.size)
    }
}

/// Worker threads for compression: all cores, and at least two so that
/// compression overlaps with producing the tar even on one core.
fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2)
}

/// Bytes gathered before a chunk goes to the blob-writing thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight to the blob-writing thread (bounds memory).
pub(super) const CHUNKS_IN_FLIGHT: usize = 8;

/// The end of the pipeline on the producing side: batches bytes into
/// chunks for the thread that hashes them into the blob and writes it.
/// Being `'static`, it can go into gzp's own writer thread, and it keeps
/// [`LayerSink`] free of lifetimes (so any `fn(&mut TarWriter<W>)` can
/// build a layer).
struct ChunkSender {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::other("the blob writer stopped"))
    }

    /// Sends what is buffered and hangs up, ending the blob.
    fn close(mut self) -> io::Result<()> {
        self.send()
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(buf.len())
    }

    /// Chunk boundaries do not change the blob, so flushing is harmless.
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Where [`write_layer`]'s [`TarWriter`] writes: hashes the tar (diffID),
/// compresses it, and passes the result to a thread that writes (and
/// hashes) the store blob. Only `write_layer` makes one.
pub struct LayerSink {
    /// `None` once finished; dropping a sink that still has it abandons
    /// the pipeline (see `Drop`).
    inner: Option<SinkInner>,
    diff: Sha256,
}

enum SinkInner {
    /// Uncompressed: the blob's own digest is the diffID, so the tar is not
    /// hashed twice.
    Plain(ChunkSender),
    /// `failed` records a write error, after which gzp has torn its
    /// pipeline down and must not be finished again (it would panic).
    Gzip {
        enc: ParCompress<'static, Gzip, ChunkSender>,
        failed: bool,
    },
    Zstd(zstd::stream::write::Encoder<'static, ChunkSender>),
}

impl LayerSink {
    fn new(out: ChunkSender, compression: Compression) -> io::Result<Self> {
        let inner = match compression {
            Compression::None => SinkInner::Plain(out),
            Compression::Gzip { level } => {
                let enc = ParCompressBuilder::<Gzip>::new()
                    .num_threads(threads())
                    .map_err(io::Error::other)?
                    .compression_level(gzp::Compression::new(level.min(9)))
                    .from_writer(out);
                SinkInner::Gzip { enc, failed: false }
            }
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                // zstdmt output is the same for any worker count >= 1 (but
                // differs from single-threaded mode), so digests do not
                // depend on the machine's core count.
                enc.multithread(u32::try_from(threads()).unwrap_or(2))?;
                // A content checksum in each frame, as the zstd CLI and
                // containerd write: lets any decoder check integrity.
                enc.include_checksum(true)?;
                SinkInner::Zstd(enc)
            }
        };
        Ok(LayerSink {
            inner: Some(inner),
            diff: Sha256::new(),
        })
    }

    /// Ends an uncompressed stream made by [`plain_sink`].
    pub(super) fn finish_plain(self) -> io::Result<()> {
        self.finish().map(|_| ())
    }

    /// Ends the compressed stream and the blob; returns the diffID (None
    /// for plain layers: the blob digest is the diffID).
    fn finish(mut self) -> io::Result<Option<Digest>> {
        let diff = Digest::from_sha256(std::mem::take(&mut self.diff));
        match self.inner.take() {
            None => Err(io::Error::other("layer sink finished twice")),
            Some(SinkInner::Plain(out)) => {
                out.close()?;
                Ok(None)
            }
            Some(SinkInner::Gzip { failed: true, .. }) => {
                Err(io::Error::other("gzip compression failed earlier"))
            }
            Some(SinkInner::Gzip {
                mut enc,
                failed: false,
            }) => {
                enc.finish().map_err(gzp_io)?.close()?;
                Ok(Some(diff))
            }
            Some(SinkInner::Zstd(enc)) => {
                enc.finish()?.close()?;
                Ok(Some(diff))
            }
        }
    }
}

impl Drop for LayerSink {
    /// Tears an unfinished pipeline down (after an error or a panic):
    /// gzp's own `Drop` would unwrap the result of finishing, so finish it
    /// here and ignore the outcome. The blob-writing thread ends when the
    /// last sender is gone, and the unfinished blob is deleted.
    fn drop(&mut self) {
        if let Some(SinkInner::Gzip {
            mut enc,
            failed: false,
        }) = self.inner.take()
        {
            let _ = enc.finish();
        }
    }
}

fn gzp_io(e: gzp::GzpError) -> io::Error {
    match e {
        gzp::GzpError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl Write for LayerSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            None => return Err(io::Error::other("layer sink is finished")),
            Some(SinkInner::Plain(out)) => return out.write(buf),
            Some(SinkInner::Gzip { failed: true, .. }) => {
                return Err(io::Error::other("gzip compression failed earlier"))
            }
            Some(SinkInner::Gzip { enc, failed }) => {
                enc.write(buf).inspect_err(|_| *failed = true)?
            }
            Some(SinkInner::Zstd(enc)) => enc.write(buf)?,
        };
        self.diff.update(&buf[..n]);
        Ok(n)
    }

    /// Does nothing: a gzp or zstd flush ends a compression block early,
    /// which would make the output depend on when callers flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink passing an uncompressed tar, in chunks, to `tx`'s receiver.
pub(super) fn plain_sink(tx: SyncSender<Vec<u8>>) -> LayerSink {
    LayerSink {
        inner: Some(SinkInner::Plain(ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        })),
        diff: Sha256::new(),
    }
}

/// Recovers an [`Error`] a caller wrapped in `io::Error::other`, or wraps
/// `e` with `path`.
pub(crate) fn io_to_error(e: io::Error, path: &Path) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(Ok(err)) = e.into_inner().map(|inner| inner.downcast::<Error>()) {
            return *err;
        }
        return Error::Corrupt("lost a wrapped error".into());
    }
    Error::io(path, e)
}

/// Runs `produce` with a [`LayerSink`] whose output becomes a store blob,
/// written by a scoped thread (which can borrow the store). Returns the
/// layer; with `expect_diff`, refuses (dropping the blob) a tar whose
/// digest differs.
fn pipeline(
    store: &Store,
    compression: Compression,
    expect_diff: Option<&Digest>,
    produce: impl FnOnce(LayerSink) -> Result<LayerSink>,
) -> Result<LayerDescriptor> {
    let context = store.root().join("tmp");
    let mut blob = store.blob_writer()?.without_fsync();
    let (tx, rx) = sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> io::Result<BlobWriter<'_>> {
            for chunk in rx {
                blob.write_all(&chunk)?;
            }
            Ok(blob)
        });
        write_blob(tx, compression, expect_diff, produce, &context, writer)
    })
}

/// The producing side of [`pipeline`]: feeds the sink, then commits the
/// blob the writer thread wrote.
fn write_blob<'s>(
    tx: SyncSender<Vec<u8>>,
    compression: Compression,
    expect_diff: Option<&Digest>,
    produce: impl FnOnce(LayerSink) -> Result<LayerSink>,
    context: &Path,
    writer: ScopedJoinHandle<'_, io::Result<BlobWriter<'s>>>,
) -> Result<LayerDescriptor> {
    {
        // The writer thread's own error (say, a full disk) explains a
        // failed send better than the send does.
        let join = |writer| join_writer(writer, context);
        let out = ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let sink = match LayerSink::new(out, compression) {
            Ok(sink) => sink,
            Err(e) => {
                let _ = join(writer);
                return Err(Error::io(context, e));
            }
        };
        let sink = match produce(sink) {
            Ok(sink) => sink,
            Err(e) => {
                // The sink was dropped, so the writer thread ends; its own
                // error (say, a full disk) is the cause of a failed send.
                return match join(writer) {
                    Err(cause) => Err(cause),
                    Ok(_) => Err(e),
                };
            }
        };
        let finished = sink.finish();
        let blob = join(writer)?;
        let diff = finished.map_err(|e| Error::io(context, e))?;
        if let (Some(diff), Some(expected)) = (&diff, expect_diff) {
            if diff != expected {
                return Err(Error::Corrupt(format!(
                    "layer content hashes to {diff}, not its diffID {expected}"
                )));
            }
        }
        let (digest, size) = blob.commit()?;
        let diff_id = diff.unwrap_or_else(|| digest.clone());
        if let Some(expected) = expect_diff {
            if &diff_id != expected {
                return Err(Error::Corrupt(format!(
                    "layer content hashes to {diff_id}, not its diffID {expected}"
                )));
            }
        }
        Ok(LayerDescriptor {
            diff_id,
            digest,
            size,
            media_type: compression.media_type().to_string(),
        })
    }
}

fn join_writer<'a>(
    writer: ScopedJoinHandle<'_, io::Result<BlobWriter<'a>>>,
    context: &Path,
) -> Result<BlobWriter<'a>> {
    match writer.join() {
        Ok(r) => r.map_err(|e| Error::io(context, e)),
        Err(_) => Err(Error::io(
            context,
            io::Error::other("blob writer thread panicked"),
        )),
    }
}

/// Streams a layer into the store in one pass: tar → sha256 (diffID) →
/// compression → sha256 (digest) → blob ([`Store::blob_writer`]), never
/// holding the layer in memory. Gzip uses gzp with 2+ threads; zstd uses
/// zstdmt; the blob is hashed and written on a thread of its own. `build`
/// writes the entries; an error it returns (an `io::Error::other(Error)`
/// comes back as that `Error`) abandons the blob.
pub fn write_layer<F>(
    store: &Store,
    compression: Compression,
    clamp_mtime: Option<i64>,
    build: F,
) -> Result<LayerDescriptor>
where
    F: FnOnce(&mut TarWriter<LayerSink>) -> io::Result<()>,
{
    let context = store.root().join("tmp");
    pipeline(store, compression, None, |sink| {
        let mut tar = TarWriter::new(sink, clamp_mtime);
        build(&mut tar).map_err(|e| io_to_error(e, &context))?;
        tar.finish().map_err(|e| Error::io(&context, e))
    })
}

/// Re-encodes a stored layer blob with another compression, streaming (for
/// exports: the local store keeps layers uncompressed), and checks that the
/// content still hashes to the layer's diffID. An uncompressed layer asked
/// to stay uncompressed is returned as it is.
pub fn recompress_layer(
    store: &Store,
    layer: &LayerDescriptor,
    compression: Compression,
) -> Result<LayerDescriptor> {
    if compression == Compression::None
        && layer.digest == layer.diff_id
        && store.has_blob(&layer.digest)
    {
        return Ok(LayerDescriptor {
            media_type: media::LAYER.to_string(),
            ..layer.clone()
        });
    }
    let reader = open_layer(store, &layer.digest)?;
    let blob_path = store.blob_path(&layer.digest);
    write_from_reader(store, reader, compression, &layer.diff_id, &blob_path)
}

/// Streams the uncompressed tar `reader` gives into a new blob, compressed
/// as asked, reading and hashing + writing on separate threads; the tar
/// must hash to `diff_id`, else the result is [`Error::Corrupt`] (as is an
/// `InvalidData` read error from `source`, the reader's origin).
pub(super) fn write_from_reader(
    store: &Store,
    mut reader: impl Read,
    compression: Compression,
    diff_id: &Digest,
    source: &Path,
) -> Result<LayerDescriptor> {
    let context = store.root().join("tmp");
    pipeline(store, compression, Some(diff_id), |mut sink| {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(sink),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::from_read(diff_id, source, e)),
            };
            sink.write_all(&buf[..n])
                .map_err(|e| Error::io(&context, e))?;
        }
    })
}

/// Reads up to `n` bytes from the start of `reader`; returns them and a
/// reader that still yields the whole stream.
fn peek(mut reader: Box<dyn Read + Send>, n: usize) -> io::Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    head.truncate(got);
    let stream = Box::new(Cursor::new(head.clone()).chain(reader));
    Ok((head, stream))
}

/// Compression formats recognised by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Magic {
    Gzip,
    Zstd,
    Bzip2,
    Xz,
    Plain,
}

fn magic(head: &[u8]) -> Magic {
    if head.starts_with(&[0x1f, 0x8b]) {
        Magic::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Magic::Zstd
    } else if head.starts_with(b"BZh") {
        Magic::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Magic::Xz
    } else {
        Magic::Plain
    }
}

/// A verified reader of a stored layer as an uncompressed tar stream,
/// whatever its compression (detected by magic bytes: gzip, zstd, or plain).
/// The blob's digest is checked when the reader reaches the end of the
/// blob, where a mismatch is an `InvalidData` error: read it to the end
/// ([`apply_layer`](super::apply_layer) does).
pub fn open_layer(store: &Store, digest: &Digest) -> Result<Box<dyn Read + Send>> {
    let path = store.blob_path(digest);
    // A layer kept as a snapshot only (see `super::lazy`) reads as the
    // same tar, made from it.
    if !store.has_blob(digest) {
        if let Some(reader) = super::lazy::open_split_layer(store, digest)? {
            return Ok(Box::new(reader));
        }
    }
    let blob: Box<dyn Read + Send> = Box::new(store.open_blob(digest)?);
    let (head, raw) = peek(blob, 6).map_err(|e| Error::from_read(digest, &path, e))?;
    Ok(match magic(&head) {
        Magic::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Magic::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(raw).map_err(|e| Error::io(&path, e))?)
        }
        _ => raw,
    })
}

/// Shared state of a [`Tap`].
struct TapState {
    inner: Box<dyn Read + Send>,
    /// Every byte read while `Some`: lets [`sniff_archive`] give back the
    /// raw stream after a decompressor has consumed part of it.
    log: Option<Vec<u8>>,
}

/// A reader that can record what it passes on, with a second handle kept
/// by [`sniff_archive`] after the first went into a decoder.
#[derive(Clone)]
struct Tap(Arc<Mutex<TapState>>);

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self
            .0
            .lock()
            .map_err(|_| io::Error::other("archive reader poisoned"))?;
        let n = state.inner.read(buf)?;
        if let Some(log) = &mut state.log {
            log.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// Whether `block` (the first 512 bytes of a stream) is a tar header: the
/// "ustar" magic at offset 257 (POSIX and GNU), or else a pre-POSIX (v7)
/// header with a valid checksum, which Docker's tar reader also accepts.
fn looks_like_tar(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    if &block[257..262] == b"ustar" {
        return true;
    }
    if block[0] == 0 {
        return false;
    }
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    if digits.is_empty() {
        return false;
    }
    let Ok(stored) = u32::from_str_radix(std::str::from_utf8(&digits).unwrap_or("x"), 8) else {
        return false;
    };
    let sum: u32 = block[..148]
        .iter()
        .chain(&block[156..512])
        .map(|&b| u32::from(b))
        .sum::<u32>()
        + 8 * u32::from(b' ');
    sum == stored
}

/// Wraps any reader, detecting gzip / bzip2 / xz / zstd by magic bytes, or
/// passing plain data through, and tells whether the (decompressed) stream
/// is a tar, by its first header block (see `looks_like_tar`). For a tar it
/// returns the decompressed stream; for anything else — including a
/// compressed file that is not a tar, or that fails to decompress — the
/// original bytes, unchanged, so ADD can copy it as a plain file as Docker
/// does.
pub fn sniff_archive(reader: Box<dyn Read + Send>) -> io::Result<(Box<dyn Read + Send>, bool)> {
    let (head, raw) = peek(reader, 6)?;
    let kind = magic(&head);
    if kind == Magic::Plain {
        let (first, stream) = peek(raw, 512)?;
        return Ok((stream, looks_like_tar(&first)));
    }
    let tap = Tap(Arc::new(Mutex::new(TapState {
        inner: raw,
        log: Some(Vec::new()),
    })));
    let decoder: Option<Box<dyn Read + Send>> = match kind {
        Magic::Gzip => Some(Box::new(flate2::read::MultiGzDecoder::new(tap.clone()))),
        Magic::Bzip2 => Some(Box::new(bzip2::read::MultiBzDecoder::new(tap.clone()))),
        Magic::Xz => Some(Box::new(liblzma::read::XzDecoder::new_multi_decoder(
            tap.clone(),
        ))),
        Magic::Zstd => zstd::stream::read::Decoder::new(tap.clone())
            .ok()
            .map(|d| Box::new(d) as Box<dyn Read + Send>),
        Magic::Plain => None,
    };
    if let Some(decoder) = decoder {
        if let Ok((first, stream)) = peek(decoder, 512) {
            if looks_like_tar(&first) {
                let mut state = tap
                    .0
                    .lock()
                    .map_err(|_| io::Error::other("archive reader poisoned"))?;
                state.log = None;
                drop(state);
                return Ok((stream, true));
            }
        }
    }
    // Not a tar: hand back exactly the bytes read so far, then the rest.
    let log = {
        let mut state = tap
            .0
            .lock()
            .map_err(|_| io::Error::other("archive reader poisoned"))?;
        state.log.take().unwrap_or_default()
    };
    Ok((Box::new(Cursor::new(log).chain(tap)), false))
}
