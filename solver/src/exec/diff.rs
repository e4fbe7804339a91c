//! A RUN's layer, read from its overlay upperdir: new and changed files as
//! they are, deletions (0/0 character devices) as `.wh.` whiteouts,
//! directories recreated over lower ones (the overlay's opaque xattr) with a
//! `.wh..wh..opq` marker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rbuild_cache::layer::{self, Compression, DeviceKind, EntryMeta, LayerDescriptor};
use rbuild_cache::Store;

use super::error::Result;

/// Extended attributes copied into layers. Overlay's own (`trusted.overlay.*`,
/// `user.overlay.*`) are its bookkeeping, never content.
fn content_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.") {
            continue;
        }
        if !(name.starts_with("user.")
            || name.starts_with("security.capability")
            || name.starts_with("trusted."))
        {
            continue;
        }
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut value) {
            value.truncate(len);
            out.push((name.to_string(), value));
        }
    }
    out.sort();
    out
}

fn is_opaque(path: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"].iter().any(|name| {
        let mut buf = [0u8; 4];
        matches!(rustix::fs::lgetxattr(path, *name, &mut buf), Ok(n) if n >= 1 && buf[0] == b'y')
    })
}

/// Looks a directory up below the upperdir: its (mode, uid, gid).
pub type LowerDir<'a> = dyn Fn(&str) -> Option<(u32, u32, u32)> + 'a;

enum Item {
    Dir {
        meta: EntryMeta,
        opaque: bool,
    },
    File {
        meta: EntryMeta,
        size: u64,
        path: std::path::PathBuf,
        /// (dev, ino) when the file has other names: the first name in
        /// layer order holds the content, the others link to it.
        inode: Option<(u64, u64)>,
    },
    Hardlink {
        meta: EntryMeta,
        target: String,
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
    Whiteout,
}

/// What an on-disk entry becomes in a layer (None for sockets).
fn classify(path: &Path, md: &fs::Metadata, opaque: bool) -> io::Result<Option<Item>> {
    let ft = md.file_type();
    let mut meta = EntryMeta::from_metadata(md);
    Ok(Some(if ft.is_dir() {
        meta.xattrs = content_xattrs(path);
        Item::Dir { meta, opaque }
    } else if ft.is_symlink() {
        let target = fs::read_link(path)?.to_string_lossy().into_owned();
        Item::Symlink { meta, target }
    } else if ft.is_file() {
        meta.xattrs = content_xattrs(path);
        let inode = (md.nlink() > 1).then(|| (md.dev(), md.ino()));
        Item::File {
            meta,
            size: md.len(),
            path: path.to_path_buf(),
            inode,
        }
    } else {
        let rdev = md.rdev();
        let major = ((rdev >> 8) & 0xfff) as u32 | ((rdev >> 32) & !0xfff) as u32;
        let minor = (rdev & 0xff) as u32 | ((rdev >> 12) & !0xff) as u32;
        let kind = if ft.is_char_device() {
            DeviceKind::Char
        } else if ft.is_block_device() {
            DeviceKind::Block
        } else if ft.is_fifo() {
            DeviceKind::Fifo
        } else {
            return Ok(None); // sockets are not layer content
        };
        Item::Device {
            meta,
            kind,
            major,
            minor,
        }
    }))
}

/// Writes the layer of an upperdir; `None` when nothing changed. `skip`
/// holds paths (relative, no leading `/`) the sandbox created only to hold
/// mounts: they are left out when still empty.
pub fn write_upper_layer(
    store: &Store,
    upper: &Path,
    skip: &HashSet<String>,
    lower_dir: &LowerDir<'_>,
    epoch: Option<i64>,
) -> Result<Option<LayerDescriptor>> {
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            upper.to_path_buf()
        } else {
            upper.join(&dir)
        };
        let mut names: Vec<String> = Vec::new();
        for entry in fs::read_dir(&abs)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        for name in names {
            let rel = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            let path = upper.join(&rel);
            let md = fs::symlink_metadata(&path)?;
            let ft = md.file_type();
            if skip.contains(&rel)
                && (!ft.is_dir() || fs::read_dir(&path)?.next().is_none())
                && !ft.is_char_device()
            {
                continue;
            }
            if ft.is_char_device() && md.rdev() == 0 {
                items.insert(rel, Item::Whiteout);
                continue;
            }
            let opaque = ft.is_dir() && is_opaque(&path);
            if let Some(item) = classify(&path, &md, opaque)? {
                if ft.is_dir() {
                    stack.push(rel.clone());
                }
                items.insert(rel, item);
            }
        }
    }
    finish(store, items, skip, lower_dir, epoch)
}

/// Drops mount points and untouched copied-up directories, then writes
/// the layer (None when nothing is left).
fn finish(
    store: &Store,
    mut items: BTreeMap<String, Item>,
    skip: &HashSet<String>,
    lower_dir: &LowerDir<'_>,
    epoch: Option<i64>,
) -> Result<Option<LayerDescriptor>> {
    // Directories made only to hold mounts go too once nothing else is
    // left under them (deepest first, so nested mount points unwind).
    let mut mount_dirs: Vec<&String> = skip.iter().collect();
    mount_dirs.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for dir in mount_dirs {
        if !matches!(items.get(dir), Some(Item::Dir { .. })) {
            continue;
        }
        let prefix = format!("{dir}/");
        let has_child = items
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix));
        if !has_child {
            items.remove(dir);
        }
    }
    // A directory the overlay copied up without changing it (its mode and
    // owner are the lower one's) and with nothing changed under it is not
    // part of the layer: only the mount points made inside it touched it.
    let mut dirs: Vec<String> = items
        .iter()
        .filter(|(_, i)| matches!(i, Item::Dir { opaque: false, .. }))
        .map(|(k, _)| k.clone())
        .collect();
    dirs.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for dir in dirs {
        let prefix = format!("{dir}/");
        let has_child = items
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix));
        if has_child {
            continue;
        }
        if let Some(Item::Dir { meta, .. }) = items.get(&dir) {
            if lower_dir(&dir) == Some((meta.mode, meta.uid, meta.gid)) && meta.xattrs.is_empty() {
                items.remove(&dir);
            }
        }
    }
    if items.is_empty() {
        return Ok(None);
    }
    // Hard links: the first name in layer (sorted) order carries the
    // content, later names link to it, so the tar extracts in one pass.
    let mut first_name: HashMap<(u64, u64), String> = HashMap::new();
    for (rel, item) in items.iter_mut() {
        if let Item::File {
            meta,
            inode: Some(inode),
            ..
        } = item
        {
            match first_name.get(inode) {
                Some(first) => {
                    *item = Item::Hardlink {
                        meta: meta.clone(),
                        target: first.clone(),
                    }
                }
                None => {
                    first_name.insert(*inode, rel.clone());
                }
            }
        }
    }
    let desc = layer::write_layer(store, Compression::None, epoch, |tar| {
        for (rel, item) in &items {
            match item {
                Item::Dir { meta, opaque } => {
                    tar.dir(rel, meta)?;
                    if *opaque {
                        tar.opaque(rel)?;
                    }
                }
                Item::File {
                    meta, size, path, ..
                } => {
                    let mut f = File::open(path)?;
                    tar.file(rel, meta, *size, &mut f)?;
                }
                Item::Hardlink { meta, target } => tar.hardlink(rel, meta, target)?,
                Item::Symlink { meta, target } => tar.symlink(rel, meta, target)?,
                Item::Device {
                    meta,
                    kind,
                    major,
                    minor,
                } => tar.device(rel, meta, *kind, *major, *minor)?,
                Item::Whiteout => tar.whiteout(rel)?,
            }
        }
        Ok::<(), io::Error>(())
    })?;
    Ok(Some(desc))
}

/// What a file looked like before a RUN, for the copying snapshotter:
/// any change to a file changes its ctime (which nothing can set), and a
/// replaced file or directory has a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

/// Records every path under `root` (relative, no leading `/`).
pub fn stamp_tree(root: &Path) -> Result<BTreeMap<String, Stamp>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(dir) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        for entry in fs::read_dir(&abs)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let md = fs::symlink_metadata(root.join(&rel))?;
            out.insert(
                rel.clone(),
                Stamp {
                    ino: md.ino(),
                    ctime: md.ctime(),
                    ctime_nsec: md.ctime_nsec(),
                },
            );
            if md.is_dir() {
                stack.push(rel);
            }
        }
    }
    Ok(out)
}

/// The layer of a RUN on a copied rootfs: what is new or changed since
/// `before`, deletions as whiteouts, replaced directories as opaque.
pub fn write_tree_diff(
    store: &Store,
    root: &Path,
    before: &BTreeMap<String, Stamp>,
    skip: &HashSet<String>,
    lower_dir: &LowerDir<'_>,
    epoch: Option<i64>,
) -> Result<Option<LayerDescriptor>> {
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    // (dir, whether everything below it is new)
    let mut stack = vec![(String::new(), false)];
    while let Some((dir, fresh)) = stack.pop() {
        let abs = if dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&dir)
        };
        for entry in fs::read_dir(&abs)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            let path = root.join(&rel);
            let md = fs::symlink_metadata(&path)?;
            seen.insert(rel.clone());
            if skip.contains(&rel) && (!md.is_dir() || fs::read_dir(&path)?.next().is_none()) {
                continue;
            }
            let old = before.get(&rel);
            let replaced = old.is_some_and(|o| o.ino != md.ino());
            let changed = fresh
                || old.is_none_or(|o| {
                    o.ino != md.ino() || o.ctime != md.ctime() || o.ctime_nsec != md.ctime_nsec()
                });
            let opaque = md.is_dir() && replaced;
            if changed {
                if let Some(item) = classify(&path, &md, opaque)? {
                    items.insert(rel.clone(), item);
                }
            }
            if md.is_dir() {
                stack.push((rel, fresh || opaque || old.is_none()));
            }
        }
    }
    // Deleted paths: whiteouts, but not below a deleted or replaced directory.
    for rel in before.keys() {
        if seen.contains(rel) {
            continue;
        }
        let covered = rel
            .rmatch_indices('/')
            .map(|(i, _)| &rel[..i])
            .any(|parent| {
                !seen.contains(parent)
                    || matches!(items.get(parent), Some(Item::Dir { opaque: true, .. }))
            });
        if !covered {
            items.insert(rel.clone(), Item::Whiteout);
        }
    }
    // Parents of changes are part of the layer, as an overlay copy-up makes them.
    let changed: Vec<String> = items.keys().cloned().collect();
    for rel in changed {
        let mut parent = rel.as_str();
        while let Some(i) = parent.rfind('/') {
            parent = &parent[..i];
            if items.contains_key(parent) {
                continue;
            }
            let path = root.join(parent);
            let md = fs::symlink_metadata(&path)?;
            if let Some(item) = classify(&path, &md, false)? {
                items.insert(parent.to_string(), item);
            }
        }
    }
    finish(store, items, skip, lower_dir, epoch)
}
