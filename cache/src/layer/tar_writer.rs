//! A deterministic tar writer.
//!
//! Headers are built by hand rather than through `tar::Builder` because the
//! builder takes metadata from the filesystem, writes GNU long-name entries
//! and would let host details (user names, atime, device numbers of regular
//! files) leak into a layer. Here every byte of a header is a function of the
//! arguments alone, so the same entries always give the same tar, and so the
//! same diffID, on any machine. The layout matches what Go's `archive/tar`
//! writes in PAX format (what Docker and BuildKit produce): ustar headers,
//! with a PAX `x` record block before an entry only when a value does not fit
//! ustar (long or non-ASCII names, large ids/sizes, sub-second or negative
//! mtimes, xattrs as `SCHILY.xattr.*`).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;

/// Size of a tar block.
const BLOCK: usize = 512;
/// Largest value of an 8-byte octal field (7 digits and a NUL).
const MAX_OCTAL_8: u64 = 0o7777777;
/// Largest value of a 12-byte octal field (11 digits and a NUL).
const MAX_OCTAL_12: u64 = 0o77777777777;
/// Copy buffer: large enough that hashing and compression downstream see
/// big writes, small enough to stay in cache.
const COPY_BUF: usize = 128 * 1024;

/// Metadata of one tar entry as rbuild writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryMeta {
    /// Permission bits, including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Sub-second part of the modification time, in nanoseconds.
    pub mtime_nsec: u32,
    /// Extended attributes (name, value), written as `SCHILY.xattr.NAME`
    /// PAX records. Written in name order whatever the order here.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl EntryMeta {
    /// Metadata with `mode`, owned by 0:0, mtime 0 and no xattrs.
    pub fn with_mode(mode: u32) -> Self {
        EntryMeta {
            mode,
            ..EntryMeta::default()
        }
    }

    /// Mode, owner and mtime of a file on disk (no xattrs: the caller
    /// decides which of them belong in an image).
    pub fn from_metadata(md: &std::fs::Metadata) -> Self {
        EntryMeta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            // The kernel never reports nsec outside 0..1e9; clamp anyway
            // rather than trust it.
            mtime_nsec: u32::try_from(md.mtime_nsec()).unwrap_or(0).min(999_999_999),
            xattrs: Vec::new(),
        }
    }
}

/// The kind of a device entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Named pipe.
    Fifo,
}

/// Writes tar entries in the order given (callers pass them sorted) with
/// deterministic headers: ustar/PAX (PAX records for long names/links,
/// xattrs as `SCHILY.xattr.*`, sub-second mtimes), numeric owners only
/// (empty uname/gname), no atime/ctime, device numbers only for devices,
/// mtime clamped to `clamp_mtime` when set (`SOURCE_DATE_EPOCH`: any later
/// mtime becomes it). Paths are relative, without a leading `/` or `./`;
/// directories get a trailing `/`.
///
/// Paths are checked: an absolute path, an empty, `.` or `..` component or a
/// NUL byte is an `InvalidInput` error, because such an entry is refused by
/// [`apply_layer`](super::apply_layer) and by other runtimes.
///
/// The writer never calls `flush` on `W`: a flush in the middle of a stream
/// would change the output of block compressors (gzp), and so the digest.
pub struct TarWriter<W: Write> {
    w: W,
    clamp: Option<i64>,
    buf: Vec<u8>,
    /// With [`TarWriter::recording_split`]: everything but file content.
    split: Option<TarSplit>,
}

/// A tar stream with its file contents taken out: the exact header,
/// padding and end-marker bytes, and for each regular file with content
/// its entry path and size. With the files themselves (the directory the
/// tar was extracted into), it gives back the identical stream; see
/// [`super::split`]. Like tar-split in containers/storage, this lets a
/// layer be kept unpacked only, its blob made when an image needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarSplit {
    /// In stream order.
    pub records: Vec<SplitRecord>,
    /// The record of the file [`TarWriter::file`] wrote last, if it had
    /// content.
    last_file: Option<usize>,
}

/// One piece of a [`TarSplit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitRecord {
    /// Bytes of the stream as they are.
    Raw(Vec<u8>),
    /// `size` bytes of content of the regular file at `path` (the entry's
    /// path, relative).
    File {
        /// Entry path.
        path: String,
        /// Content length.
        size: u64,
        /// The file the content was read from, when it was known not to
        /// change while it was read (see [`TarWriter::note_origin`]).
        origin: Option<Origin>,
    },
}

/// Identity and change times of a source file, as `stat` gives them. A
/// file whose `Origin` is unchanged still has the content read from it
/// then: every write moves ctime, which nobody can set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// mtime, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// ctime, nanoseconds since the epoch.
    pub ctime_ns: i128,
}

impl Origin {
    /// The origin `md` describes.
    pub fn of(md: &std::fs::Metadata) -> Origin {
        Origin {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
        }
    }
}

impl TarSplit {
    /// A split of `records`.
    pub fn new(records: Vec<SplitRecord>) -> Self {
        TarSplit {
            records,
            last_file: None,
        }
    }

    fn raw(&mut self, bytes: &[u8]) {
        match self.records.last_mut() {
            Some(SplitRecord::Raw(v)) => v.extend_from_slice(bytes),
            _ => self.records.push(SplitRecord::Raw(bytes.to_vec())),
        }
    }
}

/// Everything a header is made of.
struct Head<'a> {
    path: &'a str,
    typeflag: u8,
    meta: &'a EntryMeta,
    size: u64,
    link: &'a str,
    dev: (u32, u32),
}

impl<W: Write> TarWriter<W> {
    /// A writer onto `w`; with `clamp_mtime`, later mtimes become it.
    pub fn new(w: W, clamp_mtime: Option<i64>) -> Self {
        TarWriter {
            w,
            clamp: clamp_mtime,
            buf: Vec::new(),
            split: None,
        }
    }

    /// Also records the stream's [`TarSplit`], returned by
    /// [`TarWriter::finish_with_split`].
    pub fn recording_split(mut self) -> Self {
        self.split = Some(TarSplit::default());
        self
    }

    /// Writes bytes that are not file content.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)?;
        if let Some(split) = &mut self.split {
            split.raw(bytes);
        }
        Ok(())
    }

    /// Writes a directory entry (`path/`).
    pub fn dir(&mut self, path: &str, meta: &EntryMeta) -> io::Result<()> {
        let path = entry_path(path, true)?;
        self.header(&Head {
            path: &path,
            typeflag: b'5',
            meta,
            size: 0,
            link: "",
            dev: (0, 0),
        })
    }

    /// Writes a regular file of `size` bytes read from `content`; an error if
    /// `content` is shorter or longer than `size` (the archive is then
    /// unusable: the caller abandons it).
    pub fn file(
        &mut self,
        path: &str,
        meta: &EntryMeta,
        size: u64,
        content: &mut dyn Read,
    ) -> io::Result<()> {
        let path = entry_path(path, false)?;
        self.header(&Head {
            path: &path,
            typeflag: b'0',
            meta,
            size,
            link: "",
            dev: (0, 0),
        })?;
        if self.buf.len() < COPY_BUF {
            self.buf.resize(COPY_BUF, 0);
        }
        if let Some(split) = &mut self.split {
            split.last_file = None;
            if size > 0 {
                split.last_file = Some(split.records.len());
                split.records.push(SplitRecord::File {
                    path: path.clone(),
                    size,
                    origin: None,
                });
            }
        }
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            let n = match content.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{path}: content ended after {} of {size} bytes (file changed while being read?)", size - left),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.w.write_all(&self.buf[..n])?;
            left -= n as u64;
        }
        // The header promised `size` bytes: more content means the source
        // grew while it was read, and silently cutting it would hide that.
        let mut probe = [0u8; 1];
        loop {
            match content.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{path}: content is longer than {size} bytes (file changed while being read?)"),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.pad(size)
    }

    /// Records where the content of the file just written came from (for
    /// a recorded split only): the caller checked the file did not change
    /// while it was read.
    pub fn note_origin(&mut self, origin: Origin) {
        let Some(split) = self.split.as_mut() else {
            return;
        };
        // An empty file has no record: nothing to note.
        if let Some(SplitRecord::File { origin: o, .. }) =
            split.last_file.and_then(|i| split.records.get_mut(i))
        {
            *o = Some(origin);
        }
    }

    /// Writes a symbolic link to `target` (stored as given).
    pub fn symlink(&mut self, path: &str, meta: &EntryMeta, target: &str) -> io::Result<()> {
        let path = entry_path(path, false)?;
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!(
                "{path}: symlink target {target:?} is empty or contains NUL"
            )));
        }
        self.header(&Head {
            path: &path,
            typeflag: b'2',
            meta,
            size: 0,
            link: target,
            dev: (0, 0),
        })
    }

    /// Writes a hard link to `target`, an earlier entry's path (relative,
    /// like entry paths).
    pub fn hardlink(&mut self, path: &str, meta: &EntryMeta, target: &str) -> io::Result<()> {
        let path = entry_path(path, false)?;
        let target = entry_path(target, false)?;
        self.header(&Head {
            path: &path,
            typeflag: b'1',
            meta,
            size: 0,
            link: &target,
            dev: (0, 0),
        })
    }

    /// Writes a character or block device (with its numbers) or a fifo
    /// (whose numbers are ignored).
    pub fn device(
        &mut self,
        path: &str,
        meta: &EntryMeta,
        kind: DeviceKind,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let path = entry_path(path, false)?;
        let (typeflag, dev) = match kind {
            DeviceKind::Char => (b'3', (major, minor)),
            DeviceKind::Block => (b'4', (major, minor)),
            DeviceKind::Fifo => (b'6', (0, 0)),
        };
        self.header(&Head {
            path: &path,
            typeflag,
            meta,
            size: 0,
            link: "",
            dev,
        })
    }

    /// Writes the whiteout `dir/.wh.name` for `path` = `dir/name`: an empty
    /// file, mode 0, owned by 0:0, mtime 0 (clamped).
    pub fn whiteout(&mut self, path: &str) -> io::Result<()> {
        let path = entry_path(path, false)?;
        let wh = match path.rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/.wh.{name}"),
            None => format!(".wh.{path}"),
        };
        self.header(&Head {
            path: &wh,
            typeflag: b'0',
            meta: &EntryMeta::default(),
            size: 0,
            link: "",
            dev: (0, 0),
        })
    }

    /// Writes the opaque marker `dir/.wh..wh..opq` (`dir` may be `""` for
    /// the root): lower layers' content of `dir` is hidden.
    pub fn opaque(&mut self, dir: &str) -> io::Result<()> {
        let path = if dir.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            let dir = entry_path(dir, false)?;
            format!("{dir}/.wh..wh..opq")
        };
        self.header(&Head {
            path: &path,
            typeflag: b'0',
            meta: &EntryMeta::default(),
            size: 0,
            link: "",
            dev: (0, 0),
        })
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns `W`,
    /// unflushed.
    pub fn finish(self) -> io::Result<W> {
        Ok(self.finish_with_split()?.0)
    }

    /// [`TarWriter::finish`], also returning the split when it was
    /// recorded ([`TarWriter::recording_split`]).
    pub fn finish_with_split(mut self) -> io::Result<(W, Option<TarSplit>)> {
        self.put(&[0u8; 2 * BLOCK])?;
        Ok((self.w, self.split))
    }

    /// The underlying writer, without an end-of-archive marker (for callers
    /// abandoning a failed archive).
    pub fn into_inner(self) -> W {
        self.w
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }

    fn header(&mut self, h: &Head<'_>) -> io::Result<()> {
        let meta = h.meta;
        if meta.mtime_nsec >= 1_000_000_000 {
            return Err(invalid(format!(
                "{}: mtime_nsec {} is not below 1e9",
                h.path, meta.mtime_nsec
            )));
        }
        // SOURCE_DATE_EPOCH semantics: anything later than the epoch
        // (including a sub-second part at the epoch second) becomes it.
        let (mtime, nsec) = match self.clamp {
            Some(c) if (meta.mtime, meta.mtime_nsec) > (c, 0) => (c, 0),
            _ => (meta.mtime, meta.mtime_nsec),
        };

        // PAX records, sorted by key so the record block is deterministic.
        let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut block = [0u8; BLOCK];

        match split_ustar(h.path) {
            Some((prefix, name)) => {
                put_str(&mut block[0..100], name);
                put_str(&mut block[345..500], prefix);
            }
            None => {
                pax.insert("path".into(), h.path.as_bytes().to_vec());
                put_str(&mut block[0..100], &to_ascii(h.path));
            }
        }
        if !h.link.is_empty() {
            if h.link.len() <= 100 && h.link.is_ascii() {
                put_str(&mut block[157..257], h.link);
            } else {
                pax.insert("linkpath".into(), h.link.as_bytes().to_vec());
                put_str(&mut block[157..257], &to_ascii(h.link));
            }
        }
        put_octal(&mut block[100..108], u64::from(meta.mode & 0o7777));
        for (range, value, key) in [(108..116, meta.uid, "uid"), (116..124, meta.gid, "gid")] {
            if u64::from(value) <= MAX_OCTAL_8 {
                put_octal(&mut block[range], u64::from(value));
            } else {
                pax.insert(key.into(), value.to_string().into_bytes());
                put_octal(&mut block[range], 0);
            }
        }
        if h.size <= MAX_OCTAL_12 {
            put_octal(&mut block[124..136], h.size);
        } else {
            pax.insert("size".into(), h.size.to_string().into_bytes());
            put_octal(&mut block[124..136], 0);
        }
        match u64::try_from(mtime) {
            Ok(m) if m <= MAX_OCTAL_12 => {
                put_octal(&mut block[136..148], m);
                if nsec != 0 {
                    pax.insert("mtime".into(), pax_time(mtime, nsec).into_bytes());
                }
            }
            _ => {
                put_octal(&mut block[136..148], 0);
                pax.insert("mtime".into(), pax_time(mtime, nsec).into_bytes());
            }
        }
        block[156] = h.typeflag;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        // uname/gname stay empty: owners are numeric only.
        put_octal(&mut block[329..337], u64::from(h.dev.0));
        put_octal(&mut block[337..345], u64::from(h.dev.1));
        for (name, value) in &meta.xattrs {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(invalid(format!(
                    "{}: xattr name {name:?} cannot be stored in a PAX record",
                    h.path
                )));
            }
            pax.insert(format!("SCHILY.xattr.{name}"), value.clone());
        }

        if !pax.is_empty() {
            self.pax_block(h.path, &pax)?;
        }
        set_checksum(&mut block);
        self.put(&block)
    }

    /// Writes a PAX `x` entry holding `records` for the entry `path`.
    fn pax_block(&mut self, path: &str, records: &BTreeMap<String, Vec<u8>>) -> io::Result<()> {
        let mut data = Vec::new();
        for (key, value) in records {
            // "%d %s=%s\n", where the length counts its own digits.
            let base = key.len() + value.len() + 3;
            let mut len = base + digits(base);
            if digits(len) != digits(base) {
                len = base + digits(len);
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.push(b' ');
            data.extend_from_slice(key.as_bytes());
            data.push(b'=');
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        // Named like Go's writer: dir/PaxHeaders.0/base.
        let trimmed = path.trim_end_matches('/');
        let name = match trimmed.rsplit_once('/') {
            Some((dir, base)) => format!("{dir}/PaxHeaders.0/{base}"),
            None => format!("PaxHeaders.0/{trimmed}"),
        };
        let mut block = [0u8; BLOCK];
        put_str(&mut block[0..100], &to_ascii(&name));
        put_octal(&mut block[100..108], 0);
        put_octal(&mut block[108..116], 0);
        put_octal(&mut block[116..124], 0);
        put_octal(&mut block[124..136], data.len() as u64);
        put_octal(&mut block[136..148], 0);
        block[156] = b'x';
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        put_octal(&mut block[329..337], 0);
        put_octal(&mut block[337..345], 0);
        set_checksum(&mut block);
        self.put(&block)?;
        self.put(&data)?;
        self.pad(data.len() as u64)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Checks an entry path and gives it its final form (a trailing `/` for
/// directories).
fn entry_path(path: &str, dir: bool) -> io::Result<String> {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() || trimmed.starts_with('/') || trimmed.contains('\0') {
        return Err(invalid(format!(
            "tar entry path {path:?} must be relative, non-empty and without NUL"
        )));
    }
    if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid(format!(
            "tar entry path {path:?} has an empty, \".\" or \"..\" component"
        )));
    }
    Ok(if dir {
        format!("{trimmed}/")
    } else {
        trimmed.to_string()
    })
}

/// Splits `path` into ustar (prefix, name), as Go's `splitUSTARPath` does;
/// `None` when it needs a PAX `path` record (too long or not ASCII).
fn split_ustar(path: &str) -> Option<(&str, &str)> {
    if !path.is_ascii() {
        return None;
    }
    if path.len() <= 100 {
        return Some(("", path));
    }
    let bytes = path.as_bytes();
    let mut length = path.len();
    if length > 156 {
        length = 156;
    } else if bytes[length - 1] == b'/' {
        length -= 1;
    }
    let i = path[..length].rfind('/')?;
    let nlen = path.len() - i - 1;
    if i == 0 || nlen > 100 || nlen == 0 || i > 155 {
        return None;
    }
    Some((&path[..i], &path[i + 1..]))
}

/// A lossy ASCII rendering for the header field of a name kept in PAX.
fn to_ascii(s: &str) -> String {
    s.chars().filter(char::is_ascii).collect()
}

/// Copies `s` into `field`, truncated, NUL-padded.
fn put_str(field: &mut [u8], s: &str) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Writes `v` as zero-padded octal digits followed by a NUL, filling the
/// field (callers check that `v` fits).
fn put_octal(field: &mut [u8], v: u64) {
    let width = field.len() - 1;
    let s = format!("{v:0width$o}");
    let start = s.len().saturating_sub(width);
    field[..width].copy_from_slice(&s.as_bytes()[start..]);
    field[width] = 0;
}

fn set_checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    // Six octal digits, NUL, space: the traditional layout.
    let s = format!("{sum:06o}");
    block[148..154].copy_from_slice(&s.as_bytes()[s.len() - 6..]);
    block[154] = 0;
    block[155] = b' ';
}

fn digits(n: usize) -> usize {
    n.to_string().len()
}

/// A PAX time value, as Go formats it: seconds, then up to nine fraction
/// digits with trailing zeros trimmed.
fn pax_time(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    let (sign, secs, nanos) = if sec < 0 {
        // -1.25 s is sec -2, nsec 750_000_000.
        ("-", -(sec + 1), 1_000_000_000 - nsec)
    } else {
        ("", sec, nsec)
    };
    let s = format!("{sign}{secs}.{nanos:09}");
    s.trim_end_matches('0').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let mut w = TarWriter::new(Vec::new(), None);
        let meta = EntryMeta {
            xattrs: vec![("user.a".into(), vec![b'x'; 90])],
            ..EntryMeta::with_mode(0o644)
        };
        w.dir("d", &meta).unwrap();
        let out = w.finish().unwrap();
        let data = &out[512..];
        let rec_end = data.iter().position(|&b| b == b'\n').unwrap() + 1;
        let rec = std::str::from_utf8(&data[..rec_end]).unwrap();
        let len: usize = rec.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, rec.len());
    }

    #[test]
    fn ustar_split_and_times() {
        let long = format!("{}/{}", "a".repeat(120), "b".repeat(50));
        assert_eq!(split_ustar(&long), Some((&long[..120], &long[121..])));
        assert_eq!(split_ustar(&"c".repeat(101)), None);
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(-2, 750_000_000), "-1.25");
        let mut f = [0u8; 8];
        put_octal(&mut f, 0o644);
        assert_eq!(&f, b"0000644\0");
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut w = TarWriter::new(Vec::new(), None);
        let m = EntryMeta::default();
        for p in ["/abs", "../x", "a/../b", "", "a//b", "./a"] {
            assert!(w.dir(p, &m).is_err(), "{p}");
        }
    }
}
