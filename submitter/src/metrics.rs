//! `peergrid submit --http ADDR`'s `/metrics`: the running job's counts in the Prometheus text
//! format. The session publishes its [`Counts`] here each time it shows progress; a scrape
//! encodes the last ones it published, so scraping never touches the session or the store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::progress::Counts;

/// The `Content-Type` of what [`JobMetrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The last counts of each job this process ran a session of (`resume` without a job runs
/// several, one after the other; each keeps its last counts). Cheap to clone and share.
#[derive(Clone, Default)]
pub struct JobMetrics {
    jobs: Arc<Mutex<BTreeMap<String, Published>>>,
}

/// What a session published about its job.
#[derive(Debug, Clone, Copy, Default)]
struct Published {
    counts: Counts,
    /// Whether its session is still running (0 once it ended, however it ended).
    running: bool,
}

/// The label set of every series: the job id.
type JobLabel = Vec<(&'static str, String)>;

impl JobMetrics {
    /// Records `job`'s counts now. Called on every event of a session: a lock and a copy.
    pub fn publish(&self, job: &str, counts: Counts) {
        let mut jobs = self
            .jobs
            .lock()
            .expect("the metrics lock is never poisoned");
        match jobs.get_mut(job) {
            Some(published) => {
                published.counts = counts;
                published.running = true;
            }
            None => {
                jobs.insert(
                    job.to_owned(),
                    Published {
                        counts,
                        running: true,
                    },
                );
            }
        }
    }

    /// `job`'s session ended.
    pub fn ended(&self, job: &str) {
        if let Some(published) = self
            .jobs
            .lock()
            .expect("the metrics lock is never poisoned")
            .get_mut(job)
        {
            published.running = false;
        }
    }

    /// Every job's last counts in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let jobs: Vec<(String, Published)> = self
            .jobs
            .lock()
            .expect("the metrics lock is never poisoned")
            .iter()
            .map(|(job, published)| (job.clone(), *published))
            .collect();
        let mut registry = Registry::with_prefix("peergrid_job");
        // Gauges: what the job holds now (accepted can go down: a reopened result).
        let gauge =
            |registry: &mut Registry, name: &str, help: &str, value: fn(&Published) -> u64| {
                let family = Family::<JobLabel, Gauge>::default();
                for (job, published) in &jobs {
                    family
                        .get_or_create(&vec![("job", job.clone())])
                        .set(i64::try_from(value(published)).unwrap_or(i64::MAX));
                }
                registry.register(name, help, family);
            };
        // Counters: events that only add up (over the job, or over this session, as said).
        let counter =
            |registry: &mut Registry, name: &str, help: &str, value: fn(&Published) -> u64| {
                let family = Family::<JobLabel, Counter>::default();
                for (job, published) in &jobs {
                    family
                        .get_or_create(&vec![("job", job.clone())])
                        .inc_by(value(published));
                }
                registry.register(name, help, family);
            };
        gauge(&mut registry, "tasks", "Tasks in the job", |p| {
            p.counts.total
        });
        gauge(
            &mut registry,
            "tasks_accepted",
            "Tasks accepted now: a quorum of agreeing signed receipts (a reopened one leaves)",
            |p| p.counts.accepted,
        );
        gauge(
            &mut registry,
            "tasks_inconclusive",
            "Tasks settled without a quorum",
            |p| p.counts.inconclusive,
        );
        gauge(
            &mut registry,
            "tasks_settled",
            "Tasks accepted or inconclusive",
            |p| p.counts.accepted + p.counts.inconclusive,
        );
        gauge(
            &mut registry,
            "copies_in_flight",
            "Copies of tasks sent to workers and not answered yet",
            |p| p.counts.running,
        );
        gauge(
            &mut registry,
            "workers_connected",
            "Workers connected and not excluded",
            |p| p.counts.workers,
        );
        gauge(
            &mut registry,
            "workers_excluded",
            "Workers excluded from the job (proven liars, free-riders), in any of its sessions",
            |p| p.counts.excluded,
        );
        gauge(
            &mut registry,
            "audits_pending",
            "Accepted tasks whose audit (the submitter's own run) is due",
            |p| p.counts.audits_pending,
        );
        gauge(
            &mut registry,
            "session_running",
            "1 while the job's session runs, 0 once it ended",
            |p| u64::from(p.running),
        );
        counter(
            &mut registry,
            "disagreements",
            "Receipts that differed from another receipt of their task, over the whole job",
            |p| p.counts.disagreements,
        );
        counter(
            &mut registry,
            "audits",
            "Audits (the submitter's own runs of accepted tasks) done this session",
            |p| p.counts.audits,
        );
        counter(
            &mut registry,
            "liars_proven",
            "Workers proven by an audit to have signed a wrong result, this session",
            |p| p.counts.liars_proven,
        );
        counter(
            &mut registry,
            "reopened",
            "Accepted results reopened because a worker that signed them was proven a liar, this session",
            |p| p.counts.reopened,
        );
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .expect("writing to a String never fails");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{job="JOB"}` in `text`.
    fn sample(text: &str, name: &str, job: &str) -> Option<f64> {
        let prefix = format!("{name}{{job=\"{job}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
    }

    #[test]
    fn the_last_published_counts_of_each_job_are_what_a_scrape_shows() {
        let metrics = JobMetrics::default();
        assert!(!metrics.encode().contains("job=\""), "no job, no series");
        let mut counts = Counts {
            total: 40,
            accepted: 3,
            running: 2,
            disagreements: 1,
            ..Counts::default()
        };
        metrics.publish("pi-1", counts);
        counts.accepted = 7;
        counts.excluded = 1;
        counts.liars_proven = 1;
        metrics.publish("pi-1", counts);
        metrics.publish("other", Counts::default());
        metrics.ended("other");
        let text = metrics.encode();
        assert_eq!(sample(&text, "peergrid_job_tasks", "pi-1"), Some(40.0));
        assert_eq!(
            sample(&text, "peergrid_job_tasks_accepted", "pi-1"),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "peergrid_job_tasks_settled", "pi-1"),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "peergrid_job_workers_excluded", "pi-1"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "peergrid_job_disagreements_total", "pi-1"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "peergrid_job_liars_proven_total", "pi-1"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "peergrid_job_copies_in_flight", "pi-1"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "peergrid_job_session_running", "pi-1"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "peergrid_job_session_running", "other"),
            Some(0.0)
        );
        assert!(
            text.contains("# TYPE peergrid_job_disagreements_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE peergrid_job_tasks_accepted gauge"),
            "{text}"
        );
    }
}
