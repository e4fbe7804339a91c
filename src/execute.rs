//! Running a lowered build: solve the graph, assemble the image, tag and
//! export it, write the iid and metadata files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rbuild_cache::layer::Compression;
use rbuild_cache::Store;
use rbuild_solver::exec::error::ExecError;
use rbuild_solver::exec::progress::{Event, Progress};
use rbuild_solver::exec::{NamedInput, SolveOptions, Solved, Solver, StoredImage};
use rbuild_solver::graph::{Graph, OpId};

use crate::export::{self, MediaTypes};
use crate::images::{normalize, stored_tag};
use crate::options::Output;
use crate::remote::{Encoding, Remote};
use crate::Failure;

/// Everything a build needs besides the graph.
pub struct BuildPlan<'a> {
    /// The store.
    pub store: Arc<Store>,
    /// Named contexts, the main one as `context`.
    pub contexts: BTreeMap<String, NamedInput>,
    /// Base images by normalised reference.
    pub images: BTreeMap<String, Arc<StoredImage>>,
    /// `-t` tags as given.
    pub tags: &'a [String],
    /// `-o` outputs.
    pub outputs: &'a [Output],
    /// `--iidfile`.
    pub iidfile: Option<PathBuf>,
    /// `--metadata-file`.
    pub metadata_file: Option<PathBuf>,
    /// `--secret` values by id.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Solve settings.
    pub solve: SolveOptions,
    /// `--ssh` ids → agent sockets.
    pub ssh: BTreeMap<String, std::path::PathBuf>,
    /// `--cache-from` caches.
    pub cache_from: &'a [crate::options::CacheSpec],
    /// `--cache-to` caches.
    pub cache_to: &'a [crate::options::CacheSpec],
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// The plain printer, for the steps the CLI does itself.
    pub plain: Option<Arc<crate::progress::Plain>>,
    /// Registries, for pushes.
    pub remote: Option<&'a Remote>,
    /// `--push`: push every `-t` tag.
    pub push: bool,
    /// `--no-cache-filter` stage names.
    pub no_cache_filter: &'a [String],
}

/// What the build produced.
pub struct BuildResult {
    /// The image ID (config digest).
    pub image_id: String,
    /// Whether any step ran (rather than coming from the cache).
    pub wrote: bool,
}

/// Runs the build and its exports.
pub fn run(
    plan: BuildPlan<'_>,
    graph: Graph,
    context_stats: &dyn Fn() -> serde_json::Value,
) -> Result<BuildResult, Failure> {
    let graph = Arc::new(graph);
    let no_cache_ops = no_cache_ops(&graph, plan.no_cache_filter, plan.progress.as_ref());
    let progress = Arc::clone(&plan.progress);
    let warn = move |message: String| progress.event(Event::Warning { message });
    let imported = crate::cache_io::import(plan.cache_from, &plan.store, plan.remote, &warn)?;
    let solver = Arc::new({
        let solver = Solver::new(
            Arc::clone(&plan.store),
            plan.contexts,
            plan.images,
            plan.solve,
            Arc::clone(&plan.progress),
        )
        .with_secrets(plan.secrets)
        .with_ssh(plan.ssh)
        .with_proxy_env(graph.proxy_env.clone())
        .with_no_cache_ops(no_cache_ops)
        .with_inline_cache(plan.cache_to.iter().any(|c| c.kind == "inline"));
        match imported {
            Some((entries, fetcher)) => solver.with_cache_import(entries, fetcher),
            None => solver,
        }
    });
    let target = graph.target;
    let root = graph.stages[target].root;
    let solve = || -> Result<_, ExecError> {
        let solved = solver.solve(&graph, root)?;
        let built = solver.assemble(&graph, &solved, target)?;
        Ok((solved, built))
    };
    let (solved, built) = match solve() {
        // The damaged snapshot is gone: solving again misses it and
        // rebuilds what made it, once.
        Err(ExecError::DamagedCache(why)) => {
            plan.progress.event(Event::Warning {
                message: format!(
                    "a cached layer was damaged ({why}); rebuilding the steps that made it"
                ),
            });
            solve()
        }
        other => other,
    }
    .map_err(|e| Failure::failed(e.to_string()))?;
    let image = built.image;
    let store = plan.store.as_ref();
    let mtime = plan.solve.epoch.unwrap_or(0).max(0) as u64;

    let step = |name: &str, f: &mut dyn FnMut() -> Result<(), String>| -> Result<(), Failure> {
        let r = match &plan.plain {
            Some(p) => p.step(name, &mut *f),
            None => f(),
        };
        r.map_err(Failure::failed)
    };

    let mut names: Vec<String> = Vec::new();
    for tag in plan.tags {
        names.push(normalize(tag).unwrap_or_else(|| tag.clone()));
    }
    let mut metadata = serde_json::Map::new();
    // Names pushed by outputs besides the -t tags (`-o type=registry,name=`).
    let mut extra_names: Vec<String> = Vec::new();
    let mut reported = image.manifest.clone();
    if !plan.tags.is_empty() {
        step(&format!("naming to {}", names.join(", ")), &mut || {
            for tag in plan.tags {
                store
                    .tag(&stored_tag(tag), &image.manifest)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })?;
    }
    for output in plan.outputs {
        let dest = PathBuf::from(output.attrs.get("dest").cloned().unwrap_or_default());
        let mut output_names = names.clone();
        if let Some(n) = output.attrs.get("name") {
            output_names = n
                .split(',')
                .map(|s| normalize(s).unwrap_or_else(|| s.to_string()))
                .collect();
        }
        let compression = compression(output)?;
        match output.kind.as_str() {
            "oci" | "docker" => {
                let types = if output.kind == "oci"
                    || output
                        .attrs
                        .get("oci-mediatypes")
                        .is_some_and(|v| v == "true")
                {
                    MediaTypes::Oci
                } else {
                    MediaTypes::Docker
                };
                let mut exported = None;
                step(
                    &format!("exporting to {} image format", output.kind),
                    &mut || {
                        let e = export::prepare(store, &image, compression, types)
                            .map_err(|e| e.to_string())?;
                        if output.kind == "oci" {
                            export::write_oci_archive(store, &e, &output_names, &dest, mtime)
                                .map_err(|e| e.to_string())?;
                        } else {
                            export::write_docker_archive(store, &e, &output_names, &dest, mtime)
                                .map_err(|e| e.to_string())?;
                        }
                        exported = Some(e);
                        Ok(())
                    },
                )?;
                if let Some(e) = exported {
                    reported = e.manifest;
                }
            }
            "local" => step("exporting to client directory", &mut || {
                export::write_local(store, &image, &dest).map_err(|e| e.to_string())
            })?,
            "tar" => step("exporting to client tarball", &mut || {
                export::write_fs_tar(store, &image, &dest).map_err(|e| e.to_string())
            })?,
            "image" | "registry" => {
                if let Some(n) = output.attrs.get("name") {
                    for tag in n.split(',') {
                        store
                            .tag(&stored_tag(tag.trim()), &image.manifest)
                            .map_err(|e| Failure::failed(e.to_string()))?;
                    }
                }
                let push = output.kind == "registry"
                    || output.attrs.get("push").is_some_and(|v| v == "true");
                if push {
                    let encoding = Encoding {
                        compression,
                        types: match output.attrs.get("oci-mediatypes").map(String::as_str) {
                            Some("false") => MediaTypes::Docker,
                            _ => MediaTypes::Oci,
                        },
                    };
                    reported = push_to(plan.remote, &image, &output_names, encoding)?;
                    for n in &output_names {
                        if !names.contains(n) {
                            extra_names.push(n.clone());
                        }
                    }
                }
            }
            "cacheonly" => {}
            other => return Err(Failure::usage(format!("unknown output type {other:?}"))),
        }
    }

    if plan.push {
        reported = push_to(plan.remote, &image, &names, Encoding::default())?;
    }
    crate::cache_io::export(plan.cache_to, store, &graph, &solved, &solver, plan.remote)?;

    let image_id = image.config_digest.to_string();
    if let Some(path) = &plan.iidfile {
        std::fs::write(path, &image_id)
            .map_err(|e| Failure::failed(format!("writing {}: {e}", path.display())))?;
    }
    if let Some(path) = &plan.metadata_file {
        metadata.insert(
            "containerimage.config.digest".into(),
            image_id.clone().into(),
        );
        metadata.insert(
            "containerimage.digest".into(),
            reported.digest.to_string().into(),
        );
        metadata.insert(
            "containerimage.descriptor".into(),
            serde_json::to_value(&reported).map_err(|e| Failure::failed(e.to_string()))?,
        );
        let all_names: Vec<String> = names.iter().chain(&extra_names).cloned().collect();
        if !all_names.is_empty() {
            metadata.insert("image.name".into(), all_names.join(",").into());
        }
        metadata.insert("rbuild.context".into(), context_stats());
        metadata.insert("rbuild.steps".into(), steps(&graph, &solved));
        let fetched: Vec<String> = solver
            .fetched_layers()
            .iter()
            .map(|d| d.to_string())
            .collect();
        metadata.insert("rbuild.cache.fetched".into(), fetched.into());
        let text =
            serde_json::to_string_pretty(&metadata).map_err(|e| Failure::failed(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| Failure::failed(format!("writing {}: {e}", path.display())))?;
    }
    let wrote = (0..graph.ops.len()).any(|op| {
        solved.times.get(op).is_some_and(Option::is_some)
            && !solved.cached.get(op).copied().unwrap_or(true)
            && solved.added.get(op).is_some_and(Option::is_some)
    });
    Ok(BuildResult { image_id, wrote })
}

/// The ops of the stages `--no-cache-filter` names (by name or index).
fn no_cache_ops(graph: &Graph, names: &[String], progress: &dyn Progress) -> BTreeSet<OpId> {
    let mut ops = BTreeSet::new();
    for name in names.iter().flat_map(|n| n.split(',')) {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        let found = graph
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()) || s.index.to_string() == name);
        match found {
            Some(i) => ops.extend(graph.stage_ops(i)),
            None => progress.event(Event::Warning {
                message: format!("--no-cache-filter: the Dockerfile has no stage {name:?}"),
            }),
        }
    }
    ops
}

/// Every step the build showed, for `--metadata-file`: its name, whether
/// it came from the cache, when it ran (Unix nanoseconds) and its cache key.
fn steps(graph: &Graph, solved: &Solved) -> serde_json::Value {
    let nanos = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    };
    let mut steps: Vec<(u64, serde_json::Value)> = Vec::new();
    for (op, o) in graph.ops.iter().enumerate() {
        let Some((started, completed)) = solved.times.get(op).copied().flatten() else {
            continue;
        };
        if o.meta.name.is_empty() {
            continue;
        }
        let mut step = serde_json::json!({
            "name": o.meta.name,
            "cached": solved.cached.get(op).copied().unwrap_or(false),
            "started": nanos(started),
            "completed": nanos(completed),
        });
        if let Some(Some(key)) = solved.keys.get(op) {
            step["key"] = key.clone().into();
        }
        if let Some(Some(layer)) = solved.added.get(op) {
            step["layer"] = layer.digest.to_string().into();
        }
        steps.push((nanos(started), step));
    }
    steps.sort_by_key(|(t, _)| *t);
    serde_json::Value::Array(steps.into_iter().map(|(_, s)| s).collect())
}

/// Pushes the built image to every name.
fn push_to(
    remote: Option<&Remote>,
    image: &StoredImage,
    names: &[String],
    encoding: Encoding,
) -> Result<rbuild_cache::store::Descriptor, Failure> {
    let remote = remote.ok_or_else(|| Failure::failed("registries are not available"))?;
    if names.is_empty() {
        return Err(Failure::usage(
            "tag is needed when pushing to registry: give -t NAME or -o type=registry,name=NAME",
        ));
    }
    let targets = names
        .iter()
        .map(|n| crate::remote::target(n))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    remote
        .push(image, &targets, encoding)
        .map_err(Failure::failed)
}

fn compression(output: &Output) -> Result<Compression, Failure> {
    let name = output
        .attrs
        .get("compression")
        .map(String::as_str)
        .unwrap_or("gzip");
    let level = match output.attrs.get("compression-level") {
        Some(l) => Some(
            l.parse::<i32>()
                .map_err(|_| Failure::usage(format!("invalid compression-level {l:?}")))?,
        ),
        None => None,
    };
    Compression::parse(name, level).map_err(Failure::usage)
}
