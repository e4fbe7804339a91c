//! Contexts sent as a tar on stdin (`rbuild build - < ctx.tar`).
//!
//! The tar is untrusted input, so extraction refuses anything that could
//! write outside the destination: absolute names, names with `..`, and any
//! entry whose parent directory is (or has become) a symlink or not a
//! directory. Every write goes through a directory descriptor opened with
//! `O_NOFOLLOW` from the destination down, and files are created with
//! `O_EXCL | O_NOFOLLOW`, so a symlink planted by an earlier entry is never
//! written through. Hard links must name an earlier entry inside the tree.
//! Devices, fifos and sockets are skipped (a context never needs them and
//! an unprivileged build cannot create devices). Ownership is applied only
//! when running as root. Directory modes and times are applied last, so a
//! read-only directory can still receive its entries.
//!
//! Plain and gzip tars are accepted, as `docker build -` does; bzip2, xz and
//! zstd are recognised and refused with a message saying so.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::{Context, DockerIgnore, Error, Result};

/// A context extracted from a tar.
#[derive(Debug)]
pub struct TarContext {
    /// The opened context.
    pub context: Context,
    /// The requested Dockerfile's bytes, if the tar has that file.
    pub dockerfile: Option<Vec<u8>>,
    /// Entries skipped (devices, fifos, sockets, pax globals).
    pub skipped: u64,
}

pub(crate) fn from_tar<R: Read + Send + 'static>(
    reader: R,
    dest: &Path,
    ignore: Option<DockerIgnore>,
    dockerfile: Option<&str>,
) -> Result<TarContext> {
    // Plain, gzip, bzip2, xz or zstd: the store's archive sniffer decides.
    let (stream, is_tar) = rbuild_cache::layer::sniff_archive(Box::new(reader))
        .map_err(|e| Error::Tar(e.to_string()))?;
    if !is_tar {
        return Err(Error::Tar(
            "not a tar archive (plain or gzip, bzip2, xz, zstd compressed)".into(),
        ));
    }
    let mut stream = stream;
    let skipped = extract(&mut stream, dest)?;
    // Read to the end so a compressed stream's checksum is verified.
    io::copy(&mut stream, &mut io::sink()).map_err(|e| Error::Tar(e.to_string()))?;
    let probe = Context::open(dest, DockerIgnore::empty())?;
    let ignore = match ignore {
        Some(i) => i,
        None => match probe.lookup(".dockerignore")? {
            super::Lookup::Found(e) if e.is_file() => {
                let text = probe.read_file(".dockerignore")?;
                DockerIgnore::parse(&String::from_utf8_lossy(&text))?
            }
            _ => DockerIgnore::empty(),
        },
    };
    let dockerfile = match dockerfile {
        Some(name) => match probe.read_file(name) {
            Ok(bytes) => Some(bytes),
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => None,
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let context = Context { ignore, ..probe };
    Ok(TarContext {
        context,
        dockerfile,
        skipped,
    })
}

fn hostile(path: &str, reason: &str) -> Error {
    Error::HostileTar {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Splits a tar entry name into safe components.
fn safe_components(name: &[u8]) -> Result<Vec<Vec<u8>>> {
    let shown = String::from_utf8_lossy(name).into_owned();
    if name.starts_with(b"/") {
        return Err(hostile(&shown, "absolute path"));
    }
    let mut out = Vec::new();
    for comp in name.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(hostile(&shown, "path contains `..`")),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens (creating when asked) the directory `comps` under `root` without
/// following symlinks.
fn open_dir(root: &OwnedFd, comps: &[Vec<u8>], create: bool, shown: &str) -> Result<OwnedFd> {
    let mut fd = rustix::fs::openat(root, ".", DIR_FLAGS, Mode::empty()).map_err(errno(shown))?;
    for comp in comps {
        let name = std::ffi::OsStr::from_bytes(comp);
        if create {
            match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(e) if e == rustix::io::Errno::EXIST => {}
                Err(e) => return Err(errno(shown)(e)),
            }
        }
        fd = match rustix::fs::openat(&fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                return Err(hostile(
                    shown,
                    "a parent directory is a symlink or not a directory",
                ))
            }
            Err(e) => return Err(errno(shown)(e)),
        };
    }
    Ok(fd)
}

fn errno(shown: &str) -> impl FnOnce(rustix::io::Errno) -> Error + '_ {
    move |e| Error::Io {
        path: shown.to_string(),
        source: e.into(),
    }
}

/// Removes whatever non-directory is at `name` so a new entry can take its
/// place (tar semantics: later entries win).
fn clear_slot(dir: &OwnedFd, name: &std::ffi::OsStr, shown: &str, for_dir: bool) -> Result<bool> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let is_dir =
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory;
            if is_dir {
                if for_dir {
                    return Ok(true);
                }
                return Err(hostile(shown, "replaces a directory with a non-directory"));
            }
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno(shown))?;
            Ok(false)
        }
        Err(e) if e == rustix::io::Errno::NOENT => Ok(false),
        Err(e) => Err(errno(shown)(e)),
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

struct DirMeta {
    comps: Vec<Vec<u8>>,
    mode: u32,
    mtime: u64,
    owner: Option<(u32, u32)>,
}

fn extract<R: Read>(reader: R, dest: &Path) -> Result<u64> {
    std::fs::create_dir_all(dest).map_err(|source| Error::Io {
        path: dest.display().to_string(),
        source,
    })?;
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(&dest.display().to_string())(e))?;
    let as_root = rustix::process::geteuid().is_root();
    let mut archive = tar::Archive::new(reader);
    let mut skipped = 0u64;
    let mut dirs: Vec<DirMeta> = Vec::new();
    let tar_err = |e: io::Error| Error::Tar(e.to_string());
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&name).into_owned();
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().map_err(tar_err)? & 0o7777;
        let mtime = header.mtime().map_err(tar_err)?;
        let owner = match (header.uid(), header.gid()) {
            (Ok(u), Ok(g)) if as_root => {
                Some((u32::try_from(u).unwrap_or(0), u32::try_from(g).unwrap_or(0)))
            }
            _ => None,
        };
        let comps = safe_components(&name)?;
        let Some((last, parents)) = comps.split_last() else {
            // The root itself ("./"): only its metadata could apply.
            if kind.is_dir() {
                dirs.push(DirMeta {
                    comps: Vec::new(),
                    mode,
                    mtime,
                    owner,
                });
            }
            continue;
        };
        let last_os = std::ffi::OsStr::from_bytes(last);
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let dir = open_dir(&root, parents, true, &shown)?;
                clear_slot(&dir, last_os, &shown, false)?;
                let fd = rustix::fs::openat(
                    &dir,
                    last_os,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno(&shown))?;
                let mut file = File::from(fd);
                io::copy(&mut entry, &mut file).map_err(tar_err)?;
                if let Some((u, g)) = owner {
                    rustix::fs::fchown(
                        &file,
                        Some(rustix::fs::Uid::from_raw(u)),
                        Some(rustix::fs::Gid::from_raw(g)),
                    )
                    .map_err(errno(&shown))?;
                }
                rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).map_err(errno(&shown))?;
                rustix::fs::futimens(&file, &times(mtime)).map_err(errno(&shown))?;
            }
            T::Directory => {
                open_dir(&root, &comps, true, &shown)?;
                dirs.push(DirMeta {
                    comps,
                    mode,
                    mtime,
                    owner,
                });
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile(&shown, "symlink without a target"))?
                    .into_owned();
                let dir = open_dir(&root, parents, true, &shown)?;
                clear_slot(&dir, last_os, &shown, false)?;
                rustix::fs::symlinkat(std::ffi::OsStr::from_bytes(&target), &dir, last_os)
                    .map_err(errno(&shown))?;
                if let Some((u, g)) = owner {
                    rustix::fs::chownat(
                        &dir,
                        last_os,
                        Some(rustix::fs::Uid::from_raw(u)),
                        Some(rustix::fs::Gid::from_raw(g)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(errno(&shown))?;
                }
                rustix::fs::utimensat(&dir, last_os, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(errno(&shown))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| hostile(&shown, "hard link without a target"))?
                    .into_owned();
                let tcomps = safe_components(&target)
                    .map_err(|_| hostile(&shown, "hard link target outside the context"))?;
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Err(hostile(&shown, "hard link to the context root"));
                };
                let tdir = open_dir(&root, tparents, false, &shown)?;
                let dir = open_dir(&root, parents, true, &shown)?;
                clear_slot(&dir, last_os, &shown, false)?;
                // linkat without AT_SYMLINK_FOLLOW links the entry itself,
                // never a symlink's target.
                rustix::fs::linkat(
                    &tdir,
                    std::ffi::OsStr::from_bytes(tlast),
                    &dir,
                    last_os,
                    AtFlags::empty(),
                )
                .map_err(errno(&shown))?;
            }
            _ => skipped += 1,
        }
    }
    // Deepest first, so setting a parent's mtime is the last change to it.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.comps.len()));
    for d in dirs {
        let shown = String::from_utf8_lossy(&d.comps.join(&b'/')).into_owned();
        let fd = open_dir(&root, &d.comps, false, &shown)?;
        if let Some((u, g)) = d.owner {
            rustix::fs::fchown(
                &fd,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
            )
            .map_err(errno(&shown))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode)).map_err(errno(&shown))?;
        rustix::fs::futimens(&fd, &times(d.mtime)).map_err(errno(&shown))?;
    }
    Ok(skipped)
}
