//! Where COPY reads from: a build context directory or another stage's
//! filesystem, behind one interface.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use super::fsview::{Found, FsView};

/// What kind of file a source entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(String),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A named pipe.
    Fifo,
    /// Anything else (sockets): skipped by copies.
    Other,
}

/// One file of a source, with the metadata a copy needs.
#[derive(Debug, Clone)]
pub struct SrcEntry {
    /// Absolute path inside the source (`/` separated).
    pub path: String,
    /// Where its content is on disk.
    pub real: PathBuf,
    /// The file type.
    pub kind: Kind,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds part.
    pub mtime_nsec: u32,
    /// Identity and change time, for content memos: (dev, ino, ctime, ctime_nsec, nlink).
    pub stat: (u64, u64, i64, u32, u64),
}

impl SrcEntry {
    /// Builds an entry from a path's metadata.
    pub fn from_meta(path: String, real: PathBuf, meta: &std::fs::Metadata) -> io::Result<Self> {
        let ft = meta.file_type();
        let major = |dev: u64| ((dev >> 8) & 0xfff) as u32 | ((dev >> 32) & !0xfff) as u32;
        let minor = |dev: u64| (dev & 0xff) as u32 | ((dev >> 12) & !0xff) as u32;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink(std::fs::read_link(&real)?.to_string_lossy().into_owned())
        } else if ft.is_char_device() {
            Kind::Char(major(meta.rdev()), minor(meta.rdev()))
        } else if ft.is_block_device() {
            Kind::Block(major(meta.rdev()), minor(meta.rdev()))
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            Kind::Other
        };
        Ok(SrcEntry {
            path,
            real,
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            size: if ft.is_file() { meta.len() } else { 0 },
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
            stat: (
                meta.dev(),
                meta.ino(),
                meta.ctime(),
                meta.ctime_nsec().clamp(0, 999_999_999) as u32,
                meta.nlink(),
            ),
        })
    }

    /// The last path component.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or("")
    }
}

/// A tree COPY can read.
pub trait Source: Send + Sync {
    /// Looks a path up; symlinks in parents are followed inside the source,
    /// the last component only if `follow`.
    fn lookup(&self, path: &str, follow: bool) -> io::Result<Option<SrcEntry>>;
    /// The entries directly in a directory, sorted by name.
    fn list(&self, dir: &str) -> io::Result<Vec<SrcEntry>>;
    /// Why a path that is missing is missing, if there is more to say
    /// (e.g. "excluded by .dockerignore").
    fn explain_missing(&self, _path: &str) -> Option<String> {
        None
    }

    /// Everything under a directory, parents before their contents.
    fn walk(&self, dir: &str) -> io::Result<Vec<SrcEntry>> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_string()];
        while let Some(d) = stack.pop() {
            let mut children = self.list(&d)?;
            children.reverse();
            for c in children {
                if c.kind == Kind::Dir {
                    stack.push(c.path.clone());
                }
                out.push(c);
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// COPY's wildcard matching.
    fn glob(&self, pattern: &str) -> io::Result<Vec<SrcEntry>> {
        glob(self, pattern)
    }

    /// A content checksum of `entries` (paths, types, modes, owners, link
    /// targets and file contents; never times), for cache keys. `None` when
    /// the source's identity already covers its content (another stage's
    /// filesystem is keyed by how it was built).
    fn checksum(&self, _entries: &[SrcEntry]) -> io::Result<Option<String>> {
        Ok(None)
    }
}

impl Source for FsView {
    fn lookup(&self, path: &str, follow: bool) -> io::Result<Option<SrcEntry>> {
        match FsView::lookup(self, path, follow)? {
            Some(Found { path, real, meta }) => SrcEntry::from_meta(path, real, &meta).map(Some),
            None => Ok(None),
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<SrcEntry>> {
        self.read_dir(dir)?
            .into_values()
            .map(|f| SrcEntry::from_meta(f.path, f.real, &f.meta))
            .collect()
    }
}

/// Go's `path.Match` for one path component (a malformed pattern matches nothing).
pub fn match_component(pattern: &str, name: &str) -> bool {
    crate::context::pathmatch::filepath_match(pattern, name).unwrap_or(false)
}

/// Whether a path has glob metacharacters.
pub fn has_wildcard(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Expands a wildcard path over a source, component by component.
pub fn glob<S: Source + ?Sized>(source: &S, pattern: &str) -> io::Result<Vec<SrcEntry>> {
    let parts: Vec<&str> = pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut current: Vec<String> = vec!["/".to_string()];
    let mut last: Vec<SrcEntry> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let is_last = i + 1 == parts.len();
        let mut next = Vec::new();
        let mut entries = Vec::new();
        for dir in &current {
            if has_wildcard(part) {
                for e in source.list(dir)? {
                    if match_component(part, e.name()) {
                        next.push(e.path.clone());
                        entries.push(e);
                    }
                }
            } else {
                let path = if dir == "/" {
                    format!("/{part}")
                } else {
                    format!("{dir}/{part}")
                };
                if let Some(e) = source.lookup(&path, !is_last)? {
                    next.push(e.path.clone());
                    entries.push(e);
                }
            }
        }
        if !is_last {
            // Only directories (or links to them) can hold the next part.
            let mut dirs = Vec::new();
            for p in next {
                if let Some(e) = source.lookup(&p, true)? {
                    if e.kind == Kind::Dir {
                        dirs.push(e.path);
                    }
                }
            }
            current = dirs;
        } else {
            last = entries;
        }
    }
    last.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(last)
}

/// A build context directory as a COPY source.
pub struct ContextSource {
    ctx: crate::context::Context,
}

impl ContextSource {
    /// Wraps an opened context.
    pub fn new(ctx: crate::context::Context) -> Self {
        ContextSource { ctx }
    }

    /// The context.
    pub fn context(&self) -> &crate::context::Context {
        &self.ctx
    }

    fn entry(&self, e: crate::context::Entry) -> io::Result<SrcEntry> {
        use crate::context::EntryKind;
        let real = self.ctx.abs_path(&e.path).map_err(io::Error::other)?;
        let kind = match e.kind {
            EntryKind::File => Kind::File,
            EntryKind::Dir => Kind::Dir,
            EntryKind::Symlink { target } => Kind::Symlink(target),
            EntryKind::Other => Kind::Other,
        };
        let path = if e.path == "." {
            "/".to_string()
        } else {
            format!("/{}", e.path)
        };
        Ok(SrcEntry {
            path,
            real,
            kind,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            stat: (e.dev, e.ino, e.ctime, e.ctime_nsec, e.nlink),
        })
    }

    fn context_entry(&self, e: &SrcEntry) -> crate::context::Entry {
        use crate::context::{Entry, EntryKind};
        let kind = match &e.kind {
            Kind::File => EntryKind::File,
            Kind::Dir => EntryKind::Dir,
            Kind::Symlink(t) => EntryKind::Symlink { target: t.clone() },
            _ => EntryKind::Other,
        };
        let (dev, ino, ctime, ctime_nsec, nlink) = e.stat;
        let type_bits = match kind {
            EntryKind::File => 0o100000,
            EntryKind::Dir => 0o040000,
            EntryKind::Symlink { .. } => 0o120000,
            EntryKind::Other => 0,
        };
        Entry {
            path: rel(&e.path),
            kind,
            mode: e.mode | type_bits,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            ctime,
            ctime_nsec,
            dev,
            ino,
            nlink,
        }
    }
}

fn rel(path: &str) -> String {
    let p = path.trim_start_matches('/');
    if p.is_empty() {
        ".".into()
    } else {
        p.to_string()
    }
}

impl Source for ContextSource {
    fn lookup(&self, path: &str, follow: bool) -> io::Result<Option<SrcEntry>> {
        let mut r = rel(path);
        if follow {
            r = self.ctx.resolve_scoped(&r).map_err(io::Error::other)?;
        }
        match self.ctx.lookup(&r).map_err(io::Error::other)? {
            crate::context::Lookup::Found(e) => self.entry(e).map(Some),
            _ => Ok(None),
        }
    }

    fn list(&self, dir: &str) -> io::Result<Vec<SrcEntry>> {
        let prefix = rel(dir);
        let depth = if prefix == "." {
            1
        } else {
            prefix.split('/').count() + 1
        };
        self.ctx
            .walk(&prefix)
            .map_err(io::Error::other)?
            .into_iter()
            .filter(|e| e.path.split('/').count() == depth)
            .map(|e| self.entry(e))
            .collect()
    }

    fn walk(&self, dir: &str) -> io::Result<Vec<SrcEntry>> {
        self.ctx
            .walk(&rel(dir))
            .map_err(io::Error::other)?
            .into_iter()
            .map(|e| self.entry(e))
            .collect()
    }

    fn glob(&self, pattern: &str) -> io::Result<Vec<SrcEntry>> {
        self.ctx
            .glob(&rel(pattern))
            .map_err(io::Error::other)?
            .into_iter()
            .map(|e| self.entry(e))
            .collect()
    }

    fn checksum(&self, entries: &[SrcEntry]) -> io::Result<Option<String>> {
        let entries: Vec<crate::context::Entry> =
            entries.iter().map(|e| self.context_entry(e)).collect();
        let digest = self.ctx.checksum(&entries).map_err(io::Error::other)?;
        Ok(Some(digest.to_string()))
    }

    fn explain_missing(&self, path: &str) -> Option<String> {
        match self.ctx.lookup(&rel(path)) {
            Ok(crate::context::Lookup::Excluded(_)) => Some("excluded by .dockerignore".into()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_path_match() {
        assert!(match_component("*.go", "main.go"));
        assert!(!match_component("*.go", "main.rs"));
        assert!(match_component("[a-c]x", "bx"));
    }
}
