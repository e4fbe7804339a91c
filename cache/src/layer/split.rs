//! Storing a [`TarSplit`] and reassembling its tar stream from a snapshot.
//!
//! The file is zstd-compressed: a magic line, then records, each a tag
//! byte (`0` raw bytes, `1` file content) and its fields in little-endian
//! lengths. Headers and padding of a 20,000-file layer compress to a few
//! hundred kilobytes.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use sha2::{Digest as _, Sha256};

use super::tar_writer::{Origin, SplitRecord, TarSplit};
use crate::error::{Error, Result};
use crate::Digest;

const MAGIC: &[u8] = b"rbuild tar-split v1\n";
/// Longest entry path or raw run a split file may claim (a damaged file
/// must not make us allocate without bound).
const MAX_FIELD: u64 = 1 << 30;

/// Writes `split` to `path` (compressed).
pub(crate) fn write_split(path: &Path, split: &TarSplit) -> Result<()> {
    let io_err = |e| Error::io(path, e);
    let file = File::create(path).map_err(io_err)?;
    let mut enc = zstd::stream::write::Encoder::new(file, 3).map_err(io_err)?;
    enc.write_all(MAGIC).map_err(io_err)?;
    for record in &split.records {
        match record {
            SplitRecord::Raw(bytes) => {
                enc.write_all(&[0]).map_err(io_err)?;
                enc.write_all(&(bytes.len() as u64).to_le_bytes())
                    .map_err(io_err)?;
                enc.write_all(bytes).map_err(io_err)?;
            }
            SplitRecord::File {
                path: p,
                size,
                origin,
            } => {
                enc.write_all(&[if origin.is_some() { 2 } else { 1 }])
                    .map_err(io_err)?;
                enc.write_all(&(p.len() as u64).to_le_bytes())
                    .map_err(io_err)?;
                enc.write_all(p.as_bytes()).map_err(io_err)?;
                enc.write_all(&size.to_le_bytes()).map_err(io_err)?;
                if let Some(o) = origin {
                    for v in [o.dev, o.ino, o.size] {
                        enc.write_all(&v.to_le_bytes()).map_err(io_err)?;
                    }
                    for v in [o.mtime_ns, o.ctime_ns] {
                        enc.write_all(&v.to_le_bytes()).map_err(io_err)?;
                    }
                }
            }
        }
    }
    enc.finish().map_err(io_err)?;
    Ok(())
}

/// Reads a split written by [`write_split`].
pub(crate) fn read_split(path: &Path) -> Result<TarSplit> {
    let corrupt = |why: &str| Error::Corrupt(format!("tar split {}: {why}", path.display()));
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r =
        BufReader::new(zstd::stream::read::Decoder::new(file).map_err(|e| Error::io(path, e))?);
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic).map_err(|_| corrupt("too short"))?;
    if magic != MAGIC {
        return Err(corrupt("not a tar split"));
    }
    let mut records = Vec::new();
    let read_u64 = |r: &mut dyn Read| -> Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).map_err(|_| corrupt("truncated"))?;
        Ok(u64::from_le_bytes(b))
    };
    let read_bytes = |r: &mut dyn Read, n: u64| -> Result<Vec<u8>> {
        if n > MAX_FIELD {
            return Err(corrupt("field too long"));
        }
        let mut v = vec![0u8; n as usize];
        r.read_exact(&mut v).map_err(|_| corrupt("truncated"))?;
        Ok(v)
    };
    loop {
        let mut tag = [0u8; 1];
        match r.read(&mut tag) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(corrupt("unreadable")),
        }
        match tag[0] {
            0 => {
                let n = read_u64(&mut r)?;
                records.push(SplitRecord::Raw(read_bytes(&mut r, n)?));
            }
            t @ (1 | 2) => {
                let n = read_u64(&mut r)?;
                let p = String::from_utf8(read_bytes(&mut r, n)?)
                    .map_err(|_| corrupt("path is not UTF-8"))?;
                let size = read_u64(&mut r)?;
                let origin = if t == 2 {
                    let (dev, ino, osize) =
                        (read_u64(&mut r)?, read_u64(&mut r)?, read_u64(&mut r)?);
                    let mut b = [0u8; 16];
                    r.read_exact(&mut b).map_err(|_| corrupt("truncated"))?;
                    let mtime_ns = i128::from_le_bytes(b);
                    r.read_exact(&mut b).map_err(|_| corrupt("truncated"))?;
                    let ctime_ns = i128::from_le_bytes(b);
                    Some(Origin {
                        dev,
                        ino,
                        size: osize,
                        mtime_ns,
                        ctime_ns,
                    })
                } else {
                    None
                };
                records.push(SplitRecord::File {
                    path: p,
                    size,
                    origin,
                });
            }
            _ => return Err(corrupt("unknown record")),
        }
    }
    Ok(TarSplit::new(records))
}

/// The tar stream of `split` with file contents read from `root` (the
/// directory it was extracted into), checked against `expected` at the
/// end (unless the caller hashes it): a changed or missing file is an
/// error, never a different layer.
pub(crate) struct SplitReader {
    records: std::vec::IntoIter<SplitRecord>,
    root: OwnedFd,
    root_path: PathBuf,
    current: Current,
    /// `None` when the caller hashes the stream itself.
    hasher: Option<Sha256>,
    expected: Digest,
    done: bool,
}

enum Current {
    None,
    Raw(Vec<u8>, usize),
    File { file: File, left: u64, path: String },
}

impl SplitReader {
    pub(crate) fn new(
        split: TarSplit,
        root: &Path,
        expected: Digest,
        verify: bool,
    ) -> Result<SplitReader> {
        let dir = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(root, e.into()))?;
        Ok(SplitReader {
            records: split.records.into_iter(),
            root: dir,
            root_path: root.to_path_buf(),
            current: Current::None,
            hasher: verify.then(Sha256::new),
            expected,
            done: false,
        })
    }

    /// Opens an entry's file as the extraction resolved it: symlinks in
    /// its parents stay inside the snapshot (absolute ones from its root).
    fn open(&self, path: &str) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(&self.root, path, flags, Mode::empty(), resolve) {
            Ok(fd) => Ok(File::from(fd)),
            // Kernels before 5.6: the entry paths of our own layers never
            // go through symlinks of the same layer.
            Err(rustix::io::Errno::NOSYS) => {
                rustix::fs::openat(&self.root, path, flags, Mode::empty())
                    .map(File::from)
                    .map_err(io::Error::from)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.current {
                Current::Raw(bytes, pos) if *pos < bytes.len() => {
                    let n = buf.len().min(bytes.len() - *pos);
                    buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                    *pos += n;
                    return Ok(n);
                }
                Current::File { file, left, path } if *left > 0 => {
                    let want = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    let n = file.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{}/{path} is shorter than when its layer was made",
                                self.root_path.display()
                            ),
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                _ => {}
            }
            match self.records.next() {
                None => return Ok(0),
                Some(SplitRecord::Raw(bytes)) => self.current = Current::Raw(bytes, 0),
                Some(SplitRecord::File { path, size, .. }) => {
                    // A missing or resized file means the snapshot is not
                    // what the layer was: corrupt, not an I/O failure.
                    let damaged = |why: String| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}/{path}: {why}", self.root_path.display()),
                        )
                    };
                    let file = self.open(&path).map_err(|e| damaged(e.to_string()))?;
                    let len = file.metadata().map_err(|e| damaged(e.to_string()))?.len();
                    if len != size {
                        return Err(damaged(format!("{len} bytes, not {size}")));
                    }
                    self.current = Current::File {
                        file,
                        left: size,
                        path,
                    };
                }
            }
        }
    }
}

impl Read for SplitReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.fill(buf)?;
        let Some(hasher) = &mut self.hasher else {
            return Ok(n);
        };
        hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let got = Digest::from_sha256(std::mem::take(hasher));
            if got != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the snapshot {} no longer gives layer {} (its content hashes to {got}): \
                         it was changed after it was made",
                        self.root_path.display(),
                        self.expected
                    ),
                ));
            }
        }
        Ok(n)
    }
}
