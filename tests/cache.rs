//! The build cache, end to end, as root (RUN needs the sandbox): what a
//! rebuild reuses and what it runs again (`rbuild.steps` of
//! `--metadata-file`, `CACHED` in `--progress=plain`), how much of the
//! context it reads (`rbuild.context`), that identical work is done once and
//! independent stages overlap, `--no-cache` and `--no-cache-filter`, cache
//! entries whose blobs are gone or damaged, two builds on one store at once,
//! builds killed with SIGKILL at any moment, `rbuild du`, `rbuild prune` and
//! the automatic GC (`RBUILD_GC_KEEP_STORAGE`). Every test asserts on what
//! can be observed (steps, files in the image, digests, exit codes), never
//! on durations. Skipped with a note when not root.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const TAG: &str = "img:latest";

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// A store and a context directory of one test.
struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    ctx: PathBuf,
}

/// One entry of `rbuild.steps`.
#[derive(Clone, Debug)]
struct Step {
    name: String,
    cached: bool,
    started: u64,
    completed: u64,
    key: String,
    layer: Option<String>,
}

impl Step {
    /// `[internal] …` and `[context NAME] …` steps (never cached).
    fn internal(&self) -> bool {
        self.name.starts_with("[internal]") || self.name.starts_with("[context ")
    }
}

/// What one build reported: its metadata file and its progress (stderr).
struct Built {
    meta: Value,
    progress: String,
}

impl Built {
    fn steps(&self) -> Vec<Step> {
        let steps = self.meta["rbuild.steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no rbuild.steps array in {:#}", self.meta));
        steps
            .iter()
            .map(|s| Step {
                name: s["name"].as_str().expect("step name").to_string(),
                cached: s["cached"].as_bool().expect("step cached"),
                started: s["started"].as_u64().expect("step started"),
                completed: s["completed"].as_u64().expect("step completed"),
                key: s["key"].as_str().expect("step key").to_string(),
                layer: s.get("layer").and_then(|l| l.as_str()).map(str::to_string),
            })
            .collect()
    }

    /// The steps that are not `[internal]` or `[context …]`.
    fn own_steps(&self) -> Vec<Step> {
        self.steps().into_iter().filter(|s| !s.internal()).collect()
    }

    /// The one step whose name contains `needle`.
    fn step(&self, needle: &str) -> Step {
        let hits: Vec<Step> = self
            .steps()
            .into_iter()
            .filter(|s| s.name.contains(needle))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "expected one step named like {needle:?}:\n{}",
            self.show()
        );
        hits[0].clone()
    }

    fn cached(&self, needle: &str) -> bool {
        self.step(needle).cached
    }

    /// A counter of `rbuild.context`.
    fn context(&self, what: &str) -> u64 {
        self.meta["rbuild.context"][what]
            .as_u64()
            .unwrap_or_else(|| panic!("no rbuild.context.{what} in {:#}", self.meta))
    }

    fn config_digest(&self) -> String {
        self.meta["containerimage.config.digest"]
            .as_str()
            .expect("containerimage.config.digest")
            .to_string()
    }

    /// The steps and the progress, for messages.
    fn show(&self) -> String {
        let mut s = String::new();
        for st in self.steps() {
            s.push_str(&format!(
                "  {} cached={} layer={:?}\n",
                st.name, st.cached, st.layer
            ));
        }
        format!("steps:\n{s}progress:\n{}", self.progress)
    }

    /// Asserts every non-internal step is cached (and says so in progress).
    fn assert_all_cached(&self, what: &str) {
        let own = self.own_steps();
        assert!(!own.is_empty(), "{what}: no steps:\n{}", self.show());
        for s in &own {
            assert!(
                s.cached,
                "{what}: {} is not cached:\n{}",
                s.name,
                self.show()
            );
        }
        for (name, state) in plain_steps(&self.progress) {
            if name.starts_with('[')
                && !name.starts_with("[internal]")
                && !name.starts_with("[context ")
            {
                assert_eq!(
                    state, "CACHED",
                    "{what}: progress of {name}:\n{}",
                    self.progress
                );
            }
        }
    }

    /// Asserts no non-internal step is cached.
    fn assert_none_cached(&self, what: &str) {
        let own = self.own_steps();
        assert!(!own.is_empty(), "{what}: no steps:\n{}", self.show());
        for s in &own {
            assert!(!s.cached, "{what}: {} is cached:\n{}", s.name, self.show());
        }
    }
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::Builder::new()
            .prefix("rbuild-cache")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let root = dir.join("store");
        let ctx = dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        Fx {
            dir,
            root,
            ctx,
            _tmp: tmp,
        }
    }

    fn dockerfile(&self, text: &str) {
        write_file(&self.ctx.join("Dockerfile"), text);
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("meta.json")
    }

    /// `rbuild build --progress=plain <busybox> -t img --metadata-file M ARGS ctx`.
    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = build(&self.root);
        cmd.arg(busybox_flag())
            .args(["-t", TAG])
            .arg("--metadata-file")
            .arg(self.meta_path())
            .args(args)
            .arg(&self.ctx);
        cmd
    }

    /// Builds (with extra environment variables) and asserts success.
    fn build_env(&self, args: &[&str], env: &[(&str, &str)]) -> Built {
        let _ = std::fs::remove_file(self.meta_path());
        let mut cmd = self.cmd(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = ok(&mut cmd);
        Built {
            meta: read_json(&self.meta_path()),
            progress: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn build(&self, args: &[&str]) -> Built {
        self.build_env(args, &[])
    }

    fn image(&self) -> StoredImage {
        StoredImage::load(&self.root, TAG)
    }

    fn rbuild(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = rbuild(&self.root);
        cmd.arg("--root").arg(&self.root).args(args);
        cmd
    }

    /// `rbuild du --format json`.
    fn du(&self) -> Value {
        let out = ok(&mut self.rbuild(&["du", "--format", "json"]));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "du --format json is not JSON ({e}):\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `rbuild prune ARGS`; returns stdout.
    fn prune(&self, args: &[&str]) -> String {
        let mut cmd = self.rbuild(&["prune"]);
        cmd.args(args);
        String::from_utf8_lossy(&ok(&mut cmd).stdout).into_owned()
    }
}

/// `count` of one kind in `du --format json`.
fn du_count(du: &Value, kind: &str) -> u64 {
    du["kinds"]
        .as_array()
        .expect("du kinds")
        .iter()
        .find(|k| k["kind"] == kind)
        .unwrap_or_else(|| panic!("no kind {kind:?} in {du:#}"))["count"]
        .as_u64()
        .expect("count")
}

/// The cache entries `du` counts (its `entries`, the same as the "build
/// cache" kind's count).
fn du_entries(du: &Value) -> u64 {
    let entries = du["entries"].as_u64().expect("du entries");
    assert_eq!(
        entries,
        du_count(du, "build cache"),
        "entries vs the build cache count: {du:#}"
    );
    entries
}

/// Every blob that `index.json` reaches (manifests, indexes, configs,
/// layers) exists and hashes to its digest (`Layout::blob` checks).
fn verify_store(root: &Path) {
    fn walk(layout: &Layout, desc: &Value, seen: &mut BTreeSet<String>) {
        let digest = desc["digest"].as_str().expect("descriptor digest");
        if !seen.insert(digest.to_string()) {
            return;
        }
        let data = layout.blob(digest);
        if let Some(size) = desc["size"].as_u64() {
            assert_eq!(data.len() as u64, size, "size of blob {digest}");
        }
        let media = desc["mediaType"].as_str().unwrap_or("");
        if media.contains("manifest") || media.contains("index") {
            let doc: Value = serde_json::from_slice(&data).expect("manifest is JSON");
            for m in doc["manifests"].as_array().into_iter().flatten() {
                walk(layout, m, seen);
            }
            if doc.get("config").is_some() {
                walk(layout, &doc["config"], seen);
            }
            for l in doc["layers"].as_array().into_iter().flatten() {
                walk(layout, l, seen);
            }
        }
    }
    let layout = Layout::new(root);
    let mut seen = BTreeSet::new();
    for m in layout.index()["manifests"].as_array().into_iter().flatten() {
        walk(&layout, m, &mut seen);
    }
}

/// A `std::process::Command` for rbuild with the environment `rbuild()`
/// gives (for spawning and killing).
fn spawn_cmd(root: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(rbuild_bin());
    cmd.env_remove("BUILDKIT_PROGRESS")
        .env_remove("SOURCE_DATE_EPOCH")
        .env("RBUILD_ROOT", root)
        .env("NO_COLOR", "1");
    cmd
}

/// Waits for `child` (up to 120 s) and returns (success, stderr).
fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().expect("wait for rbuild");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// 1–4: what a rebuild reuses
// ---------------------------------------------------------------------------

#[test]
fn no_change_rebuild_is_fully_cached_reads_nothing_and_gives_the_same_image() {
    if !root_only("no_change_rebuild_is_fully_cached_reads_nothing_and_gives_the_same_image") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("app/main.txt"), "main\n");
    write_file(&fx.ctx.join("app/lib/util.txt"), "util\n");
    write_file(&fx.ctx.join("top.txt"), "top\n");
    fx.dockerfile(
        "FROM busybox\n\
         COPY app /app\n\
         RUN cat /app/main.txt /app/lib/util.txt > /joined\n\
         COPY top.txt /top.txt\n\
         RUN echo two > /two\n\
         ENV X=1\n\
         RUN echo $X > /x\n",
    );
    // The checksum memo only trusts files whose mtime and ctime are older
    // than the read by its racy window (1 s): let the context age first.
    std::thread::sleep(Duration::from_millis(1100));
    let first = fx.build(&[]);
    first.assert_none_cached("first build");
    assert!(first.context("files_hashed") >= 3, "{:#}", first.meta);
    let second = fx.build(&[]);
    second.assert_all_cached("unchanged rebuild");
    assert_eq!(
        second.context("files_hashed"),
        0,
        "no context file hashed again: {:#}",
        second.meta["rbuild.context"]
    );
    assert_eq!(
        second.context("bytes_read"),
        0,
        "no context content read again: {:#}",
        second.meta["rbuild.context"]
    );
    assert!(second.context("memo_hits") >= 3, "{:#}", second.meta);
    assert_eq!(
        first.config_digest(),
        second.config_digest(),
        "same image config"
    );
    assert_eq!(
        first.meta["containerimage.digest"], second.meta["containerimage.digest"],
        "same manifest"
    );
    // Same keys and layers, step for step.
    let a: Vec<_> = first
        .own_steps()
        .into_iter()
        .map(|s| (s.name, s.key, s.layer))
        .collect();
    let b: Vec<_> = second
        .own_steps()
        .into_iter()
        .map(|s| (s.name, s.key, s.layer))
        .collect();
    assert_eq!(a, b);
    // Steps are sorted by start, and each ends after it starts.
    let steps = second.steps();
    for w in steps.windows(2) {
        assert!(
            w[0].started <= w[1].started,
            "steps sorted by start: {steps:?}"
        );
    }
    for s in &steps {
        assert!(s.started <= s.completed, "{s:?}");
        assert!(s.key.starts_with("sha256:") && s.key.len() == 71, "{s:?}");
    }
    let img = fx.image();
    assert_eq!(img.text("/joined"), "main\nutil\n");
    assert_eq!(img.text("/x"), "1\n");
    verify_store(&fx.root);
}

#[test]
fn editing_one_file_reruns_exactly_its_dependents() {
    if !root_only("editing_one_file_reruns_exactly_its_dependents") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("a"), "a1\n");
    write_file(&fx.ctx.join("b"), "b1\n");
    write_file(&fx.ctx.join("unused"), "u1\n");
    fx.dockerfile(
        "FROM busybox\n\
         COPY a /a\n\
         RUN cat /a > /a2\n\
         COPY b /b\n\
         RUN cat /a /b > /ab\n",
    );
    let first = fx.build(&[]);
    first.assert_none_cached("first build");
    assert_eq!(fx.image().text("/ab"), "a1\nb1\n");

    // b changes: the steps before COPY b are reused, COPY b and after rerun.
    write_file(&fx.ctx.join("b"), "b2\n");
    let p = fx.build(&[]);
    assert!(p.cached("COPY a /a"), "{}", p.show());
    assert!(p.cached("RUN cat /a > /a2"), "{}", p.show());
    assert!(!p.cached("COPY b /b"), "{}", p.show());
    assert!(!p.cached("RUN cat /a /b"), "{}", p.show());
    assert_eq!(
        p.step("COPY a /a").key,
        first.step("COPY a /a").key,
        "COPY a keeps its key"
    );
    assert_ne!(p.step("COPY b /b").key, first.step("COPY b /b").key);
    let img = fx.image();
    assert_eq!(img.text("/b"), "b2\n");
    assert_eq!(img.text("/ab"), "a1\nb2\n");
    let after_b = p.config_digest();

    // A file no COPY selects: everything is reused, same image.
    write_file(&fx.ctx.join("unused"), "u2 changed\n");
    let p = fx.build(&[]);
    p.assert_all_cached("after editing an unused file");
    assert_eq!(p.config_digest(), after_b);

    // Only a's mtime changes (same content): everything is reused.
    set_mtime(&fx.ctx.join("a"), 1_000_000_000);
    let p = fx.build(&[]);
    p.assert_all_cached("after touching a");
    assert_eq!(p.config_digest(), after_b);

    // a changes: everything from COPY a on reruns.
    write_file(&fx.ctx.join("a"), "a3\n");
    let p = fx.build(&[]);
    p.assert_none_cached("after editing a");
    assert_eq!(fx.image().text("/ab"), "a3\nb2\n");
    verify_store(&fx.root);
}

#[test]
fn a_build_arg_invalidates_from_its_first_use_only() {
    if !root_only("a_build_arg_invalidates_from_its_first_use_only") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("x"), "x\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN echo pre > /pre\n\
         ARG V\n\
         COPY x /x\n\
         RUN echo \"v=$V\" > /v\n\
         RUN echo post > /post\n",
    );
    let first = fx.build(&["--build-arg", "V=one"]);
    first.assert_none_cached("first build");
    assert_eq!(fx.image().text("/v"), "v=one\n");

    let p = fx.build(&["--build-arg", "V=two"]);
    assert!(p.cached("RUN echo pre"), "{}", p.show());
    assert!(p.cached("COPY x /x"), "COPY does not use $V:\n{}", p.show());
    assert!(!p.cached("> /v"), "{}", p.show());
    assert!(!p.cached("RUN echo post"), "{}", p.show());
    assert_eq!(fx.image().text("/v"), "v=two\n");

    // Back to the first value: all of it is in the cache.
    let p = fx.build(&["--build-arg", "V=one"]);
    p.assert_all_cached("back to V=one");
    assert_eq!(p.config_digest(), first.config_digest());
    assert_eq!(fx.image().text("/v"), "v=one\n");
}

#[test]
fn secret_values_never_enter_a_cache_key() {
    if !root_only("secret_values_never_enter_a_cache_key") {
        return;
    }
    let fx = Fx::new();
    let secret = fx.dir.join("secret.txt");
    let v1 = "s3cr3t-value-one-7f2c";
    let v2 = "s3cr3t-value-two-91ab";
    write_file(&secret, v1);
    fx.dockerfile(
        "FROM busybox\n\
         RUN echo pre > /pre\n\
         RUN --mount=type=secret,id=s cat /run/secrets/s > /dev/null && echo used > /used\n",
    );
    let sec = format!("--secret=id=s,src={}", secret.display());
    let first = fx.build(&[&sec]);
    first.assert_none_cached("first build");
    write_file(&secret, v2);
    let p = fx.build(&[&sec]);
    p.assert_all_cached("another secret value");
    assert_eq!(
        p.step("type=secret").key,
        first.step("type=secret").key,
        "same key"
    );
    assert_eq!(fx.image().text("/used"), "used\n");
    for v in [v1, v2] {
        let hits = files_containing(&fx.root, v.as_bytes());
        assert!(hits.is_empty(), "the secret {v:?} is stored in {hits:?}");
        assert!(!String::from_utf8_lossy(&std::fs::read(fx.meta_path()).unwrap()).contains(v));
    }
}

// ---------------------------------------------------------------------------
// 5–7: scheduling, deduplication, --no-cache
// ---------------------------------------------------------------------------

#[test]
fn independent_stages_run_at_the_same_time() {
    if !root_only("independent_stages_run_at_the_same_time") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox AS one\n\
         RUN sleep 1 && echo one > /one\n\
         FROM busybox AS two\n\
         RUN sleep 1 && echo two > /two\n\
         FROM busybox\n\
         COPY --from=one /one /one\n\
         COPY --from=two /two /two\n",
    );
    let p = fx.build(&["--jobs", "2"]);
    let a = p.step("echo one > /one");
    let b = p.step("echo two > /two");
    assert!(!a.cached && !b.cached, "{}", p.show());
    assert!(
        a.started < b.completed && b.started < a.completed,
        "the two RUN steps did not overlap with --jobs 2:\n{}",
        p.show()
    );
    let img = fx.image();
    assert_eq!(img.text("/one"), "one\n");
    assert_eq!(img.text("/two"), "two\n");
    // With --jobs 1 they do not overlap (and the result is the same).
    let p = fx.build(&["--jobs", "1", "--no-cache"]);
    let a = p.step("echo one > /one");
    let b = p.step("echo two > /two");
    assert!(
        a.completed <= b.started || b.completed <= a.started,
        "--jobs 1 ran two steps at once:\n{}",
        p.show()
    );
    assert_eq!(fx.image().text("/two"), "two\n");
}

#[test]
fn identical_ops_run_once_and_unneeded_stages_never_run() {
    if !root_only("identical_ops_run_once_and_unneeded_stages_never_run") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox AS x\n\
         RUN echo same > /f\n\
         FROM busybox AS broken\n\
         RUN echo never-runs && exit 1\n\
         FROM busybox AS y\n\
         RUN echo same > /f\n\
         FROM busybox\n\
         COPY --from=x /f /x\n\
         COPY --from=y /f /y\n",
    );
    let p = fx.build(&[]);
    let same: Vec<Step> = p
        .steps()
        .into_iter()
        .filter(|s| s.name.contains("RUN echo same > /f"))
        .collect();
    assert_eq!(same.len(), 1, "the identical RUN ran once:\n{}", p.show());
    assert!(!same[0].cached);
    assert!(
        !p.steps().iter().any(|s| s.name.contains("never-runs")),
        "an unneeded stage ran:\n{}",
        p.show()
    );
    assert!(!p.progress.contains("never-runs"), "{}", p.progress);
    let img = fx.image();
    assert_eq!(img.text("/x"), "same\n");
    assert_eq!(img.text("/y"), "same\n");
    // The failing stage fails when it is the target.
    let err = fails(&mut fx.cmd(&["--target", "broken"]), 1);
    assert!(err.contains("exit 1") || err.contains("exit code"), "{err}");
}

#[test]
fn no_cache_reruns_everything_and_no_cache_filter_only_a_stage_and_dependents() {
    if !root_only("no_cache_reruns_everything_and_no_cache_filter_only_a_stage_and_dependents") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox AS a\n\
         RUN echo a > /a\n\
         RUN echo a2 > /a2\n\
         FROM busybox AS b\n\
         RUN echo b > /b\n\
         FROM busybox\n\
         RUN echo final-first > /ff\n\
         COPY --from=b /b /b\n\
         COPY --from=a /a /a\n\
         RUN cat /a /b > /ab\n",
    );
    let first = fx.build(&[]);
    first.assert_none_cached("first build");
    fx.build(&[]).assert_all_cached("rebuild");

    let p = fx.build(&["--no-cache"]);
    p.assert_none_cached("--no-cache");
    assert_eq!(fx.image().text("/ab"), "a\nb\n");
    // What --no-cache ran is cached for the next build (as in BuildKit).
    let p = fx.build(&[]);
    p.assert_all_cached("after --no-cache");

    let p = fx.build(&["--no-cache-filter", "a"]);
    assert!(!p.cached("RUN echo a > /a"), "{}", p.show());
    assert!(!p.cached("RUN echo a2"), "{}", p.show());
    assert!(
        p.cached("RUN echo b > /b"),
        "stage b stays cached:\n{}",
        p.show()
    );
    assert!(p.cached("RUN echo final-first"), "{}", p.show());
    assert!(p.cached("COPY --from=b"), "{}", p.show());
    assert!(!p.cached("COPY --from=a"), "depends on a:\n{}", p.show());
    assert!(!p.cached("RUN cat /a /b"), "depends on a:\n{}", p.show());
    assert_eq!(fx.image().text("/ab"), "a\nb\n");

    // Two stages at once, comma-separated.
    let p = fx.build(&["--no-cache-filter", "a,b"]);
    assert!(!p.cached("RUN echo a > /a"), "{}", p.show());
    assert!(!p.cached("RUN echo b > /b"), "{}", p.show());
    assert!(p.cached("RUN echo final-first"), "{}", p.show());
    assert!(!p.cached("COPY --from=b"), "{}", p.show());
    verify_store(&fx.root);
}

// ---------------------------------------------------------------------------
// 8: damaged or missing blobs
// ---------------------------------------------------------------------------

/// How a test damages a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Damage {
    Delete,
    /// Same size, other bytes.
    Overwrite,
    /// Cut in half.
    Truncate,
}

/// Builds twice, damages the layer blob of the step named like `needle`,
/// and checks the next build runs that step again and makes a right image.
fn damaged_blob_case(needle: &str, damage: Damage) {
    let fx = Fx::new();
    write_file(&fx.ctx.join("f"), "from the context\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN echo first > /first\n\
         RUN echo target-content > /target && mkdir -p /d && echo in-d > /d/x\n\
         COPY f /f\n\
         RUN cat /target /f > /both\n",
    );
    let first = fx.build(&[]);
    first.assert_none_cached("first build");
    // Hits survive a restart of the process (every build is a new one).
    let second = fx.build(&[]);
    second.assert_all_cached("second build");

    let target = second.step(needle);
    let layer = target.layer.clone().expect("the step added a layer");
    let blob = Layout::new(&fx.root).blob_path(&layer);
    assert!(blob.exists(), "{}", blob.display());
    let original = std::fs::read(&blob).unwrap();
    match damage {
        Damage::Delete => std::fs::remove_file(&blob).unwrap(),
        Damage::Overwrite => {
            let mut junk = pattern_bytes(original.len(), 42);
            if junk == original {
                junk[0] ^= 0xff;
            }
            std::fs::write(&blob, junk).unwrap();
        }
        Damage::Truncate => std::fs::write(&blob, &original[..original.len() / 2]).unwrap(),
    }

    let p = fx.build(&[]);
    assert!(p.cached("RUN echo first"), "{}", p.show());
    assert!(
        !p.cached(needle),
        "the entry whose blob is damaged ({damage:?}) must be a miss:\n{}",
        p.show()
    );
    let img = fx.image(); // verifies every layer blob and diffID
    assert_eq!(img.text("/first"), "first\n");
    assert_eq!(img.text("/target"), "target-content\n");
    assert_eq!(img.text("/d/x"), "in-d\n");
    assert_eq!(img.text("/f"), "from the context\n");
    assert_eq!(img.text("/both"), "target-content\nfrom the context\n");
    verify_store(&fx.root);
    if blob.exists() {
        assert_eq!(
            format!("sha256:{}", sha256_file(&blob)),
            layer,
            "the damaged blob was left in place"
        );
    }
    // And then it is cached again.
    let p = fx.build(&[]);
    p.assert_all_cached("after the repair");
    verify_store(&fx.root);
    ok(&mut fx.rbuild(&["du"]));
}

#[test]
fn a_deleted_layer_blob_is_a_cache_miss() {
    if !root_only("a_deleted_layer_blob_is_a_cache_miss") {
        return;
    }
    damaged_blob_case("RUN echo target-content", Damage::Delete);
}

#[test]
fn a_damaged_layer_blob_is_a_cache_miss() {
    if !root_only("a_damaged_layer_blob_is_a_cache_miss") {
        return;
    }
    damaged_blob_case("RUN echo target-content", Damage::Overwrite);
}

#[test]
fn a_damaged_copy_layer_blob_is_a_cache_miss() {
    if !root_only("a_damaged_copy_layer_blob_is_a_cache_miss") {
        return;
    }
    damaged_blob_case("COPY f /f", Damage::Overwrite);
}

#[test]
fn a_truncated_copy_layer_blob_is_a_cache_miss() {
    if !root_only("a_truncated_copy_layer_blob_is_a_cache_miss") {
        return;
    }
    damaged_blob_case("COPY f /f", Damage::Truncate);
}

// ---------------------------------------------------------------------------
// 9–10: concurrent builds, SIGKILL
// ---------------------------------------------------------------------------

#[test]
fn two_processes_build_on_one_store_at_once() {
    if !root_only("two_processes_build_on_one_store_at_once") {
        return;
    }
    let fx = Fx::new();
    let shared = "FROM busybox\n\
                  RUN echo shared > /shared\n\
                  RUN sleep 1 && echo shared2 > /shared2\n";
    let mut ctxs = Vec::new();
    for (i, tail) in [
        "COPY own /own\nRUN sleep 1 && cat /own > /seen\nRUN echo one > /which\n",
        "COPY own /own\nRUN sleep 1 && cat /own /own > /seen\nRUN echo two > /which\n",
    ]
    .iter()
    .enumerate()
    {
        let ctx = fx.dir.join(format!("ctx{i}"));
        write_file(&ctx.join("own"), format!("own {i}\n"));
        write_file(&ctx.join("Dockerfile"), format!("{shared}{tail}"));
        ctxs.push(ctx);
    }
    let spawn = |i: usize| -> Child {
        spawn_cmd(&fx.root)
            .args(["build", "--progress=plain"])
            .arg(busybox_flag())
            .args(["-t", &format!("img{i}:latest")])
            .arg("--metadata-file")
            .arg(fx.dir.join(format!("meta{i}.json")))
            .arg(&ctxs[i])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rbuild")
    };
    let c0 = spawn(0);
    let c1 = spawn(1);
    let (ok0, err0) = finish(c0);
    let (ok1, err1) = finish(c1);
    assert!(ok0, "build 0 failed:\n{err0}");
    assert!(ok1, "build 1 failed:\n{err1}");
    for i in 0..2 {
        let img = StoredImage::load(&fx.root, &format!("img{i}:latest"));
        assert_eq!(img.text("/shared"), "shared\n");
        assert_eq!(img.text("/shared2"), "shared2\n");
        assert_eq!(img.text("/own"), format!("own {i}\n"));
        let seen = if i == 0 {
            "own 0\n".to_string()
        } else {
            "own 1\nown 1\n".to_string()
        };
        assert_eq!(img.text("/seen"), seen);
        assert_eq!(img.text("/which"), ["one\n", "two\n"][i]);
    }
    verify_store(&fx.root);
    // A third build of each is fully cached.
    for (i, ctx) in ctxs.iter().enumerate() {
        let meta = fx.dir.join(format!("meta{i}.json"));
        let out = ok(build(&fx.root)
            .arg(busybox_flag())
            .args(["-t", &format!("img{i}:latest")])
            .arg("--metadata-file")
            .arg(&meta)
            .arg(ctx));
        let b = Built {
            meta: read_json(&meta),
            progress: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        b.assert_all_cached(&format!("third build of image {i}"));
    }
    verify_store(&fx.root);
}

const KILL_DOCKERFILE: &str = "FROM busybox\n\
     RUN echo quick > /quick\n\
     COPY big /big\n\
     RUN sleep 0.5 && echo slept > /slept\n\
     RUN cat /quick /slept > /both && wc -c < /big > /bigsize\n\
     COPY small /small\n\
     RUN echo last > /last\n";

const BIG: usize = 4 << 20;

fn kill_fixture() -> Fx {
    let fx = Fx::new();
    std::fs::write(fx.ctx.join("big"), pattern_bytes(BIG, 7)).unwrap();
    write_file(&fx.ctx.join("small"), "small\n");
    fx.dockerfile(KILL_DOCKERFILE);
    fx
}

fn spawn_kill_build(fx: &Fx, stderr: Stdio) -> Child {
    spawn_cmd(&fx.root)
        .args(["build", "--progress=plain"])
        .arg(busybox_flag())
        .args(["-t", TAG])
        .arg(&fx.ctx)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn rbuild")
}

/// The image of `KILL_DOCKERFILE` is complete and right, and the store's
/// tagged blobs are intact.
fn check_kill_image(fx: &Fx) {
    let img = fx.image();
    assert_eq!(img.text("/quick"), "quick\n");
    assert_eq!(img.text("/slept"), "slept\n");
    assert_eq!(img.text("/both"), "quick\nslept\n");
    assert_eq!(img.text("/bigsize").trim(), BIG.to_string());
    assert_eq!(img.text("/small"), "small\n");
    assert_eq!(img.text("/last"), "last\n");
    assert_eq!(
        sha256_hex(&img["/big"].data),
        sha256_hex(&pattern_bytes(BIG, 7)),
        "/big content"
    );
    verify_store(&fx.root);
}

#[test]
fn sigkill_at_any_moment_leaves_a_usable_store() {
    if !root_only("sigkill_at_any_moment_leaves_a_usable_store") {
        return;
    }
    let fx = kill_fixture();
    let log = fx.dir.join("killed.log");
    // From before the first step to the tagging (a cold build takes ~2.5 s
    // in a debug build).
    for delay in [60u64, 300, 700, 1000, 1500, 2100] {
        let _ = std::fs::remove_dir_all(&fx.root);
        let file = std::fs::File::create(&log).unwrap();
        let mut child = spawn_kill_build(&fx, Stdio::from(file));
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        let killed = std::fs::read_to_string(&log).unwrap_or_default();
        let p = fx.build(&[]);
        check_kill_image(&fx);
        // Every step the killed build reported DONE is reused.
        for (name, state) in plain_steps(&killed) {
            if state == "DONE"
                && name.starts_with('[')
                && !name.starts_with("[internal]")
                && !name.starts_with("[context ")
            {
                assert!(
                    p.cached(&name),
                    "{name} was DONE before the kill at {delay} ms but is not reused:\n{}\nkilled build:\n{killed}",
                    p.show()
                );
            }
        }
        // Afterwards it is all cached.
        fx.build(&[])
            .assert_all_cached(&format!("after a kill at {delay} ms"));
    }
    ok(&mut fx.rbuild(&["du"]));
    fx.du();
    fx.prune(&["-f"]);
    check_kill_image(&fx);
    // The tagged Dockerfile builds again after the prune.
    fx.build(&[]);
    check_kill_image(&fx);
}

#[test]
fn sigkill_during_a_step_keeps_the_finished_steps() {
    if !root_only("sigkill_during_a_step_keeps_the_finished_steps") {
        return;
    }
    let fx = kill_fixture();
    let mut child = spawn_kill_build(&fx, Stdio::piped());
    // Kill as soon as the sleeping RUN starts: everything before it (a
    // chain: quick RUN, then COPY big) has completed by then.
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut started = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with('#') && line.contains("RUN sleep 0.5") {
            started = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "the sleeping step never started:\n{seen}");
    let p = fx.build(&[]);
    assert!(p.cached("RUN echo quick"), "{}", p.show());
    assert!(p.cached("COPY big /big"), "{}", p.show());
    assert!(!p.cached("RUN sleep 0.5"), "{}", p.show());
    check_kill_image(&fx);
    ok(&mut fx.rbuild(&["du"]));
    fx.prune(&["-f"]);
    check_kill_image(&fx);
}

// ---------------------------------------------------------------------------
// 11–12: du, prune, automatic GC
// ---------------------------------------------------------------------------

#[test]
fn prune_keeps_tagged_images_and_filters_what_it_removes() {
    if !root_only("prune_keeps_tagged_images_and_filters_what_it_removes") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("kept"), "kept\n");
    fx.dockerfile(
        "FROM busybox\n\
         COPY kept /kept\n\
         RUN echo tagged > /tagged\n",
    );
    // Another Dockerfile, built without a tag: only cache.
    let other = fx.dir.join("other");
    write_file(&other.join("junk"), "junk\n");
    write_file(
        &other.join("Dockerfile"),
        "FROM busybox\nCOPY junk /junk\nRUN echo untagged > /untagged && head -c 100000 /dev/zero > /zeros\n",
    );
    let rebuild_all = || {
        fx.build(&[]);
        ok(build(&fx.root).arg(busybox_flag()).arg(&other));
    };
    let check_tagged = || {
        let img = fx.image();
        assert_eq!(img.text("/kept"), "kept\n");
        assert_eq!(img.text("/tagged"), "tagged\n");
        verify_store(&fx.root);
    };
    rebuild_all();
    let du = fx.du();
    let entries = du_entries(&du);
    assert!(entries >= 4, "four steps with layers at least: {du:#}");
    for k in [
        "images",
        "build cache",
        "snapshots",
        "cache mounts",
        "metadata",
        "unreferenced",
    ] {
        du_count(&du, k);
    }
    assert!(du["total"].as_u64().unwrap() > 0, "{du:#}");
    assert!(du["reclaimable"].as_u64().unwrap() <= du["total"].as_u64().unwrap());
    // The human-readable form works too.
    let text = String::from_utf8_lossy(&ok(&mut fx.rbuild(&["du"])).stdout).into_owned();
    assert!(text.contains("build cache"), "{text}");

    // until=1h: every entry is fresh, none goes.
    let out = fx.prune(&["-f", "--filter", "until=1h"]);
    assert!(out.contains("Deleted 0 cache entries"), "{out}");
    assert_eq!(du_entries(&fx.du()), entries);
    // A limit far above the store's size: nothing goes.
    let out = fx.prune(&["-f", "--keep-storage", "100GB"]);
    assert!(out.contains("Deleted 0 cache entries"), "{out}");
    assert_eq!(du_entries(&fx.du()), entries);
    check_tagged();

    // A plain prune removes every cache entry, keeps the tagged image.
    let out = fx.prune(&["-f"]);
    assert!(
        out.contains(&format!("Deleted {entries} cache entries")),
        "{out}"
    );
    assert!(out.contains("Total:\t"), "{out}");
    assert_eq!(du_entries(&fx.du()), 0);
    check_tagged();
    // The tagged Dockerfile builds again (its steps run again).
    let p = fx.build(&[]);
    assert!(!p.cached("RUN echo tagged"), "{}", p.show());
    check_tagged();

    // --keep-storage 1: every entry goes, the tagged image stays.
    rebuild_all();
    assert!(du_entries(&fx.du()) >= 4);
    fx.prune(&["-f", "--keep-storage", "1"]);
    assert_eq!(du_entries(&fx.du()), 0);
    check_tagged();

    // -a also removes snapshots; the tagged image still loads.
    rebuild_all();
    fx.prune(&["-f", "-a"]);
    assert_eq!(du_entries(&fx.du()), 0);
    check_tagged();
    fx.build(&[]);
    check_tagged();

    // Without -f it asks; anything but yes (here: no, or no stdin) prunes nothing.
    for stdin in ["n\n", ""] {
        let out = ok(fx.rbuild(&["prune"]).write_stdin(stdin));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("Deleted"),
            "prune without -f and without a yes must not prune"
        );
    }
    // Bad flags: exit 2, naming the problem.
    let err = fails(&mut fx.rbuild(&["prune", "-f", "--keep-storage", "ten"]), 2);
    assert!(err.contains("ten"), "{err}");
    let err = fails(&mut fx.rbuild(&["prune", "-f", "--filter", "foo=bar"]), 2);
    assert!(err.contains("foo"), "{err}");
    let err = fails(
        &mut fx.rbuild(&["prune", "-f", "--filter", "until=soon"]),
        2,
    );
    assert!(err.contains("soon"), "{err}");
    check_tagged();
}

#[test]
fn automatic_gc_keeps_the_store_under_its_limit_and_can_be_turned_off() {
    if !root_only("automatic_gc_keeps_the_store_under_its_limit_and_can_be_turned_off") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile("FROM busybox\nARG N\nRUN echo \"run $N\" > /n\n");
    // Off: nothing is pruned, entries pile up.
    let p = fx.build_env(
        &["--build-arg", "N=1"],
        &[("RBUILD_GC_KEEP_STORAGE", "off")],
    );
    assert!(
        !p.progress.contains("the store passed its limit"),
        "{}",
        p.progress
    );
    let before = du_entries(&fx.du());
    assert!(before >= 1);
    let p = fx.build_env(
        &["--build-arg", "N=2"],
        &[("RBUILD_GC_KEEP_STORAGE", "off")],
    );
    assert!(
        !p.progress.contains("the store passed its limit"),
        "{}",
        p.progress
    );
    assert!(du_entries(&fx.du()) > before, "off prunes nothing");

    // A limit of 1 byte: a build that writes a new layer collects.
    let p = fx.build_env(&["--build-arg", "N=3"], &[("RBUILD_GC_KEEP_STORAGE", "1")]);
    assert!(
        p.progress
            .lines()
            .any(|l| l.starts_with("the store passed its limit")),
        "no GC line:\n{}",
        p.progress
    );
    let img = fx.image();
    assert_eq!(img.text("/n"), "run 3\n");
    verify_store(&fx.root);
    let after = du_entries(&fx.du());
    assert!(
        after < before + 2,
        "the GC removed entries ({} -> {after})",
        before + 1
    );
    // The tagged result builds again with the GC on.
    fx.build_env(&["--build-arg", "N=3"], &[("RBUILD_GC_KEEP_STORAGE", "1")]);
    assert_eq!(fx.image().text("/n"), "run 3\n");
    verify_store(&fx.root);

    // A build that writes no new layer (all cached) does not collect.
    fx.build_env(
        &["--build-arg", "N=4"],
        &[("RBUILD_GC_KEEP_STORAGE", "off")],
    );
    let entries = du_entries(&fx.du());
    let p = fx.build_env(&["--build-arg", "N=4"], &[("RBUILD_GC_KEEP_STORAGE", "1")]);
    p.assert_all_cached("N=4 again");
    assert!(
        !p.progress.contains("the store passed its limit"),
        "{}",
        p.progress
    );
    assert_eq!(du_entries(&fx.du()), entries);
    // A bad value is refused, naming it.
    let out = run(fx
        .cmd(&["--build-arg", "N=5"])
        .env("RBUILD_GC_KEEP_STORAGE", "lots"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || err.contains("lots"),
        "RBUILD_GC_KEEP_STORAGE=lots was silently ignored:\n{err}"
    );
}

// ---------------------------------------------------------------------------
// More edges: what a COPY of the whole context depends on, a damaged cache
// index, missing snapshots and image blobs, prune during a build
// ---------------------------------------------------------------------------

#[test]
fn copy_of_the_context_depends_on_content_mode_and_names_not_mtimes_or_ignored_files() {
    if !root_only(
        "copy_of_the_context_depends_on_content_mode_and_names_not_mtimes_or_ignored_files",
    ) {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join(".dockerignore"), "ignored*\nDockerfile\n");
    write_file(&fx.ctx.join("kept.txt"), "kept\n");
    write_file(&fx.ctx.join("sub/deep.txt"), "deep\n");
    write_file(&fx.ctx.join("ignored.txt"), "ignored 1\n");
    fx.dockerfile(
        "FROM busybox\n\
         RUN echo pre > /pre\n\
         COPY . /ctx\n\
         RUN ls -lR /ctx | sed 's/  */ /g' | cut -d' ' -f1,9 > /listing\n",
    );
    let first = fx.build(&[]);
    first.assert_none_cached("first build");
    assert!(!fx.image().has("/ctx/ignored.txt"));

    let rerun = |what: &str, want_rerun: bool| {
        let p = fx.build(&[]);
        assert!(p.cached("RUN echo pre"), "{what}:\n{}", p.show());
        assert_eq!(
            !p.cached("COPY . /ctx"),
            want_rerun,
            "{what}: COPY . should {}:\n{}",
            if want_rerun {
                "run again"
            } else {
                "stay cached"
            },
            p.show()
        );
        assert_eq!(!p.cached("RUN ls -lR"), want_rerun, "{what}:\n{}", p.show());
    };
    write_file(&fx.ctx.join("ignored.txt"), "ignored 2, longer\n");
    write_file(&fx.ctx.join("ignored-new"), "new\n");
    rerun("editing and adding ignored files", false);
    set_mtime(&fx.ctx.join("sub/deep.txt"), 1_200_000_000);
    set_mtime(&fx.ctx.join("kept.txt"), 1_200_000_000);
    rerun("changing mtimes only", false);
    chmod(&fx.ctx.join("kept.txt"), 0o755);
    rerun("chmod +x", true);
    assert_eq!(fx.image()["/ctx/kept.txt"].mode & 0o777, 0o755);
    write_file(&fx.ctx.join("sub/new.txt"), "new\n");
    rerun("a new file", true);
    assert_eq!(fx.image().text("/ctx/sub/new.txt"), "new\n");
    // (Each change makes a context that was not seen before: going back
    // to an earlier one is rightly a hit.)
    std::fs::remove_file(fx.ctx.join("sub/deep.txt")).unwrap();
    rerun("a removed file", true);
    assert!(!fx.image().has("/ctx/sub/deep.txt"));
    std::fs::rename(fx.ctx.join("sub/new.txt"), fx.ctx.join("sub/renamed.txt")).unwrap();
    rerun("a renamed file", true);
    assert_eq!(fx.image().text("/ctx/sub/renamed.txt"), "new\n");
    assert!(!fx.image().has("/ctx/sub/new.txt"));
    // Back to an earlier context: a hit, with that context's files.
    std::fs::rename(fx.ctx.join("sub/renamed.txt"), fx.ctx.join("sub/new.txt")).unwrap();
    rerun("back to the context with new.txt", false);
    assert_eq!(fx.image().text("/ctx/sub/new.txt"), "new\n");
    assert!(!fx.image().has("/ctx/sub/renamed.txt"));
    // Same size, same mtime, new content.
    let kept = fx.ctx.join("kept.txt");
    let mtime = std::fs::metadata(&kept).unwrap().modified().unwrap();
    write_file(&kept, "KEPT\n");
    std::fs::File::options()
        .write(true)
        .open(&kept)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    rerun("same size and mtime, new content", true);
    assert_eq!(fx.image().text("/ctx/kept.txt"), "KEPT\n");
    rerun("nothing", false);
}

#[test]
fn a_damaged_cache_index_is_rebuilt() {
    if !root_only("a_damaged_cache_index_is_rebuilt") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile("FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n");
    fx.build(&[]);
    let index = fx.root.join("cache.redb");
    assert!(index.exists(), "no {}", index.display());
    std::fs::write(&index, pattern_bytes(64 << 10, 3)).unwrap();
    let p = fx.build(&[]);
    p.assert_none_cached("with a garbage cache index");
    let img = fx.image();
    assert_eq!(img.text("/one"), "one\n");
    assert_eq!(img.text("/two"), "two\n");
    verify_store(&fx.root);
    fx.build(&[])
        .assert_all_cached("after the index was rebuilt");
    // A truncated (empty) index too.
    std::fs::write(&index, b"").unwrap();
    fx.build(&[]);
    assert_eq!(fx.image().text("/two"), "two\n");
    fx.build(&[]).assert_all_cached("after an empty index");
    ok(&mut fx.rbuild(&["du"]));
}

#[test]
fn missing_snapshots_and_image_blobs_are_recreated() {
    if !root_only("missing_snapshots_and_image_blobs_are_recreated") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("f"), "f\n");
    fx.dockerfile("FROM busybox\nCOPY f /f\nRUN echo one > /one\nRUN cat /f /one > /both\n");
    let first = fx.build(&[]);
    // Every unpacked snapshot gone: the cached steps stay cached, a new
    // RUN on top of them still sees their files.
    std::fs::remove_dir_all(fx.root.join("snapshots")).unwrap();
    fx.dockerfile("FROM busybox\nCOPY f /f\nRUN echo one > /one\nRUN cat /f /one /one > /both\n");
    let p = fx.build(&[]);
    assert!(p.cached("COPY f /f"), "{}", p.show());
    assert!(p.cached("RUN echo one"), "{}", p.show());
    assert!(!p.cached("RUN cat"), "{}", p.show());
    assert_eq!(fx.image().text("/both"), "f\none\none\n");
    verify_store(&fx.root);

    // The tagged image's manifest and config blobs gone: an unchanged
    // rebuild writes them again.
    let cfg = p.config_digest();
    let man = p.meta["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layout = Layout::new(&fx.root);
    std::fs::remove_file(layout.blob_path(&cfg)).unwrap();
    std::fs::remove_file(layout.blob_path(&man)).unwrap();
    let again = fx.build(&[]);
    again.assert_all_cached("after removing the manifest and config");
    assert_eq!(again.config_digest(), cfg);
    verify_store(&fx.root);
    assert_eq!(fx.image().text("/both"), "f\none\none\n");
    drop(first);
}

#[test]
fn prune_waits_for_a_running_build() {
    if !root_only("prune_waits_for_a_running_build") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile("FROM busybox\nRUN echo one > /one\nRUN sleep 1 && echo two > /two\nRUN echo three > /three\n");
    let mut child = spawn_cmd(&fx.root)
        .args(["build", "--progress=plain"])
        .arg(busybox_flag())
        .args(["-t", TAG])
        .arg(&fx.ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbuild");
    let stderr = child.stderr.take().unwrap();
    let mut reader = BufReader::new(stderr);
    let mut seen = String::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.starts_with('#') && line.contains("RUN sleep 1") {
            break;
        }
        line.clear();
    }
    assert!(
        seen.contains("RUN sleep 1"),
        "the build never got to its sleep:\n{seen}"
    );
    // The build is inside its sleeping step: a prune of everything now
    // must wait for it, and must not break what it produces.
    let pruned = ok(&mut fx.rbuild(&["prune", "-f", "-a"]));
    let prune_err = String::from_utf8_lossy(&pruned.stderr).into_owned();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    let status = child.wait().expect("wait");
    assert!(status.success(), "the build failed:\n{seen}{rest}");
    assert!(
        prune_err.contains("waiting for the builds"),
        "prune did not wait for the running build:\n{prune_err}\n{}",
        String::from_utf8_lossy(&pruned.stdout)
    );
    assert!(rest.contains("built sha256:"), "{seen}{rest}");
    let img = fx.image();
    assert_eq!(img.text("/two"), "two\n");
    assert_eq!(img.text("/three"), "three\n");
    verify_store(&fx.root);
}

/// `size` of one kind in `du --format json`.
fn du_size(du: &Value, kind: &str) -> u64 {
    du["kinds"]
        .as_array()
        .expect("du kinds")
        .iter()
        .find(|k| k["kind"] == kind)
        .unwrap_or_else(|| panic!("no kind {kind:?} in {du:#}"))["size"]
        .as_u64()
        .expect("size")
}

#[test]
fn prune_until_and_keep_storage_go_by_last_use() {
    if !root_only("prune_until_and_keep_storage_go_by_last_use") {
        return;
    }
    // Two untagged builds, each with one 16 MB layer of its own; entries'
    // last-use times have a granularity of one second, hence the sleeps.
    let fx = Fx::new();
    const MB16: u64 = 16 << 20;
    let mk = |name: &str| -> PathBuf {
        let ctx = fx.dir.join(name);
        write_file(
            &ctx.join("Dockerfile"),
            format!(
                "FROM busybox\nRUN echo {name} > /name\nRUN head -c {MB16} /dev/urandom > /big\n"
            ),
        );
        ctx
    };
    let (x, y) = (mk("x"), mk("y"));
    let go = |ctx: &Path| -> Built {
        let meta = fx.dir.join("meta-xy.json");
        let out = ok(build(&fx.root)
            .arg(busybox_flag())
            .arg("--metadata-file")
            .arg(&meta)
            .arg(ctx));
        Built {
            meta: read_json(&meta),
            progress: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    };
    go(&x).assert_none_cached("x");
    go(&y).assert_none_cached("y");
    std::thread::sleep(Duration::from_millis(2100));
    go(&x).assert_all_cached("x again");

    // until=2s: y's entries (idle for 2 s) go, x's (just used) stay.
    let out = fx.prune(&["-f", "--filter", "until=2s"]);
    assert!(!out.contains("Deleted 0 cache entries"), "{out}");
    go(&x).assert_all_cached("x after until=2s");
    let p = go(&y);
    assert!(
        !p.cached("RUN head -c"),
        "y's entries were old enough:\n{}",
        p.show()
    );

    // --keep-storage: least recently used first. x is used after y. Each
    // build's cache is mostly its 16 MB layer: 24 MB holds one build's
    // (and the index files), not two.
    std::thread::sleep(Duration::from_millis(1100));
    go(&x).assert_all_cached("x once more");
    assert!(
        du_size(&fx.du(), "build cache") >= 2 * MB16,
        "both 16 MB layers are build cache"
    );
    let limit: u64 = MB16 + MB16 / 2;
    let out = fx.prune(&["-f", "--keep-storage", &limit.to_string()]);
    assert!(!out.contains("Deleted 0 cache entries"), "{out}");
    let after = fx.du()["total"].as_u64().unwrap();
    assert!(
        after <= limit,
        "the store is still over {limit}: {after}\n{out}"
    );
    go(&x).assert_all_cached("x, the recently used, after --keep-storage");
    let p = go(&y);
    assert!(
        !p.cached("RUN head -c"),
        "y was the least recently used:\n{}",
        p.show()
    );
}

#[test]
fn automatic_gc_during_concurrent_builds_breaks_neither() {
    if !root_only("automatic_gc_during_concurrent_builds_breaks_neither") {
        return;
    }
    let fx = Fx::new();
    let ctxs: Vec<PathBuf> = (0..2)
        .map(|i| {
            let ctx = fx.dir.join(format!("gc{i}"));
            write_file(
                &ctx.join("Dockerfile"),
                format!(
                    "FROM busybox\nRUN echo {i} > /i\nRUN sleep 1 && echo slept{i} > /s\nRUN cat /i /s > /is\n"
                ),
            );
            ctx
        })
        .collect();
    let spawn = |i: usize| -> Child {
        spawn_cmd(&fx.root)
            .args(["build", "--progress=plain"])
            .arg(busybox_flag())
            .args(["-t", &format!("gc{i}:latest")])
            .arg(&ctxs[i])
            .env("RBUILD_GC_KEEP_STORAGE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rbuild")
    };
    let c0 = spawn(0);
    std::thread::sleep(Duration::from_millis(300));
    let c1 = spawn(1);
    let (ok0, err0) = finish(c0);
    let (ok1, err1) = finish(c1);
    assert!(ok0, "build 0 failed:\n{err0}");
    assert!(ok1, "build 1 failed:\n{err1}");
    assert!(
        err0.contains("the store passed its limit") || err1.contains("the store passed its limit"),
        "neither build collected:\n{err0}\n{err1}"
    );
    for i in 0..2 {
        let img = StoredImage::load(&fx.root, &format!("gc{i}:latest"));
        assert_eq!(img.text("/is"), format!("{i}\nslept{i}\n"));
    }
    verify_store(&fx.root);
}

/// A full disk is named as such, and the next build (with room) works.
#[test]
fn a_full_disk_says_so() {
    if !root_only("a_full_disk_says_so") {
        return;
    }
    let fx = Fx::new();
    let small = fx.dir.join("small-store");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("note: cannot mount a tmpfs here: skipping a_full_disk_says_so");
        return;
    }
    let ctx = fx.dir.join("full");
    write_file(&ctx.join("Dockerfile"), "FROM scratch\nCOPY big /big\n");
    write_file(&ctx.join("big"), pattern_bytes(8 << 20, 7));
    let out = run(rbuild(&small)
        .arg("--root")
        .arg(&small)
        .args(["build", "--progress=plain"])
        .arg(&ctx));
    let _ = std::process::Command::new("umount").arg(&small).status();
    assert!(
        !out.status.success(),
        "a build into a 4 MiB store succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("No space left on device"),
        "the error must say the disk is full:\n{err}"
    );
}

// ---------------------------------------------------------------------------
// Layers kept as snapshots only (no blob until an image needs one)
// ---------------------------------------------------------------------------

const STAGES: &str = "FROM busybox AS build\n\
     COPY . /src\n\
     RUN echo built > /src/built\n\
     FROM busybox\n\
     COPY --from=build /src /app\n\
     COPY --from=build --chmod=600 /src/a.txt /app/a600.txt\n";

fn stages_fixture() -> Fx {
    let fx = Fx::new();
    write_file(&fx.ctx.join("a.txt"), "alpha\n");
    write_file(&fx.ctx.join("sub/b.txt"), "bravo\n".repeat(3000));
    fx.dockerfile(STAGES);
    fx
}

fn snapshot_file(root: &Path, layer: &str, path: &str) -> PathBuf {
    let hex = layer.strip_prefix("sha256:").expect("sha256 digest");
    root.join("snapshots").join(hex).join("fs").join(path)
}

#[test]
fn a_stage_only_copied_from_writes_no_blob_and_its_layer_gets_one_when_tagged() {
    if !root_only("a_stage_only_copied_from_writes_no_blob_and_its_layer_gets_one_when_tagged") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let fx = stages_fixture();
    let first = fx.build(&[]);
    let copy_ctx = first
        .step("COPY . /src")
        .layer
        .expect("COPY . /src adds a layer");
    let copy_from = first
        .step("COPY --from=build /src /app")
        .layer
        .expect("COPY --from adds a layer");
    let layout = Layout::new(&fx.root);
    // The build stage's COPY layer is in no image: it has a snapshot only.
    assert!(
        !layout.blob_path(&copy_ctx).exists(),
        "the layer of a stage that is only copied from got a blob"
    );
    assert!(snapshot_file(&fx.root, &copy_ctx, "src/a.txt").is_file());
    // The image's layers all have blobs, and read back right.
    verify_store(&fx.root);
    let img = fx.image();
    assert_eq!(img.text("/app/a.txt"), "alpha\n");
    assert_eq!(img.text("/app/sub/b.txt"), "bravo\n".repeat(3000));
    assert_eq!(img.text("/app/built"), "built\n");
    assert_eq!(img.get("/app/a600.txt").unwrap().mode & 0o7777, 0o600);
    assert_eq!(img.text("/app/a600.txt"), "alpha\n");

    // The copied file is the build stage's snapshot file, linked, not a
    // second copy; with --chmod it cannot be, and is not.
    let src = std::fs::metadata(snapshot_file(&fx.root, &copy_ctx, "src/sub/b.txt")).unwrap();
    let dst = std::fs::metadata(snapshot_file(&fx.root, &copy_from, "app/sub/b.txt")).unwrap();
    assert_eq!((src.dev(), src.ino()), (dst.dev(), dst.ino()));
    let chmod_layer = first
        .step("--chmod=600")
        .layer
        .expect("COPY --chmod adds a layer");
    let chmodded =
        std::fs::metadata(snapshot_file(&fx.root, &chmod_layer, "app/a600.txt")).unwrap();
    assert_eq!(chmodded.mode() & 0o7777, 0o600);
    assert_eq!(chmodded.nlink(), 1);

    // Tagging the build stage (every step cached) writes the blob from
    // the snapshot: the digest the cache recorded, content from the context.
    let _ = std::fs::remove_file(fx.meta_path());
    ok(build(&fx.root)
        .arg(busybox_flag())
        .args(["--target", "build", "-t", "build:1", "--metadata-file"])
        .arg(fx.meta_path())
        .arg(&fx.ctx));
    let again = Built {
        meta: read_json(&fx.meta_path()),
        progress: String::new(),
    };
    assert!(again.cached("COPY . /src"), "{}", again.show());
    assert_eq!(
        again.step("COPY . /src").layer.as_deref(),
        Some(copy_ctx.as_str())
    );
    assert!(layout.blob_path(&copy_ctx).is_file());
    verify_store(&fx.root);
    let stage = StoredImage::load(&fx.root, "build:1");
    assert!(stage.digests.contains(&copy_ctx));
    assert_eq!(stage.text("/src/a.txt"), "alpha\n");
    assert_eq!(stage.text("/src/built"), "built\n");
}

#[test]
fn a_changed_snapshot_of_a_blobless_layer_is_rebuilt_never_exported() {
    if !root_only("a_changed_snapshot_of_a_blobless_layer_is_rebuilt_never_exported") {
        return;
    }
    let fx = stages_fixture();
    let first = fx.build(&[]);
    let copy_ctx = first.step("COPY . /src").layer.expect("a layer");
    let victim = snapshot_file(&fx.root, &copy_ctx, "src/a.txt");
    std::fs::write(&victim, "ALPHA\n").unwrap();

    // Tagging the build stage needs the layer's blob: the changed
    // snapshot cannot give it, so it is dropped and the step rebuilt from
    // the context, in the same build.
    let out = ok(build(&fx.root)
        .arg(busybox_flag())
        .args(["--target", "build", "-t", "build:1", "--metadata-file"])
        .arg(fx.meta_path())
        .arg(&fx.ctx));
    let again = Built {
        meta: read_json(&fx.meta_path()),
        progress: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        again.progress.contains("a cached layer was damaged"),
        "{}",
        again.progress
    );
    assert!(!again.cached("COPY . /src"), "{}", again.show());
    verify_store(&fx.root);
    let stage = StoredImage::load(&fx.root, "build:1");
    assert_eq!(stage.text("/src/a.txt"), "alpha\n");
}

#[test]
fn an_edit_rebuild_links_the_unchanged_files_of_its_copy_from_the_last_snapshot() {
    if !root_only("an_edit_rebuild_links_the_unchanged_files_of_its_copy_from_the_last_snapshot") {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let fx = stages_fixture();
    write_file(&fx.ctx.join("c.txt"), "charlie\n");
    // A source's origin is trusted once its last change is over two
    // seconds old (a change within the same timestamp tick is then ruled
    // out, even on filesystems with 2 s timestamps).
    std::thread::sleep(Duration::from_millis(2100));
    let first = fx.build(&[]);
    let before = first.step("COPY . /src").layer.expect("a layer");

    write_file(&fx.ctx.join("a.txt"), "ALPHA, edited\n");
    let second = fx.build(&[]);
    assert!(!second.cached("COPY . /src"), "{}", second.show());
    let after = second.step("COPY . /src").layer.expect("a layer");
    assert_ne!(before, after);
    let ino = |layer: &str, p: &str| {
        std::fs::metadata(snapshot_file(&fx.root, layer, p))
            .unwrap()
            .ino()
    };
    // Unchanged sources: the same file as last time's copy.
    assert_eq!(ino(&before, "src/sub/b.txt"), ino(&after, "src/sub/b.txt"));
    assert_eq!(ino(&before, "src/c.txt"), ino(&after, "src/c.txt"));
    // The edited one: a new file with the new content.
    assert_ne!(ino(&before, "src/a.txt"), ino(&after, "src/a.txt"));
    verify_store(&fx.root);
    let img = fx.image();
    assert_eq!(img.text("/app/a.txt"), "ALPHA, edited\n");
    assert_eq!(img.text("/app/c.txt"), "charlie\n");
    assert_eq!(img.text("/app/sub/b.txt"), "bravo\n".repeat(3000));

    // A source replaced by another file with the same size and mtime is
    // copied, not linked (its ctime and inode differ).
    let c = fx.ctx.join("c.txt");
    let md = std::fs::metadata(&c).unwrap();
    std::fs::remove_file(&c).unwrap();
    write_file(&c, "CHARLIE\n");
    let t = std::time::UNIX_EPOCH + Duration::from_secs(md.mtime() as u64);
    std::fs::File::options()
        .write(true)
        .open(&c)
        .unwrap()
        .set_modified(t)
        .unwrap();
    let third = fx.build(&[]);
    let last = third.step("COPY . /src").layer.expect("a layer");
    assert_ne!(ino(&after, "src/c.txt"), ino(&last, "src/c.txt"));
    assert_eq!(fx.image().text("/app/c.txt"), "CHARLIE\n");
    verify_store(&fx.root);
}

#[test]
fn a_context_file_named_like_a_whiteout_builds_and_rebuilds() {
    if !root_only("a_context_file_named_like_a_whiteout_builds_and_rebuilds") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("app/.wh.notes"), "kept as a file\n");
    write_file(&fx.ctx.join("app/main"), "main\n");
    fx.dockerfile(
        "FROM busybox AS build\nCOPY app/ /app/\nRUN cat /app/main > /listing\n\
         FROM busybox\nCOPY --from=build /listing /listing\nCOPY app/ /copy/\n",
    );
    fx.build(&[]);
    let img = fx.image();
    // In the layer as in the context (a name, not a whiteout, as BuildKit
    // writes it); the overlay below a RUN reads it as a whiteout.
    assert!(img
        .layers
        .iter()
        .flatten()
        .any(|e| e.path == "copy/.wh.notes"));
    assert!(img.text("/listing").contains("main"));
    verify_store(&fx.root);
    // Tagging the build stage needs that layer's blob: it is there.
    ok(build(&fx.root)
        .arg(busybox_flag())
        .args(["--target", "build", "-t", "build:1"])
        .arg(&fx.ctx));
    verify_store(&fx.root);
    fx.build(&[]).assert_all_cached("rebuild");
}

#[test]
fn a_stage_is_skipped_when_what_copies_from_it_is_cached_and_solved_after_all_when_that_breaks() {
    if !root_only("a_stage_is_skipped_when_what_copies_from_it_is_cached_and_solved_after_all_when_that_breaks") {
        return;
    }
    let fx = Fx::new();
    fx.dockerfile(
        "FROM busybox AS build\n\
         RUN echo compiled > /out\n\
         FROM busybox\n\
         COPY --from=build /out /app/out\n\
         RUN cat /app/out > /app/seen\n",
    );
    let first = fx.build(&[]);
    first.assert_none_cached("first build");
    let run_layer = first.step("RUN echo compiled").layer.expect("a layer");
    let copy_layer = first.step("COPY --from=build").layer.expect("a layer");
    let layout = Layout::new(&fx.root);

    // The build stage's result is gone, the image's steps are cached: the
    // build stage is not run at all (as BuildKit: the step that copies
    // from it is found first).
    std::fs::remove_file(layout.blob_path(&run_layer)).unwrap();
    let second = fx.build(&[]);
    assert!(
        !second
            .steps()
            .iter()
            .any(|s| s.name.contains("RUN echo compiled")),
        "{}",
        second.show()
    );
    second.assert_all_cached("the final stage");
    assert_eq!(fx.image().text("/app/seen"), "compiled\n");

    // Now the copy's blob is damaged as well: the plan expected it from
    // the cache, the lookup refuses it, and the build stage is solved
    // after all, in the same build.
    let blob = layout.blob_path(&copy_layer);
    let len = std::fs::metadata(&blob).unwrap().len() as usize;
    std::fs::write(&blob, pattern_bytes(len, 7)).unwrap();
    let third = fx.build(&[]);
    assert!(!third.cached("RUN echo compiled"), "{}", third.show());
    assert!(!third.cached("COPY --from=build"), "{}", third.show());
    assert_eq!(fx.image().text("/app/seen"), "compiled\n");
    verify_store(&fx.root);
}
