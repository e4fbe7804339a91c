//! Lowering: checked instructions → the build graph and per-stage image config.
//!
//! This is where Dockerfile semantics live: ARG scoping, which words expand
//! with which environment, how each instruction changes the image config
//! and history, which stages the target needs. The rules follow BuildKit's
//! Dockerfile frontend so that images built here match images built there.

use std::collections::{BTreeMap, BTreeSet};

use rbuild_solver::graph::{
    self, Base, CacheSharing, Chmod, ContextSource, Exec, FileAction, FileOp, Graph, GraphBuilder,
    Healthcheck as GraphHealthcheck, History, HttpSource, ImageConfig, ImageSource, Mount,
    MountKind, NetworkMode, OpId, OpKind, OpMeta, Owner, Platform, SecurityMode, SourceLocation,
};

use crate::error::{Error, Result, Warning};
use crate::gofmt;
use crate::instructions::{
    self, ArgDecl, Command, CommandLine, Copy, CopySource, Dockerfile, Healthcheck, Instruction,
    Run, Stage as DfStage,
};
use crate::lint::{self, LintConfig, Linter};
use crate::mounts::{self, MountSpec, MountType, Sharing};
use crate::parser::{self, Node, Word};
use crate::reference::Reference;
use crate::shell::{Env, Expanded, Lexer};
use crate::source::Span;

/// The `PATH` every Linux stage gets when its image config has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The comment BuildKit puts on every history entry it writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// What the build was asked for, beyond the Dockerfile.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `--platform`; the build platform when absent.
    pub target_platform: Option<Platform>,
    /// The platform rbuild runs on.
    pub build_platform: Platform,
    /// `--label`s, applied to the target stage's config.
    pub labels: BTreeMap<String, String>,
    /// Names given with `--build-context`.
    pub named_contexts: BTreeSet<String>,
    /// `--network`: the default network mode of RUN.
    pub network: NetworkMode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            build_args: BTreeMap::new(),
            target: None,
            target_platform: None,
            build_platform: Platform::host(),
            labels: BTreeMap::new(),
            named_contexts: BTreeSet::new(),
            network: NetworkMode::Default,
        }
    }
}

/// What the lowering knows about a base image.
#[derive(Debug, Clone, Default)]
pub struct ResolvedImage {
    /// Its config (inherited by the stage).
    pub config: ImageConfig,
    /// Its `author`.
    pub author: Option<String>,
}

/// Looks up base image configs. The frontend does no I/O itself; whoever
/// drives the build knows the store and the registries.
pub trait ImageResolver {
    /// The config of `reference` (normalised) for `platform`, or `None` when
    /// it cannot be known without building (then the stage starts from an
    /// empty config).
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> std::result::Result<Option<ResolvedImage>, String>;

    /// The config of the image a named build context (`--build-context
    /// NAME=oci-layout://…` or `docker-image://…`) provides, or `None` for a
    /// directory context.
    fn resolve_context(
        &self,
        _name: &str,
        _platform: &Platform,
    ) -> std::result::Result<Option<ResolvedImage>, String> {
        Ok(None)
    }
}

/// A resolver that knows no images.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoImages;

impl ImageResolver for NoImages {
    fn resolve(&self, _: &str, _: &Platform) -> std::result::Result<Option<ResolvedImage>, String> {
        Ok(None)
    }
}

/// The lowered build.
#[derive(Debug, Clone)]
pub struct Lowered {
    /// The build graph.
    pub graph: Graph,
    /// Build check findings.
    pub warnings: Vec<Warning>,
    /// True when `# check=error=true` turns the findings into a failure.
    pub warnings_are_errors: bool,
}

/// An ordered environment where setting a name moves it to the end, as
/// BuildKit's LLB state env does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EnvList(Vec<(String, String)>);

impl EnvList {
    fn set(&mut self, key: &str, value: &str) {
        self.0.retain(|(k, _)| k != key);
        self.0.push((key.to_string(), value.to_string()));
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

impl Env for EnvList {
    fn get(&self, name: &str) -> Option<&str> {
        EnvList::get(self, name)
    }
}

/// Where a stage reference (`FROM`, `COPY --from`, `--mount from=`) points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Stage(usize),
    Image(String),
    Context(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BaseKind {
    Scratch,
    Image(String),
    Stage(usize),
    Context(String),
}

/// A stage before dispatch.
struct Decl<'a> {
    df: &'a DfStage,
    name: Option<String>,
    /// `stage-N` for unnamed stages.
    display: String,
    base: BaseKind,
    platform: Option<Platform>,
    /// Commands to run: ONBUILD triggers of the base, then the stage's own.
    commands: Vec<(Instruction, bool)>,
    /// Stages this one copies or mounts from, with where it first does.
    deps: BTreeMap<usize, Span>,
    resolved: Option<ResolvedImage>,
}

/// The state of a stage while its instructions are dispatched.
#[derive(Clone)]
struct State {
    root: OpId,
    config: ImageConfig,
    author: Option<String>,
    history: Vec<History>,
    env: EnvList,
    build_args: Vec<(String, Option<String>)>,
    workdir: String,
    user: String,
    platform: Platform,
    workdir_set: bool,
    cmd_set: bool,
}

/// Lowers a checked Dockerfile.
pub fn lower(df: &Dockerfile, opts: &Options, resolver: &dyn ImageResolver) -> Result<Lowered> {
    Lowerer::new(df, opts, resolver)?.run()
}

struct Lowerer<'a> {
    df: &'a Dockerfile,
    opts: &'a Options,
    resolver: &'a dyn ImageResolver,
    lexer: Lexer,
    lint: Linter,
    g: GraphBuilder,
    global: EnvList,
    meta_keys: BTreeSet<String>,
    target_platform: Platform,
    context_op: Option<OpId>,
    scratch_op: Option<OpId>,
}

impl<'a> Lowerer<'a> {
    fn new(df: &'a Dockerfile, opts: &'a Options, resolver: &'a dyn ImageResolver) -> Result<Self> {
        let lint_config = match opts.build_args.get("BUILDKIT_DOCKERFILE_CHECK") {
            Some(v) => LintConfig::parse(v).map_err(|e| {
                Error::new(
                    format!("failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: {e}"),
                    Span::default(),
                )
            })?,
            None => match &df.ast.directives.check {
                // BuildKit reads the directive up to the first space.
                Some(d) => LintConfig::parse(d.value.split(' ').next().unwrap_or_default())
                    .map_err(|e| {
                        Error::new(format!("failed to parse check options: {e}"), d.span)
                    })?,
                None => LintConfig::default(),
            },
        };
        Ok(Lowerer {
            df,
            opts,
            resolver,
            lexer: Lexer::new(df.ast.escape),
            lint: Linter::new(lint_config),
            g: GraphBuilder::new(),
            global: EnvList::default(),
            meta_keys: BTreeSet::new(),
            target_platform: opts
                .target_platform
                .clone()
                .unwrap_or_else(|| opts.build_platform.clone()),
            context_op: None,
            scratch_op: None,
        })
    }

    fn run(mut self) -> Result<Lowered> {
        for w in &self.df.warnings {
            self.lint
                .report(&lint::NO_EMPTY_CONTINUATION, w.span, w.message.clone());
        }
        self.parse_time_lints();
        let target_name = self.opts.target.clone().or_else(|| {
            self.df
                .stages
                .last()
                .and_then(|s| s.from.name.as_ref().map(|n| n.text.clone()))
        });
        self.predefined_args(target_name.as_deref());
        self.meta_args()?;
        let mut decls = self.declare_stages()?;
        let target = self.find_target(&decls)?;
        self.collect_deps(&mut decls)?;
        let reachable = self.resolve_reachable(&mut decls, target)?;
        self.check_cycles(&decls)?;

        let single = decls.len() == 1;
        let mut states: BTreeMap<usize, State> = BTreeMap::new();
        let mut out_index: BTreeMap<usize, usize> = BTreeMap::new();
        let mut stages = Vec::new();
        for i in 0..decls.len() {
            if !reachable.contains(&i) {
                continue;
            }
            let state = self.dispatch_stage(&decls, i, &states, single)?;
            let base = match &decls[i].base {
                BaseKind::Scratch => Base::Scratch,
                BaseKind::Image(r) => Base::Image {
                    reference: r.clone(),
                },
                BaseKind::Stage(p) => Base::Stage {
                    stage: out_index[p],
                },
                BaseKind::Context(n) => Base::Context { name: n.clone() },
            };
            out_index.insert(i, stages.len());
            let mut config = state.config.clone();
            if i == target && !self.opts.labels.is_empty() {
                let labels = config.labels.get_or_insert_with(BTreeMap::new);
                labels.extend(self.opts.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            stages.push(graph::Stage {
                name: decls[i].name.clone(),
                index: i,
                base,
                platform: state.platform.clone(),
                root: state.root,
                config,
                author: state.author.clone(),
                history: state.history.clone(),
            });
            states.insert(i, state);
        }
        let target_out = out_index[&target];
        let warnings_are_errors = self.lint.config().error;
        let warnings = self.lint.finish();
        let mut graph = self.g.finish(stages, target_out);
        graph.proxy_env = proxy_env(&self.opts.build_args);
        Ok(Lowered {
            graph,
            warnings,
            warnings_are_errors,
        })
    }

    // ----- arguments -------------------------------------------------------

    fn predefined_args(&mut self, target_name: Option<&str>) {
        let build = &self.opts.build_platform;
        let target = self.target_platform.clone();
        let values = [
            ("BUILDPLATFORM", build.to_string()),
            ("BUILDOS", build.os.clone()),
            ("BUILDOSVERSION", String::new()),
            ("BUILDARCH", build.architecture.clone()),
            ("BUILDVARIANT", build.variant.clone().unwrap_or_default()),
            ("TARGETPLATFORM", target.to_string()),
            ("TARGETOS", target.os.clone()),
            ("TARGETOSVERSION", String::new()),
            ("TARGETARCH", target.architecture.clone()),
            ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
            (
                "TARGETSTAGE",
                target_name
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default")
                    .to_string(),
            ),
        ];
        for (k, v) in values {
            let v = self.opts.build_args.get(k).cloned().unwrap_or(v);
            self.global.set(k, &v);
        }
    }

    fn meta_args(&mut self) -> Result<()> {
        for instruction in &self.df.meta_args {
            let Command::Arg(decls) = &instruction.command else {
                continue;
            };
            for ArgDecl { name, default } in decls {
                self.meta_keys.insert(name.text.clone());
                let value = if let Some(v) = self.opts.build_args.get(&name.text) {
                    Some(v.clone())
                } else if let Some(default) = default {
                    let env = self.global.clone();
                    Some(self.expand(default, &env)?.value)
                } else {
                    None
                };
                if let Some(v) = value {
                    self.global.set(&name.text, &v);
                }
            }
        }
        Ok(())
    }

    // ----- stages ----------------------------------------------------------

    fn declare_stages(&mut self) -> Result<Vec<Decl<'a>>> {
        let mut decls: Vec<Decl<'a>> = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, st) in self.df.stages.iter().enumerate() {
            let from = &st.from;
            let env = self.global.clone();
            let base_exp = self.expand_in_from(&from.base, &env)?;
            if base_exp.value.is_empty() {
                return Err(Error::new(
                    format!("base name ({}) should not be blank", from.base.text),
                    from.base.span,
                ));
            }
            let platform = match &from.platform {
                None => None,
                Some(flag) => {
                    let word = Word {
                        text: flag.value.clone(),
                        span: flag.span,
                    };
                    let exp = self.lexer.expand_word(&flag.value, &env).map_err(|e| {
                        Error::new(
                            format!(
                                "failed to process arguments for platform {}: {}",
                                flag.value, e.message
                            ),
                            flag.span,
                        )
                    })?;
                    self.lint_from_vars(&exp, flag.span);
                    if exp.matched.len() == 1
                        && exp.unmatched.is_empty()
                        && exp.matched.contains("TARGETPLATFORM")
                        && exp.value == self.global.get("TARGETPLATFORM").unwrap_or_default()
                    {
                        self.lint.report(
                            &lint::REDUNDANT_TARGET_PLATFORM,
                            flag.span,
                            format!("Setting platform to predefined {} in FROM is redundant as this is the default behavior", word.text),
                        );
                    }
                    if exp.value.is_empty() {
                        return Err(Error::new(
                            format!("empty platform value from expression {}", flag.value),
                            flag.span,
                        ));
                    }
                    let p = Platform::parse(&exp.value).map_err(|e| {
                        Error::new(
                            format!("failed to parse platform {}: {e}", flag.value),
                            flag.span,
                        )
                        .with_help("use os/arch[/variant], e.g. linux/amd64 or linux/arm64")
                    })?;
                    if exp.matched.is_empty() && exp.unmatched.is_empty() {
                        let stage = from.name.as_ref().map(|n| n.text.as_str()).unwrap_or("");
                        if !stage.contains(&p.os) && !stage.contains(&p.architecture) {
                            self.lint.report(
                                &lint::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                                flag.span,
                                format!(
                                    "FROM --platform flag should not use constant value {:?}",
                                    flag.value
                                ),
                            );
                        }
                    }
                    Some(p)
                }
            };

            let name = from.name.as_ref().map(|n| n.text.clone());
            if let Some(n) = &from.name {
                if matches!(n.text.as_str(), "context" | "scratch") {
                    self.lint.report(
                        &lint::RESERVED_STAGE_NAME,
                        n.span,
                        format!(
                            "Stage name should not use the same name as reserved stage {:?}",
                            n.text
                        ),
                    );
                }
                if names.contains_key(&n.text) {
                    self.lint.report(
                        &lint::DUPLICATE_STAGE_NAME,
                        n.span,
                        format!(
                            "Duplicate stage name {:?}, stage names should be unique",
                            n.text
                        ),
                    );
                }
            }

            let base_value = base_exp.value;
            let lower = base_value.to_ascii_lowercase();
            // A named context with the stage's name replaces the whole stage.
            let replaced = name.as_ref().is_some_and(|n| {
                self.opts.named_contexts.contains(n) && n != "scratch" && n != "context"
            });
            // The base is looked up among earlier stages before this stage's
            // own name is registered, so with duplicate names it binds to the
            // latest earlier definition.
            let base = if replaced {
                BaseKind::Context(name.clone().unwrap_or_default())
            } else if let Some(&p) = names.get(&lower) {
                BaseKind::Stage(p)
            } else if lower == "scratch" {
                BaseKind::Scratch
            } else if self.opts.named_contexts.contains(&lower) && lower != "context" {
                BaseKind::Context(lower.clone())
            } else {
                let r = Reference::parse(&base_value).map_err(|e| {
                    Error::new(
                        format!("failed to parse stage name {base_value:?}: {e}"),
                        from.base.span,
                    )
                })?;
                BaseKind::Image(r.with_default_tag().to_string())
            };
            if let Some(n) = &name {
                names.insert(n.clone(), i);
            }
            decls.push(Decl {
                df: st,
                display: name.clone().unwrap_or_else(|| format!("stage-{i}")),
                name,
                base,
                platform,
                commands: if replaced {
                    Vec::new()
                } else {
                    st.commands.iter().map(|c| (c.clone(), false)).collect()
                },
                deps: BTreeMap::new(),
                resolved: None,
            });
        }
        self.check_default_args_in_from()?;
        Ok(decls)
    }

    /// InvalidDefaultArgInFrom: with only the defaults (no build args), does
    /// each FROM still name a valid image?
    fn check_default_args_in_from(&mut self) -> Result<()> {
        let mut env = EnvList::default();
        for (k, v) in &self.global.0 {
            if !self.meta_keys.contains(k) || !self.opts.build_args.contains_key(k) {
                env.set(k, v);
            }
        }
        for instruction in &self.df.meta_args {
            let Command::Arg(decls) = &instruction.command else {
                continue;
            };
            for ArgDecl { name, default } in decls {
                if !self.opts.build_args.contains_key(&name.text) {
                    continue;
                }
                match default {
                    Some(d) => {
                        if let Ok(v) = self.lexer.expand_word(&d.text, &env) {
                            env.set(&name.text, &v.value);
                        }
                    }
                    None => env.0.retain(|(k, _)| k != &name.text),
                }
            }
        }
        let mut stage_names = BTreeSet::new();
        for st in &self.df.stages {
            let Ok(exp) = self.lexer.expand_word(&st.from.base.text, &env) else {
                continue;
            };
            let ok = exp.value.eq_ignore_ascii_case("scratch")
                || stage_names.contains(&exp.value.to_ascii_lowercase())
                || self
                    .opts
                    .named_contexts
                    .contains(&exp.value.to_ascii_lowercase())
                || (!exp.value.is_empty() && Reference::parse(&exp.value).is_ok());
            if !ok {
                self.lint.report(
                    &lint::INVALID_DEFAULT_ARG_IN_FROM,
                    st.from.base.span,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        st.from.base.text
                    ),
                );
            }
            if let Some(n) = &st.from.name {
                stage_names.insert(n.text.clone());
            }
        }
        Ok(())
    }

    fn find_target(&self, decls: &[Decl<'_>]) -> Result<usize> {
        let Some(target) = &self.opts.target else {
            return Ok(decls.len() - 1);
        };
        let lower = target.to_ascii_lowercase();
        decls
            .iter()
            .rposition(|d| d.name.as_deref() == Some(lower.as_str()))
            .ok_or_else(|| {
                let mut msg = format!("target stage {target:?} could not be found");
                if let Some(s) = instructions::suggest(
                    target,
                    decls.iter().filter_map(|d| d.name.as_deref()),
                    false,
                ) {
                    msg = format!("{msg} (did you mean {s}?)");
                }
                let names: Vec<&str> = decls.iter().filter_map(|d| d.name.as_deref()).collect();
                let help = if names.is_empty() {
                    "this Dockerfile has no named stages (name one with FROM … AS <name>)"
                        .to_string()
                } else {
                    format!("the named stages are: {}", names.join(", "))
                };
                Error::new(msg, Span::default()).with_help(help)
            })
    }

    /// Resolves a `--from`/`from=` value to a stage, named context or image.
    fn resolve_source(&self, decls: &[Decl<'_>], value: &str, span: Span) -> Result<Source> {
        if let Ok(index) = value.parse::<i64>() {
            if index < 0 || index as usize >= decls.len() {
                return Err(Error::new(format!("invalid stage index {index}"), span));
            }
            return Ok(Source::Stage(index as usize));
        }
        let lower = value.to_ascii_lowercase();
        if let Some(i) = decls
            .iter()
            .rposition(|d| d.name.as_deref() == Some(lower.as_str()))
        {
            return Ok(Source::Stage(i));
        }
        if self.opts.named_contexts.contains(&lower) && lower != "scratch" && lower != "context" {
            return Ok(Source::Context(lower));
        }
        let r = Reference::parse(value).map_err(|e| {
            Error::new(format!("failed to parse stage name {value:?}: {e}"), span)
                .with_help("--from takes a stage name, a stage index or an image reference")
        })?;
        Ok(Source::Image(r.with_default_tag().to_string()))
    }

    fn copy_from(&self, c: &Copy) -> Result<Option<(String, Span)>> {
        let Some(flag) = &c.from else { return Ok(None) };
        let plain = self
            .lexer
            .expand_word(&flag.value, &EnvList::default())
            .map(|e| e.value);
        if plain.as_deref() != Ok(flag.value.as_str()) {
            return Err(Error::new(
                "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                flag.span,
            ));
        }
        Ok(Some((flag.value.clone(), flag.span)))
    }

    fn mount_from(spec: &str) -> Option<String> {
        let fields = mounts::split_csv(spec).ok()?;
        fields.iter().rev().find_map(|f| {
            let (k, v) = f.split_once('=')?;
            k.eq_ignore_ascii_case("from").then(|| v.to_string())
        })
    }

    fn command_deps(
        &self,
        decls: &[Decl<'_>],
        commands: &[(Instruction, bool)],
    ) -> Result<BTreeMap<usize, Span>> {
        let mut deps = BTreeMap::new();
        for (instruction, _) in commands {
            match &instruction.command {
                Command::Copy(c) => {
                    if let Some((v, span)) = self.copy_from(c)? {
                        if let Source::Stage(s) = self.resolve_source(decls, &v, span)? {
                            deps.entry(s).or_insert(span);
                        }
                    }
                }
                Command::Run(r) => {
                    for m in &r.mounts {
                        if let Some(from) = Self::mount_from(&m.value) {
                            let lower = from.to_ascii_lowercase();
                            if let Some(i) = decls
                                .iter()
                                .rposition(|d| d.name.as_deref() == Some(lower.as_str()))
                            {
                                deps.entry(i).or_insert(m.span);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(deps)
    }

    fn collect_deps(&mut self, decls: &mut [Decl<'a>]) -> Result<()> {
        for i in 0..decls.len() {
            // ONBUILD triggers of a parent stage are known statically.
            if let BaseKind::Stage(p) = decls[i].base {
                let triggers = onbuild_expressions(&decls[p].df.commands);
                self.add_triggers(decls, i, &triggers)?;
            }
            let deps = self.command_deps(decls, &decls[i].commands)?;
            decls[i].deps = deps;
        }
        Ok(())
    }

    fn add_triggers(&self, decls: &mut [Decl<'a>], i: usize, triggers: &[String]) -> Result<()> {
        let from = &decls[i].df.node;
        let mut parsed = Vec::new();
        for t in triggers {
            parsed.push((instructions::parse_trigger(t, from)?, true));
        }
        parsed.append(&mut decls[i].commands);
        decls[i].commands = parsed;
        Ok(())
    }

    /// Marks the stages the target needs, resolving base images (whose
    /// ONBUILD triggers can add dependencies) until nothing changes.
    fn resolve_reachable(
        &mut self,
        decls: &mut [Decl<'a>],
        target: usize,
    ) -> Result<BTreeSet<usize>> {
        let mut resolved = BTreeSet::new();
        loop {
            let mut reachable = BTreeSet::new();
            let mut stack = vec![target];
            while let Some(i) = stack.pop() {
                if !reachable.insert(i) {
                    continue;
                }
                if let BaseKind::Stage(p) = decls[i].base {
                    stack.push(p);
                }
                stack.extend(decls[i].deps.keys().copied());
            }
            let mut changed = false;
            for &i in &reachable {
                if !resolved.insert(i) {
                    continue;
                }
                let platform = decls[i]
                    .platform
                    .clone()
                    .unwrap_or_else(|| self.target_platform.clone());
                let image = match &decls[i].base {
                    BaseKind::Image(r) => self.resolver.resolve(r, &platform),
                    BaseKind::Context(n) => self.resolver.resolve_context(n, &platform),
                    _ => continue,
                };
                let image = image.map_err(|e| {
                    Error::new(
                        format!("{}: {e}", decls[i].df.from.base.text),
                        decls[i].df.from.base.span,
                    )
                })?;
                if let Some(image) = image {
                    let triggers = image.config.on_build.clone().unwrap_or_default();
                    if !triggers.is_empty() {
                        self.add_triggers(decls, i, &triggers)?;
                        decls[i].deps = self.command_deps(decls, &decls[i].commands)?;
                        changed = true;
                    }
                    decls[i].resolved = Some(image);
                }
            }
            if !changed {
                return Ok(reachable);
            }
        }
    }

    /// Refuses dependency cycles, pointing at the reference that closes one.
    fn check_cycles(&self, decls: &[Decl<'_>]) -> Result<()> {
        fn visit(
            decls: &[Decl<'_>],
            i: usize,
            on_path: &mut Vec<bool>,
            done: &mut Vec<bool>,
        ) -> Option<(usize, Span)> {
            on_path[i] = true;
            // A FROM base is always an earlier stage, so only copies and
            // mounts can close a cycle.
            let mut next: Vec<(usize, Option<Span>)> =
                decls[i].deps.iter().map(|(&d, &s)| (d, Some(s))).collect();
            if let BaseKind::Stage(p) = decls[i].base {
                next.push((p, None));
            }
            for (n, span) in next {
                if on_path[n] {
                    return Some((n, span.unwrap_or(decls[i].df.node.span)));
                }
                if !done[n] {
                    if let Some(found) = visit(decls, n, on_path, done) {
                        return Some(found);
                    }
                }
            }
            on_path[i] = false;
            done[i] = true;
            None
        }
        let mut on_path = vec![false; decls.len()];
        let mut done = vec![false; decls.len()];
        for i in 0..decls.len() {
            if done[i] {
                continue;
            }
            if let Some((c, span)) = visit(decls, i, &mut on_path, &mut done) {
                return Err(Error::new(
                    format!(
                        "circular dependency detected on stage: {}",
                        decls[c].display
                    ),
                    span,
                )
                .with_help(
                    "a stage cannot copy or mount from itself, or from a stage that depends on it",
                ));
            }
        }
        Ok(())
    }

    // ----- dispatch --------------------------------------------------------

    fn context(&mut self) -> OpId {
        *self.context_op.get_or_insert_with(|| {
            self.g.add(
                OpKind::Context(ContextSource {
                    name: "context".into(),
                }),
                vec![],
                OpMeta {
                    name: "[internal] load build context".into(),
                    location: None,
                },
            )
        })
    }

    fn scratch(&mut self) -> OpId {
        *self
            .scratch_op
            .get_or_insert_with(|| self.g.add(OpKind::Scratch, vec![], OpMeta::default()))
    }

    fn image_op(
        &mut self,
        reference: &str,
        platform: &Platform,
        name: String,
        node: Option<&Node>,
    ) -> OpId {
        self.g.add(
            OpKind::Image(ImageSource {
                reference: reference.to_string(),
                platform: platform.clone(),
            }),
            vec![],
            OpMeta {
                name,
                location: node.map(location),
            },
        )
    }

    fn source_op(
        &mut self,
        src: &Source,
        platform: &Platform,
        states: &BTreeMap<usize, State>,
    ) -> OpId {
        match src {
            Source::Stage(s) => states[s].root,
            Source::Image(r) => self.image_op(
                r,
                platform,
                format!("[internal] load metadata for {r}"),
                None,
            ),
            Source::Context(n) => self.g.add(
                OpKind::Context(ContextSource { name: n.clone() }),
                vec![],
                OpMeta {
                    name: format!("[context {n}] load from client"),
                    location: None,
                },
            ),
        }
    }

    fn dispatch_stage(
        &mut self,
        decls: &[Decl<'_>],
        i: usize,
        states: &BTreeMap<usize, State>,
        single: bool,
    ) -> Result<State> {
        let decl = &decls[i];
        let platform = decl
            .platform
            .clone()
            .unwrap_or_else(|| self.target_platform.clone());
        let mut state = match &decl.base {
            BaseKind::Stage(p) => {
                let mut s = states[p].clone();
                s.history.clear();
                s.config.on_build = None;
                s.cmd_set = false;
                s
            }
            other => {
                let (root, config, author, platform) = match other {
                    BaseKind::Scratch => (
                        self.scratch(),
                        empty_image_config(),
                        None,
                        self.target_platform.clone(),
                    ),
                    BaseKind::Image(r) => {
                        let total = stage_total(decl);
                        let name = step_name(&decl.display, single, 1, total, &format!("FROM {r}"));
                        let op = self.image_op(r, &platform, name, Some(&decl.df.node));
                        let resolved = decl.resolved.clone().unwrap_or_default();
                        let mut config = resolved.config;
                        config.on_build = None;
                        (op, config, resolved.author, platform.clone())
                    }
                    BaseKind::Context(n) => {
                        let op = self.g.add(
                            OpKind::Context(ContextSource { name: n.clone() }),
                            vec![],
                            OpMeta {
                                name: format!("[context {n}] load from client"),
                                location: Some(location(&decl.df.node)),
                            },
                        );
                        // A context without an image config starts like scratch.
                        match decl.resolved.clone() {
                            Some(image) => {
                                let mut config = image.config;
                                config.on_build = None;
                                (op, config, image.author, platform.clone())
                            }
                            None => (op, empty_image_config(), None, platform.clone()),
                        }
                    }
                    BaseKind::Stage(_) => unreachable!("handled above"),
                };
                State {
                    root,
                    user: config.user.clone().unwrap_or_default(),
                    workdir: config.working_dir.clone().unwrap_or_default(),
                    config,
                    author,
                    history: Vec::new(),
                    env: EnvList::default(),
                    build_args: Vec::new(),
                    platform,
                    workdir_set: false,
                    cmd_set: false,
                }
            }
        };
        // Every Linux stage has a PATH; then the config's env seeds the state's.
        let env = state.config.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.split('=').next() == Some("PATH"))
            && state.platform.os != "windows"
        {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        for entry in env.clone() {
            let (k, v) = entry.split_once('=').unwrap_or((&entry, ""));
            state.env.set(k, v);
        }

        let mut step = usize::from(matches!(decl.base, BaseKind::Image(_)));
        let total = stage_total(decl);
        let mut seen_once: BTreeMap<&'static str, Span> = BTreeMap::new();
        for (instruction, is_trigger) in &decl.commands {
            self.dispatch(
                decls,
                i,
                &mut state,
                instruction,
                *is_trigger,
                states,
                &mut Step {
                    step: &mut step,
                    total,
                    single,
                    seen_once: &mut seen_once,
                },
            )?;
        }
        Ok(state)
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        decls: &[Decl<'_>],
        i: usize,
        state: &mut State,
        instruction: &Instruction,
        is_trigger: bool,
        states: &BTreeMap<usize, State>,
        step: &mut Step<'_>,
    ) -> Result<()> {
        let node = &instruction.node;
        let display = &decls[i].display;
        let env = state.env.clone();
        let name_for = |text: String, step: &mut Step<'_>| step.next(display, is_trigger, &text);
        match &instruction.command {
            Command::Arg(decl_list) => {
                let mut parts = Vec::new();
                for ArgDecl { name, default } in decl_list {
                    if lint::looks_secret(&name.text) {
                        self.lint.report(
                            &lint::SECRETS_USED_IN_ARG_OR_ENV,
                            name.span,
                            format!(
                                "Do not use ARG or ENV instructions for sensitive data (ARG {:?})",
                                name.text
                            ),
                        );
                    }
                    let value = if let Some(v) = self.opts.build_args.get(&name.text) {
                        Some(v.clone())
                    } else if let Some(d) = default {
                        let exp = self.expand(d, &state.env)?;
                        self.undefined_vars(&exp, d.span, state);
                        Some(exp.value)
                    } else {
                        self.global.get(&name.text).map(str::to_string)
                    };
                    if let Some(v) = &value {
                        state.env.set(&name.text, v);
                        parts.push(format!("{}={v}", name.text));
                    } else {
                        parts.push(name.text.clone());
                    }
                    state.build_args.push((name.text.clone(), value));
                }
                self.commit(state, format!("ARG {}", parts.join(" ")), None);
            }
            Command::Env(pairs) => {
                let mut expanded = Vec::new();
                let legacy = matches!(&node.args, parser::Args::NameValues { legacy: true, .. });
                for (k, v) in pairs {
                    if legacy {
                        self.lint.report(
                            &lint::LEGACY_KEY_VALUE_FORMAT,
                            node.span,
                            "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format",
                        );
                    }
                    let key = self.expand_checked(k, &env, state)?;
                    let value = self.expand_checked(v, &env, state)?;
                    if lint::looks_secret(&key) {
                        self.lint.report(
                            &lint::SECRETS_USED_IN_ARG_OR_ENV,
                            k.span,
                            format!("Do not use ARG or ENV instructions for sensitive data (ENV {key:?})"),
                        );
                    }
                    expanded.push((key, value));
                }
                let mut msg = String::from("ENV");
                for (k, v) in &expanded {
                    state.env.set(k, v);
                    let config_env = state.config.env.get_or_insert_with(Vec::new);
                    let entry = format!("{k}={v}");
                    match config_env
                        .iter_mut()
                        .find(|e| e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) == k)
                    {
                        Some(e) => *e = entry,
                        None => config_env.push(entry),
                    }
                    msg.push_str(&format!(" {k}={v}"));
                }
                self.commit(state, msg, None);
            }
            Command::Label(pairs) => {
                let legacy = matches!(&node.args, parser::Args::NameValues { legacy: true, .. });
                if legacy {
                    self.lint.report(
                        &lint::LEGACY_KEY_VALUE_FORMAT,
                        node.span,
                        "\"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format",
                    );
                }
                let mut msg = String::from("LABEL");
                let mut expanded = Vec::new();
                for (k, v) in pairs {
                    expanded.push((
                        self.expand_checked(k, &env, state)?,
                        self.expand_checked(v, &env, state)?,
                    ));
                }
                let labels = state.config.labels.get_or_insert_with(BTreeMap::new);
                for (k, v) in expanded {
                    msg.push_str(&format!(" {k}={v}"));
                    labels.insert(k, v);
                }
                self.commit(state, msg, None);
            }
            Command::Maintainer(word) => {
                state.author = Some(word.text.clone());
                self.commit(state, format!("MAINTAINER {}", word.text), None);
            }
            Command::Workdir(word) => {
                let path = self.expand_checked(word, &env, state)?;
                if !path.starts_with('/') && !state.workdir_set {
                    self.lint.report(
                        &lint::WORKDIR_RELATIVE_PATH,
                        word.span,
                        format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                    );
                }
                state.workdir_set = true;
                let current = state.config.working_dir.clone().unwrap_or_default();
                let wd = normalize_workdir(&current, &path);
                state.config.working_dir = Some(wd.clone());
                state.workdir = wd.clone();
                if wd != "/" {
                    let name = name_for(
                        uppercase_cmd(&self.process_cmd_env(node, &env, false)),
                        step,
                    );
                    let owner = state
                        .config
                        .user
                        .as_ref()
                        .filter(|u| !u.is_empty())
                        .map(|u| parse_owner(u));
                    let op = self.g.add(
                        OpKind::File(FileOp {
                            actions: vec![FileAction::Mkdir {
                                path: wd.clone(),
                                mode: 0o755,
                                parents: true,
                                owner,
                            }],
                        }),
                        vec![state.root],
                        OpMeta {
                            name,
                            location: Some(location(node)),
                        },
                    );
                    state.root = op;
                    self.commit(state, format!("WORKDIR {wd}"), Some(op));
                } else {
                    self.commit(state, format!("WORKDIR {wd}"), None);
                }
            }
            Command::User(word) => {
                let user = self.expand_checked(word, &env, state)?;
                state.user = user.clone();
                state.config.user = Some(user.clone());
                self.commit(state, format!("USER {user}"), None);
            }
            Command::Cmd(cmd) => {
                self.once(step, "CMD", node);
                let args = self.command_args(state, cmd.as_ref(), node);
                // An empty list is omitted from the config JSON, as in BuildKit's.
                state.config.cmd = (!args.is_empty()).then(|| args.clone());
                state.config.args_escaped = true;
                state.cmd_set = true;
                self.commit(state, format!("CMD {}", gofmt::quote_list(&args)), None);
            }
            Command::Entrypoint(cmd) => {
                self.once(step, "ENTRYPOINT", node);
                let args = match cmd {
                    Some(CommandLine::Exec(items)) if items.is_empty() => None,
                    other => Some(self.command_args(state, other.as_ref(), node)),
                };
                state.config.entrypoint = args.clone();
                if !state.cmd_set {
                    state.config.cmd = None;
                }
                let shown = args.unwrap_or_default();
                self.commit(
                    state,
                    format!("ENTRYPOINT {}", gofmt::quote_list(&shown)),
                    None,
                );
            }
            Command::Shell(items) => {
                state.config.shell = Some(items.clone());
                self.commit(state, format!("SHELL {}", gofmt::plain_list(items)), None);
            }
            Command::Expose(words) => {
                let mut ports = Vec::new();
                for w in words {
                    let exp = self
                        .lexer
                        .expand_words(&w.text, &env)
                        .map_err(|e| expand_error(w, e))?;
                    for spec in exp.words {
                        let (keys, proto_upper, has_mapping) =
                            parse_port_spec(&spec).map_err(|e| Error::new(e, w.span))?;
                        if proto_upper {
                            self.lint.report(
                                &lint::EXPOSE_PROTO_CASING,
                                w.span,
                                format!("Defined protocol '{spec}' in EXPOSE instruction should be lowercase"),
                            );
                        }
                        if has_mapping {
                            self.lint.report(
                                &lint::EXPOSE_INVALID_FORMAT,
                                w.span,
                                format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{spec}'"),
                            );
                        }
                        ports.extend(keys);
                    }
                }
                let exposed = state.config.exposed_ports.get_or_insert_with(BTreeMap::new);
                for p in &ports {
                    exposed.insert(p.clone(), graph::EmptyObject {});
                }
                self.commit(state, format!("EXPOSE {}", gofmt::plain_list(&ports)), None);
            }
            Command::Volume(words) => {
                let mut vols = Vec::new();
                for w in words {
                    let v = self.expand_checked(w, &env, state)?;
                    if v.is_empty() {
                        return Err(Error::new(
                            "VOLUME specified can not be an empty string",
                            w.span,
                        ));
                    }
                    vols.push(v);
                }
                let volumes = state.config.volumes.get_or_insert_with(BTreeMap::new);
                for v in &vols {
                    volumes.insert(v.clone(), graph::EmptyObject {});
                }
                self.commit(state, format!("VOLUME {}", gofmt::plain_list(&vols)), None);
            }
            Command::Stopsignal(word) => {
                let sig = self.expand_checked(word, &env, state)?;
                if !valid_signal(&sig) {
                    return Err(Error::new(format!("invalid signal: {sig}"), word.span)
                        .with_help("use a signal name such as SIGTERM or a number"));
                }
                state.config.stop_signal = Some(sig.clone());
                self.commit(state, format!("STOPSIGNAL {sig}"), None);
            }
            Command::Healthcheck(h) => {
                self.once(step, "HEALTHCHECK", node);
                let hc = match h {
                    Healthcheck::None => GraphHealthcheck {
                        test: vec!["NONE".into()],
                        ..Default::default()
                    },
                    Healthcheck::Cmd {
                        command,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => {
                        let test = match command {
                            CommandLine::Exec(items) => std::iter::once("CMD".to_string())
                                .chain(items.iter().cloned())
                                .collect(),
                            CommandLine::Shell(w) => vec!["CMD-SHELL".to_string(), w.text.clone()],
                        };
                        GraphHealthcheck {
                            test,
                            interval: *interval,
                            timeout: *timeout,
                            start_period: *start_period,
                            start_interval: *start_interval,
                            retries: *retries,
                        }
                    }
                };
                let msg = format!(
                    "HEALTHCHECK &{{{} {} {} {} {} {}}}",
                    gofmt::quote_list(&hc.test),
                    gofmt::quote(&gofmt::duration(hc.interval)),
                    gofmt::quote(&gofmt::duration(hc.timeout)),
                    gofmt::quote(&gofmt::duration(hc.start_period)),
                    gofmt::quote(&gofmt::duration(hc.start_interval)),
                    gofmt::quote_rune(hc.retries as u32),
                );
                state.config.healthcheck = Some(hc);
                self.commit(state, msg, None);
            }
            Command::Onbuild(expression) => {
                state
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(expression.clone());
            }
            Command::Run(run) => {
                let name = name_for(self.run_name(node, &env, run), step);
                self.dispatch_run(decls, state, run, node, name, states)?;
            }
            Command::Copy(copy) => {
                let name = name_for(
                    uppercase_cmd(&self.process_cmd_env(node, &env, false)),
                    step,
                );
                self.dispatch_copy(decls, i, state, copy, node, name, states)?;
            }
        }
        Ok(())
    }

    fn once(&mut self, step: &mut Step<'_>, what: &'static str, node: &Node) {
        if let Some(prev) = step.seen_once.insert(what, node.span) {
            self.lint.report(
                &lint::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                prev,
                format!("Multiple {what} instructions should not be used in the same stage because only the last one will be used"),
            );
        }
    }

    fn command_args(
        &mut self,
        state: &State,
        cmd: Option<&CommandLine>,
        node: &Node,
    ) -> Vec<String> {
        match cmd {
            Some(CommandLine::Exec(items)) => items.clone(),
            other => {
                if state.config.shell.as_ref().is_none_or(|s| s.is_empty()) {
                    self.lint.report(
                        &lint::JSON_ARGS_RECOMMENDED,
                        node.span,
                        format!(
                            "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                            node.keyword
                        ),
                    );
                }
                let text = match other {
                    Some(CommandLine::Shell(w)) => w.text.clone(),
                    _ => String::new(),
                };
                let mut args = shell_of(state);
                args.push(text);
                args
            }
        }
    }

    fn commit(&mut self, state: &mut State, created_by: String, layer: Option<OpId>) {
        let created_by = if layer.is_some() && !created_by.starts_with("WORKDIR ") {
            format!("{created_by} # buildkit")
        } else {
            created_by
        };
        state.history.push(History {
            created_by,
            comment: Some(HISTORY_COMMENT.into()),
            empty_layer: layer.is_none(),
            layer_op: layer,
        });
    }

    // ----- RUN -------------------------------------------------------------

    fn run_name(&self, node: &Node, env: &EnvList, run: &Run) -> String {
        let mut text = uppercase_cmd(&self.process_cmd_env(node, env, true));
        if let [heredoc] = run.heredocs.as_slice() {
            if let Some(CommandLine::Shell(w)) = &run.command {
                if parser::parse_heredoc_marker(w.text.trim())
                    .ok()
                    .flatten()
                    .is_some()
                {
                    let mut lines = heredoc.content.lines().filter(|l| !l.trim().is_empty());
                    if let Some(first) = lines.next() {
                        let more = if lines.next().is_some() { "..." } else { "" };
                        text.push_str(&format!(" ({}{more})", first.trim()));
                    }
                }
            }
        }
        text
    }

    /// The instruction text for progress, variables expanded where known.
    fn process_cmd_env(&self, node: &Node, env: &EnvList, raw: bool) -> String {
        let code = node.original.trim();
        let mut lexer = self.lexer;
        if raw {
            lexer.raw_quotes = true;
            lexer.skip_unset_env = true;
        }
        lexer
            .expand_word(code, env)
            .map(|e| e.value)
            .unwrap_or_else(|_| code.to_string())
    }

    fn dispatch_run(
        &mut self,
        decls: &[Decl<'_>],
        state: &mut State,
        run: &Run,
        node: &Node,
        name: String,
        states: &BTreeMap<usize, State>,
    ) -> Result<()> {
        let mut inputs = vec![state.root];
        let mut mounts = Vec::new();
        let shell = shell_of(state);
        let mut args: Vec<String> = match &run.command {
            Some(CommandLine::Exec(items)) => items.clone(),
            Some(CommandLine::Shell(w)) => vec![w.text.clone()],
            None => vec![String::new()],
        };
        let shell_form = !matches!(run.command, Some(CommandLine::Exec(_)));
        if shell_form && !run.heredocs.is_empty() {
            let cmdline = args[0].clone();
            match parser::parse_heredoc_marker(cmdline.trim()).ok().flatten() {
                Some(_) => {
                    let file = &run.heredocs[0];
                    let data = if file.chomp {
                        parser::chomp_heredoc(&file.content)
                    } else {
                        file.content.clone()
                    };
                    if data.starts_with("#!") && state.platform.os != "windows" {
                        let scratch = self.scratch();
                        let doc = self.g.add(
                            OpKind::File(FileOp {
                                actions: vec![FileAction::Mkfile {
                                    path: format!("/{}", file.name),
                                    mode: 0o755,
                                    data,
                                    owner: None,
                                }],
                            }),
                            vec![scratch],
                            OpMeta {
                                name: "[internal] preparing inline document".into(),
                                location: None,
                            },
                        );
                        inputs.push(doc);
                        mounts.push(Mount {
                            target: "/dev/pipes/".into(),
                            kind: MountKind::Bind {
                                input: inputs.len() - 1,
                                source: "/".into(),
                                readwrite: false,
                            },
                        });
                        args = vec![format!("/dev/pipes/{}", file.name)];
                    } else {
                        args = vec![data];
                    }
                }
                None => {
                    let mut full = cmdline;
                    for h in &run.heredocs {
                        full.push('\n');
                        full.push_str(&h.content);
                        full.push_str(&h.name);
                    }
                    args = vec![full];
                }
            }
        }
        if shell_form {
            let mut with_shell = shell;
            with_shell.push(args.join(" "));
            args = with_shell;
        }

        let env = state.env.clone();
        let mut ssh_index = 0;
        for flag in &run.mounts {
            let mut unmatched = BTreeSet::new();
            let lexer = self.lexer;
            let spec = mounts::parse(&flag.value, &mut |v| {
                let e = lexer
                    .expand_word(v, &env)
                    .map_err(|e| format!("failed to process {v:?}: {}", e.message))?;
                unmatched.extend(e.unmatched);
                Ok(e.value)
            })
            .map_err(|e| Error::new(e, flag.span))?;
            for u in unmatched {
                self.report_undefined(&u, flag.span, state);
            }
            let mount = self.lower_mount(
                decls,
                state,
                spec,
                flag.span,
                &mut inputs,
                &mut ssh_index,
                states,
            )?;
            mounts.push(mount);
        }

        let network = match run.network.as_ref().map(|n| n.value.as_str()) {
            Some("none") => NetworkMode::None,
            Some("host") => NetworkMode::Host,
            // `default` means what the build was given with --network.
            _ => self.opts.network,
        };
        let security = match run.security.as_ref().map(|s| s.value.as_str()) {
            Some("insecure") => SecurityMode::Insecure,
            _ => SecurityMode::Sandbox,
        };
        let history = format!(
            "RUN {} # buildkit",
            run_command_string(&args, &state.build_args, &state.env)
        );
        let op = self.g.add(
            OpKind::Exec(Exec {
                args,
                env: state.env.to_strings(),
                cwd: if state.workdir.is_empty() {
                    "/".into()
                } else {
                    state.workdir.clone()
                },
                user: state.user.clone(),
                network,
                security,
                mounts,
            }),
            inputs,
            OpMeta {
                name,
                location: Some(location(node)),
            },
        );
        state.root = op;
        state.history.push(History {
            created_by: history,
            comment: Some(HISTORY_COMMENT.into()),
            empty_layer: false,
            layer_op: Some(op),
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn lower_mount(
        &mut self,
        decls: &[Decl<'_>],
        state: &State,
        spec: MountSpec,
        span: Span,
        inputs: &mut Vec<OpId>,
        ssh_index: &mut usize,
        states: &BTreeMap<usize, State>,
    ) -> Result<Mount> {
        let resolve_target = |t: &str| -> String {
            if t.starts_with('/') {
                t.to_string()
            } else {
                clean_path(&format!("/{}/{}", state.workdir, t))
            }
        };
        let from_op = |this: &mut Self, inputs: &mut Vec<OpId>| -> Result<Option<usize>> {
            let Some(from) = &spec.from else {
                return Ok(None);
            };
            let src = this.resolve_source(decls, from, span)?;
            if let Source::Stage(s) = src {
                if !states.contains_key(&s) {
                    return Err(Error::new(
                        format!(
                            "cannot mount from stage {from:?} to {:?}, stage needs to be defined before current command",
                            spec.target
                        ),
                        span,
                    ));
                }
            }
            let op = this.source_op(&src, &state.platform, states);
            inputs.push(op);
            Ok(Some(inputs.len() - 1))
        };
        let kind = match spec.kind {
            MountType::Bind => {
                let input = match from_op(self, inputs)? {
                    Some(i) => i,
                    None => {
                        let ctx = self.context();
                        inputs.push(ctx);
                        inputs.len() - 1
                    }
                };
                let source = clean_path(&format!("/{}", spec.source.clone().unwrap_or_default()));
                MountKind::Bind {
                    input,
                    source,
                    readwrite: !spec.readonly,
                }
            }
            MountType::Cache => {
                let id = spec
                    .id
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| go_clean(&spec.target));
                let id = match self.opts.build_args.get("BUILDKIT_CACHE_MOUNT_NS") {
                    Some(ns) if !ns.is_empty() => format!("{ns}/{id}"),
                    _ => id,
                };
                let from = match from_op(self, inputs)? {
                    Some(i) => Some((
                        i,
                        clean_path(&format!("/{}", spec.source.clone().unwrap_or_default())),
                    )),
                    None => None,
                };
                MountKind::Cache {
                    id,
                    sharing: match spec.sharing {
                        Some(Sharing::Private) => CacheSharing::Private,
                        Some(Sharing::Locked) => CacheSharing::Locked,
                        _ => CacheSharing::Shared,
                    },
                    from,
                    readonly: spec.readonly,
                    mode: spec.mode.unwrap_or(0o755),
                    uid: spec.uid.unwrap_or(0),
                    gid: spec.gid.unwrap_or(0),
                }
            }
            MountType::Tmpfs => MountKind::Tmpfs {
                size: spec.size.unwrap_or(0),
            },
            MountType::Secret => {
                let id = spec
                    .source
                    .clone()
                    .or_else(|| spec.id.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| base_name(&spec.target));
                if id.is_empty() {
                    return Err(Error::new("one of source, target required", span));
                }
                let target = if spec.target.is_empty() {
                    if spec.env.is_some() {
                        String::new()
                    } else {
                        format!("/run/secrets/{}", base_name(&id))
                    }
                } else {
                    // BuildKit passes secret targets as written, not joined
                    // with the working directory.
                    spec.target.clone()
                };
                return Ok(Mount {
                    target,
                    kind: MountKind::Secret {
                        id,
                        env: spec.env.clone(),
                        required: spec.required,
                        mode: spec.mode.unwrap_or(0o400),
                        uid: spec.uid.unwrap_or(0),
                        gid: spec.gid.unwrap_or(0),
                    },
                });
            }
            MountType::Ssh => {
                if spec.source.is_some() {
                    return Err(Error::new("ssh does not support source", span));
                }
                let target = if spec.target.is_empty() {
                    format!("/run/buildkit/ssh_agent.{}", *ssh_index)
                } else {
                    spec.target.clone()
                };
                *ssh_index += 1;
                return Ok(Mount {
                    target,
                    kind: MountKind::Ssh {
                        id: spec
                            .id
                            .clone()
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "default".into()),
                        required: spec.required,
                        mode: spec.mode.unwrap_or(0o600),
                        uid: spec.uid.unwrap_or(0),
                        gid: spec.gid.unwrap_or(0),
                    },
                });
            }
        };
        let target = resolve_target(&spec.target);
        if target == "/" {
            return Err(Error::new(format!("invalid mount target {target:?}"), span)
                .with_help("give the mount a target directory other than /, e.g. target=/cache"));
        }
        Ok(Mount { target, kind })
    }

    // ----- COPY / ADD ------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn dispatch_copy(
        &mut self,
        decls: &[Decl<'_>],
        i: usize,
        state: &mut State,
        copy: &Copy,
        node: &Node,
        name: String,
        states: &BTreeMap<usize, State>,
    ) -> Result<()> {
        let env = state.env.clone();
        let cmd = if copy.is_add { "ADD" } else { "COPY" };
        let chown = match &copy.chown {
            Some(f) => Some(self.expand_flag(&f.value, f.span, &env, state)?),
            None => None,
        };
        let chmod_text = match &copy.chmod {
            Some(f) => Some((self.expand_flag(&f.value, f.span, &env, state)?, f.span)),
            None => None,
        };
        let chmod = match &chmod_text {
            Some((v, span)) if !v.is_empty() => {
                Some(parse_chmod(v).map_err(|e| Error::new(e, *span))?)
            }
            _ => None,
        };
        let checksum = match &copy.checksum {
            Some(f) => Some(self.expand_flag(&f.value, f.span, &env, state)?),
            None => None,
        };
        if checksum.is_some() && !copy.is_add {
            return Err(Error::new(
                "checksum can't be specified for COPY",
                node.span,
            ));
        }
        let dest_raw = self.expand_checked(&copy.dest, &env, state)?;
        let dest = dest_path(&state.workdir, &dest_raw);
        let owner = chown
            .as_ref()
            .filter(|c| !c.is_empty())
            .map(|c| parse_owner(c));

        let from = self.copy_from(copy)?;
        let source_input_op = match &from {
            Some((v, span)) => {
                let src = self.resolve_source(decls, v, *span)?;
                if let Source::Stage(s) = src {
                    if s == i {
                        return Err(Error::new(
                            format!(
                                "circular dependency detected on stage: {}",
                                decls[i].display
                            ),
                            *span,
                        ));
                    }
                    if !states.contains_key(&s) {
                        return Err(Error::new(
                            format!(
                                "cannot copy from stage {v:?}, it needs to be defined before current stage {:?}",
                                decls[i].display
                            ),
                            *span,
                        ));
                    }
                }
                self.source_op(&src, &state.platform, states)
            }
            None => self.context(),
        };

        let mut paths = Vec::new();
        let mut heredocs = Vec::new();
        for src in &copy.sources {
            match src {
                CopySource::Path(w) => paths.push((self.expand_checked(w, &env, state)?, w.span)),
                CopySource::Heredoc {
                    name,
                    content,
                    expand,
                    ..
                } => {
                    let data = if *expand {
                        let lexer = Lexer::new('\\');
                        let e = lexer
                            .expand_word_ignoring_quotes(content, &env)
                            .map_err(|e| Error::new(e.message, node.span))?;
                        e.value
                    } else {
                        content.clone()
                    };
                    heredocs.push((name.clone(), data));
                }
            }
        }
        if checksum.is_some() && paths.len() + heredocs.len() != 1 {
            return Err(Error::new(
                "checksum can't be specified for multiple sources",
                node.span,
            ));
        }

        let link = copy.link && chmod.is_none();
        let mut inputs = vec![if link { self.scratch() } else { state.root }];
        let mut actions = Vec::new();
        let exclude: Vec<String> = copy.exclude.iter().map(|f| f.value.clone()).collect();
        for (src, span) in &paths {
            let kind = classify_source(src);
            match kind {
                SourceClass::Git if copy.is_add => {
                    let (remote, reference, subdir) = split_git(src);
                    let op = self.g.add(
                        OpKind::Git(graph::GitSource {
                            remote,
                            reference,
                            subdir,
                            keep_git_dir: copy.keep_git_dir,
                            checksum: checksum.clone(),
                        }),
                        vec![],
                        OpMeta {
                            name: format!("[internal] load git source {src}"),
                            location: None,
                        },
                    );
                    inputs.push(op);
                    actions.push(FileAction::Copy(graph::Copy {
                        input: inputs.len() - 1,
                        sources: vec!["/".into()],
                        dest: dest.clone(),
                        owner: owner.clone(),
                        chmod: chmod.clone(),
                        exclude: exclude.clone(),
                        parents: false,
                        unpack: false,
                        allow_empty_wildcard: false,
                    }));
                }
                SourceClass::Http if copy.is_add => {
                    if let Some(c) = &checksum {
                        if rbuild_solver::graph::Digest::parse(c).is_none() {
                            return Err(Error::new(
                                format!("invalid checksum digest {c:?}"),
                                node.span,
                            )
                            .with_help("use --checksum=sha256:<64 hex digits>"));
                        }
                    }
                    let filename = url_filename(src);
                    let op = self.g.add(
                        OpKind::Http(HttpSource {
                            url: src.clone(),
                            checksum: checksum.clone(),
                            filename: filename.clone(),
                        }),
                        vec![],
                        OpMeta {
                            name: format!("[internal] load remote source {src}"),
                            location: None,
                        },
                    );
                    inputs.push(op);
                    actions.push(FileAction::Copy(graph::Copy {
                        input: inputs.len() - 1,
                        sources: vec![format!("/{filename}")],
                        dest: dest.clone(),
                        owner: owner.clone(),
                        chmod: chmod.clone(),
                        exclude: exclude.clone(),
                        parents: false,
                        unpack: copy.unpack == Some(true),
                        allow_empty_wildcard: false,
                    }));
                }
                SourceClass::Git => {
                    return Err(Error::new("source can't be a git ref for COPY", *span)
                        .with_help("use ADD to add files from a git repository"))
                }
                SourceClass::Http => {
                    return Err(Error::new("source can't be a URL for COPY", *span)
                        .with_help("use ADD to download a file"))
                }
                SourceClass::Local => {
                    if checksum.is_some() {
                        return Err(Error::new(
                            "checksum requires HTTP(S) or Git sources",
                            *span,
                        ));
                    }
                    // BuildKit quietly reads `../x` as `x`; a path that
                    // climbs out of the context is almost always a mistake,
                    // so it is refused, as the classic builder did.
                    if from.is_none() && go_clean(src).starts_with("..") {
                        return Err(Error::new(
                            format!("forbidden path outside the build context: {src}"),
                            *span,
                        )
                        .with_help("COPY reads from the build context; move the file into it or pass another context with --build-context"));
                    }
                    let input = match inputs
                        .iter()
                        .position(|&o| o == source_input_op)
                        .filter(|&p| p > 0)
                    {
                        Some(p) => p,
                        None => {
                            inputs.push(source_input_op);
                            inputs.len() - 1
                        }
                    };
                    // Relative sources are cleaned and made absolute; absolute
                    // ones are kept as written (BuildKit's NormalizePath).
                    let source = if copy.parents || src.starts_with('/') {
                        src.clone()
                    } else {
                        clean_path(&format!("/{src}"))
                    };
                    actions.push(FileAction::Copy(graph::Copy {
                        input,
                        sources: vec![source],
                        dest: dest.clone(),
                        owner: owner.clone(),
                        chmod: chmod.clone(),
                        exclude: exclude.clone(),
                        parents: copy.parents,
                        unpack: copy.is_add && copy.unpack != Some(false),
                        allow_empty_wildcard: true,
                    }));
                }
            }
        }
        for (file, data) in &heredocs {
            let scratch = self.scratch();
            // Created 0644 like BuildKit does; --chmod applies when copied.
            let mode = 0o644;
            let doc = self.g.add(
                OpKind::File(FileOp {
                    actions: vec![FileAction::Mkfile {
                        path: format!("/{file}"),
                        mode,
                        data: data.clone(),
                        owner: None,
                    }],
                }),
                vec![scratch],
                OpMeta {
                    name: "[internal] preparing inline document".into(),
                    location: None,
                },
            );
            inputs.push(doc);
            actions.push(FileAction::Copy(graph::Copy {
                input: inputs.len() - 1,
                sources: vec![format!("/{file}")],
                dest: dest.clone(),
                owner: owner.clone(),
                chmod: chmod.clone(),
                exclude: Vec::new(),
                parents: false,
                unpack: false,
                allow_empty_wildcard: false,
            }));
        }

        let file_op = self.g.add(
            OpKind::File(FileOp { actions }),
            inputs,
            OpMeta {
                name: name.clone(),
                location: Some(location(node)),
            },
        );
        let result = if link {
            self.g.add(
                OpKind::Merge,
                vec![state.root, file_op],
                OpMeta {
                    name: format!("{name} (link)"),
                    location: Some(location(node)),
                },
            )
        } else {
            file_op
        };
        state.root = result;

        let mut msg = String::from(cmd);
        if copy.parents {
            msg.push_str(" --parents");
        }
        if let Some(c) = &chown {
            if !c.is_empty() {
                msg.push_str(&format!(" --chown={c}"));
            }
        }
        if let Some((c, _)) = &chmod_text {
            if !c.is_empty() {
                msg.push_str(&format!(" --chmod={c}"));
            }
        }
        for (p, _) in &paths {
            msg.push(' ');
            msg.push_str(p);
        }
        for (h, _) in &heredocs {
            msg.push_str(&format!(" <<{h}"));
        }
        msg.push(' ');
        msg.push_str(&dest_raw);
        self.commit(state, msg, Some(if link { file_op } else { result }));
        if link {
            if let Some(last) = state.history.last_mut() {
                last.layer_op = Some(file_op);
            }
        }
        Ok(())
    }

    // ----- expansion helpers -----------------------------------------------

    fn expand(&self, word: &Word, env: &dyn Env) -> Result<Expanded> {
        self.lexer
            .expand_word(&word.text, env)
            .map_err(|e| expand_error(word, e))
    }

    fn expand_in_from(&mut self, word: &Word, env: &EnvList) -> Result<Expanded> {
        let exp = self.expand(word, env)?;
        self.lint_from_vars(&exp, word.span);
        Ok(exp)
    }

    fn lint_from_vars(&mut self, exp: &Expanded, span: Span) {
        for u in &exp.unmatched {
            if self.meta_keys.contains(u) || self.global.get(u).is_some() {
                continue;
            }
            let mut msg = format!("FROM argument '{u}' is not declared");
            let candidates: Vec<&str> = self
                .meta_keys
                .iter()
                .map(String::as_str)
                .chain(self.global.0.iter().map(|(k, _)| k.as_str()))
                .collect();
            if let Some(s) = instructions::suggest(u, candidates.into_iter(), true) {
                msg = format!("{msg} (did you mean {s}?)");
            }
            self.lint.report(&lint::UNDEFINED_ARG_IN_FROM, span, msg);
        }
    }

    /// Expands a word of a stage instruction and reports undefined variables.
    fn expand_checked(&mut self, word: &Word, env: &EnvList, state: &State) -> Result<String> {
        let exp = self.expand(word, env)?;
        self.undefined_vars(&exp, word.span, state);
        Ok(exp.value)
    }

    fn expand_flag(
        &mut self,
        value: &str,
        span: Span,
        env: &EnvList,
        state: &State,
    ) -> Result<String> {
        let word = Word {
            text: value.to_string(),
            span,
        };
        self.expand_checked(&word, env, state)
    }

    fn undefined_vars(&mut self, exp: &Expanded, span: Span, state: &State) {
        for u in &exp.unmatched {
            self.report_undefined(u, span, state);
        }
    }

    fn report_undefined(&mut self, name: &str, span: Span, state: &State) {
        if state.build_args.iter().any(|(k, _)| k == name)
            || matches!(
                name,
                "BUILDKIT_SBOM_SCAN_CONTEXT" | "BUILDKIT_SBOM_SCAN_STAGE"
            )
        {
            return;
        }
        let mut msg = format!("Usage of undefined variable '${name}'");
        let keys: Vec<&str> = state.env.0.iter().map(|(k, _)| k.as_str()).collect();
        if let Some(s) = instructions::suggest(name, keys.into_iter(), true) {
            msg = format!("{msg} (did you mean ${s}?)");
        }
        self.lint.report(&lint::UNDEFINED_VAR, span, msg);
    }

    fn parse_time_lints(&mut self) {
        let mut lower = 0usize;
        let mut upper = 0usize;
        // BuildKit counts FROM lines and stage commands, not the ARGs before
        // the first FROM.
        let mut keywords: Vec<(&str, Span)> = Vec::new();
        for st in &self.df.stages {
            keywords.push((&st.node.keyword, st.node.keyword_span));
            for c in &st.commands {
                keywords.push((&c.node.keyword, c.node.keyword_span));
                if matches!(c.command, Command::Maintainer(_)) {
                    self.lint.report(
                        &lint::MAINTAINER_DEPRECATED,
                        c.node.keyword_span,
                        "Maintainer instruction is deprecated in favor of using label",
                    );
                }
            }
        }
        for (k, _) in &keywords {
            if *k == k.to_ascii_lowercase() {
                lower += 1;
            } else if *k == k.to_ascii_uppercase() {
                upper += 1;
            }
        }
        let majority_lower = lower > upper;
        for (k, span) in &keywords {
            let expected = if majority_lower {
                k.to_ascii_lowercase()
            } else {
                k.to_ascii_uppercase()
            };
            if *k != expected {
                self.lint.report(
                    &lint::CONSISTENT_INSTRUCTION_CASING,
                    *span,
                    format!(
                        "Command '{k}' should match the case of the command majority ({})",
                        if majority_lower {
                            "lowercase"
                        } else {
                            "uppercase"
                        }
                    ),
                );
            }
        }
        for st in &self.df.stages {
            let from_kw = &st.node.keyword;
            if let Some(as_kw) = &st.from.as_keyword {
                if let parser::Args::Words(words) = &st.node.args {
                    if let Some(orig) = words.get(2) {
                        if orig.text != orig.text.to_ascii_lowercase() {
                            self.lint.report(
                                &lint::STAGE_NAME_CASING,
                                orig.span,
                                format!("Stage name '{}' should be lowercase", orig.text),
                            );
                        }
                    }
                }
                let from_lower = *from_kw == from_kw.to_ascii_lowercase();
                let from_upper = *from_kw == from_kw.to_ascii_uppercase();
                let mismatch = (from_lower && as_kw.text != as_kw.text.to_ascii_lowercase())
                    || (from_upper && as_kw.text != as_kw.text.to_ascii_uppercase());
                if mismatch {
                    self.lint.report(
                        &lint::FROM_AS_CASING,
                        as_kw.span,
                        format!(
                            "'{}' and '{}' keywords' casing do not match",
                            as_kw.text, from_kw
                        ),
                    );
                }
            }
        }
    }
}

/// Step numbering for progress names, and which once-per-stage
/// instructions were seen where.
struct Step<'s> {
    step: &'s mut usize,
    total: usize,
    single: bool,
    seen_once: &'s mut BTreeMap<&'static str, Span>,
}

impl Step<'_> {
    fn next(&mut self, stage: &str, is_trigger: bool, text: &str) -> String {
        *self.step += 1;
        let text = if is_trigger {
            format!("ONBUILD {text}")
        } else {
            text.to_string()
        };
        step_name(stage, self.single, *self.step, self.total, &text)
    }
}

/// The proxy environment from proxy build arguments: for each kind, the
/// last matching key (in sorted order, any case) wins, and it is set in
/// both upper and lower case.
fn proxy_env(build_args: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for kind in [
        "http_proxy",
        "https_proxy",
        "ftp_proxy",
        "no_proxy",
        "all_proxy",
    ] {
        let value = build_args
            .iter()
            .rfind(|(k, _)| k.eq_ignore_ascii_case(kind));
        if let Some((_, v)) = value {
            out.push(format!("{}={v}", kind.to_ascii_uppercase()));
            out.push(format!("{kind}={v}"));
        }
    }
    out
}

/// The config of `FROM scratch` (BuildKit's emptyImage).
fn empty_image_config() -> ImageConfig {
    ImageConfig {
        env: Some(vec![format!("PATH={DEFAULT_PATH}")]),
        working_dir: Some("/".into()),
        ..Default::default()
    }
}

fn location(node: &Node) -> SourceLocation {
    SourceLocation {
        start_line: node.start_line,
        end_line: node.end_line,
    }
}

fn expand_error(word: &Word, e: crate::shell::ExpandError) -> Error {
    let at = (word.span.start + e.offset).min(word.span.end.max(word.span.start));
    Error::new(
        format!("failed to process {:?}: {}", word.text, e.message),
        Span::new(at, word.span.end.max(at + 1)),
    )
}

/// The stage's steps that show a `[n/total]` counter.
fn stage_total(decl: &Decl<'_>) -> usize {
    let base = usize::from(matches!(decl.base, BaseKind::Image(_)));
    // Every ONBUILD trigger counts, whatever its instruction.
    base + decl
        .commands
        .iter()
        .filter(|(c, trigger)| {
            *trigger
                || matches!(
                    c.command,
                    Command::Run(_) | Command::Copy(_) | Command::Workdir(_)
                )
        })
        .count()
}

fn step_name(stage: &str, single: bool, step: usize, total: usize, text: &str) -> String {
    if total == 0 {
        return text.to_string();
    }
    let width = total.to_string().len();
    let prefix = if single {
        String::new()
    } else {
        format!("{stage} ")
    };
    format!("[{prefix}{step:>width$}/{total}] {text}")
}

fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((cmd, rest)) => format!("{} {rest}", cmd.to_ascii_uppercase()),
        None => s.to_ascii_uppercase(),
    }
}

fn shell_of(state: &State) -> Vec<String> {
    match &state.config.shell {
        Some(s) if !s.is_empty() => s.clone(),
        _ if state.platform.os == "windows" => vec!["cmd".into(), "/S".into(), "/C".into()],
        _ => vec!["/bin/sh".into(), "-c".into()],
    }
}

fn onbuild_expressions(commands: &[Instruction]) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| match &c.command {
            Command::Onbuild(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// The text after `RUN ` in history: `|N k=v … argv`.
fn run_command_string(
    args: &[String],
    build_args: &[(String, Option<String>)],
    env: &EnvList,
) -> String {
    let mut items: Vec<(String, String)> = Vec::new();
    for (k, v) in build_args {
        let value = env
            .get(k)
            .map(str::to_string)
            .unwrap_or_else(|| v.clone().unwrap_or_default());
        match items.iter_mut().find(|(ik, _)| ik == k) {
            Some(item) => item.1 = value,
            None => items.push((k.clone(), value)),
        }
    }
    let mut parts = Vec::new();
    if !items.is_empty() {
        parts.push(format!("|{}", items.len()));
        parts.extend(items.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(args.iter().cloned());
    parts.join(" ")
}

/// Go's `path.Clean`: relative paths stay relative.
fn go_clean(p: &str) -> String {
    if p.starts_with('/') {
        return clean_path(p);
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." if parts.last().is_some_and(|l| *l != "..") => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// `path.Clean` for absolute slash paths.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// WORKDIR: absolute paths are kept as written; relative ones are joined to
/// the current directory.
fn normalize_workdir(current: &str, path: &str) -> String {
    if path.is_empty() {
        return if current.is_empty() {
            "/".into()
        } else {
            current.to_string()
        };
    }
    if path.starts_with('/') {
        return path.to_string();
    }
    clean_path(&format!("/{current}/{path}"))
}

/// COPY/ADD destination: relative to WORKDIR, keeping a trailing `/`.
fn dest_path(workdir: &str, dest: &str) -> String {
    let dest = if dest.is_empty() || dest == "." {
        "./"
    } else {
        dest
    };
    if dest.starts_with('/') {
        return dest.to_string();
    }
    let mut joined = clean_path(&format!("/{workdir}/{dest}"));
    if dest.ends_with("/.") {
        joined.push_str(if joined.ends_with('/') { "." } else { "/." });
    } else if dest.ends_with('/') && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}

fn base_name(p: &str) -> String {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn parse_owner(spec: &str) -> Owner {
    match spec.split_once(':') {
        Some((u, g)) => Owner {
            user: u.to_string(),
            group: Some(g.to_string()),
        },
        None => Owner {
            user: spec.to_string(),
            group: None,
        },
    }
}

/// `--chmod`: octal up to 07777, else a symbolic mode (`u+x,go-w`).
fn parse_chmod(v: &str) -> std::result::Result<Chmod, String> {
    let bad = || {
        format!("invalid chmod parameter: '{v}'. it should be octal string and between 0 and 07777")
    };
    if v.bytes().all(|b| b.is_ascii_digit()) {
        let m = u32::from_str_radix(v, 8).map_err(|_| bad())?;
        if m > 0o7777 {
            return Err(bad());
        }
        return Ok(Chmod::Octal(m));
    }
    for clause in v.split(',') {
        let who_len = clause
            .find(|c: char| !"ugoa".contains(c))
            .unwrap_or(clause.len());
        let mut rest = &clause[who_len..];
        if rest.is_empty() {
            return Err(format!("invalid chmod parameter: '{v}'"));
        }
        while !rest.is_empty() {
            let Some(op) = rest.chars().next().filter(|c| "+-=".contains(*c)) else {
                return Err(format!("invalid chmod parameter: '{v}'"));
            };
            rest = &rest[op.len_utf8()..];
            let perm_len = rest
                .find(|c: char| !"rwxXstugo".contains(c))
                .unwrap_or(rest.len());
            rest = &rest[perm_len..];
        }
    }
    Ok(Chmod::Symbolic(v.to_string()))
}

enum SourceClass {
    Local,
    Http,
    Git,
}

fn classify_source(src: &str) -> SourceClass {
    let is_http = src.starts_with("http://") || src.starts_with("https://");
    let git_url = src.starts_with("git@")
        || src.starts_with("git://")
        || src.starts_with("ssh://")
        || (is_http && {
            let path = src.split(['#', '?']).next().unwrap_or(src);
            path.ends_with(".git")
        });
    if git_url {
        SourceClass::Git
    } else if is_http {
        SourceClass::Http
    } else {
        SourceClass::Local
    }
}

fn split_git(src: &str) -> (String, Option<String>, Option<String>) {
    let (remote, fragment) = match src.split_once('#') {
        Some((r, f)) => (r.to_string(), Some(f)),
        None => (src.to_string(), None),
    };
    let (reference, subdir) = match fragment {
        Some(f) => match f.split_once(':') {
            Some((r, s)) => (
                Some(r.to_string()).filter(|r| !r.is_empty()),
                Some(s.to_string()).filter(|s| !s.is_empty()),
            ),
            None => (Some(f.to_string()).filter(|r| !r.is_empty()), None),
        },
        None => (None, None),
    };
    (remote, reference, subdir)
}

fn url_filename(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    let path = path.split_once('/').map_or("", |(_, p)| p);
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// `moby/sys/signal.ParseSignal`: a positive number or a known name.
fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<i64>() {
        return n > 0;
    }
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX", "UNUSED",
    ];
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) {
        return true;
    }
    let rt = |prefix: &str, sign: char| {
        name.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix(sign))
            .and_then(|n| n.parse::<u8>().ok())
            .is_some_and(|n| (1..=15).contains(&n) || (sign == '-' && n == 14))
    };
    rt("RTMIN", '+') || rt("RTMAX", '-')
}

/// EXPOSE `[ip:][hostPort:]port[-end][/proto]` → the `port/proto` keys,
/// whether the protocol was not lower case, whether an ip or host port was given.
fn parse_port_spec(raw: &str) -> std::result::Result<(Vec<String>, bool, bool), String> {
    let (rest, proto) = match raw.split_once('/') {
        Some((p, proto)) if !proto.is_empty() => (p, proto.to_string()),
        Some((p, _)) => (p, "tcp".to_string()),
        None => (raw, "tcp".to_string()),
    };
    let proto_lower = proto.to_ascii_lowercase();
    if !matches!(proto_lower.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let parts: Vec<&str> = rest.split(':').collect();
    let n = parts.len();
    let container = parts[n - 1];
    let (ip, host) = match n {
        1 => ("".to_string(), ""),
        2 => ("".to_string(), parts[0]),
        3 => (parts[0].to_string(), parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2]),
    };
    if !ip.is_empty() {
        let trimmed = ip.trim_matches(|c| c == '[' || c == ']');
        if trimmed.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {ip}"));
        }
    }
    if container.is_empty() {
        return Err(format!("no port specified: {raw}<empty>"));
    }
    let range = |s: &str| -> Option<(u16, u16)> {
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse().ok()?, b.parse().ok()?);
                (b >= a).then_some((a, b))
            }
            None => {
                let a = s.parse().ok()?;
                Some((a, a))
            }
        }
    };
    let (start, end) =
        range(container).ok_or_else(|| format!("invalid containerPort: {container}"))?;
    if !host.is_empty() {
        let (hs, he) = range(host).ok_or_else(|| format!("invalid hostPort: {host}"))?;
        if end != start && (end - start) != (he - hs) {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {container} and {host}"
            ));
        }
    }
    let keys = (start..=end)
        .map(|p| format!("{p}/{proto_lower}"))
        .collect();
    Ok((
        keys,
        proto != proto_lower,
        !ip.is_empty() || !host.is_empty(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(normalize_workdir("/", "app"), "/app");
        assert_eq!(normalize_workdir("/a", "../b"), "/b");
        assert_eq!(normalize_workdir("", "x"), "/x");
        assert_eq!(normalize_workdir("/a", "/x/"), "/x/");
        assert_eq!(dest_path("/app", "."), "/app/");
        assert_eq!(dest_path("/app", "sub/."), "/app/sub/.");
        assert_eq!(dest_path("/app", "sub/"), "/app/sub/");
        assert_eq!(dest_path("/app", "f"), "/app/f");
        assert_eq!(dest_path("/app", "/abs"), "/abs");
        assert_eq!(dest_path("", "x"), "/x");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port_spec("80").unwrap().0, ["80/tcp"]);
        assert_eq!(
            parse_port_spec("53/UDP").unwrap(),
            (vec!["53/udp".to_string()], true, false)
        );
        assert_eq!(parse_port_spec("8000-8002").unwrap().0.len(), 3);
        assert!(parse_port_spec("8080:80").unwrap().2);
        assert_eq!(parse_port_spec("80/xyz").unwrap_err(), "invalid proto: xyz");
        assert_eq!(
            parse_port_spec("abc").unwrap_err(),
            "invalid containerPort: abc"
        );
    }

    #[test]
    fn chmod_forms() {
        assert_eq!(parse_chmod("755"), Ok(Chmod::Octal(0o755)));
        assert_eq!(
            parse_chmod("u+x,go-w"),
            Ok(Chmod::Symbolic("u+x,go-w".into()))
        );
        assert!(parse_chmod("8888").is_err());
        assert!(parse_chmod("17777").is_err());
        assert!(parse_chmod("bogus").is_err());
    }

    #[test]
    fn signals() {
        assert!(valid_signal("SIGTERM"));
        assert!(valid_signal("kill"));
        assert!(valid_signal("9"));
        assert!(valid_signal("SIGRTMIN+3"));
        assert!(!valid_signal("SIGFOO"));
        assert!(!valid_signal("0"));
    }

    #[test]
    fn run_history_string() {
        let mut env = EnvList::default();
        env.set("A", "2");
        let s = run_command_string(
            &["/bin/sh".into(), "-c".into(), "echo".into()],
            &[("A".into(), Some("1".into())), ("B".into(), None)],
            &env,
        );
        assert_eq!(s, "|2 A=2 B= /bin/sh -c echo");
    }

    #[test]
    fn urls() {
        assert_eq!(
            url_filename("https://example.com/a/b.tar.gz?x=1"),
            "b.tar.gz"
        );
        assert_eq!(url_filename("https://example.com/"), "__unnamed__");
        assert!(matches!(
            classify_source("https://github.com/o/r.git#main"),
            SourceClass::Git
        ));
        assert!(matches!(
            classify_source("https://example.com/x"),
            SourceClass::Http
        ));
        assert!(matches!(classify_source("./src"), SourceClass::Local));
    }
}
