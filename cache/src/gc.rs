//! Disk usage and garbage collection of a store.
//!
//! What is kept: everything a tag reaches (manifests, configs, layers),
//! whatever the cache entries that survive the prune point at, and the
//! snapshots and compressed copies of those layers. Everything else under
//! `blobs/`, `snapshots/` and `tmp/` is garbage once a prune runs.
//!
//! A prune must never take something a running build is using: builds hold
//! a shared [`Lease`] on `ROOT/gc.lock` for as long as they run, and the
//! collector takes it exclusively ([`GcLock`]), so it only ever runs
//! between builds. A build killed with SIGKILL drops its lease with its
//! process, and the debris it left in `tmp/` is swept by the next prune.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::index::{CacheIndex, Entry};
use crate::layer::{snapshot_info, LayerDescriptor};
use crate::store::Store;
use crate::Digest;

/// A shared hold on the store that keeps the collector away.
#[derive(Debug)]
pub struct Lease {
    _file: File,
}

/// The collector's exclusive hold on the store.
#[derive(Debug)]
pub struct GcLock {
    _file: File,
}

fn gc_lock_file(store: &Store) -> Result<File> {
    let path = store.root().join("gc.lock");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))
}

/// Takes a lease on `store`: waits while a prune runs.
pub fn lease(store: &Store) -> Result<Lease> {
    let file = gc_lock_file(store)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
        .map_err(|e| Error::io(&store.root().join("gc.lock"), e.into()))?;
    Ok(Lease { _file: file })
}

/// Takes the collector's lock; with `wait` false, gives `None` at once
/// when a build holds a lease.
pub fn gc_lock(store: &Store, wait: bool) -> Result<Option<GcLock>> {
    use rustix::fs::FlockOperation;
    let file = gc_lock_file(store)?;
    let op = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    match rustix::fs::flock(&file, op) {
        Ok(()) => Ok(Some(GcLock { _file: file })),
        Err(rustix::io::Errno::WOULDBLOCK) if !wait => Ok(None),
        Err(e) => Err(Error::io(&store.root().join("gc.lock"), e.into())),
    }
}

/// Space used by one kind of thing in the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KindUsage {
    /// What it is: `images`, `build cache`, `snapshots`, `cache mounts`,
    /// `metadata`, `unreferenced`.
    pub kind: String,
    /// How many.
    pub count: u64,
    /// Bytes.
    pub size: u64,
    /// Bytes `rbuild prune --all` would free.
    pub reclaimable: u64,
}

/// Space used by a store, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Per kind.
    pub kinds: Vec<KindUsage>,
    /// Sum of sizes.
    pub total: u64,
    /// Sum of reclaimable sizes.
    pub reclaimable: u64,
    /// Cache entries.
    pub entries: u64,
}

/// What a prune removes.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Also snapshots of tagged images, cache mounts and the context
    /// checksum memo: everything but the tagged images themselves.
    pub all: bool,
    /// Stop once the store is at most this many bytes, removing the least
    /// recently used entries first.
    pub keep_storage: Option<u64>,
    /// Only entries (and cache mounts) unused for at least this many seconds.
    pub until: Option<u64>,
    /// The time now (seconds since the epoch).
    pub now: i64,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Cache entries removed.
    pub entries: u64,
    /// Blobs removed.
    pub blobs: u64,
    /// Snapshots removed.
    pub snapshots: u64,
    /// Cache mounts removed.
    pub cache_mounts: u64,
    /// Bytes freed.
    pub freed: u64,
    /// Bytes the store uses afterwards.
    pub remaining: u64,
}

/// Everything the collector knows about a store.
struct Survey {
    /// Blob sizes by digest, for every file under `blobs/sha256`.
    blobs: BTreeMap<Digest, u64>,
    /// What tags reach.
    tagged_blobs: BTreeSet<Digest>,
    tagged_diff_ids: BTreeSet<Digest>,
    /// Cache entries.
    entries: BTreeMap<String, Entry>,
    /// Snapshot directories by diffID hex, with their size on disk.
    snapshots: BTreeMap<String, u64>,
    /// `compressed/<diffid hex>-<compression>` memos.
    compressed: Vec<(PathBuf, String, LayerDescriptor)>,
    /// Cache mounts: directory, size, last modified.
    cache_mounts: Vec<(PathBuf, u64, i64)>,
    /// Metadata files (indexes, memos) and their sizes.
    metadata: Vec<(PathBuf, u64)>,
    /// Leftovers of interrupted writes.
    debris: Vec<(PathBuf, u64)>,
}

/// Bytes of files under `path` (apparent sizes; directories count
/// nothing). A file with several links counts its share, size / links:
/// snapshots hard-link files they share, and the shares add up to what the
/// disk holds, instead of the file once per snapshot.
fn tree_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for ent in rd.flatten() {
            let Ok(m) = ent.metadata() else { continue };
            if m.is_dir() {
                stack.push(ent.path());
            } else if m.is_file() {
                total += m.len() / m.nlink().max(1);
            }
        }
    }
    total
}

fn mtime_of(path: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).map(|m| m.mtime()).unwrap_or(0)
}

/// Marks what a manifest or index reaches.
fn mark_manifest(
    store: &Store,
    digest: &Digest,
    blobs: &mut BTreeSet<Digest>,
    diff_ids: &mut BTreeSet<Digest>,
    depth: usize,
) {
    if depth > 8 || !blobs.insert(digest.clone()) {
        return;
    }
    let Ok(doc) = store.read_json::<serde_json::Value>(digest) else {
        return;
    };
    let digest_of = |v: &serde_json::Value| {
        v.get("digest")
            .and_then(|d| d.as_str())
            .and_then(|d| Digest::parse(d).ok())
    };
    if let Some(list) = doc.get("manifests").and_then(|m| m.as_array()) {
        for m in list {
            if let Some(d) = digest_of(m) {
                mark_manifest(store, &d, blobs, diff_ids, depth + 1);
            }
        }
    }
    if let Some(config) = doc.get("config").and_then(digest_of) {
        if let Ok(c) = store.read_json::<serde_json::Value>(&config) {
            let ids = c
                .pointer("/rootfs/diff_ids")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            for id in ids {
                if let Some(d) = id.as_str().and_then(|d| Digest::parse(d).ok()) {
                    diff_ids.insert(d);
                }
            }
        }
        blobs.insert(config);
    }
    if let Some(layers) = doc.get("layers").and_then(|l| l.as_array()) {
        for l in layers {
            if let Some(d) = digest_of(l) {
                blobs.insert(d);
            }
        }
    }
}

fn survey(store: &Store, index: &CacheIndex) -> Result<Survey> {
    let root = store.root();
    let mut blobs = BTreeMap::new();
    let dir = root.join("blobs").join("sha256");
    if let Ok(rd) = fs::read_dir(&dir) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if let (Ok(d), Ok(m)) = (Digest::parse(&format!("sha256:{name}")), ent.metadata()) {
                blobs.insert(d, m.len());
            }
        }
    }
    let mut tagged_blobs = BTreeSet::new();
    let mut tagged_diff_ids = BTreeSet::new();
    for d in store.index()?.manifests {
        mark_manifest(store, &d.digest, &mut tagged_blobs, &mut tagged_diff_ids, 0);
    }
    let entries = index.entries()?;

    let mut snapshots = BTreeMap::new();
    let mut debris = Vec::new();
    let snaps = root.join("snapshots");
    if let Ok(rd) = fs::read_dir(&snaps) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let path = ent.path();
            if name.starts_with(".tmp-") || name.starts_with(".trash-") {
                debris.push((path.clone(), tree_size(&path)));
            } else if !name.starts_with('.') {
                snapshots.insert(name, tree_size(&path));
            }
        }
    }
    let tmp = root.join("tmp");
    if let Ok(rd) = fs::read_dir(&tmp) {
        for ent in rd.flatten() {
            let path = ent.path();
            debris.push((path.clone(), tree_size(&path)));
        }
    }
    // The file-per-key op cache of earlier versions.
    let legacy = root.join("cache");
    if legacy.is_dir() {
        debris.push((legacy.clone(), tree_size(&legacy)));
    }

    let mut compressed = Vec::new();
    let cdir = root.join("compressed");
    if let Ok(rd) = fs::read_dir(&cdir) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some((hex, _)) = name.split_once('-') else {
                continue;
            };
            let parsed = fs::read(ent.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<LayerDescriptor>(&b).ok());
            match parsed {
                Some(l) => compressed.push((ent.path(), hex.to_string(), l)),
                None => debris.push((ent.path(), 0)),
            }
        }
    }

    let mut cache_mounts = Vec::new();
    let mdir = root.join("cachemounts");
    if let Ok(rd) = fs::read_dir(&mdir) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let path = ent.path();
            if name.starts_with(".new-") {
                debris.push((path.clone(), tree_size(&path)));
            } else if ent.file_type().is_ok_and(|t| t.is_dir()) {
                cache_mounts.push((path.clone(), tree_size(&path), mtime_of(&path)));
            }
        }
    }

    let mut metadata = Vec::new();
    for name in ["cache.redb", "context-memo.redb", "index.json"] {
        let p = root.join(name);
        if let Ok(m) = fs::metadata(&p) {
            metadata.push((p, m.len()));
        }
    }
    Ok(Survey {
        blobs,
        tagged_blobs,
        tagged_diff_ids,
        entries,
        snapshots,
        compressed,
        cache_mounts,
        metadata,
        debris,
    })
}

/// Reference counts of what the surviving entries, tags and memos reach.
struct Marks {
    blobs: HashMap<Digest, u64>,
    diff_ids: HashMap<String, u64>,
}

impl Marks {
    fn add_blob(&mut self, d: &Digest) {
        *self.blobs.entry(d.clone()).or_default() += 1;
    }
    fn add_diff_id(&mut self, hex: &str) {
        *self.diff_ids.entry(hex.to_string()).or_default() += 1;
    }
}

impl Survey {
    fn marks(&self, keep_tagged_snapshots: bool) -> Marks {
        let mut m = Marks {
            blobs: HashMap::new(),
            diff_ids: HashMap::new(),
        };
        for d in &self.tagged_blobs {
            m.add_blob(d);
        }
        if keep_tagged_snapshots {
            for d in &self.tagged_diff_ids {
                m.add_diff_id(d.hex());
            }
        }
        for e in self.entries.values() {
            if let Some(l) = &e.layer {
                m.add_blob(&l.digest);
                m.add_diff_id(l.diff_id.hex());
            }
        }
        m
    }

    fn compressed_kept<'a>(
        &'a self,
        marks: &'a Marks,
        all: bool,
    ) -> impl Iterator<Item = &'a LayerDescriptor> + 'a {
        self.compressed
            .iter()
            .filter(move |(_, hex, _)| !all && marks.diff_ids.contains_key(hex))
            .map(|(_, _, l)| l)
    }

    /// Bytes of build results the store would keep if only what `marks`
    /// reaches were kept.
    fn kept_size(&self, marks: &Marks, all: bool, mounts_kept: u64) -> u64 {
        let mut blobs: BTreeSet<&Digest> = marks.blobs.keys().collect();
        for l in self.compressed_kept(marks, all) {
            blobs.insert(&l.digest);
        }
        let blob_bytes: u64 = blobs.iter().filter_map(|d| self.blobs.get(*d)).sum();
        let snap_bytes: u64 = self
            .snapshots
            .iter()
            .filter(|(hex, _)| marks.diff_ids.contains_key(*hex))
            .map(|(_, s)| s)
            .sum();
        // The index files are left out: removing entries does not shrink
        // them, and redb preallocates.
        blob_bytes + snap_bytes + mounts_kept
    }

    fn total(&self) -> u64 {
        self.blobs.values().sum::<u64>()
            + self.snapshots.values().sum::<u64>()
            + self.cache_mounts.iter().map(|(_, s, _)| s).sum::<u64>()
            + self.metadata.iter().map(|(_, s)| s).sum::<u64>()
            + self.debris.iter().map(|(_, s)| s).sum::<u64>()
    }
}

/// Disk usage of `store` by kind.
pub fn usage(store: &Store) -> Result<Usage> {
    let index = CacheIndex::new(store);
    let s = survey(store, &index)?;
    let mut kinds = Vec::new();
    let tagged: u64 = s.tagged_blobs.iter().filter_map(|d| s.blobs.get(d)).sum();
    kinds.push(KindUsage {
        kind: "images".into(),
        count: s
            .tagged_blobs
            .iter()
            .filter(|d| s.blobs.contains_key(*d))
            .count() as u64,
        size: tagged,
        reclaimable: 0,
    });
    let mut cache_blobs: BTreeSet<&Digest> = BTreeSet::new();
    for e in s.entries.values() {
        if let Some(l) = &e.layer {
            if !s.tagged_blobs.contains(&l.digest) && s.blobs.contains_key(&l.digest) {
                cache_blobs.insert(&l.digest);
            }
        }
    }
    for (_, _, l) in &s.compressed {
        if !s.tagged_blobs.contains(&l.digest) && s.blobs.contains_key(&l.digest) {
            cache_blobs.insert(&l.digest);
        }
    }
    let cache_size: u64 = cache_blobs.iter().filter_map(|d| s.blobs.get(*d)).sum();
    kinds.push(KindUsage {
        kind: "build cache".into(),
        count: s.entries.len() as u64,
        size: cache_size,
        reclaimable: cache_size,
    });
    let snap_size: u64 = s.snapshots.values().sum();
    kinds.push(KindUsage {
        kind: "snapshots".into(),
        count: s.snapshots.len() as u64,
        size: snap_size,
        reclaimable: snap_size,
    });
    let mounts: u64 = s.cache_mounts.iter().map(|(_, b, _)| b).sum();
    kinds.push(KindUsage {
        kind: "cache mounts".into(),
        count: s.cache_mounts.len() as u64,
        size: mounts,
        reclaimable: mounts,
    });
    let meta: u64 = s.metadata.iter().map(|(_, b)| b).sum();
    let memo = s
        .metadata
        .iter()
        .filter(|(p, _)| p.ends_with("context-memo.redb"))
        .map(|(_, b)| b)
        .sum();
    kinds.push(KindUsage {
        kind: "metadata".into(),
        count: s.metadata.len() as u64,
        size: meta,
        reclaimable: memo,
    });
    let loose: Vec<u64> = s
        .blobs
        .iter()
        .filter(|(d, _)| !s.tagged_blobs.contains(*d) && !cache_blobs.contains(d))
        .map(|(_, b)| *b)
        .chain(s.debris.iter().map(|(_, b)| *b))
        .collect();
    let loose_size = loose.iter().sum();
    kinds.push(KindUsage {
        kind: "unreferenced".into(),
        count: loose.len() as u64,
        size: loose_size,
        reclaimable: loose_size,
    });
    Ok(Usage {
        total: kinds.iter().map(|k| k.size).sum(),
        reclaimable: kinds.iter().map(|k| k.reclaimable).sum(),
        entries: s.entries.len() as u64,
        kinds,
    })
}

/// A quick estimate of the bytes `store` uses (blob sizes and snapshot
/// contents as their markers record them), cheap enough to check after
/// every build.
pub fn estimate(store: &Store) -> u64 {
    let root = store.root();
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(root.join("blobs").join("sha256")) {
        total += rd
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>();
    }
    if let Ok(rd) = fs::read_dir(root.join("snapshots")) {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                if let Some(info) = snapshot_info(store, &d) {
                    total += info.bytes;
                }
            }
        }
    }
    total
}

/// The size of the filesystem `path` is on, in bytes.
pub fn filesystem_size(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_blocks.saturating_mul(st.f_frsize))
}

fn remove_path(path: &Path) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => crate::layer::remove_tree(path).is_ok(),
        Ok(_) => fs::remove_file(path).is_ok(),
        Err(_) => false,
    }
}

/// Removes cache entries as `options` say, then everything nothing kept
/// reaches. The caller holds the [`GcLock`].
pub fn prune(store: &Store, options: &PruneOptions, _lock: &GcLock) -> Result<PruneReport> {
    let index = CacheIndex::new(store);
    let mut s = survey(store, &index)?;
    let before = s.total();
    let mut report = PruneReport::default();
    let old_enough = |last_used: i64| match options.until {
        Some(secs) => options.now.saturating_sub(last_used) >= secs as i64,
        None => true,
    };

    // Cache mounts go only with --all (and the filter).
    let mut mounts_kept = 0u64;
    for (path, size, mtime) in std::mem::take(&mut s.cache_mounts) {
        if options.all && old_enough(mtime) {
            if remove_path(&path) {
                report.cache_mounts += 1;
                let _ = fs::remove_file(path.with_extension("lock"));
            }
        } else {
            mounts_kept += size;
        }
    }

    // Entries: least recently used first, until the limit holds.
    let mut candidates: Vec<(i64, String)> = s
        .entries
        .iter()
        .filter(|(_, e)| old_enough(e.last_used))
        .map(|(k, e)| (e.last_used, k.clone()))
        .collect();
    candidates.sort();
    let mut marks = s.marks(!options.all);
    let mut removed = Vec::new();
    for (_, key) in candidates {
        if let Some(limit) = options.keep_storage {
            if s.kept_size(&marks, options.all, mounts_kept) <= limit {
                break;
            }
        }
        if let Some(entry) = s.entries.remove(&key) {
            if let Some(l) = &entry.layer {
                if let Some(n) = marks.blobs.get_mut(&l.digest) {
                    *n -= 1;
                    if *n == 0 {
                        marks.blobs.remove(&l.digest);
                    }
                }
                if let Some(n) = marks.diff_ids.get_mut(l.diff_id.hex()) {
                    *n -= 1;
                    if *n == 0 {
                        marks.diff_ids.remove(l.diff_id.hex());
                    }
                }
            }
        }
        removed.push(key);
    }
    // The index first: an entry must never outlive its blob.
    index.remove(&removed)?;
    report.entries = removed.len() as u64;

    let mut keep: BTreeSet<Digest> = marks.blobs.keys().cloned().collect();
    for (path, hex, l) in &s.compressed {
        if !options.all && marks.diff_ids.contains_key(hex) {
            keep.insert(l.digest.clone());
        } else {
            let _ = fs::remove_file(path);
        }
    }
    for digest in s.blobs.keys() {
        if !keep.contains(digest) {
            store.discard_blob(digest);
            report.blobs += 1;
            let _ = fs::remove_file(store.root().join("sources").join(digest.hex()));
        }
    }
    let snaps = store.root().join("snapshots");
    for hex in s.snapshots.keys() {
        if !marks.diff_ids.contains_key(hex) && crate::layer::remove_snapshot(store, hex) {
            report.snapshots += 1;
            let _ = fs::remove_file(snaps.join(format!(".lock-{hex}")));
        }
    }
    for (path, _) in &s.debris {
        remove_path(path);
    }
    if options.all {
        let memo = store.root().join("context-memo.redb");
        let _ = fs::remove_file(memo);
    }
    let after = survey(store, &index)?.total();
    report.remaining = after;
    report.freed = before.saturating_sub(after);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::FileStamp;
    use crate::store::{media, Descriptor};
    use std::io::Write as _;

    fn blob(store: &Store, content: &[u8]) -> LayerDescriptor {
        let mut w = store.blob_writer().unwrap();
        w.write_all(content).unwrap();
        let (digest, size) = w.commit().unwrap();
        LayerDescriptor {
            diff_id: digest.clone(),
            digest,
            size,
            media_type: media::LAYER.into(),
        }
    }

    fn entry(store: &Store, index: &CacheIndex, key: &str, l: &LayerDescriptor, used: i64) {
        index
            .put(
                key,
                &Entry {
                    layer: Some(l.clone()),
                    created: used,
                    last_used: used,
                    stamp: FileStamp::of(&store.blob_path(&l.digest)),
                    description: key.into(),
                },
            )
            .unwrap();
    }

    /// A tagged image of one layer.
    fn tag(store: &Store, name: &str, l: &LayerDescriptor) {
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [l.diff_id]}});
        let (cd, cs, _) = store.write_json(&config).unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": media::CONFIG, "digest": cd, "size": cs},
            "layers": [{"mediaType": media::LAYER, "digest": l.digest, "size": l.size}],
        });
        let (md, ms, _) = store.write_json(&manifest).unwrap();
        store
            .tag(name, &Descriptor::new(media::MANIFEST, md, ms))
            .unwrap();
    }

    #[test]
    fn prune_keeps_tagged_images_and_honours_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = CacheIndex::new(&store);
        let tagged = blob(&store, &vec![1u8; 1000]);
        let old = blob(&store, &vec![2u8; 5000]);
        let new = blob(&store, &vec![3u8; 5000]);
        let loose = blob(&store, b"nobody points here");
        tag(&store, "app:1", &tagged);
        entry(&store, &index, "tagged", &tagged, 100);
        entry(&store, &index, "old", &old, 100);
        entry(&store, &index, "new", &new, 1000);

        let u = usage(&store).unwrap();
        assert_eq!(u.entries, 3);
        assert_eq!(u.kinds[1].size, 10_000, "{u:?}");

        // Only entries unused for 500 s: "old" and "tagged" go; the tagged
        // image's blob stays, the loose blob goes.
        let lock = gc_lock(&store, true).unwrap().unwrap();
        let until = PruneOptions {
            until: Some(500),
            now: 1100,
            ..Default::default()
        };
        let r = prune(&store, &until, &lock).unwrap();
        assert_eq!(r.entries, 2);
        assert!(store.has_blob(&tagged.digest));
        assert!(!store.has_blob(&old.digest));
        assert!(!store.has_blob(&loose.digest));
        assert!(store.has_blob(&new.digest));
        assert!(index.get("new").unwrap().is_some());

        // A limit the tagged image alone meets: everything else goes.
        let r = prune(
            &store,
            &PruneOptions {
                keep_storage: Some(1),
                now: 1100,
                ..Default::default()
            },
            &lock,
        )
        .unwrap();
        assert_eq!(r.entries, 1);
        assert!(!store.has_blob(&new.digest));
        assert!(store.has_blob(&tagged.digest));
        store.verify_blob(&tagged.digest).unwrap();
        let m = store.resolve_tag("app:1").unwrap().unwrap();
        store.verify_blob(&m.digest).unwrap();
    }

    #[test]
    fn keep_storage_removes_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = CacheIndex::new(&store);
        let a = blob(&store, &vec![1u8; 10_000]);
        let b = blob(&store, &vec![2u8; 10_000]);
        let c = blob(&store, &vec![3u8; 10_000]);
        entry(&store, &index, "a", &a, 300);
        entry(&store, &index, "b", &b, 100);
        entry(&store, &index, "c", &c, 200);
        let lock = gc_lock(&store, false).unwrap().unwrap();
        let r = prune(
            &store,
            &PruneOptions {
                keep_storage: Some(25_000),
                now: 400,
                ..Default::default()
            },
            &lock,
        )
        .unwrap();
        assert_eq!(r.entries, 1);
        assert!(!store.has_blob(&b.digest), "b was used least recently");
        assert!(store.has_blob(&a.digest) && store.has_blob(&c.digest));
    }

    #[test]
    fn a_file_shared_by_two_snapshots_counts_once_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(a.join("f"), vec![1u8; 1000]).unwrap();
        fs::write(a.join("g"), vec![1u8; 10]).unwrap();
        fs::hard_link(a.join("f"), b.join("f")).unwrap();
        assert_eq!(tree_size(&a) + tree_size(&b), 1010);
        assert_eq!(tree_size(&b), 500);
    }

    #[test]
    fn a_lease_keeps_the_collector_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let l = lease(&store).unwrap();
        let _l2 = lease(&store).unwrap();
        assert!(gc_lock(&store, false).unwrap().is_none());
        drop(l);
        drop(_l2);
        assert!(gc_lock(&store, false).unwrap().is_some());
    }
}
