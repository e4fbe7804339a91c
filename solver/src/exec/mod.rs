//! Executing the build graph: every op whose inputs are ready runs, up to
//! `jobs` at once; results are filesystem states (stacks of layers) or
//! build contexts.

mod agent;
pub mod diff;
pub mod error;
pub mod fileop;
pub mod fsview;
pub mod http;
pub mod image;
pub mod progress;
pub mod pull;
pub mod run;
pub mod source;
pub mod user;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use sha2::Digest as _;

use rbuild_cache::index::{self, CacheIndex, FileStamp, Lookup};
use rbuild_cache::layer::{self, LayerDescriptor};
use rbuild_cache::Store;

use crate::graph::{Graph, OpId, OpKind};

pub use error::{ExecError, Result};
use fsview::FsView;
pub use image::StoredImage;
use progress::{Event, Progress};
use source::Source;

/// A filesystem: its layers, bottom first.
#[derive(Debug, Clone, Default)]
pub struct FsState {
    /// The layers.
    pub layers: Vec<LayerDescriptor>,
}

/// What an op produced.
#[derive(Clone)]
pub enum Value {
    /// A filesystem.
    Fs(FsState),
    /// A build context (COPY reads it; it is never a layer itself).
    Context(Arc<dyn Source>),
}

/// A named build context as the CLI resolved it.
#[derive(Clone)]
pub enum NamedInput {
    /// A directory (or the main context).
    Dir(Arc<dyn Source>),
    /// An image (from an OCI layout, or the store).
    Image(Arc<StoredImage>),
}

/// Settings of one solve.
#[derive(Debug, Clone, Copy)]
pub struct SolveOptions {
    /// How many ops may run at once.
    pub jobs: usize,
    /// SOURCE_DATE_EPOCH.
    pub epoch: Option<i64>,
    /// The build's time (seconds since the epoch).
    pub now: i64,
    /// `--no-cache`: run every op, reuse nothing.
    pub no_cache: bool,
}

/// The results of a solve, per op.
#[derive(Clone, Default)]
pub struct Solved {
    /// Each op's result (None for ops the target did not need).
    pub values: Vec<Option<Value>>,
    /// The layer each op added on top of its root input, if any.
    pub added: Vec<Option<LayerDescriptor>>,
    /// Each op's cache key.
    pub keys: Vec<Option<String>>,
    /// Whether each op's result came from the cache.
    pub cached: Vec<bool>,
    /// When each op started and finished.
    pub times: Vec<Option<(SystemTime, SystemTime)>>,
    /// When each op's result was first made (seconds since the epoch): by
    /// this build, or by the one whose cache entry it reused.
    pub created: Vec<Option<i64>>,
}

impl Solved {
    /// The filesystem an op produced.
    pub fn fs(&self, op: OpId) -> Result<&FsState> {
        match self.values.get(op) {
            Some(Some(Value::Fs(fs))) => Ok(fs),
            _ => Err(ExecError::Internal(format!(
                "op {op} has no filesystem result"
            ))),
        }
    }
}

/// The content checksum of a context path (a file, or a directory and
/// everything in it).
fn context_checksum(source: &dyn Source, path: &str) -> Result<Vec<u8>> {
    let path = if path.is_empty() { "/" } else { path };
    let Some(top) = source.lookup(path, true)? else {
        return Ok(b"missing".to_vec());
    };
    let mut entries = vec![top.clone()];
    if top.kind == source::Kind::Dir {
        entries.extend(source.walk(&top.path)?);
    }
    Ok(source.checksum(&entries)?.unwrap_or_default().into_bytes())
}

/// What running (or reusing) one op gave.
struct Outcome {
    value: Value,
    added: Option<LayerDescriptor>,
    key: String,
    cached: bool,
    times: (SystemTime, SystemTime),
    created: i64,
}

/// The outcome of a step reused from a cache: its base's layers plus the
/// one it added.
fn reused(
    inputs: &[Value],
    added: Option<LayerDescriptor>,
    key: String,
    created: i64,
    now: SystemTime,
) -> Outcome {
    let mut layers = match inputs.first() {
        Some(Value::Fs(fs)) => fs.layers.clone(),
        _ => Vec::new(),
    };
    layers.extend(added.clone());
    Outcome {
        value: Value::Fs(FsState { layers }),
        added,
        key,
        cached: true,
        times: (now, now),
        created,
    }
}

/// A cache entry another store exported (`--cache-from`): the step's
/// result, its layer's blob fetched only if something needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedEntry {
    /// The layer the step added, as the cache holds it.
    pub layer: Option<LayerDescriptor>,
    /// When the step ran (Unix seconds).
    pub created: i64,
    /// Its progress name, for `rbuild du`.
    pub description: String,
}

/// Fetches an imported layer's blob into the store (verified).
pub type LayerFetcher =
    Arc<dyn Fn(&LayerDescriptor) -> std::result::Result<(), String> + Send + Sync>;

/// The ops whose cache entries an export holds: with `max`, every
/// cacheable op the build solved; else those of the target stage and of
/// the stages it is based on (FROM another stage), as BuildKit's
/// `mode=min`.
pub fn cache_ops(graph: &Graph, solved: &Solved, max: bool) -> Vec<OpId> {
    let target = graph.target;
    let wanted: BTreeSet<OpId> = if max {
        graph
            .closure(graph.stages[target].root)
            .into_iter()
            .collect()
    } else {
        let mut stages = BTreeSet::new();
        let mut s = target;
        loop {
            stages.insert(s);
            match graph.stages[s].base {
                crate::graph::Base::Stage { stage } if !stages.contains(&stage) => s = stage,
                _ => break,
            }
        }
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

/// Runs graphs against a store.
pub struct Solver {
    store: Arc<Store>,
    contexts: BTreeMap<String, NamedInput>,
    images: BTreeMap<String, Arc<StoredImage>>,
    options: SolveOptions,
    progress: Arc<dyn Progress>,
    /// `--secret` values by id (never in a key, a log or a layer).
    secrets: BTreeMap<String, Vec<u8>>,
    /// `--ssh` ids → agent sockets on the host.
    ssh: BTreeMap<String, std::path::PathBuf>,
    /// Proxy settings for every RUN (`KEY=value`).
    proxy_env: Vec<String>,
    /// Set to stop running containers (Ctrl-C, another op failed).
    cancel: rbuild_sandbox::Cancel,
    /// Running inside a user namespace: overlays need `userxattr`.
    rootless: bool,
    /// The cache-key index.
    index: CacheIndex,
    /// Keys this build reused, stamped as used when the solve ends.
    hits: Mutex<Vec<String>>,
    /// Ops `--no-cache-filter` names: run again even when cached.
    no_cache_ops: BTreeSet<OpId>,
    /// `--cache-from` entries by key, and how to fetch their layers.
    imported: HashMap<String, ImportedEntry>,
    fetcher: Option<LayerFetcher>,
    /// Imported layers this build reused (digest → key), fetched when needed.
    imported_used: Mutex<HashMap<rbuild_cache::Digest, String>>,
    /// Imported layers fetched, in order.
    fetched: Mutex<Vec<rbuild_cache::Digest>>,
    /// Write the image's cache into its config (`--cache-to type=inline`).
    inline_cache: bool,
}

impl Solver {
    /// A solver with the given build contexts (`context` is the main one)
    /// and images (base images by normalised reference).
    pub fn new(
        store: Arc<Store>,
        contexts: BTreeMap<String, NamedInput>,
        images: BTreeMap<String, Arc<StoredImage>>,
        options: SolveOptions,
        progress: Arc<dyn Progress>,
    ) -> Self {
        Solver {
            index: CacheIndex::new(&store),
            hits: Mutex::default(),
            no_cache_ops: BTreeSet::new(),
            imported: HashMap::new(),
            fetcher: None,
            imported_used: Mutex::default(),
            fetched: Mutex::default(),
            inline_cache: false,
            store,
            contexts,
            images,
            options,
            progress,
            secrets: BTreeMap::new(),
            ssh: BTreeMap::new(),
            proxy_env: Vec::new(),
            cancel: rbuild_sandbox::Cancel::default(),
            rootless: rbuild_sandbox::running_in_user_namespace(),
        }
    }

    /// Secrets RUN --mount=type=secret can use.
    pub fn with_secrets(mut self, secrets: BTreeMap<String, Vec<u8>>) -> Self {
        self.secrets = secrets;
        self
    }

    /// Cache entries from `--cache-from`, consulted when the store has no
    /// entry for a key; `fetcher` gets a reused layer's blob once a step,
    /// or the image, needs its content.
    pub fn with_cache_import(
        mut self,
        entries: HashMap<String, ImportedEntry>,
        fetcher: LayerFetcher,
    ) -> Self {
        self.imported = entries;
        self.fetcher = Some(fetcher);
        self
    }

    /// Puts the cache of the image's own steps into its config.
    pub fn with_inline_cache(mut self, inline: bool) -> Self {
        self.inline_cache = inline;
        self
    }

    /// The imported layers this build fetched, in order.
    pub fn fetched_layers(&self) -> Vec<rbuild_cache::Digest> {
        self.fetched.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Fetches the blobs of reused imported layers among `layers` that the
    /// store lacks, and records their entries in the local cache.
    pub fn ensure_local(&self, layers: &[LayerDescriptor]) -> Result<()> {
        let Some(fetcher) = &self.fetcher else {
            return Ok(());
        };
        for l in layers {
            if layer::layer_available(&self.store, l) {
                continue;
            }
            let key = self
                .imported_used
                .lock()
                .ok()
                .and_then(|m| m.get(&l.digest).cloned());
            let Some(key) = key else { continue };
            fetcher(l).map_err(|e| {
                ExecError::User(format!("fetching cached layer {} failed: {e}", l.digest))
            })?;
            if let Ok(mut f) = self.fetched.lock() {
                f.push(l.digest.clone());
            }
            if let Some(e) = self.imported.get(&key) {
                self.record(&key, Some(l), e.created, &e.description)?;
            }
        }
        Ok(())
    }

    /// ssh agent sockets for `RUN --mount=type=ssh`, by id.
    pub fn with_ssh(mut self, ssh: BTreeMap<String, std::path::PathBuf>) -> Self {
        self.ssh = ssh;
        self
    }

    /// Proxy environment added to every RUN (from proxy build args).
    pub fn with_proxy_env(mut self, env: Vec<String>) -> Self {
        self.proxy_env = env;
        self
    }

    /// Ops to run again even when the cache has them (`--no-cache-filter`);
    /// what depends on them runs again too.
    pub fn with_no_cache_ops(mut self, ops: BTreeSet<OpId>) -> Self {
        self.no_cache_ops = ops;
        self
    }

    /// The token that stops running containers.
    pub fn cancel_token(&self) -> rbuild_sandbox::Cancel {
        self.cancel.clone()
    }

    /// The cache-key index.
    pub fn index(&self) -> &CacheIndex {
        &self.index
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// An image the solver knows by reference.
    pub fn image(&self, reference: &str) -> Option<&Arc<StoredImage>> {
        self.images.get(reference)
    }

    /// A named context.
    pub fn context(&self, name: &str) -> Option<&NamedInput> {
        self.contexts.get(name)
    }

    /// Runs every op `root` needs.
    pub fn solve(self: &Arc<Self>, graph: &Arc<Graph>, root: OpId) -> Result<Solved> {
        let closure = graph.closure(root);
        let keys = Arc::new(self.plan_keys(graph, &closure)?);
        let needed = self.plan_needed(graph, root, &closure, &keys);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.options.jobs.clamp(1, 64))
            .enable_all()
            .build()
            .map_err(ExecError::Io)?;
        let this = Arc::clone(self);
        let graph = Arc::clone(graph);
        let result = runtime.block_on(async move {
            match Arc::clone(&this)
                .schedule(Arc::clone(&graph), needed, Arc::clone(&keys))
                .await
            {
                // A step expected from the cache was not there after all:
                // solve everything it could need.
                Err(ExecError::Replan) => this.schedule(graph, closure, keys).await,
                other => other,
            }
        });
        // Reused entries count as used even when the build failed later.
        let hits = self.hits.lock().map(|h| h.clone()).unwrap_or_default();
        if let Err(e) = self.index.touch(&hits, self.options.now) {
            self.progress.event(Event::Warning {
                message: format!("could not record cache use: {e}"),
            });
        }
        result
    }

    /// The cache key of every op in `ops` (a closure, inputs first),
    /// computed without running any op: keys depend on inputs' keys, and
    /// on build contexts, which are at hand.
    fn plan_keys(&self, graph: &Graph, ops: &[OpId]) -> Result<Vec<Option<String>>> {
        let n = graph.ops.len();
        let mut keys: Vec<Option<String>> = vec![None; n];
        let mut contexts: Vec<Option<Value>> = vec![None; n];
        for &op in ops {
            let o = &graph.ops[op];
            let inputs: Vec<Value> = o
                .inputs
                .iter()
                .map(|&i| {
                    contexts[i]
                        .clone()
                        .unwrap_or_else(|| Value::Fs(FsState::default()))
                })
                .collect();
            let input_keys: Vec<String> = o
                .inputs
                .iter()
                .map(|&i| keys[i].clone().unwrap_or_default())
                .collect();
            keys[op] = Some(self.key_of(o, &inputs, &input_keys)?);
            if let OpKind::Context(c) = &o.kind {
                if let Some(NamedInput::Dir(source)) = self.contexts.get(&c.name) {
                    contexts[op] = Some(Value::Context(Arc::clone(source)));
                }
            }
        }
        Ok(keys)
    }

    /// The ops to solve for `root`, looked at from the top, as BuildKit
    /// does: a step the cache has needs its base (for its layers) but not
    /// its other inputs (the stage a `COPY --from` reads, a mount's
    /// source) when solving those would run anything. Inputs that are all
    /// cache hits are solved anyway: they cost nothing and show as CACHED.
    fn plan_needed(
        &self,
        graph: &Graph,
        root: OpId,
        closure: &[OpId],
        keys: &[Option<String>],
    ) -> Vec<OpId> {
        if self.options.no_cache {
            return closure.to_vec();
        }
        let n = graph.ops.len();
        let mut forced = vec![false; n];
        let mut hit = vec![false; n];
        let mut cheap = vec![false; n];
        for &op in closure {
            let o = &graph.ops[op];
            forced[op] = self.no_cache_ops.contains(&op) || o.inputs.iter().any(|&i| forced[i]);
            let cacheable = matches!(o.kind, OpKind::File(_) | OpKind::Exec(_));
            hit[op] = cacheable && !forced[op] && keys[op].as_deref().is_some_and(|k| self.peek(k));
            let free = match o.kind {
                OpKind::Scratch | OpKind::Image(_) | OpKind::Context(_) | OpKind::Merge => true,
                OpKind::File(_) | OpKind::Exec(_) => hit[op],
                OpKind::Http(_) | OpKind::Git(_) => false,
            };
            cheap[op] = free && o.inputs.iter().all(|&i| cheap[i]);
        }
        let mut needed = BTreeSet::new();
        let mut stack = vec![root];
        while let Some(op) = stack.pop() {
            if !needed.insert(op) {
                continue;
            }
            let inputs = &graph.ops[op].inputs;
            if hit[op] {
                for (pos, &i) in inputs.iter().enumerate() {
                    if pos == 0 || cheap[i] {
                        stack.push(i);
                    }
                }
            } else {
                stack.extend(inputs.iter().copied());
            }
        }
        needed.into_iter().collect()
    }

    /// Whether the cache (local, or imported) has `key`, without checking
    /// its blob's content (the real lookup does).
    fn peek(&self, key: &str) -> bool {
        if self.imported.contains_key(key) {
            return true;
        }
        match self.index.get(key) {
            Ok(Some(entry)) => entry
                .layer
                .as_ref()
                .is_none_or(|l| layer::layer_available(&self.store, l)),
            _ => false,
        }
    }

    async fn schedule(
        self: Arc<Self>,
        graph: Arc<Graph>,
        needed: Vec<OpId>,
        keys: Arc<Vec<Option<String>>>,
    ) -> Result<Solved> {
        let n = graph.ops.len();
        let mut solved = Solved {
            values: vec![None; n],
            added: vec![None; n],
            keys: vec![None; n],
            cached: vec![false; n],
            times: vec![None; n],
            created: vec![None; n],
        };
        // Ops that must not come from the cache: those named by
        // --no-cache-filter and everything built on them.
        let mut forced = vec![false; n];
        let mut waiting: BTreeMap<OpId, usize> = BTreeMap::new();
        let mut dependents: Vec<Vec<OpId>> = vec![Vec::new(); n];
        let is_needed: BTreeSet<OpId> = needed.iter().copied().collect();
        for &op in &needed {
            let mut inputs = graph.ops[op].inputs.clone();
            inputs.retain(|i| is_needed.contains(i));
            inputs.sort_unstable();
            inputs.dedup();
            for &i in &inputs {
                dependents[i].push(op);
            }
            waiting.insert(op, inputs.len());
        }
        let mut ready: Vec<OpId> = waiting
            .iter()
            .filter(|(_, &w)| w == 0)
            .map(|(&op, _)| op)
            .collect();
        let semaphore = Arc::new(tokio::sync::Semaphore::new(self.options.jobs.max(1)));
        let mut running = tokio::task::JoinSet::new();
        let mut done = 0;
        while done < needed.len() {
            for op in ready.drain(..) {
                // Inputs left out by the plan get a stand-in: the op is
                // expected to be a cache hit, which never reads them.
                let mut partial = false;
                let inputs: Vec<Value> = graph.ops[op]
                    .inputs
                    .iter()
                    .map(|&i| match solved.values[i].clone() {
                        Some(v) => Ok(v),
                        None if !is_needed.contains(&i) => {
                            partial = true;
                            Ok(Value::Fs(FsState::default()))
                        }
                        None => Err(ExecError::Internal(format!("input {i} of {op} not ready"))),
                    })
                    .collect::<Result<_>>()?;
                let key = keys[op].clone().unwrap_or_default();
                forced[op] = self.no_cache_ops.contains(&op)
                    || graph.ops[op].inputs.iter().any(|&i| forced[i]);
                let ignore_cache = forced[op];
                let this = Arc::clone(&self);
                let graph = Arc::clone(&graph);
                let permit = Arc::clone(&semaphore);
                running.spawn(async move {
                    let _permit = permit.acquire_owned().await;
                    let result = tokio::task::spawn_blocking(move || {
                        this.run_op(&graph, op, inputs, key, ignore_cache, partial)
                    })
                    .await;
                    (op, result)
                });
            }
            let joined = tokio::select! {
                joined = running.join_next() => joined,
                _ = tokio::signal::ctrl_c() => {
                    // Kill every container's pid namespace, then stop.
                    self.cancel.cancel();
                    running.abort_all();
                    return Err(ExecError::User("build cancelled".into()));
                }
            };
            let Some(joined) = joined else {
                return Err(ExecError::Internal("the scheduler ran out of work".into()));
            };
            let (op, result) =
                joined.map_err(|e| ExecError::Internal(format!("op task failed: {e}")))?;
            let Outcome {
                value,
                added,
                key,
                cached,
                times,
                created,
            } = match result {
                Ok(Ok(v)) => v,
                Ok(Err(ExecError::Replan)) => {
                    // Not a failure: let what runs finish (its results are
                    // cached for the new solve), then start over.
                    while running.join_next().await.is_some() {}
                    return Err(ExecError::Replan);
                }
                Ok(Err(e)) => {
                    // One op failed: stop the containers of the others.
                    self.cancel.cancel();
                    running.abort_all();
                    return Err(e);
                }
                Err(e) => {
                    self.cancel.cancel();
                    running.abort_all();
                    return Err(ExecError::Internal(format!("op panicked: {e}")));
                }
            };
            solved.values[op] = Some(value);
            solved.added[op] = added;
            solved.keys[op] = Some(key);
            solved.cached[op] = cached;
            solved.times[op] = Some(times);
            solved.created[op] = Some(created);
            done += 1;
            for &d in &dependents[op] {
                if let Some(w) = waiting.get_mut(&d) {
                    *w -= 1;
                    if *w == 0 {
                        ready.push(d);
                    }
                }
            }
        }
        Ok(solved)
    }

    fn run_op(
        &self,
        graph: &Graph,
        op: OpId,
        inputs: Vec<Value>,
        key: String,
        ignore_cache: bool,
        partial: bool,
    ) -> Result<Outcome> {
        let o = &graph.ops[op];
        let shown = !o.meta.name.is_empty();
        let started = Instant::now();
        let started_at = SystemTime::now();
        if shown {
            self.progress.event(Event::Started {
                op,
                name: o.meta.name.clone(),
            });
        }
        let result = self
            .run_cached(op, o, &inputs, key, ignore_cache, partial)
            .map(|mut outcome| {
                outcome.times = (started_at, SystemTime::now());
                outcome
            });
        if shown {
            match &result {
                Ok(outcome) => self.progress.event(Event::Done {
                    op,
                    elapsed: started.elapsed(),
                    cached: outcome.cached,
                }),
                Err(ExecError::Replan) => self.progress.event(Event::Log {
                    op,
                    line: "not in the cache after all: solving what it needs".into(),
                }),
                Err(e) => self.progress.event(Event::Failed {
                    op,
                    error: e.to_string(),
                }),
            }
        }
        result.map_err(|e| match e {
            ExecError::Op { .. } | ExecError::Replan => e,
            e if shown => ExecError::Op {
                name: o.meta.name.clone(),
                source: Box::new(e),
            },
            e => e,
        })
    }

    /// An op's cache key: its definition digest, its inputs' keys, and for
    /// file ops (and bind mounts of contexts) the checksums of what they
    /// read from build contexts. Needs the values of context inputs only.
    fn key_of(
        &self,
        o: &crate::graph::Op,
        inputs: &[Value],
        input_keys: &[String],
    ) -> Result<String> {
        let kind = &o.kind;
        let mut h = sha2::Sha256::new();
        let mut put = |b: &[u8]| {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        };
        put(b"rbuild cache key v1");
        put(o.digest.as_str().as_bytes());
        for k in input_keys {
            put(k.as_bytes());
        }
        if let OpKind::Image(src) = kind {
            if let Some(image) = self.images.get(&src.reference) {
                put(image.manifest.digest.as_str().as_bytes());
            }
        }
        if let OpKind::Context(c) = kind {
            if let Some(NamedInput::Image(image)) = self.contexts.get(&c.name) {
                put(image.manifest.digest.as_str().as_bytes());
            }
        }
        if let OpKind::File(file) = kind {
            let views: Vec<FsView> = inputs.iter().map(|_| FsView::default()).collect();
            let sources = self.sources(inputs, &views);
            for sum in fileop::content_key(&sources, &file.actions)? {
                put(sum.as_bytes());
            }
        }
        if let OpKind::Exec(exec) = kind {
            // A bind mount of a build context reads its files: their
            // content is part of the key (a secret's never is).
            for m in &exec.mounts {
                if let crate::graph::MountKind::Bind { input, source, .. } = &m.kind {
                    if let Some(Value::Context(ctx)) = inputs.get(*input) {
                        put(&context_checksum(ctx.as_ref(), source)?);
                    }
                }
            }
        }
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// Runs an op, or reuses its result when the cache has `key`. With
    /// `partial`, some inputs were not solved (only a cache hit was
    /// expected): a miss is [`ExecError::Replan`].
    #[allow(clippy::too_many_arguments)]
    fn run_cached(
        &self,
        op: OpId,
        o: &crate::graph::Op,
        inputs: &[Value],
        key: String,
        ignore_cache: bool,
        partial: bool,
    ) -> Result<Outcome> {
        let kind = &o.kind;
        let digest = o.digest.as_str();
        let cacheable = matches!(kind, OpKind::File(_) | OpKind::Exec(_));
        let now = SystemTime::now();
        if cacheable && !self.options.no_cache && !ignore_cache {
            match self.index.lookup(&self.store, &key)? {
                Lookup::Hit {
                    layer: added,
                    created,
                } => {
                    if let Ok(mut hits) = self.hits.lock() {
                        hits.push(key.clone());
                    }
                    return Ok(reused(inputs, added, key, created, now));
                }
                Lookup::Broken(why) => self.progress.event(Event::Log {
                    op,
                    line: format!("cache entry unusable ({why}): running the step again"),
                }),
                Lookup::Miss => {}
            }
            if let Some(e) = self.imported.get(&key) {
                if let Some(l) = &e.layer {
                    if let Ok(mut used) = self.imported_used.lock() {
                        used.insert(l.digest.clone(), key.clone());
                    }
                } else {
                    // Nothing to fetch: the entry is as good as local.
                    self.record(&key, None, e.created, &e.description)?;
                }
                return Ok(reused(inputs, e.layer.clone(), key, e.created, now));
            }
        }
        if partial {
            return Err(ExecError::Replan);
        }
        let (value, added) = self.execute(op, kind, digest, inputs)?;
        if cacheable {
            self.record(&key, added.as_ref(), self.options.now, &o.meta.name)?;
            if let Some(l) = &added {
                // Just written and hashed: known good as its file is now.
                self.index.record_verified(&self.store, &l.digest)?;
            }
        }
        Ok(Outcome {
            value,
            added,
            key,
            cached: false,
            times: (now, now),
            created: self.options.now,
        })
    }

    /// Stores the cache entry `key` → `layer`, used now, stamped with its
    /// blob's file as it is (none for a layer kept as a snapshot).
    fn record(
        &self,
        key: &str,
        layer: Option<&LayerDescriptor>,
        created: i64,
        description: &str,
    ) -> Result<()> {
        let entry = index::Entry {
            stamp: layer.and_then(|l| FileStamp::of(&self.store.blob_path(&l.digest))),
            layer: layer.cloned(),
            created,
            last_used: self.options.now,
            description: description.to_string(),
        };
        Ok(self.index.put(key, &entry)?)
    }

    /// The inputs of a file op as COPY sources.
    fn sources<'a>(&self, inputs: &'a [Value], views: &'a [FsView]) -> Vec<fileop::Input<'a>> {
        inputs
            .iter()
            .zip(views)
            .map(|(value, view)| match value {
                Value::Fs(_) => fileop::Input {
                    source: view as &dyn Source,
                    is_context: false,
                },
                Value::Context(ctx) => fileop::Input {
                    source: ctx.as_ref(),
                    is_context: true,
                },
            })
            .collect()
    }

    /// Runs op `op`; `lineage` (its definition's digest) finds what the
    /// same op wrote last time.
    fn execute(
        &self,
        op: OpId,
        kind: &OpKind,
        lineage: &str,
        inputs: &[Value],
    ) -> Result<(Value, Option<LayerDescriptor>)> {
        let fs_input = |i: usize| -> Result<FsState> {
            match inputs.get(i) {
                Some(Value::Fs(fs)) => Ok(fs.clone()),
                Some(Value::Context(_)) => Err(ExecError::Internal(format!(
                    "input {i} is a context, not a filesystem"
                ))),
                None => Err(ExecError::Internal(format!("missing input {i}"))),
            }
        };
        match kind {
            OpKind::Scratch => Ok((Value::Fs(FsState::default()), None)),
            OpKind::Image(src) => {
                let image = self.images.get(&src.reference).ok_or_else(|| {
                                        ExecError::User(format!(
                        "image {} is not in the local store (pull it with `rbuild pull {}`, or give it with --build-context NAME=oci-layout://DIR)",
                        src.reference, src.reference
                    ))
                })?;
                Ok((
                    Value::Fs(FsState {
                        layers: image.layers.clone(),
                    }),
                    None,
                ))
            }
            OpKind::Context(c) => match self.contexts.get(&c.name) {
                Some(NamedInput::Dir(source)) => Ok((Value::Context(Arc::clone(source)), None)),
                Some(NamedInput::Image(image)) => Ok((
                    Value::Fs(FsState {
                        layers: image.layers.clone(),
                    }),
                    None,
                )),
                None => Err(ExecError::User(format!(
                    "build context {:?} was not provided",
                    c.name
                ))),
            },
            OpKind::Merge => {
                let mut layers = Vec::new();
                for i in 0..inputs.len() {
                    layers.extend(fs_input(i)?.layers);
                }
                Ok((Value::Fs(FsState { layers }), None))
            }
            OpKind::File(file) => {
                let base = fs_input(0)?;
                let dest = self.view(&base)?;
                let mut views: Vec<FsView> = Vec::new();
                for value in inputs {
                    views.push(match value {
                        Value::Fs(fs) => self.view(fs)?,
                        Value::Context(_) => FsView::default(),
                    });
                }
                let sources = self.sources(inputs, &views);
                // A failure to read or record the lineage only costs links.
                let previous = self.index.lineage(lineage).ok().flatten();
                let env = fileop::FileOpEnv {
                    store: &self.store,
                    epoch: self.options.epoch,
                    now: self.options.now,
                    previous: previous.as_ref(),
                };
                let added = fileop::run(env, &dest, &sources, &file.actions)?;
                if let Some(l) = &added {
                    let _ = self.index.set_lineage(lineage, &l.diff_id);
                }
                let mut layers = base.layers;
                layers.extend(added.clone());
                Ok((Value::Fs(FsState { layers }), added))
            }
            OpKind::Exec(exec) => self.run_exec(op, exec, inputs),
            OpKind::Git(g) => Err(ExecError::Unsupported(format!(
                "ADD of a git repository ({})",
                g.remote
            ))),
            OpKind::Http(h) => {
                let layer = http::fetch(&self.store, h, self.options.now, self.options.epoch)?;
                Ok((
                    Value::Fs(FsState {
                        layers: vec![layer.clone()],
                    }),
                    Some(layer),
                ))
            }
        }
    }

    /// The union view of a filesystem, unpacking layers that have no
    /// snapshot yet.
    pub fn view(&self, fs: &FsState) -> Result<FsView> {
        self.ensure_local(&fs.layers)?;
        let mut roots = Vec::with_capacity(fs.layers.len());
        let mut implicit = Vec::with_capacity(fs.layers.len());
        for l in &fs.layers {
            roots.push(layer::snapshot(&self.store, l)?);
            let info = layer::snapshot_info(&self.store, &l.diff_id);
            implicit.push(
                info.map(|i| i.implicit_dirs.into_iter().collect())
                    .unwrap_or_default(),
            );
        }
        Ok(FsView::with_implicit(roots, implicit))
    }
}
