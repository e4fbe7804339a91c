//! Progress display. `plain`: numbered lines per step as BuildKit prints
//! them, for logs; `json`: the same events as one JSON object per line,
//! for tools; `tty`: the live display ([`crate::tty`]); `quiet`: nothing.
//! `--logfile` copies every event to a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rbuild_solver::exec::progress::{Event, Progress};
use serde_json::json;

use crate::tty::Tty;

/// Where step events go: numbered lines on stderr as text (BuildKit's
/// plain format) or JSON lines, or the live terminal display. JSON lines:
///
/// - `{"event":"step","id":N,"name":…,"status":"started"}`
/// - `{"event":"step","id":N,"status":"done","cached":bool,"seconds":f64}`
/// - `{"event":"step","id":N,"status":"error","error":…}`
/// - `{"event":"log","id":N,"line":…}` (a line of output, or of a pull/push)
/// - `{"event":"warning","message":…}`
/// - `{"event":"result","image":…}` (last, from the build command), or
///   `{"event":"error","message":…,"exit":N}` when the build fails
pub struct Plain {
    state: Mutex<PlainState>,
    sink: Sink,
}

/// Where events go: the display, and the log file if there is one.
#[derive(Clone)]
struct Sink {
    display: Display,
    log: Option<Arc<Mutex<LogState>>>,
}

#[derive(Clone)]
enum Display {
    Text,
    Json,
    Tty(Arc<Tty>),
    /// `--progress=quiet` with `--logfile`: the log only.
    Nothing,
}

/// `--logfile`: every event in the plain format, never clipped.
struct LogState {
    out: std::io::BufWriter<std::fs::File>,
    failed: bool,
}

impl LogState {
    fn write(&mut self, text: &str) {
        if !self.failed && self.out.write_all(text.as_bytes()).is_err() {
            self.failed = true;
            eprintln!("warning: could not write the log file: the rest of the log is lost");
        }
    }
}

impl Drop for LogState {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

struct PlainState {
    next: usize,
    numbers: BTreeMap<usize, usize>,
}

/// Set once a JSON display is made: the build's final error is then a
/// JSON event as well.
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether errors are printed as JSON events (`--progress=json`).
pub fn json_errors() -> bool {
    JSON_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What `--progress` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Numbered text lines.
    Text,
    /// JSON lines.
    Json,
    /// The live terminal display.
    Tty,
    /// Nothing (only `--logfile` gets the events).
    Nothing,
}

impl Plain {
    fn with_display(display: Display) -> Self {
        Plain {
            state: Mutex::new(PlainState {
                next: 0,
                numbers: BTreeMap::new(),
            }),
            sink: Sink { display, log: None },
        }
    }

    /// Numbered text lines (`--progress=plain`).
    pub fn new() -> Self {
        Plain::with_display(Display::Text)
    }

    /// A printer showing `shown`, also writing every event to `logfile`
    /// (created or truncated).
    pub fn with(shown: Shown, logfile: Option<&std::path::Path>) -> std::io::Result<Self> {
        let mut plain = Plain::with_display(match shown {
            Shown::Text => Display::Text,
            Shown::Json => {
                JSON_ERRORS.store(true, std::sync::atomic::Ordering::Relaxed);
                Display::Json
            }
            Shown::Tty => Display::Tty(Arc::new(Tty::new())),
            Shown::Nothing => Display::Nothing,
        });
        if let Some(path) = logfile {
            let file = std::fs::File::create(path)?;
            plain.sink.log = Some(Arc::new(Mutex::new(LogState {
                out: std::io::BufWriter::with_capacity(256 * 1024, file),
                failed: false,
            })));
        }
        Ok(plain)
    }

    /// Prints a step the CLI does itself (loading the Dockerfile, exporting).
    pub fn step<T, E>(&self, name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        E: std::fmt::Display,
    {
        let step = self.start(name);
        let result = f();
        match &result {
            Ok(_) => step.done(),
            Err(e) => step.failed(&e.to_string()),
        }
        result
    }

    /// Starts a step the CLI does itself whose lines come as it goes.
    pub fn start(&self, name: &str) -> Step {
        let n = self.allocate();
        self.sink.started(n, name);
        Step {
            n,
            start: Instant::now(),
            sink: self.sink.clone(),
        }
    }

    fn allocate(&self) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next += 1;
        s.next
    }

    fn number_of(&self, op: usize) -> usize {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.numbers.get(&op).copied())
            .unwrap_or(0)
    }
}

impl Default for Plain {
    fn default() -> Self {
        Plain::new()
    }
}

impl Sink {
    /// Writes `text` (plain format) to the log file, if any; `flush` at
    /// step boundaries so a killed build leaves its log.
    fn log(&self, text: &str, flush: bool) {
        if let Some(log) = &self.log {
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            l.write(text);
            if flush {
                let _ = l.out.flush();
            }
        }
    }

    fn started(&self, n: usize, name: &str) {
        let text = format!("#{n} {name}\n");
        self.log(&text, false);
        match &self.display {
            Display::Text => line(&text),
            Display::Json => {
                json_line(&json!({"event": "step", "id": n, "name": name, "status": "started"}))
            }
            Display::Tty(t) => t.started(n, name),
            Display::Nothing => {}
        }
    }

    fn output(&self, n: usize, text: &str) {
        let plain = format!("#{n} {text}\n");
        self.log(&plain, false);
        match &self.display {
            Display::Text => line(&plain),
            Display::Json => json_line(&json!({"event": "log", "id": n, "line": text})),
            Display::Tty(t) => t.log(n, text),
            Display::Nothing => {}
        }
    }

    fn done(&self, n: usize, elapsed: Duration, cached: bool) {
        let text = if cached {
            format!("#{n} CACHED\n\n")
        } else {
            format!("#{n} DONE {}\n\n", seconds(elapsed))
        };
        self.log(&text, true);
        match &self.display {
            Display::Json => json_line(&json!({
                "event": "step",
                "id": n,
                "status": "done",
                "cached": cached,
                "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            })),
            Display::Text => line(&text),
            Display::Tty(t) => t.done(n, elapsed, cached),
            Display::Nothing => {}
        }
    }

    fn failed(&self, n: usize, error: &str) {
        let text = format!("#{n} ERROR: {error}\n\n");
        self.log(&text, true);
        match &self.display {
            Display::Text => line(&text),
            Display::Json => {
                json_line(&json!({"event": "step", "id": n, "status": "error", "error": error}))
            }
            Display::Tty(t) => t.failed(n, error),
            Display::Nothing => {}
        }
    }

    fn warning(&self, message: &str) {
        let text = format!("WARNING: {message}\n");
        self.log(&text, false);
        match &self.display {
            Display::Text => line(&text),
            Display::Json => json_line(&json!({"event": "warning", "message": message})),
            Display::Tty(t) => t.warning(message),
            Display::Nothing => {}
        }
    }
}

fn json_line(value: &serde_json::Value) {
    line(&format!("{value}\n"));
}

/// A step in progress (see [`Plain::start`]).
pub struct Step {
    n: usize,
    start: Instant,
    sink: Sink,
}

impl Step {
    /// Prints a line under the step.
    pub fn log(&self, text: &str) {
        self.sink.output(self.n, text);
    }

    /// Ends the step.
    pub fn done(&self) {
        self.sink.done(self.n, self.start.elapsed(), false);
    }

    /// Ends the step with an error.
    pub fn failed(&self, error: &str) {
        self.sink.failed(self.n, error);
    }
}

/// Bytes as BuildKit prints them: `52.43MB`, `880B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.2}{}", UNITS[unit])
    }
}

/// A transfer rate: `43.7MB/s`.
pub fn rate(n: u64, d: Duration) -> String {
    let secs = d.as_secs_f64().max(0.001);
    format!("{}/s", bytes((n as f64 / secs) as u64))
}

/// Public form of the step duration format.
pub fn seconds_of(d: Duration) -> String {
    seconds(d)
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

impl Progress for Plain {
    fn event(&self, event: Event) {
        match event {
            Event::Started { op, name } => {
                let n = self.allocate();
                if let Ok(mut s) = self.state.lock() {
                    s.numbers.insert(op, n);
                }
                self.sink.started(n, &name);
            }
            Event::Done {
                op,
                elapsed,
                cached,
            } => self.sink.done(self.number_of(op), elapsed, cached),
            Event::Failed { op, error } => self.sink.failed(self.number_of(op), &error),
            Event::Log { op, line: text } => self.sink.output(self.number_of(op), &text),
            Event::Warning { message } => self.sink.warning(&message),
        }
    }
}

/// Shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event) {}
}
