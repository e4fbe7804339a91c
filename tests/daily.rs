//! Daily use and CI: `--logfile` keeps every line of output, `--ssh`
//! forwards a real `ssh-agent` into `RUN --mount=type=ssh`, and the shell
//! completion scripts and man pages come out of the clap definitions.
//! Builds that RUN are skipped with a note when not root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const TAG: &str = "img:latest";

struct Fx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    ctx: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let tmp = tempfile::Builder::new()
            .prefix("rbuild-daily")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let root = dir.join("store");
        let ctx = dir.join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        Fx {
            _tmp: tmp,
            dir,
            root,
            ctx,
        }
    }

    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = build(&self.root);
        cmd.arg(busybox_flag())
            .args(["-t", TAG])
            .args(args)
            .arg(&self.ctx);
        cmd
    }
}

#[test]
fn a_logfile_keeps_every_line_of_a_20_mb_output() {
    if !root_only("a_logfile_keeps_every_line_of_a_20_mb_output") {
        return;
    }
    let fx = Fx::new();
    // 262,144 lines of 80 bytes: 20 MiB, each line numbered.
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\n\
         RUN i=0; while [ $i -lt 262144 ]; do \
         printf '%08d abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghij\\n' $i; \
         i=$((i+1)); done\n",
    );
    let log = fx.dir.join("build.log");
    // Whatever the display shows (here nothing), the log gets it all.
    let out = ok(rbuild(&fx.root)
        .args(["build", "--progress=quiet"])
        .arg(busybox_flag())
        .args(["-t", TAG, "--no-cache", "--logfile"])
        .arg(&log)
        .arg(&fx.ctx));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let step = text
        .lines()
        .find(|l| l.contains("] RUN i=0"))
        .unwrap_or_else(|| panic!("no RUN step in the log:\n{}", &text[..text.len().min(2000)]));
    let prefix = format!("{} ", step.split(' ').next().unwrap());
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.len() == prefix.len() + 81)
        .collect();
    assert_eq!(lines.len(), 262_144, "output lines in the log");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l[prefix.len()..].starts_with(&format!("{i:08} ")),
            "line {i} is {l:?}"
        );
    }
    assert!(
        text.contains(&format!("{}DONE", prefix)),
        "the step's end is logged"
    );
    // The CLI's own steps too.
    assert!(
        text.contains("naming to docker.io/library/img:latest"),
        "{}",
        &text[..300]
    );
}

/// Copies `bin` and the shared libraries `ldd` names into `root`, at
/// their own paths, so a busybox image can run it.
fn copy_with_libs(bin: &str, root: &Path) {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    let mut files = vec![bin.to_string()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_string());
        }
    }
    for f in files {
        let real = std::fs::canonicalize(&f).unwrap();
        let dest = root.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&real, &dest).unwrap();
    }
}

/// A started `ssh-agent` holding one fresh ed25519 key; killed on drop.
struct Agent {
    pid: String,
    socket: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let key = dir.join("id_test");
        assert!(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "rbuild-test-key",
                "-f"
            ])
            .arg(&key)
            .status()
            .unwrap()
            .success());
        let socket = dir.join("agent.sock");
        let out = Command::new("ssh-agent")
            .arg("-a")
            .arg(&socket)
            .output()
            .expect("ssh-agent");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pid = text
            .split("SSH_AGENT_PID=")
            .nth(1)
            .and_then(|s| s.split(';').next())
            .expect("ssh-agent prints its pid")
            .to_string();
        assert!(Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .unwrap()
            .status
            .success());
        let fp = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&key)
            .output()
            .unwrap();
        let fingerprint = String::from_utf8_lossy(&fp.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_string();
        Agent {
            pid,
            socket,
            key,
            fingerprint,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn ssh_forwards_a_real_agent_into_run() {
    if !root_only("ssh_forwards_a_real_agent_into_run") {
        return;
    }
    if !["ssh-agent", "ssh-add", "ssh-keygen", "ldd"]
        .iter()
        .all(|t| have(t))
    {
        eprintln!("note: openssh-client is missing: skipping ssh_forwards_a_real_agent_into_run");
        return;
    }
    let fx = Fx::new();
    let agent = Agent::start(&fx.dir);
    copy_with_libs("/usr/bin/ssh-add", &fx.ctx.join("sshroot"));
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\n\
         COPY sshroot/ /\n\
         RUN --mount=type=ssh ssh-add -l > /keys.txt && echo \"$SSH_AUTH_SOCK\" > /sock.txt\n\
         RUN --mount=type=ssh,id=other,target=/tmp/other.sock \
         SSH_AUTH_SOCK=/tmp/other.sock ssh-add -l > /other.txt\n\
         RUN mkdir -m 1777 /out\n\
         USER 1000\n\
         RUN --mount=type=ssh,uid=1000,mode=0600 ssh-add -l > /out/user.txt \
         && stat -c '%u %a' \"$SSH_AUTH_SOCK\" > /out/sock-owner.txt\n",
    );
    // The agent given as a socket, and (for `other`) a key file, which
    // gets an agent of rbuild's own.
    let sock = format!("default={}", agent.socket.display());
    let key = format!("other={}", agent.key.display());
    ok(&mut fx.cmd(&["--ssh", &sock, "--ssh", &key]));
    let img = StoredImage::load(&fx.root, TAG);
    let keys = img.text("/keys.txt");
    assert!(keys.contains(&agent.fingerprint), "ssh-add -l said: {keys}");
    assert!(keys.contains("rbuild-test-key"), "{keys}");
    assert_eq!(img.text("/sock.txt"), "/run/buildkit/ssh_agent.0\n");
    let other = img.text("/other.txt");
    assert!(other.contains(&agent.fingerprint), "{other}");
    // uid= and mode= give a step running as another user its socket.
    assert!(img.text("/out/user.txt").contains(&agent.fingerprint));
    assert_eq!(img.text("/out/sock-owner.txt"), "1000 600\n");
    // Nothing of the agent stays in the image.
    assert!(!img.has("/run/buildkit/ssh_agent.0"));
    assert!(!img.has("/tmp/other.sock"));

    // $SSH_AUTH_SOCK for a bare `--ssh default`.
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\nCOPY sshroot/ /\nRUN --mount=type=ssh ssh-add -l > /keys.txt\n",
    );
    ok(fx
        .cmd(&["--ssh", "default"])
        .env("SSH_AUTH_SOCK", &agent.socket));
    assert!(StoredImage::load(&fx.root, TAG)
        .text("/keys.txt")
        .contains(&agent.fingerprint));

    // A required ssh mount without --ssh says what to pass.
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=ssh,required=true true\n",
    );
    let err = fails(&mut fx.cmd(&[]), 1);
    assert!(err.contains("--ssh default"), "{err}");
    // A path that is neither a socket nor a file is bad usage.
    let err = fails(&mut fx.cmd(&["--ssh", "default=/nonexistent/sock"]), 2);
    assert!(err.contains("/nonexistent/sock"), "{err}");
}

#[test]
fn completion_scripts_and_man_pages_come_from_the_flags() {
    let out = |args: &[&str]| -> String {
        let o = ok(rbuild(Path::new("/nonexistent")).args(args));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let bash = out(&["completion", "bash"]);
    assert!(
        bash.contains("complete -F _rbuild"),
        "{}",
        &bash[..bash.len().min(500)]
    );
    assert!(bash.contains("--metadata-file"));
    assert!(out(&["completion", "zsh"]).starts_with("#compdef rbuild"));
    assert!(out(&["completion", "fish"]).contains("complete -c rbuild"));

    let page = out(&["man"]);
    assert!(
        page.contains(".TH rbuild"),
        "{}",
        &page[..page.len().min(500)]
    );
    let build = out(&["man", "build"]);
    assert!(build.contains(".TH rbuild-build"));
    assert!(build.contains("metadata\\-file"), "{build}");
    let tmp = tempfile::tempdir().unwrap();
    ok(rbuild(tmp.path()).args(["man", "--dir"]).arg(tmp.path()));
    for page in [
        "rbuild.1",
        "rbuild-build.1",
        "rbuild-prune.1",
        "rbuild-completion.1",
    ] {
        let text = std::fs::read_to_string(tmp.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.contains(".TH rbuild"),
            "{page}: {}",
            &text[..text.len().min(200)]
        );
    }
    let err = fails(rbuild(tmp.path()).args(["man", "nosuch"]), 2);
    assert!(err.contains("nosuch"), "{err}");
    let err = fails(rbuild(tmp.path()).args(["completion", "tcsh"]), 2);
    assert!(err.contains("tcsh"), "{err}");
}

/// The steps of a progress output, by name, each with what it printed
/// (durations left out: they vary), sorted by name (independent steps run
/// in parallel, so their lines interleave in any order).
fn plain_steps(out: &str) -> String {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut events: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let (id, text) = rest.split_once(' ').unwrap_or((rest, ""));
        match names.get(id) {
            None => {
                names.insert(id.to_string(), text.to_string());
            }
            Some(name) => {
                let text = if text.starts_with("DONE ") {
                    "DONE"
                } else {
                    text
                };
                events
                    .entry(name.clone())
                    .or_default()
                    .push(text.to_string());
            }
        }
    }
    summary(names.values(), &events)
}

/// One line per step name with what it printed, sorted.
fn summary<'a>(
    names: impl Iterator<Item = &'a String>,
    events: &BTreeMap<String, Vec<String>>,
) -> String {
    names
        .map(|n| {
            format!(
                "{n}: {}\n",
                events.get(n).map(|e| e.join(" | ")).unwrap_or_default()
            )
        })
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect()
}

/// The same for `--progress=json`; also checks every line is a JSON object.
fn json_steps(out: &str) -> String {
    let mut names: BTreeMap<u64, String> = BTreeMap::new();
    let mut events: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut result = None;
    for line in out.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let id = v["id"].as_u64();
        match (v["event"].as_str().unwrap(), v["status"].as_str()) {
            ("step", Some("started")) => {
                names.insert(id.unwrap(), v["name"].as_str().unwrap().to_string());
            }
            ("step", Some("done")) => {
                assert!(v["seconds"].as_f64().unwrap() >= 0.0, "{line}");
                let what = if v["cached"].as_bool().unwrap() {
                    "CACHED"
                } else {
                    "DONE"
                };
                events
                    .entry(names[&id.unwrap()].clone())
                    .or_default()
                    .push(what.into());
            }
            ("log", _) => events
                .entry(names[&id.unwrap()].clone())
                .or_default()
                .push(v["line"].as_str().unwrap().to_string()),
            ("result", _) => result = v["image"].as_str().map(str::to_string),
            other => panic!("unexpected event {other:?}: {line}"),
        }
    }
    assert!(
        result.is_some_and(|r| r.starts_with("sha256:")),
        "no result event:\n{out}"
    );
    summary(names.values(), &events)
}

#[test]
fn plain_and_json_progress_match_their_golden_outputs() {
    if !root_only("plain_and_json_progress_match_their_golden_outputs") {
        return;
    }
    let fx = Fx::new();
    write_file(&fx.ctx.join("f"), "f\n");
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\nCOPY f /f\nRUN echo hello && echo world\n",
    );
    let run = |progress: &str| -> String {
        let out = ok(rbuild(&fx.root)
            .args(["build", progress])
            .arg(busybox_flag())
            .args(["-t", TAG])
            .arg(&fx.ctx));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cold = "[1/2] COPY f /f: DONE\n\
                [2/2] RUN echo hello && echo world: hello | world | DONE\n\
                [context busybox] load from client: DONE\n\
                [internal] load build context: DONE\n\
                naming to docker.io/library/img:latest: DONE\n";
    let warm = "[1/2] COPY f /f: CACHED\n\
                [2/2] RUN echo hello && echo world: CACHED\n\
                [context busybox] load from client: DONE\n\
                [internal] load build context: DONE\n\
                naming to docker.io/library/img:latest: DONE\n";
    let out = run("--progress=plain");
    assert_eq!(plain_steps(&out), cold, "{out}");
    assert!(out.trim_end().ends_with(&format!(
        "built {}",
        StoredImage::load(&fx.root, TAG).manifest["config"]["digest"]
            .as_str()
            .unwrap()
    )));
    let out = run("--progress=plain");
    assert_eq!(plain_steps(&out), warm, "{out}");
    let out = run("--progress=json");
    assert_eq!(json_steps(&out), warm, "{out}");
    ok(rbuild(&fx.root).args(["prune", "-af"]));
    let out = run("--progress=json");
    assert_eq!(json_steps(&out), cold, "{out}");

    // A failing build: still JSON to the last line, which says why.
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo before-failing && exit 7\n",
    );
    let out = rbuild(&fx.root)
        .args(["build", "--progress=json"])
        .arg(busybox_flag())
        .arg(&fx.ctx)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let events: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let last = events.last().expect("events");
    assert_eq!(last["event"], "error", "{err}");
    assert_eq!(last["exit"], 1);
    assert!(
        last["message"].as_str().unwrap().contains("exit code: 7"),
        "{err}"
    );
    assert!(events
        .iter()
        .any(|e| e["event"] == "log" && e["line"] == "before-failing"));
    assert!(events
        .iter()
        .any(|e| e["event"] == "step" && e["status"] == "error"));
}

/// A tmux session running one command; killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .output();
        let status = Command::new("tmux")
            .args([
                "-u",
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "150",
                "-y",
                "50",
            ])
            .arg(command)
            .env("LANG", "C.UTF-8")
            .status()
            .expect("tmux");
        assert!(status.success(), "tmux new-session failed");
        Tmux {
            name: name.to_string(),
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until `done` holds for it (at most 60 s); every
    /// screen seen is passed to `seen` first.
    fn wait(&self, mut seen: impl FnMut(&str), done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let s = self.screen();
            seen(&s);
            if done(&s) {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out; the screen:\n{s}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .output();
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn the_tty_display_shows_running_steps_ends_clean_and_keeps_a_failure_visible() {
    if !root_only("the_tty_display_shows_running_steps_ends_clean_and_keeps_a_failure_visible") {
        return;
    }
    if !have("tmux") {
        eprintln!("note: tmux is missing: skipping the tty display test");
        return;
    }
    let fx = Fx::new();
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\n\
         RUN echo first-output-line && sleep 2 && echo second-output-line\n\
         RUN echo last-step\n",
    );
    let command = |extra: &str| {
        format!(
            "{} build --root {} --progress=tty {} -t {TAG} {extra} {}; echo EXIT=$?; sleep 60",
            shell_quote(&rbuild_bin().display().to_string()),
            shell_quote(&fx.root.display().to_string()),
            shell_quote(&busybox_flag()),
            shell_quote(&fx.ctx.display().to_string()),
        )
    };
    let session = format!("rbuild-tty-{}", std::process::id());
    let tmux = Tmux::start(&session, &command(""));
    // While the first RUN sleeps, the display shows it running with its
    // output line under it.
    let mut running = false;
    let screen = tmux.wait(
        |s| {
            running |= s.lines().any(|l| l.contains("RUN echo first-output-line"))
                && s.contains("│ first-output-line")
                && !s.contains("EXIT=");
        },
        |s| s.contains("EXIT="),
    );
    assert!(
        running,
        "never saw the running step with its output; last screen:\n{screen}"
    );
    assert!(screen.contains("EXIT=0"), "{screen}");
    // The end: every step is one finished line, no output lines or
    // spinners left, nothing drawn twice.
    let steps: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("] RUN echo"))
        .collect();
    assert_eq!(steps.len(), 2, "{screen}");
    assert!(steps.iter().all(|l| l.contains("DONE")), "{screen}");
    assert!(
        !screen.contains('│'),
        "output lines left on the screen:\n{screen}"
    );
    assert!(
        !screen.contains("[+]"),
        "a step is still shown running:\n{screen}"
    );
    drop(tmux);

    // A failing step: its output and error stay on the screen.
    write_file(
        &fx.ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo failing-step-output && exit 3\n",
    );
    let tmux = Tmux::start(&session, &command("--no-cache"));
    let screen = tmux.wait(|_| {}, |s| s.contains("EXIT="));
    assert!(screen.contains("EXIT=1"), "{screen}");
    assert!(screen.contains("failing-step-output"), "{screen}");
    assert!(screen.contains("exit code: 3"), "{screen}");
}
