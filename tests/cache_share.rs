//! Build cache between machines: `--cache-to` on one store, `--cache-from`
//! on a fresh one, through Debian's `docker-registry` on a loopback port and
//! through an OCI layout directory. Asserted through `--metadata-file`:
//! which steps were cached (`rbuild.steps`) and which cached layers were
//! downloaded (`rbuild.cache.fetched`). Skipped with a note when not root
//! (RUN needs the rootful sandbox here).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::registry::*;
use common::*;
use serde_json::Value;

const TAG: &str = "img:latest";

const DOCKERFILE: &str = "FROM busybox AS build\n\
     RUN echo built > /built && head -c 200000 /dev/urandom > /big\n\
     FROM busybox\n\
     COPY --from=build /built /built\n\
     RUN cat /built /built > /final\n";

struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ctx: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::Builder::new()
            .prefix("rbuild-cacheshare")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let ctx = dir.join("ctx");
        write_file(&ctx.join("Dockerfile"), DOCKERFILE);
        Fx {
            _tmp: tmp,
            dir,
            ctx,
        }
    }

    /// Builds into store `name` with `args`; returns the metadata.
    fn build(&self, name: &str, args: &[&str]) -> Value {
        let meta = self.dir.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&meta);
        ok(build(&self.dir.join(name))
            .arg(busybox_flag())
            .args(["-t", TAG, "--metadata-file"])
            .arg(&meta)
            .args(args)
            .arg(&self.ctx));
        read_json(&meta)
    }
}

fn steps(meta: &Value) -> Vec<(String, bool, Option<String>)> {
    meta["rbuild.steps"]
        .as_array()
        .expect("rbuild.steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
                s.get("layer").and_then(|l| l.as_str()).map(str::to_string),
            )
        })
        .filter(|(n, _, _)| !n.starts_with("[internal]") && !n.starts_with("[context "))
        .collect()
}

fn cached(meta: &Value, needle: &str) -> bool {
    let found: Vec<_> = steps(meta)
        .into_iter()
        .filter(|(n, _, _)| n.contains(needle))
        .collect();
    assert_eq!(found.len(), 1, "one step like {needle:?} in {meta:#}");
    found[0].1
}

fn present(meta: &Value, needle: &str) -> bool {
    steps(meta).iter().any(|(n, _, _)| n.contains(needle))
}

fn fetched(meta: &Value) -> BTreeSet<String> {
    meta["rbuild.cache.fetched"]
        .as_array()
        .expect("rbuild.cache.fetched")
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// The layers the final stage's own steps added.
fn final_stage_layers(meta: &Value) -> BTreeSet<String> {
    steps(meta)
        .into_iter()
        .filter(|(n, _, _)| n.starts_with("[stage-1 "))
        .filter_map(|(_, _, l)| l)
        .collect()
}

fn check_image(root: &Path) {
    let img = StoredImage::load(root, TAG);
    assert_eq!(img.text("/final"), "built\nbuilt\n");
    assert_eq!(img.text("/built"), "built\n");
    assert!(!img.has("/big"));
}

/// Exports with `to(mode)` from one store, imports with `from(mode)` into
/// fresh ones, for both modes.
fn share(fx: &Fx, to: &dyn Fn(&str) -> String, from: &dyn Fn(&str) -> String) {
    for mode in ["max", "min"] {
        let first = fx.build(&format!("a-{mode}"), &["--cache-to", &to(mode)]);
        assert!(steps(&first).iter().all(|(_, c, _)| !c), "{first:#}");
        let second = fx.build(&format!("b-{mode}"), &["--cache-from", &from(mode)]);
        // The final stage is in either cache: nothing of it runs.
        assert!(cached(&second, "COPY --from=build"), "{mode}: {second:#}");
        assert!(cached(&second, "RUN cat"), "{mode}: {second:#}");
        // The build stage is in the cache only with mode=max; with min it
        // is not run at all: the step that copies from it is cached.
        if mode == "max" {
            assert!(cached(&second, "RUN echo built"), "{second:#}");
        } else {
            assert!(!present(&second, "RUN echo built"), "{second:#}");
        }
        // Only what the image is made of was downloaded: never the build
        // stage's layer, which no step needed.
        assert_eq!(
            fetched(&second),
            final_stage_layers(&second),
            "{mode}: {second:#}"
        );
        check_image(&fx.dir.join(format!("b-{mode}")));
        // And the fetched entries are local now: a rebuild without the
        // cache reuses them, and never runs the build stage.
        let third = fx.build(&format!("b-{mode}"), &[]);
        assert!(
            steps(&third).iter().all(|(_, c, _)| *c),
            "{mode}: {third:#}"
        );
        assert!(cached(&third, "RUN cat"), "{mode}: {third:#}");
        assert!(fetched(&third).is_empty());
    }
}

#[test]
fn a_registry_cache_gives_a_fresh_store_every_step_and_only_the_image_layers() {
    if !root_only("the registry cache test") {
        return;
    }
    if !registry_tools("the registry cache test") {
        return;
    }
    let fx = Fx::new();
    let reg = Registry::start(None);
    let r = |mode: &str| reg.reference(&format!("cache/app:{mode}"));
    share(
        &fx,
        &|mode| format!("type=registry,ref={},mode={mode}", r(mode)),
        &|mode| format!("type=registry,ref={}", r(mode)),
    );
    // The cache is an OCI image manifest whose config is the cache's.
    let out = ok(tool("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}", r("max")),
    ]));
    let manifest: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.rbuild.cache.config.v1+json"
    );
}

#[test]
fn a_local_cache_gives_a_fresh_store_every_step_and_only_the_image_layers() {
    if !root_only("the local cache test") {
        return;
    }
    let fx = Fx::new();
    let dir = |mode: &str| fx.dir.join(format!("cache-{mode}")).display().to_string();
    share(
        &fx,
        &|mode| format!("type=local,dest={},mode={mode}", dir(mode)),
        &|mode| format!("type=local,src={}", dir(mode)),
    );
    // A cache that is not there is a warning, not a failure.
    let meta = fx.build("c", &["--cache-from", "type=local,src=/nonexistent/cache"]);
    assert!(steps(&meta).iter().all(|(_, c, _)| !c));
}

#[test]
fn an_inline_cache_travels_in_the_pushed_image() {
    if !root_only("the inline cache test") {
        return;
    }
    if !registry_tools("the inline cache test") {
        return;
    }
    let fx = Fx::new();
    let reg = Registry::start(None);
    let image = reg.reference("inline/app:1");
    let push = |name: &str| format!("type=registry,name={name}");
    let first = fx.build("a", &["--cache-to", "type=inline", "-o", &push(&image)]);
    assert!(steps(&first).iter().all(|(_, c, _)| !c), "{first:#}");
    let out = ok(tool("skopeo").args([
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]));
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    let records = config["rbuild.cache.v1"]
        .as_array()
        .expect("inline records");
    assert_eq!(records.len(), 2, "the final stage's two steps: {config:#}");

    // A bare reference is a registry cache: the image itself.
    let second = fx.build("b", &["--cache-from", &image]);
    assert!(cached(&second, "COPY --from=build"), "{second:#}");
    assert!(cached(&second, "RUN cat"), "{second:#}");
    // The build stage is not in an inline cache, and is not needed.
    assert!(!present(&second, "RUN echo built"), "{second:#}");
    assert_eq!(fetched(&second), final_stage_layers(&second), "{second:#}");
    check_image(&fx.dir.join("b"));

    // An image without one is a warning, and the build runs.
    let plain = reg.reference("inline/plain:1");
    fx.build("c", &["-o", &push(&plain)]);
    let third = fx.build("d", &["--cache-from", &plain]);
    assert!(steps(&third).iter().all(|(_, c, _)| !c), "{third:#}");
}

#[test]
fn cache_mount_contents_travel_only_when_asked() {
    if !root_only("the cache mount export test") {
        return;
    }
    let fx = Fx::new();
    let dest = fx.dir.join("mounts-cache").display().to_string();
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\n\
         RUN --mount=type=cache,id=shared,target=/c,uid=1000,mode=0750 \
         mkdir -p /c/sub && echo from-the-first-store > /c/sub/file && touch /done\n",
    );
    fx.build(
        "a",
        &[
            "--cache-to",
            &format!("type=local,dest={dest},mode=max,cache-mounts=true"),
        ],
    );
    // Another step using the same cache id, on fresh stores.
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\n\
         RUN --mount=type=cache,id=shared,target=/c \
         (cat /c/sub/file || echo empty) > /seen && stat -c '%u %a' /c > /owner\n",
    );
    fx.build(
        "b",
        &[
            "--cache-from",
            &format!("type=local,src={dest},cache-mounts=true"),
        ],
    );
    let img = StoredImage::load(&fx.dir.join("b"), TAG);
    assert_eq!(img.text("/seen"), "from-the-first-store\n");
    assert_eq!(img.text("/owner"), "1000 750\n");
    // Without the option, the mount starts empty (BuildKit's behaviour).
    fx.build("c", &["--cache-from", &format!("type=local,src={dest}")]);
    assert_eq!(
        StoredImage::load(&fx.dir.join("c"), TAG).text("/seen"),
        "empty\n"
    );

    // Through a registry: exported from store b (which has the mount now).
    if !registry_tools("the cache mount export through a registry") {
        return;
    }
    let reg = Registry::start(None);
    let r = reg.reference("cache/mounts:1");
    fx.build(
        "b",
        &[
            "--cache-to",
            &format!("type=registry,ref={r},cache-mounts=true"),
        ],
    );
    // A step the cache has no entry for: it runs, and sees the mount.
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\n\
         RUN --mount=type=cache,id=shared,target=/c (cat /c/sub/file || echo empty) > /seen\n",
    );
    let meta = fx.build(
        "d",
        &[
            "--cache-from",
            &format!("type=registry,ref={r},cache-mounts=true"),
        ],
    );
    assert!(!cached(&meta, "RUN --mount"), "{meta:#}");
    assert_eq!(
        StoredImage::load(&fx.dir.join("d"), TAG).text("/seen"),
        "from-the-first-store\n"
    );
}

#[test]
fn a_ci_rebuild_with_source_date_epoch_pushes_the_same_digest() {
    if !root_only("the reproducible push test") {
        return;
    }
    if !registry_tools("the reproducible push test") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("app.txt"), "app\n");
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\nCOPY app.txt /app/\nRUN echo built > /built-at && mkdir -p /var/x\n",
    );
    let reg = Registry::start(None);
    let mut pushed = Vec::new();
    for (i, store) in ["one", "two"].iter().enumerate() {
        let meta = fx.dir.join(format!("{store}.json"));
        let name = reg.reference(&format!("repro/app:{i}"));
        ok(build(&fx.dir.join(store))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg(busybox_flag())
            .args([
                "-o",
                &format!("type=registry,name={name}"),
                "--metadata-file",
            ])
            .arg(&meta)
            .arg(&fx.ctx));
        let m = read_json(&meta);
        pushed.push(m["containerimage.digest"].as_str().unwrap().to_string());
        assert_eq!(m["image.name"].as_str(), Some(name.as_str()), "{m:#}");
        // The registry has what the metadata says.
        let out =
            ok(tool("skopeo").args(["inspect", "--tls-verify=false", &format!("docker://{name}")]));
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["Digest"].as_str(), Some(pushed[i].as_str()));
        // Let the wall clock move on between the two builds.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(pushed[0], pushed[1], "two CI runs pushed different digests");
}
