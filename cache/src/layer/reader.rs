//! A strict tar reader for applying layers.
//!
//! Not the `tar` crate's reader: it parses PAX records by splitting on
//! newlines, so an xattr value containing `\n` (legal: values are binary and
//! records are length-prefixed) breaks the records after it — including
//! `path` and `size`, which Go-written layers sort after `SCHILY.xattr.*` —
//! and could smuggle records other readers never see. Here records are read
//! by their length, as Go (Docker, BuildKit) reads them, so every tool agrees
//! on what an entry is.
//!
//! Understood: ustar/POSIX (with the prefix field), GNU (long names `L`/`K`,
//! base-256 numbers, old-style sparse files `S`), pre-POSIX v7, PAX local
//! records (`path`, `linkpath`, `size`, `uid`, `gid`, `mtime`,
//! `SCHILY.xattr.*`); global PAX headers are skipped, as Docker does. PAX
//! sparse files (`GNU.sparse.*`) are refused rather than extracted wrong.

use std::io::{self, Read};

const BLOCK: usize = 512;
/// Largest PAX record block or GNU long name we accept: far above any real
/// use (xattrs are at most 64 KiB each on Linux), small enough that a
/// hostile size cannot exhaust memory.
const MAX_META: u64 = 16 << 20;

/// One entry's header, with PAX and GNU extensions applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntryHeader {
    /// Name as stored (no NUL truncation of PAX values: callers check).
    pub path: Vec<u8>,
    /// Link target (symlinks and hard links).
    pub link: Vec<u8>,
    /// The type byte.
    pub typeflag: u8,
    /// Mode bits as stored.
    pub mode: u64,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds (PAX `mtime` fraction).
    pub nsec: u32,
    /// Device numbers (char/block).
    pub dev: (u64, u64),
    /// `SCHILY.xattr.*` records, in order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Size of the content (for sparse files, the expanded size).
    pub size: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads the tar stream entry by entry.
pub(crate) struct TarReader<R: Read> {
    r: R,
    /// Stored data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
    /// Segments (offset, length) of a sparse entry; empty for plain ones.
    sparse: Vec<(u64, u64)>,
    /// Logical position and size within the current entry.
    pos: u64,
    size: u64,
    segment: usize,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            remaining: 0,
            pad: 0,
            sparse: Vec::new(),
            pos: 0,
            size: 0,
            segment: 0,
            done: false,
        }
    }

    /// The underlying reader (positioned after the end-of-archive block).
    pub fn into_inner(self) -> R {
        self.r
    }

    fn block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut b = [0u8; BLOCK];
        let mut got = 0;
        while got < BLOCK {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tar stream ends inside a header",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(Some(b))
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        if copied != n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar stream ends inside an entry",
            ));
        }
        Ok(())
    }

    /// Reads a metadata entry's whole content (PAX records, long names).
    fn meta_data(&mut self, size: u64) -> io::Result<Vec<u8>> {
        if size > MAX_META {
            return Err(bad(format!(
                "tar metadata entry of {size} bytes is too large"
            )));
        }
        let mut v = Vec::with_capacity(size as usize);
        (&mut self.r).take(size).read_to_end(&mut v)?;
        if v.len() as u64 != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar stream ends inside a metadata entry",
            ));
        }
        self.skip(padding(size))?;
        Ok(v)
    }

    /// The next entry, after skipping what is left of the current one;
    /// `None` at the end-of-archive marker (or a clean end of stream).
    pub fn next_entry(&mut self) -> io::Result<Option<EntryHeader>> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        self.sparse.clear();
        self.skip(rest)?;

        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pending = false;
        loop {
            let Some(b) = self.block()? else {
                if pending {
                    return Err(bad(
                        "tar stream ends after extension headers without their entry",
                    ));
                }
                self.done = true;
                return Ok(None);
            };
            if b.iter().all(|&x| x == 0) {
                if pending {
                    return Err(bad(
                        "end of archive after extension headers without their entry",
                    ));
                }
                self.done = true;
                return Ok(None);
            }
            check_checksum(&b)?;
            let typeflag = b[156];
            let size = number(&b[124..136]).map_err(|e| bad(format!("size: {e}")))?;
            match typeflag {
                b'x' | b'X' => {
                    let data = self.meta_data(size)?;
                    pax.extend(parse_pax(&data)?);
                    pending = true;
                    continue;
                }
                b'g' => {
                    // Global records: not applied, as Docker and BuildKit do.
                    self.meta_data(size)?;
                    continue;
                }
                b'L' => {
                    long_name = Some(cstr(&self.meta_data(size)?).to_vec());
                    pending = true;
                    continue;
                }
                b'K' => {
                    long_link = Some(cstr(&self.meta_data(size)?).to_vec());
                    pending = true;
                    continue;
                }
                _ => {}
            }
            return self.entry(&b, size, pax, long_name, long_link).map(Some);
        }
    }

    fn entry(
        &mut self,
        b: &[u8; BLOCK],
        stored_size: u64,
        pax: Vec<(Vec<u8>, Vec<u8>)>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> io::Result<EntryHeader> {
        let posix = &b[257..263] == b"ustar\0";
        let gnu = &b[257..265] == b"ustar  \0";
        let mut h = EntryHeader {
            typeflag: b[156],
            ..EntryHeader::default()
        };
        h.path = match long_name {
            Some(n) => n,
            None => {
                let name = cstr(&b[0..100]);
                let prefix = if posix { cstr(&b[345..500]) } else { &[][..] };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [prefix, b"/", name].concat()
                }
            }
        };
        h.link = long_link.unwrap_or_else(|| cstr(&b[157..257]).to_vec());
        h.mode = number(&b[100..108]).map_err(|e| bad(format!("mode: {e}")))?;
        h.uid = number(&b[108..116]).map_err(|e| bad(format!("uid: {e}")))?;
        h.gid = number(&b[116..124]).map_err(|e| bad(format!("gid: {e}")))?;
        h.mtime = signed_number(&b[136..148]).map_err(|e| bad(format!("mtime: {e}")))?;
        if posix || gnu {
            h.dev = (
                number(&b[329..337]).map_err(|e| bad(format!("device major: {e}")))?,
                number(&b[337..345]).map_err(|e| bad(format!("device minor: {e}")))?,
            );
        }
        let mut size = stored_size;
        for (key, value) in pax {
            let text = || std::str::from_utf8(&value).map_err(|_| bad("non-UTF-8 PAX number"));
            let num = || {
                text()?
                    .parse::<u64>()
                    .map_err(|_| bad(format!("bad PAX {} value", String::from_utf8_lossy(&key))))
            };
            match key.as_slice() {
                b"path" => h.path = value,
                b"linkpath" => h.link = value,
                b"size" => size = num()?,
                b"uid" => h.uid = num()?,
                b"gid" => h.gid = num()?,
                b"mtime" => {
                    let (s, n) = parse_pax_time(&value).ok_or_else(|| bad("bad PAX mtime"))?;
                    h.mtime = s;
                    h.nsec = n;
                }
                k if k.starts_with(b"SCHILY.xattr.") => h.xattrs.push((k[13..].to_vec(), value)),
                k if k.starts_with(b"GNU.sparse.") => {
                    return Err(bad("PAX-format GNU sparse files are not supported"))
                }
                _ => {}
            }
        }
        self.remaining = size;
        self.pad = padding(size);
        self.pos = 0;
        self.segment = 0;
        self.size = size;
        if h.typeflag == b'S' {
            if !gnu {
                return Err(bad("sparse entry without a GNU header"));
            }
            self.read_sparse_map(b, size)?;
        }
        h.size = self.size;
        Ok(h)
    }

    /// Reads an old-style GNU sparse map: four slots in the header, more in
    /// extension blocks; the stored data is the segments back to back.
    fn read_sparse_map(&mut self, b: &[u8; BLOCK], stored: u64) -> io::Result<()> {
        let mut segs = Vec::new();
        let mut push = |slot: &[u8]| -> io::Result<()> {
            if slot.iter().all(|&x| x == 0) {
                return Ok(());
            }
            let off = number(&slot[..12]).map_err(|e| bad(format!("sparse offset: {e}")))?;
            let len = number(&slot[12..24]).map_err(|e| bad(format!("sparse length: {e}")))?;
            segs.push((off, len));
            Ok(())
        };
        for i in 0..4 {
            push(&b[386 + i * 24..410 + i * 24])?;
        }
        let mut extended = b[482] != 0;
        while extended {
            let ext = self
                .block()?
                .ok_or_else(|| bad("tar stream ends inside a sparse map"))?;
            for i in 0..21 {
                push(&ext[i * 24..(i + 1) * 24])?;
            }
            extended = ext[504] != 0;
        }
        let real = number(&b[483..495]).map_err(|e| bad(format!("sparse size: {e}")))?;
        let mut end = 0u64;
        let mut total = 0u64;
        for &(off, len) in &segs {
            let stop = off
                .checked_add(len)
                .ok_or_else(|| bad("sparse segment overflows"))?;
            if off < end || stop > real {
                return Err(bad("sparse segments overlap or exceed the file"));
            }
            end = stop;
            total += len;
        }
        if total != stored {
            return Err(bad("sparse segments do not match the stored data"));
        }
        self.sparse = segs;
        self.size = real;
        Ok(())
    }

    /// Reads content of the current entry (expanding sparse holes).
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.size {
            return Ok(0);
        }
        let (stored_until, hole_until) = if self.sparse.is_empty() {
            (self.size, self.pos)
        } else {
            match self.sparse.get(self.segment) {
                Some(&(off, len)) if self.pos >= off + len => {
                    self.segment += 1;
                    return self.read_data(buf);
                }
                Some(&(off, len)) => (off + len, off),
                None => (self.size, self.size),
            }
        };
        if self.pos < hole_until {
            let n = usize::try_from(hole_until - self.pos)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let want = usize::try_from(stored_until - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar stream ends inside an entry's content",
            ));
        }
        self.pos += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// A NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

/// Accepts the unsigned and the (historic) signed checksum, as Go does.
fn check_checksum(b: &[u8; BLOCK]) -> io::Result<()> {
    let stored = number(&b[148..156]).map_err(|e| bad(format!("checksum: {e}")))?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &x) in b.iter().enumerate() {
        let x = if (148..156).contains(&i) { b' ' } else { x };
        unsigned += u64::from(x);
        signed += i64::from(x as i8);
    }
    if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
        Ok(())
    } else {
        Err(bad("tar header checksum mismatch"))
    }
}

/// An octal field (spaces/NULs around it allowed, empty is 0) or a GNU
/// base-256 one; negative values are refused here.
fn number(field: &[u8]) -> Result<u64, String> {
    let v = signed_number(field)?;
    u64::try_from(v).map_err(|_| "negative".to_string())
}

fn signed_number(field: &[u8]) -> Result<i64, String> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            // Base-256, two's complement, first byte's top bit is the flag.
            let negative = first & 0x40 != 0;
            let mut v: i128 = if negative { -1 } else { 0 };
            for (i, &byte) in field.iter().enumerate() {
                let byte = if i == 0 {
                    (byte & 0x7f) | if negative { 0x80 } else { 0 }
                } else {
                    byte
                };
                v = (v << 8) | i128::from(byte);
                if !(i128::from(i64::MIN)..=i128::from(i64::MAX)).contains(&v) {
                    return Err("base-256 number out of range".into());
                }
            }
            return i64::try_from(v).map_err(|_| "base-256 number out of range".into());
        }
    }
    let s: Vec<u8> = field.iter().copied().filter(|&b| b != 0).collect();
    let s = String::from_utf8(s).map_err(|_| "not octal".to_string())?;
    let s = s.trim_matches(' ');
    if s.is_empty() {
        return Ok(0);
    }
    i64::from_str_radix(s, 8).map_err(|_| format!("{s:?} is not octal"))
}

/// Parses PAX records: `<len> <key>=<value>\n`, `len` counting the whole
/// record, values binary.
fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("PAX record with a bad length"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad("malformed PAX record"));
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("PAX record without '='"))?;
        out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// Parses a PAX time (`123`, `123.456`, `-1.25`) into (seconds, nanoseconds
/// in 0..1e9); `None` if malformed.
pub(crate) fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        Some((secs, nanos))
    } else if nanos == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0"), Ok(0o644));
        assert_eq!(number(b"   644 \0"), Ok(0o644));
        assert_eq!(number(b"\0\0\0\0"), Ok(0));
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Ok(256));
        assert_eq!(signed_number(&[0xff; 8]), Ok(-1));
        assert!(number(b"0000987\0").is_err());
    }

    #[test]
    fn pax_records_are_read_by_length() {
        let recs = parse_pax(b"22 SCHILY.xattr.a=x\ny\n11 path=ab\n").unwrap();
        assert_eq!(
            recs,
            vec![
                (b"SCHILY.xattr.a".to_vec(), b"x\ny".to_vec()),
                (b"path".to_vec(), b"ab".to_vec())
            ]
        );
        assert!(parse_pax(b"99 path=ab\n").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
