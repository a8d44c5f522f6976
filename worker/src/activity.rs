//! What the worker is doing, for the donor's dashboard (ARCHITECTURE.md, "Metrics and
//! dashboards"): the tasks running now and the last ones that ended. Bounded: at most the
//! running tasks (themselves bounded by the slots) and [`RECENT_TASKS`] ended ones.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Ended tasks the dashboard lists, newest first.
pub const RECENT_TASKS: usize = 50;

/// A task as the donor sees it. Keys and digests are short hex, as in the logs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskView {
    pub digest: String,
    pub job: String,
    pub task: String,
    pub submitter: String,
    /// Unix milliseconds when it started running.
    pub started_ms: u64,
    /// How it ended (`exited 0`, `out of fuel`, `refused: ...`); empty while running.
    pub outcome: String,
    pub fuel: u64,
    pub wall_ms: u64,
}

/// The running and recent tasks; cheap to clone.
#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    running: BTreeMap<u64, (TaskView, Instant)>,
    recent: VecDeque<TaskView>,
}

/// A running task; ends it (as `outcome`, or "stopped" if never set) when dropped.
pub struct Running {
    activity: Activity,
    id: u64,
    ended: Option<(String, u64)>,
}

impl Running {
    /// How the task ended and the fuel it used.
    pub fn end(mut self, outcome: String, fuel: u64) {
        self.ended = Some((outcome, fuel));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let (outcome, fuel) = self
            .ended
            .take()
            .unwrap_or_else(|| ("stopped".to_owned(), 0));
        let mut inner = self.activity.lock();
        if let Some((mut view, started)) = inner.running.remove(&self.id) {
            view.outcome = outcome;
            view.fuel = fuel;
            view.wall_ms = started.elapsed().as_millis() as u64;
            inner.recent.push_front(view);
            inner.recent.truncate(RECENT_TASKS);
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A task starts running.
    pub fn start(&self, digest: String, job: String, task: String, submitter: String) -> Running {
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        let view = TaskView {
            digest,
            job,
            task,
            submitter,
            started_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |now| now.as_millis() as u64),
            outcome: String::new(),
            fuel: 0,
            wall_ms: 0,
        };
        inner.running.insert(id, (view, Instant::now()));
        Running {
            activity: self.clone(),
            id,
            ended: None,
        }
    }

    /// The running tasks, oldest first, with their time so far, and the recent ones, newest
    /// first.
    pub fn snapshot(&self) -> (Vec<TaskView>, Vec<TaskView>) {
        let inner = self.lock();
        let running = inner
            .running
            .values()
            .map(|(view, started)| TaskView {
                wall_ms: started.elapsed().as_millis() as u64,
                ..view.clone()
            })
            .collect();
        (running, inner.recent.iter().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(activity: &Activity, n: usize) -> Running {
        activity.start(format!("d{n}"), "job".into(), format!("t{n}"), "s".into())
    }

    #[test]
    fn a_task_is_running_until_it_ends_then_recent_newest_first_and_bounded() {
        let activity = Activity::default();
        let first = start(&activity, 0);
        let (running, recent) = activity.snapshot();
        assert_eq!(running.len(), 1);
        assert!(recent.is_empty());
        first.end("exited 0".into(), 7);
        drop(start(&activity, 1));
        let (running, recent) = activity.snapshot();
        assert!(running.is_empty());
        assert_eq!(recent[0].task, "t1");
        assert_eq!(recent[0].outcome, "stopped");
        assert_eq!(
            (recent[1].outcome.as_str(), recent[1].fuel),
            ("exited 0", 7)
        );
        for n in 0..RECENT_TASKS + 5 {
            start(&activity, n).end("exited 0".into(), 1);
        }
        let (_, recent) = activity.snapshot();
        assert_eq!(recent.len(), RECENT_TASKS);
        assert_eq!(recent[0].task, format!("t{}", RECENT_TASKS + 4));
    }
}
