//! The per-file checksum memo: sha256 of a file's content keyed by
//! (dev, inode, size, mtime, ctime), kept in a redb file across builds so an
//! unchanged context costs one `stat` per file and no reads.
//!
//! Correctness rules:
//! - A digest is only recorded if the file's metadata after reading equals
//!   what the walk saw (so a file changed mid-read is not memoized), and if
//!   its mtime and ctime are older than the read's start by the racy window
//!   (1 s by default). Timestamps have a granularity (a kernel tick, or a
//!   whole second on some filesystems), so a file rewritten with the same
//!   size within that granularity right after being hashed could otherwise
//!   keep its key with new content: git's "racily clean" problem.
//! - The memo is a cache: any database trouble degrades to hashing. Builds
//!   on the same store share it (redb's multi-writer mode); a database
//!   another program holds exclusively means running without a memo
//!   ([`MemoStatus::Unavailable`], counted in `memo_unavailable`); a corrupt
//!   or foreign file is deleted and recreated ([`MemoStatus::Recreated`]).
//!
//! Bounds: every [`ChecksumMemo::save`] is a generation. Entries used or
//! added in a build are stamped with its generation (re-stamped lazily,
//! only once they are half the window old, to keep saves cheap); entries
//! not used for [`KEEP_GENERATIONS`] saves are evicted, and if more than
//! [`MAX_ENTRIES`] remain the oldest generations go first.

// redb's error enum is large; it only appears on cold failure paths here,
// where boxing would add noise for nothing.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    ConcurrencyMode, Database, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use sha2::{Digest as _, Sha256};

use super::{Entry, Error, Result};

const MEMO: TableDefinition<&[u8], &[u8]> = TableDefinition::new("file_digests");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Saves an entry may go unused before it is evicted.
pub const KEEP_GENERATIONS: u64 = 32;
/// Upper bound on memo entries (about 100 bytes each on disk).
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Default racy window; see the module docs.
pub const DEFAULT_RACY_WINDOW: Duration = Duration::from_secs(1);

/// Work counters, shared by a [`ChecksumMemo`] and the contexts using it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Files whose content was read and hashed.
    pub files_hashed: AtomicU64,
    /// Bytes read while hashing.
    pub bytes_read: AtomicU64,
    /// File digests answered by the memo.
    pub memo_hits: AtomicU64,
    /// File digests the memo did not have.
    pub memo_misses: AtomicU64,
    /// `stat` calls made walking and looking up.
    pub stat_calls: AtomicU64,
    /// 1 if the memo database could not be used (locked, unwritable).
    pub memo_unavailable: AtomicU64,
    /// Memo database operations that failed and were treated as misses.
    pub memo_errors: AtomicU64,
    /// Entries evicted by saves.
    pub memo_evicted: AtomicU64,
}

/// A plain copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// See [`Counters::files_hashed`].
    pub files_hashed: u64,
    /// See [`Counters::bytes_read`].
    pub bytes_read: u64,
    /// See [`Counters::memo_hits`].
    pub memo_hits: u64,
    /// See [`Counters::memo_misses`].
    pub memo_misses: u64,
    /// See [`Counters::stat_calls`].
    pub stat_calls: u64,
    /// See [`Counters::memo_unavailable`].
    pub memo_unavailable: u64,
    /// See [`Counters::memo_errors`].
    pub memo_errors: u64,
    /// See [`Counters::memo_evicted`].
    pub memo_evicted: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            files_hashed: l(&self.files_hashed),
            bytes_read: l(&self.bytes_read),
            memo_hits: l(&self.memo_hits),
            memo_misses: l(&self.memo_misses),
            stat_calls: l(&self.stat_calls),
            memo_unavailable: l(&self.memo_unavailable),
            memo_errors: l(&self.memo_errors),
            memo_evicted: l(&self.memo_evicted),
        }
    }
}

/// How the memo database came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoStatus {
    /// Opened (or created) normally.
    Active,
    /// The file was unreadable and has been replaced by an empty memo.
    Recreated {
        /// What was wrong with the old file.
        reason: String,
    },
    /// Running without a memo for this process.
    Unavailable {
        /// Why (e.g. another rbuild holds the database).
        reason: String,
    },
}

/// The memo key: 48 bytes of (dev, ino, size, mtime s, ctime s, mtime ns,
/// ctime ns), big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct MemoKey([u8; 48]);

impl MemoKey {
    pub(crate) fn of(e: &Entry) -> MemoKey {
        let mut k = [0u8; 48];
        k[0..8].copy_from_slice(&e.dev.to_be_bytes());
        k[8..16].copy_from_slice(&e.ino.to_be_bytes());
        k[16..24].copy_from_slice(&e.size.to_be_bytes());
        k[24..32].copy_from_slice(&e.mtime.to_be_bytes());
        k[32..40].copy_from_slice(&e.ctime.to_be_bytes());
        k[40..44].copy_from_slice(&e.mtime_nsec.to_be_bytes());
        k[44..48].copy_from_slice(&e.ctime_nsec.to_be_bytes());
        MemoKey(k)
    }
}

/// Stored value: 32-byte digest then the generation last used, big-endian.
fn encode_value(digest: &[u8; 32], generation: u64) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..32].copy_from_slice(digest);
    v[32..].copy_from_slice(&generation.to_be_bytes());
    v
}

fn decode_value(v: &[u8]) -> Option<([u8; 32], u64)> {
    let digest: [u8; 32] = v.get(..32)?.try_into().ok()?;
    let generation = u64::from_be_bytes(v.get(32..40)?.try_into().ok()?);
    Some((digest, generation))
}

/// Persistent file-digest memo. Cheap to share (`Arc`) across threads.
#[derive(Debug)]
pub struct ChecksumMemo {
    path: Option<PathBuf>,
    db: Option<Database>,
    status: MemoStatus,
    counters: Arc<Counters>,
    generation: AtomicU64,
    /// Digests computed this session, written by `save`.
    pending: Mutex<HashMap<MemoKey, [u8; 32]>>,
    /// Hits whose generation stamp is getting old, re-stamped by `save`.
    touched: Mutex<HashSet<MemoKey>>,
    racy_window: Duration,
}

fn memo_err(e: impl std::fmt::Display) -> Error {
    Error::Memo(e.to_string())
}

impl ChecksumMemo {
    /// Opens (creating if needed) the memo at `path`. Never fails: problems
    /// show in [`ChecksumMemo::status`] and the counters.
    pub fn open(path: &Path) -> ChecksumMemo {
        let counters = Arc::new(Counters::default());
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let (db, status) = match Self::try_open(path) {
            Ok(db) => (Some(db), MemoStatus::Active),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => (
                None,
                MemoStatus::Unavailable {
                    reason: format!("{} is in use by another process", path.display()),
                },
            ),
            Err(first) => {
                // Corrupt, truncated or not a redb file: start afresh.
                let _ = std::fs::remove_file(path);
                match Self::try_open(path) {
                    Ok(db) => (
                        Some(db),
                        MemoStatus::Recreated {
                            reason: first.to_string(),
                        },
                    ),
                    Err(e) => (
                        None,
                        MemoStatus::Unavailable {
                            reason: e.to_string(),
                        },
                    ),
                }
            }
        };
        if db.is_none() {
            counters.memo_unavailable.store(1, Ordering::Relaxed);
        }
        let generation = db
            .as_ref()
            .and_then(|db| Self::read_generation(db).ok())
            .unwrap_or(1);
        ChecksumMemo {
            path: Some(path.to_path_buf()),
            db,
            status,
            counters,
            generation: AtomicU64::new(generation),
            pending: Mutex::default(),
            touched: Mutex::default(),
            racy_window: DEFAULT_RACY_WINDOW,
        }
    }

    /// A memo that remembers nothing (hashing still counted).
    pub fn disabled() -> ChecksumMemo {
        ChecksumMemo {
            path: None,
            db: None,
            status: MemoStatus::Unavailable {
                reason: "disabled".into(),
            },
            counters: Arc::new(Counters::default()),
            generation: AtomicU64::new(1),
            pending: Mutex::default(),
            touched: Mutex::default(),
            racy_window: DEFAULT_RACY_WINDOW,
        }
    }

    /// Opens the database and checks its tables are readable as ours.
    fn try_open(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
        // Several builds may share a store: multi-writer mode lets each
        // keep the memo open, taking turns to write.
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .create(path)?;
        let check = || -> std::result::Result<(), redb::Error> {
            // Reading costs no fsync; only a new file needs its tables made.
            {
                let tx = db.begin_read()?;
                if tx.open_table(MEMO).is_ok() && tx.open_table(META).is_ok() {
                    return Ok(());
                }
            }
            let tx = db.begin_write()?;
            {
                tx.open_table(MEMO)?;
                tx.open_table(META)?;
            }
            tx.commit()?;
            Ok(())
        };
        match check() {
            Ok(()) => Ok(db),
            Err(e) => Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(
                e.to_string(),
            ))),
        }
    }

    fn read_generation(db: &Database) -> std::result::Result<u64, redb::Error> {
        let tx = db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get("generation")?.map(|g| g.value()).unwrap_or(1))
    }

    /// Sets how recent a file's timestamps may be and still be memoized.
    pub fn with_racy_window(mut self, window: Duration) -> Self {
        self.racy_window = window;
        self
    }

    /// How the database came up.
    pub fn status(&self) -> &MemoStatus {
        &self.status
    }

    /// The database file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The counters this memo (and contexts using it) report into.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Entries stored in the database (not counting unsaved ones).
    pub fn len(&self) -> u64 {
        let Some(db) = &self.db else { return 0 };
        let count = || -> std::result::Result<u64, redb::Error> {
            Ok(db.begin_read()?.open_table(MEMO)?.len()?)
        };
        count().unwrap_or(0)
    }

    /// Whether the database holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sha256 of the regular file at `abs_path` described by `entry`
    /// (from a walk), reading it only if the memo has no digest for the
    /// entry's (dev, inode, size, mtime, ctime).
    pub fn file_digest(&self, entry: &Entry, abs_path: &Path) -> Result<[u8; 32]> {
        let key = MemoKey::of(entry);
        if let Some(d) = self.lookup_many(&[key])[0] {
            self.counters.memo_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        self.counters.memo_misses.fetch_add(1, Ordering::Relaxed);
        let started = SystemTime::now();
        let io_err = |source| Error::Io {
            path: abs_path.display().to_string(),
            source,
        };
        let fd = rustix::fs::open(
            abs_path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC
                | rustix::fs::OFlags::NONBLOCK,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io_err(e.into()))?;
        let (digest, unchanged) =
            hash_open_file(File::from(fd), entry, &self.counters).map_err(io_err)?;
        if unchanged {
            self.record(entry, digest, started);
        }
        Ok(digest)
    }

    /// Looks up many keys in one read transaction. Database errors count as
    /// misses.
    pub(crate) fn lookup_many(&self, keys: &[MemoKey]) -> Vec<Option<[u8; 32]>> {
        let mut out = vec![None; keys.len()];
        {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (slot, key) in out.iter_mut().zip(keys) {
                *slot = pending.get(key).copied();
            }
        }
        let Some(db) = &self.db else { return out };
        let current = self.generation.load(Ordering::Relaxed);
        let mut stale = Vec::new();
        let result = (|| -> std::result::Result<(), redb::Error> {
            let tx = db.begin_read()?;
            let table = match tx.open_table(MEMO) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for (slot, key) in out.iter_mut().zip(keys) {
                if slot.is_some() {
                    continue;
                }
                if let Some(v) = table.get(&key.0[..])? {
                    if let Some((digest, generation)) = decode_value(v.value()) {
                        *slot = Some(digest);
                        if generation + KEEP_GENERATIONS / 2 <= current {
                            stale.push(*key);
                        }
                    }
                }
            }
            Ok(())
        })();
        if result.is_err() {
            self.counters.memo_errors.fetch_add(1, Ordering::Relaxed);
        }
        if !stale.is_empty() {
            self.touched
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(stale);
        }
        out
    }

    /// Remembers a digest computed from a read that started at `started`,
    /// unless the file's timestamps are too recent to trust (racy window).
    pub(crate) fn record(&self, entry: &Entry, digest: [u8; 32], started: SystemTime) {
        if self.db.is_none() {
            return;
        }
        let stamp = |s: i64, ns: u32| {
            u64::try_from(s)
                .ok()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_nanos(ns.into()))
        };
        let (Some(m), Some(c)) = (
            stamp(entry.mtime, entry.mtime_nsec),
            stamp(entry.ctime, entry.ctime_nsec),
        ) else {
            return;
        };
        let newest = m.max(c);
        if newest + self.racy_window > started {
            return;
        }
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(MemoKey::of(entry), digest);
    }

    /// Writes this session's digests, re-stamps used entries, evicts old
    /// ones, and starts a new generation. Call once at the end of a build;
    /// a failure loses only memo entries, so callers may just warn.
    pub fn save(&self) -> Result<()> {
        let Some(db) = &self.db else { return Ok(()) };
        let generation = self.generation.load(Ordering::Relaxed);
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let touched = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()));
        let tx = db.begin_write().map_err(memo_err)?;
        let mut evicted = 0u64;
        {
            let mut table = tx.open_table(MEMO).map_err(memo_err)?;
            for (key, digest) in &pending {
                table
                    .insert(&key.0[..], &encode_value(digest, generation)[..])
                    .map_err(memo_err)?;
            }
            for key in &touched {
                let digest = match table.get(&key.0[..]).map_err(memo_err)? {
                    Some(v) => decode_value(v.value()).map(|(d, _)| d),
                    None => None,
                };
                if let Some(digest) = digest {
                    table
                        .insert(&key.0[..], &encode_value(&digest, generation)[..])
                        .map_err(memo_err)?;
                }
            }
            let mut cutoff = generation.saturating_sub(KEEP_GENERATIONS);
            if table.len().map_err(memo_err)? > MAX_ENTRIES {
                // Keep the newest generations that fit.
                let mut gens: Vec<u64> = Vec::new();
                for item in table.iter().map_err(memo_err)? {
                    let (_, v) = item.map_err(memo_err)?;
                    gens.push(decode_value(v.value()).map_or(0, |(_, g)| g));
                }
                gens.sort_unstable_by(|a, b| b.cmp(a));
                if let Some(&g) = gens.get(MAX_ENTRIES as usize) {
                    cutoff = cutoff.max(g + 1);
                }
            }
            table
                .retain(|_, v| {
                    let keep = decode_value(v).is_some_and(|(_, g)| g >= cutoff);
                    if !keep {
                        evicted += 1;
                    }
                    keep
                })
                .map_err(memo_err)?;
            let mut meta = tx.open_table(META).map_err(memo_err)?;
            meta.insert("generation", generation + 1)
                .map_err(memo_err)?;
        }
        tx.commit().map_err(memo_err)?;
        self.generation.store(generation + 1, Ordering::Relaxed);
        self.counters
            .memo_evicted
            .fetch_add(evicted, Ordering::Relaxed);
        Ok(())
    }
}

/// Hashes an open file, counting the work. Also reports whether the file
/// still has the identity and timestamps the walk saw, i.e. whether the
/// digest may be memoized under the entry's key.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn hash_open_file(
    mut f: File,
    entry: &Entry,
    counters: &Counters,
) -> io::Result<([u8; 32], bool)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    counters.files_hashed.fetch_add(1, Ordering::Relaxed);
    counters.bytes_read.fetch_add(total, Ordering::Relaxed);
    let st = rustix::fs::fstat(&f)?;
    let unchanged = st.st_dev as u64 == entry.dev
        && st.st_ino as u64 == entry.ino
        && st.st_size as u64 == entry.size
        && total == entry.size
        && st.st_mtime as i64 == entry.mtime
        && st.st_mtime_nsec as u32 == entry.mtime_nsec
        && st.st_ctime as i64 == entry.ctime
        && st.st_ctime_nsec as u32 == entry.ctime_nsec;
    Ok((h.finalize().into(), unchanged))
}
