//! Differential tests against buildah: the same FROM-scratch build cases
//! (`testdata/build/<case>`) built by `buildah build --isolation chroot
//! --layers` (temp vfs storage, no network) and by rbuild, both exported as
//! OCI, both unpacked by umoci; trees and configs must agree except for the
//! differences listed in `IGNORED`. Skipped, with a note, when buildah or
//! umoci is missing or when not running as root.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// Differences between buildah and BuildKit (which rbuild follows) that the
/// comparison ignores, each with the reason.
pub const IGNORED: &[(&str, &str)] = &[
    ("history (created_by, comment, empty_layer)", "buildah writes its own created_by (`/bin/sh -c #(nop) COPY file:<hash> in /x`); BuildKit's history is checked by build_cases"),
    ("created, history[].created, every mtime", "build timestamps: both stamp new directories and entries with the build time"),
    ("label io.buildah.version", "buildah adds its own version as a label"),
    ("config.WorkingDir \"/\" vs unset", "BuildKit sets WorkingDir / on a scratch stage, buildah leaves it empty"),
    ("config.ArgsEscaped", "a Windows-only Docker field BuildKit sets with CMD/ENTRYPOINT; not compared"),
    ("directories made only by WORKDIR (per case below)", "buildah 1.28 makes a WORKDIR directory only when a later instruction writes there, and as root; BuildKit makes it at the WORKDIR step, owned by USER"),
    ("copy_into_existing_dir is built by buildah without --layers", "buildah 1.28's --layers cache reuses the layer of `COPY b.txt /existing` for `COPY b.txt /existing/keep.txt` and leaves the old file"),
    ("Shell/OnBuild/Healthcheck are read from buildah's `dir:` push", "buildah's `oci:` push converts the config to OCI and drops the Docker-only fields; umoci unpacks the `oci:` push"),
];

fn usable() -> bool {
    if !is_root() {
        eprintln!("note: not root: skipping the buildah differential tests");
        return false;
    }
    need("buildah", "the buildah differential tests")
        && need("umoci", "the buildah differential tests")
}

fn buildah(storage: &Path) -> assert_cmd::Command {
    let mut cmd = tool("buildah");
    cmd.arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("runroot"))
        .args(["--storage-driver", "vfs"])
        .env("TMPDIR", storage)
        .env("BUILDAH_ISOLATION", "chroot");
    cmd
}

/// The config fields compared (see `IGNORED` for what is left out).
fn comparable_config(config: &Value) -> Value {
    let obj = config["config"].as_object().cloned().unwrap_or_default();
    let mut out = serde_json::Map::new();
    for key in [
        "Env",
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "Labels",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
        "Shell",
        "Healthcheck",
        "OnBuild",
    ] {
        let mut v = obj.get(key).cloned().unwrap_or(Value::Null);
        match key {
            "Labels" => {
                if let Some(m) = v.as_object_mut() {
                    m.remove("io.buildah.version");
                }
            }
            // BuildKit's default for a scratch stage; buildah has none.
            "WorkingDir" if v == "/" => v = Value::Null,
            _ => {}
        }
        let empty = v.is_null()
            || v.as_str() == Some("")
            || v.as_array().is_some_and(Vec::is_empty)
            || v.as_object().is_some_and(serde_json::Map::is_empty);
        if !empty {
            out.insert(key.to_string(), v);
        }
    }
    Value::Object(out)
}

fn unpack(layout: &Path, tag: &str, bundle: &Path) -> Tree {
    dir_tree(&umoci_unpack(layout, tag, bundle))
}

fn compare(name: &str, ignore_paths: &[&str]) -> Vec<String> {
    let src = repo().join("testdata/build").join(name);
    let expect = read_json(&src.join("expect.json"));
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    copy_tree(&src, &case);
    let ctx = case.join("context");
    let mut args: Vec<String> = expect["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    args.extend(case_setup(name, &ctx, tmp.path()));
    let dockerfile = case.join(expect["dockerfile"].as_str().unwrap_or("Dockerfile"));

    // buildah
    let storage = tmp.path().join("buildah");
    std::fs::create_dir_all(&storage).unwrap();
    let tag = format!("localhost/{name}:latest");
    let layers = if name == "copy_into_existing_dir" {
        "--layers=false"
    } else {
        "--layers"
    };
    ok(buildah(&storage)
        .args([
            "build",
            "--isolation",
            "chroot",
            layers,
            "--format",
            "docker",
            "-q",
            "-f",
        ])
        .arg(&dockerfile)
        .args(["-t", &tag])
        .args(&args)
        .arg(&ctx));
    let theirs = tmp.path().join("buildah-oci");
    ok(buildah(&storage)
        .args(["push", "-q", &tag])
        .arg(format!("oci:{}:case", theirs.display())));
    let their_dir = tmp.path().join("buildah-dir");
    ok(buildah(&storage)
        .args(["push", "-q", &tag])
        .arg(format!("dir:{}", their_dir.display())));
    let manifest = read_json(&their_dir.join("manifest.json"));
    let their_config =
        read_json(&their_dir.join(&manifest["config"]["digest"].as_str().unwrap()[7..]));

    // rbuild
    let archive = tmp.path().join("rbuild.tar");
    ok(build(&tmp.path().join("store"))
        .args(["-t", "diff:case", "-o"])
        .arg(format!("type=oci,dest={}", archive.display()))
        .arg("-f")
        .arg(&dockerfile)
        .args(&args)
        .arg(&ctx));
    let ours = tmp.path().join("rbuild-oci");
    untar(&archive, &ours);
    let our_ref = Layout::new(&ours).descriptor(None)["annotations"][REF_NAME]
        .as_str()
        .map(str::to_string);

    let mut diffs = diff_trees(
        "rbuild",
        &unpack(
            &ours,
            our_ref.as_deref().unwrap_or("latest"),
            &tmp.path().join("b1"),
        ),
        "buildah",
        &unpack(&theirs, "case", &tmp.path().join("b2")),
        Compare {
            modes: true,
            owners: true,
            file_mtimes: false,
        },
    );
    diffs.retain(|d| {
        let path = d.split(':').next().unwrap_or("");
        !ignore_paths
            .iter()
            .any(|p| path == *p || path.starts_with(&format!("{p}/")))
    });
    let a = comparable_config(&Layout::new(&ours).config(None));
    let b = comparable_config(&their_config);
    if a != b {
        diffs.push(format!("config: rbuild {a}\n        buildah {b}"));
    }
    diffs
}

fn run_case(name: &str, ignore_paths: &[&str]) {
    if !usable() {
        return;
    }
    let diffs = compare(name, ignore_paths);
    assert!(
        diffs.is_empty(),
        "rbuild and buildah differ on {name}:\n  {}",
        diffs.join("\n  ")
    );
}

/// `case: [paths whose differences are ignored]`; see `IGNORED` for why.
macro_rules! diff_cases {
    ($($(#[$attr:meta])* $name:ident: [$($p:literal),*]),* $(,)?) => {
        $(
            #[test]
            $(#[$attr])*
            fn $name() {
                run_case(stringify!($name), &[$($p),*]);
            }
        )*
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

diff_cases! {
    copy_file_to_path: [],
    copy_file_to_dir_slash: [],
    copy_into_existing_dir: [],
    copy_dir_merge_existing: [],
    copy_several_sources: [],
    copy_wildcard_star: [],
    copy_wildcard_nested: [],
    copy_wildcard_class: [],
    copy_wildcard_dir_match: [],
    copy_relative_dest_workdir: [],
    copy_dest_dot: [],
    copy_chown_numeric: [],
    copy_chown_names: [],
    copy_chmod_octal: [],
    copy_from_stage: [],
    copy_env_expansion: [],
    copy_through_base_symlink: [],
    add_non_archive: [],
    context_metadata: [],
    symlinks_in_context: [],
    dockerignore: [],
    dockerfile_dockerignore: [],
    workdir_creates: ["/a", "/w"],
    workdir_user_name: ["/home", "/srv"],
    multi_stage: [],
    target_stage: [],
    build_args_and_labels: [],
    onbuild_config: [],
    onbuild_triggers: [],
    metadata_portable: ["/srv"],
    copy_dir_contents: [],
    copy_dir_new_dest_mode: [],
    copy_chown_name_only: ["/home"],
    add_archives: [],
    add_archive_dest: [],
}

#[test]
fn enough_cases_are_compared() {
    assert!(CASES.len() >= 15, "{}", CASES.len());
    for (what, why) in IGNORED {
        assert!(!what.is_empty() && !why.is_empty());
    }
}
