//! `rbuild build`: read the Dockerfile, check it, lower it, and (with
//! `--call`) report on it.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::collections::BTreeMap;
use std::sync::Arc;

use rbuild_cache::Store;
use rbuild_frontend::{lower, Dockerfile, Lowered, NoImages, Options, SourceFile};
use rbuild_solver::context::{ChecksumMemo, Context, DockerIgnore};
use rbuild_solver::exec::source::{ContextSource, Source};
use rbuild_solver::exec::{NamedInput, SolveOptions, StoredImage};
use rbuild_solver::graph::{NetworkMode, Platform};

use crate::cli::{BuildArgs, Call, Cli, NetworkArg, Progress};
use crate::diagnostic::{render_error, render_warning};
use crate::images::{images_for, LocalImages};
use crate::options;
use crate::remote::Remote;
use crate::Failure;

/// Runs `rbuild build`.
pub fn run(cli: &Cli, args: &BuildArgs) -> Result<ExitCode, Failure> {
    let checked = check_flags(cli, args)?;
    let call = if args.check { Call::Check } else { args.call };
    // The store is opened when the build needs it (to build, to unpack a
    // context from stdin, to import images named as contexts) or when it
    // already exists (so --call=graph sees the base images a build would).
    let needs_store = call == Call::Build
        || args.context == "-"
        || checked
            .contexts
            .values()
            .any(|c| !matches!(c, options::ContextValue::Path(_)));
    let store = if needs_store || checked.root.join("index.json").exists() {
        Some(Arc::new(Store::open(&checked.root).map_err(|e| {
            Failure::failed(format!(
                "cannot open the store at {}: {e}",
                checked.root.display()
            ))
        })?))
    } else {
        None
    };
    // A build keeps the collector away from what it uses until it ends.
    let lease = match (&store, call) {
        (Some(store), Call::Build) => Some(crate::manage::lease(store)?),
        _ => None,
    };
    let input = read_input(args, store.as_deref())?;
    let source = &input.dockerfile;
    let dockerfile = rbuild_frontend::parse(source.text())
        .map_err(|e| Failure::rendered(render_error(source, &e)))?;

    if call == Call::Targets {
        print_targets(&dockerfile);
        return Ok(ExitCode::SUCCESS);
    }

    let platform = checked
        .options
        .target_platform
        .clone()
        .unwrap_or_else(Platform::host);
    let quiet = args.quiet || args.progress == Progress::Quiet;
    let plain = if call == Call::Build && (!quiet || args.logfile.is_some()) {
        use crate::progress::Shown;
        use std::io::IsTerminal;
        let terminal =
            std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let shown = match args.progress {
            _ if quiet => Shown::Nothing,
            Progress::Json => Shown::Json,
            Progress::Tty => Shown::Tty,
            Progress::Auto if terminal => Shown::Tty,
            _ => Shown::Text,
        };
        let plain = crate::progress::Plain::with(shown, args.logfile.as_deref()).map_err(|e| {
            let path = args.logfile.as_deref().unwrap_or(std::path::Path::new("?"));
            Failure::usage(format!("cannot write the log file {}: {e}", path.display()))
        })?;
        Some(Arc::new(plain))
    } else {
        None
    };
    // Only a real build talks to registries: --call=check|graph|targets
    // answer from what is local.
    let remote = match (&store, call) {
        (Some(store), Call::Build) => Some(Remote::new(
            Arc::clone(store),
            &checked.insecure,
            plain.clone(),
        )?),
        _ => None,
    };
    let mut resolver = store
        .as_deref()
        .map(|s| LocalImages::new(s, remote.as_ref(), args.pull));
    if let Some(resolver) = resolver.as_mut() {
        resolver.named = named_inputs(resolver, &checked.contexts, &platform)?;
    }
    let lowered = match &resolver {
        Some(resolver) => lower(&dockerfile, &checked.options, resolver),
        None => lower(&dockerfile, &checked.options, &NoImages),
    }
    .map_err(|e| Failure::rendered(render_error(source, &e)))?;

    match call {
        Call::Check => Ok(print_check(source, &lowered)),
        Call::Graph => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &lowered.graph)
                .map_err(|e| Failure::failed(format!("writing the graph: {e}")))?;
            let _ = writeln!(out);
            Ok(ExitCode::SUCCESS)
        }
        Call::Targets => unreachable!("handled before lowering"),
        Call::Build => {
            print_warnings(source, &lowered);
            fail_on_lint_errors(&lowered)?;
            let (Some(store), Some(resolver)) = (store.clone(), resolver) else {
                return Err(Failure::failed("the store is not open"));
            };
            let result = build(
                args,
                &checked,
                Arc::clone(&store),
                input,
                resolver,
                lowered,
                Output {
                    quiet,
                    plain,
                    remote: remote.as_ref(),
                },
            );
            drop(lease);
            if let Ok((_, true)) = &result {
                crate::housekeeping::auto_gc(&store);
            }
            result.map(|(code, _)| code)
        }
    }
}

/// Where a build's progress and pushes go.
struct Output<'a> {
    quiet: bool,
    plain: Option<Arc<crate::progress::Plain>>,
    remote: Option<&'a Remote>,
}

/// Solves the graph, then tags and exports the image.
fn build(
    args: &BuildArgs,
    checked: &CheckedFlags,
    store: Arc<Store>,
    input: Input,
    mut resolver: LocalImages<'_>,
    lowered: Lowered,
    output: Output<'_>,
) -> Result<(ExitCode, bool), Failure> {
    let Output {
        quiet,
        plain,
        remote,
    } = output;
    let progress: Arc<dyn rbuild_solver::exec::progress::Progress> = match &plain {
        Some(p) => p.clone(),
        None => Arc::new(crate::progress::Quiet),
    };
    let images = images_for(&resolver, &lowered.graph).map_err(Failure::failed)?;
    let mut named = std::mem::take(&mut resolver.named);
    if let Some(ctx) = input.context {
        named.insert("context".into(), NamedInput::Dir(ctx));
    }
    let epoch = match checked.options.build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) => Some(v.trim().parse::<i64>().map_err(|_| {
            Failure::usage(format!(
                "invalid SOURCE_DATE_EPOCH {v:?}: expected seconds since 1970"
            ))
        })?),
        None => None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    // What reading build contexts cost, for --metadata-file: a rebuild of
    // an unchanged context should hash nothing.
    let context_stats = || {
        let mut stats = serde_json::Map::new();
        if let Ok(memos) = MEMOS.lock() {
            let mut t = (0u64, 0u64, 0u64, 0u64);
            for m in memos.iter() {
                let c = m.counters().snapshot();
                t.0 += c.files_hashed;
                t.1 += c.bytes_read;
                t.2 += c.memo_hits;
                t.3 += c.stat_calls;
            }
            stats.insert("files_hashed".into(), t.0.into());
            stats.insert("bytes_read".into(), t.1.into());
            stats.insert("memo_hits".into(), t.2.into());
            stats.insert("stat_calls".into(), t.3.into());
        }
        serde_json::Value::Object(stats)
    };
    // Agents started for key files live until the build is over.
    let agents = crate::ssh::agents(&checked.ssh)?;
    let plan = crate::execute::BuildPlan {
        store,
        contexts: named,
        images,
        tags: &args.tags,
        outputs: &checked.outputs,
        iidfile: args.iidfile.clone(),
        secrets: load_secrets(&checked.secrets)?,
        ssh: agents.sockets.clone(),
        cache_from: &checked.cache_from,
        cache_to: &checked.cache_to,
        metadata_file: args.metadata_file.clone(),
        solve: SolveOptions {
            jobs,
            epoch,
            now,
            no_cache: args.no_cache,
        },
        progress,
        plain,
        remote,
        push: args.push,
        no_cache_filter: &args.no_cache_filter,
    };
    let result = crate::execute::run(plan, lowered.graph, &context_stats);
    // Checksums learnt during the build are kept even if it failed.
    if let Ok(memos) = MEMOS.lock() {
        for memo in memos.iter() {
            if let Err(e) = memo.save() {
                eprintln!("warning: could not save the context checksum memo: {e}");
            }
        }
    }
    let result = result?;
    if quiet {
        println!("{}", result.image_id);
    } else {
        if args.progress == Progress::Json {
            eprintln!(
                "{}",
                serde_json::json!({"event": "result", "image": result.image_id})
            );
        } else {
            eprintln!("built {}", result.image_id);
        }
    }
    Ok((ExitCode::SUCCESS, result.wrote))
}

/// Reads `--secret` values (files or environment variables) into memory;
/// they go to RUN through a tmpfs, never to disk or a cache key.
fn load_secrets(specs: &[options::SecretSpec]) -> Result<BTreeMap<String, Vec<u8>>, Failure> {
    let mut out = BTreeMap::new();
    for s in specs {
        let value = match &s.source {
            options::SecretSource::File(path) => std::fs::read(path).map_err(|e| {
                Failure::usage(format!("--secret id={}: cannot read {path}: {e}", s.id))
            })?,
            options::SecretSource::Env(var) => std::env::var_os(var)
                .map(|v| v.into_encoded_bytes())
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "--secret id={}: environment variable {var} is not set",
                        s.id
                    ))
                })?,
        };
        out.insert(s.id.clone(), value);
    }
    Ok(out)
}

/// Resolves `--build-context` values: directories become contexts, OCI
/// layouts are imported into the store as images.
fn named_inputs(
    resolver: &LocalImages<'_>,
    contexts: &BTreeMap<String, options::ContextValue>,
    platform: &Platform,
) -> Result<BTreeMap<String, NamedInput>, Failure> {
    let store = resolver.store;
    let mut out = BTreeMap::new();
    for (name, value) in contexts {
        let input = match value {
            options::ContextValue::Path(dir) => {
                let dir = PathBuf::from(dir);
                let ctx = open_context(&dir, None, Some(store))?;
                NamedInput::Dir(ctx)
            }
            options::ContextValue::OciLayout(spec) => {
                let (path, reference) = split_layout_spec(spec);
                let image = StoredImage::import_layout(store, Path::new(&path), reference.as_deref(), platform)
                    .map_err(|e| Failure::failed(format!("--build-context {name}=oci-layout://{spec}: {e}")))?;
                NamedInput::Image(Arc::new(image))
            }
            options::ContextValue::Image(r) => {
                let reference = crate::images::normalize(r)
                    .ok_or_else(|| Failure::usage(format!("--build-context {name}: invalid image reference {r:?}")))?;
                                match resolver
                    .image(&reference, platform)
                    .map_err(|e| Failure::failed(format!("--build-context {name}=docker-image://{r}: {e}")))?
                {
                    Some(image) => NamedInput::Image(image),
                    None => {
                        return Err(Failure::failed(format!(
                            "--build-context {name}=docker-image://{r}: the image is not in the local store"
                        )))
                    }
                }
            }
            options::ContextValue::Url(u) => {
                return Err(Failure::usage(format!(
                    "--build-context {name}={u}: git and http contexts are not supported yet by this version of rbuild"
                )))
            }
        };
        out.insert(name.clone(), input);
    }
    Ok(out)
}

/// `DIR`, `DIR:TAG` or `DIR@sha256:…` (buildx's oci-layout:// syntax).
fn split_layout_spec(spec: &str) -> (String, Option<String>) {
    if let Some((path, digest)) = spec.split_once('@') {
        return (path.to_string(), Some(digest.to_string()));
    }
    // A tag follows the last ':' after the last '/'.
    let slash = spec.rfind('/').map_or(0, |i| i + 1);
    match spec[slash..].rfind(':') {
        Some(i) => (
            spec[..slash + i].to_string(),
            Some(spec[slash + i + 1..].to_string()),
        ),
        None => (spec.to_string(), None),
    }
}

/// Flag values after checking, and the flags whose feature is not there yet.
struct CheckedFlags {
    options: Options,
    cache_from: Vec<options::CacheSpec>,
    cache_to: Vec<options::CacheSpec>,
    secrets: Vec<options::SecretSpec>,
    ssh: Vec<options::SshSpec>,
    root: PathBuf,
    outputs: Vec<options::Output>,
    contexts: BTreeMap<String, options::ContextValue>,
    insecure: Vec<String>,
}

fn check_flags(cli: &Cli, args: &BuildArgs) -> Result<CheckedFlags, Failure> {
    let usage = |e: options::OptionError| Failure::usage(e.to_string());
    let mut build_args =
        options::build_args(&args.build_args, |k| std::env::var(k).ok()).map_err(usage)?;
    // buildx passes SOURCE_DATE_EPOCH from the environment as a build arg.
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        if !epoch.is_empty() {
            build_args
                .entry("SOURCE_DATE_EPOCH".into())
                .or_insert(epoch);
        }
    }
    let labels = options::labels(&args.labels).map_err(usage)?;
    let platform = options::platform(&args.platform).map_err(usage)?;
    let outputs = options::outputs(&args.outputs).map_err(usage)?;
    let cache_from = options::cache_specs("--cache-from", &args.cache_from).map_err(usage)?;
    let cache_to = options::cache_specs("--cache-to", &args.cache_to).map_err(usage)?;
    let secrets = options::secrets(&args.secret).map_err(usage)?;
    let ssh = options::ssh_specs(&args.ssh).map_err(usage)?;
    let contexts = options::build_contexts(&args.build_contexts).map_err(usage)?;
    if args.file.as_deref() == Some("-") && args.context == "-" {
        return Err(Failure::usage(
            "can't read both the build context and the Dockerfile from stdin (-f - with PATH -)",
        ));
    }
    if args.jobs == Some(0) {
        return Err(Failure::usage("--jobs must be at least 1"));
    }
    for tag in &args.tags {
        rbuild_frontend::reference::Reference::parse(tag)
            .map_err(|e| Failure::usage(format!("invalid tag {tag:?}: {e}")))?;
    }
    let root = store_root(cli)?;

    if cache_from.iter().any(|c| c.kind == "inline") {
        return Err(Failure::usage(
            "--cache-from type=inline: an image's inline cache is read with --cache-from type=registry,ref=IMAGE",
        ));
    }

    let options = Options {
        build_args,
        target: args.target.clone(),
        target_platform: platform,
        build_platform: Platform::host(),
        labels,
        named_contexts: contexts.keys().cloned().collect(),
        network: match args.network {
            NetworkArg::Default => NetworkMode::Default,
            NetworkArg::None => NetworkMode::None,
            NetworkArg::Host => NetworkMode::Host,
        },
    };
    let pushes = args.push
        || outputs.iter().any(|o| {
            o.kind == "registry"
                || (o.kind == "image" && o.attrs.get("push").is_some_and(|v| v == "true"))
        });
    let named = |o: &options::Output| o.attrs.get("name").is_some_and(|n| !n.trim().is_empty());
    if pushes && args.tags.is_empty() && !outputs.iter().any(named) {
        return Err(Failure::usage(
            "tag is needed when pushing to a registry: give -t NAME, or -o type=registry,name=NAME",
        ));
    }
    // Registries the outputs allow plain http for (buildx's
    // `registry.insecure=true`), besides --insecure-registry.
    let mut insecure = cli.insecure_registries.clone();
    for o in &outputs {
        if o.attrs
            .get("registry.insecure")
            .is_some_and(|v| v == "true")
        {
            for name in o
                .attrs
                .get("name")
                .map(String::as_str)
                .unwrap_or("")
                .split(',')
            {
                if let Ok(t) = crate::remote::target(name.trim()) {
                    insecure.push(t.registry);
                }
            }
        }
    }
    Ok(CheckedFlags {
        options,
        cache_from,
        cache_to,
        secrets,
        ssh,
        root,
        outputs,
        contexts,
        insecure,
    })
}

/// `--root`, else `$RBUILD_ROOT` (clap reads it), else the per-user default.
pub fn store_root(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(root) = &cli.root {
        // Snapshot paths become mount sources, which must be absolute.
        if root.is_relative() {
            let cwd = std::env::current_dir()
                .map_err(|e| Failure::failed(format!("cannot find the current directory: {e}")))?;
            return Ok(cwd.join(root));
        }
        return Ok(root.clone());
    }
    if running_as_root() {
        return Ok(PathBuf::from("/var/lib/rbuild"));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(data).join("rbuild"));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/rbuild")),
        None => Err(Failure::usage(
            "cannot find a store root: set --root or RBUILD_ROOT (HOME is not set)",
        )),
    }
}

/// Whether we run as uid 0, read from /proc so the binary needs no libc call.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Checksum memos opened for this build, saved when it ends.
static MEMOS: std::sync::Mutex<Vec<Arc<ChecksumMemo>>> = std::sync::Mutex::new(Vec::new());

/// The Dockerfile and the build context.
struct Input {
    dockerfile: SourceFile,
    context: Option<Arc<dyn Source>>,
}

/// Opens a context directory with its `.dockerignore` (or `dockerignore`
/// when given, for `<Dockerfile>.dockerignore`), using the store's checksum
/// memo when there is a store.
fn open_context(
    dir: &Path,
    dockerignore: Option<&Path>,
    store: Option<&Store>,
) -> Result<Arc<dyn Source>, Failure> {
    let ignore_path = dockerignore
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(".dockerignore"));
    let ignore = match std::fs::read_to_string(&ignore_path) {
        Ok(text) => DockerIgnore::parse(&text)
            .map_err(|e| Failure::failed(format!("{}: {e}", ignore_path.display())))?,
        Err(_) => DockerIgnore::empty(),
    };
    let mut ctx = Context::open(dir, ignore)
        .map_err(|e| Failure::failed(format!("build context {}: {e}", dir.display())))?;
    if let Some(store) = store {
        let memo = Arc::new(ChecksumMemo::open(&store.root().join("context-memo.redb")));
        if let Ok(mut memos) = MEMOS.lock() {
            memos.push(Arc::clone(&memo));
        }
        ctx = ctx.with_memo(memo);
    }
    Ok(Arc::new(ContextSource::new(ctx)))
}

fn read_input(args: &BuildArgs, store: Option<&Store>) -> Result<Input, Failure> {
    if args.context == "-" {
        let mut bytes = Vec::new();
        if args.file.as_deref() != Some("-") {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::failed(format!("reading stdin: {e}")))?;
        }
        if !looks_like_tar(&bytes) {
            // `docker build - < Dockerfile`: a Dockerfile and no context.
            let text = String::from_utf8(bytes)
                .map_err(|_| Failure::failed("the Dockerfile on stdin is not valid UTF-8"))?;
            if text.is_empty() {
                return Err(Failure::failed("the Dockerfile cannot be empty"));
            }
            return Ok(Input {
                dockerfile: SourceFile::new("Dockerfile", text),
                context: None,
            });
        }
        let store = store.ok_or_else(|| Failure::failed("the store is not open"))?;
        let dir = store.temp_path("context");
        let name = args.file.clone().unwrap_or_else(|| "Dockerfile".into());
        let extracted = Context::from_tar(std::io::Cursor::new(bytes), &dir, None, Some(&name))
            .map_err(|e| Failure::failed(format!("the build context on stdin: {e}")))?;
        let dockerfile = match extracted.dockerfile {
            Some(b) => String::from_utf8(b)
                .map_err(|_| Failure::failed(format!("{name} is not valid UTF-8")))?,
            None => {
                return Err(Failure::failed(format!(
                    "the build context on stdin has no {name}"
                )))
            }
        };
        let ctx = extracted
            .context
            .with_memo(Arc::new(ChecksumMemo::disabled()));
        return Ok(Input {
            dockerfile: SourceFile::new(name, dockerfile),
            context: Some(Arc::new(ContextSource::new(ctx))),
        });
    }
    let dir = PathBuf::from(&args.context);
    if !dir.is_dir() {
        return Err(Failure::usage(format!(
            "build context {:?} is not a directory (give a directory, or - to read from stdin)",
            dir.display().to_string()
        )));
    }
    let (dockerfile, dockerfile_path) = match args.file.as_deref() {
        Some("-") => (SourceFile::new("Dockerfile", read_stdin()?), None),
        Some(file) => {
            let path = PathBuf::from(file);
            (
                SourceFile::new(display_name(&path), read_file(&path)?),
                Some(path),
            )
        }
        None => {
            let path = dir.join("Dockerfile");
            (
                SourceFile::new(display_name(&path), read_file(&path)?),
                Some(path),
            )
        }
    };
    // BuildKit prefers `<Dockerfile>.dockerignore` next to the Dockerfile.
    let specific = dockerfile_path.map(|p| {
        let mut s = p.into_os_string();
        s.push(".dockerignore");
        PathBuf::from(s)
    });
    let specific = specific.filter(|p| p.is_file());
    let context = open_context(&dir, specific.as_deref(), store)?;
    Ok(Input {
        dockerfile,
        context: Some(context),
    })
}

fn display_name(path: &Path) -> String {
    let s = path.display().to_string();
    s.strip_prefix("./").map(str::to_string).unwrap_or(s)
}

fn read_file(path: &Path) -> Result<String, Failure> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Failure::failed(format!(
                "failed to read the Dockerfile: {} does not exist (use -f to name another file)",
                path.display()
            ))
        } else {
            Failure::failed(format!(
                "failed to read the Dockerfile {}: {e}",
                path.display()
            ))
        }
    })?;
    if bytes.is_empty() {
        return Err(Failure::failed(format!(
            "the Dockerfile cannot be empty ({})",
            path.display()
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        Failure::failed(format!(
            "the Dockerfile {} is not valid UTF-8",
            path.display()
        ))
    })
}

fn read_stdin() -> Result<String, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Failure::failed(format!("reading the Dockerfile from stdin: {e}")))?;
    Ok(text)
}

/// A tar has `ustar` at byte 257; compressed archives start with their magic.
fn looks_like_tar(bytes: &[u8]) -> bool {
    let compressed = bytes.starts_with(&[0x1f, 0x8b])
        || bytes.starts_with(b"BZh")
        || bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00])
        || bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    compressed || bytes.get(257..262) == Some(b"ustar")
}

fn print_targets(df: &Dockerfile) {
    let last = df.stages.len() - 1;
    let mut rows: Vec<(String, String)> = Vec::new();
    for (i, stage) in df.stages.iter().enumerate() {
        let Some(name) = &stage.from.name else {
            continue;
        };
        let mut desc = stage.comment.clone().unwrap_or_default();
        if i == last {
            desc = if desc.is_empty() {
                "(default)".into()
            } else {
                format!("{desc} (default)")
            };
        }
        rows.push((name.text.clone(), desc));
    }
    let width = rows
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0)
        .max("TARGET".len());
    let mut out = String::new();
    let _ = writeln!(out, "{:width$}  DESCRIPTION", "TARGET");
    for (name, desc) in rows {
        let _ = writeln!(out, "{name:width$}  {desc}");
    }
    if df.stages[last].from.name.is_none() {
        let _ = writeln!(
            out,
            "(the default target is the last stage, which has no name)"
        );
    }
    let trimmed: String = out.lines().map(|l| format!("{}\n", l.trim_end())).collect();
    print!("{trimmed}");
}

fn print_warnings(source: &SourceFile, lowered: &Lowered) {
    let mut err = std::io::stderr().lock();
    for w in &lowered.warnings {
        let _ = write!(err, "{}", render_warning(source, w));
    }
}

fn print_check(source: &SourceFile, lowered: &Lowered) -> ExitCode {
    let mut out = std::io::stdout().lock();
    for w in &lowered.warnings {
        let _ = write!(out, "{}", render_warning(source, w));
    }
    match lowered.warnings.len() {
        0 => {
            let _ = writeln!(out, "Check complete, no warnings found.");
            ExitCode::SUCCESS
        }
        n => {
            let plural = if n == 1 {
                "warning has"
            } else {
                "warnings have"
            };
            let _ = writeln!(out, "Check complete, {n} {plural} been found!");
            if std::io::stdout().is_terminal() {
                let _ = out.flush();
            }
            ExitCode::from(crate::EXIT_FAILED)
        }
    }
}

fn fail_on_lint_errors(lowered: &Lowered) -> Result<(), Failure> {
    if !lowered.warnings_are_errors || lowered.warnings.is_empty() {
        return Ok(());
    }
    let mut rules: Vec<&str> = lowered.warnings.iter().map(|w| w.rule).collect();
    rules.sort_unstable();
    rules.dedup();
    Err(Failure::failed(format!(
        "lint violation found for rules: {}",
        rules.join(", ")
    )))
}
