//! Checksum timing on a large generated tree. Ignored by default; run with
//!
//! ```text
//! RBUILD_BENCH_FILES=20000 RBUILD_BENCH_BYTES=1073741824 \
//!   cargo test --release -p rbuild-solver --features exec --test context_bench -- --ignored --nocapture
//! ```
//!
//! Set `RBUILD_BENCH_DROP_CACHES=1` (as root) to also empty the page cache
//! before the cold run. The tree is generated in a temp dir (under `$TMPDIR`) and removed after.
#![cfg(feature = "exec")]

use std::fs;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rbuild_solver::context::{ChecksumMemo, Context, DockerIgnore};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "benchmark; see the file header"]
fn checksum_large_tree_cold_and_warm() {
    let files = env_u64("RBUILD_BENCH_FILES", 20_000);
    let total = env_u64("RBUILD_BENCH_BYTES", 1 << 30);
    let per_file = (total / files) as usize;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("ctx");
    let gen = Instant::now();
    // Pseudo-random, incompressible-ish content so nothing is special-cased.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = vec![0u8; per_file];
    for i in 0..files {
        let dir = root.join(format!("d{:03}/e{:02}", i % 200, i % 13));
        fs::create_dir_all(&dir).unwrap();
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        fs::File::create(dir.join(format!("f{i}.bin")))
            .unwrap()
            .write_all(&buf)
            .unwrap();
    }
    eprintln!(
        "generated {files} files, {} MiB in {:?}",
        (files * per_file as u64) >> 20,
        gen.elapsed()
    );
    std::thread::sleep(Duration::from_millis(1100));

    let db = t.path().join("memo.redb");
    let run = |label: &str| {
        let memo = Arc::new(ChecksumMemo::open(&db));
        let start = Instant::now();
        let c = Context::open(&root, DockerIgnore::empty())
            .unwrap()
            .with_memo(memo.clone());
        let entries = c.walk(".").unwrap();
        let walked = start.elapsed();
        let digest = c.checksum(&entries).unwrap();
        let total = start.elapsed();
        memo.save().unwrap();
        let saved = start.elapsed();
        let s = c.counters().snapshot();
        eprintln!(
            "{label}: walk {walked:?}, walk+checksum {total:?}, +save {saved:?}; entries {}, hashed {}, read {} MiB, \
             memo hits {}, stats {}",
            entries.len(),
            s.files_hashed,
            s.bytes_read >> 20,
            s.memo_hits,
            s.stat_calls
        );
        digest
    };
    // Optionally empty the page cache too (needs root), for a truly cold read.
    if std::env::var_os("RBUILD_BENCH_DROP_CACHES").is_some() {
        let _ = std::process::Command::new("sync").status();
        let dropped = fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
        eprintln!("page cache dropped: {dropped}");
    }
    let cold = run("cold (no memo)");
    let warm = run("warm (memo)");
    assert_eq!(cold, warm);
    let warm2 = run("warm again");
    assert_eq!(cold, warm2);
}
