//! The cache-key index: `ROOT/cache.redb` maps an op's cache key to what
//! running the op produced (the layer it added, if any), with the times the
//! entry was made and last used.
//!
//! rbuild has no daemon, so several processes share the file: it is opened
//! in redb's multi-writer mode, where every process keeps its handle and
//! write transactions take turns. One handle per process serves every
//! lookup of a build (opening and closing redb costs fsyncs).
//!
//! An entry is only a pointer: the blob behind it can be deleted or damaged
//! after the entry was written. [`CacheIndex::lookup`] checks the blob's
//! file against the `stat` recorded when its content was last verified, and
//! hashes it again when they differ, so a hit always names intact content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layer::LayerDescriptor;
use crate::store::Store;

/// The tables' shape: string keys, JSON values.
type Def = TableDefinition<'static, &'static str, &'static [u8]>;
type WriteTable<'tx> = redb::Table<'tx, &'static str, &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static str, &'static [u8]>;

const ENTRIES: Def = TableDefinition::new("entries");
/// Blob digest → the [`FileStamp`] its file had when its content was last
/// verified.
const VERIFIED: Def = TableDefinition::new("verified");
/// A file op's definition digest → the diffID of the layer it last wrote:
/// where an edit rebuild of the op finds files it can link, not copy.
const LINEAGE: Def = TableDefinition::new("lineage");

/// How long a call waits for another process to close the index.
const WAIT_FOR_OTHERS: Duration = Duration::from_secs(120);

/// What the store knew of a blob's file when its content last verified:
/// the same as now means the content is still what was verified. The boot
/// is part of it: layer blobs are not flushed to disk when written, so
/// after a machine crash their files may hold less than their metadata
/// says, and a stamp from another boot never matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds.
    pub mtime_ns: i128,
    /// Status change time, nanoseconds (a process cannot set it back).
    pub ctime_ns: i128,
    /// The boot it was taken in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
}

impl FileStamp {
    /// The stamp of the file at `path`, if it exists.
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).ok()?;
        if !m.is_file() {
            return None;
        }
        Some(FileStamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            boot: crate::boot_id().map(str::to_string),
        })
    }
}

/// One entry: the result of the op whose cache key it is stored under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The layer the op added (`None`: it added none, e.g. a COPY that
    /// matched only directories that already existed).
    pub layer: Option<LayerDescriptor>,
    /// When the entry was made (seconds since the epoch).
    pub created: i64,
    /// When a build last used it (seconds since the epoch).
    pub last_used: i64,
    /// The layer blob's file when its content was last verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<FileStamp>,
    /// The op's name when it was made, for `rbuild du --verbose`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Usable: the op's result, its layer verified.
    Hit {
        /// The layer the op added, if any.
        layer: Option<LayerDescriptor>,
        /// When the entry was made (seconds since the epoch).
        created: i64,
    },
    /// No entry.
    Miss,
    /// An entry whose blob is missing or damaged: treated as a miss, and
    /// the entry was dropped.
    Broken(String),
}

/// The index file of a store.
#[derive(Clone)]
pub struct CacheIndex {
    path: PathBuf,
    db: Arc<Mutex<Option<Arc<Database>>>>,
}

impl std::fmt::Debug for CacheIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheIndex")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn index_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Index(format!("{}: {e}", path.display()))
}

impl CacheIndex {
    /// The index of `store` (created on first write).
    pub fn new(store: &Store) -> CacheIndex {
        CacheIndex {
            path: store.root().join("cache.redb"),
            db: Arc::default(),
        }
    }

    /// The index file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the database, waiting while another process has it open. A
    /// file that is not a readable index (say, truncated by a full disk) is
    /// replaced by an empty one: the index is a cache, and losing it only
    /// costs rebuilds.
    fn open(&self) -> Result<Arc<Database>> {
        let mut slot = self
            .db
            .lock()
            .map_err(|_| Error::Index("the index handle was poisoned".into()))?;
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new(self.open_file()?);
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }

    fn open_file(&self) -> Result<Database> {
        let deadline = Instant::now() + WAIT_FOR_OTHERS;
        let mut pause = Duration::from_millis(1);
        let mut recreated = false;
        loop {
            let opened = Database::builder()
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .create(&self.path);
            match opened {
                Ok(db) => return Ok(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Index(format!(
                            "{} stayed in use by another rbuild process for {}s",
                            self.path.display(),
                            WAIT_FOR_OTHERS.as_secs()
                        )));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    return Err(index_err(&self.path, e));
                }
                Err(e) if !recreated => {
                    recreated = true;
                    let aside = self
                        .path
                        .with_extension(format!("redb.broken-{}", std::process::id()));
                    std::fs::rename(&self.path, &aside).map_err(|io| {
                        index_err(&self.path, format!("{e}; moving it aside: {io}"))
                    })?;
                    let _ = std::fs::remove_file(&aside);
                }
                Err(e) => return Err(index_err(&self.path, e)),
            }
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        index_err(&self.path, e)
    }

    /// Runs `f` on `def`'s table in one write transaction and commits it
    /// (nothing is committed when `f` fails).
    fn write<T>(&self, def: Def, f: impl FnOnce(&mut WriteTable<'_>) -> Result<T>) -> Result<T> {
        let db = self.open()?;
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        let out = {
            let mut table = tx.open_table(def).map_err(|e| self.err(e))?;
            f(&mut table)?
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Runs `f` on `def`'s table in a read transaction; `None` when the
    /// table has never been written.
    fn read<T>(&self, def: Def, f: impl FnOnce(&ReadTable) -> Result<T>) -> Result<Option<T>> {
        let db = self.open()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        match tx.open_table(def) {
            Ok(table) => f(&table).map(Some),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    fn read_entry(bytes: &[u8]) -> Option<Entry> {
        serde_json::from_slice(bytes).ok()
    }

    /// The entry under `key`, as stored (not checked).
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let entry = self.read(ENTRIES, |table| {
            let value = table.get(key).map_err(|e| self.err(e))?;
            Ok(value.and_then(|v| Self::read_entry(v.value())))
        })?;
        Ok(entry.flatten())
    }

    /// Looks `key` up and checks the blob behind it: present, and either
    /// untouched since it was verified or verified again now. A damaged
    /// blob is deleted (so nothing else uses it) and its entry dropped.
    pub fn lookup(&self, store: &Store, key: &str) -> Result<Lookup> {
        let Some(mut entry) = self.get(key)? else {
            return Ok(Lookup::Miss);
        };
        let created = entry.created;
        let Some(layer) = entry.layer.clone() else {
            return Ok(Lookup::Hit {
                layer: None,
                created,
            });
        };
        let path = store.blob_path(&layer.digest);
        let now = FileStamp::of(&path);
        let problem = match now {
            // Kept as a snapshot, its blob made when an image needs it.
            None if crate::layer::layer_available(store, &layer) => None,
            None => Some(format!("its layer blob {} is missing", layer.digest)),
            Some(s) if s.size != layer.size => {
                store.discard_blob(&layer.digest);
                Some(format!(
                    "its layer blob {} has {} bytes, not {}",
                    layer.digest, s.size, layer.size
                ))
            }
            Some(s) if entry.stamp.as_ref() == Some(&s) => None,
            // Verified since the entry was made (a blob written from a
            // snapshot when an image needed it, after the entry).
            Some(s) if self.verified_stamp(&layer.digest)?.as_ref() == Some(&s) => {
                entry.stamp = Some(s);
                self.put(key, &entry)?;
                None
            }
            Some(_) => match store.verify_blob(&layer.digest) {
                Ok(()) => {
                    entry.stamp = FileStamp::of(&path);
                    self.put(key, &entry)?;
                    None
                }
                Err(e) => {
                    store.discard_blob(&layer.digest);
                    Some(e.to_string())
                }
            },
        };
        match problem {
            None => Ok(Lookup::Hit {
                layer: Some(layer),
                created,
            }),
            Some(why) => {
                self.remove(&[key.to_string()])?;
                Ok(Lookup::Broken(why))
            }
        }
    }

    /// Remembers that blob `digest`'s content is right as its file is now.
    pub fn record_verified(&self, store: &Store, digest: &crate::Digest) -> Result<()> {
        let Some(stamp) = FileStamp::of(&store.blob_path(digest)) else {
            return Ok(());
        };
        let bytes = serde_json::to_vec(&stamp).map_err(Error::json)?;
        self.write(VERIFIED, |table| {
            table
                .insert(digest.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Checks blob `digest` before an image that names it is tagged: cheap
    /// when its file is as it was when last verified, hashed otherwise.
    pub fn check_blob(&self, store: &Store, digest: &crate::Digest) -> Result<()> {
        let path = store.blob_path(digest);
        let Some(now) = FileStamp::of(&path) else {
            return Err(Error::MissingBlob(digest.clone()));
        };
        if self.verified_stamp(digest)? == Some(now) {
            return Ok(());
        }
        store.verify_blob(digest)?;
        self.record_verified(store, digest)
    }

    /// The diffID of the layer the op with definition `op` last wrote.
    pub fn lineage(&self, op: &str) -> Result<Option<crate::Digest>> {
        let found = self.read(LINEAGE, |table| {
            let value = table.get(op).map_err(|e| self.err(e))?;
            Ok(value.and_then(|v| {
                std::str::from_utf8(v.value())
                    .ok()
                    .and_then(|s| crate::Digest::parse(s).ok())
            }))
        })?;
        Ok(found.flatten())
    }

    /// Records that the op with definition `op` wrote the layer `diff_id`.
    pub fn set_lineage(&self, op: &str, diff_id: &crate::Digest) -> Result<()> {
        self.write(LINEAGE, |table| {
            table
                .insert(op, diff_id.as_str().as_bytes())
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// The blob's file as it was when it was last verified.
    fn verified_stamp(&self, digest: &crate::Digest) -> Result<Option<FileStamp>> {
        let known = self.read(VERIFIED, |table| {
            let value = table.get(digest.as_str()).map_err(|e| self.err(e))?;
            Ok(value.and_then(|v| serde_json::from_slice::<FileStamp>(v.value()).ok()))
        })?;
        Ok(known.flatten())
    }

    /// Stores `entry` under `key`.
    pub fn put(&self, key: &str, entry: &Entry) -> Result<()> {
        let bytes = serde_json::to_vec(entry).map_err(Error::json)?;
        self.write(ENTRIES, |table| {
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Records that a build used `keys` at `now`, in one transaction.
    pub fn touch(&self, keys: &[String], now: i64) -> Result<()> {
        if keys.is_empty() || !self.path.exists() {
            return Ok(());
        }
        self.write(ENTRIES, |table| {
            for key in keys {
                let entry = table
                    .get(key.as_str())
                    .map_err(|e| self.err(e))?
                    .and_then(|v| Self::read_entry(v.value()));
                if let Some(mut entry) = entry {
                    if entry.last_used < now {
                        entry.last_used = now;
                        let bytes = serde_json::to_vec(&entry).map_err(Error::json)?;
                        table
                            .insert(key.as_str(), bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Every entry, by key. Unreadable entries are left out.
    pub fn entries(&self) -> Result<BTreeMap<String, Entry>> {
        if !self.path.exists() {
            return Ok(BTreeMap::new());
        }
        let all = self.read(ENTRIES, |table| {
            let mut out = BTreeMap::new();
            for item in table.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                if let Some(entry) = Self::read_entry(v.value()) {
                    out.insert(k.value().to_string(), entry);
                }
            }
            Ok(out)
        })?;
        Ok(all.unwrap_or_default())
    }

    /// Removes the entries under `keys`, in one transaction.
    pub fn remove(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() || !self.path.exists() {
            return Ok(());
        }
        self.write(ENTRIES, |table| {
            for key in keys {
                table.remove(key.as_str()).map_err(|e| self.err(e))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::media;
    use std::io::Write as _;

    fn layer(store: &Store, content: &[u8]) -> LayerDescriptor {
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

    fn entry(store: &Store, layer: Option<LayerDescriptor>) -> Entry {
        let stamp = layer
            .as_ref()
            .and_then(|l| FileStamp::of(&store.blob_path(&l.digest)));
        Entry {
            layer,
            created: 10,
            last_used: 10,
            stamp,
            description: String::new(),
        }
    }

    #[test]
    fn entries_survive_reopening_and_touch_moves_last_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = CacheIndex::new(&store);
        assert_eq!(index.lookup(&store, "k1").unwrap(), Lookup::Miss);
        let l = layer(&store, b"layer one");
        index.put("k1", &entry(&store, Some(l.clone()))).unwrap();
        index.put("k2", &entry(&store, None)).unwrap();
        let again = CacheIndex::new(&store);
        assert_eq!(
            again.lookup(&store, "k1").unwrap(),
            Lookup::Hit {
                layer: Some(l),
                created: 10
            }
        );
        assert_eq!(
            again.lookup(&store, "k2").unwrap(),
            Lookup::Hit {
                layer: None,
                created: 10
            }
        );
        again.touch(&["k1".into(), "absent".into()], 99).unwrap();
        let all = again.entries().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all["k1"].last_used, 99);
        assert_eq!(all["k2"].last_used, 10);
        again.remove(&["k2".into()]).unwrap();
        assert_eq!(again.lookup(&store, "k2").unwrap(), Lookup::Miss);
    }

    #[test]
    fn a_missing_or_damaged_blob_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = CacheIndex::new(&store);
        let gone = layer(&store, b"deleted later");
        index
            .put("gone", &entry(&store, Some(gone.clone())))
            .unwrap();
        std::fs::remove_file(store.blob_path(&gone.digest)).unwrap();
        assert!(matches!(
            index.lookup(&store, "gone").unwrap(),
            Lookup::Broken(why) if why.contains("missing")
        ));
        assert_eq!(index.lookup(&store, "gone").unwrap(), Lookup::Miss);

        // Same size, other content: the stamp changed, so it is hashed.
        let damaged = layer(&store, b"original content");
        index
            .put("damaged", &entry(&store, Some(damaged.clone())))
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(store.blob_path(&damaged.digest), b"ORIGINAL CONTENT").unwrap();
        assert!(matches!(
            index.lookup(&store, "damaged").unwrap(),
            Lookup::Broken(_)
        ));
        assert!(!store.has_blob(&damaged.digest), "the damaged blob must go");

        // Touched but intact: verified again, still a hit.
        let touched = layer(&store, b"intact");
        index
            .put("touched", &entry(&store, Some(touched.clone())))
            .unwrap();
        let path = store.blob_path(&touched.digest);
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(&path, b"intact").unwrap();
        assert_eq!(
            index.lookup(&store, "touched").unwrap(),
            Lookup::Hit {
                layer: Some(touched),
                created: 10
            }
        );
        assert_eq!(
            index.get("touched").unwrap().unwrap().stamp,
            FileStamp::of(&path)
        );
    }

    #[test]
    fn a_stamp_from_another_boot_is_checked_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = CacheIndex::new(&store);
        let l = layer(&store, b"written before a crash");
        let mut e = entry(&store, Some(l.clone()));
        if let Some(stamp) = e.stamp.as_mut() {
            stamp.boot = Some("an-earlier-boot".into());
        }
        index.put("k", &e).unwrap();
        assert!(matches!(
            index.lookup(&store, "k").unwrap(),
            Lookup::Hit { .. }
        ));
        // Hashed again, and now stamped in this boot.
        assert_eq!(
            index.get("k").unwrap().unwrap().stamp,
            FileStamp::of(&store.blob_path(&l.digest))
        );
        // Damaged content is caught the same way, whatever its metadata.
        let bad = layer(&store, b"torn by a power cut");
        let mut e = entry(&store, Some(bad.clone()));
        if let Some(stamp) = e.stamp.as_mut() {
            stamp.boot = Some("an-earlier-boot".into());
        }
        index.put("bad", &e).unwrap();
        std::fs::write(store.blob_path(&bad.digest), b"TORN BY A POWER CUT").unwrap();
        assert!(matches!(
            index.lookup(&store, "bad").unwrap(),
            Lookup::Broken(_)
        ));
    }

    #[test]
    fn a_garbage_index_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = CacheIndex::new(&store);
        std::fs::write(index.path(), b"this is not a redb file at all").unwrap();
        assert_eq!(index.lookup(&store, "k").unwrap(), Lookup::Miss);
        index.put("k", &entry(&store, None)).unwrap();
        assert_eq!(
            index.lookup(&store, "k").unwrap(),
            Lookup::Hit {
                layer: None,
                created: 10
            }
        );
    }
}
