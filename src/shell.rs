//! Shell integration generated from the clap definitions: completion
//! scripts and man pages, so they never drift from the flags.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, CompletionShell};
use crate::Failure;

/// `rbuild completion SHELL`: the script on stdout.
pub fn completion(shell: CompletionShell) -> Result<ExitCode, Failure> {
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, "rbuild", &mut out);
    out.flush()
        .map_err(|e| Failure::failed(format!("writing the completion script: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

/// `rbuild man [SUBCOMMAND]` prints one page; `--dir DIR` writes them all.
pub fn man(subcommand: Option<&str>, dir: Option<&Path>) -> Result<ExitCode, Failure> {
    let cmd = Cli::command();
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::failed(format!("creating {}: {e}", dir.display())))?;
        write_page(&cmd, &dir.join("rbuild.1"))?;
        for sub in cmd.get_subcommands() {
            let name = format!("rbuild-{}", sub.get_name());
            let page = sub.clone().name(name.clone());
            write_page(&page, &dir.join(format!("{name}.1")))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let page = match subcommand {
        None => cmd,
        Some(name) => {
            let sub = cmd.find_subcommand(name).ok_or_else(|| {
                let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
                Failure::usage(format!(
                    "no subcommand {name:?}; the subcommands are: {}",
                    names.join(", ")
                ))
            })?;
            sub.clone().name(format!("rbuild-{}", sub.get_name()))
        }
    };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::failed(format!("writing the man page: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

fn write_page(cmd: &clap::Command, path: &Path) -> Result<(), Failure> {
    let mut bytes = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut bytes)
        .map_err(|e| Failure::failed(format!("rendering {}: {e}", path.display())))?;
    std::fs::write(path, bytes)
        .map_err(|e| Failure::failed(format!("writing {}: {e}", path.display())))
}
