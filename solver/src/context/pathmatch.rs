//! Go's `path.Clean` and `path/filepath.Match`, reimplemented byte for byte.
//!
//! Docker's `.dockerignore` handling cleans every pattern with
//! `filepath.Clean` and validates it with `filepath.Match(p, ".")`, and
//! BuildKit resolves COPY source wildcards by running `filepath.Match` on
//! paths relative to the first wildcard component. Getting either subtly
//! different (how `[` ranges parse, whether `*` crosses `/`, which patterns
//! are errors) would change which files a build sees, so these follow Go's
//! algorithms rather than a glob crate's. Only the Unix behaviour is kept:
//! `/` is the separator and `\` escapes.

/// Why a pattern was refused; Go's `filepath.ErrBadPattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPattern;

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Go's wording, so messages read like Docker's.
        f.write_str("syntax error in pattern")
    }
}

/// Go's `path.Clean`: the shortest equivalent path, `.` for an empty one.
///
/// `..` at the root of an absolute path is dropped; in a relative path it is
/// kept (which is how callers notice a path climbing out of its root).
pub fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|last| *last != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let joined = out.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Go's `filepath.Match(pattern, name)` on Unix.
///
/// `*` matches any run of non-`/` bytes, `?` one non-`/` character,
/// `[...]` a character class (`^` negates, `a-z` ranges, `\` escapes inside
/// and outside classes). The whole `name` must match. An `Err` means the
/// pattern is malformed; like Go, a pattern is only reported malformed if the
/// matcher reaches the bad part or the match fails before it.
pub fn filepath_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let mut pattern = pattern.as_bytes();
    let mut name = name.as_bytes();
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing star matches the rest of the name unless it has a `/`.
            return Ok(!name.contains(&b'/'));
        }
        let attempt = match_chunk(chunk, name);
        if let Ok(Some(t)) = attempt {
            // The last chunk must consume the whole name; otherwise a later
            // star might still find a longer match.
            if t.is_empty() || !pattern.is_empty() {
                name = t;
                continue;
            }
        }
        attempt?;
        if star {
            // Try the chunk at each later position, never skipping a `/`.
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                i += 1;
            }
        }
        // Before answering "no match", make sure the rest of the pattern is
        // well formed, as Go does.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Whether `name` contains an unescaped `*`, `?` or `[`: BuildKit's test for
/// a COPY source path component that needs wildcard matching.
pub fn contains_wildcards(name: &str) -> bool {
    let b = name.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Splits off the leading stars and the chunk up to the next unbracketed star.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = pattern;
    let mut star = false;
    while let Some((&b'*', rest)) = p.split_first() {
        p = rest;
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            // A trailing backslash is reported by match_chunk.
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

/// Decodes one UTF-8 character the way Go's `utf8.DecodeRune` does: an
/// invalid byte decodes as U+FFFD with width 1.
fn decode_rune(b: &[u8]) -> (u32, usize) {
    let Some(&first) = b.first() else {
        return (0xFFFD, 0);
    };
    let n = match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => return (0xFFFD, 1),
    };
    if b.len() >= n {
        if let Some(c) = std::str::from_utf8(&b[..n])
            .ok()
            .and_then(|s| s.chars().next())
        {
            return (c as u32, n);
        }
    }
    (0xFFFD, 1)
}

/// Matches one star-free chunk at the start of `s`, returning what is left.
/// Keeps scanning the chunk after a mismatch so a malformed chunk is still
/// reported as an error, as Go does.
fn match_chunk<'a>(chunk: &[u8], s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    let mut chunk = chunk;
    let mut s = s;
    let mut failed = false;
    while let Some(&c0) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c0 {
            b'[' => {
                let mut r = None;
                if !failed {
                    let (ch, n) = decode_rune(s);
                    s = &s[n..];
                    r = Some(ch);
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_esc(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_esc(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if r.is_some_and(|r| lo <= r && r <= hi) {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_rune(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let lit = if c0 == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&c) => c,
                        None => return Err(BadPattern),
                    }
                } else {
                    c0
                };
                if !failed {
                    if lit != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        Ok(None)
    } else {
        Ok(Some(s))
    }
}

/// One possibly escaped character of a class; the class must go on after it.
fn get_esc(chunk: &[u8]) -> Result<(u32, &[u8]), BadPattern> {
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        _ => {}
    }
    let mut c = chunk;
    if c[0] == b'\\' {
        c = &c[1..];
        if c.is_empty() {
            return Err(BadPattern);
        }
    }
    let (r, n) = decode_rune(c);
    if r == 0xFFFD && n == 1 {
        return Err(BadPattern);
    }
    let rest = &c[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((r, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_clean() {
        for (input, want) in [
            ("", "."),
            ("a/b/", "a/b"),
            ("./a//b/./c", "a/b/c"),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("../../x", "../../x"),
            ("/", "/"),
            ("a/b/../../../c", "../c"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn go_match_table() {
        // From Go's path/filepath match_test.go (the subset moby mirrors).
        let ok = |p: &str, s: &str| filepath_match(p, s);
        assert_eq!(ok("abc", "abc"), Ok(true));
        assert_eq!(ok("*", "abc"), Ok(true));
        assert_eq!(ok("a*", "ab/c"), Ok(false));
        assert_eq!(ok("a*/b", "abc/b"), Ok(true));
        assert_eq!(ok("a*b*c*d*e*/f", "axbxcxdxexxx/f"), Ok(true));
        assert_eq!(ok("a*b?c*x", "abxbbxdbxebxczzx"), Ok(true));
        assert_eq!(ok("ab[^e-g]", "abc"), Ok(true));
        assert_eq!(ok("a?b", "a☺b"), Ok(true));
        assert_eq!(ok("a???b", "a☺b"), Ok(false));
        assert_eq!(ok("[a-ζ]*", "α"), Ok(true));
        assert_eq!(ok("[\\]a]", "]"), Ok(true));
        assert_eq!(ok("[x\\-]", "-"), Ok(true));
        assert_eq!(ok("[]a]", "]"), Err(BadPattern));
        assert_eq!(ok("[x-]", "x"), Err(BadPattern));
        assert_eq!(ok("\\", "a"), Err(BadPattern));
        assert_eq!(ok("[a-b-c]", "a"), Err(BadPattern));
        assert_eq!(ok("a[", "a"), Err(BadPattern));
        assert_eq!(ok("*x", "xxx"), Ok(true));
    }
}
