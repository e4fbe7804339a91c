//! ADD of an http URL, served by a small server in the test process.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use assert_cmd::Command;
use predicates::prelude::*;

/// Serves `body` for every request, with a Last-Modified header; returns the port.
fn serve(body: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let mut first = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                if first.is_empty() {
                    first = line.clone();
                }
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let mut stream = stream;
            if first.contains("/missing") {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
        }
    });
    port
}

const BODY: &[u8] = b"downloaded content\n";
// sha256 of BODY.
fn body_digest() -> String {
    use std::process::Command as P;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("b");
    std::fs::write(&f, BODY).unwrap();
    let out = P::new("sha256sum").arg(&f).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn add_downloads_with_mode_0600_mtime_and_checksum() {
    let port = serve(BODY);
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sum = body_digest();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM scratch\nADD http://127.0.0.1:{port}/dir/file.txt /a/\nADD --checksum=sha256:{sum} http://127.0.0.1:{port}/x /b.txt\n"
        ),
    )
    .unwrap();
    Command::cargo_bin("rbuild")
        .unwrap()
        .env("RBUILD_ROOT", store.path())
        .arg("-o")
        .arg(format!("type=local,dest={}", out.path().display()))
        .arg(ctx.path())
        .assert()
        .success();
    let a = out.path().join("a/file.txt");
    assert_eq!(std::fs::read(&a).unwrap(), BODY);
    let meta = std::fs::metadata(&a).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mtime(), 784_111_777);
    assert_eq!(std::fs::read(out.path().join("b.txt")).unwrap(), BODY);
}

#[test]
fn a_wrong_checksum_or_a_404_fails_clearly() {
    let port = serve(BODY);
    let ctx = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let zero = "0".repeat(64);
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM scratch\nADD --checksum=sha256:{zero} http://127.0.0.1:{port}/f /f\n"),
    )
    .unwrap();
    Command::cargo_bin("rbuild")
        .unwrap()
        .env("RBUILD_ROOT", store.path())
        .arg(ctx.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "digest mismatch sha256:{zero}"
        )));
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM scratch\nADD http://127.0.0.1:{port}/missing /f\n"),
    )
    .unwrap();
    Command::cargo_bin("rbuild")
        .unwrap()
        .env("RBUILD_ROOT", store.path())
        .arg(ctx.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("404"));
}
