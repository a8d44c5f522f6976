//! How a running job shows its progress: an indicatif bar on a terminal, plain periodic lines
//! otherwise (a log file, CI, a pipe), both from the same counts.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::limits;
use crate::metrics::JobMetrics;

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
    /// Workers excluded from the job (in any of its sessions).
    pub excluded: u64,
    /// Accepted tasks whose audit is due.
    pub audits_pending: u64,
    /// Workers proven liars by an audit, this session.
    pub liars_proven: u64,
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
    /// (when, settled) at each message of the last [`RATE_WINDOW`]: the rate the ETA uses is
    /// this window's, so it follows workers joining and leaving in a week-long job.
    recent: std::collections::VecDeque<(Instant, u64)>,
    /// Where every update is also published (`submit --http`'s `/metrics`), as which job.
    metrics: Option<(JobMetrics, String)>,
}

/// The span the shown rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(60);

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
            recent: std::collections::VecDeque::new(),
            metrics: None,
        }
    }

    /// Publishes every update to `metrics` as job `job`'s counts, starting with these.
    pub fn publish_to(&mut self, metrics: JobMetrics, job: &str) {
        metrics.publish(job, self.counts);
        self.metrics = Some((metrics, job.to_owned()));
    }

    /// Shows new counts: the bar's position at once and its message once per redraw, a line
    /// at most every few seconds. Called on every event of the session, so cheap when not due.
    pub fn update(&mut self, counts: Counts) {
        self.counts = counts;
        if let Some((metrics, job)) = &self.metrics {
            metrics.publish(job, counts);
        }
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
        let now = Instant::now();
        self.recent.push_back((now, counts.settled()));
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > RATE_WINDOW)
        {
            self.recent.pop_front();
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
        if let Some((metrics, job)) = &self.metrics {
            metrics.ended(job);
        }
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

    /// "12.3 tasks/s · ETA 2h 05m · 3 running on 3 workers · …": the rate of the last minute
    /// (this session's mean until a window spans 10 s).
    fn rate_and_details(&self) -> String {
        let counts = &self.counts;
        let windowed = match (self.recent.front(), self.recent.back()) {
            (Some((from, then)), Some((to, now))) if to.duration_since(*from).as_secs() >= 10 => {
                Some(now.saturating_sub(*then) as f64 / to.duration_since(*from).as_secs_f64())
            }
            _ => None,
        };
        let rate = windowed.unwrap_or_else(|| {
            let elapsed = self.started.elapsed().as_secs_f64();
            let done_here = counts.settled().saturating_sub(self.settled_at_start);
            if elapsed > 0.0 {
                done_here as f64 / elapsed
            } else {
                0.0
            }
        });
        let left = counts.total.saturating_sub(counts.settled());
        format!(
            "{rate:.1} tasks/s · ETA {} · {}",
            eta(left, rate),
            counts.details()
        )
    }
}

/// The time `left` tasks take at `rate` per second, readable at any size: "45s", "12m 05s",
/// "3h 07m", "9d 14h"; "?" without a rate.
fn eta(left: u64, rate: f64) -> String {
    if left == 0 {
        return "0s".to_owned();
    }
    if rate <= 0.0 || !rate.is_finite() {
        return "?".to_owned();
    }
    let secs = (left as f64 / rate).ceil().min(1e12) as u64;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eta_reads_well_from_seconds_to_days() {
        assert_eq!(eta(0, 0.0), "0s");
        assert_eq!(eta(10, 0.0), "?");
        assert_eq!(eta(45, 1.0), "45s");
        assert_eq!(eta(725, 1.0), "12m 05s");
        assert_eq!(eta(3 * 3600 + 7 * 60, 1.0), "3h 07m");
        // A million tasks at 1.2 a second.
        assert_eq!(eta(1_000_000, 1.2), "9d 15h");
    }

    #[test]
    fn a_message_is_due_at_first_then_once_per_interval() {
        let mut progress = Progress::new(Counts::default(), true);
        assert!(progress.due(Duration::from_secs(3600)));
        assert!(!progress.due(Duration::from_secs(3600)));
        assert!(progress.due(Duration::ZERO));
    }
}
