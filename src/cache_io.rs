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
use rbuild_solver::graph::{Base, Graph, OpId, OpKind};
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

/// Where a cache lives.
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
        // Inline caches live in an image's config; not read or written yet.
        _ => Err(Failure::usage(format!(
            "--cache-{}: type={} is not supported yet (use type=registry or type=local)",
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
    let mut sources: HashMap<Digest, Source> = HashMap::new();
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
        for r in config.records {
            if let Some(l) = &r.layer {
                let source = match &loc {
                    Location::Registry(t) => Source::Registry(t.clone()),
                    Location::Local(d) => Source::Local(d.clone()),
                };
                sources.entry(l.digest.clone()).or_insert(source);
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

#[derive(Debug, Clone)]
enum Source {
    Registry(Target),
    Local(PathBuf),
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
    source: &Source,
    l: &LayerDescriptor,
) -> Result<(), String> {
    let desc = Descriptor::new(l.media_type.clone(), l.digest.clone(), l.size);
    match source {
        Source::Local(dir) => copy_blob(&dir.join(blob_rel(&l.digest)), store, &l.digest),
        Source::Registry(target) => {
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
    let manifest = parse_manifest(&remote.manifest_bytes(target)?)?;
    remote.fetch_blob(target, &manifest.config)?;
    let bytes = store
        .read_blob(&manifest.config.digest)
        .map_err(|e| e.to_string())?;
    parse_config(&bytes)
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

/// The ops whose entries a `mode` exports: `max`, every cacheable op the
/// build solved; `min`, those of the target stage and the stages it is
/// based on (FROM another stage).
fn exported_ops(graph: &Graph, solved: &Solved, max: bool) -> Vec<OpId> {
    let mut stages = BTreeSet::new();
    let mut s = graph.target;
    loop {
        stages.insert(s);
        match graph.stages[s].base {
            Base::Stage { stage } if !stages.contains(&stage) => s = stage,
            _ => break,
        }
    }
    let wanted: BTreeSet<OpId> = if max {
        graph
            .closure(graph.stages[graph.target].root)
            .into_iter()
            .collect()
    } else {
        stages.iter().flat_map(|&s| graph.stage_ops(s)).collect()
    };
    wanted
        .into_iter()
        .filter(|&op| {
            matches!(graph.ops[op].kind, OpKind::File(_) | OpKind::Exec(_))
                && solved.keys.get(op).is_some_and(Option::is_some)
        })
        .collect()
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
        let ops = exported_ops(graph, solved, max);
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
        let config = CacheConfig {
            version: 1,
            records,
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
