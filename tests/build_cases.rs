//! End-to-end build cases: each directory `testdata/build/<case>/` holds a
//! `Dockerfile`, a `context/` tree and an `expect.json`. The case is built
//! with `-t` (the store) and `-o type=local`; the local output, the stored
//! image (layers applied by our own reader) and, when umoci is installed,
//! `umoci unpack` of the store must all agree with each other and with
//! `expect.json`. Contexts are copied to a temp dir first (modes
//! normalized) and some cases add special files at runtime (see
//! `common::case_setup`). `RBUILD_TEST_KEEP=1` keeps a case's temp dir.
//!
//! `expect.json` keys:
//! - `args`: extra build flags; `dockerfile`: the Dockerfile's name
//! - `error`: substrings the failure (exit 1) must show, instead of a result
//! - `files`: path → {type, mode (octal string), uid, gid, content, sha256,
//!   size, target, mtime}; only the given attributes are checked
//! - `absent`: paths that must not exist; `paths`: the exact list of paths
//! - `config`: keys of the image config's `config` compared exactly (`null`
//!   = absent); `image`: top-level config keys (author, os, …)
//! - `history`: `[created_by, empty_layer]` for every history entry
//! - `layers`: the number of layers

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};

const TAG: &str = "case:test";

fn case_dir(name: &str) -> PathBuf {
    repo().join("testdata/build").join(name)
}

fn parse_mode(v: &Value) -> u32 {
    let s = v.as_str().expect("mode is an octal string");
    u32::from_str_radix(s, 8).expect("octal mode")
}

/// Checks one tree against `expect.json`'s `files`, `absent` and `paths`.
fn check_tree(which: &str, tree: &Tree, expect: &Value, owners: bool) -> Vec<String> {
    let mut errs = Vec::new();
    for (path, want) in expect["files"].as_object().into_iter().flatten() {
        let Some(node) = tree.get(path) else {
            errs.push(format!("{which}: {path} is missing"));
            continue;
        };
        if let Some(t) = want["type"].as_str() {
            if node.kind.name() != t {
                errs.push(format!(
                    "{which}: {path} is a {}, want {t}",
                    node.kind.name()
                ));
                continue;
            }
        }
        if !want["mode"].is_null() && node.mode != parse_mode(&want["mode"]) {
            errs.push(format!(
                "{which}: {path} mode {:04o}, want {}",
                node.mode, want["mode"]
            ));
        }
        if owners {
            if let Some(u) = want["uid"].as_u64() {
                if node.uid != u {
                    errs.push(format!("{which}: {path} uid {}, want {u}", node.uid));
                }
            }
            if let Some(g) = want["gid"].as_u64() {
                if node.gid != g {
                    errs.push(format!("{which}: {path} gid {}, want {g}", node.gid));
                }
            }
        }
        if let Some(c) = want["content"].as_str() {
            if node.sha256.as_deref() != Some(&sha256_hex(c.as_bytes())) {
                errs.push(format!("{which}: {path} content differs from {c:?}"));
            }
        }
        if let Some(h) = want["sha256"].as_str() {
            if node.sha256.as_deref() != Some(h) {
                errs.push(format!(
                    "{which}: {path} sha256 {:?}, want {h}",
                    node.sha256
                ));
            }
        }
        if let Some(s) = want["size"].as_u64() {
            if node.size != s {
                errs.push(format!("{which}: {path} size {}, want {s}", node.size));
            }
        }
        if let Some(t) = want["target"].as_str() {
            if node.target.as_deref() != Some(t) {
                errs.push(format!("{which}: {path} -> {:?}, want {t:?}", node.target));
            }
        }
        if let Some(m) = want["mtime"].as_i64() {
            if node.mtime != m {
                errs.push(format!("{which}: {path} mtime {}, want {m}", node.mtime));
            }
        }
    }
    for p in expect["absent"].as_array().into_iter().flatten() {
        let p = p.as_str().unwrap();
        if tree.contains_key(p) {
            errs.push(format!("{which}: {p} must not exist"));
        }
    }
    if let Some(paths) = expect["paths"].as_array() {
        let want: Vec<&str> = paths.iter().map(|p| p.as_str().unwrap()).collect();
        let got: Vec<&str> = tree.keys().map(String::as_str).collect();
        if want != got {
            errs.push(format!("{which}: paths {got:?}, want {want:?}"));
        }
    }
    errs
}

fn check_config(config: &Value, expect: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    for (k, want) in expect["config"].as_object().into_iter().flatten() {
        let got = config["config"].get(k).cloned().unwrap_or(Value::Null);
        if &got != want {
            errs.push(format!("config.{k} = {got}, want {want}"));
        }
    }
    for (k, want) in expect["image"].as_object().into_iter().flatten() {
        let got = config.get(k).cloned().unwrap_or(Value::Null);
        if &got != want {
            errs.push(format!("{k} = {got}, want {want}"));
        }
    }
    if let Some(want) = expect["history"].as_array() {
        let got: Vec<Value> = config["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                json!([
                    h["created_by"].as_str().unwrap_or(""),
                    h["empty_layer"].as_bool().unwrap_or(false)
                ])
            })
            .collect();
        if &got != want {
            errs.push(format!(
                "history:\n  got  {}\n  want {}",
                Value::Array(got),
                Value::Array(want.clone())
            ));
        }
    }
    errs
}

fn run_case(name: &str) {
    let src = case_dir(name);
    let expect = read_json(&src.join("expect.json"));
    let tmp = tempfile::tempdir().unwrap();
    let case = tmp.path().join("case");
    copy_tree(&src, &case);
    let ctx = case.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut args: Vec<String> = expect["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    args.extend(case_setup(name, &ctx, tmp.path()));
    let dockerfile = case.join(expect["dockerfile"].as_str().unwrap_or("Dockerfile"));
    let store = tmp.path().join("store");
    let out = tmp.path().join("out");

    let mut cmd = build(&store);
    cmd.arg("-t")
        .arg(TAG)
        .arg("-o")
        .arg(format!("type=local,dest={}", out.display()))
        .arg("-f")
        .arg(&dockerfile)
        .args(&args)
        .arg(&ctx);

    if let Some(errors) = expect["error"].as_array() {
        let stderr = fails(&mut cmd, 1);
        for e in errors {
            let e = e.as_str().unwrap();
            assert!(
                stderr.contains(e),
                "{name}: the error must mention {e:?}; stderr:\n{stderr}"
            );
        }
        assert!(
            !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
            "{name}: a failed build must not export anything"
        );
        return;
    }
    ok(&mut cmd);

    let root = is_root();
    let local = dir_tree(&out);
    let layout = Layout::new(&store);
    let image = layout.tree(Some(TAG));
    let config = layout.config(Some(TAG));

    let mut errs = Vec::new();
    errs.extend(check_tree("local output", &local, &expect, root));
    errs.extend(check_tree("stored image", &image, &expect, true));
    errs.extend(diff_trees(
        "local output",
        &local,
        "stored image",
        &image,
        Compare {
            modes: true,
            owners: root,
            file_mtimes: true,
        },
    ));
    if need("umoci", "the umoci cross-check") {
        let rootfs = umoci_unpack(&store, TAG, &tmp.path().join("bundle"));
        let unpacked = dir_tree(&rootfs);
        errs.extend(diff_trees(
            "umoci unpack",
            &unpacked,
            "stored image",
            &image,
            Compare {
                modes: true,
                owners: root,
                file_mtimes: true,
            },
        ));
    }
    errs.extend(check_config(&config, &expect));
    if let Some(n) = expect["layers"].as_u64() {
        let got = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len) as u64;
        if got != n {
            errs.push(format!("{got} layers, want {n}"));
        }
    }
    // RBUILD_TEST_KEEP=1 keeps the case's temp dir (store, outputs) to look at.
    if std::env::var_os("RBUILD_TEST_KEEP").is_some() {
        eprintln!("kept {}", tmp.keep().display());
    }
    assert!(
        errs.is_empty(),
        "case {name}:\n- {}\nstored image:\n{}config: {:#}",
        errs.join("\n- "),
        show_tree(&image),
        config
    );
}

macro_rules! cases {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        $(
            #[test]
            $(#[$attr])*
            fn $name() {
                run_case(stringify!($name));
            }
        )*
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

cases! {
    copy_file_to_path,
    copy_dir_new_dest_mode,
    copy_chown_name_only,
    copy_parents_dir_modes,
    from_base_implicit_parent,
    copy_file_to_dir_slash,
    copy_into_existing_dir,
    copy_dir_contents,
    copy_dir_merge_existing,
    copy_several_sources,
    copy_wildcard_star,
    copy_wildcard_nested,
    copy_wildcard_class,
    copy_wildcard_dir_match,
    copy_wildcard_no_match,
    copy_missing_source,
    copy_relative_dest_workdir,
    copy_dest_dot,
    copy_chown_numeric,
    copy_chown_names,
    copy_chmod_octal,
    copy_chmod_symbolic,
    copy_link,
    copy_parents,
    copy_exclude,
    copy_from_stage,
    copy_from_image,
    copy_heredoc,
    copy_env_expansion,
    copy_through_base_symlink,
    copy_outside_context,
    add_archives,
    add_archive_dest,
    add_non_archive,
    workdir_creates,
    workdir_user_name,
    symlinks_in_context,
    symlink_source_scoped,
    context_metadata,
    dockerignore,
    dockerignore_excluded_source,
    dockerfile_dockerignore,
    from_oci_layout_base,
    from_base_with_whiteouts,
    from_base_with_whiteouts_stage,
    multi_stage,
    target_stage,
    onbuild_triggers,
    onbuild_config,
    metadata_all,
    metadata_shell_form,
    metadata_portable,
    build_args_and_labels,
}

#[test]
fn every_case_directory_has_a_test() {
    let mut dirs: Vec<String> = std::fs::read_dir(repo().join("testdata/build"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(dirs, names, "testdata/build and the cases! list differ");
    assert!(names.len() >= 30);
}
