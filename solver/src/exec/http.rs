//! ADD of an http(s) URL: the download becomes a one-file filesystem that
//! the copy reads from, verified against `--checksum` when given.

use std::fs::File;
use std::io::{Read, Write};

use rbuild_cache::layer::{self, Compression, EntryMeta, LayerDescriptor};
use rbuild_cache::Store;
use sha2::{Digest as _, Sha256};

use crate::graph::HttpSource;

use super::error::{ExecError, Result};

/// Downloads `src` and writes it as a layer holding `/<filename>`, mode
/// 0600 (Docker's rule for remote files), its mtime from `Last-Modified`.
pub fn fetch(
    store: &Store,
    src: &HttpSource,
    now: i64,
    epoch: Option<i64>,
) -> Result<LayerDescriptor> {
    let client = reqwest::blocking::Client::builder()
        .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ExecError::Internal(format!("http client: {e}")))?;
    let mut response = client
        .get(&src.url)
        .send()
        .map_err(|e| ExecError::User(format!("failed to download {}: {e}", src.url)))?;
    if !response.status().is_success() {
        return Err(ExecError::User(format!(
            "failed to download {}: invalid response status {}",
            src.url,
            response.status()
        )));
    }
    let mtime = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .unwrap_or(now);
    let tmp = store.temp_path("download");
    let mut file = File::create(&tmp)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = response
            .read(&mut buf)
            .map_err(|e| ExecError::User(format!("failed to download {}: {e}", src.url)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        size += n as u64;
    }
    file.sync_all()?;
    drop(file);
    let guard = Remove(tmp.clone());
    let got = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(want) = &src.checksum {
        if *want != got {
            return Err(ExecError::User(format!(
                "digest mismatch {want}: {got} (downloaded from {})",
                src.url
            )));
        }
    }
    let meta = EntryMeta {
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    };
    let desc = layer::write_layer(store, Compression::None, epoch, |tar| {
        let mut f = File::open(&tmp)?;
        tar.file(&src.filename, &meta, size, &mut f)
    })?;
    drop(guard);
    Ok(desc)
}

struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to seconds.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("garbage"), None);
    }
}
