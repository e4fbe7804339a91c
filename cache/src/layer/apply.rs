//! Applying a layer (or any tar) onto a directory, refusing hostile input.
//!
//! Threat model: the tar is untrusted (a pulled image, an ADD archive);
//! the directory being written is not modified by anyone else meanwhile.
//! Every entry's parent is resolved component by component with `lstat`,
//! following symlinks ourselves with `root` as `/`, so the resulting "real"
//! path has no symlink in it; the final component is never followed (files
//! are created with `O_EXCL|O_NOFOLLOW`, links and nodes with `*at` calls
//! that do not follow, metadata set with no-follow flags or on an fd).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags, CWD};
use rustix::io::Errno;

use super::reader::{EntryHeader, TarReader};
use crate::error::{Error, Result};

/// Symlinks followed while resolving one path before giving up, as Linux's
/// own limit.
const MAX_SYMLINK_HOPS: u32 = 40;
/// Warnings kept in [`ApplyStats::warnings`]; the rest are only counted.
const MAX_WARNINGS: usize = 50;
/// Whiteout prefix.
const WH: &[u8] = b".wh.";
/// Prefix of aufs metadata names (`.wh..wh.plnk`, `.wh..wh.aufs`).
const WH_META: &[u8] = b".wh..wh.";
/// Opaque directory marker.
const WH_OPQ: &[u8] = b".wh..wh..opq";

/// Which xattr namespace overlayfs reads its metadata from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayXattr {
    /// `trusted.overlay.*`: overlay mounted by real root.
    Trusted,
    /// `user.overlay.*`: overlay mounted in a user namespace with the
    /// `userxattr` option (Linux 5.11+), as rootless builds do.
    User,
}

impl OverlayXattr {
    /// `Trusted` when running as root in the initial user namespace (where
    /// `trusted.*` can be written and overlay reads it), else `User`.
    pub fn detect() -> Self {
        let initial_ns = fs::read_to_string("/proc/self/uid_map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
            .unwrap_or(false);
        if rustix::process::geteuid().is_root() && initial_ns {
            OverlayXattr::Trusted
        } else {
            OverlayXattr::User
        }
    }

    /// The opaque-directory xattr name in this namespace.
    pub fn opaque_name(&self) -> &'static str {
        match self {
            OverlayXattr::Trusted => "trusted.overlay.opaque",
            OverlayXattr::User => "user.overlay.opaque",
        }
    }

    /// A short name, as recorded in snapshot markers.
    pub fn name(&self) -> &'static str {
        match self {
            OverlayXattr::Trusted => "trusted",
            OverlayXattr::User => "user",
        }
    }
}

/// What to do with `.wh.` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Flatten onto the content already in root: `.wh.NAME` deletes NAME,
    /// `.wh..wh..opq` empties its directory of what existed before this
    /// layer. For applying a stack of layers onto one tree.
    Apply,
    /// Record them for overlayfs, for a layer unpacked on its own as an
    /// overlay lowerdir (there is nothing below it to delete): `.wh.NAME`
    /// becomes a 0/0 character device NAME, `.wh..wh..opq` sets
    /// `<ns>.overlay.opaque=y` on its directory.
    Overlay(OverlayXattr),
    /// No whiteout meaning: `.wh.*` names are ordinary files (ADD's
    /// archive extraction).
    Keep,
}

/// How [`apply_layer`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Whiteout handling: layers `Apply` (or `Overlay` for snapshots), ADD
    /// `Keep`.
    pub whiteouts: Whiteouts,
    /// Set owners from the tar. When false, or when the kernel refuses
    /// (EPERM, or EINVAL for an id not mapped in our user namespace) and
    /// `same_owner_required` is false, entries keep the current owner and
    /// one warning says so.
    pub chown: bool,
    /// Fail instead of warning when an owner cannot be set.
    pub same_owner_required: bool,
    /// Regular-file entries (by entry path) whose content and metadata an
    /// existing immutable file may already have (a file in another
    /// snapshot that a COPY --from reads): when that file's mode, owner,
    /// mtime and size are the entry's and it has no xattrs, it is hard
    /// linked instead of written, and the entry's content is skipped.
    pub links: Option<Arc<BTreeMap<String, PathBuf>>>,
}

impl ApplyOptions {
    /// For image layers flattened onto one tree.
    pub fn layer() -> Self {
        ApplyOptions {
            whiteouts: Whiteouts::Apply,
            chown: true,
            same_owner_required: false,
            links: None,
        }
    }

    /// For ADD's extraction of a local archive: `.wh.` names are files.
    pub fn archive() -> Self {
        ApplyOptions {
            whiteouts: Whiteouts::Keep,
            chown: true,
            same_owner_required: false,
            links: None,
        }
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions::layer()
    }
}

/// What [`apply_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Tar entries read (including whiteouts and skipped ones).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Regular files hard linked from [`ApplyOptions::links`] instead of
    /// written.
    pub linked: u64,
    /// Entries not created: devices where mknod is not permitted, unknown
    /// entry types, aufs metadata.
    pub skipped: u64,
    /// What was skipped or could not be set (owners, xattrs), at most 50
    /// messages.
    pub warnings: Vec<String>,
    /// Directories created only because an entry below them needed a
    /// parent (the layer has no entry of their own), relative to root. In a
    /// union they must not hide the metadata of the same directory below.
    pub implicit_dirs: Vec<String>,
}

/// Extracts a tar onto `root` (an existing directory). Honours whiteouts as
/// `opts.whiteouts` says (see [`Whiteouts`]); hard links (target inside
/// root: this layer's or lower content); symlinks (created as they are,
/// never followed while creating them); char/block devices and fifos (mknod;
/// when not permitted, skipped with a counted warning); xattrs (`SCHILY.xattr.*`;
/// overlay's own `*.overlay.*` names are dropped); owners; modes (incl.
/// setuid/sticky, applied after chown, which clears them); mtimes (incl. of
/// symlinks, and of directories, set after their contents). A later entry of
/// the same path replaces the earlier one (a dir onto a dir merges). Missing
/// parent directories are created 0755. The tar's root entry (`./`) is
/// ignored: the root's own metadata is the caller's.
///
/// Refused with [`Error::Hostile`], never writing outside root (missing
/// directories made inside root on the way may remain): an absolute name, a `..` component, a NUL byte in a name; a parent
/// that resolves through a symlink whose relative target climbs above root
/// (an absolute target is taken relative to root, so Debian's
/// `/var/run -> /run` works); a hard link whose target is outside, missing
/// or a directory; a parent that is not a directory; owners that do not fit
/// 32 bits.
///
/// The input is read to its end (after the tar's end marker), so a
/// verifying reader such as [`open_layer`](super::open_layer)'s gets to
/// check its digest.
pub fn apply_layer(reader: impl Read, root: &Path, opts: &ApplyOptions) -> Result<ApplyStats> {
    let md = fs::metadata(root).map_err(|e| Error::io(root, e))?;
    if !md.is_dir() {
        return Err(Error::io(
            root,
            io::Error::new(
                io::ErrorKind::NotADirectory,
                "layer root is not a directory",
            ),
        ));
    }
    let mut tar = TarReader::new(reader);
    let mut applier = Applier {
        root,
        opts,
        stats: ApplyStats::default(),
        parents: HashMap::new(),
        touched: HashSet::new(),
        dirs: HashMap::new(),
        implicit_dirs: HashSet::new(),
        explicit_dirs: HashSet::new(),
        owner_warned: false,
        buf: vec![0u8; 256 * 1024],
    };
    while let Some(header) = tar.next_entry().map_err(read_err)? {
        applier.entry(&header, &mut tar)?;
    }
    applier.finish_dirs()?;
    let explicit: HashSet<PathBuf> = applier.explicit_dirs.drain().collect();
    let mut implicit: Vec<String> = applier
        .implicit_dirs
        .drain()
        .filter(|p| !explicit.contains(p) && root.join(p).is_dir())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    implicit.sort();
    applier.stats.implicit_dirs = implicit;
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    Ok(applier.stats)
}

/// An error reading the tar stream: an OS error stays an I/O error, the
/// rest (bad headers, digest mismatch, truncation) means corrupt input.
fn read_err(e: io::Error) -> Error {
    if e.raw_os_error().is_some() {
        Error::io(Path::new("<layer stream>"), e)
    } else {
        Error::Corrupt(format!("layer tar: {e}"))
    }
}

fn hostile(entry: &str, reason: impl Into<String>) -> Error {
    Error::Hostile {
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

fn errno_io(abs: &Path, e: Errno) -> Error {
    Error::io(abs, io::Error::from(e))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Splits a tar name into its components, dropping `.` and empty ones
/// (a `./` prefix is normal), refusing absolute names, `..` and NUL.
fn components(raw: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    if raw.starts_with(b"/") {
        return Err("absolute name (layer entries must be relative to the root)");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("name contains a \"..\" component"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Unknown(u8),
}

/// An entry's metadata, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    nsec: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    dev: (u32, u32),
}

impl Meta {
    fn timestamps(&self) -> Timestamps {
        let t = Timespec {
            tv_sec: self.mtime,
            tv_nsec: self.nsec.into(),
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

/// Deferred metadata of a directory: set once its content is written, so a
/// read-only mode does not stop us writing into it and creating children
/// does not move its mtime.
#[derive(Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: i64,
    nsec: u32,
}

/// What to set metadata through.
enum Target<'f> {
    Fd(&'f File),
    Path,
}

struct Applier<'a> {
    root: &'a Path,
    opts: &'a ApplyOptions,
    stats: ApplyStats,
    /// Resolved parents: the tar's parent path → real path relative to
    /// root. Cleared whenever a directory or symlink is removed, the only
    /// changes that can alter a resolution.
    parents: HashMap<Vec<u8>, PathBuf>,
    /// Real paths (relative) this layer wrote, and their ancestors: what an
    /// opaque marker or whiteout must not delete.
    touched: HashSet<PathBuf>,
    dirs: HashMap<PathBuf, DirMeta>,
    /// Parents created without an entry of their own.
    implicit_dirs: HashSet<PathBuf>,
    /// Directories the layer has entries for.
    explicit_dirs: HashSet<PathBuf>,
    owner_warned: bool,
    buf: Vec<u8>,
}

impl Applier<'_> {
    fn warn(&mut self, msg: String) {
        if self.stats.warnings.len() < MAX_WARNINGS {
            self.stats.warnings.push(msg);
        }
    }

    fn entry<R: Read>(&mut self, header: &EntryHeader, data: &mut TarReader<R>) -> Result<()> {
        self.stats.entries += 1;
        let raw = &header.path;
        let name = lossy(raw);
        let kind = match header.typeflag {
            // Pre-POSIX tars mark directories only by a trailing slash.
            0 if raw.ends_with(b"/") => Kind::Dir,
            0 | b'0' | b'7' | b'S' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink,
            b'1' => Kind::Hardlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'6' => Kind::Fifo,
            other => Kind::Unknown(other),
        };
        let comps = components(raw).map_err(|r| hostile(&name, r))?;
        let Some((&base, parent)) = comps.split_last() else {
            // The root itself: its metadata belongs to whoever made root.
            if kind == Kind::Dir {
                return Ok(());
            }
            return Err(hostile(
                &name,
                "a non-directory entry would replace the root directory",
            ));
        };
        if let Kind::Unknown(t) = kind {
            self.stats.skipped += 1;
            self.warn(format!(
                "{name}: skipped entry of unknown type {:?}",
                char::from(t)
            ));
            return Ok(());
        }

        if self.opts.whiteouts != Whiteouts::Keep {
            if parent.first().is_some_and(|c| c.starts_with(WH_META))
                || (base.starts_with(WH_META) && base != WH_OPQ)
            {
                // aufs bookkeeping (hard-link dirs etc.): never content.
                self.stats.skipped += 1;
                return Ok(());
            }
            if base == WH_OPQ {
                return self.opaque(parent, &name);
            }
            if let Some(target) = base.strip_prefix(WH) {
                if target.is_empty() || target == b"." || target == b".." {
                    return Err(hostile(&name, "whiteout names no file"));
                }
                return self.whiteout(parent, target, &name);
            }
        }

        let meta = read_meta(header, &name)?;
        let parent_rel = self
            .resolve(parent, true, &name)?
            .ok_or_else(|| hostile(&name, "parent cannot be resolved"))?;
        let rel = parent_rel.join(OsStr::from_bytes(base));
        match kind {
            Kind::Dir => self.make_dir(&rel, &meta)?,
            Kind::File => {
                let source = self.opts.links.as_ref().and_then(|l| l.get(name.as_str()));
                let linked = match source {
                    Some(src) => self.link_identical(&rel, &meta, header.size, src)?,
                    None => false,
                };
                if linked {
                    self.stats.linked += 1;
                    skip_data(data)?;
                } else {
                    self.make_file(&rel, &meta, data)?;
                }
            }
            Kind::Symlink => {
                let target = &header.link;
                if target.is_empty() || target.contains(&0) {
                    return Err(hostile(
                        &name,
                        "symlink target is empty or contains a NUL byte",
                    ));
                }
                self.make_symlink(&rel, &meta, target)?;
            }
            Kind::Hardlink => {
                if !self.make_hardlink(&rel, &header.link, &name)? {
                    return Ok(());
                }
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                if !self.make_node(&rel, &meta, kind, &name)? {
                    return Ok(());
                }
            }
            Kind::Unknown(_) => return Ok(()),
        }
        self.touch(&rel);
        Ok(())
    }

    /// Marks `rel` and its ancestors as written by this layer.
    fn touch(&mut self, rel: &Path) {
        let mut p = rel.to_path_buf();
        while !p.as_os_str().is_empty() && self.touched.insert(p.clone()) {
            p.pop();
        }
    }

    /// Resolves the directory `comps` (a tar path's parent) to a real path
    /// relative to root, following symlinks scoped to root. With `create`,
    /// missing directories are made (0755); without, a missing or non-dir
    /// component gives `None`.
    fn resolve(&mut self, comps: &[&[u8]], create: bool, name: &str) -> Result<Option<PathBuf>> {
        if comps.is_empty() {
            return Ok(Some(PathBuf::new()));
        }
        let key = comps.join(&b'/');
        if let Some(p) = self.parents.get(&key) {
            return Ok(Some(p.clone()));
        }
        let mut real: Vec<OsString> = Vec::new();
        let mut queue: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        let mut hops = 0;
        let mut via = String::new();
        while let Some(c) = queue.pop_front() {
            if c.is_empty() || c == b"." {
                continue;
            }
            if c == b".." {
                // Only symlink targets bring ".." here: names with it were
                // refused. Climbing above root is an escape, not a clamp.
                if real.pop().is_none() {
                    return Err(hostile(
                        name,
                        format!("symlink {via} leads outside the root"),
                    ));
                }
                continue;
            }
            let mut abs = self.root.to_path_buf();
            abs.extend(&real);
            abs.push(OsStr::from_bytes(&c));
            match fs::symlink_metadata(&abs) {
                Ok(md) if md.is_dir() => real.push(OsString::from_vec(c)),
                Ok(md) if md.file_type().is_symlink() => {
                    hops += 1;
                    let target = fs::read_link(&abs)
                        .map_err(|e| Error::io(&abs, e))?
                        .into_os_string()
                        .into_vec();
                    let link_rel: PathBuf =
                        real.iter().collect::<PathBuf>().join(OsStr::from_bytes(&c));
                    via = format!("{} -> {}", link_rel.display(), lossy(&target));
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(hostile(
                            name,
                            format!("too many levels of symbolic links (at {via})"),
                        ));
                    }
                    if target.is_empty() {
                        return if create {
                            Err(hostile(
                                name,
                                format!("parent {} is an empty symlink", link_rel.display()),
                            ))
                        } else {
                            Ok(None)
                        };
                    }
                    if target.starts_with(b"/") {
                        // Absolute targets mean the image's root, not ours.
                        real.clear();
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        queue.push_front(part.to_vec());
                    }
                }
                Ok(_) => {
                    if !create {
                        return Ok(None);
                    }
                    let at: PathBuf = real.iter().collect::<PathBuf>().join(OsStr::from_bytes(&c));
                    return Err(hostile(
                        name,
                        format!("parent {} is not a directory", at.display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    match fs::DirBuilder::new().mode(0o755).create(&abs) {
                        Ok(()) => {
                            let mut rel: PathBuf = real.iter().collect();
                            rel.push(OsStr::from_bytes(&c));
                            self.implicit_dirs.insert(rel);
                        }
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Error::io(&abs, e)),
                    }
                    real.push(OsString::from_vec(c));
                }
                Err(e) => return Err(Error::io(&abs, e)),
            }
        }
        let rel: PathBuf = real.iter().collect();
        self.parents.insert(key, rel.clone());
        Ok(Some(rel))
    }

    /// Removes whatever is at `rel` (not following a symlink there).
    fn remove(&mut self, rel: &Path) -> Result<()> {
        let abs = self.root.join(rel);
        match fs::symlink_metadata(&abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&abs, e)),
            Ok(md) if md.is_dir() => {
                remove_tree(&abs).map_err(|e| Error::io(&abs, e))?;
                self.dirs.retain(|p, _| !p.starts_with(rel));
                self.parents.clear();
                Ok(())
            }
            Ok(md) => {
                fs::remove_file(&abs).map_err(|e| Error::io(&abs, e))?;
                if md.file_type().is_symlink() {
                    self.parents.clear();
                }
                Ok(())
            }
        }
    }

    /// Runs `create` at `rel`; if something is in the way, removes it and
    /// tries once more. (Cheaper than an lstat first for the common case of
    /// a fresh path.)
    fn create_replacing<T>(
        &mut self,
        rel: &Path,
        mut create: impl FnMut(&Path) -> io::Result<T>,
    ) -> Result<T> {
        let abs = self.root.join(rel);
        match create(&abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove(rel)?;
                create(&abs).map_err(|e| Error::io(&abs, e))
            }
            other => other.map_err(|e| Error::io(&abs, e)),
        }
    }

    fn make_dir(&mut self, rel: &Path, meta: &Meta) -> Result<()> {
        let abs = self.root.join(rel);
        self.explicit_dirs.insert(rel.to_path_buf());
        // 0700 until the deferred mode: we must be able to write into it.
        match fs::DirBuilder::new().mode(0o700).create(&abs) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let md = fs::symlink_metadata(&abs).map_err(|e| Error::io(&abs, e))?;
                if !md.is_dir() {
                    self.remove(rel)?;
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&abs)
                        .map_err(|e| Error::io(&abs, e))?;
                }
            }
            Err(e) => return Err(Error::io(&abs, e)),
        }
        self.set_owner(Target::Path, &abs, meta)?;
        self.set_xattrs(Target::Path, &abs, meta)?;
        self.dirs.insert(
            rel.to_path_buf(),
            DirMeta {
                mode: meta.mode,
                mtime: meta.mtime,
                nsec: meta.nsec,
            },
        );
        Ok(())
    }

    fn make_file<R: Read>(
        &mut self,
        rel: &Path,
        meta: &Meta,
        data: &mut TarReader<R>,
    ) -> Result<()> {
        let file = self.create_replacing(rel, |abs| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc_flags::O_NOFOLLOW | libc_flags::O_CLOEXEC)
                .open(abs)
        })?;
        let abs = self.root.join(rel);
        let mut file = file;
        loop {
            let n = match data.read_data(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e)),
            };
            file.write_all(&self.buf[..n])
                .map_err(|e| Error::io(&abs, e))?;
            self.stats.bytes += n as u64;
        }
        self.set_owner(Target::Fd(&file), &abs, meta)?;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(|e| errno_io(&abs, e))?;
        self.set_xattrs(Target::Fd(&file), &abs, meta)?;
        rustix::fs::futimens(&file, &meta.timestamps()).map_err(|e| errno_io(&abs, e))?;
        Ok(())
    }

    /// Hard links `src` at `rel` when `src` is a regular file with exactly
    /// the metadata the entry would give it (no xattrs on either side):
    /// the result is indistinguishable from writing the entry. False, and
    /// nothing done, when it is not, or when the link fails (another
    /// filesystem, too many links): the caller writes the file.
    fn link_identical(&mut self, rel: &Path, meta: &Meta, size: u64, src: &Path) -> Result<bool> {
        let Ok(md) = fs::symlink_metadata(src) else {
            return Ok(false);
        };
        let same = md.file_type().is_file()
            && md.len() == size
            && md.mode() & 0o7777 == meta.mode
            && (!self.opts.chown || (md.uid() == meta.uid && md.gid() == meta.gid))
            && md.mtime() == meta.mtime
            && md.mtime_nsec() == i64::from(meta.nsec)
            && meta.xattrs.is_empty()
            && rustix::fs::llistxattr_query(src).is_ok_and(|n| n == 0);
        if !same {
            return Ok(false);
        }
        let abs = self.root.join(rel);
        match fs::hard_link(src, &abs) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove(rel)?;
                Ok(fs::hard_link(src, &abs).is_ok())
            }
            Err(_) => Ok(false),
        }
    }

    fn make_symlink(&mut self, rel: &Path, meta: &Meta, target: &[u8]) -> Result<()> {
        self.create_replacing(rel, |abs| {
            rustix::fs::symlinkat(target, CWD, abs).map_err(io::Error::from)
        })?;
        let abs = self.root.join(rel);
        self.set_owner(Target::Path, &abs, meta)?;
        self.set_xattrs(Target::Path, &abs, meta)?;
        rustix::fs::utimensat(CWD, &abs, &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_io(&abs, e))?;
        Ok(())
    }

    /// Links `rel` to the earlier path `target`. Its metadata is the
    /// target's inode's: the entry's header is not applied. Returns false
    /// when nothing was created (a link to itself).
    fn make_hardlink(&mut self, rel: &Path, target: &[u8], name: &str) -> Result<bool> {
        let tcomps = components(target)
            .map_err(|r| hostile(name, format!("hard link target {:?}: {r}", lossy(target))))?;
        let Some((&tbase, tparent)) = tcomps.split_last() else {
            return Err(hostile(name, "hard link to the root directory"));
        };
        let missing = || {
            hostile(
                name,
                format!("hard link target {:?} does not exist", lossy(target)),
            )
        };
        let tparent_rel = self.resolve(tparent, false, name)?.ok_or_else(missing)?;
        let trel = tparent_rel.join(OsStr::from_bytes(tbase));
        let tabs = self.root.join(&trel);
        match fs::symlink_metadata(&tabs) {
            Ok(md) if md.is_dir() => {
                return Err(hostile(
                    name,
                    format!("hard link to directory {:?}", lossy(target)),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(Error::io(&tabs, e)),
        }
        if trel == rel {
            return Ok(false);
        }
        if trel.starts_with(rel) {
            return Err(hostile(
                name,
                "hard link target is inside the entry it replaces",
            ));
        }
        // No AT_SYMLINK_FOLLOW: a symlink target is linked itself, never
        // the file it points to.
        self.create_replacing(rel, |abs| {
            rustix::fs::linkat(CWD, &tabs, CWD, abs, AtFlags::empty()).map_err(io::Error::from)
        })?;
        Ok(true)
    }

    /// Makes a device or fifo; returns false when mknod was not permitted
    /// and the entry was skipped.
    fn make_node(&mut self, rel: &Path, meta: &Meta, kind: Kind, name: &str) -> Result<bool> {
        let (ftype, dev) = match kind {
            Kind::Char => (
                FileType::CharacterDevice,
                rustix::fs::makedev(meta.dev.0, meta.dev.1),
            ),
            Kind::Block => (
                FileType::BlockDevice,
                rustix::fs::makedev(meta.dev.0, meta.dev.1),
            ),
            _ => (FileType::Fifo, 0),
        };
        let abs = self.root.join(rel);
        let mknod = |abs: &Path| {
            rustix::fs::mknodat(CWD, abs, ftype, Mode::from_raw_mode(0o600), dev)
                .map_err(io::Error::from)
        };
        let created = match mknod(&abs) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove(rel)?;
                mknod(&abs)
            }
            other => other,
        };
        match created {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) && kind != Kind::Fifo =>
            {
                self.stats.skipped += 1;
                self.warn(format!(
                    "{name}: skipped device {}:{} (creating devices is not permitted here)",
                    meta.dev.0, meta.dev.1
                ));
                return Ok(false);
            }
            Err(e) => return Err(Error::io(&abs, e)),
        }
        self.set_owner(Target::Path, &abs, meta)?;
        rustix::fs::chmodat(CWD, &abs, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(|e| errno_io(&abs, e))?;
        self.set_xattrs(Target::Path, &abs, meta)?;
        rustix::fs::utimensat(CWD, &abs, &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno_io(&abs, e))?;
        Ok(true)
    }

    fn whiteout(&mut self, parent: &[&[u8]], target: &[u8], name: &str) -> Result<()> {
        match self.opts.whiteouts {
            Whiteouts::Apply => {
                let Some(prel) = self.resolve(parent, false, name)? else {
                    return Ok(());
                };
                let rel = prel.join(OsStr::from_bytes(target));
                // Whiteouts hide lower content, never this layer's own.
                if self.touched.contains(&rel) {
                    return Ok(());
                }
                self.remove(&rel)
            }
            Whiteouts::Overlay(_) => {
                let prel = self
                    .resolve(parent, true, name)?
                    .ok_or_else(|| hostile(name, "parent cannot be resolved"))?;
                let rel = prel.join(OsStr::from_bytes(target));
                let wh = |abs: &Path| {
                    rustix::fs::mknodat(
                        CWD,
                        abs,
                        FileType::CharacterDevice,
                        Mode::empty(),
                        rustix::fs::makedev(0, 0),
                    )
                    .map_err(io::Error::from)
                };
                self.create_replacing(&rel, wh)?;
                self.touch(&rel);
                Ok(())
            }
            Whiteouts::Keep => Ok(()),
        }
    }

    fn opaque(&mut self, dir: &[&[u8]], name: &str) -> Result<()> {
        match self.opts.whiteouts {
            Whiteouts::Apply => {
                let Some(drel) = self.resolve(dir, false, name)? else {
                    return Ok(());
                };
                self.clear_lower(&drel)
            }
            Whiteouts::Overlay(ns) => {
                let drel = self
                    .resolve(dir, true, name)?
                    .ok_or_else(|| hostile(name, "directory cannot be resolved"))?;
                let abs = self.root.join(&drel);
                rustix::fs::lsetxattr(&abs, ns.opaque_name(), b"y", XattrFlags::empty())
                    .map_err(|e| errno_io(&abs, e))?;
                self.touch(&drel);
                Ok(())
            }
            Whiteouts::Keep => Ok(()),
        }
    }

    /// Removes from directory `drel` everything this layer did not write,
    /// recursing into directories it wrote into.
    fn clear_lower(&mut self, drel: &Path) -> Result<()> {
        let abs = self.root.join(drel);
        let mut children = Vec::new();
        for ent in fs::read_dir(&abs).map_err(|e| Error::io(&abs, e))? {
            let ent = ent.map_err(|e| Error::io(&abs, e))?;
            let is_dir = ent
                .file_type()
                .map_err(|e| Error::io(&ent.path(), e))?
                .is_dir();
            children.push((ent.file_name(), is_dir));
        }
        for (child, is_dir) in children {
            let crel = drel.join(child);
            if self.touched.contains(&crel) {
                if is_dir {
                    self.clear_lower(&crel)?;
                }
            } else {
                self.remove(&crel)?;
            }
        }
        Ok(())
    }

    fn set_owner(&mut self, target: Target<'_>, abs: &Path, meta: &Meta) -> Result<()> {
        if !self.opts.chown {
            return Ok(());
        }
        let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        let res = match target {
            Target::Fd(f) => rustix::fs::fchown(f, uid, gid),
            Target::Path => rustix::fs::chownat(CWD, abs, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
        };
        match res {
            Ok(()) => Ok(()),
            // EINVAL: the id is not mapped in our user namespace.
            Err(e) if (e == Errno::PERM || e == Errno::INVAL) && !self.opts.same_owner_required => {
                if !self.owner_warned {
                    self.owner_warned = true;
                    self.warn(format!(
                        "cannot set owners ({}:{} on {}: {e}); files keep the current owner",
                        meta.uid,
                        meta.gid,
                        abs.strip_prefix(self.root).unwrap_or(abs).display()
                    ));
                }
                Ok(())
            }
            Err(e) => Err(errno_io(abs, e)),
        }
    }

    fn set_xattrs(&mut self, target: Target<'_>, abs: &Path, meta: &Meta) -> Result<()> {
        for (name, value) in &meta.xattrs {
            if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                // overlayfs metadata from a tar could fake whiteouts or
                // redirects in a snapshot: never taken from input.
                self.warn(format!("{}: dropped xattr {}", abs.display(), lossy(name)));
                continue;
            }
            let res = match target {
                Target::Fd(f) => {
                    rustix::fs::fsetxattr(f, name.as_slice(), value, XattrFlags::empty())
                }
                Target::Path => {
                    rustix::fs::lsetxattr(abs, name.as_slice(), value, XattrFlags::empty())
                }
            };
            match res {
                Ok(()) => {}
                Err(e)
                    if [
                        Errno::PERM,
                        Errno::ACCESS,
                        Errno::NOTSUP,
                        Errno::RANGE,
                        Errno::TOOBIG,
                    ]
                    .contains(&e) =>
                {
                    let rel = abs
                        .strip_prefix(self.root)
                        .unwrap_or(abs)
                        .display()
                        .to_string();
                    self.warn(format!("{rel}: cannot set xattr {}: {e}", lossy(name)));
                }
                Err(e) => return Err(errno_io(abs, e)),
            }
        }
        Ok(())
    }

    /// Sets directories' modes and mtimes, deepest first, once everything
    /// is written.
    fn finish_dirs(&mut self) -> Result<()> {
        let mut dirs: Vec<(PathBuf, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, m) in dirs {
            let abs = self.root.join(&rel);
            match fs::symlink_metadata(&abs) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&abs, e)),
            }
            rustix::fs::chmodat(CWD, &abs, Mode::from_raw_mode(m.mode), AtFlags::empty())
                .map_err(|e| errno_io(&abs, e))?;
            let t = Timespec {
                tv_sec: m.mtime,
                tv_nsec: m.nsec.into(),
            };
            rustix::fs::utimensat(
                CWD,
                &abs,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| errno_io(&abs, e))?;
        }
        Ok(())
    }
}

/// Reads and discards the rest of the current entry's content.
fn skip_data<R: Read>(data: &mut TarReader<R>) -> Result<()> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match data.read_data(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
}

/// `open(2)` flags std does not name.
mod libc_flags {
    /// From rustix, which spells them portably.
    pub const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    pub const O_CLOEXEC: i32 = rustix::fs::OFlags::CLOEXEC.bits() as i32;
}

/// An entry's metadata from its parsed header.
fn read_meta(h: &EntryHeader, name: &str) -> Result<Meta> {
    let id = |v: u64, what: &str| match u32::try_from(v) {
        // u32::MAX is -1, "no change", to chown.
        Ok(v) if v != u32::MAX => Ok(v),
        _ => Err(hostile(name, format!("{what} {v} is out of range"))),
    };
    let dev = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| hostile(name, format!("device {what} {v} is out of range")))
    };
    let (major, minor) = match h.typeflag {
        b'3' | b'4' => (dev(h.dev.0, "major")?, dev(h.dev.1, "minor")?),
        _ => (0, 0),
    };
    let xattrs = h
        .xattrs
        .iter()
        .filter(|(k, _)| !k.is_empty() && !k.contains(&0))
        .cloned()
        .collect();
    Ok(Meta {
        // Only permission, setuid/setgid and sticky bits: type bits some
        // writers add are the typeflag's business.
        mode: (h.mode & 0o7777) as u32,
        uid: id(h.uid, "uid")?,
        gid: id(h.gid, "gid")?,
        mtime: h.mtime,
        nsec: h.nsec,
        xattrs,
        dev: (major, minor),
    })
}

/// `remove_dir_all`, which also works as a non-root user on trees with
/// read-only directories (extracted layers have them): on EACCES it makes
/// the directories writable (never following symlinks) and retries.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_dirs_writable(path: &Path) {
    let Ok(md) = fs::symlink_metadata(path) else {
        return;
    };
    if !md.is_dir() {
        return;
    }
    let _ = rustix::fs::chmodat(CWD, path, Mode::from_raw_mode(0o700), AtFlags::empty());
    if let Ok(rd) = fs::read_dir(path) {
        for ent in rd.flatten() {
            make_dirs_writable(&ent.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(
            components(b"./a//b/./c/").unwrap(),
            vec![&b"a"[..], b"b", b"c"]
        );
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../b").is_err());
        assert!(components(b"a\0b").is_err());
        assert!(components(b"./").unwrap().is_empty());
    }
}
