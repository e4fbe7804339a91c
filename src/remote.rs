//! Registries from the CLI's side: pulls (for FROM, `COPY --from`, and
//! `rbuild pull`) and pushes (`--push`, `-o type=registry`, `rbuild push`),
//! with their progress lines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rbuild_cache::layer::Compression;
use rbuild_cache::store::Descriptor;
use rbuild_cache::Store;
use rbuild_frontend::reference::Reference;
use rbuild_registry::{Options, Pushed, Registry, Target, Transfer};
use rbuild_solver::exec::pull::{self, BlobState, PullEvent, PullProgress};
use rbuild_solver::exec::StoredImage;
use rbuild_solver::graph::Platform;

use crate::export::{self, ExportedImage, MediaTypes};
use crate::progress::{bytes, rate, seconds_of, Plain, Step};
use crate::Failure;

/// Blobs uploaded at once.
const CONCURRENT_UPLOADS: usize = 4;

/// How often a transfer in progress gets a line in plain logs.
const LINE_EVERY: Duration = Duration::from_secs(1);

/// Parses and normalises a reference into a registry target; a reference
/// with neither tag nor digest means `:latest`.
pub fn target(reference: &str) -> Result<Target, String> {
    let r = Reference::parse(reference)
        .map_err(|e| format!("invalid image reference {reference:?}: {e}"))?
        .with_default_tag();
    Ok(Target::new(r.domain, r.path, r.tag, r.digest))
}

/// The registry client and what it needs around it.
pub struct Remote {
    registry: Arc<Registry>,
    runtime: tokio::runtime::Runtime,
    store: Arc<Store>,
    plain: Option<Arc<Plain>>,
}

/// How a pushed image's layers and manifest are encoded.
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    /// Layer compression.
    pub compression: Compression,
    /// OCI or Docker media types.
    pub types: MediaTypes,
}

impl Default for Encoding {
    fn default() -> Self {
        Encoding {
            compression: Compression::GZIP_DEFAULT,
            types: MediaTypes::Oci,
        }
    }
}

impl Remote {
    /// A client allowing plain http to loopback registries and `insecure`.
    pub fn new(
        store: Arc<Store>,
        insecure: &[String],
        plain: Option<Arc<Plain>>,
    ) -> Result<Self, Failure> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("rbuild-registry")
            .build()
            .map_err(|e| Failure::failed(format!("cannot start the registry client: {e}")))?;
        let registry = Registry::new(Options {
            insecure: insecure.to_vec(),
            ..Options::default()
        });
        Ok(Remote {
            registry: Arc::new(registry),
            runtime,
            store,
            plain,
        })
    }

    /// The registry client (shared with fetches made from other threads).
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Fetches `target`'s manifest (not an index): its bytes.
    pub fn manifest_bytes(&self, target: &Target) -> Result<Vec<u8>, String> {
        let m = self
            .runtime
            .block_on(self.registry.manifest(target))
            .map_err(|e| e.to_string())?;
        if m.is_index() {
            return Err(format!("{target} is an index, not a cache manifest"));
        }
        Ok(m.bytes.to_vec())
    }

    /// Fetches one blob of `target`'s repository into the store.
    pub fn fetch_blob(&self, target: &Target, blob: &Descriptor) -> Result<(), String> {
        if self.store.has_blob(&blob.digest) {
            return Ok(());
        }
        self.runtime
            .block_on(pull::fetch_blob(&self.registry, &self.store, target, blob))
            .map_err(|e| e.to_string())
    }

    /// Pushes blobs already in the store, then a manifest naming them, as
    /// one step of the progress.
    pub fn push_exported(
        &self,
        exported: &ExportedImage,
        target: &Target,
        what: &str,
    ) -> Result<(), String> {
        let step = self.step(&format!("{what} {target}"));
        let result = self
            .store
            .read_blob(&exported.manifest.digest)
            .map_err(|e| e.to_string())
            .and_then(|manifest| {
                self.runtime
                    .block_on(self.push_one(exported, &manifest, target, step.as_deref()))
            });
        if let Some(s) = &step {
            match &result {
                Ok(()) => s.done(),
                Err(e) => s.failed(e),
            }
        }
        result
    }

    fn step(&self, name: &str) -> Option<Arc<Step>> {
        self.plain.as_ref().map(|p| Arc::new(p.start(name)))
    }

    /// Pulls `reference` for `platform` and tags it in the store under its
    /// full name (`name@digest` for a digest reference).
    pub fn pull(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<(Descriptor, StoredImage), String> {
        let target = target(reference)?;
        let step = self.step(&format!("pulling {target}"));
        let progress = pull_printer(step.clone(), target.to_string());
        let result = self.runtime.block_on(pull::pull(
            &self.registry,
            &self.store,
            &target,
            platform,
            progress,
        ));
        let pulled = match result {
            Ok(p) => p,
            Err(e) => {
                if let Some(s) = &step {
                    s.failed(&e.to_string());
                }
                return Err(e.to_string());
            }
        };
        self.store
            .tag(&target.to_string(), &pulled.top)
            .map_err(|e| e.to_string())?;
        if let Some(s) = &step {
            s.done();
        }
        Ok((pulled.top, pulled.image))
    }

    /// Pushes `image` to every target: blobs first (skipped when present,
    /// mounted when another repository of the registry has them, else
    /// uploaded, several at once), each target's manifest last, so a
    /// failed push never leaves a tag naming missing blobs. Returns the
    /// pushed manifest's descriptor.
    pub fn push(
        &self,
        image: &StoredImage,
        targets: &[Target],
        encoding: Encoding,
    ) -> Result<Descriptor, String> {
        let names: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let step = self.step(&format!("pushing {}", names.join(", ")));
        let result = self.push_inner(image, targets, encoding, step.as_deref());
        if let Some(s) = &step {
            match &result {
                Ok(_) => s.done(),
                Err(e) => s.failed(e),
            }
        }
        result
    }

    fn push_inner(
        &self,
        image: &StoredImage,
        targets: &[Target],
        encoding: Encoding,
        step: Option<&Step>,
    ) -> Result<Descriptor, String> {
        let store = self.store.as_ref();
        let exported = export::prepare(store, image, encoding.compression, encoding.types)
            .map_err(|e| e.to_string())?;
        let manifest = store
            .read_blob(&exported.manifest.digest)
            .map_err(|e| e.to_string())?;
        for target in targets {
            self.runtime
                .block_on(self.push_one(&exported, &manifest, target, step))?;
        }
        let mut desc = exported.manifest.clone();
        desc.platform = image.manifest.platform.clone();
        Ok(desc)
    }

    async fn push_one(
        &self,
        exported: &ExportedImage,
        manifest: &[u8],
        target: &Target,
        step: Option<&Step>,
    ) -> Result<(), String> {
        let log = |text: String| {
            if let Some(s) = step {
                s.log(&text);
            }
        };
        let mut blobs = exported.layers.clone();
        blobs.push(exported.config.clone());
        let mut uploads =
            futures_util::stream::iter(blobs.iter().map(|b| self.push_blob(target, b, &log)))
                .buffer_unordered(CONCURRENT_UPLOADS);
        while let Some(r) = uploads.next().await {
            r?;
        }
        drop(uploads);
        let digest = self
            .registry
            .push_manifest(target, manifest, &exported.manifest.media_type)
            .await
            .map_err(|e| e.to_string())?;
        if digest != exported.manifest.digest.as_str() {
            return Err(format!(
                "the manifest pushed to {target} hashes to {digest}, not {}",
                exported.manifest.digest
            ));
        }
        log(format!("pushing manifest for {target}@{digest} done"));
        let name = target.name();
        for b in &blobs {
            let _ = self.store.add_source(&b.digest, &name);
        }
        Ok(())
    }

    async fn push_blob(
        &self,
        target: &Target,
        blob: &Descriptor,
        log: &(dyn Fn(String) + Sync),
    ) -> Result<Pushed, String> {
        let digest = blob.digest.as_str();
        let err = |e: rbuild_registry::Error| e.to_string();
        match self.registry.has_blob(target, digest).await {
            Ok(true) => {
                log(format!("{digest} {} already exists", bytes(blob.size)));
                return Ok(Pushed::Exists);
            }
            Ok(false) => {}
            Err(e @ rbuild_registry::Error::Unauthorized { .. }) => return Err(err(e)),
            // A registry whose storage was damaged (say, killed while it
            // wrote this blob) can fail the check for good; uploading the
            // blob again repairs it, and a registry that is really down
            // fails the upload with the same error.
            Err(e) => log(format!("{digest} could not be checked ({e}): uploading it")),
        }
        let prefix = format!("{}/", target.registry);
        let name = target.name();
        for source in self.store.sources(&blob.digest) {
            let Some(repo) = source.strip_prefix(&prefix) else {
                continue;
            };
            if source == name {
                continue;
            }
            if self
                .registry
                .mount_blob(target, repo, digest)
                .await
                .map_err(err)?
            {
                log(format!("{digest} mounted from {repo}"));
                return Ok(Pushed::Mounted(repo.to_string()));
            }
        }
        let start = Instant::now();
        let last = Mutex::new(Instant::now());
        log(format!("{digest} 0B / {}", bytes(blob.size)));
        let on_transfer = |t: Transfer| match t {
            Transfer::Bytes(n) => {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LINE_EVERY && n < blob.size {
                    *last = Instant::now();
                    log(format!(
                        "{digest} {} / {} {}",
                        bytes(n),
                        bytes(blob.size),
                        seconds_of(start.elapsed())
                    ));
                }
            }
            Transfer::Retrying { attempt, error } => {
                log(format!("{digest} retrying (try {attempt}): {error}"))
            }
        };
        let path = self.store.blob_path(&blob.digest);
        self.registry
            .push_blob(
                target,
                digest,
                blob.size,
                || std::fs::File::open(&path),
                &on_transfer,
            )
            .await
            .map_err(err)?;
        let elapsed = start.elapsed();
        log(format!(
            "{digest} {} / {} {} done ({})",
            bytes(blob.size),
            bytes(blob.size),
            seconds_of(elapsed),
            rate(blob.size, elapsed)
        ));
        Ok(Pushed::Uploaded)
    }
}

/// Progress lines for a pull, BuildKit's way: a line when a layer starts,
/// one a second while it streams, and one when it is done.
fn pull_printer(step: Option<Arc<Step>>, name: String) -> PullProgress {
    struct Blob {
        start: Instant,
        last: Instant,
    }
    let blobs: Mutex<HashMap<String, Blob>> = Mutex::new(HashMap::new());
    Arc::new(move |event: PullEvent| {
        let Some(step) = &step else { return };
        match event {
            PullEvent::Resolved { digest } => step.log(&format!("resolve {name}@{digest} done")),
            PullEvent::Blob {
                digest,
                size,
                state,
            } => match state {
                BlobState::Present => {
                    step.log(&format!("{digest} {} already in the store", bytes(size)))
                }
                BlobState::Progress(n) => {
                    let mut blobs = blobs.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    let entry = blobs.entry(digest.clone());
                    let show = match entry {
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(Blob {
                                start: now,
                                last: now,
                            });
                            Some(Duration::ZERO)
                        }
                        std::collections::hash_map::Entry::Occupied(mut o) => {
                            let b = o.get_mut();
                            if now.duration_since(b.last) >= LINE_EVERY && n < size {
                                b.last = now;
                                Some(now.duration_since(b.start))
                            } else {
                                None
                            }
                        }
                    };
                    if let Some(elapsed) = show {
                        step.log(&format!(
                            "{digest} {} / {} {}",
                            bytes(n),
                            bytes(size),
                            seconds_of(elapsed)
                        ));
                    }
                }
                BlobState::Retrying { attempt, error } => {
                    step.log(&format!("{digest} retrying (try {attempt}): {error}"))
                }
                BlobState::Done { elapsed } => step.log(&format!(
                    "{digest} {} / {} {} done ({})",
                    bytes(size),
                    bytes(size),
                    seconds_of(elapsed),
                    rate(size, elapsed)
                )),
            },
        }
    })
}
