//! Build cache between machines: `--cache-to` writes the cache entries of a
//! build (its steps' keys and layers) as an OCI image manifest, to a
//! registry (`type=registry,ref=…`) or an OCI layout directory
//! (`type=local,dest=…`); `--cache-from` reads one back. The manifest's
//! config (media type [`CONFIG_MEDIA_TYPE`]) lists the entries; its
//! layers are the entries' layer blobs, so registries that only take image
//! manifests (ECR) take it, as BuildKit's `image-manifest=true`. Importing
//! reads the manifest and the config only: a layer is fetched when a step
//! or the image needs its content (see `Solver::ensure_local`).
//!
//! `mode=min` (the default) exports the steps of the stages the image is
//! made of; `mode=max` every step the build ran or reused.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_cache::layer::{self, Compression, LayerDescriptor};
use rbuild_cache::store::{media, Descriptor, Index};
use rbuild_cache::{Digest, Store};
use rbuild_registry::{Registry, Target};
use rbuild_solver::exec::pull;
use rbuild_solver::exec::{ImportedEntry, LayerFetcher, Solved, Solver};
use rbuild_solver::graph::Graph;
use serde::{Deserialize, Serialize};

use crate::export::{compressed_layer, ExportedImage};
use crate::options::CacheSpec;
use crate::remote::{self, Remote};
use crate::Failure;

/// The config media type of an rbuild cache manifest.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.rbuild.cache.config.v1+json";
/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.rbuild.cache.v1";

/// The config of a cache manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheConfig {
    /// Format version.
    version: u32,
    records: Vec<Record>,
    /// `RUN --mount=type=cache` contents, with `cache-mounts=true`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<MountRecord>,
}

/// The contents of one cache mount: a layer of its directory's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MountRecord {
    id: String,
    layer: LayerDescriptor,
    /// Mode, owner and group of the directory itself.
    mode: u32,
    uid: u32,
    gid: u32,
}

/// One cache entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer: Option<LayerDescriptor>,
    created: i64,
    #[serde(default)]
    description: String,
}

/// An OCI image manifest with an artifact type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CacheManifest {
    schema_version: u32,
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn failed(e: impl std::fmt::Display) -> Failure {
    Failure::failed(e.to_string())
}

/// Where a cache lives (and where its layers are fetched from).
#[derive(Debug, Clone)]
enum Location {
    Registry(Target),
    Local(PathBuf),
}

fn location(spec: &CacheSpec, dir_attr: &str) -> Result<Option<Location>, Failure> {
    match spec.kind.as_str() {
        "registry" => {
            let r = spec.attrs.get("ref").cloned().unwrap_or_default();
            remote::target(&r)
                .map(|t| Some(Location::Registry(t)))
                .map_err(Failure::usage)
        }
        "local" => Ok(spec
            .attrs
            .get(dir_attr)
            .map(|d| Location::Local(PathBuf::from(d)))),
        // An inline cache is no place of its own: it travels in an image
        // (callers handle it before asking where a cache is).
        _ => Err(Failure::usage(format!(
            "--cache-{}: type={} names no cache location (use type=registry or type=local)",
            if dir_attr == "src" { "from" } else { "to" },
            spec.kind
        ))),
    }
}

/// Imported entries by key, and how to fetch their layers.
pub type Imported = (HashMap<String, ImportedEntry>, LayerFetcher);

/// Reads the caches `specs` name. A cache that cannot be read is a
/// warning, as in BuildKit: the build runs without it.
pub fn import(
    specs: &[CacheSpec],
    store: &Arc<Store>,
    remote: Option<&Remote>,
    warn: &dyn Fn(String),
) -> Result<Option<Imported>, Failure> {
    if specs.is_empty() {
        return Ok(None);
    }
    let mut entries = HashMap::new();
    // Where each layer digest can be fetched from.
    let mut sources: HashMap<Digest, Location> = HashMap::new();
    for spec in specs {
        let Some(loc) = location(spec, "src")? else {
            continue;
        };
        let read = match &loc {
            Location::Registry(target) => read_registry(store, remote, target),
            Location::Local(dir) => read_local(dir, spec.attrs.get("tag").map(String::as_str)),
        };
        let config = match read {
            Ok(c) => c,
            Err(e) => {
                warn(format!("cache import from {} failed: {e}", describe(&loc)));
                continue;
            }
        };
        if flag(spec, "cache-mounts")? {
            let registry = remote.map(Remote::registry);
            for m in &config.mounts {
                if let Err(e) = import_mount(store, registry.as_ref(), &loc, m) {
                    warn(format!("cache mount {:?} was not imported: {e}", m.id));
                }
            }
        }
        for r in config.records {
            if let Some(l) = &r.layer {
                sources
                    .entry(l.digest.clone())
                    .or_insert_with(|| loc.clone());
            }
            entries.entry(r.key.clone()).or_insert(ImportedEntry {
                layer: r.layer,
                created: r.created,
                description: r.description,
            });
        }
    }
    let registry = remote.map(Remote::registry);
    let store = Arc::clone(store);
    let fetcher: LayerFetcher = Arc::new(move |l: &LayerDescriptor| {
        let source = sources
            .get(&l.digest)
            .ok_or_else(|| format!("no cache holds {}", l.digest))?;
        fetch(&store, registry.as_ref(), source, l)
    });
    Ok(Some((entries, fetcher)))
}

fn describe(loc: &Location) -> String {
    match loc {
        Location::Registry(t) => t.to_string(),
        Location::Local(d) => d.display().to_string(),
    }
}

fn fetch(
    store: &Arc<Store>,
    registry: Option<&Arc<Registry>>,
    source: &Location,
    l: &LayerDescriptor,
) -> Result<(), String> {
    let desc = Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size);
    match source {
        Location::Local(dir) => copy_blob(&dir.join(blob_rel(&l.digest)), store, &l.digest),
        Location::Registry(target) => {
            let registry = registry
                .cloned()
                .ok_or("no registry client for this build")?;
            let (store, target) = (Arc::clone(store), target.clone());
            // Solver threads may be inside its runtime: fetch on a thread
            // with a runtime of its own.
            std::thread::spawn(move || -> Result<(), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(pull::fetch_blob(&registry, &store, &target, &desc))
                    .map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "the fetch thread panicked".to_string())?
        }
    }
}

/// A boolean attribute (`true`/`false`, absent is false).
fn flag(spec: &CacheSpec, name: &str) -> Result<bool, Failure> {
    match spec.attrs.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Failure::usage(format!(
            "{name}={other}: expected true or false"
        ))),
    }
}

/// Layers of the cache mounts the build's steps use that exist here.
fn export_mounts(
    store: &Store,
    graph: &Graph,
    loc: &Location,
) -> Result<Vec<MountRecord>, Failure> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for id in rbuild_solver::exec::run::cache_mount_ids(graph) {
        let dir = store
            .root()
            .join("cachemounts")
            .join(rbuild_solver::exec::run::cache_mount_key(&id));
        let Ok(md) = std::fs::metadata(&dir) else {
            continue;
        };
        let lower = |_: &str| None;
        let Some(l) = rbuild_solver::exec::diff::write_upper_layer(
            store,
            &dir,
            &std::collections::HashSet::new(),
            &lower,
            None,
        )
        .map_err(failed)?
        else {
            continue;
        };
        let l = match loc {
            Location::Registry(_) => {
                compressed_layer(store, &l, Compression::GZIP_DEFAULT).map_err(failed)?
            }
            Location::Local(_) => l,
        };
        out.push(MountRecord {
            id,
            layer: l,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
        });
    }
    Ok(out)
}

/// Fills cache mount `m.id` from its layer, unless this store has it.
fn import_mount(
    store: &Arc<Store>,
    registry: Option<&Arc<Registry>>,
    source: &Location,
    m: &MountRecord,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let base = store.root().join("cachemounts");
    let dir = base.join(rbuild_solver::exec::run::cache_mount_key(&m.id));
    if dir.exists() {
        return Ok(());
    }
    fetch(store, registry, source, &m.layer)?;
    let tmp = base.join(format!(".new-import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let result = (|| -> Result<(), String> {
        let reader = layer::open_layer(store, &m.layer.digest).map_err(|e| e.to_string())?;
        layer::apply_layer(reader, &tmp, &layer::ApplyOptions::layer())
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m.mode))
            .map_err(|e| e.to_string())?;
        std::os::unix::fs::lchown(&tmp, Some(m.uid), Some(m.gid)).map_err(|e| e.to_string())?;
        // A build that made it meanwhile wins.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn blob_rel(d: &Digest) -> PathBuf {
    Path::new("blobs").join("sha256").join(d.hex())
}

/// Copies a blob file into the store, checking its digest.
fn copy_blob(path: &Path, store: &Store, digest: &Digest) -> Result<(), String> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let mut src = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = store.blob_writer().map_err(|e| e.to_string())?;
    std::io::copy(&mut src, &mut w).map_err(|e| format!("{}: {e}", path.display()))?;
    let (got, _) = w.commit().map_err(|e| e.to_string())?;
    if &got != digest {
        return Err(format!("{} has digest {got}, not {digest}", path.display()));
    }
    Ok(())
}

fn parse_manifest(bytes: &[u8]) -> Result<CacheManifest, String> {
    let m: CacheManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a cache manifest: {e}"))?;
    if m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "not an rbuild cache (its config is {})",
            m.config.media_type
        ));
    }
    Ok(m)
}

fn parse_config(bytes: &[u8]) -> Result<CacheConfig, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("the cache config is invalid: {e}"))
}

fn read_registry(
    store: &Store,
    remote: Option<&Remote>,
    target: &Target,
) -> Result<CacheConfig, String> {
    let remote = remote.ok_or("no registry client")?;
    let bytes = remote.manifest_bytes(target)?;
    let manifest: CacheManifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a manifest: {e}"))?;
    remote.fetch_blob(target, &manifest.config)?;
    let config = store
        .read_blob(&manifest.config.digest)
        .map_err(|e| e.to_string())?;
    if manifest.config.media_type == CONFIG_MEDIA_TYPE {
        return parse_config(&config);
    }
    inline_records(&manifest, &config)
}

/// The cache an image carries in its config (`--cache-to type=inline`):
/// each step's layer is the image's layer at the recorded position.
fn inline_records(manifest: &CacheManifest, config: &[u8]) -> Result<CacheConfig, String> {
    #[derive(Deserialize)]
    struct Rootfs {
        diff_ids: Vec<Digest>,
    }
    #[derive(Deserialize)]
    struct ImageWithCache {
        rootfs: Rootfs,
        #[serde(rename = "rbuild.cache.v1", default)]
        cache: Option<Vec<rbuild_solver::exec::image::InlineRecord>>,
    }
    let image: ImageWithCache =
        serde_json::from_slice(config).map_err(|e| format!("neither a cache nor an image: {e}"))?;
    let records = image
        .cache
        .ok_or("the image has no inline cache (build it with --cache-to type=inline)")?;
    let records = records
        .into_iter()
        .map(|r| {
            let layer = match r.layer {
                None => None,
                Some(i) => {
                    let (desc, diff_id) = manifest
                        .layers
                        .get(i)
                        .zip(image.rootfs.diff_ids.get(i))
                        .ok_or_else(|| {
                            format!("inline cache names layer {i}, which is not there")
                        })?;
                    Some(LayerDescriptor {
                        diff_id: diff_id.clone(),
                        digest: desc.digest.clone(),
                        size: desc.size,
                        media_type: desc.media_type.clone(),
                    })
                }
            };
            Ok(Record {
                key: r.key,
                layer,
                created: r.created,
                description: r.description,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(CacheConfig {
        version: 1,
        records,
        mounts: Vec::new(),
    })
}

fn read_local(dir: &Path, tag: Option<&str>) -> Result<CacheConfig, String> {
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
    let index: Index = serde_json::from_slice(&read(dir.join("index.json"))?)
        .map_err(|e| format!("{}/index.json: {e}", dir.display()))?;
    let tag = tag.unwrap_or("latest");
    let desc = index
        .manifests
        .iter()
        .find(|m| {
            m.annotations
                .get("org.opencontainers.image.ref.name")
                .is_some_and(|n| n == tag)
        })
        .or(index.manifests.first())
        .ok_or("the layout has no manifest")?;
    let bytes = read(dir.join(blob_rel(&desc.digest)))?;
    if Digest::sha256(&bytes) != desc.digest {
        return Err(format!("manifest {} is corrupt", desc.digest));
    }
    let manifest = parse_manifest(&bytes)?;
    let config = read(dir.join(blob_rel(&manifest.config.digest)))?;
    if Digest::sha256(&config) != manifest.config.digest {
        return Err(format!(
            "cache config {} is corrupt",
            manifest.config.digest
        ));
    }
    parse_config(&config)
}

/// Writes the caches `specs` name.
pub fn export(
    specs: &[CacheSpec],
    store: &Store,
    graph: &Graph,
    solved: &Solved,
    solver: &Solver,
    remote: Option<&Remote>,
) -> Result<(), Failure> {
    for spec in specs {
        // An inline cache went into the image's config.
        if spec.kind == "inline" {
            continue;
        }
        let Some(loc) = location(spec, "dest")? else {
            continue;
        };
        let max = match spec.attrs.get("mode").map(String::as_str) {
            None | Some("min") => false,
            Some("max") => true,
            Some(other) => {
                return Err(Failure::usage(format!(
                    "--cache-to: mode={other}: expected min or max"
                )))
            }
        };
        let ops = rbuild_solver::exec::cache_ops(graph, solved, max);
        let mut layers: Vec<LayerDescriptor> = ops
            .iter()
            .filter_map(|&op| solved.added.get(op).cloned().flatten())
            .collect();
        layers.dedup();
        solver.ensure_local(&layers).map_err(failed)?;
        // Blobs for every layer: made from snapshots, compressed for
        // registries (the store keeps them uncompressed).
        let mut exported: BTreeMap<Digest, LayerDescriptor> = BTreeMap::new();
        for l in &layers {
            layer::materialize(store, l).map_err(failed)?;
            let out = match &loc {
                Location::Registry(_) => {
                    compressed_layer(store, l, Compression::GZIP_DEFAULT).map_err(failed)?
                }
                Location::Local(_) => l.clone(),
            };
            exported.insert(l.digest.clone(), out);
        }
        let records: Vec<Record> = ops
            .iter()
            .filter_map(|&op| {
                let key = solved.keys.get(op).cloned().flatten()?;
                let layer = solved
                    .added
                    .get(op)
                    .cloned()
                    .flatten()
                    .and_then(|l| exported.get(&l.digest).cloned());
                Some(Record {
                    key,
                    layer,
                    created: solved.created.get(op).copied().flatten().unwrap_or(0),
                    description: graph.ops[op].meta.name.clone(),
                })
            })
            .collect();
        let mounts = if flag(spec, "cache-mounts")? {
            export_mounts(store, graph, &loc)?
        } else {
            Vec::new()
        };
        for m in &mounts {
            exported.insert(m.layer.digest.clone(), m.layer.clone());
        }
        let config = CacheConfig {
            version: 1,
            records,
            mounts,
        };
        let (config_digest, config_size, _) = store.write_json(&config).map_err(failed)?;
        let mut seen = BTreeSet::new();
        let layer_descs: Vec<Descriptor> = exported
            .values()
            .filter(|l| seen.insert(l.digest.clone()))
            .map(|l| Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size))
            .collect();
        let manifest = CacheManifest {
            schema_version: 2,
            media_type: media::MANIFEST.into(),
            artifact_type: Some(ARTIFACT_TYPE.into()),
            config: Descriptor::new(CONFIG_MEDIA_TYPE, config_digest.clone(), config_size),
            layers: layer_descs.clone(),
        };
        let (manifest_digest, manifest_size, _) = store.write_json(&manifest).map_err(failed)?;
        let image = ExportedImage {
            manifest: Descriptor::new(media::MANIFEST, manifest_digest, manifest_size),
            config: Descriptor::new(CONFIG_MEDIA_TYPE, config_digest, config_size),
            layers: layer_descs,
        };
        match &loc {
            Location::Registry(target) => {
                let remote = remote.ok_or_else(|| Failure::failed("no registry client"))?;
                remote
                    .push_exported(&image, target, "exporting cache to")
                    .map_err(Failure::failed)?;
            }
            Location::Local(dir) => {
                write_local(store, &image, dir, spec.attrs.get("tag")).map_err(Failure::failed)?
            }
        }
    }
    Ok(())
}

/// Writes an OCI layout at `dir` holding `image` (blobs hard linked from
/// the store when they can be), tagged `tag` (default `latest`); other
/// tags already there stay.
fn write_local(
    store: &Store,
    image: &ExportedImage,
    dir: &Path,
    tag: Option<&String>,
) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| err(&blobs, e))?;
    let mut all = image.layers.clone();
    all.push(image.config.clone());
    all.push(image.manifest.clone());
    for b in &all {
        let dest = dir.join(blob_rel(&b.digest));
        if dest.exists() {
            continue;
        }
        let src = store.blob_path(&b.digest);
        let tmp = dest.with_extension("tmp");
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp).map_err(|e| err(&src, e))?;
        }
        std::fs::rename(&tmp, &dest).map_err(|e| err(&dest, e))?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| err(dir, e))?;
    let index_path = dir.join("index.json");
    let mut index: Index = std::fs::read(&index_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let tag = tag.map(String::as_str).unwrap_or("latest");
    let name = "org.opencontainers.image.ref.name";
    index
        .manifests
        .retain(|m| m.annotations.get(name).map(String::as_str) != Some(tag));
    let mut desc = image.manifest.clone();
    desc.annotations.insert(name.into(), tag.into());
    index.manifests.push(desc);
    let text = serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?;
    let tmp = index_path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, &index_path).map_err(|e| err(&index_path, e))
}
