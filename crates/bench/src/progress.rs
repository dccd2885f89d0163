//! Saying what a long run is doing: on a terminal, a spinner (or a bar with
//! an ETA, for runs of known length or known work: a chaos run, a drain,
//! re-replication) under the output, with the step's name and how long it
//! has taken; elsewhere (logs, CI), one line per step on stderr.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    prefix: &'static str,
}

impl Progress {
    /// Steps of unknown length, each shown as it starts.
    pub fn steps(prefix: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix}: {wide_msg} [{elapsed}]")
                    .expect("a valid template"),
            );
            b.set_prefix(prefix);
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Progress { bar, prefix }
    }

    /// A run of `total`: a bar with the time gone and the time left.
    pub fn timed(prefix: &'static str, total: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total.as_secs().max(1));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix}: [{bar:30}] {elapsed} of {len}s, {eta} left: {wide_msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(prefix);
            b
        });
        Progress { bar, prefix }
    }

    /// Work of `total` things (copies to move, vRegions to repair): a bar
    /// with how many are done, the rate and the time left.
    pub fn counted(prefix: &'static str, total: u64, unit: &'static str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total.max(1));
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{{prefix}}: [{{bar:30}}] {{pos}}/{{len}} {unit}, {{per_sec}}, {{eta}} left: {{wide_msg}}"
                ))
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(prefix);
            b.enable_steady_tick(Duration::from_millis(500));
            b
        });
        Progress { bar, prefix }
    }

    /// How far counted work is (`total` may grow as more work is found).
    pub fn count(&self, done: u64, total: u64, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_length(total.max(1));
            b.set_position(done);
            b.set_message(msg.into());
        }
    }

    /// Whether it draws on a terminal (else the caller prints lines).
    pub fn on_terminal(&self) -> bool {
        self.bar.is_some()
    }

    /// A new step starts.
    pub fn step(&self, msg: impl Into<String>) {
        let msg = msg.into();
        match &self.bar {
            Some(b) => {
                b.reset_elapsed();
                b.set_message(msg);
            }
            None => eprintln!("{}: {msg}", self.prefix),
        }
    }

    /// How far a timed run is.
    pub fn at(&self, elapsed: Duration) {
        if let Some(b) = &self.bar {
            b.set_position(elapsed.as_secs());
        }
    }

    /// A line of output, printed above the bar.
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.println(line.as_ref()),
            None => println!("{}", line.as_ref()),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
