//! `rbuild build`: read the Dockerfile, check it, lower it, and (with
//! `--call`) report on it.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rbuild_frontend::{lower, Dockerfile, Lowered, NoImages, Options, SourceFile};
use rbuild_solver::graph::{NetworkMode, Platform};

use crate::cli::{BuildArgs, Call, Cli, NetworkArg};
use crate::diagnostic::{render_error, render_warning};
use crate::options;
use crate::Failure;

/// Runs `rbuild build`.
pub fn run(cli: &Cli, args: &BuildArgs) -> Result<ExitCode, Failure> {
    let checked = check_flags(cli, args)?;
    let (source, _context) = read_dockerfile(args)?;
    let dockerfile = rbuild_frontend::parse(source.text())
        .map_err(|e| Failure::rendered(render_error(&source, &e)))?;
    let call = if args.check { Call::Check } else { args.call };

    if call == Call::Targets {
        print_targets(&dockerfile);
        return Ok(ExitCode::SUCCESS);
    }

    let lowered = lower(&dockerfile, &checked.options, &NoImages)
        .map_err(|e| Failure::rendered(render_error(&source, &e)))?;

    match call {
        Call::Check => Ok(print_check(&source, &lowered)),
        Call::Graph => {
            let mut out = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut out, &lowered.graph)
                .map_err(|e| Failure::failed(format!("writing the graph: {e}")))?;
            let _ = writeln!(out);
            Ok(ExitCode::SUCCESS)
        }
        Call::Targets => unreachable!("handled before lowering"),
        Call::Build => {
            print_warnings(&source, &lowered);
            fail_on_lint_errors(&lowered)?;
            if let Some(flag) = checked.unsupported.first() {
                return Err(Failure::usage(format!(
                    "{flag} is not supported yet by this version of rbuild"
                )));
            }
            Err(Failure::failed(
                "executing builds is not supported yet by this version of rbuild: the Dockerfile \
                 parsed and lowered fine; use --call=check, --call=targets or --call=graph to inspect it",
            ))
        }
    }
}

/// Flag values after checking, and the flags whose feature is not there yet.
struct CheckedFlags {
    options: Options,
    unsupported: Vec<&'static str>,
}

fn check_flags(cli: &Cli, args: &BuildArgs) -> Result<CheckedFlags, Failure> {
    let usage = |e: options::OptionError| Failure::usage(e.to_string());
    let build_args =
        options::build_args(&args.build_args, |k| std::env::var(k).ok()).map_err(usage)?;
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
    let _root = store_root(cli)?;

    let mut unsupported = Vec::new();
    let mut note = |used: bool, flag: &'static str| {
        if used {
            unsupported.push(flag);
        }
    };
    note(!args.tags.is_empty(), "--tag");
    note(args.push, "--push");
    note(!outputs.is_empty(), "--output");
    note(!cache_from.is_empty(), "--cache-from");
    note(!cache_to.is_empty(), "--cache-to");
    note(!secrets.is_empty(), "--secret");
    note(!ssh.is_empty(), "--ssh");
    note(!contexts.is_empty(), "--build-context");
    note(args.iidfile.is_some(), "--iidfile");
    note(args.metadata_file.is_some(), "--metadata-file");
    note(args.no_cache, "--no-cache");
    note(!args.no_cache_filter.is_empty(), "--no-cache-filter");
    note(args.pull, "--pull");
    note(args.jobs.is_some(), "--jobs");

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
    Ok(CheckedFlags {
        options,
        unsupported,
    })
}

/// `--root`, else `$RBUILD_ROOT` (clap reads it), else the per-user default.
fn store_root(cli: &Cli) -> Result<PathBuf, Failure> {
    if let Some(root) = &cli.root {
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

/// The Dockerfile's text and name, and the context directory (if any).
fn read_dockerfile(args: &BuildArgs) -> Result<(SourceFile, Option<PathBuf>), Failure> {
    let context = (args.context != "-").then(|| PathBuf::from(&args.context));
    if let Some(dir) = &context {
        if !dir.is_dir() {
            return Err(Failure::usage(format!(
                "build context {:?} is not a directory (give a directory, or - to read from stdin)",
                dir.display().to_string()
            )));
        }
    }
    match (args.file.as_deref(), &context) {
        (Some("-"), _) => {
            let text = read_stdin()?;
            Ok((SourceFile::new("Dockerfile", text), context))
        }
        (Some(file), _) => {
            let path = PathBuf::from(file);
            let text = read_file(&path)?;
            Ok((SourceFile::new(display_name(&path), text), context))
        }
        (None, Some(dir)) => {
            let path = dir.join("Dockerfile");
            let text = read_file(&path)?;
            Ok((SourceFile::new(display_name(&path), text), context))
        }
        (None, None) => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::failed(format!("reading stdin: {e}")))?;
            if looks_like_tar(&bytes) {
                return Err(Failure::usage(
                    "a build context as a tar archive on stdin is not supported yet by this version of rbuild",
                ));
            }
            let text = String::from_utf8(bytes)
                .map_err(|_| Failure::failed("the Dockerfile on stdin is not valid UTF-8"))?;
            Ok((SourceFile::new("Dockerfile", text), None))
        }
    }
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
