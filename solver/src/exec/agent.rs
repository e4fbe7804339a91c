//! The ssh agent socket a `RUN --mount=type=ssh` step gets: a socket of
//! its own, with the mount's owner and mode (BuildKit's `uid`, `gid`,
//! `mode`), whose connections are relayed to the agent `--ssh` named. The
//! agent's own socket never enters the container, and its permissions
//! stay what its owner chose.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A relay from a new socket to an agent; stopped when dropped.
pub struct AgentProxy {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentProxy {
    /// Listens on `socket` (owned by `uid:gid`, permissions `mode`) and
    /// relays every connection to the agent at `agent`.
    pub fn start(agent: &Path, socket: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<Self> {
        // Fail now, not inside the step, when the agent is not there.
        drop(UnixStream::connect(agent).map_err(|e| {
            io::Error::new(e.kind(), format!("ssh agent {}: {e}", agent.display()))
        })?);
        let listener = UnixListener::bind(socket)?;
        std::os::unix::fs::chown(socket, Some(uid), Some(gid))?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (agent, flag) = (agent.to_path_buf(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(upstream) = UnixStream::connect(&agent) else {
                    continue;
                };
                relay(client, upstream);
            }
        });
        Ok(AgentProxy {
            socket: socket.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }
}

/// Copies bytes both ways until either side closes.
fn relay(a: UnixStream, b: UnixStream) {
    let pair = a.try_clone().and_then(|a2| Ok((a2, b.try_clone()?)));
    let Ok((a2, b2)) = pair else { return };
    let pipe = |mut from: UnixStream, mut to: UnixStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    };
    pipe(a, b);
    pipe(b2, a2);
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
