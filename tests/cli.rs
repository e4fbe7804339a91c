//! The `rbuild` binary as a user runs it: exit codes, messages, --call modes.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

fn rbuild() -> Command {
    let mut cmd = Command::cargo_bin("rbuild").expect("binary built");
    cmd.env_remove("BUILDKIT_PROGRESS")
        .env("RBUILD_ROOT", std::env::temp_dir().join("rbuild-cli-test"));
    cmd
}

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn dockerfile(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("Dockerfile"), text).expect("write Dockerfile");
    dir
}

/// Flags equivalent to a case's options.json.
fn case_flags(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("options.json")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid options.json");
    let mut flags = Vec::new();
    for (k, val) in v["build_args"].as_object().into_iter().flatten() {
        flags.push(format!(
            "--build-arg={k}={}",
            val.as_str().unwrap_or_default()
        ));
    }
    for (k, val) in v["labels"].as_object().into_iter().flatten() {
        flags.push(format!("--label={k}={}", val.as_str().unwrap_or_default()));
    }
    if let Some(t) = v["target"].as_str() {
        flags.push(format!("--target={t}"));
    }
    if let Some(p) = v["platform"].as_str() {
        flags.push(format!("--platform={p}"));
    }
    if let Some(n) = v["network"].as_str() {
        flags.push(format!("--network={n}"));
    }
    for c in v["contexts"].as_array().into_iter().flatten() {
        flags.push(format!(
            "--build-context={}={}",
            c.as_str().unwrap_or_default(),
            dir.display()
        ));
    }
    flags
}

#[test]
fn call_graph_works_for_every_valid_case() {
    let mut count = 0;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata().join("frontend"))
        .expect("testdata/frontend")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    dirs.push(testdata().join("hello"));
    for dir in dirs {
        let output = rbuild()
            .arg("build")
            .arg("--call=graph")
            .args(case_flags(&dir))
            .arg("-f")
            .arg(dir.join("Dockerfile"))
            .arg(&dir)
            .output()
            .expect("runs");
        assert!(
            output.status.success(),
            "{}: exit {:?}\n{}",
            dir.display(),
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        let graph: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("graph is JSON");
        assert!(
            !graph["ops"].as_array().expect("ops").is_empty(),
            "{}",
            dir.display()
        );
        assert!(graph["stages"].as_array().is_some_and(|s| !s.is_empty()));
        count += 1;
    }
    assert!(count >= 41, "only {count} cases");
}

#[test]
fn shorthand_is_build() {
    rbuild()
        .arg("--call=targets")
        .arg(testdata().join("hello"))
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "build   writes the greeting into a file",
        ));
}

#[test]
fn dockerfile_errors_exit_1_with_file_line_column() {
    let dir = dockerfile("FROM alpine\nRUNN echo hi\n");
    rbuild()
        .arg("build")
        .arg("--call=graph")
        .arg(dir.path())
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            "Dockerfile:2:1: unknown instruction: RUNN (did you mean RUN?)",
        ))
        .stderr(predicate::str::contains("2 | RUNN echo hi"));
}

#[test]
fn an_inline_cache_is_not_a_cache_source() {
    rbuild()
        .args(["--cache-from", "type=inline"])
        .arg(testdata().join("hello"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--cache-from type=registry,ref=IMAGE",
        ));
}

#[test]
fn pushing_needs_a_name() {
    for flag in [
        &["--push"][..],
        &["-o", "type=registry"],
        &["-o", "type=image,push=true"],
    ] {
        rbuild()
            .args(flag)
            .arg(testdata().join("hello"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains("tag is needed when pushing"));
    }
}

#[test]
fn bad_flag_values_exit_2() {
    for (flag, message) in [
        (&["--build-arg", "=x"][..], "invalid --build-arg value"),
        (&["--output", "type=bogus"], "unknown type \"bogus\""),
        (&["--platform", "linux/bogus"], "invalid --platform value"),
        (&["--secret", "src=a,bogus=1"], "unknown key \"bogus\""),
        (&["--cache-from", "type=local"], "type=local needs src=DIR"),
        (&["--build-context", "noequals"], "expected NAME=VALUE"),
        (&["--tag", "Bad:Tag"], "invalid tag"),
        (&["--progress", "fancy"], "invalid value 'fancy'"),
        (&["--network", "bridge"], "invalid value 'bridge'"),
        (&["--frobnicate"], "unexpected argument"),
    ] {
        rbuild()
            .arg("build")
            .args(flag)
            .arg(testdata().join("hello"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains(message));
    }
}

#[test]
fn call_check_exits_1_on_warnings_and_0_without() {
    let dir = dockerfile("FROM alpine\nCMD echo hi\n");
    rbuild()
        .arg("build")
        .arg("--call=check")
        .arg(dir.path())
        .assert()
        .code(1)
        .stdout(predicate::str::contains("JSONArgsRecommended"))
        .stdout(predicate::str::contains("Dockerfile:2:1"))
        .stdout(predicate::str::contains(
            "Check complete, 1 warning has been found!",
        ));
    rbuild()
        .arg("build")
        .arg("--check")
        .arg(testdata().join("hello"))
        .assert()
        .success()
        .stdout(predicate::str::contains("no warnings found"));
}

#[test]
fn check_error_directive_fails_the_build() {
    let dir = dockerfile("# check=error=true\nFROM scratch\nCMD echo hi\n");
    rbuild()
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "lint violation found for rules: JSONArgsRecommended",
        ));
}

#[test]
fn dockerfile_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    rbuild()
        .args(["build", "--call=targets", "-f", "-"])
        .arg(dir.path())
        .write_stdin("FROM scratch AS only\n")
        .assert()
        .success()
        .stdout(predicate::str::contains("only"));
    rbuild()
        .args(["build", "--call=targets", "-"])
        .write_stdin("FROM scratch AS piped\n")
        .assert()
        .success()
        .stdout(predicate::str::contains("piped"));
    rbuild()
        .args(["build", "-f", "-", "-"])
        .write_stdin("FROM scratch\n")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("stdin"));
}

#[test]
fn missing_dockerfile_and_context_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    rbuild()
        .args(["build", "--call=graph"])
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Dockerfile does not exist"));
    rbuild()
        .args(["build", "--call=graph", "/nonexistent/context"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not a directory"));
}

#[test]
fn unknown_target_is_an_error_with_the_names() {
    rbuild()
        .args(["build", "--call=graph", "--target", "biuld"])
        .arg(testdata().join("hello"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "target stage \"biuld\" could not be found (did you mean build?)",
        ));
}

#[test]
fn target_prunes_stages() {
    let output = rbuild()
        .args(["build", "--call=graph", "--target", "build"])
        .arg(testdata().join("hello"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let graph: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let stages = graph["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0]["name"], "build");
}

#[test]
fn build_args_and_labels_reach_the_graph() {
    let output = rbuild()
        .args([
            "build",
            "--call=graph",
            "--build-arg",
            "GREETING=hi there",
            "--label",
            "team=core",
        ])
        .arg(testdata().join("hello"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("\"data\": \"hi there\\n\""), "{text}");
    assert!(text.contains("\"team\": \"core\""), "{text}");
}
