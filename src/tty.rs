//! The live display of `--progress=tty` (the default on a terminal), in
//! BuildKit's manner: each running step with its elapsed time and its last
//! few output lines under it; a finished step collapses to one line with
//! DONE or CACHED and its duration; a failed step leaves its last output
//! lines and its error on the screen. Pulls and pushes are steps whose
//! lines are their per-layer progress.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Output lines shown under a running step.
const SHOWN_LINES: usize = 6;
/// Output lines kept per step for when it fails.
const KEPT_LINES: usize = 30;

/// The display. Every method may be called from any thread.
pub struct Tty {
    mp: MultiProgress,
    steps: Mutex<BTreeMap<usize, TtyStep>>,
}

struct TtyStep {
    name: String,
    started: Instant,
    bar: ProgressBar,
    lines: Vec<ProgressBar>,
    tail: VecDeque<String>,
}

fn running_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed_precise:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ")
}

fn plain_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// Output lines: cut to the terminal's width.
fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("{wide_msg:.dim}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Default for Tty {
    fn default() -> Self {
        Tty::new()
    }
}

impl Tty {
    /// A display on stderr (redrawn at most 15 times a second).
    pub fn new() -> Self {
        Tty {
            mp: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(15)),
            steps: Mutex::new(BTreeMap::new()),
        }
    }

    /// A step started.
    pub fn started(&self, n: usize, name: &str) {
        let bar = self.mp.add(ProgressBar::new_spinner());
        bar.set_style(running_style());
        bar.set_message(format!("[+] #{n} {name}"));
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut steps) = self.steps.lock() {
            steps.insert(
                n,
                TtyStep {
                    name: name.to_string(),
                    started: Instant::now(),
                    bar,
                    lines: Vec::new(),
                    tail: VecDeque::new(),
                },
            );
        }
    }

    /// A line of a step's output.
    pub fn log(&self, n: usize, text: &str) {
        let Ok(mut steps) = self.steps.lock() else {
            return;
        };
        let Some(step) = steps.get_mut(&n) else {
            let _ = self.mp.println(format!("#{n} {text}"));
            return;
        };
        step.tail.push_back(text.to_string());
        while step.tail.len() > KEPT_LINES {
            step.tail.pop_front();
        }
        let shown = step.tail.len().min(SHOWN_LINES);
        while step.lines.len() < shown {
            let after = step.lines.last().unwrap_or(&step.bar).clone();
            let line = self.mp.insert_after(&after, ProgressBar::new_spinner());
            line.set_style(line_style());
            step.lines.push(line);
        }
        let first = step.tail.len() - shown;
        for (bar, text) in step.lines.iter().zip(step.tail.iter().skip(first)) {
            bar.set_message(format!("  │ {text}"));
        }
    }

    /// A step finished.
    pub fn done(&self, n: usize, elapsed: Duration, cached: bool) {
        let Some(step) = self.steps.lock().ok().and_then(|mut s| s.remove(&n)) else {
            return;
        };
        for line in &step.lines {
            line.finish_and_clear();
            self.mp.remove(line);
        }
        step.bar.set_style(plain_style());
        let what = if cached {
            "CACHED".to_string()
        } else {
            format!("DONE {:.1}s", elapsed.as_secs_f64())
        };
        step.bar
            .finish_with_message(format!("✔ #{n} {} {what}", step.name));
    }

    /// A step failed: its last output lines and the error stay visible.
    pub fn failed(&self, n: usize, error: &str) {
        let Some(step) = self.steps.lock().ok().and_then(|mut s| s.remove(&n)) else {
            let _ = self.mp.println(format!("#{n} ERROR: {error}"));
            return;
        };
        for line in &step.lines {
            line.finish_and_clear();
            self.mp.remove(line);
        }
        step.bar.set_style(plain_style());
        step.bar.finish_with_message(format!(
            "✘ #{n} {} ERROR {:.1}s",
            step.name,
            step.started.elapsed().as_secs_f64()
        ));
        for text in &step.tail {
            let _ = self.mp.println(format!("#{n} {text}"));
        }
        let _ = self.mp.println(format!("#{n} ERROR: {error}"));
    }

    /// A warning, above the running steps.
    pub fn warning(&self, message: &str) {
        let _ = self.mp.println(format!("WARNING: {message}"));
    }
}

impl Drop for Tty {
    /// Whatever is still shown becomes plain lines: the screen ends clean.
    fn drop(&mut self) {
        if let Ok(mut steps) = self.steps.lock() {
            for (_, step) in std::mem::take(&mut *steps) {
                for line in &step.lines {
                    line.finish_and_clear();
                }
                step.bar.finish_and_clear();
            }
        }
    }
}
