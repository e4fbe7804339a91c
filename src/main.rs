//! The `rbuild` command.

mod build;
mod cache_io;
mod cli;
mod diagnostic;
mod execute;
mod export;
mod housekeeping;
mod images;
mod manage;
mod options;
mod progress;
mod remote;
mod shell;
mod ssh;
mod tty;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, SUBCOMMANDS};

/// Exit status for a build (or check) that failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for bad usage: unknown flags, invalid flag values.
pub const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // The sandbox's container init re-executes this binary; it never returns.
    rbuild_sandbox::init_hook();
    let cli = match Cli::try_parse_from(with_implicit_build(std::env::args_os().collect())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    // Builds run as root in a user namespace (rootless) or in a private
    // mount namespace (real root), entered while we are single-threaded.
    let needs_namespace = match &cli.command {
        Command::Build(args) => args.call == cli::Call::Build && !args.check,
        // Snapshots hold files owned by the namespace's users.
        Command::Prune(_) => true,
        _ => false,
    };
    {
        if needs_namespace {
            match rbuild_sandbox::enter_user_namespace() {
                Ok(rbuild_sandbox::Namespace::ExitParent(code)) => {
                    return ExitCode::from(u8::try_from(code).unwrap_or(1));
                }
                Ok(rbuild_sandbox::Namespace::Rootless {
                    warning: Some(w), ..
                }) => eprintln!("warning: {w}"),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_FAILED);
                }
            }
        }
    }
    let result = match &cli.command {
        Command::Build(args) => build::run(&cli, args),
        Command::Images => build::store_root(&cli).and_then(|root| manage::images(&root)),
        Command::Rmi { names } => {
            build::store_root(&cli).and_then(|root| manage::rmi(&root, names))
        }
        Command::Inspect { name } => {
            build::store_root(&cli).and_then(|root| manage::inspect(&root, name))
        }
        Command::Push(args) => manage::push(&cli, args),
        Command::Pull(args) => manage::pull(&cli, args),
        Command::Du(args) => build::store_root(&cli).and_then(|root| housekeeping::du(&root, args)),
        Command::Prune(args) => {
            build::store_root(&cli).and_then(|root| housekeeping::prune(&root, args))
        }
        Command::Completion { shell } => shell::completion(*shell),
        Command::Man { subcommand, dir } => shell::man(subcommand.as_deref(), dir.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            if progress::json_errors() {
                // `--progress=json`: the end of the stream is an event too.
                let message = failure.message.trim_end();
                let message = message.strip_prefix("error: ").unwrap_or(message);
                eprintln!(
                    "{}",
                    serde_json::json!({"event": "error", "message": message, "exit": failure.code})
                );
            } else {
                eprint!("{}", failure.message);
                if !failure.message.ends_with('\n') {
                    eprintln!();
                }
            }
            ExitCode::from(failure.code)
        }
    }
}

/// `rbuild -t app:1 .` means `rbuild build -t app:1 .`: insert `build` when
/// the first argument is not a subcommand or a top-level flag.
fn with_implicit_build(mut args: Vec<OsString>) -> Vec<OsString> {
    // Global options may come before the subcommand: look past them.
    let mut i = 1;
    let first = loop {
        let Some(arg) = args.get(i).and_then(|a| a.to_str()) else {
            return args;
        };
        if GLOBAL_WITH_VALUE.contains(&arg) {
            i += 2;
        } else if GLOBAL_WITH_VALUE
            .iter()
            .any(|g| arg.strip_prefix(g).is_some_and(|r| r.starts_with('=')))
        {
            i += 1;
        } else {
            break arg;
        }
    };
    let top_level = matches!(first, "-h" | "--help" | "-V" | "--version");
    if !top_level && !SUBCOMMANDS.contains(&first) {
        args.insert(1, OsString::from("build"));
    }
    args
}

/// Global options that take a value (see `Cli`).
const GLOBAL_WITH_VALUE: &[&str] = &["--root", "--insecure-registry"];

/// A failed command: what to print and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// The full message, already formatted.
    pub message: String,
    /// The exit status.
    pub code: u8,
}

impl Failure {
    /// Bad usage (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: format!("error: {}", message.into()),
            code: EXIT_USAGE,
        }
    }

    /// The build failed (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            message: format!("error: {}", message.into()),
            code: EXIT_FAILED,
        }
    }

    /// A pre-rendered diagnostic (exit 1).
    pub fn rendered(message: String) -> Self {
        Failure {
            message,
            code: EXIT_FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn shorthand_inserts_build() {
        assert_eq!(
            with_implicit_build(os(&["rbuild", "-t", "a", "."])),
            os(&["rbuild", "build", "-t", "a", "."])
        );
        assert_eq!(
            with_implicit_build(os(&["rbuild", "."])),
            os(&["rbuild", "build", "."])
        );
        assert_eq!(
            with_implicit_build(os(&["rbuild", "build", "."])),
            os(&["rbuild", "build", "."])
        );
        assert_eq!(
            with_implicit_build(os(&["rbuild", "--help"])),
            os(&["rbuild", "--help"])
        );
        assert_eq!(
            with_implicit_build(os(&["rbuild", "--root", "/s", "push", "a"])),
            os(&["rbuild", "--root", "/s", "push", "a"])
        );
        assert_eq!(
            with_implicit_build(os(&["rbuild", "--root=/s", "-t", "a", "."])),
            os(&["rbuild", "build", "--root=/s", "-t", "a", "."])
        );
    }
}
