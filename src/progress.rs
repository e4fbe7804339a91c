//! Progress display. `plain`: numbered lines per step as BuildKit prints
//! them, for logs; `quiet`: nothing.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rbuild_solver::exec::progress::{Event, Progress};

/// BuildKit-style numbered lines on stderr.
pub struct Plain {
    state: Mutex<PlainState>,
}

struct PlainState {
    next: usize,
    numbers: BTreeMap<usize, usize>,
}

impl Plain {
    /// A printer; step numbers start after the steps the CLI printed itself.
    pub fn new(first: usize) -> Self {
        Plain {
            state: Mutex::new(PlainState {
                next: first,
                numbers: BTreeMap::new(),
            }),
        }
    }

    /// Prints a step the CLI does itself (loading the Dockerfile, exporting).
    pub fn step<T, E>(&self, name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        E: std::fmt::Display,
    {
        let n = self.allocate();
        let start = Instant::now();
        line(&format!("#{n} {name}\n"));
        let result = f();
        match &result {
            Ok(_) => line(&format!("#{n} DONE {}\n\n", seconds(start.elapsed()))),
            Err(e) => line(&format!("#{n} ERROR: {e}\n\n")),
        }
        result
    }

    /// Starts a step the CLI does itself whose lines come as it goes.
    pub fn start(&self, name: &str) -> Step {
        let n = self.allocate();
        line(&format!("#{n} {name}\n"));
        Step {
            n,
            start: Instant::now(),
        }
    }

    fn allocate(&self) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next += 1;
        s.next
    }
}

/// A step in progress (see [`Plain::start`]).
#[derive(Debug)]
pub struct Step {
    n: usize,
    start: Instant,
}

impl Step {
    /// Prints a line under the step.
    pub fn log(&self, text: &str) {
        line(&format!("#{} {text}\n", self.n));
    }

    /// Ends the step.
    pub fn done(&self) {
        line(&format!(
            "#{} DONE {}\n\n",
            self.n,
            seconds(self.start.elapsed())
        ));
    }

    /// Ends the step with an error.
    pub fn failed(&self, error: &str) {
        line(&format!("#{} ERROR: {error}\n\n", self.n));
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
                line(&format!("#{n} {name}\n"));
            }
            Event::Done {
                op,
                elapsed,
                cached,
            } => {
                let n = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.numbers.get(&op).copied())
                    .unwrap_or(0);
                if cached {
                    line(&format!("#{n} CACHED\n\n"));
                } else {
                    line(&format!("#{n} DONE {}\n\n", seconds(elapsed)));
                }
            }
            Event::Failed { op, error } => {
                let n = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.numbers.get(&op).copied())
                    .unwrap_or(0);
                line(&format!("#{n} ERROR: {error}\n\n"));
            }
            Event::Log { op, line: text } => {
                let n = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.numbers.get(&op).copied())
                    .unwrap_or(0);
                line(&format!("#{n} {text}\n"));
            }
            Event::Warning { message } => line(&format!("WARNING: {message}\n")),
        }
    }
}

/// Shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event) {}
}
