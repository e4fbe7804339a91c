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

    fn allocate(&self) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.next += 1;
        s.next
    }
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
        }
    }
}

/// Shows nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event) {}
}
