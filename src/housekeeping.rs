//! `rbuild du`, `rbuild prune`, and the collection that runs by itself
//! after a build when the store grows past its limit.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use rbuild_cache::gc::{self, PruneOptions, PruneReport, Usage};
use rbuild_cache::Store;

use crate::cli::{DuArgs, PruneArgs};
use crate::manage::open;
use crate::progress::bytes;
use crate::Failure;

/// The environment variable that sets the store's size limit.
pub const KEEP_STORAGE_ENV: &str = "RBUILD_GC_KEEP_STORAGE";

/// Parses a size as Docker's `--keep-storage` does: a number with an
/// optional binary unit (`b`, `k`/`kb`/`kib`, `m`…, `g`…, `t`…), any case.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number and a unit, like 10GB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use B, KB, MB, GB or TB)"
            ))
        }
    };
    Ok((value * (1u64 << shift) as f64) as u64)
}

/// Parses a Go duration (`24h`, `1h30m`, `90s`, `500ms`) into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid duration {text:?}: expected a Go duration like 24h, 30m or 1h30m");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[u..];
    }
    Ok(total as u64)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `rbuild du`.
pub fn du(root: &std::path::Path, args: &DuArgs) -> Result<ExitCode, Failure> {
    let store = open(root)?;
    let usage = gc::usage(&store).map_err(|e| Failure::failed(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    if args.format.as_deref() == Some("json") {
        let _ = serde_json::to_writer_pretty(&mut out, &usage);
        let _ = writeln!(out);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(f) = &args.format {
        return Err(Failure::usage(format!(
            "unknown format {f:?}: use `json`, or leave --format out for a table"
        )));
    }
    let _ = write!(out, "{}", usage_table(&usage));
    Ok(ExitCode::SUCCESS)
}

fn usage_table(usage: &Usage) -> String {
    let mut s = format!(
        "{:<14} {:>7} {:>12} {:>12}\n",
        "KIND", "COUNT", "SIZE", "RECLAIMABLE"
    );
    for k in &usage.kinds {
        s.push_str(&format!(
            "{:<14} {:>7} {:>12} {:>12}\n",
            k.kind,
            k.count,
            bytes(k.size),
            bytes(k.reclaimable)
        ));
    }
    s.push_str(&format!(
        "{:<14} {:>7} {:>12} {:>12}\n",
        "Total:",
        "",
        bytes(usage.total),
        bytes(usage.reclaimable)
    ));
    s
}

/// `rbuild prune`.
pub fn prune(root: &std::path::Path, args: &PruneArgs) -> Result<ExitCode, Failure> {
    let mut options = PruneOptions {
        all: args.all,
        now: now(),
        ..Default::default()
    };
    if let Some(size) = &args.keep_storage {
        options.keep_storage = Some(parse_size(size).map_err(Failure::usage)?);
    }
    for filter in &args.filter {
        match filter.split_once('=') {
            Some(("until", d)) => options.until = Some(parse_duration(d).map_err(Failure::usage)?),
            _ => {
                return Err(Failure::usage(format!(
                    "unsupported filter {filter:?}: rbuild prune knows until=DURATION"
                )))
            }
        }
    }
    // As buildx: without --force, ask, and take anything but yes (or the
    // end of a non-interactive stdin) as no.
    if !args.force {
        let what = if args.all {
            "all build cache (tagged images stay)"
        } else {
            "build cache that no tagged image uses"
        };
        eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            if !std::io::stdin().is_terminal() {
                eprintln!("not pruning: give --force (-f) to prune without asking");
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    let store = open(root)?;
    let lock = match gc::gc_lock(&store, false).map_err(|e| Failure::failed(e.to_string()))? {
        Some(lock) => lock,
        None => {
            eprintln!("waiting for the builds using {} to finish…", root.display());
            gc::gc_lock(&store, true)
                .map_err(|e| Failure::failed(e.to_string()))?
                .ok_or_else(|| Failure::failed("could not lock the store"))?
        }
    };
    let report = gc::prune(&store, &options, &lock).map_err(|e| Failure::failed(e.to_string()))?;
    print!("{}", prune_summary(&report));
    Ok(ExitCode::SUCCESS)
}

fn prune_summary(r: &PruneReport) -> String {
    format!(
        "Deleted {} cache entries, {} blobs, {} snapshots, {} cache mounts\nTotal:\t{}\n",
        r.entries,
        r.blobs,
        r.snapshots,
        r.cache_mounts,
        bytes(r.freed)
    )
}

/// The store's size limit: `RBUILD_GC_KEEP_STORAGE` (a size, or `off`),
/// else a tenth of the filesystem the store is on, at least 2 GiB.
pub fn keep_storage(store: &Store) -> Result<Option<u64>, String> {
    match std::env::var(KEEP_STORAGE_ENV) {
        Ok(v) if v.trim().eq_ignore_ascii_case("off") => Ok(None),
        Ok(v) if !v.trim().is_empty() => parse_size(&v)
            .map(Some)
            .map_err(|e| format!("{KEEP_STORAGE_ENV}: {e}")),
        _ => Ok(Some(
            (gc::filesystem_size(store.root()).unwrap_or(0) / 10).max(2 << 30),
        )),
    }
}

/// After a build that wrote something: when the store is past its limit
/// and no other build is running, removes the least recently used cache
/// down to the limit. Problems are warnings: the build itself succeeded.
pub fn auto_gc(store: &Store) {
    let limit = match keep_storage(store) {
        Ok(Some(limit)) => limit,
        Ok(None) => return,
        Err(e) => {
            eprintln!("warning: {e}");
            return;
        }
    };
    if gc::estimate(store) <= limit {
        return;
    }
    let Ok(Some(lock)) = gc::gc_lock(store, false) else {
        return;
    };
    let options = PruneOptions {
        keep_storage: Some(limit),
        now: now(),
        ..Default::default()
    };
    match gc::prune(store, &options, &lock) {
        Ok(r) => eprintln!(
            "the store passed its limit of {} ({KEEP_STORAGE_ENV}): removed {} cache entries, freed {}",
            bytes(limit),
            r.entries,
            bytes(r.freed)
        ),
        Err(e) => eprintln!("warning: collecting the store's garbage failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_docker_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("10GB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("3 MiB").unwrap(), 3 << 20);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn durations_are_go_durations() {
        assert_eq!(parse_duration("24h").unwrap(), 86_400);
        assert_eq!(parse_duration("1h30m").unwrap(), 5_400);
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("1500ms").unwrap(), 1);
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
    }
}
