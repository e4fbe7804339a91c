//! A read-only union view of a stack of layer snapshots, resolved in user
//! space the way overlayfs would merge them.
//!
//! Snapshots hold one layer each, with deletions in overlayfs's own format
//! (a 0/0 character device for a whiteout, an `overlay.opaque` xattr on a
//! directory whose lower contents are hidden) so they can also serve as
//! overlay lowerdirs. AUFS-style `.wh.` marker files are understood too.
//! File ops read through this view to copy from another stage, to look at
//! the destination (does `/app` exist? is it a directory?) and to read
//! `/etc/passwd` for `--chown`.

use std::collections::BTreeMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const MAX_SYMLINKS: usize = 40;

/// A file found in the view: where it really is, and its metadata.
#[derive(Debug, Clone)]
pub struct Found {
    /// The resolved path inside the view (absolute, `/`-separated).
    pub path: String,
    /// The file in the snapshot that provides it.
    pub real: PathBuf,
    /// Its metadata (not following a final symlink).
    pub meta: Metadata,
}

/// The merged view of layer snapshots.
#[derive(Debug, Clone, Default)]
pub struct FsView {
    /// Snapshot roots, top layer first.
    layers: Vec<PathBuf>,
    /// Per layer (same order), directories it only implies: they merge
    /// like directories but show the metadata of the layer below.
    implicit: Vec<std::collections::HashSet<String>>,
}

impl FsView {
    /// A view of `layers`, given bottom layer first (image order).
    /// The snapshot roots, top layer first.
    pub fn layer_roots(&self) -> &[PathBuf] {
        &self.layers
    }

    pub fn new(layers: Vec<PathBuf>) -> Self {
        let n = layers.len();
        Self::with_implicit(layers, vec![Default::default(); n])
    }

    /// A view of `layers` (bottom first), each with the directories it only
    /// implies (paths relative to its root, without a leading `/`).
    pub fn with_implicit(
        mut layers: Vec<PathBuf>,
        mut implicit: Vec<std::collections::HashSet<String>>,
    ) -> Self {
        layers.reverse();
        implicit.reverse();
        implicit.resize(layers.len(), Default::default());
        FsView { layers, implicit }
    }

    fn is_implicit(&self, layer: usize, path: &str) -> bool {
        self.implicit
            .get(layer)
            .is_some_and(|set| set.contains(path.trim_start_matches('/')))
    }

    /// Whether the view has no layers at all (scratch).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Looks `path` up. Symlinks in parent components are followed (scoped
    /// to the view's root); the last component is followed only if
    /// `follow_last`.
    pub fn lookup(&self, path: &str, follow_last: bool) -> io::Result<Option<Found>> {
        let mut pending: Vec<String> = components(path).into_iter().rev().collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0;
        // Layers (indices into self.layers) where the current directory is a
        // live directory of the merge.
        let mut active: Vec<usize> = (0..self.layers.len()).collect();
        let mut found: Option<Found> = None;
        if pending.is_empty() {
            return Ok(self.root_found());
        }
        while let Some(name) = pending.pop() {
            let is_last = pending.is_empty();
            let dir = join(&resolved);
            let Some((entry, next_active)) = self.child(&active, &dir, &name)? else {
                return Ok(None);
            };
            let ft = entry.meta.file_type();
            if ft.is_symlink() && (!is_last || follow_last) {
                hops += 1;
                if hops > MAX_SYMLINKS {
                    return Err(io::Error::other(format!(
                        "too many levels of symbolic links at {path}"
                    )));
                }
                let target = fs::read_link(&entry.real)?;
                let target = target.to_string_lossy().into_owned();
                let mut parts = components(&target);
                if !target.starts_with('/') {
                    let mut base = resolved.clone();
                    let mut rel = Vec::new();
                    for p in parts {
                        if p == ".." {
                            if rel.is_empty() {
                                base.pop();
                            } else {
                                rel.pop();
                            }
                        } else {
                            rel.push(p);
                        }
                    }
                    base.extend(rel);
                    parts = base;
                } else {
                    parts = clamp(parts);
                }
                // Restart from the root with the link target spliced in.
                for p in parts.into_iter().rev() {
                    pending.push(p);
                }
                resolved.clear();
                active = (0..self.layers.len()).collect();
                continue;
            }
            resolved.push(name);
            if is_last {
                found = Some(Found {
                    path: join(&resolved),
                    real: entry.real,
                    meta: entry.meta,
                });
            } else if !ft.is_dir() {
                return Ok(None);
            } else {
                active = next_active;
            }
        }
        Ok(found)
    }

    fn root_found(&self) -> Option<Found> {
        let real = self.layers.first()?.clone();
        let meta = fs::symlink_metadata(&real).ok()?;
        Some(Found {
            path: "/".into(),
            real,
            meta,
        })
    }

    /// Finds `name` in directory `dir` (resolved) given the layers where
    /// `dir` is live; returns the topmost entry and, if it is a directory,
    /// the layers where that directory is live.
    fn child(
        &self,
        active: &[usize],
        dir: &str,
        name: &str,
    ) -> io::Result<Option<(Found, Vec<usize>)>> {
        let mut top: Option<Found> = None;
        let name = name.to_string();
        let name = name.as_str();
        let mut live = Vec::new();
        for &layer in active {
            let base = self.layers[layer].join(dir.trim_start_matches('/'));
            if base.join(format!(".wh.{name}")).exists() {
                break;
            }
            let real = base.join(name);
            let meta = match fs::symlink_metadata(&real) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
                    if is_opaque(&base) || has_marker(&base) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if is_whiteout(&meta) {
                break;
            }
            match &top {
                None => {
                    let is_dir = meta.is_dir();
                    top = Some(Found {
                        path: String::new(),
                        real: real.clone(),
                        meta: meta.clone(),
                    });
                    if !is_dir {
                        break;
                    }
                    live.push(layer);
                    if is_opaque(&real) || real.join(".wh..wh..opq").exists() {
                        break;
                    }
                }
                Some(_) => {
                    if !meta.is_dir() {
                        break;
                    }
                    live.push(layer);
                    if is_opaque(&real) || real.join(".wh..wh..opq").exists() {
                        break;
                    }
                }
            }
            if is_opaque(&base) || has_marker(&base) {
                break;
            }
        }
        // A directory a layer only implies shows the metadata of the first
        // layer below that has an entry for it.
        if let Some(t) = top.as_mut() {
            if t.meta.is_dir() {
                let rel = if dir == "/" {
                    name.to_string()
                } else {
                    format!("{}/{name}", dir.trim_start_matches('/'))
                };
                if let Some(&first) = live.first() {
                    if self.is_implicit(first, &rel) {
                        for &layer in live.iter().skip(1) {
                            if !self.is_implicit(layer, &rel) {
                                let real = self.layers[layer].join(&rel);
                                if let Ok(meta) = fs::symlink_metadata(&real) {
                                    t.meta = meta;
                                    t.real = real;
                                }
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(top.map(|t| (t, live)))
    }

    /// Lists a directory of the merged view: name → entry, whiteouts
    /// applied, marker files hidden. `dir` must be a resolved directory path.
    pub fn read_dir(&self, dir: &str) -> io::Result<BTreeMap<String, Found>> {
        let mut out = BTreeMap::new();
        let live = self.live_layers(dir)?;
        let mut hidden: std::collections::BTreeSet<String> = Default::default();
        for layer in live {
            let base = self.layers[layer].join(dir.trim_start_matches('/'));
            let rd = match fs::read_dir(&base) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut here = Vec::new();
            for entry in rd {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                here.push((name, entry.path()));
            }
            for (name, real) in &here {
                if let Some(gone) = name.strip_prefix(".wh.") {
                    if gone != ".wh..opq" {
                        hidden.insert(gone.to_string());
                    }
                }
                let _ = real;
            }
            for (name, real) in here {
                if name.starts_with(".wh.") || hidden.contains(&name) || out.contains_key(&name) {
                    continue;
                }
                let meta = fs::symlink_metadata(&real)?;
                if is_whiteout(&meta) {
                    hidden.insert(name);
                    continue;
                }
                let path = if dir == "/" {
                    format!("/{name}")
                } else {
                    format!("{dir}/{name}")
                };
                out.insert(name, Found { path, real, meta });
            }
        }
        Ok(out)
    }

    /// The layers in which resolved directory `dir` is live, top first.
    fn live_layers(&self, dir: &str) -> io::Result<Vec<usize>> {
        let mut active: Vec<usize> = (0..self.layers.len()).collect();
        let mut cur = String::from("/");
        for name in components(dir) {
            match self.child(&active, &cur, &name)? {
                Some((found, live)) if found.meta.is_dir() => active = live,
                _ => return Ok(Vec::new()),
            }
            cur = if cur == "/" {
                format!("/{name}")
            } else {
                format!("{cur}/{name}")
            };
        }
        Ok(active)
    }

    /// Reads a whole file (following symlinks), if present.
    pub fn read_file(&self, path: &str) -> io::Result<Option<Vec<u8>>> {
        match self.lookup(path, true)? {
            Some(f) if f.meta.is_file() => fs::read(&f.real).map(Some),
            _ => Ok(None),
        }
    }
}

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn has_marker(dir: &Path) -> bool {
    dir.join(".wh..wh..opq").exists()
}

fn is_opaque(dir: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|name| {
            let mut buf = [0u8; 4];
            matches!(rustix::fs::lgetxattr(dir, *name, &mut buf), Ok(n) if n >= 1 && buf[0] == b'y')
        })
}

/// The non-empty, non-`.` components of a path; `..` is kept.
fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

/// Resolves `..` in an absolute component list, never above the root.
fn clamp(parts: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in parts {
        if p == ".." {
            out.pop();
        } else {
            out.push(p);
        }
    }
    out
}

fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn upper_layers_win_and_whiteouts_hide() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
        write(&l1, "etc/passwd", "old");
        write(&l1, "etc/group", "g");
        write(&l1, "opt/a/x", "x");
        write(&l2, "etc/passwd", "new");
        write(&l2, "etc/.wh.group", "");
        write(&l2, "opt/a/.wh..wh..opq", "");
        write(&l2, "opt/a/y", "y");
        let view = FsView::new(vec![l1, l2]);
        assert_eq!(view.read_file("/etc/passwd").unwrap().unwrap(), b"new");
        assert!(view.lookup("/etc/group", false).unwrap().is_none());
        assert!(view.lookup("/opt/a/x", false).unwrap().is_none());
        let names: Vec<String> = view.read_dir("/opt/a").unwrap().into_keys().collect();
        assert_eq!(names, ["y"]);
        let names: Vec<String> = view.read_dir("/etc").unwrap().into_keys().collect();
        assert_eq!(names, ["passwd"]);
    }

    #[test]
    fn symlinks_resolve_inside_the_view() {
        let t = tempfile::tempdir().unwrap();
        let l1 = t.path().join("l1");
        write(&l1, "usr/lib/libc.so", "c");
        fs::create_dir_all(&l1).unwrap();
        symlink("usr/lib", l1.join("lib")).unwrap();
        symlink("/../../etc", l1.join("escape")).unwrap();
        symlink("../../../usr", l1.join("usr/lib/up")).unwrap();
        let view = FsView::new(vec![l1]);
        assert_eq!(
            view.lookup("/lib/libc.so", false).unwrap().unwrap().path,
            "/usr/lib/libc.so"
        );
        assert!(view
            .lookup("/lib", false)
            .unwrap()
            .unwrap()
            .meta
            .file_type()
            .is_symlink());
        assert!(view.lookup("/escape/passwd", true).unwrap().is_none());
        assert_eq!(
            view.lookup("/usr/lib/up/lib/libc.so", true)
                .unwrap()
                .unwrap()
                .path,
            "/usr/lib/libc.so"
        );
    }
}
