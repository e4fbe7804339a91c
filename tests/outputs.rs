//! Every output rbuild writes, checked by a real tool: the store and the
//! OCI/docker archives by `skopeo inspect`/`skopeo copy` and `umoci unpack`,
//! layers by our own reader (digests, diffIDs, compression), plus
//! `--iidfile`, `--metadata-file`, a context tar on stdin, reproducibility
//! with SOURCE_DATE_EPOCH and building FROM an image of the store.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::Value;

const DOCKERFILE: &str = r#"FROM scratch AS base
COPY --chown=1000:1000 files/ /srv/
COPY <<EOF /etc/motd
hello
EOF

FROM base
WORKDIR /app
COPY --chmod=755 run.sh .
COPY links/ /links/
ENV A=1
LABEL l=v
EXPOSE 8080
USER 1000
ENTRYPOINT ["/app/run.sh"]
CMD ["--x"]
"#;

/// A context with files, a subdirectory, a big compressible file and a
/// symlink; returns its directory.
fn rich_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    write_file(&ctx.join("Dockerfile"), DOCKERFILE);
    write_file(&ctx.join("files/a.txt"), "a\n");
    write_file(&ctx.join("files/sub/b.txt"), "b\n");
    let mut big = Vec::new();
    for i in 0..40_000u32 {
        big.extend_from_slice(format!("line {i} of a compressible file\n").as_bytes());
    }
    big.extend_from_slice(&pattern_bytes(200_000, 3));
    write_file(&ctx.join("files/big.bin"), big);
    write_file(&ctx.join("run.sh"), "#!/bin/sh\necho run\n");
    symlink("../srv/a.txt", &ctx.join("links/rel"));
    ctx
}

fn cmd_json(cmd: &mut assert_cmd::Command) -> Value {
    let out = ok_stdout(cmd);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn all_tools() -> bool {
    need("skopeo", "this output test") && need("umoci", "this output test")
}

/// Extracts an OCI archive into a layout directory and returns it with the
/// ref.name of its only image.
fn extract_layout(archive: &Path, dest: &Path) -> (Layout, String) {
    untar(archive, dest);
    let layout = Layout::new(dest);
    let desc = layout.descriptor(None);
    let name = desc["annotations"][REF_NAME]
        .as_str()
        .expect("the archive's image has a ref.name")
        .to_string();
    (layout, name)
}

const SAME: Compare = Compare {
    modes: true,
    owners: true,
    file_mtimes: true,
};

fn same_on_disk() -> Compare {
    Compare {
        modes: true,
        owners: is_root(),
        file_mtimes: true,
    }
}

fn assert_no_diff(diffs: Vec<String>) {
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
}

#[test]
fn store_is_an_oci_layout_skopeo_reads_and_copies() {
    if !all_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let store = tmp.path().join("store");
    let iid = tmp.path().join("iid");
    let meta = tmp.path().join("meta.json");
    ok(build(&store)
        .args(["-t", "out:1", "--iidfile"])
        .arg(&iid)
        .arg("--metadata-file")
        .arg(&meta)
        .arg(&ctx));

    let layout = Layout::new(&store);
    let (mdigest, manifest) = layout.manifest(Some("out:1"));
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = layout.config(Some("out:1"));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"], "application/vnd.oci.image.layer.v1.tar",
            "the store keeps layers uncompressed"
        );
    }

    // --iidfile is the config digest, --metadata-file describes the image.
    assert_eq!(std::fs::read_to_string(&iid).unwrap().trim(), config_digest);
    let m = read_json(&meta);
    assert_eq!(m["containerimage.config.digest"], config_digest);
    assert_eq!(m["containerimage.digest"], mdigest.as_str());
    assert_eq!(m["image.name"], "docker.io/library/out:1");
    assert_eq!(m["containerimage.descriptor"]["digest"], mdigest.as_str());

    // skopeo inspect agrees with what we read ourselves.
    let reference = format!("oci:{}:out:1", store.display());
    let info = cmd_json(tool("skopeo").args(["inspect", &reference]));
    assert_eq!(info["Digest"], mdigest.as_str());
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let seen: Vec<&str> = info["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(seen, layers);
    assert_eq!(info["Labels"]["l"], "v");
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    assert!(info["Env"].as_array().unwrap().iter().any(|e| e == "A=1"));
    let skopeo_config = cmd_json(tool("skopeo").args(["inspect", "--config", &reference]));
    assert_eq!(skopeo_config, config);
    assert_eq!(config["config"]["User"], "1000");
    assert_eq!(config["config"]["WorkingDir"], "/app");
    assert_eq!(
        config["config"]["ExposedPorts"]["8080/tcp"],
        serde_json::json!({})
    );

    // skopeo copy to a dir: and to another OCI layout; both verify digests.
    let dir = tmp.path().join("copy-dir");
    ok(tool("skopeo")
        .args(["copy", "--quiet", &reference])
        .arg(format!("dir:{}", dir.display())));
    let copied: Value = read_json(&dir.join("manifest.json"));
    assert_eq!(copied["config"]["digest"], config_digest);
    for l in copied["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let data = std::fs::read(dir.join(&d[7..])).unwrap();
        assert_eq!(digest_of(&data), d);
    }
    let other = tmp.path().join("copy-oci");
    ok(tool("skopeo")
        .args(["copy", "--quiet", &reference])
        .arg(format!("oci:{}:again", other.display())));
    let image = layout.tree(Some("out:1"));
    assert_no_diff(diff_trees(
        "store",
        &image,
        "skopeo copy",
        &Layout::new(&other).tree(Some("again")),
        SAME,
    ));

    // What the image holds.
    let a = &image["/srv/a.txt"];
    assert_eq!((a.uid, a.gid, a.mode), (1000, 1000, 0o644));
    assert_eq!(image["/app/run.sh"].mode, 0o755);
    assert_eq!(image["/links/rel"].target.as_deref(), Some("../srv/a.txt"));
    assert_eq!(
        image["/etc/motd"].sha256.as_deref(),
        Some(sha256_hex(b"hello\n").as_str())
    );

    // umoci unpacks the store.
    let rootfs = umoci_unpack(&store, "out:1", &tmp.path().join("bundle"));
    assert_no_diff(diff_trees(
        "umoci",
        &dir_tree(&rootfs),
        "store",
        &image,
        same_on_disk(),
    ));
}

#[test]
fn several_tags_name_one_image() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let store = tmp.path().join("store");
    let meta = tmp.path().join("meta.json");
    ok(build(&store)
        .args([
            "-t",
            "multi:1",
            "-t",
            "multi:latest",
            "-t",
            "example.com/team/multi:2",
        ])
        .arg("--metadata-file")
        .arg(&meta)
        .arg(&ctx));
    let layout = Layout::new(&store);
    let a = layout.descriptor(Some("multi:1"));
    let b = layout.descriptor(Some("multi:latest"));
    let c = layout.descriptor(Some("example.com/team/multi:2"));
    assert_eq!(a["digest"], b["digest"]);
    assert_eq!(a["digest"], c["digest"]);
    let names = read_json(&meta)["image.name"].as_str().unwrap().to_string();
    for n in [
        "docker.io/library/multi:1",
        "docker.io/library/multi:latest",
        "example.com/team/multi:2",
    ] {
        assert!(
            names.split(',').any(|x| x == n),
            "{n} missing from image.name {names}"
        );
    }
    let listing = ok_stdout(rbuild(&store).arg("images"));
    assert!(listing.contains("multi"), "{listing}");
    // Rebuilding with the same tag moves it, never duplicates it.
    ok(build(&store).args(["-t", "multi:1"]).arg(&ctx));
    let index = layout.index();
    let tagged = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["annotations"][REF_NAME] == "multi:1")
        .count();
    assert_eq!(tagged, 1, "{index:#}");
}

#[test]
fn oci_archive_is_read_by_skopeo_and_unpacked_by_umoci() {
    if !all_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let store = tmp.path().join("store");
    let archive = tmp.path().join("image.tar");
    let meta = tmp.path().join("meta.json");
    let iid = tmp.path().join("iid");
    ok(build(&store)
        .args(["-t", "out:1", "-o"])
        .arg(format!("type=oci,dest={}", archive.display()))
        .arg("--metadata-file")
        .arg(&meta)
        .arg("--iidfile")
        .arg(&iid)
        .arg(&ctx));

    let (layout, name) = extract_layout(&archive, &tmp.path().join("layout"));
    let (mdigest, manifest) = layout.manifest(None);
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip",
            "archives are gzip by default"
        );
    }
    let m = read_json(&meta);
    assert_eq!(m["containerimage.digest"], mdigest.as_str());
    assert_eq!(
        m["containerimage.config.digest"],
        manifest["config"]["digest"]
    );
    assert_eq!(
        std::fs::read_to_string(&iid).unwrap().trim(),
        manifest["config"]["digest"].as_str().unwrap()
    );

    let reference = format!("oci-archive:{}", archive.display());
    let info = cmd_json(tool("skopeo").args(["inspect", &reference]));
    assert_eq!(info["Digest"], mdigest.as_str());
    let config = cmd_json(tool("skopeo").args(["inspect", "--config", &reference]));
    assert_eq!(config, layout.config(None));
    ok(tool("skopeo")
        .args(["copy", "--quiet", &reference])
        .arg(format!("dir:{}", tmp.path().join("dir").display())));

    // Same image as the store (the archive only recompresses the layers).
    let image = layout.tree(None);
    let stored = Layout::new(&store).tree(Some("out:1"));
    assert_no_diff(diff_trees("archive", &image, "store", &stored, SAME));
    assert_eq!(
        layout.config(None),
        Layout::new(&store).config(Some("out:1")),
        "the config (and so the image ID) does not depend on compression"
    );
    let rootfs = umoci_unpack(
        &tmp.path().join("layout"),
        &name,
        &tmp.path().join("bundle"),
    );
    assert_no_diff(diff_trees(
        "umoci",
        &dir_tree(&rootfs),
        "archive",
        &image,
        same_on_disk(),
    ));
}

#[test]
fn oci_archive_ref_name_is_the_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let archive = tmp.path().join("image.tar");
    ok(build(&tmp.path().join("store"))
        .args(["-t", "out:1", "-o"])
        .arg(format!("type=oci,dest={}", archive.display()))
        .arg(&ctx));
    let (layout, name) = extract_layout(&archive, &tmp.path().join("layout"));
    let desc = layout.descriptor(None);
    assert_eq!(
        desc["annotations"]["io.containerd.image.name"],
        "docker.io/library/out:1"
    );
    assert_eq!(name, "1");
}

#[test]
fn docker_archive_is_read_by_skopeo() {
    if !all_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let store = tmp.path().join("store");
    let archive = tmp.path().join("docker.tar");
    ok(build(&store)
        .args(["-t", "out:1", "-o"])
        .arg(format!("type=docker,dest={}", archive.display()))
        .arg(&ctx));

    let members = tar_members(&std::fs::read(&archive).unwrap());
    let manifest_json: Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    let entry = &manifest_json[0];
    let config_path = entry["Config"].as_str().unwrap();
    let config_bytes = &members[config_path];
    let stored = Layout::new(&store);
    let stored_config_digest = stored.manifest(Some("out:1")).1["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(digest_of(config_bytes), stored_config_digest);
    let tags: Vec<&str> = entry["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.iter().any(|t| t.ends_with("out:1")),
        "RepoTags {tags:?}"
    );
    for l in entry["Layers"].as_array().unwrap() {
        let data = &members[l.as_str().unwrap()];
        assert!(data.starts_with(&[0x1f, 0x8b]), "docker layers are gzip");
    }
    // The index.json beside manifest.json points at a Docker manifest.
    let index: Value = serde_json::from_slice(&members["index.json"]).unwrap();
    let mdesc = &index["manifests"][0];
    assert_eq!(
        mdesc["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let mblob = &members[&format!("blobs/sha256/{}", &mdesc["digest"].as_str().unwrap()[7..])];
    let m: Value = serde_json::from_slice(mblob).unwrap();
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }

    let reference = format!("docker-archive:{}", archive.display());
    let info = cmd_json(tool("skopeo").args(["inspect", &reference]));
    assert_eq!(info["Labels"]["l"], "v");
    assert_eq!(
        info["Layers"].as_array().unwrap().len(),
        entry["Layers"].as_array().unwrap().len()
    );
    let config = cmd_json(tool("skopeo").args(["inspect", "--config", &reference]));
    assert_eq!(config, stored.config(Some("out:1")));

    // Converted to OCI by skopeo and unpacked by umoci: the same files.
    let conv = tmp.path().join("conv");
    ok(tool("skopeo")
        .args(["copy", "--quiet", &reference])
        .arg(format!("oci:{}:conv", conv.display())));
    let image = stored.tree(Some("out:1"));
    assert_no_diff(diff_trees(
        "docker archive",
        &Layout::new(&conv).tree(Some("conv")),
        "store",
        &image,
        SAME,
    ));
    let rootfs = umoci_unpack(&conv, "conv", &tmp.path().join("bundle"));
    assert_no_diff(diff_trees(
        "umoci",
        &dir_tree(&rootfs),
        "store",
        &image,
        same_on_disk(),
    ));
}

#[test]
fn docker_archive_repo_tags_are_familiar() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let archive = tmp.path().join("docker.tar");
    ok(build(&tmp.path().join("store"))
        .args(["-t", "out:1", "-t", "example.com/x/y:2", "-o"])
        .arg(format!("type=docker,dest={}", archive.display()))
        .arg(&ctx));
    let members = tar_members(&std::fs::read(&archive).unwrap());
    let manifest_json: Value = serde_json::from_slice(&members["manifest.json"]).unwrap();
    assert_eq!(
        manifest_json[0]["RepoTags"],
        serde_json::json!(["out:1", "example.com/x/y:2"])
    );
}

#[test]
fn every_compression_gives_the_same_image_id() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let store = tmp.path().join("store");
    let cases: &[(&str, &str, &[u8])] = &[
        (
            "compression=gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &[0x1f, 0x8b],
        ),
        (
            "compression=gzip,compression-level=9",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &[0x1f, 0x8b],
        ),
        (
            "compression=zstd",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            &[0x28, 0xb5, 0x2f, 0xfd],
        ),
        (
            "compression=zstd,compression-level=19",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            &[0x28, 0xb5, 0x2f, 0xfd],
        ),
        (
            "compression=uncompressed",
            "application/vnd.oci.image.layer.v1.tar",
            b"",
        ),
    ];
    let mut configs = Vec::new();
    let mut sizes = Vec::new();
    let mut trees = Vec::new();
    for (i, (opt, media, magic)) in cases.iter().enumerate() {
        if opt.contains("zstd") && !need("zstd", "decompressing zstd layers") {
            continue;
        }
        let archive = tmp.path().join(format!("img-{i}.tar"));
        let iid = tmp.path().join(format!("iid-{i}"));
        // A fixed epoch, so that rebuilding in another second gives the
        // same config: only the compression varies.
        ok(build(&store)
            .env("SOURCE_DATE_EPOCH", "1600000000")
            .args(["-t", "comp:1", "-o"])
            .arg(format!("type=oci,dest={},{opt}", archive.display()))
            .arg("--iidfile")
            .arg(&iid)
            .arg(&ctx));
        let (layout, name) = extract_layout(&archive, &tmp.path().join(format!("layout-{i}")));
        let (_, manifest) = layout.manifest(None);
        let mut total = 0;
        for l in manifest["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], *media, "{opt}");
            let blob = layout.blob(l["digest"].as_str().unwrap());
            assert!(
                blob.starts_with(magic),
                "{opt}: layer does not start with {magic:x?}"
            );
            if magic.is_empty() {
                assert!(tar::Archive::new(blob.as_slice()).entries().is_ok());
            }
            total += blob.len();
        }
        sizes.push((opt.to_string(), total));
        // Layers decompress to their diffIDs (checked by Layout::tree).
        trees.push(layout.tree(None));
        let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
        assert_eq!(std::fs::read_to_string(&iid).unwrap().trim(), config_digest);
        configs.push(config_digest);
        if have("skopeo") {
            ok(tool("skopeo")
                .args(["inspect"])
                .arg(format!("oci-archive:{}", archive.display())));
        }
        // umoci 0.4 (Debian 12) refuses +zstd layers: our own reader checks those.
        if have("umoci") && !opt.contains("zstd") {
            let rootfs = umoci_unpack(
                &tmp.path().join(format!("layout-{i}")),
                &name,
                &tmp.path().join(format!("bundle-{i}")),
            );
            assert_no_diff(diff_trees(
                "umoci",
                &dir_tree(&rootfs),
                opt,
                trees.last().unwrap(),
                same_on_disk(),
            ));
        }
    }
    assert!(configs.windows(2).all(|w| w[0] == w[1]), "{configs:?}");
    for t in &trees[1..] {
        assert_no_diff(diff_trees("first", &trees[0], "other", t, SAME));
    }
    let raw = sizes
        .iter()
        .find(|(o, _)| o.contains("uncompressed"))
        .unwrap()
        .1;
    for (o, s) in &sizes {
        if !o.contains("uncompressed") {
            assert!(
                *s < raw,
                "{o}: {s} bytes is not smaller than {raw} uncompressed"
            );
        }
    }
}

#[test]
fn tar_and_local_outputs_hold_the_final_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let store = tmp.path().join("store");
    let fs_tar = tmp.path().join("fs.tar");
    let local = tmp.path().join("local");
    ok(build(&store)
        .args(["-t", "fs:1", "-o"])
        .arg(format!("type=tar,dest={}", fs_tar.display()))
        .arg(&ctx));
    ok(build(&store)
        .arg("-o")
        .arg(format!("type=local,dest={}", local.display()))
        .arg(&ctx));
    let image = Layout::new(&store).tree(Some("fs:1"));
    let mut from_tar = Tree::new();
    apply_layer(&mut from_tar, &std::fs::read(&fs_tar).unwrap()).unwrap();
    assert_no_diff(diff_trees("tar output", &from_tar, "image", &image, SAME));
    assert_no_diff(diff_trees(
        "local output",
        &dir_tree(&local),
        "image",
        &image,
        same_on_disk(),
    ));
    // A bare path is type=local.
    let bare = tmp.path().join("bare");
    ok(build(&store).arg("-o").arg(&bare).arg(&ctx));
    assert_no_diff(diff_trees(
        "bare -o",
        &dir_tree(&bare),
        "image",
        &image,
        same_on_disk(),
    ));
}

#[test]
fn context_tar_on_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let ctx_tar = tmp.path().join("ctx.tar");
    {
        let f = std::fs::File::create(&ctx_tar).unwrap();
        let mut b = tar::Builder::new(f);
        b.follow_symlinks(false);
        b.append_dir_all(".", &ctx).unwrap();
        b.finish().unwrap();
    }
    let store = tmp.path().join("store");
    ok(build(&store)
        .args(["-t", "stdin:1", "-"])
        .write_stdin(std::fs::read(&ctx_tar).unwrap()));
    let from_stdin = Layout::new(&store).tree(Some("stdin:1"));
    ok(build(&store).args(["-t", "dir:1"]).arg(&ctx));
    let from_dir = Layout::new(&store).tree(Some("dir:1"));
    // File mtimes come from the tar headers, which keep the seconds only.
    assert_no_diff(diff_trees(
        "context on stdin",
        &from_stdin,
        "context dir",
        &from_dir,
        SAME,
    ));
    assert_eq!(
        from_stdin["/links/rel"].target.as_deref(),
        Some("../srv/a.txt")
    );
    assert_eq!(from_stdin["/srv/sub/b.txt"].uid, 1000);

    // A compressed context tar works too.
    if need("gzip", "the gzip context") {
        let gz = tool("gzip")
            .args(["-c"])
            .arg(&ctx_tar)
            .output()
            .unwrap()
            .stdout;
        ok(build(&store).args(["-t", "gz:1", "-"]).write_stdin(gz));
        assert_no_diff(diff_trees(
            "gzip context",
            &Layout::new(&store).tree(Some("gz:1")),
            "context dir",
            &from_dir,
            SAME,
        ));
    }
}

fn touch_all(dir: &Path, secs: u64) {
    for (p, n) in dir_tree(dir) {
        if n.kind != Kind::Symlink {
            set_mtime(&dir.join(&p[1..]), secs);
        }
    }
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let epoch = "1700000000";
    let build_in = |store: &str, archive: &str| -> (String, String, Vec<u8>) {
        let store = tmp.path().join(store);
        let archive = tmp.path().join(archive);
        ok(build(&store)
            .env("SOURCE_DATE_EPOCH", epoch)
            .args(["-t", "repro:1", "-o"])
            .arg(format!("type=oci,dest={}", archive.display()))
            .arg(&ctx));
        let (digest, manifest) = Layout::new(&store).manifest(Some("repro:1"));
        (
            digest,
            manifest["config"]["digest"].as_str().unwrap().to_string(),
            std::fs::read(&archive).unwrap(),
        )
    };
    let (d1, c1, a1) = build_in("store-1", "a1.tar");
    let (d2, c2, a2) = build_in("store-2", "a2.tar");
    assert_eq!(c1, c2, "config digests differ between two fresh stores");
    assert_eq!(d1, d2, "manifest digests differ between two fresh stores");
    assert!(a1 == a2, "the OCI archives differ between two fresh stores");

    let config = Layout::new(tmp.path().join("store-1")).config(Some("repro:1"));
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    for h in config["history"].as_array().unwrap() {
        assert_eq!(h["created"], "2023-11-14T22:13:20Z", "{h}");
    }
    // Files newer than the epoch are clamped to it in the layers.
    let tree = Layout::new(tmp.path().join("store-1")).tree(Some("repro:1"));
    for (p, n) in &tree {
        assert!(
            n.mtime <= 1_700_000_000,
            "{p} has mtime {} after the epoch",
            n.mtime
        );
    }

    // New mtimes on every context file: same image, in a fresh store and in
    // the store that has the old build cached.
    touch_all(&ctx, 1_900_000_000);
    let (d3, c3, _) = build_in("store-3", "a3.tar");
    let (d4, c4, _) = build_in("store-1", "a4.tar");
    assert_eq!(
        (&d3, &c3),
        (&d1, &c1),
        "touching the context changed the image"
    );
    assert_eq!(
        (&d4, &c4),
        (&d1, &c1),
        "touching the context changed the cached image"
    );
}

#[test]
fn from_an_image_tagged_in_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = rich_context(tmp.path());
    let store = tmp.path().join("store");
    ok(build(&store).args(["-t", "base:1"]).arg(&ctx));
    let child = tmp.path().join("child");
    write_file(
        &child.join("Dockerfile"),
        "FROM base:1 AS first\nCOPY new.txt /srv/\n\
         FROM docker.io/library/base:1\nENV CHILD=1\nCOPY new.txt /srv/\n\
         COPY --from=first /srv/new.txt /copied.txt\n",
    );
    write_file(&child.join("new.txt"), "new\n");
    ok(build(&store).args(["-t", "child:1"]).arg(&child));
    let layout = Layout::new(&store);
    let base = layout.tree(Some("base:1"));
    let image = layout.tree(Some("child:1"));
    for (p, n) in &base {
        let mut got = image
            .get(p)
            .unwrap_or_else(|| panic!("{p} is missing from the child image"))
            .clone();
        if p == "/srv" {
            // COPY into /srv/ writes the directory again, stamped with the
            // child build's time (as BuildKit's diff has it): only its
            // mtime may differ, and not to an earlier time.
            assert!(got.mtime >= n.mtime, "/srv: {} < {}", got.mtime, n.mtime);
            got.mtime = n.mtime;
        }
        assert_eq!(&got, n, "{p} differs from the base image");
    }
    assert_eq!(
        image["/srv/new.txt"].sha256.as_deref(),
        Some(sha256_hex(b"new\n").as_str())
    );
    assert_eq!(
        image["/copied.txt"].sha256.as_deref(),
        Some(sha256_hex(b"new\n").as_str())
    );
    let base_config = layout.config(Some("base:1"));
    let config = layout.config(Some("child:1"));
    assert_eq!(
        config["config"]["Entrypoint"],
        base_config["config"]["Entrypoint"]
    );
    assert_eq!(config["config"]["User"], "1000");
    let base_layers = base_config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .clone();
    let layers = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(&layers[..base_layers.len()], base_layers.as_slice());
    assert_eq!(layers.len(), base_layers.len() + 2);
    let history = config["history"].as_array().unwrap();
    assert_eq!(
        &history[..base_config["history"].as_array().unwrap().len()],
        base_config["history"].as_array().unwrap().as_slice()
    );

    // An image that is not there says so.
    write_file(&child.join("Dockerfile"), "FROM nothere:1\n");
    let err = fails(build(&store).arg(&child), 1);
    assert!(err.contains("nothere"), "{err}");
}
