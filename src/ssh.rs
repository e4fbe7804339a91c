//! `--ssh`: the agent sockets `RUN --mount=type=ssh` gets.
//!
//! A socket given (or `$SSH_AUTH_SOCK` for a bare id) is bound into the
//! step as it is. Key files get an agent of their own for the build:
//! `ssh-agent` (from openssh-client) on a socket in a private directory,
//! loaded with `ssh-add`, killed when the build ends.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::options::SshSpec;
use crate::Failure;

/// The sockets for a build, and the agents started for it.
#[derive(Default)]
pub struct Agents {
    /// id → socket.
    pub sockets: BTreeMap<String, PathBuf>,
    started: Vec<(Child, PathBuf)>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for (child, dir) in &mut self.started {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir.as_path());
        }
    }
}

/// Resolves `--ssh` values into agent sockets.
pub fn agents(specs: &[SshSpec]) -> Result<Agents, Failure> {
    let mut agents = Agents::default();
    for spec in specs {
        let socket = if spec.paths.is_empty() {
            let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
                Failure::usage(format!(
                    "--ssh {}: SSH_AUTH_SOCK is not set (start ssh-agent, or give --ssh {}=SOCKET|KEY)",
                    spec.id, spec.id
                ))
            })?;
            checked_socket(&spec.id, Path::new(&sock))?
        } else if spec.paths.len() == 1 && is_socket(Path::new(&spec.paths[0])) {
            checked_socket(&spec.id, Path::new(&spec.paths[0]))?
        } else {
            agents.start(&spec.id, &spec.paths)?
        };
        agents.sockets.insert(spec.id.clone(), socket);
    }
    Ok(agents)
}

fn is_socket(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn checked_socket(id: &str, path: &Path) -> Result<PathBuf, Failure> {
    if !is_socket(path) {
        return Err(Failure::usage(format!(
            "--ssh {id}: {} is not an ssh agent socket",
            path.display()
        )));
    }
    std::path::absolute(path).map_err(|e| Failure::usage(format!("--ssh {id}: {e}")))
}

impl Agents {
    /// Starts `ssh-agent` with the keys in `keys`; returns its socket.
    fn start(&mut self, id: &str, keys: &[String]) -> Result<PathBuf, Failure> {
        for key in keys {
            if !Path::new(key).is_file() {
                return Err(Failure::usage(format!(
                    "--ssh {id}: {key} is neither an agent socket nor a key file"
                )));
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "rbuild-ssh-{}-{}",
            std::process::id(),
            self.started.len()
        ));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| Failure::failed(format!("--ssh {id}: {}: {e}", dir.display())))?;
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                Failure::failed(format!(
                    "--ssh {id}: cannot start ssh-agent for the key files ({e}); \
                     install openssh-client, or give an agent socket"
                ))
            })?;
        self.started.push((child, dir));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_socket(&socket) {
            if Instant::now() > deadline {
                return Err(Failure::failed(format!(
                    "--ssh {id}: ssh-agent did not create its socket"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for key in keys {
            let out = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &socket)
                .env("SSH_ASKPASS_REQUIRE", "never")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Failure::failed(format!("--ssh {id}: cannot run ssh-add: {e}")))?;
            if !out.status.success() {
                return Err(Failure::failed(format!(
                    "--ssh {id}: ssh-add {key} failed (a key with a passphrase needs an agent: \
                     load it with ssh-add and pass --ssh {id}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(socket)
    }
}
