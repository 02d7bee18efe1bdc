//! Progress bars and status lines on stderr.
//!
//! Long runs (creating 100k users, opening 200k connections, a 60 s load) show a bar; short
//! ones a line. Bars are drawn only when stderr is a terminal and progress is enabled; status
//! lines are always printed to stderr so that a log of a non-interactive run still tells
//! what happened. Nothing here goes to stdout, which carries the summary table.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where a scenario reports its progress. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Progress {
    multi: MultiProgress,
    bars: bool,
    quiet: bool,
}

impl Progress {
    /// Bars on stderr when it is a terminal and `bars` is true; status lines unless `quiet`.
    pub fn new(bars: bool, quiet: bool) -> Self {
        let target = if bars && !quiet {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars,
            quiet,
        }
    }

    /// No bars and no status lines (tests).
    pub fn silent() -> Self {
        Self::new(false, true)
    }

    /// Prints a status line to stderr (above any bar).
    pub fn note(&self, line: impl AsRef<str>) {
        if self.quiet {
            return;
        }
        if self.multi.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            let _ = self.multi.println(line.as_ref());
        }
    }

    /// A bar counting `len` units, labelled `what`.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let bar = if self.bars && !self.quiet {
            self.multi.add(ProgressBar::new(len))
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    }

    /// A bar over a fixed time span (seconds), labelled `what`; the caller updates the message.
    pub fn timer(&self, seconds: u64, what: &str) -> ProgressBar {
        let bar = if self.bars && !self.quiet {
            self.multi.add(ProgressBar::new(seconds))
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template(
            "{prefix:>12} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        bar
    }
}
