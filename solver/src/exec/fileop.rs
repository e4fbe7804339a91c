//! File ops (COPY, ADD, WORKDIR's mkdir, heredoc files): their layer is
//! written straight from the sources, never by diffing a snapshot.
//!
//! An op is planned first: every action adds entries to one sorted map of
//! paths, later actions replacing earlier ones, with the destination
//! filesystem consulted (through its union view) for what already exists,
//! where symlinked directories really lead, and who `--chown` names. Then
//! the map is streamed into a deterministic tar.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rbuild_cache::layer::{self, ApplyOptions, DeviceKind, EntryMeta, LayerDescriptor, Origin};
use rbuild_cache::Store;

use crate::graph::{Chmod, Copy, FileAction, Owner};

use super::error::{ExecError, Result};
use super::fsview::FsView;
use super::source::{has_wildcard, Kind, Source, SrcEntry};

/// A source as a file op sees it.
pub struct Input<'a> {
    /// The tree.
    pub source: &'a dyn Source,
    /// True for a build context: copied files belong to root unless
    /// `--chown` says otherwise (from another stage they keep their owners).
    pub is_context: bool,
}

/// What one path of the layer will be.
#[derive(Debug, Clone)]
enum Planned {
    Dir(EntryMeta),
    File {
        meta: EntryMeta,
        real: PathBuf,
        size: u64,
    },
    Inline {
        meta: EntryMeta,
        data: Vec<u8>,
    },
    Symlink {
        meta: EntryMeta,
        target: String,
    },
    Device {
        meta: EntryMeta,
        kind: DeviceKind,
        major: u32,
        minor: u32,
    },
}

impl Planned {
    fn is_dir(&self) -> bool {
        matches!(self, Planned::Dir(_))
    }
}

/// Settings shared by every file op of a build.
#[derive(Debug, Clone, Copy)]
pub struct FileOpEnv<'a> {
    /// The store (layers are written into it; archives are unpacked under its tmp/).
    pub store: &'a Store,
    /// SOURCE_DATE_EPOCH: mtimes after it are clamped to it.
    pub epoch: Option<i64>,
    /// The build's "now", for directories the op creates.
    pub now: i64,
    /// The layer this op wrote last time (its definition unchanged, its
    /// sources maybe not): files whose sources have not changed since are
    /// linked from its snapshot instead of written again.
    pub previous: Option<&'a rbuild_cache::Digest>,
}

/// Runs a file op on `dest` and writes its layer; `None` when the op
/// changes nothing (an empty layer is not kept, as BuildKit drops them).
pub fn run(
    env: FileOpEnv<'_>,
    dest: &FsView,
    inputs: &[Input<'_>],
    actions: &[FileAction],
) -> Result<Option<LayerDescriptor>> {
    let mut plan = Plan {
        dest,
        entries: BTreeMap::new(),
        now: env.now,
        users: None,
        temps: Vec::new(),
    };
    for action in actions {
        match action {
            FileAction::Mkdir {
                path,
                mode,
                parents,
                owner,
            } => {
                let ids = plan.owner_ids(owner.as_ref())?;
                plan.mkdir(path, *mode, *parents, ids)?;
            }
            FileAction::Mkfile {
                path,
                mode,
                data,
                owner,
            } => {
                let (uid, gid) = plan.owner_ids(owner.as_ref())?.unwrap_or((0, 0));
                let parent = parent_of(path);
                let parent = plan.resolve_dir(&parent)?;
                plan.ensure_parents(&parent, None)?;
                let target = join(&parent, &basename(path));
                let meta = meta(*mode, uid, gid, env.now, 0);
                plan.put(
                    &target,
                    Planned::Inline {
                        meta,
                        data: data.clone().into_bytes(),
                    },
                );
            }
            FileAction::Copy(copy) => {
                let input = inputs.get(copy.input).ok_or_else(|| {
                    ExecError::Internal(format!("copy input {} is missing", copy.input))
                })?;
                plan.copy(env, input, copy)?;
            }
        }
    }
    if plan.entries.is_empty() {
        return Ok(None);
    }
    // Unpacked archives are read while the layer is written: keep them until then.
    let _temps = std::mem::take(&mut plan.temps);
    let entries = plan.entries;
    // A name overlayfs reads as a whiteout (`.wh.*`) cannot be kept in a
    // snapshot as the file it is: such a layer is written as a blob, and
    // its snapshot unpacked from it when needed, as before.
    let whiteout_like = entries.keys().any(|p| {
        p.rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with(".wh."))
    });
    if whiteout_like {
        let desc = layer::write_layer(env.store, layer::Compression::None, env.epoch, |tar| {
            write_entries(tar, &entries, &BTreeMap::new())
        })?;
        return Ok(Some(desc));
    }
    let links = plan_links(env, dest, &entries);
    let linked = (!links.is_empty()).then(|| {
        Arc::new(
            links
                .iter()
                .map(|(k, l)| (k.clone(), l.at.clone()))
                .collect(),
        )
    });
    let first = layer::write_layer_snapshot(env.store, env.epoch, linked, |tar| {
        write_entries(tar, &entries, &links)
    });
    let desc = match first {
        // A source linked from the last snapshot changed before it was
        // read: that link may be stale. Write every file this time.
        Err(rbuild_cache::Error::SourceChanged(_)) => {
            layer::write_layer_snapshot(env.store, env.epoch, None, |tar| {
                write_entries(tar, &entries, &BTreeMap::new())
            })?
        }
        other => other?,
    };
    Ok(Some(desc))
}

/// Where a planned file's content may be linked from instead of written.
struct Link {
    /// The existing file.
    at: PathBuf,
    /// For a link to the op's last snapshot: the source's origin then,
    /// which it must still have when it is read.
    origin: Option<Origin>,
}

/// Files copied out of snapshots (COPY --from a stage or an image) are
/// linked from there, unless that snapshot is part of the destination
/// itself (the two paths would be one file inside a RUN) or the source
/// file is linked already by this op. Files of a context are linked from
/// the op's previous snapshot when their source is the very file (same
/// inode, size, mtime and ctime) that snapshot's copy was read from.
fn plan_links(
    env: FileOpEnv<'_>,
    dest: &FsView,
    entries: &BTreeMap<String, Planned>,
) -> BTreeMap<String, Link> {
    let snapshots = env.store.root().join("snapshots");
    let previous = env
        .previous
        .map(|d| layer::snapshot_origins(env.store, d))
        .unwrap_or_default();
    let in_dest = |p: &std::path::Path| dest.layer_roots().iter().any(|r| p.starts_with(r));
    let mut used = std::collections::HashSet::new();
    let mut links = BTreeMap::new();
    for (path, entry) in entries {
        let Planned::File { real, .. } = entry else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if real.starts_with(&snapshots) {
            if !in_dest(real) && used.insert(real.clone()) {
                let link = Link {
                    at: real.clone(),
                    origin: None,
                };
                links.insert(rel.to_string(), link);
            }
        } else if let Some((at, origin)) = previous.get(rel) {
            if std::fs::metadata(real).is_ok_and(|md| Origin::of(&md) == *origin)
                && used.insert(at.clone())
            {
                let link = Link {
                    at: at.clone(),
                    origin: Some(*origin),
                };
                links.insert(rel.to_string(), link);
            }
        }
    }
    links
}

/// Streams the planned entries into `tar`, in path order.
fn write_entries<W: std::io::Write>(
    tar: &mut layer::TarWriter<W>,
    entries: &BTreeMap<String, Planned>,
    links: &BTreeMap<String, Link>,
) -> io::Result<()> {
    for (path, entry) in entries {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        match entry {
            Planned::Dir(m) => tar.dir(rel, m)?,
            Planned::File { meta, real, size } => {
                let started = SystemTime::now();
                let mut f = File::open(real)?;
                let before = Origin::of(&f.metadata()?);
                let linked_origin = links.get(rel).and_then(|l| l.origin);
                if linked_origin.is_some_and(|o| o != before) {
                    return Err(io::Error::other(rbuild_cache::Error::SourceChanged(
                        real.display().to_string(),
                    )));
                }
                tar.file(rel, meta, *size, &mut f)?;
                // Its origin is worth remembering only if it did not
                // change while read, and changed long enough before that
                // a change within the same clock tick is ruled out.
                let origin = Origin::of(&f.metadata()?);
                if linked_origin.is_some() && origin != before {
                    return Err(io::Error::other(rbuild_cache::Error::SourceChanged(
                        real.display().to_string(),
                    )));
                }
                let settled = started
                    .duration_since(UNIX_EPOCH)
                    .map(|t| t.as_nanos() as i128 - RACY_NS)
                    .is_ok_and(|limit| origin.ctime_ns < limit);
                if origin == before && settled {
                    tar.note_origin(origin);
                }
            }
            Planned::Inline { meta, data } => {
                tar.file(rel, meta, data.len() as u64, &mut data.as_slice())?
            }
            Planned::Symlink { meta, target } => tar.symlink(rel, meta, target)?,
            Planned::Device {
                meta,
                kind,
                major,
                minor,
            } => tar.device(rel, meta, *kind, *major, *minor)?,
        }
    }
    Ok(())
}

/// How long before a read a file's last change must be for its origin to
/// be trusted (filesystem timestamps are coarser than a nanosecond: FAT's
/// are 2 s).
const RACY_NS: i128 = 2_000_000_000;

fn meta(mode: u32, uid: u32, gid: u32, mtime: i64, mtime_nsec: u32) -> EntryMeta {
    EntryMeta {
        mode,
        uid,
        gid,
        mtime,
        mtime_nsec,
        xattrs: Vec::new(),
    }
}

struct Plan<'a> {
    dest: &'a FsView,
    /// Absolute path → what it will be.
    entries: BTreeMap<String, Planned>,
    now: i64,
    users: Option<Users>,
    temps: Vec<TempDir>,
}

impl Plan<'_> {
    fn put(&mut self, path: &str, entry: Planned) {
        // A non-directory replacing a planned directory drops what was planned under it.
        if !entry.is_dir() {
            // Everything under it sorts right after "path/" (a range, not
            // a scan of the whole plan per file).
            let prefix = format!("{path}/");
            let under: Vec<String> = self
                .entries
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in under {
                self.entries.remove(&k);
            }
        }
        self.entries.insert(path.to_string(), entry);
    }

    /// Whether `path` is (or will be) a directory in the destination.
    fn is_dir(&self, path: &str) -> Result<bool> {
        if let Some(p) = self.entries.get(path) {
            return Ok(p.is_dir());
        }
        Ok(self
            .dest
            .lookup(path, true)?
            .is_some_and(|f| f.meta.is_dir()))
    }

    /// Resolves symlinks in a destination directory path, so writes go
    /// where the link leads (Debian's /var/run -> /run).
    fn resolve_dir(&self, path: &str) -> Result<String> {
        let mut resolved = String::from("/");
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let candidate = join(&resolved, part);
            if self.entries.contains_key(&candidate) {
                resolved = candidate;
                continue;
            }
            match self.dest.lookup(&candidate, true)? {
                Some(f) if f.meta.is_dir() => resolved = f.path,
                _ => resolved = candidate,
            }
        }
        Ok(resolved)
    }

    /// Plans every missing or existing ancestor of `dir` and `dir` itself.
    /// Existing directories are written with their metadata (their mtime
    /// changes, as a directory that gets a new entry does); new ones are
    /// 0755 and belong to `owner` (root by default).
    fn ensure_parents(&mut self, dir: &str, owner: Option<(u32, u32)>) -> Result<()> {
        let mut cur = String::from("/");
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            cur = join(&cur, part);
            if self.entries.get(&cur).is_some_and(Planned::is_dir) {
                continue;
            }
            let (uid, gid) = owner.unwrap_or((0, 0));
            let m = match self.dest.lookup(&cur, false)? {
                Some(f) if f.meta.is_dir() => {
                    use std::os::unix::fs::MetadataExt;
                    meta(
                        f.meta.mode() & 0o7777,
                        f.meta.uid(),
                        f.meta.gid(),
                        self.now,
                        0,
                    )
                }
                Some(f) if !f.meta.file_type().is_symlink() => {
                    return Err(ExecError::User(format!(
                        "cannot create directory {cur}: a file is in the way"
                    )))
                }
                _ => meta(0o755, uid, gid, self.now, 0),
            };
            self.entries.insert(cur.clone(), Planned::Dir(m));
        }
        Ok(())
    }

    fn mkdir(
        &mut self,
        path: &str,
        mode: u32,
        parents: bool,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let path = normalize(path);
        if self.is_dir(&path)? {
            return Ok(());
        }
        let parent = self.resolve_dir(&parent_of(&path))?;
        if !parents && !self.is_dir(&parent)? {
            return Err(ExecError::User(format!(
                "mkdir {path}: parent directory does not exist"
            )));
        }
        let (uid, gid) = owner.unwrap_or((0, 0));
        // mkdir -p: every directory it creates gets the mode and owner.
        let mut cur = String::from("/");
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            cur = join(&cur, part);
            if !self.is_dir(&cur)? {
                self.entries
                    .insert(cur.clone(), Planned::Dir(meta(mode, uid, gid, self.now, 0)));
            }
        }
        self.ensure_parents(&parent, owner)?;
        let target = join(&parent, &basename(&path));
        self.entries
            .insert(target, Planned::Dir(meta(mode, uid, gid, self.now, 0)));
        Ok(())
    }

    fn owner_ids(&mut self, owner: Option<&Owner>) -> Result<Option<(u32, u32)>> {
        let Some(owner) = owner else { return Ok(None) };
        if self.users.is_none() {
            self.users = Some(Users::read(self.dest)?);
        }
        let users = self
            .users
            .as_ref()
            .ok_or_else(|| ExecError::Internal("users".into()))?;
        users.resolve(owner).map(Some)
    }

    fn copy(&mut self, env: FileOpEnv<'_>, input: &Input<'_>, copy: &Copy) -> Result<()> {
        let owner = self.owner_ids(copy.owner.as_ref())?;
        let exclude = Exclude::new(&copy.exclude);
        // Resolve every source first: the destination is a directory when
        // there are several, or when it ends in '/'.
        let found = resolve_sources(input.source, copy)?;
        let dest_is_dir = copy.dest.ends_with('/')
            || copy.dest.ends_with("/.")
            || found.len() > 1
            || copy.parents;
        let dest = normalize(&copy.dest);
        for (anchor, entry, as_written) in found {
            let ids = |e: &SrcEntry| match owner {
                Some(o) => o,
                None if input.is_context => (0, 0),
                None => (e.uid, e.gid),
            };
            if copy.parents {
                // --parents keeps the path below the anchor (`/./`), or the whole path.
                let rel = as_written
                    .strip_prefix(&anchor)
                    .unwrap_or(&as_written)
                    .trim_start_matches('/')
                    .to_string();
                self.ensure_parents(&self.resolve_dir(&dest)?, owner)?;
                // Directories between the destination and the file are
                // made with the metadata of the source's own directories.
                let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
                let mut src_dir = anchor.clone();
                let mut dst_dir = self.resolve_dir(&dest)?;
                for part in parts.iter().take(parts.len().saturating_sub(1)) {
                    src_dir = join(&src_dir, part);
                    dst_dir = join(&dst_dir, part);
                    if self.entries.contains_key(&dst_dir) {
                        continue;
                    }
                    match input.source.lookup(&src_dir, false)? {
                        Some(d) if d.kind == Kind::Dir => self.plan_one(&d, &dst_dir, None, &ids),
                        _ => self.ensure_parents(&dst_dir, owner)?,
                    }
                }
                let target_parent = self.resolve_dir(&dst_dir)?;
                let target = join(&target_parent, &basename(&rel));
                self.copy_entry(
                    input,
                    &entry,
                    &target,
                    copy.chmod.as_ref(),
                    &ids,
                    &exclude,
                    "",
                )?;
                continue;
            }
            match &entry.kind {
                Kind::Dir => {
                    // The destination directory is made like `mkdir -p`
                    // (kept as it is when it exists, else 0755 and owned by
                    // root or the --chown owner); only what is inside the
                    // source directory is copied with its metadata.
                    let target = self.resolve_dir(&dest)?;
                    self.ensure_parents(&target, owner)?;
                    self.copy_children(
                        input,
                        &entry,
                        &target,
                        copy.chmod.as_ref(),
                        &ids,
                        &exclude,
                        "",
                    )?;
                }
                Kind::File
                    if copy.unpack
                        && self.unpack(env, input, &entry, &dest, copy, owner, &exclude)? => {}
                _ => {
                    if !exclude.is_empty() && exclude.matches(&basename(&as_written)) {
                        continue;
                    }
                    let into_dir = dest_is_dir || self.is_dir(&dest)?;
                    let (dir, name) = if into_dir {
                        (dest.clone(), basename(&as_written))
                    } else {
                        (parent_of(&dest), basename(&dest))
                    };
                    let dir = self.resolve_dir(&dir)?;
                    self.ensure_parents(&dir, owner)?;
                    let target = join(&dir, &name);
                    self.copy_entry(
                        input,
                        &entry,
                        &target,
                        copy.chmod.as_ref(),
                        &ids,
                        &exclude,
                        "",
                    )?;
                }
            }
        }
        Ok(())
    }

    /// ADD of a local archive: unpack it into the destination directory.
    /// Returns false when the file is not an archive (then it is copied).
    #[allow(clippy::too_many_arguments)]
    fn unpack(
        &mut self,
        env: FileOpEnv<'_>,
        _input: &Input<'_>,
        entry: &SrcEntry,
        dest: &str,
        copy: &Copy,
        owner: Option<(u32, u32)>,
        exclude: &Exclude,
    ) -> Result<bool> {
        let file = File::open(&entry.real)?;
        let (reader, is_tar) = layer::sniff_archive(Box::new(file))?;
        if !is_tar {
            return Ok(false);
        }
        let tmp = env.store.temp_path("unpack");
        std::fs::create_dir_all(&tmp)?;
        self.temps.push(TempDir(tmp.clone()));
        layer::apply_layer(
            reader,
            &tmp,
            &ApplyOptions {
                whiteouts: layer::Whiteouts::Keep,
                chown: true,
                same_owner_required: false,
                links: None,
            },
        )
        .map_err(|e| ExecError::User(format!("unpacking {}: {e}", entry.path)))?;
        let view = FsView::new(vec![tmp.clone()]);
        let unpacked = Input {
            source: &view,
            is_context: false,
        };
        let root = view
            .lookup("/", false)?
            .map(|f| SrcEntry::from_meta("/".into(), f.real, &f.meta))
            .transpose()?
            .ok_or_else(|| ExecError::Internal("unpacked archive has no root".into()))?;
        let target = self.resolve_dir(dest)?;
        self.ensure_parents(&target, owner)?;
        let ids = |e: &SrcEntry| owner.unwrap_or((e.uid, e.gid));
        // The destination directory keeps its own metadata; only the
        // archive's contents are added.
        for child in unpacked.source.list("/")? {
            let t = join(&target, child.name());
            self.copy_entry(
                &unpacked,
                &child,
                &t,
                copy.chmod.as_ref(),
                &ids,
                exclude,
                child.name(),
            )?;
        }
        let _ = root;
        Ok(true)
    }

    /// Plans `entry` (and, for a directory, everything under it) at `target`.
    #[allow(clippy::too_many_arguments)]
    fn copy_entry(
        &mut self,
        input: &Input<'_>,
        entry: &SrcEntry,
        target: &str,
        chmod: Option<&Chmod>,
        ids: &dyn Fn(&SrcEntry) -> (u32, u32),
        exclude: &Exclude,
        rel: &str,
    ) -> Result<()> {
        if !rel.is_empty() && exclude.matches(rel) {
            return Ok(());
        }
        self.plan_one(entry, target, chmod, ids);
        if entry.kind == Kind::Dir {
            self.copy_children(input, entry, target, chmod, ids, exclude, rel)?;
        }
        Ok(())
    }

    /// Plans everything under directory `entry` at `target`.
    #[allow(clippy::too_many_arguments)]
    fn copy_children(
        &mut self,
        input: &Input<'_>,
        entry: &SrcEntry,
        target: &str,
        chmod: Option<&Chmod>,
        ids: &dyn Fn(&SrcEntry) -> (u32, u32),
        exclude: &Exclude,
        rel: &str,
    ) -> Result<()> {
        {
            let prefix = if entry.path == "/" {
                "/".to_string()
            } else {
                format!("{}/", entry.path)
            };
            for child in input.source.walk(&entry.path)? {
                let Some(sub) = child.path.strip_prefix(&prefix) else {
                    continue;
                };
                let child_rel = if rel.is_empty() {
                    sub.to_string()
                } else {
                    format!("{rel}/{sub}")
                };
                if exclude.matches(&child_rel) {
                    continue;
                }
                self.plan_one(&child, &join(target, sub), chmod, ids);
            }
        }
        Ok(())
    }

    fn plan_one(
        &mut self,
        entry: &SrcEntry,
        target: &str,
        chmod: Option<&Chmod>,
        ids: &dyn Fn(&SrcEntry) -> (u32, u32),
    ) {
        let (uid, gid) = ids(entry);
        let mode = apply_chmod(entry.mode, chmod, entry.kind == Kind::Dir, &entry.kind);
        let m = meta(mode, uid, gid, entry.mtime, entry.mtime_nsec);
        let planned = match &entry.kind {
            Kind::Dir => Planned::Dir(m),
            Kind::File => Planned::File {
                meta: m,
                real: entry.real.clone(),
                size: entry.size,
            },
            Kind::Symlink(t) => Planned::Symlink {
                meta: m,
                target: t.clone(),
            },
            Kind::Char(a, b) => Planned::Device {
                meta: m,
                kind: DeviceKind::Char,
                major: *a,
                minor: *b,
            },
            Kind::Block(a, b) => Planned::Device {
                meta: m,
                kind: DeviceKind::Block,
                major: *a,
                minor: *b,
            },
            Kind::Fifo => Planned::Device {
                meta: m,
                kind: DeviceKind::Fifo,
                major: 0,
                minor: 0,
            },
            Kind::Other => return,
        };
        self.put(target, planned);
    }
}

/// A copy's sources resolved in its input: (the `--parents` anchor, the
/// entry with a top-level symlink followed, the path as matched).
fn resolve_sources(source: &dyn Source, copy: &Copy) -> Result<Vec<(String, SrcEntry, String)>> {
    let mut found = Vec::new();
    for src in &copy.sources {
        let (anchor, pattern) = split_parents(src, copy.parents);
        if has_wildcard(&pattern) {
            for e in source.glob(&pattern)? {
                let followed = source.lookup(&e.path, true)?.unwrap_or(e.clone());
                found.push((anchor.clone(), followed, e.path.clone()));
            }
        } else {
            let path = normalize(&pattern);
            match source.lookup(&path, true)? {
                Some(e) => found.push((anchor.clone(), e, path)),
                None => {
                    let mut msg = format!("failed to calculate checksum: {path:?}: not found");
                    if let Some(why) = source.explain_missing(&path) {
                        msg = format!("{msg} ({why})");
                    }
                    return Err(ExecError::User(msg));
                }
            }
        }
    }
    Ok(found)
}

/// What a file op reads from build contexts, as a checksum per copy: part
/// of its cache key. Only contexts contribute; other inputs are keyed by
/// how they were built.
pub fn content_key(inputs: &[Input<'_>], actions: &[FileAction]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for action in actions {
        let FileAction::Copy(copy) = action else {
            continue;
        };
        let Some(input) = inputs.get(copy.input) else {
            continue;
        };
        if !input.is_context {
            continue;
        }
        let mut entries = Vec::new();
        for (_, entry, _) in resolve_sources(input.source, copy)? {
            let is_dir = entry.kind == Kind::Dir;
            let path = entry.path.clone();
            entries.push(entry);
            if is_dir {
                entries.extend(input.source.walk(&path)?);
            }
        }
        match input.source.checksum(&entries)? {
            Some(sum) => out.push(sum),
            None => out.push(String::new()),
        }
    }
    Ok(out)
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `--exclude` patterns, matched against paths relative to the copied source.
struct Exclude {
    patterns: Vec<String>,
}

impl Exclude {
    fn new(patterns: &[String]) -> Self {
        Exclude {
            patterns: patterns
                .iter()
                .map(|p| {
                    p.trim_start_matches("./")
                        .trim_start_matches('/')
                        .to_string()
                })
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Docker's rule: a pattern matches a path or any of its parents;
    /// `**` spans directories.
    fn matches(&self, rel: &str) -> bool {
        let parts: Vec<&str> = rel.split('/').collect();
        self.patterns.iter().any(|p| {
            let pat: Vec<&str> = p.split('/').collect();
            (1..=parts.len()).any(|n| match_parts(&pat, &parts[..n]))
        })
    }
}

fn match_parts(pat: &[&str], parts: &[&str]) -> bool {
    match (pat.first(), parts.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            match_parts(&pat[1..], parts) || (!parts.is_empty() && match_parts(pat, &parts[1..]))
        }
        (Some(p), Some(n)) => {
            super::source::match_component(p, n) && match_parts(&pat[1..], &parts[1..])
        }
        _ => false,
    }
}

/// Applies `--chmod` to a mode; symlinks keep theirs.
fn apply_chmod(mode: u32, chmod: Option<&Chmod>, is_dir: bool, kind: &Kind) -> u32 {
    if matches!(kind, Kind::Symlink(_)) {
        return mode;
    }
    match chmod {
        None => mode,
        Some(Chmod::Octal(m)) => *m,
        Some(Chmod::Symbolic(spec)) => symbolic_mode(mode, spec, is_dir),
    }
}

/// chmod(1)'s symbolic modes: `[ugoa]*[+-=][rwxXst]*`, comma separated.
pub fn symbolic_mode(mut mode: u32, spec: &str, is_dir: bool) -> u32 {
    for clause in spec.split(',') {
        let who_len = clause
            .find(|c: char| !"ugoa".contains(c))
            .unwrap_or(clause.len());
        let who = &clause[..who_len];
        let mut mask = 0u32;
        for c in who.chars() {
            mask |= match c {
                'u' => 0o4700,
                'g' => 0o2070,
                'o' => 0o1007,
                _ => 0o7777,
            };
        }
        if who.is_empty() {
            // No "who": like "a", minus the umask; BuildKit applies 0022 semantics? use all.
            mask = 0o7777;
        }
        let mut rest = &clause[who_len..];
        while let Some(op) = rest.chars().next() {
            rest = &rest[op.len_utf8()..];
            let perm_len = rest.find(|c: char| "+-=".contains(c)).unwrap_or(rest.len());
            let perms = &rest[..perm_len];
            rest = &rest[perm_len..];
            let mut bits = 0u32;
            for p in perms.chars() {
                bits |= match p {
                    'r' => 0o444,
                    'w' => 0o222,
                    'x' => 0o111,
                    'X' if is_dir || mode & 0o111 != 0 => 0o111,
                    's' => 0o6000,
                    't' => 0o1000,
                    'u' => spread(mode >> 6 & 7),
                    'g' => spread(mode >> 3 & 7),
                    'o' => spread(mode & 7),
                    _ => 0,
                };
            }
            let bits = bits & mask;
            match op {
                '+' => mode |= bits,
                '-' => mode &= !bits,
                '=' => mode = (mode & !(mask & 0o7777)) | bits,
                _ => {}
            }
        }
    }
    mode & 0o7777
}

fn spread(rwx: u32) -> u32 {
    rwx << 6 | rwx << 3 | rwx
}

/// `/etc/passwd` and `/etc/group` of the destination, for `--chown` names.
struct Users {
    passwd: Vec<(String, u32, u32)>,
    groups: Vec<(String, u32)>,
}

impl Users {
    fn read(view: &FsView) -> Result<Users> {
        let parse = |data: Option<Vec<u8>>| -> Vec<Vec<String>> {
            String::from_utf8_lossy(&data.unwrap_or_default())
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| l.split(':').map(str::to_string).collect())
                .collect()
        };
        let passwd = parse(view.read_file("/etc/passwd")?)
            .into_iter()
            .filter_map(|f| {
                Some((
                    f.first()?.clone(),
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                ))
            })
            .collect();
        let groups = parse(view.read_file("/etc/group")?)
            .into_iter()
            .filter_map(|f| Some((f.first()?.clone(), f.get(2)?.parse().ok()?)))
            .collect();
        Ok(Users { passwd, groups })
    }

    /// `user[:group]` to ids: numbers are taken as they are; a user alone
    /// means the group with the same number (Docker's rule).
    fn resolve(&self, owner: &Owner) -> Result<(u32, u32)> {
        // A name alone takes the user's primary group from /etc/passwd (as
        // BuildKit); a number alone is used for the group too (Docker's rule).
        let (uid, primary) = match owner.user.parse::<u32>() {
            Ok(n) => (n, n),
            Err(_) => self
                .passwd
                .iter()
                .find(|(n, _, _)| *n == owner.user)
                .map(|(_, u, g)| (*u, *g))
                .ok_or_else(|| {
                    ExecError::User(format!(
                        "unable to find user {}: no matching entries in passwd file",
                        owner.user
                    ))
                })?,
        };
        let gid = match &owner.group {
            None => primary,
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self
                    .groups
                    .iter()
                    .find(|(n, _)| n == g)
                    .map(|(_, id)| *id)
                    .ok_or_else(|| {
                        ExecError::User(format!(
                            "unable to find group {g}: no matching entries in group file"
                        ))
                    })?,
            },
        };
        Ok((uid, gid))
    }
}

/// Splits a `--parents` source at `/./`: (the part kept out of the
/// destination, the whole pattern).
fn split_parents(src: &str, parents: bool) -> (String, String) {
    let src = if src.starts_with('/') {
        src.to_string()
    } else {
        format!("/{src}")
    };
    if parents {
        if let Some(i) = src.find("/./") {
            return (
                normalize(&src[..i]),
                format!("{}/{}", &src[..i], &src[i + 3..]),
            );
        }
    }
    ("/".into(), src)
}

/// Cleans an absolute path (`..` cannot climb above `/`); keeps no trailing slash.
pub fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn parent_of(p: &str) -> String {
    let p = normalize(p);
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => p[..i].to_string(),
    }
}

fn basename(p: &str) -> String {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string()
}

fn join(dir: &str, name: &str) -> String {
    let name = name.trim_start_matches('/');
    if name.is_empty() {
        return normalize(dir);
    }
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

impl From<io::Error> for ExecError {
    fn from(e: io::Error) -> Self {
        ExecError::Io(e)
    }
}

#[allow(dead_code)]
fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_modes_like_chmod() {
        assert_eq!(symbolic_mode(0o644, "u+x", false), 0o744);
        assert_eq!(symbolic_mode(0o755, "go-w", false), 0o755);
        assert_eq!(symbolic_mode(0o777, "go-w", false), 0o755);
        assert_eq!(symbolic_mode(0o644, "a+X", false), 0o644);
        assert_eq!(symbolic_mode(0o644, "a+X", true), 0o755);
        assert_eq!(symbolic_mode(0o600, "g=u", false), 0o660);
        assert_eq!(symbolic_mode(0o644, "u=rwx,g=rx,o=", false), 0o750);
    }

    #[test]
    fn exclude_matches_paths_and_parents() {
        let e = Exclude::new(&["*.txt".into(), "build".into(), "**/*.log".into()]);
        assert!(e.matches("a.txt"));
        assert!(!e.matches("dir/a.txt"));
        assert!(e.matches("build/x/y"));
        assert!(e.matches("deep/er/x.log"));
        assert!(!e.matches("src/main.rs"));
    }

    #[test]
    fn paths() {
        assert_eq!(normalize("/a/../../b/./c/"), "/b/c");
        assert_eq!(parent_of("/a/b"), "/a");
        assert_eq!(parent_of("/a"), "/");
        assert_eq!(join("/", "x"), "/x");
        assert_eq!(
            split_parents("/src/./pkg/a.go", true),
            ("/src".into(), "/src/pkg/a.go".into())
        );
    }
}
