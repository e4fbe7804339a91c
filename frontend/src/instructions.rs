//! Typed instructions: each node checked for its arguments and flags.
//!
//! Nothing is expanded here; words keep their quotes and `$VAR`s, because
//! which environment expands them is only known while walking the stage.

use crate::error::{Error, Result, Warning};
use crate::parser::{self, Args, Ast, Heredoc, Node, RawFlag, Word};
use crate::source::Span;

/// A command line in shell form (run through the stage's SHELL) or exec form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandLine {
    /// Shell form: the text as written.
    Shell(Word),
    /// Exec form: the JSON array.
    Exec(Vec<String>),
}

/// A flag value with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue {
    /// The value after `=`.
    pub value: String,
    /// The whole flag.
    pub span: Span,
}

/// `FROM [--platform=…] image [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The base image or stage, unexpanded.
    pub base: Word,
    /// `--platform`.
    pub platform: Option<FlagValue>,
    /// The stage name, lower-cased.
    pub name: Option<Word>,
    /// The `AS` keyword as written (for the casing check).
    pub as_keyword: Option<Word>,
}

/// One `NAME[=default]` of an ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// The name.
    pub name: Word,
    /// The default, unexpanded.
    pub default: Option<Word>,
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command.
    pub command: Option<CommandLine>,
    /// `--mount` values, unparsed.
    pub mounts: Vec<FlagValue>,
    /// `--network`.
    pub network: Option<FlagValue>,
    /// `--security`.
    pub security: Option<FlagValue>,
    /// Attached here-documents.
    pub heredocs: Vec<Heredoc>,
}

/// A source of COPY or ADD: a path (or URL) or an inline here-document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path, pattern or URL, unexpanded.
    Path(Word),
    /// A here-document: written to a file called `name`.
    Heredoc {
        /// The file name (the delimiter).
        name: String,
        /// The content (tabs already chomped for `<<-`).
        content: String,
        /// Whether to expand variables in the content.
        expand: bool,
        /// Where the marker is.
        span: Span,
    },
}

/// COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// True for ADD.
    pub is_add: bool,
    /// The sources.
    pub sources: Vec<CopySource>,
    /// The destination, unexpanded.
    pub dest: Word,
    /// `--from` (COPY only).
    pub from: Option<FlagValue>,
    /// `--chown`.
    pub chown: Option<FlagValue>,
    /// `--chmod`.
    pub chmod: Option<FlagValue>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: Vec<FlagValue>,
    /// ADD `--checksum`.
    pub checksum: Option<FlagValue>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// ADD `--unpack` (None: the default for the source kind).
    pub unpack: Option<bool>,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`.
    None,
    /// `HEALTHCHECK [options] CMD …`.
    Cmd {
        /// The test command.
        command: CommandLine,
        /// Durations in nanoseconds, 0 when not given.
        interval: u64,
        /// --timeout.
        timeout: u64,
        /// --start-period.
        start_period: u64,
        /// --start-interval.
        start_interval: u64,
        /// --retries.
        retries: u64,
    },
}

/// One instruction after checking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// ARG.
    Arg(Vec<ArgDecl>),
    /// ENV, pairs unexpanded.
    Env(Vec<(Word, Word)>),
    /// LABEL, pairs unexpanded.
    Label(Vec<(Word, Word)>),
    /// MAINTAINER.
    Maintainer(Word),
    /// RUN.
    Run(Run),
    /// CMD.
    Cmd(Option<CommandLine>),
    /// ENTRYPOINT.
    Entrypoint(Option<CommandLine>),
    /// SHELL.
    Shell(Vec<String>),
    /// EXPOSE.
    Expose(Vec<Word>),
    /// VOLUME.
    Volume(Vec<Word>),
    /// WORKDIR.
    Workdir(Word),
    /// USER.
    User(Word),
    /// STOPSIGNAL.
    Stopsignal(Word),
    /// HEALTHCHECK.
    Healthcheck(Healthcheck),
    /// ONBUILD: the trigger as stored in the image config. The trigger is
    /// parsed again, from this text, when a child stage runs it.
    Onbuild(String),
    /// COPY or ADD.
    Copy(Copy),
}

/// An instruction and the node it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// What it does.
    pub command: Command,
    /// Where it came from.
    pub node: Node,
}

impl Instruction {
    /// The keyword in upper case, e.g. `RUN`.
    pub fn name(&self) -> String {
        self.node.keyword.to_ascii_uppercase()
    }
}

/// A FROM and the instructions after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The FROM.
    pub from: From,
    /// The FROM node.
    pub node: Node,
    /// The instructions after FROM, up to the next FROM.
    pub commands: Vec<Instruction>,
    /// A description from a `# name description` comment right above FROM.
    pub comment: Option<String>,
}

/// A checked Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// The syntax tree (directives, escape, raw nodes).
    pub ast: Ast,
    /// ARGs before the first FROM.
    pub meta_args: Vec<Instruction>,
    /// The stages.
    pub stages: Vec<Stage>,
    /// Syntax-level warnings.
    pub warnings: Vec<Warning>,
}

/// Every instruction keyword, for suggestions.
pub const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Parses and checks a whole Dockerfile.
pub fn parse_dockerfile(text: &str) -> Result<Dockerfile> {
    let ast = parser::parse(text)?;
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &ast.nodes {
        let instruction = parse_node(node)?;
        match instruction {
            Parsed::From(from) => {
                let comment = from.name.as_ref().and_then(|name| {
                    node.comments.iter().find_map(|c| {
                        c.strip_prefix(name.text.as_str())
                            .and_then(|rest| rest.strip_prefix(' '))
                            .map(str::to_string)
                    })
                });
                stages.push(Stage {
                    from,
                    node: node.clone(),
                    commands: Vec::new(),
                    comment,
                })
            }
            Parsed::Command(command) => {
                let instruction = Instruction {
                    command,
                    node: node.clone(),
                };
                match stages.last_mut() {
                    Some(stage) => stage.commands.push(instruction),
                    None if matches!(instruction.command, Command::Arg(_)) => {
                        meta_args.push(instruction)
                    }
                    None => {
                        return Err(Error::new(
                            "no build stage in current context",
                            node.keyword_span,
                        )
                        .with_help("only ARG may come before the first FROM"))
                    }
                }
            }
        }
    }
    if stages.is_empty() {
        let span = ast.nodes.last().map_or(Span::default(), |n| n.span);
        return Err(Error::new("no build stage in current context", span)
            .with_help("add a FROM instruction"));
    }
    let warnings = ast.warnings.clone();
    Ok(Dockerfile {
        ast,
        meta_args,
        stages,
        warnings,
    })
}

/// Parses an ONBUILD trigger (as stored in an image config) for a child
/// stage to run. Triggers are parsed on their own, like BuildKit does, and
/// every position in them is reported at the child's FROM, since their
/// text is not in the Dockerfile.
pub fn parse_trigger(expression: &str, from: &Node) -> Result<Instruction> {
    let at = from.span;
    let relocate = |mut e: Error| {
        e.span = at;
        e
    };
    let ast = parser::parse(expression).map_err(relocate)?;
    let [node] = ast.nodes.as_slice() else {
        return Err(Error::new(
            "onbuild trigger should be a single expression",
            at,
        ));
    };
    let mut node = node.clone();
    relocate_node(&mut node, at);
    node.start_line = from.start_line;
    node.end_line = from.end_line;
    match parse_node(&node).map_err(relocate)? {
        Parsed::Command(command) => Ok(Instruction { command, node }),
        Parsed::From(_) => Err(Error::new("FROM isn't allowed as an ONBUILD trigger", at)),
    }
}

fn relocate_node(node: &mut Node, at: Span) {
    node.span = at;
    node.keyword_span = at;
    node.args_span = at;
    node.comments.clear();
    for f in &mut node.flags {
        f.span = at;
    }
    for h in &mut node.heredocs {
        h.span = at;
    }
    relocate_args(&mut node.args, at);
}

fn relocate_args(args: &mut Args, at: Span) {
    match args {
        Args::Empty => {}
        Args::Text(w) => w.span = at,
        Args::Json { span, .. } => *span = at,
        Args::Words(ws) => ws.iter_mut().for_each(|w| w.span = at),
        Args::NameValues { pairs, .. } => pairs.iter_mut().for_each(|(k, v)| {
            k.span = at;
            v.span = at;
        }),
        Args::Health { kind, command } => {
            kind.span = at;
            relocate_args(command, at);
        }
        Args::Sub(node) => relocate_node(node, at),
    }
}

enum Parsed {
    From(From),
    Command(Command),
}

/// Parses one node into a typed instruction (FROM or a command).
fn parse_node(node: &Node) -> Result<Parsed> {
    let command = node.command();
    let name = command.to_ascii_uppercase();
    Ok(Parsed::Command(match command.as_str() {
        "from" => return parse_from(node).map(Parsed::From),
        "arg" => {
            // BuildKit never parses ARG's flags: they are ignored, not refused.
            let words = words(node);
            if words.is_empty() {
                return Err(at_least_one(node, &name));
            }
            if let Some(blank) = words.iter().find(|w| w.text.starts_with('=')) {
                return Err(Error::new("ARG names can not be blank", blank.span));
            }
            Command::Arg(
                words
                    .into_iter()
                    .map(|w| match w.text.split_once('=') {
                        Some((k, v)) => ArgDecl {
                            name: Word {
                                text: k.to_string(),
                                span: Span::new(w.span.start, w.span.start + k.len()),
                            },
                            default: Some(Word {
                                text: v.to_string(),
                                span: Span::new(
                                    (w.span.start + k.len() + 1).min(w.span.end),
                                    w.span.end,
                                ),
                            }),
                        },
                        None => ArgDecl {
                            name: w,
                            default: None,
                        },
                    })
                    .collect(),
            )
        }
        "env" | "label" => {
            Flags::parse(node, &[])?;
            let pairs = match &node.args {
                Args::NameValues { pairs, .. } => pairs.clone(),
                _ => Vec::new(),
            };
            if pairs.is_empty() {
                return Err(at_least_one(node, &name));
            }
            if let Some((k, _)) = pairs.iter().find(|(k, _)| k.text.is_empty()) {
                return Err(Error::new(format!("{name} names can not be blank"), k.span));
            }
            if command == "env" {
                Command::Env(pairs)
            } else {
                Command::Label(pairs)
            }
        }
        "maintainer" => {
            let arg = exactly_one(node, &name)?;
            Flags::parse(node, &[])?;
            Command::Maintainer(arg)
        }
        "workdir" => {
            let arg = exactly_one(node, &name)?;
            Flags::parse(node, &[])?;
            Command::Workdir(arg)
        }
        "user" => {
            let arg = exactly_one(node, &name)?;
            Flags::parse(node, &[])?;
            Command::User(arg)
        }
        // BuildKit never parses STOPSIGNAL's flags.
        "stopsignal" => Command::Stopsignal(exactly_one(node, &name)?),
        "expose" => {
            let mut words = words(node);
            if words.is_empty() {
                return Err(at_least_one(node, &name));
            }
            Flags::parse(node, &[])?;
            // BuildKit sorts the port words as written, before expansion.
            words.sort_by(|a, b| a.text.cmp(&b.text));
            Command::Expose(words)
        }
        "volume" => {
            let mut items = list(node);
            if items.is_empty() {
                return Err(at_least_one(node, &name));
            }
            Flags::parse(node, &[])?;
            for item in &mut items {
                item.text = item.text.trim().to_string();
                if item.text.is_empty() {
                    return Err(Error::new(
                        "VOLUME specified can not be an empty string",
                        item.span,
                    ));
                }
            }
            Command::Volume(items)
        }
        "shell" => {
            Flags::parse(node, &[])?;
            match &node.args {
                Args::Json { items, .. } => {
                    if items.is_empty() {
                        return Err(at_least_one(node, &name));
                    }
                    Command::Shell(items.clone())
                }
                Args::Empty => return Err(at_least_one(node, &name)),
                _ => {
                    return Err(Error::new(
                        "SHELL requires the arguments to be in JSON form",
                        node.args_span,
                    )
                    .with_help(r#"write it as SHELL ["/bin/sh", "-c"]"#))
                }
            }
        }
        "cmd" => {
            Flags::parse(node, &[])?;
            Command::Cmd(command_line(&node.args))
        }
        "entrypoint" => {
            Flags::parse(node, &[])?;
            Command::Entrypoint(command_line(&node.args))
        }
        "run" => {
            let flags = Flags::parse(
                node,
                &[
                    ("mount", FlagKind::Strings),
                    ("network", FlagKind::String),
                    ("security", FlagKind::String),
                ],
            )?;
            let network = flags.string("network");
            if let Some(n) = &network {
                if !matches!(n.value.as_str(), "default" | "none" | "host") {
                    return Err(
                        Error::new(format!("invalid network mode {:?}", n.value), n.span)
                            .with_help("use --network=default, none or host"),
                    );
                }
            }
            let security = flags.string("security");
            if let Some(s) = &security {
                if !matches!(s.value.as_str(), "sandbox" | "insecure") {
                    return Err(
                        Error::new(format!("security {:?} is not valid", s.value), s.span)
                            .with_help("use --security=sandbox or insecure"),
                    );
                }
            }
            let mounts = flags.all("mount");
            for mount in &mounts {
                crate::mounts::check_syntax(&mount.value).map_err(|e| Error::new(e, mount.span))?;
            }
            Command::Run(Run {
                command: command_line(&node.args),
                mounts,
                network,
                security,
                heredocs: node.heredocs.clone(),
            })
        }
        "copy" | "add" => Command::Copy(parse_copy(node, command == "add")?),
        "healthcheck" => Command::Healthcheck(parse_healthcheck(node)?),
        "onbuild" => {
            let Args::Sub(sub) = &node.args else {
                return Err(at_least_one(node, &name));
            };
            Flags::parse(node, &[])?;
            let trigger = sub.command().to_ascii_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err(Error::new(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                        sub.keyword_span,
                    ))
                }
                "MAINTAINER" | "FROM" => {
                    return Err(Error::new(
                        format!("{trigger} isn't allowed as an ONBUILD trigger"),
                        sub.keyword_span,
                    ))
                }
                _ => {}
            }
            let mut expression = strip_onbuild(&node.original).to_string();
            for heredoc in &node.heredocs {
                expression.push('\n');
                expression.push_str(&heredoc.content);
                expression.push_str(&heredoc.name);
            }
            Command::Onbuild(expression)
        }
        _ => {
            let mut err = Error::new(
                format!("unknown instruction: {}", node.keyword),
                node.keyword_span,
            );
            if let Some(s) = suggest(&node.keyword, INSTRUCTIONS.iter().copied(), false) {
                // The suggestion takes the case of what was written.
                let s = if node.keyword.chars().all(|c| !c.is_ascii_lowercase()) {
                    s.to_string()
                } else {
                    s.to_ascii_lowercase()
                };
                err.message = format!("{} (did you mean {}?)", err.message, s);
            }
            return Err(err);
        }
    }))
}

/// `ONBUILD RUN x` → `RUN x`, keeping the rest of the line as written.
fn strip_onbuild(original: &str) -> &str {
    let s = original.trim_start();
    let s = if s.len() >= 7 && s[..7].eq_ignore_ascii_case("onbuild") {
        &s[7..]
    } else {
        s
    };
    s.trim_start()
}

fn parse_from(node: &Node) -> Result<From> {
    let flags = Flags::parse(node, &[("platform", FlagKind::String)])?;
    let words = words(node);
    let (base, as_keyword, name) = match words.as_slice() {
        [base] => (base.clone(), None, None),
        [base, as_, name] if as_.text.eq_ignore_ascii_case("as") => {
            let lower = name.text.to_ascii_lowercase();
            if !valid_stage_name(&lower) {
                return Err(Error::new(
                    format!(
                        "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                        name.text
                    ),
                    name.span,
                ));
            }
            (
                base.clone(),
                Some(as_.clone()),
                Some(Word {
                    text: lower,
                    span: name.span,
                }),
            )
        }
        _ => {
            return Err(Error::new(
                "FROM requires either one or three arguments",
                node.args_span,
            )
            .with_help("write FROM <image> [AS <name>]"))
        }
    };
    Ok(From {
        base,
        platform: flags.string("platform"),
        name,
        as_keyword,
    })
}

/// `^[a-z][a-z0-9-_.]*$`.
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
}

fn parse_copy(node: &Node, is_add: bool) -> Result<Copy> {
    let name = if is_add { "ADD" } else { "COPY" };
    let args = list(node);
    if args.len() < 2 {
        let span = if args.is_empty() {
            node.span
        } else {
            node.args_span
        };
        return Err(Error::new(
            format!(
                "{name} requires at least two arguments, but only one was provided. Destination could not be determined"
            ),
            span,
        ));
    }
    let mut specs: Vec<(&'static str, FlagKind)> = vec![
        ("chown", FlagKind::String),
        ("chmod", FlagKind::String),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
    ];
    if is_add {
        specs.extend([
            ("keep-git-dir", FlagKind::Bool),
            ("checksum", FlagKind::String),
            ("unpack", FlagKind::Bool),
        ]);
    } else {
        specs.extend([("from", FlagKind::String), ("parents", FlagKind::Bool)]);
    }
    let flags = Flags::parse(node, &specs)?;
    let (dest, sources) = args
        .split_last()
        .expect("checked above: at least two arguments");
    if parser::parse_heredoc_marker(&dest.text)?.is_some() {
        return Err(Error::new(
            format!("{name} cannot accept a heredoc as a destination"),
            dest.span,
        ));
    }
    let mut out = Vec::with_capacity(sources.len());
    for src in sources {
        // Like BuildKit, a `<<NAME` source is a here-document even in JSON form
        // (and then has no content).
        let marker = parser::parse_heredoc_marker(&src.text).ok().flatten();
        match marker {
            Some(marker) => {
                let found = node.heredocs.iter().rev().find(|h| h.name == marker.name);
                let content = found.map(|h| h.content.clone()).unwrap_or_default();
                let content = if marker.chomp {
                    parser::chomp_heredoc(&content)
                } else {
                    content
                };
                out.push(CopySource::Heredoc {
                    name: marker.name,
                    content,
                    expand: marker.expand,
                    span: src.span,
                });
            }
            None => out.push(CopySource::Path(src.clone())),
        }
    }
    Ok(Copy {
        is_add,
        sources: out,
        dest: dest.clone(),
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link").unwrap_or(false),
        parents: flags.bool("parents").unwrap_or(false),
        exclude: flags.all("exclude"),
        checksum: flags.string("checksum"),
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        unpack: flags.bool("unpack"),
    })
}

fn parse_healthcheck(node: &Node) -> Result<Healthcheck> {
    let Args::Health { kind, command } = &node.args else {
        return Err(at_least_one(node, "HEALTHCHECK"));
    };
    let typ = kind.text.to_ascii_uppercase();
    if typ == "NONE" {
        if !matches!(**command, Args::Empty) {
            return Err(Error::new(
                "HEALTHCHECK NONE takes no arguments",
                node.args_span,
            ));
        }
        // BuildKit never parses the flags of HEALTHCHECK NONE.
        return Ok(Healthcheck::None);
    }
    let flags = Flags::parse(
        node,
        &[
            ("interval", FlagKind::String),
            ("timeout", FlagKind::String),
            ("start-period", FlagKind::String),
            ("start-interval", FlagKind::String),
            ("retries", FlagKind::String),
        ],
    )?;
    if typ != "CMD" {
        return Err(Error::new(
            format!("Unknown type \"{typ}\" in HEALTHCHECK (try CMD)"),
            kind.span,
        ));
    }
    let Some(command) = command_line(command) else {
        return Err(Error::new(
            "Missing command after HEALTHCHECK CMD",
            node.args_span,
        ));
    };
    let duration = |name: &str| -> Result<u64> {
        let Some(flag) = flags.string(name) else {
            return Ok(0);
        };
        let nanos = parse_go_duration(&flag.value).map_err(|e| Error::new(e, flag.span))?;
        if nanos != 0 && nanos < 1_000_000 {
            return Err(Error::new(
                format!("Interval {name:?} cannot be less than 1ms"),
                flag.span,
            ));
        }
        Ok(nanos as u64)
    };
    let retries = match flags.string("retries") {
        None => 0,
        Some(flag) => {
            let n: i32 = flag.value.parse().map_err(|e: std::num::ParseIntError| {
                let why = match e.kind() {
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                        "value out of range"
                    }
                    _ => "invalid syntax",
                };
                Error::new(
                    format!("strconv.ParseInt: parsing {:?}: {why}", flag.value),
                    flag.span,
                )
            })?;
            if n < 0 {
                return Err(Error::new(
                    format!("--retries cannot be negative ({n})"),
                    flag.span,
                ));
            }
            n as u64
        }
    };
    Ok(Healthcheck::Cmd {
        command,
        interval: duration("interval")?,
        timeout: duration("timeout")?,
        start_period: duration("start-period")?,
        start_interval: duration("start-interval")?,
        retries,
    })
}

/// Parses a Go duration (`1h2m3.5s`, `300ms`, `1us`) into nanoseconds,
/// with Go's error texts.
pub fn parse_go_duration(s: &str) -> std::result::Result<i128, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(invalid());
        }
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {s:?}")),
        };
        let (int, frac) = number.split_once('.').unwrap_or((number, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(invalid());
        }
        let int: i128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| invalid())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(invalid)?;
        let mut div = 1i128;
        for d in frac.bytes().take(18) {
            div *= 10;
            value += i128::from(d - b'0') * scale / div;
        }
        total = total.checked_add(value).ok_or_else(invalid)?;
    }
    Ok(if neg { -total } else { total })
}

fn command_line(args: &Args) -> Option<CommandLine> {
    match args {
        Args::Json { items, .. } => Some(CommandLine::Exec(items.clone())),
        Args::Text(word) => Some(CommandLine::Shell(word.clone())),
        _ => None,
    }
}

fn words(node: &Node) -> Vec<Word> {
    match &node.args {
        Args::Words(words) => words.clone(),
        Args::Text(word) => vec![word.clone()],
        _ => Vec::new(),
    }
}

/// Arguments that may be a JSON array or whitespace-separated words.
fn list(node: &Node) -> Vec<Word> {
    match &node.args {
        Args::Json { items, span } => items
            .iter()
            .map(|t| Word {
                text: t.clone(),
                span: *span,
            })
            .collect(),
        _ => words(node),
    }
}

fn at_least_one(node: &Node, name: &str) -> Error {
    Error::new(format!("{name} requires at least one argument"), node.span)
}

fn exactly_one(node: &Node, name: &str) -> Result<Word> {
    match &node.args {
        Args::Text(word) => Ok(word.clone()),
        _ => Err(Error::new(
            format!("{name} requires exactly one argument"),
            node.span,
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    String,
    Strings,
}

/// Flags checked against an instruction's allowed set, BuildKit's BFlags rules.
struct Flags {
    values: Vec<(&'static str, FlagValue)>,
}

impl Flags {
    fn parse(node: &Node, specs: &[(&'static str, FlagKind)]) -> Result<Flags> {
        let mut values: Vec<(&'static str, FlagValue)> = Vec::new();
        for RawFlag { text, span } in &node.flags {
            let Some(body) = text.strip_prefix("--") else {
                return Err(Error::new(
                    format!("arg should start with -- : {text}"),
                    *span,
                ));
            };
            if body.is_empty() {
                break;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(spec_name, kind)) = specs.iter().find(|(n, _)| *n == name) else {
                let mut message = format!("unknown flag: --{name}");
                if let Some(s) = suggest(name, specs.iter().map(|(n, _)| *n), true) {
                    message = format!("{message} (did you mean {s}?)");
                }
                return Err(Error::new(message, *span));
            };
            if kind != FlagKind::Strings && values.iter().any(|(n, _)| *n == spec_name) {
                return Err(Error::new(
                    format!("duplicate flag specified: --{name}"),
                    *span,
                ));
            }
            let value = match kind {
                FlagKind::Bool => match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => "true".to_string(),
                    Some("false") => "false".to_string(),
                    Some("") => {
                        return Err(Error::new(
                            format!("missing a value on flag: --{name}"),
                            *span,
                        ))
                    }
                    Some(_) => {
                        return Err(Error::new(
                            format!(
                                "expecting boolean value for flag --{name}, not: {}",
                                value.unwrap_or_default()
                            ),
                            *span,
                        ))
                    }
                },
                FlagKind::String | FlagKind::Strings => match value {
                    Some(v) => v.to_string(),
                    None => {
                        return Err(Error::new(
                            format!("missing a value on flag: --{name}"),
                            *span,
                        ))
                    }
                },
            };
            values.push((spec_name, FlagValue { value, span: *span }));
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> Option<FlagValue> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    fn all(&self, name: &str) -> Vec<FlagValue> {
        self.values
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v.value == "true")
    }
}

/// The candidate closest to `word` by edit distance, if fewer than three
/// edits away and not `word` itself (BuildKit's "did you mean" rule).
pub fn suggest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
    case_sensitive: bool,
) -> Option<&'a str> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_ascii_lowercase()
        }
    };
    let word = fold(word);
    let mut best: Option<(usize, &str)> = None;
    for candidate in candidates {
        let c = fold(candidate);
        if c == word {
            return None;
        }
        let d = levenshtein(&word, &c);
        if d < 3 && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s"), Ok(30_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(
            parse_go_duration("10"),
            Err("time: missing unit in duration \"10\"".to_string())
        );
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("RUNN", INSTRUCTIONS.iter().copied(), false),
            Some("RUN")
        );
        assert_eq!(
            suggest("coppy", INSTRUCTIONS.iter().copied(), false),
            Some("COPY")
        );
        assert_eq!(suggest("XYZZY", INSTRUCTIONS.iter().copied(), false), None);
        assert_eq!(
            suggest("form", ["from", "chown"].into_iter(), true),
            Some("from")
        );
    }
}
