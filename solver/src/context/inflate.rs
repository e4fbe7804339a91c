//! A streaming gzip (RFC 1952) / DEFLATE (RFC 1951) decoder.
//!
//! `docker build - < context.tar.gz` must work, and this crate's allowed
//! dependencies have no inflater (the compression crates live in
//! rbuild-cache, which does not export one). Contexts are decompressed once
//! per build, so a simple canonical-Huffman decoder in the style of zlib's
//! `puff.c` is fast enough and small enough to audit. Output is produced in
//! bounded steps, so memory stays at the 32 KiB window plus a buffer no
//! matter how large the stream. Member CRC-32 and length are verified;
//! concatenated members are decoded in turn, as gzip does.

use std::io::{self, Read};

const WINDOW: usize = 32 * 1024;
/// Decode until this much unread output is buffered.
const CHUNK: usize = 64 * 1024;

const LBASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEXT: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DBASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DEXT: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const CLEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

fn bad(msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt gzip stream: {msg}"),
    )
}

/// Canonical Huffman code: symbol counts per length and symbols by code.
#[derive(Debug, Clone)]
struct Huffman {
    count: [u16; 16],
    symbol: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> io::Result<Huffman> {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[l as usize] += 1;
        }
        // Over-subscribed codes are invalid; incomplete ones are allowed
        // (a stream that reaches an unused code fails in decode).
        let mut left: i32 = 1;
        for &c in &count[1..] {
            left <<= 1;
            left -= c as i32;
            if left < 0 {
                return Err(bad("over-subscribed Huffman code"));
            }
        }
        let mut offs = [0u16; 16];
        for len in 1..15 {
            offs[len + 1] = offs[len] + count[len];
        }
        let mut symbol = vec![0u16; lengths.len()];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[offs[l as usize] as usize] = sym as u16;
                offs[l as usize] += 1;
            }
        }
        Ok(Huffman { count, symbol })
    }
}

#[derive(Debug)]
enum State {
    Header,
    BlockStart,
    Stored(usize),
    Huff(Box<(Huffman, Huffman)>),
    Trailer,
    Done,
}

/// Reads decompressed bytes from a gzip stream.
pub(crate) struct GzDecoder<R> {
    input: R,
    inbuf: Vec<u8>,
    inpos: usize,
    inlen: usize,
    bitbuf: u64,
    bitcnt: u32,
    /// Window history followed by not-yet-read output.
    out: Vec<u8>,
    rpos: usize,
    state: State,
    last_block: bool,
    crc: u32,
    size: u32,
    /// Bytes produced in this member (for distance checks).
    produced: usize,
}

impl<R: Read> GzDecoder<R> {
    pub(crate) fn new(input: R) -> Self {
        GzDecoder {
            input,
            inbuf: vec![0; 64 * 1024],
            inpos: 0,
            inlen: 0,
            bitbuf: 0,
            bitcnt: 0,
            out: Vec::with_capacity(WINDOW + 2 * CHUNK),
            rpos: 0,
            state: State::Header,
            last_block: false,
            crc: 0,
            size: 0,
            produced: 0,
        }
    }

    /// Next input byte, or `None` at end of input.
    fn try_byte(&mut self) -> io::Result<Option<u8>> {
        if self.inpos == self.inlen {
            self.inlen = loop {
                match self.input.read(&mut self.inbuf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.inpos = 0;
            if self.inlen == 0 {
                return Ok(None);
            }
        }
        let b = self.inbuf[self.inpos];
        self.inpos += 1;
        Ok(Some(b))
    }

    fn byte(&mut self) -> io::Result<u8> {
        self.try_byte()?
            .ok_or_else(|| bad("unexpected end of data"))
    }

    fn bits(&mut self, need: u32) -> io::Result<u32> {
        while self.bitcnt < need {
            let b = self.byte()? as u64;
            self.bitbuf |= b << self.bitcnt;
            self.bitcnt += 8;
        }
        let v = (self.bitbuf & ((1u64 << need) - 1)) as u32;
        self.bitbuf >>= need;
        self.bitcnt -= need;
        Ok(v)
    }

    fn align(&mut self) {
        self.bitbuf = 0;
        self.bitcnt = 0;
    }

    fn decode(&mut self, h: &Huffman) -> io::Result<u16> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= self.bits(1)? as i32;
            let count = h.count[len] as i32;
            if code - count < first {
                return h
                    .symbol
                    .get((index + (code - first)) as usize)
                    .copied()
                    .ok_or_else(|| bad("bad code"));
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        Err(bad("invalid Huffman code"))
    }

    fn push(&mut self, b: u8) {
        self.out.push(b);
        self.produced += 1;
    }

    fn header(&mut self) -> io::Result<()> {
        let mut h = [0u8; 10];
        for b in &mut h {
            *b = self.byte()?;
        }
        if h[0] != 0x1f || h[1] != 0x8b {
            return Err(bad("not a gzip header"));
        }
        if h[2] != 8 {
            return Err(bad("unknown compression method"));
        }
        let flags = h[3];
        if flags & 4 != 0 {
            let len = self.byte()? as usize | (self.byte()? as usize) << 8;
            for _ in 0..len {
                self.byte()?;
            }
        }
        for flag in [8u8, 16] {
            if flags & flag != 0 {
                while self.byte()? != 0 {}
            }
        }
        if flags & 2 != 0 {
            self.byte()?;
            self.byte()?;
        }
        self.crc = 0;
        self.size = 0;
        self.produced = 0;
        self.last_block = false;
        Ok(())
    }

    fn dynamic_tables(&mut self) -> io::Result<(Huffman, Huffman)> {
        let nlen = self.bits(5)? as usize + 257;
        let ndist = self.bits(5)? as usize + 1;
        let ncode = self.bits(4)? as usize + 4;
        if nlen > 286 || ndist > 30 {
            return Err(bad("bad table counts"));
        }
        let mut lengths = [0u8; 19];
        for &idx in &CLEN_ORDER[..ncode] {
            lengths[idx] = self.bits(3)? as u8;
        }
        let clen = Huffman::new(&lengths)?;
        let mut all = vec![0u8; nlen + ndist];
        let mut i = 0;
        while i < nlen + ndist {
            let sym = self.decode(&clen)?;
            if sym < 16 {
                all[i] = sym as u8;
                i += 1;
                continue;
            }
            let (val, rep) = match sym {
                16 => {
                    if i == 0 {
                        return Err(bad("repeat with no first length"));
                    }
                    (all[i - 1], 3 + self.bits(2)? as usize)
                }
                17 => (0, 3 + self.bits(3)? as usize),
                _ => (0, 11 + self.bits(7)? as usize),
            };
            if i + rep > nlen + ndist {
                return Err(bad("too many lengths"));
            }
            all[i..i + rep].fill(val);
            i += rep;
        }
        if all[256] == 0 {
            return Err(bad("no end-of-block code"));
        }
        Ok((Huffman::new(&all[..nlen])?, Huffman::new(&all[nlen..])?))
    }

    fn fixed_tables() -> io::Result<(Huffman, Huffman)> {
        let mut l = [0u8; 288];
        l[..144].fill(8);
        l[144..256].fill(9);
        l[256..280].fill(7);
        l[280..].fill(8);
        Ok((Huffman::new(&l)?, Huffman::new(&[5u8; 30])?))
    }

    /// Decodes until `CHUNK` bytes are unread or the stream ends.
    fn fill(&mut self) -> io::Result<()> {
        let start = self.out.len();
        while self.out.len() - self.rpos < CHUNK {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Done => break,
                State::Header => {
                    self.header()?;
                    self.state = State::BlockStart;
                }
                State::BlockStart => {
                    if self.last_block {
                        self.state = State::Trailer;
                        continue;
                    }
                    self.last_block = self.bits(1)? == 1;
                    self.state = match self.bits(2)? {
                        0 => {
                            self.align();
                            let len = self.byte()? as usize | (self.byte()? as usize) << 8;
                            let nlen = self.byte()? as usize | (self.byte()? as usize) << 8;
                            if len != !nlen & 0xffff {
                                return Err(bad("stored block length mismatch"));
                            }
                            State::Stored(len)
                        }
                        1 => State::Huff(Box::new(Self::fixed_tables()?)),
                        2 => State::Huff(Box::new(self.dynamic_tables()?)),
                        _ => return Err(bad("invalid block type")),
                    };
                }
                State::Stored(mut left) => {
                    while left > 0 && self.out.len() - self.rpos < CHUNK {
                        let b = self.byte()?;
                        self.push(b);
                        left -= 1;
                    }
                    self.state = if left == 0 {
                        State::BlockStart
                    } else {
                        State::Stored(left)
                    };
                }
                State::Huff(tables) => {
                    let (lit, dist) = &*tables;
                    let mut end = false;
                    while self.out.len() - self.rpos < CHUNK {
                        let sym = self.decode(lit)? as usize;
                        if sym < 256 {
                            self.push(sym as u8);
                        } else if sym == 256 {
                            end = true;
                            break;
                        } else {
                            let i = sym - 257;
                            if i >= 29 {
                                return Err(bad("invalid length symbol"));
                            }
                            let len = LBASE[i] as usize + self.bits(LEXT[i] as u32)? as usize;
                            let d = self.decode(dist)? as usize;
                            if d >= 30 {
                                return Err(bad("invalid distance symbol"));
                            }
                            let distance = DBASE[d] as usize + self.bits(DEXT[d] as u32)? as usize;
                            if distance > self.produced || distance > self.out.len() {
                                return Err(bad("distance too far back"));
                            }
                            for _ in 0..len {
                                let b = self.out[self.out.len() - distance];
                                self.push(b);
                            }
                        }
                    }
                    self.state = if end {
                        State::BlockStart
                    } else {
                        State::Huff(tables)
                    };
                }
                State::Trailer => {
                    // CRC covers all of this member's output so far.
                    self.crc = crc32(self.crc, &self.out[start..]);
                    self.size = self.size.wrapping_add((self.out.len() - start) as u32);
                    return self.trailer();
                }
            }
        }
        self.crc = crc32(self.crc, &self.out[start..]);
        self.size = self.size.wrapping_add((self.out.len() - start) as u32);
        Ok(())
    }

    fn trailer(&mut self) -> io::Result<()> {
        self.align();
        let mut t = [0u8; 8];
        for b in &mut t {
            *b = self.byte()?;
        }
        let crc = u32::from_le_bytes([t[0], t[1], t[2], t[3]]);
        let size = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
        if crc != self.crc || size != self.size {
            return Err(bad("checksum mismatch"));
        }
        // Another member may follow.
        match self.try_byte()? {
            None => self.state = State::Done,
            Some(b) => {
                self.inpos -= 1;
                let _ = b;
                self.state = State::Header;
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for GzDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rpos == self.out.len() {
            // Keep only the window before decoding more.
            if self.out.len() > WINDOW {
                let drop = self.out.len() - WINDOW;
                self.out.drain(..drop);
                self.rpos -= drop;
            }
            while self.rpos == self.out.len() {
                if matches!(self.state, State::Done) {
                    return Ok(0);
                }
                self.fill()?;
            }
        }
        let n = buf.len().min(self.out.len() - self.rpos);
        buf[..n].copy_from_slice(&self.out[self.rpos..self.rpos + n]);
        self.rpos += n;
        Ok(n)
    }
}

fn crc32(crc: u32, data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_known_value() {
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn stored_and_fixed_blocks() {
        // `printf 'hello hello hello\n' | gzip -n` (fixed Huffman block).
        let gz: &[u8] = &[
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9,
            0xc9, 0x57, 0xc8, 0x40, 0x90, 0x5c, 0x00, 0x3b, 0x7c, 0x8a, 0xdf, 0x12, 0x00, 0x00,
            0x00,
        ];
        let mut out = String::new();
        GzDecoder::new(gz).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello hello hello\n");
        // A stored block: header, BFINAL=1 BTYPE=00, LEN=3, NLEN, "abc", trailer.
        let mut s = vec![
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0x01, 3, 0, 0xfc, 0xff, b'a', b'b', b'c',
        ];
        s.extend_from_slice(&crc32(0, b"abc").to_le_bytes());
        s.extend_from_slice(&3u32.to_le_bytes());
        let mut out = Vec::new();
        GzDecoder::new(&s[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }
}
