//! The build context: `.dockerignore`, walking, lookups, COPY wildcards,
//! content checksums with a persistent memo, and contexts sent as a tar.
//!
//! Semantics follow BuildKit (the Dockerfile frontend plus
//! `tonistiigi/fsutil` and `moby/patternmatcher`), which is what `docker
//! build` runs today:
//!
//! - Excluded paths are simply absent from the context. An excluded
//!   directory that holds re-included entries (`dir` + `!dir/keep`) is
//!   present, with only those entries under it, as fsutil sends it.
//! - The Dockerfile and `.dockerignore` get no special treatment here. With
//!   BuildKit the frontend reads the Dockerfile through its own channel, so
//!   it is always available to parse, but `COPY Dockerfile .` fails if
//!   `.dockerignore` excludes it. (The legacy builder's CLI re-added both
//!   files to the upload and the daemon deleted them again before COPY ran,
//!   with the same visible result.) Callers read the Dockerfile with
//!   [`Context::read_file`], which ignores `.dockerignore`. BuildKit also
//!   prefers `<Dockerfile>.dockerignore` next to the Dockerfile over the
//!   context's `.dockerignore`; picking the file is the caller's job.
//! - Paths never leave the root. Walking and [`Context::lookup`] never follow
//!   symlinks (every directory is opened with `O_NOFOLLOW` relative to its
//!   parent's descriptor, so a symlink swapped in mid-walk is not followed
//!   either). [`Context::resolve_scoped`] follows symlinks the way BuildKit
//!   resolves a COPY source, clamping at the root.
//! - A path that climbs out with `..` is refused with "forbidden path
//!   outside the build context", the legacy builder's wording. BuildKit
//!   itself silently clamps such a path to the root (moby/buildkit#2131);
//!   rbuild prefers the clear error.
//!
//! Nothing here is async; the parallel hashing uses rayon, so call it from
//! `spawn_blocking`, never on a tokio worker.

mod ignore;
mod memo;
pub mod pathmatch;
mod regex;
mod untar;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use rayon::prelude::*;
use rbuild_cache::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use sha2::{Digest as _, Sha256};

pub use ignore::DockerIgnore;
pub use memo::{ChecksumMemo, CounterSnapshot, Counters, MemoStatus};
pub use untar::TarContext;

/// Errors from the build context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// What was being accessed.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A path used `..` to climb above the context root.
    #[error("forbidden path outside the build context: {path}")]
    OutsideContext {
        /// The path as given.
        path: String,
    },
    /// A `.dockerignore` line Docker would refuse.
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    BadIgnorePattern {
        /// The pattern line (cleaned).
        pattern: String,
        /// Why.
        reason: String,
    },
    /// A malformed COPY wildcard.
    #[error("invalid wildcard {pattern:?}: syntax error in pattern")]
    BadWildcard {
        /// The pattern as given.
        pattern: String,
    },
    /// A path that must be a directory is not one.
    #[error("{path}: not a directory")]
    NotADirectory {
        /// Context-relative path.
        path: String,
    },
    /// A path that must exist does not (or is excluded by .dockerignore).
    #[error("{path}: not found{}", if *.excluded { " (excluded by .dockerignore)" } else { "" })]
    NotFound {
        /// Context-relative path.
        path: String,
        /// Whether it exists but `.dockerignore` excludes it.
        excluded: bool,
    },
    /// A file name that is not UTF-8 inside the context.
    #[error("{path}: file name is not valid UTF-8; rbuild cannot send it")]
    NotUtf8 {
        /// The name, lossily decoded.
        path: String,
    },
    /// Symlink resolution went round too often.
    #[error("{path}: too many levels of symbolic links")]
    TooManyLinks {
        /// Context-relative path.
        path: String,
    },
    /// A context tar entry that could write outside the destination.
    #[error("refusing tar entry {path:?}: {reason}")]
    HostileTar {
        /// The entry's name.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A context tar that could not be read.
    #[error("reading context tar: {0}")]
    Tar(String),
    /// The checksum memo database failed.
    #[error("checksum memo: {0}")]
    Memo(String),
}

/// The context module's result type.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}

fn errno_err(path: &str) -> impl FnOnce(rustix::io::Errno) -> Error + '_ {
    move |e| Error::Io {
        path: path.to_string(),
        source: e.into(),
    }
}

/// What kind of file an [`Entry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, with its target as stored (never followed).
    Symlink {
        /// The link's target text.
        target: String,
    },
    /// A fifo, socket or device.
    Other,
}

/// One file in the context, with its `lstat` metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the context root, `/`-separated, no leading `./`; `.` is
    /// the root itself.
    pub path: String,
    /// File type (and symlink target).
    pub kind: EntryKind,
    /// `st_mode`: type and permission bits, including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: u32,
    /// Status change time, seconds (part of the memo key).
    pub ctime: i64,
    /// Status change time, nanoseconds.
    pub ctime_nsec: u32,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Hard link count.
    pub nlink: u64,
}

impl Entry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == EntryKind::File
    }
}

/// The answer of [`Context::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The path is in the context.
    Found(Entry),
    /// The path exists on disk but `.dockerignore` leaves it out, so COPY
    /// can say "excluded by .dockerignore" rather than just "not found".
    Excluded(Entry),
    /// Nothing there (or a path through a symlink or a non-directory).
    Missing,
}

impl Lookup {
    /// The entry if it is in the context.
    pub fn found(self) -> Option<Entry> {
        match self {
            Lookup::Found(e) => Some(e),
            _ => None,
        }
    }
}

/// A build context directory with its `.dockerignore` rules.
#[derive(Debug)]
pub struct Context {
    root: PathBuf,
    root_fd: OwnedFd,
    ignore: DockerIgnore,
    memo: Option<Arc<ChecksumMemo>>,
    counters: Arc<Counters>,
}

/// Maximum symlinks followed while resolving one path (as `fs.RootPath`).
const MAX_SYMLINKS: usize = 255;

/// Splits a context-relative path into clean components. A leading `/` is
/// the context root (COPY treats `/x` as `x`). `..` that climbs above the
/// root is refused.
fn components(rel: &str) -> Result<Vec<&str>> {
    let mut out: Vec<&str> = Vec::new();
    for comp in rel.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(Error::OutsideContext {
                        path: rel.to_string(),
                    });
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn is_not_found(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOENT || e == rustix::io::Errno::NOTDIR || e == rustix::io::Errno::LOOP
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

// The stat field types differ between architectures; these conversions are
// identities on some and widenings on others.
#[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
fn entry_from_stat(path: String, st: &rustix::fs::Stat, target: Option<String>) -> Entry {
    let ft = FileType::from_raw_mode(st.st_mode as _);
    let kind = match ft {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink {
            target: target.unwrap_or_default(),
        },
        _ => EntryKind::Other,
    };
    Entry {
        path,
        kind,
        mode: st.st_mode as u32,
        uid: st.st_uid as u32,
        gid: st.st_gid as u32,
        size: st.st_size.max(0) as u64,
        mtime: st.st_mtime as i64,
        mtime_nsec: st.st_mtime_nsec as u32,
        ctime: st.st_ctime as i64,
        ctime_nsec: st.st_ctime_nsec as u32,
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        nlink: st.st_nlink as u64,
    }
}

fn is_dir_mode(mode: rustix::fs::RawMode) -> bool {
    FileType::from_raw_mode(mode) == FileType::Directory
}

fn is_symlink_mode(mode: rustix::fs::RawMode) -> bool {
    FileType::from_raw_mode(mode) == FileType::Symlink
}

impl Context {
    /// Opens the context directory `root` (which may itself be reached
    /// through a symlink) with the given ignore rules.
    pub fn open(root: &Path, ignore: DockerIgnore) -> Result<Self> {
        let root = root
            .canonicalize()
            .map_err(io_err(root.display().to_string()))?;
        let root_fd = rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Io {
            path: root.display().to_string(),
            source: e.into(),
        })?;
        Ok(Context {
            root,
            root_fd,
            ignore,
            memo: None,
            counters: Arc::new(Counters::default()),
        })
    }

    /// Extracts a context tar (plain or compressed, as `docker build - <
    /// ctx.tar[.gz]` accepts) into `dest_dir` and opens it. `ignore` `None`
    /// reads `.dockerignore` from the extracted tree. If `dockerfile` names
    /// a file in the tar, its bytes are returned too. See [`TarContext`].
    pub fn from_tar<R: Read + Send + 'static>(
        reader: R,
        dest_dir: &Path,
        ignore: Option<DockerIgnore>,
        dockerfile: Option<&str>,
    ) -> Result<TarContext> {
        untar::from_tar(reader, dest_dir, ignore, dockerfile)
    }

    /// Uses `memo` for file checksums; the context then reports into the
    /// memo's counters.
    pub fn with_memo(mut self, memo: Arc<ChecksumMemo>) -> Self {
        self.counters = memo.counters().clone();
        self.memo = Some(memo);
        self
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The ignore rules in force.
    pub fn ignore(&self) -> &DockerIgnore {
        &self.ignore
    }

    /// Work counters (stat calls, bytes read, memo hits, ...).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The absolute host path of a context-relative path (lexically; no
    /// symlinks resolved). Refuses `..` escapes.
    pub fn abs_path(&self, rel_path: &str) -> Result<PathBuf> {
        let comps = components(rel_path)?;
        let mut p = self.root.clone();
        p.extend(comps);
        Ok(p)
    }

    fn stat_at<P: rustix::path::Arg>(
        &self,
        fd: &OwnedFd,
        name: P,
    ) -> rustix::io::Result<rustix::fs::Stat> {
        self.counters.stat_calls.fetch_add(1, Ordering::Relaxed);
        rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)
    }

    /// Opens the directory at `comps` without following any symlink.
    fn open_dir(&self, comps: &[&str]) -> rustix::io::Result<OwnedFd> {
        let mut fd = rustix::fs::openat(&self.root_fd, ".", DIR_FLAGS, Mode::empty())?;
        for comp in comps {
            fd = rustix::fs::openat(&fd, *comp, DIR_FLAGS, Mode::empty())?;
        }
        Ok(fd)
    }

    fn read_link_at(fd: &OwnedFd, name: &str, path: &str) -> Result<String> {
        let target = rustix::fs::readlinkat(fd, name, Vec::new()).map_err(errno_err(path))?;
        target.into_string().map_err(|_| Error::NotUtf8 {
            path: format!("{path} (symlink target)"),
        })
    }

    /// `lstat` of a context path, without following symlinks anywhere.
    /// `Ok(None)` if it does not exist (or a parent is not a directory).
    fn stat_path(&self, comps: &[&str]) -> Result<Option<Entry>> {
        let path = comps.join("/");
        let Some((name, parent)) = comps.split_last() else {
            self.counters.stat_calls.fetch_add(1, Ordering::Relaxed);
            let st = rustix::fs::fstat(&self.root_fd).map_err(errno_err("."))?;
            return Ok(Some(entry_from_stat(".".into(), &st, None)));
        };
        let dir = match self.open_dir(parent) {
            Ok(fd) => fd,
            Err(e) if is_not_found(e) => return Ok(None),
            Err(e) => return Err(errno_err(&path)(e)),
        };
        let st = match self.stat_at(&dir, *name) {
            Ok(st) => st,
            Err(e) if is_not_found(e) => return Ok(None),
            Err(e) => return Err(errno_err(&path)(e)),
        };
        let target = if is_symlink_mode(st.st_mode) {
            Some(Self::read_link_at(&dir, name, &path)?)
        } else {
            None
        };
        Ok(Some(entry_from_stat(path, &st, target)))
    }

    /// The exclusion state of a path, evaluating each ancestor in turn.
    fn exclusion_chain(&self, comps: &[&str]) -> (bool, Option<Vec<bool>>) {
        if self.ignore.is_empty() {
            return (false, None);
        }
        let mut info: Option<Vec<bool>> = None;
        let mut excluded = false;
        let mut path = String::new();
        for comp in comps {
            path = join(&path, comp);
            let (m, next) = self.ignore.step(&path, info.as_deref());
            excluded = m;
            info = Some(next);
        }
        (excluded, info)
    }

    /// Every entry in the context under `rel_dir` (`.` for all), minus
    /// `.dockerignore` exclusions, depth first with siblings in byte order,
    /// so each directory comes right before its contents. Symlinks are
    /// listed, never followed. `rel_dir` itself is not listed, and must be a
    /// real directory (resolve symlinks with [`Context::resolve_scoped`]).
    pub fn walk(&self, rel_dir: &str) -> Result<Vec<Entry>> {
        self.walk_limited(rel_dir, None)
    }

    fn walk_limited(&self, rel_dir: &str, max_depth: Option<usize>) -> Result<Vec<Entry>> {
        let comps = components(rel_dir)?;
        let dir_path = if comps.is_empty() {
            ".".to_string()
        } else {
            comps.join("/")
        };
        let fd = match self.open_dir(&comps) {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::NOENT => {
                return Err(Error::NotFound {
                    path: dir_path,
                    excluded: false,
                })
            }
            Err(e) if e == rustix::io::Errno::NOTDIR || e == rustix::io::Errno::LOOP => {
                return Err(Error::NotADirectory { path: dir_path })
            }
            Err(e) => return Err(errno_err(&dir_path)(e)),
        };
        let (excluded, info) = self.exclusion_chain(&comps);
        if excluded && !self.ignore.may_include_under(&dir_path) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut pending = Vec::new();
        let mut walker = Walker {
            ctx: self,
            pending: &mut pending,
            out: &mut out,
            max_depth,
        };
        walker.walk_dir(&fd, &dir_path, info.as_deref(), 1)?;
        Ok(out)
    }

    /// Looks up one path without following symlinks, telling apart a path
    /// that is missing from one that `.dockerignore` excludes.
    pub fn lookup(&self, rel_path: &str) -> Result<Lookup> {
        let comps = components(rel_path)?;
        let Some(entry) = self.stat_path(&comps)? else {
            return Ok(Lookup::Missing);
        };
        let (excluded, _) = self.exclusion_chain(&comps);
        if !excluded {
            return Ok(Lookup::Found(entry));
        }
        // fsutil still sends an excluded directory that holds re-included
        // entries.
        if entry.is_dir()
            && self.ignore.may_include_under(&entry.path)
            && !self.walk(&entry.path)?.is_empty()
        {
            return Ok(Lookup::Found(entry));
        }
        Ok(Lookup::Excluded(entry))
    }

    /// Resolves symlinks in `rel_path` the way BuildKit resolves a COPY
    /// source (`fs.RootPath`): every component, the last included, is
    /// followed; absolute targets are taken relative to the context root and
    /// `..` never climbs above it. Components that do not exist are kept
    /// as written. Returns a clean context-relative path (`.` for the root).
    pub fn resolve_scoped(&self, rel_path: &str) -> Result<String> {
        let mut todo: std::collections::VecDeque<String> = components(rel_path)?
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(comp) = todo.pop_front() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(comp);
            let refs: Vec<&str> = resolved.iter().map(String::as_str).collect();
            let Some(entry) = self.stat_path(&refs)? else {
                continue;
            };
            if let EntryKind::Symlink { target } = entry.kind {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Error::TooManyLinks {
                        path: rel_path.to_string(),
                    });
                }
                resolved.pop();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for (i, t) in target.split('/').enumerate() {
                    todo.insert(i, t.to_string());
                }
            }
        }
        Ok(if resolved.is_empty() {
            ".".into()
        } else {
            resolved.join("/")
        })
    }

    /// COPY source wildcard matching, as BuildKit does it: the components
    /// before the first one with `*`, `?` or `[` are resolved with
    /// [`Context::resolve_scoped`]; below that directory every entry whose
    /// relative path matches the rest with Go's `filepath.Match` is
    /// returned (a matched directory's contents are not visited further).
    /// `*` never crosses `/`; there is no `**`. Only entries in the context
    /// (not excluded) can match. Without wildcards this is a scoped lookup.
    pub fn glob(&self, pattern: &str) -> Result<Vec<Entry>> {
        let comps = components(pattern)?;
        let split = comps
            .iter()
            .position(|c| pathmatch::contains_wildcards(c))
            .unwrap_or(comps.len());
        let base = self.resolve_scoped(&comps[..split].join("/"))?;
        if split == comps.len() {
            return Ok(self.lookup(&base)?.found().into_iter().collect());
        }
        let rest = comps[split..].join("/");
        // Validate up front so a malformed pattern is an error, not "no match".
        if pathmatch::filepath_match(&rest, "").is_err() {
            return Err(Error::BadWildcard {
                pattern: pattern.to_string(),
            });
        }
        match self.lookup(&base)? {
            Lookup::Found(e) if e.is_dir() => {}
            _ => return Ok(Vec::new()),
        }
        // Without a class, a match has exactly as many components as the
        // pattern, so deeper directories need not be read.
        let max_depth = (!rest.contains('[')).then(|| rest.split('/').count());
        let entries = self.walk_limited(&base, max_depth)?;
        let prefix_len = if base == "." { 0 } else { base.len() + 1 };
        let mut out = Vec::new();
        let mut skip: Option<String> = None;
        for e in entries {
            let rel = &e.path[prefix_len..];
            if let Some(s) = &skip {
                if rel.len() > s.len()
                    && rel.starts_with(s.as_str())
                    && rel.as_bytes()[s.len()] == b'/'
                {
                    continue;
                }
            }
            let matched =
                pathmatch::filepath_match(&rest, rel).map_err(|_| Error::BadWildcard {
                    pattern: pattern.to_string(),
                })?;
            if matched {
                if e.is_dir() {
                    skip = Some(rel.to_string());
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Opens a regular file for reading without following a symlink at any
    /// component. Non-blocking so a fifo swapped in cannot hang the build.
    fn open_file(&self, rel_path: &str) -> Result<File> {
        let comps = components(rel_path)?;
        let Some((name, parent)) = comps.split_last() else {
            return Err(Error::NotFound {
                path: rel_path.to_string(),
                excluded: false,
            });
        };
        let dir = self.open_dir(parent).map_err(errno_err(rel_path))?;
        let fd = rustix::fs::openat(
            &dir,
            *name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )
        .map_err(errno_err(rel_path))?;
        let st = rustix::fs::fstat(&fd).map_err(errno_err(rel_path))?;
        if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile {
            return Err(Error::Io {
                path: rel_path.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        Ok(File::from(fd))
    }

    /// Reads a file of the context *ignoring* `.dockerignore` (for the
    /// Dockerfile and `.dockerignore` themselves). Symlinks are resolved
    /// within the root first.
    pub fn read_file(&self, rel_path: &str) -> Result<Vec<u8>> {
        let resolved = self.resolve_scoped(rel_path)?;
        let mut f = self.open_file(&resolved)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err(resolved))?;
        Ok(buf)
    }

    /// The sha256 of a file's content, using the memo when one is set.
    pub fn file_digest(&self, entry: &Entry) -> Result<[u8; 32]> {
        let key = memo::MemoKey::of(entry);
        if let Some(memo) = &self.memo {
            if let Some(d) = memo.lookup_many(&[key])[0] {
                self.counters.memo_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(d);
            }
            self.counters.memo_misses.fetch_add(1, Ordering::Relaxed);
        }
        self.hash_file(entry)
    }

    fn hash_file(&self, entry: &Entry) -> Result<[u8; 32]> {
        let started = SystemTime::now();
        let f = self.open_file(&entry.path)?;
        let (digest, unchanged) =
            memo::hash_open_file(f, entry, &self.counters).map_err(io_err(entry.path.clone()))?;
        if let (Some(memo), true) = (&self.memo, unchanged) {
            memo.record(entry, digest, started);
        }
        Ok(digest)
    }

    /// The content checksum of `entries` (in the given order): sha256 over
    /// each entry's path, type, mode bits, owner, symlink target and file
    /// content digest. Timestamps never count, so touching files changes
    /// nothing. File contents come from the memo when their (dev, inode,
    /// size, mtime, ctime) are unchanged; the rest are read in parallel.
    pub fn checksum(&self, entries: &[Entry]) -> Result<Digest> {
        let files: Vec<&Entry> = entries.iter().filter(|e| e.is_file()).collect();
        let mut digests: Vec<Option<[u8; 32]>> = match &self.memo {
            Some(memo) => {
                let keys: Vec<memo::MemoKey> = files.iter().map(|e| memo::MemoKey::of(e)).collect();
                memo.lookup_many(&keys)
            }
            None => vec![None; files.len()],
        };
        let hits = digests.iter().filter(|d| d.is_some()).count() as u64;
        if self.memo.is_some() {
            self.counters.memo_hits.fetch_add(hits, Ordering::Relaxed);
            self.counters
                .memo_misses
                .fetch_add(files.len() as u64 - hits, Ordering::Relaxed);
        }
        let missing: Vec<usize> = (0..files.len()).filter(|&i| digests[i].is_none()).collect();
        let computed: Vec<Result<[u8; 32]>> = missing
            .par_iter()
            .map(|&i| self.hash_file(files[i]))
            .collect();
        for (i, d) in missing.into_iter().zip(computed) {
            digests[i] = Some(d?);
        }
        let mut h = Sha256::new();
        h.update(b"rbuild context checksum v1\0");
        let mut file_digests = digests.into_iter();
        for e in entries {
            put_field(&mut h, e.path.as_bytes());
            let (tag, extra): (u8, Option<Vec<u8>>) = match &e.kind {
                EntryKind::File => (b'f', file_digests.next().flatten().map(|d| d.to_vec())),
                EntryKind::Dir => (b'd', None),
                EntryKind::Symlink { target } => (b'l', Some(target.as_bytes().to_vec())),
                EntryKind::Other => (b'o', None),
            };
            h.update([tag]);
            h.update(e.mode.to_be_bytes());
            h.update(e.uid.to_be_bytes());
            h.update(e.gid.to_be_bytes());
            if let Some(extra) = extra {
                put_field(&mut h, &extra);
            }
        }
        Ok(Digest::from_sha256(h))
    }
}

/// Length-prefixed so no two entry lists hash alike by shifting bytes.
fn put_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// Depth-first walk state.
struct Walker<'a> {
    ctx: &'a Context,
    /// Excluded directories being walked for re-included entries; emitted
    /// (in order) just before the first entry found under them.
    pending: &'a mut Vec<Entry>,
    out: &'a mut Vec<Entry>,
    max_depth: Option<usize>,
}

impl Walker<'_> {
    fn walk_dir(
        &mut self,
        fd: &OwnedFd,
        dir_path: &str,
        info: Option<&[bool]>,
        depth: usize,
    ) -> Result<()> {
        let ctx = self.ctx;
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut dir = rustix::fs::Dir::read_from(fd).map_err(errno_err(dir_path))?;
        while let Some(ent) = dir.read() {
            let ent = ent.map_err(errno_err(dir_path))?;
            let name = ent.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        names.sort_unstable();
        let descend = self.max_depth.is_none_or(|m| depth < m);
        for raw in names {
            let name_os = OsStr::from_bytes(&raw);
            let lossy = name_os.to_string_lossy();
            let path = join(dir_path, &lossy);
            let st = match ctx.stat_at(fd, name_os) {
                Ok(st) => st,
                // Removed since readdir: it is simply not there.
                Err(e) if e == rustix::io::Errno::NOENT => continue,
                Err(e) => return Err(errno_err(&path)(e)),
            };
            let is_dir = is_dir_mode(st.st_mode);
            let (excluded, child_info) = if ctx.ignore.is_empty() {
                (false, None)
            } else {
                let (m, i) = ctx.ignore.step(&path, info);
                (m, Some(i))
            };
            if excluded {
                if is_dir && descend && ctx.ignore.may_include_under(&path) {
                    let sub = match rustix::fs::openat(fd, name_os, DIR_FLAGS, Mode::empty()) {
                        Ok(sub) => sub,
                        // Unreadable or vanished excluded dirs are skipped,
                        // as fsutil does.
                        Err(_) => continue,
                    };
                    let n = self.pending.len();
                    self.pending.push(entry_from_stat(path.clone(), &st, None));
                    self.walk_dir(&sub, &path, child_info.as_deref(), depth + 1)?;
                    self.pending.truncate(n);
                }
                continue;
            }
            if matches!(lossy, std::borrow::Cow::Owned(_)) {
                return Err(Error::NotUtf8 { path });
            }
            let target = if is_symlink_mode(st.st_mode) {
                Some(Context::read_link_at(fd, &lossy, &path)?)
            } else {
                None
            };
            self.out.append(self.pending);
            self.out.push(entry_from_stat(path.clone(), &st, target));
            if is_dir && descend {
                let sub = rustix::fs::openat(fd, name_os, DIR_FLAGS, Mode::empty())
                    .map_err(errno_err(&path))?;
                self.walk_dir(&sub, &path, child_info.as_deref(), depth + 1)?;
            }
        }
        Ok(())
    }
}
