//! How a running job shows its progress: an indicatif bar on a terminal, plain periodic lines
//! otherwise (a log file, CI, a pipe), both from the same counts.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::limits;

/// How often the bar redraws: its message, formatted more often, would never be seen.
const BAR_TICK: Duration = Duration::from_millis(200);

/// What the job has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub total: u64,
    pub accepted: u64,
    pub inconclusive: u64,
    pub running: u64,
    pub disagreements: u64,
    pub workers: u64,
    /// Accepted tasks the submitter re-ran itself, this session.
    pub audits: u64,
    /// Accepted tasks opened again because a worker that signed them was proven a liar.
    pub reopened: u64,
}

impl Counts {
    fn settled(&self) -> u64 {
        self.accepted + self.inconclusive
    }

    fn details(&self) -> String {
        let mut details = format!(
            "{} running on {} workers · {} disagreements · {} inconclusive · {} audited",
            self.running, self.workers, self.disagreements, self.inconclusive, self.audits
        );
        if self.reopened > 0 {
            details.push_str(&format!(" · {} reopened", self.reopened));
        }
        details
    }
}

/// The progress display of one session.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    /// Settled when the session started: the rate counts only this session's work.
    settled_at_start: u64,
    /// When the bar's message or the last plain line was made.
    last_shown: Option<Instant>,
    counts: Counts,
}

impl Progress {
    /// A bar if stderr is a terminal (and `plain` is false), lines otherwise.
    pub fn new(counts: Counts, plain: bool) -> Self {
        let bar = (!plain && std::io::stderr().is_terminal()).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(counts.total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} accepted · {msg}",
                )
                .expect("the template is valid")
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.set_position(counts.settled());
            bar.enable_steady_tick(BAR_TICK);
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            settled_at_start: counts.settled(),
            last_shown: None,
            counts,
        }
    }

    /// Shows new counts: the bar's position at once and its message once per redraw, a line
    /// at most every few seconds. Called on every event of the session, so cheap when not due.
    pub fn update(&mut self, counts: Counts) {
        self.counts = counts;
        if let Some(bar) = &self.bar {
            bar.set_position(counts.settled());
        }
        let interval = match self.bar {
            Some(_) => BAR_TICK,
            None => limits::PLAIN_PROGRESS_INTERVAL,
        };
        if !self.due(interval) {
            return;
        }
        match &self.bar {
            Some(bar) => bar.set_message(self.rate_and_details()),
            None => eprintln!("peergrid: {}", self.line()),
        }
    }

    /// Whether `interval` has passed since the last message or line; if so, it starts again.
    fn due(&mut self, interval: Duration) -> bool {
        let now = Instant::now();
        if self
            .last_shown
            .is_some_and(|last| now.duration_since(last) < interval)
        {
            return false;
        }
        self.last_shown = Some(now);
        true
    }

    /// A message above the bar (or a plain line).
    pub fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("peergrid: {message}")),
            None => eprintln!("peergrid: {message}"),
        }
    }

    /// Removes the bar (or prints a last line).
    pub fn finish(&mut self) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("peergrid: {}", self.line()),
        }
    }

    fn line(&self) -> String {
        format!(
            "{}/{} accepted · {}",
            self.counts.accepted,
            self.counts.total,
            self.rate_and_details()
        )
    }

    /// "12.3 tasks/s · ETA 8s · 3 running on 3 workers · …", this session's rate.
    fn rate_and_details(&self) -> String {
        let counts = &self.counts;
        let elapsed = self.started.elapsed().as_secs_f64();
        let done_here = counts.settled().saturating_sub(self.settled_at_start);
        let rate = if elapsed > 0.0 {
            done_here as f64 / elapsed
        } else {
            0.0
        };
        let left = counts.total.saturating_sub(counts.settled());
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "?".to_owned()
        };
        format!("{rate:.1} tasks/s · ETA {eta} · {}", counts.details())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_due_at_first_then_once_per_interval() {
        let mut progress = Progress::new(Counts::default(), true);
        assert!(progress.due(Duration::from_secs(3600)));
        assert!(!progress.due(Duration::from_secs(3600)));
        assert!(progress.due(Duration::ZERO));
    }
}
