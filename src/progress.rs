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
/// - `{"event":"result","image":…}` (last, from the build command)
pub struct Plain {
    state: Mutex<PlainState>,
    sink: Sink,
}

#[derive(Clone)]
enum Sink {
    Text,
    Json,
    Tty(Arc<Tty>),
}

struct PlainState {
    next: usize,
    numbers: BTreeMap<usize, usize>,
}

impl Plain {
    fn with_sink(sink: Sink) -> Self {
        Plain {
            state: Mutex::new(PlainState {
                next: 0,
                numbers: BTreeMap::new(),
            }),
            sink,
        }
    }

    /// Numbered text lines (`--progress=plain`).
    pub fn new() -> Self {
        Plain::with_sink(Sink::Text)
    }

    /// JSON lines (`--progress=json`).
    pub fn json() -> Self {
        Plain::with_sink(Sink::Json)
    }

    /// The live terminal display (`--progress=tty`).
    pub fn tty() -> Self {
        Plain::with_sink(Sink::Tty(Arc::new(Tty::new())))
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
    fn started(&self, n: usize, name: &str) {
        match self {
            Sink::Text => line(&format!("#{n} {name}\n")),
            Sink::Json => {
                json_line(&json!({"event": "step", "id": n, "name": name, "status": "started"}))
            }
            Sink::Tty(t) => t.started(n, name),
        }
    }

    fn log(&self, n: usize, text: &str) {
        match self {
            Sink::Text => line(&format!("#{n} {text}\n")),
            Sink::Json => json_line(&json!({"event": "log", "id": n, "line": text})),
            Sink::Tty(t) => t.log(n, text),
        }
    }

    fn done(&self, n: usize, elapsed: Duration, cached: bool) {
        match self {
            Sink::Json => json_line(&json!({
                "event": "step",
                "id": n,
                "status": "done",
                "cached": cached,
                "seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            })),
            Sink::Text if cached => line(&format!("#{n} CACHED\n\n")),
            Sink::Text => line(&format!("#{n} DONE {}\n\n", seconds(elapsed))),
            Sink::Tty(t) => t.done(n, elapsed, cached),
        }
    }

    fn failed(&self, n: usize, error: &str) {
        match self {
            Sink::Text => line(&format!("#{n} ERROR: {error}\n\n")),
            Sink::Json => {
                json_line(&json!({"event": "step", "id": n, "status": "error", "error": error}))
            }
            Sink::Tty(t) => t.failed(n, error),
        }
    }

    fn warning(&self, message: &str) {
        match self {
            Sink::Text => line(&format!("WARNING: {message}\n")),
            Sink::Json => json_line(&json!({"event": "warning", "message": message})),
            Sink::Tty(t) => t.warning(message),
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
        self.sink.log(self.n, text);
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
            Event::Log { op, line: text } => self.sink.log(self.number_of(op), &text),
            Event::Warning { message } => self.sink.warning(&message),
        }
    }
}

/// Writes every event, in the `plain` format, to a file, and passes it
/// on: the complete log of a build (`--logfile`), never clipped.
pub struct LogFile {
    inner: Arc<dyn Progress>,
    state: Mutex<LogState>,
}

struct LogState {
    out: std::io::BufWriter<std::fs::File>,
    next: usize,
    numbers: BTreeMap<usize, usize>,
    failed: bool,
}

impl LogFile {
    /// Creates (truncates) `path`.
    pub fn create(path: &std::path::Path, inner: Arc<dyn Progress>) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(LogFile {
            inner,
            state: Mutex::new(LogState {
                out: std::io::BufWriter::with_capacity(256 * 1024, file),
                next: 0,
                numbers: BTreeMap::new(),
                failed: false,
            }),
        })
    }
}

impl LogState {
    fn number(&mut self, op: usize) -> usize {
        if let Some(&n) = self.numbers.get(&op) {
            return n;
        }
        self.next += 1;
        self.numbers.insert(op, self.next);
        self.next
    }

    fn write(&mut self, text: &str) {
        if !self.failed && self.out.write_all(text.as_bytes()).is_err() {
            // Said once, at the end of the file's usefulness.
            self.failed = true;
            eprintln!("warning: could not write the log file: the rest of the log is lost");
        }
    }
}

impl Progress for LogFile {
    fn event(&self, event: Event) {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let text = match &event {
                Event::Started { op, name } => format!("#{} {name}\n", s.number(*op)),
                Event::Done {
                    op,
                    elapsed,
                    cached,
                } => {
                    let n = s.number(*op);
                    if *cached {
                        format!("#{n} CACHED\n\n")
                    } else {
                        format!("#{n} DONE {}\n\n", seconds(*elapsed))
                    }
                }
                Event::Failed { op, error } => format!("#{} ERROR: {error}\n\n", s.number(*op)),
                Event::Log { op, line } => format!("#{} {line}\n", s.number(*op)),
                Event::Warning { message } => format!("WARNING: {message}\n"),
            };
            s.write(&text);
            if matches!(event, Event::Done { .. } | Event::Failed { .. }) {
                let _ = s.out.flush();
            }
        }
        self.inner.event(event);
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if let Ok(s) = self.state.get_mut() {
            let _ = s.out.flush();
        }
    }
}

/// Shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event) {}
}
