//! The quorum scheduler: which copy of which task goes to which worker, when a task is accepted,
//! and which workers are excluded. A state machine without I/O and without a clock: the driver
//! feeds it events (a receipt, a lost copy, a worker coming or going) with the time, and it
//! answers with assignments and [`Decision`]s. That keeps every rule of DESIGN.md §5 testable
//! in microseconds, and replayable.
//!
//! The rules:
//! - A task starts with `replication` copies (or `quorum`, if larger) on distinct workers, on
//!   distinct hosts when the job asks for it, and all on one runtime fingerprint: the first copy
//!   pins the task's fingerprint.
//! - A task is accepted when `quorum` receipts agree on its [`Verdict`]. Until then, every
//!   disagreement adds a copy on a fresh worker, up to `max_replicas` receipts; past that, or
//!   when no quorum can be reached any more, the task is inconclusive.
//! - A worker whose receipt contradicts an accepted verdict is excluded for the rest of the job;
//!   its receipts on unsettled tasks are discarded and replaced.
//! - A timed-out copy is not a basis for agreement (wall time is not deterministic): it counts
//!   toward `max_replicas` but agrees and disagrees with nothing.
//! - A copy lost to a crash, an unreachable worker or a preemption is not a disagreement: it is
//!   reassigned, up to [`limits::MAX_LOST_COPIES_PER_TASK`]. A worker that is merely busy is
//!   backed off and the copy reassigned without counting.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::limits;

/// A task, by its position in the job.
pub type TaskIndex = u32;

/// A worker, by the order the scheduler learned of it (dense, for cheap sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u32);

/// What copies must agree on: everything a receipt says about the run, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Verdict {
    /// `exited`, `trapped`, `out_of_fuel`, `memory_limit`, `timed_out`, `output_limit`,
    /// `invalid_module`: as `peergrid run --json` names them.
    pub outcome: String,
    pub exit_code: Option<i32>,
    /// The trap kind, or why the module is invalid.
    pub detail: Option<String>,
    /// BLAKE3 of stdout and stderr, in hex.
    pub output_hash: String,
    pub stderr_hash: String,
    pub fuel: u64,
}

impl Verdict {
    /// A timed-out run says nothing about the program, only about the worker's clock.
    pub fn is_timeout(&self) -> bool {
        self.outcome == crate::report::TIMED_OUT
    }
}

/// The job's redundancy rules (from the job file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redundancy {
    pub replication: u32,
    pub quorum: u32,
    pub max_replicas: u32,
    pub distinct_hosts: bool,
}

/// What the scheduler knows of a worker when it is offered.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerOffer {
    /// The host part of its address: copies of one task go to distinct hosts.
    pub host: String,
    pub fingerprint: String,
    /// Tasks it runs at once (it refuses more).
    pub slots: u32,
    /// Higher is preferred; from the reputation kept across jobs.
    pub reputation: f64,
}

/// A copy to send: task `task` to worker `worker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub task: TaskIndex,
    pub worker: WorkerId,
}

/// Why a copy came back without a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The worker was full or its owner busy (`RESOURCE_EXHAUSTED`): try elsewhere, back off.
    Busy,
    /// The worker crashed, hung up or was unreachable, or preempted the task: reassign.
    Lost,
}

/// What the driver must record and report, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// `quorum` receipts agree. `agreeing` and `disagreeing` are the workers whose receipts
    /// counted; `copies` is every receipt the task received (timed-out ones included).
    Accepted {
        task: TaskIndex,
        verdict: Verdict,
        agreeing: Vec<WorkerId>,
        disagreeing: Vec<WorkerId>,
        copies: u32,
    },
    /// No quorum can form; `copies` is every receipt the task received.
    Inconclusive {
        task: TaskIndex,
        reason: String,
        copies: u32,
    },
    /// The worker contradicted the accepted verdict of `task`: excluded for the rest of the job.
    Excluded { worker: WorkerId, task: TaskIndex },
    /// A receipt for a task already settled: compared with the accepted verdict for reputation
    /// only (the accepted result never changes once reported).
    Late {
        task: TaskIndex,
        worker: WorkerId,
        /// `None` when there is nothing to compare with (an inconclusive task, a timeout).
        agrees: Option<bool>,
    },
    /// A receipt from an excluded worker, set aside and replaced.
    Discarded { task: TaskIndex, worker: WorkerId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Open,
    /// With the accepted verdict, which later receipts are compared with.
    Accepted(Verdict),
    Inconclusive,
}

#[derive(Debug, Clone)]
struct TaskState {
    status: Status,
    receipts: Vec<(WorkerId, Verdict)>,
    in_flight: Vec<WorkerId>,
    lost: u32,
    /// In the retry queue already.
    queued: bool,
    /// The runtime fingerprint of the task's first copy: every later copy must match it, even
    /// if that worker comes back with another runtime.
    fingerprint: Option<String>,
}

impl TaskState {
    /// Whether any copy was ever started (so the fresh order is done with it).
    fn has_history(&self) -> bool {
        !self.receipts.is_empty() || !self.in_flight.is_empty() || self.lost > 0
    }
}

#[derive(Debug, Clone)]
struct WorkerState {
    offer: WorkerOffer,
    available: bool,
    excluded: bool,
    in_flight: u32,
    busy_streak: u32,
    backoff_until: Option<Instant>,
}

impl WorkerState {
    fn spare(&self, now: Instant) -> u32 {
        if !self.available || self.excluded || self.backoff_until.is_some_and(|until| now < until) {
            return 0;
        }
        self.offer.slots.saturating_sub(self.in_flight)
    }
}

/// The scheduler of one job.
#[derive(Debug, Clone)]
pub struct Scheduler {
    rules: Redundancy,
    tasks: Vec<TaskState>,
    workers: Vec<WorkerState>,
    /// Tasks that have copies but need more (after a disagreement, a loss or a discard).
    retry: VecDeque<TaskIndex>,
    /// Every task below this index has been given its first copies.
    next_fresh: TaskIndex,
    open: u32,
}

/// A receipt loaded from the store when a job resumes.
#[derive(Debug, Clone)]
pub struct PastReceipt {
    pub task: TaskIndex,
    pub worker: WorkerId,
    pub verdict: Verdict,
}

impl Scheduler {
    pub fn new(rules: Redundancy, task_count: u32) -> Self {
        let task = TaskState {
            status: Status::Open,
            receipts: Vec::new(),
            in_flight: Vec::new(),
            lost: 0,
            queued: false,
            fingerprint: None,
        };
        Self {
            rules,
            tasks: vec![task; task_count as usize],
            workers: Vec::new(),
            retry: VecDeque::new(),
            next_fresh: 0,
            open: task_count,
        }
    }

    /// Registers a worker the job may use (also one known only from the store, for resumed
    /// receipts; it stays unavailable until [`Self::worker_up`]).
    pub fn add_worker(&mut self, offer: WorkerOffer, available: bool) -> WorkerId {
        let id = WorkerId(self.workers.len() as u32);
        self.workers.push(WorkerState {
            offer,
            available,
            excluded: false,
            in_flight: 0,
            busy_streak: 0,
            backoff_until: None,
        });
        id
    }

    /// The worker is reachable again, maybe with new slots or a new fingerprint.
    pub fn worker_up(&mut self, worker: WorkerId, offer: WorkerOffer) {
        let state = &mut self.workers[worker.0 as usize];
        state.offer = offer;
        state.available = true;
    }

    /// The worker's connection is gone; its copies in flight are reported lost separately.
    pub fn worker_down(&mut self, worker: WorkerId) {
        self.workers[worker.0 as usize].available = false;
    }

    /// Excludes a worker from the rest of the job without a contradiction (it sent a receipt
    /// that did not verify, or refuses this job's tasks outright).
    pub fn exclude(&mut self, worker: WorkerId) -> Vec<Decision> {
        let mut decisions = Vec::new();
        self.exclude_inner(worker, &mut decisions);
        decisions
    }

    /// Marks a task settled in an earlier session.
    pub fn restore_settled(&mut self, task: TaskIndex, accepted: Option<Verdict>) {
        let state = &mut self.tasks[task as usize];
        if state.status == Status::Open {
            self.open -= 1;
        }
        state.status = match accepted {
            Some(verdict) => Status::Accepted(verdict),
            None => Status::Inconclusive,
        };
    }

    /// Restores receipts of unsettled tasks and exclusions from an earlier session.
    pub fn restore(
        &mut self,
        receipts: Vec<PastReceipt>,
        excluded: &[WorkerId],
        lost: &[(TaskIndex, u32)],
    ) {
        for worker in excluded {
            self.workers[worker.0 as usize].excluded = true;
        }
        for past in receipts {
            let state = &mut self.tasks[past.task as usize];
            let worker = &self.workers[past.worker.0 as usize];
            if state.status == Status::Open && !worker.excluded {
                state
                    .fingerprint
                    .get_or_insert_with(|| worker.offer.fingerprint.clone());
                state.receipts.push((past.worker, past.verdict));
            }
        }
        for &(task, count) in lost {
            self.tasks[task as usize].lost = count;
        }
        // Half-done tasks go first, ahead of the fresh order.
        for (index, state) in self.tasks.iter_mut().enumerate() {
            if state.status == Status::Open && state.has_history() {
                state.queued = true;
                self.retry.push_back(index as TaskIndex);
            }
        }
    }

    pub fn is_finished(&self) -> bool {
        self.open == 0
    }

    /// Copies running now.
    pub fn in_flight(&self) -> u32 {
        self.workers.iter().map(|worker| worker.in_flight).sum()
    }

    /// Whether `task` is still unsettled.
    pub fn is_open(&self, task: TaskIndex) -> bool {
        self.tasks[task as usize].status == Status::Open
    }

    pub fn is_excluded(&self, worker: WorkerId) -> bool {
        self.workers[worker.0 as usize].excluded
    }

    /// Workers that could take a copy now, ignoring which tasks they already hold.
    pub fn usable_workers(&self) -> usize {
        self.workers
            .iter()
            .filter(|worker| worker.available && !worker.excluded)
            .count()
    }

    /// True when every worker the job knows is excluded from it: waiting cannot help unless new
    /// workers appear.
    pub fn all_excluded(&self) -> bool {
        !self.workers.is_empty() && self.workers.iter().all(|worker| worker.excluded)
    }

    /// The earliest time a backed-off worker can take work again, if any is backed off.
    pub fn next_backoff_end(&self, now: Instant) -> Option<Instant> {
        self.workers
            .iter()
            .filter(|worker| worker.available && !worker.excluded)
            .filter_map(|worker| worker.backoff_until)
            .filter(|until| *until > now)
            .min()
    }

    /// Fills spare worker capacity: first tasks that need more copies, then fresh tasks in order.
    pub fn assign(&mut self, now: Instant) -> Vec<Assignment> {
        let mut out = Vec::new();
        let mut spare: u32 = self.workers.iter().map(|worker| worker.spare(now)).sum();
        for _ in 0..self.retry.len() {
            if spare == 0 {
                break;
            }
            let Some(task) = self.retry.pop_front() else {
                break;
            };
            self.tasks[task as usize].queued = false;
            spare -= self.place(task, now, &mut out);
            if self.wanted(task) > 0 {
                self.queue(task);
            }
        }
        while spare > 0 && (self.next_fresh as usize) < self.tasks.len() {
            let task = self.next_fresh;
            let state = &self.tasks[task as usize];
            // Settled, or already started (restored half-done tasks live in the retry queue).
            if state.status != Status::Open || state.has_history() {
                self.next_fresh += 1;
                continue;
            }
            // A fresh task may start with fewer copies than it wants (so no slot idles), but
            // only a bounded number of tasks wait half-started: when workers cannot ever give a
            // task its copies (too few hosts), the job stalls early instead of starting them all.
            let eligible = self.eligible(task, now).len();
            let half_started_ok = self.retry.len() < self.workers.len();
            if eligible == 0 || (eligible < self.wanted(task) as usize && !half_started_ok) {
                break;
            }
            self.next_fresh += 1;
            spare -= self.place(task, now, &mut out);
            // Eligible workers may share a host or runtime: what could not start waits its turn.
            if self.wanted(task) > 0 {
                self.queue(task);
            }
        }
        out
    }

    /// A receipt arrived for `task` from `worker`.
    pub fn on_receipt(
        &mut self,
        task: TaskIndex,
        worker: WorkerId,
        verdict: Verdict,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        self.end_flight(task, worker);
        self.workers[worker.0 as usize].busy_streak = 0;
        if self.workers[worker.0 as usize].excluded {
            decisions.push(Decision::Discarded { task, worker });
            if self.is_open(task) {
                self.queue(task);
            }
            return decisions;
        }
        match &self.tasks[task as usize].status {
            Status::Accepted(accepted) => {
                let agrees = *accepted == verdict;
                let compared = (!verdict.is_timeout()).then_some(agrees);
                decisions.push(Decision::Late {
                    task,
                    worker,
                    agrees: compared,
                });
                if compared == Some(false) {
                    decisions.push(Decision::Excluded { worker, task });
                    self.exclude_inner(worker, &mut decisions);
                }
            }
            Status::Inconclusive => decisions.push(Decision::Late {
                task,
                worker,
                agrees: None,
            }),
            Status::Open => {
                self.tasks[task as usize].receipts.push((worker, verdict));
                self.settle(task, &mut decisions);
            }
        }
        decisions
    }

    /// A copy came back without a receipt.
    pub fn on_loss(
        &mut self,
        task: TaskIndex,
        worker: WorkerId,
        loss: Loss,
        now: Instant,
    ) -> Vec<Decision> {
        let mut decisions = Vec::new();
        self.end_flight(task, worker);
        let worker_state = &mut self.workers[worker.0 as usize];
        match loss {
            Loss::Busy => {
                worker_state.busy_streak += 1;
                let backoff = limits::BUSY_BACKOFF_BASE
                    .saturating_mul(1 << worker_state.busy_streak.min(6))
                    .min(limits::BUSY_BACKOFF_MAX);
                worker_state.backoff_until = Some(now + backoff);
            }
            Loss::Lost => self.tasks[task as usize].lost += 1,
        }
        let state = &self.tasks[task as usize];
        if state.status != Status::Open {
            return decisions;
        }
        if state.lost >= limits::MAX_LOST_COPIES_PER_TASK {
            let reason = format!(
                "{} copies were lost to crashed, unreachable or preempting workers",
                state.lost
            );
            self.conclude(task, reason, &mut decisions);
        } else {
            self.queue(task);
        }
        decisions
    }

    /// Copies of `task` still to start.
    fn wanted(&self, task: TaskIndex) -> u32 {
        let state = &self.tasks[task as usize];
        if state.status != Status::Open {
            return 0;
        }
        let rules = &self.rules;
        let best = best_group(&state.receipts).map_or(0, |(_, members)| members.len() as u32);
        let held = state.receipts.len() as u32 + state.in_flight.len() as u32;
        // Enough copies that, if the ones still to come all agree with the largest group so far,
        // a quorum forms.
        let target = rules
            .replication
            .max(rules.quorum)
            .max(state.receipts.len() as u32 + rules.quorum.saturating_sub(best))
            .min(rules.max_replicas);
        target.saturating_sub(held)
    }

    /// Workers that may take a copy of `task` now, best first.
    fn eligible(&self, task: TaskIndex, now: Instant) -> Vec<WorkerId> {
        let state = &self.tasks[task as usize];
        let holders: Vec<WorkerId> = state
            .receipts
            .iter()
            .map(|(worker, _)| *worker)
            .chain(state.in_flight.iter().copied())
            .collect();
        let hosts: HashSet<&str> = holders
            .iter()
            .map(|worker| self.workers[worker.0 as usize].offer.host.as_str())
            .collect();
        // Copies in flight or answered keep the pin; a task whose every copy was lost is free.
        let pinned = state.fingerprint.as_deref().filter(|_| !holders.is_empty());
        let mut candidates: Vec<WorkerId> = (0..self.workers.len() as u32)
            .map(WorkerId)
            .filter(|id| {
                let worker = &self.workers[id.0 as usize];
                worker.spare(now) > 0
                    && !holders.contains(id)
                    && !(self.rules.distinct_hosts && hosts.contains(worker.offer.host.as_str()))
                    && pinned.is_none_or(|fingerprint| fingerprint == worker.offer.fingerprint)
            })
            .collect();
        candidates.sort_by(|a, b| {
            let (a_state, b_state) = (&self.workers[a.0 as usize], &self.workers[b.0 as usize]);
            b_state
                .offer
                .reputation
                .total_cmp(&a_state.offer.reputation)
                .then(b_state.spare(now).cmp(&a_state.spare(now)))
                .then(a.cmp(b))
        });
        candidates
    }

    /// Starts as many wanted copies of `task` as eligible workers allow; returns how many.
    fn place(&mut self, task: TaskIndex, now: Instant, out: &mut Vec<Assignment>) -> u32 {
        let mut placed = 0;
        while self.wanted(task) > 0 {
            // Recomputed after each placement: a placed copy pins the host and fingerprint.
            let Some(&worker) = self.eligible(task, now).first() else {
                break;
            };
            let fingerprint = self.workers[worker.0 as usize].offer.fingerprint.clone();
            let state = &mut self.tasks[task as usize];
            if state.receipts.is_empty() && state.in_flight.is_empty() {
                state.fingerprint = Some(fingerprint);
            }
            state.in_flight.push(worker);
            self.workers[worker.0 as usize].in_flight += 1;
            out.push(Assignment { task, worker });
            placed += 1;
        }
        placed
    }

    fn end_flight(&mut self, task: TaskIndex, worker: WorkerId) {
        let state = &mut self.tasks[task as usize];
        if let Some(at) = state.in_flight.iter().position(|held| *held == worker) {
            state.in_flight.swap_remove(at);
            let worker = &mut self.workers[worker.0 as usize];
            worker.in_flight = worker.in_flight.saturating_sub(1);
        }
    }

    fn queue(&mut self, task: TaskIndex) {
        let state = &mut self.tasks[task as usize];
        if !state.queued {
            state.queued = true;
            self.retry.push_back(task);
        }
    }

    /// Accepts `task` if a quorum agrees, concludes it if none can, or asks for more copies.
    fn settle(&mut self, task: TaskIndex, decisions: &mut Vec<Decision>) {
        let rules = self.rules;
        let state = &self.tasks[task as usize];
        let received = state.receipts.len() as u32;
        let (verdict, agreeing) = match best_group(&state.receipts) {
            Some((verdict, agreeing)) => (Some(verdict.clone()), agreeing),
            None => (None, Vec::new()),
        };
        if let Some(verdict) = verdict.filter(|_| agreeing.len() as u32 >= rules.quorum) {
            let disagreeing: Vec<WorkerId> = state
                .receipts
                .iter()
                .filter(|(_, other)| *other != verdict && !other.is_timeout())
                .map(|(worker, _)| *worker)
                .collect();
            decisions.push(Decision::Accepted {
                task,
                verdict: verdict.clone(),
                agreeing,
                disagreeing: disagreeing.clone(),
                copies: received,
            });
            self.tasks[task as usize].status = Status::Accepted(verdict);
            self.open -= 1;
            for worker in disagreeing {
                decisions.push(Decision::Excluded { worker, task });
                self.exclude_inner(worker, decisions);
            }
            return;
        }
        let can_still_come = rules.max_replicas.saturating_sub(received);
        if agreeing.len() as u32 + can_still_come < rules.quorum {
            let reason = if state
                .receipts
                .iter()
                .all(|(_, verdict)| verdict.is_timeout())
            {
                format!("all {received} copies hit the wall-clock limit (raise timeout_s)")
            } else {
                format!(
                    "no {} of {received} receipts agree, and max_replicas ({}) is reached",
                    rules.quorum, rules.max_replicas
                )
            };
            self.conclude(task, reason, decisions);
        } else {
            self.queue(task);
        }
    }

    fn conclude(&mut self, task: TaskIndex, reason: String, decisions: &mut Vec<Decision>) {
        let state = &mut self.tasks[task as usize];
        if state.status == Status::Open {
            state.status = Status::Inconclusive;
            self.open -= 1;
            let copies = state.receipts.len() as u32;
            decisions.push(Decision::Inconclusive {
                task,
                reason,
                copies,
            });
        }
    }

    /// Marks `worker` excluded and drops its receipts on unsettled tasks.
    fn exclude_inner(&mut self, worker: WorkerId, decisions: &mut Vec<Decision>) {
        if std::mem::replace(&mut self.workers[worker.0 as usize].excluded, true) {
            return;
        }
        let mut requeue = Vec::new();
        for (index, state) in self.tasks.iter_mut().enumerate() {
            if state.status != Status::Open {
                continue;
            }
            let before = state.receipts.len();
            state.receipts.retain(|(holder, _)| *holder != worker);
            if state.receipts.len() != before {
                decisions.push(Decision::Discarded {
                    task: index as TaskIndex,
                    worker,
                });
                requeue.push(index as TaskIndex);
            }
        }
        for task in requeue {
            self.queue(task);
        }
    }
}

/// The largest group of agreeing receipts (timed-out ones never agree), earliest first on ties.
fn best_group(receipts: &[(WorkerId, Verdict)]) -> Option<(&Verdict, Vec<WorkerId>)> {
    let mut groups: Vec<(&Verdict, Vec<WorkerId>)> = Vec::new();
    for (worker, verdict) in receipts.iter().filter(|(_, verdict)| !verdict.is_timeout()) {
        match groups.iter_mut().find(|(seen, _)| *seen == verdict) {
            Some((_, members)) => members.push(*worker),
            None => groups.push((verdict, vec![*worker])),
        }
    }
    let mut best: Option<(&Verdict, Vec<WorkerId>)> = None;
    for group in groups {
        if best
            .as_ref()
            .is_none_or(|(_, members)| group.1.len() > members.len())
        {
            best = Some(group);
        }
    }
    best
}

/// Reputation counters for one worker, kept across jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reputation {
    pub agreements: u64,
    pub disagreements: u64,
    /// Copies lost to crashes, hang-ups and preemptions: not dishonest, but unreliable.
    pub lost: u64,
    /// Receipts that failed verification (bad signature, wrong task, output not matching).
    pub bad_receipts: u64,
}

/// Adds a job's deltas: every counter (a new one cannot be forgotten, the pattern is total).
impl std::ops::AddAssign for Reputation {
    fn add_assign(&mut self, delta: Self) {
        let Self {
            agreements,
            disagreements,
            lost,
            bad_receipts,
        } = delta;
        self.agreements += agreements;
        self.disagreements += disagreements;
        self.lost += lost;
        self.bad_receipts += bad_receipts;
    }
}

impl Reputation {
    /// A score in (0, 1): the Laplace-smoothed rate of agreement (a lost copy weighs a tenth of
    /// a failed one), halved for every disagreement or bad receipt. Execution is deterministic,
    /// so an honest worker never disagrees: one caught lie ranks a worker below a newcomer.
    pub fn score(&self) -> f64 {
        let good = self.agreements as f64 + 1.0;
        let rate = good / (good + 0.1 * self.lost as f64 + 1.0);
        let strikes = (self.disagreements + self.bad_receipts).min(64) as i32;
        rate * 0.5f64.powi(strikes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn rules(replication: u32, quorum: u32, max_replicas: u32) -> Redundancy {
        Redundancy {
            replication,
            quorum,
            max_replicas,
            distinct_hosts: true,
        }
    }

    fn verdict(output: &str) -> Verdict {
        Verdict {
            outcome: "exited".into(),
            exit_code: Some(0),
            detail: None,
            output_hash: output.into(),
            stderr_hash: "e".into(),
            fuel: 100,
        }
    }

    fn timeout() -> Verdict {
        Verdict {
            outcome: "timed_out".into(),
            exit_code: None,
            fuel: 0,
            ..verdict("")
        }
    }

    fn offer(host: &str) -> WorkerOffer {
        WorkerOffer {
            host: host.into(),
            fingerprint: "fp".into(),
            slots: 1,
            reputation: 0.5,
        }
    }

    /// A scheduler with one worker per host name given.
    fn grid(rules: Redundancy, tasks: u32, hosts: &[&str]) -> (Scheduler, Vec<WorkerId>) {
        let mut scheduler = Scheduler::new(rules, tasks);
        let workers = hosts
            .iter()
            .map(|host| scheduler.add_worker(offer(host), true))
            .collect();
        (scheduler, workers)
    }

    fn workers_of(assignments: &[Assignment], task: TaskIndex) -> Vec<WorkerId> {
        assignments
            .iter()
            .filter(|a| a.task == task)
            .map(|a| a.worker)
            .collect()
    }

    #[test]
    fn two_agreeing_copies_on_distinct_workers_accept_a_task() {
        let (mut s, w) = grid(rules(2, 2, 5), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let first = s.assign(now);
        assert_eq!(first.len(), 2);
        let holders = workers_of(&first, 0);
        assert_ne!(holders[0], holders[1]);
        assert!(holders.iter().all(|holder| w.contains(holder)));
        assert!(s.on_receipt(0, holders[0], verdict("x")).is_empty());
        let decisions = s.on_receipt(0, holders[1], verdict("x"));
        assert!(
            matches!(&decisions[..], [Decision::Accepted { task: 0, copies: 2, disagreeing, .. }] if disagreeing.is_empty())
        );
        assert!(s.is_finished());
    }

    #[test]
    fn a_liar_is_outvoted_by_an_extra_copy_and_excluded() {
        let (mut s, w) = grid(rules(2, 2, 5), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let first = s.assign(now);
        // Ties in rank are broken by id: a and b.
        assert_eq!(workers_of(&first, 0), vec![w[0], w[1]]);
        s.on_receipt(0, w[0], verdict("truth"));
        s.on_receipt(0, w[1], verdict("lie"));
        let extra = s.assign(now);
        assert_eq!(
            workers_of(&extra, 0),
            vec![w[2]],
            "one more copy, on the fresh worker"
        );
        let decisions = s.on_receipt(0, w[2], verdict("truth"));
        assert!(
            matches!(&decisions[0], Decision::Accepted { verdict: v, agreeing, disagreeing, copies: 3, .. }
            if v.output_hash == "truth" && agreeing == &vec![w[0], w[2]] && disagreeing == &vec![w[1]])
        );
        assert!(decisions.contains(&Decision::Excluded {
            worker: w[1],
            task: 0
        }));
        assert!(s.is_excluded(w[1]));
        assert_eq!(s.usable_workers(), 2, "the liar gets no more work");
    }

    #[test]
    fn receipts_of_an_excluded_worker_on_open_tasks_are_discarded_and_replaced() {
        let (mut s, w) = grid(rules(2, 2, 5), 2, &["a", "b", "c", "d"]);
        let now = Instant::now();
        let first = s.assign(now);
        assert_eq!(workers_of(&first, 0), vec![w[0], w[1]]);
        assert_eq!(workers_of(&first, 1), vec![w[2], w[3]]);
        s.on_receipt(1, w[3], verdict("lie-1"));
        s.on_receipt(0, w[0], verdict("t0"));
        s.on_receipt(0, w[1], verdict("t0"));
        // w[3] now contradicts on task 1 once c answers; make task 1 settle against it.
        s.on_receipt(1, w[2], verdict("t1"));
        let more = s.assign(now);
        let extra = workers_of(&more, 1);
        assert_eq!(extra.len(), 1);
        let decisions = s.on_receipt(1, extra[0], verdict("t1"));
        assert!(decisions.contains(&Decision::Excluded {
            worker: w[3],
            task: 1
        }));
        assert!(s.is_finished());
    }

    #[test]
    fn no_quorum_by_max_replicas_is_inconclusive() {
        let (mut s, _) = grid(rules(2, 2, 3), 1, &["a", "b", "c", "d"]);
        let now = Instant::now();
        let mut answers = ["x", "y", "z"].into_iter();
        loop {
            let assignments = s.assign(now);
            if assignments.is_empty() {
                break;
            }
            for a in assignments {
                let decisions = s.on_receipt(a.task, a.worker, verdict(answers.next().unwrap()));
                if let Some(Decision::Inconclusive { reason, copies, .. }) = decisions.first() {
                    assert!(reason.contains("max_replicas (3)"), "{reason}");
                    assert_eq!(*copies, 3);
                }
            }
        }
        assert!(s.is_finished());
        assert!(answers.next().is_none(), "exactly max_replicas copies ran");
    }

    #[test]
    fn copies_of_a_task_never_share_a_host_or_mix_fingerprints() {
        let mut s = Scheduler::new(rules(2, 2, 5), 50);
        let mut hosts = HashMap::new();
        for (host, fingerprint) in [
            ("a", "fp1"),
            ("a", "fp1"),
            ("b", "fp2"),
            ("c", "fp1"),
            ("d", "fp2"),
        ] {
            let id = s.add_worker(
                WorkerOffer {
                    host: host.into(),
                    fingerprint: fingerprint.into(),
                    slots: 3,
                    reputation: 0.5,
                },
                true,
            );
            hosts.insert(id, (host, fingerprint));
        }
        let now = Instant::now();
        let mut per_task: HashMap<TaskIndex, Vec<WorkerId>> = HashMap::new();
        while !s.is_finished() {
            let assignments = s.assign(now);
            assert!(!assignments.is_empty(), "the job must progress");
            for a in assignments {
                per_task.entry(a.task).or_default().push(a.worker);
                s.on_receipt(a.task, a.worker, verdict(&format!("out-{}", a.task)));
            }
        }
        for (task, workers) in per_task {
            let (h0, f0) = hosts[&workers[0]];
            let (h1, f1) = hosts[&workers[1]];
            assert_ne!(h0, h1, "task {task}");
            assert_eq!(f0, f1, "task {task}");
        }
    }

    #[test]
    fn a_lost_copy_is_reassigned_without_blame_and_a_busy_worker_backs_off() {
        let (mut s, w) = grid(rules(2, 2, 5), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let first = s.assign(now);
        assert_eq!(workers_of(&first, 0), vec![w[0], w[1]]);
        assert!(s.on_loss(0, w[0], Loss::Lost, now).is_empty());
        s.worker_down(w[0]);
        let again = s.assign(now);
        assert_eq!(workers_of(&again, 0), vec![w[2]]);
        s.on_loss(0, w[2], Loss::Busy, now);
        assert!(
            s.assign(now).is_empty(),
            "c is backed off, a is down, b holds a copy"
        );
        assert!(s.next_backoff_end(now).is_some());
        let later = now + limits::BUSY_BACKOFF_MAX;
        assert_eq!(workers_of(&s.assign(later), 0), vec![w[2]]);
        s.on_receipt(0, w[1], verdict("x"));
        let decisions = s.on_receipt(0, w[2], verdict("x"));
        assert!(matches!(decisions[0], Decision::Accepted { .. }));
        assert!(!s.is_excluded(w[0]));
    }

    #[test]
    fn timeouts_never_agree_and_settle_as_inconclusive() {
        let (mut s, _) = grid(rules(2, 2, 3), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let mut decisions = Vec::new();
        for a in s.assign(now) {
            decisions.extend(s.on_receipt(a.task, a.worker, timeout()));
        }
        // Two timeouts leave one copy to come: no quorum of 2 is possible any more.
        assert!(
            matches!(&decisions[..], [Decision::Inconclusive { reason, .. }] if reason.contains("wall-clock")),
            "{decisions:?}"
        );
        assert!(s.is_finished());
    }

    #[test]
    fn endless_losses_end_as_inconclusive() {
        let (mut s, w) = grid(rules(1, 1, 1), 1, &["a"]);
        let now = Instant::now();
        let mut decisions = Vec::new();
        for _ in 0..limits::MAX_LOST_COPIES_PER_TASK {
            let assigned = s.assign(now);
            assert_eq!(workers_of(&assigned, 0), vec![w[0]]);
            decisions = s.on_loss(0, w[0], Loss::Lost, now);
        }
        assert!(matches!(&decisions[..], [Decision::Inconclusive { .. }]));
        assert!(s.is_finished());
    }

    #[test]
    fn a_resumed_receipt_counts_toward_quorum() {
        let (mut s, w) = grid(rules(2, 2, 5), 2, &["a", "b", "c"]);
        s.restore_settled(1, Some(verdict("done")));
        s.restore(
            vec![PastReceipt {
                task: 0,
                worker: w[0],
                verdict: verdict("x"),
            }],
            &[],
            &[],
        );
        let now = Instant::now();
        let assigned = s.assign(now);
        // Task 0 needs one more copy, not on a; task 1 is settled and gets none.
        assert_eq!(assigned.len(), 1, "{assigned:?}");
        assert_ne!(assigned[0].worker, w[0]);
        let decisions = s.on_receipt(0, assigned[0].worker, verdict("x"));
        assert!(matches!(decisions[0], Decision::Accepted { copies: 2, .. }));
        assert!(s.is_finished());
    }

    #[test]
    fn a_resumed_task_that_cannot_move_does_not_block_the_others() {
        let (mut s, w) = grid(rules(2, 2, 3), 3, &["a", "b", "c"]);
        // Task 0 was left with two disagreeing receipts; the only worker that could break the
        // tie (c) is gone.
        s.restore(
            vec![
                PastReceipt {
                    task: 0,
                    worker: w[0],
                    verdict: verdict("x"),
                },
                PastReceipt {
                    task: 0,
                    worker: w[1],
                    verdict: verdict("y"),
                },
            ],
            &[],
            &[],
        );
        s.worker_down(w[2]);
        let assigned = s.assign(Instant::now());
        assert_eq!(workers_of(&assigned, 1), vec![w[0], w[1]], "{assigned:?}");
        assert!(workers_of(&assigned, 0).is_empty());
    }

    #[test]
    fn a_task_keeps_the_runtime_of_its_first_copy_when_that_worker_changes() {
        let mut s = Scheduler::new(rules(2, 2, 5), 1);
        let fp = |fingerprint: &str, host: &str| WorkerOffer {
            host: host.into(),
            fingerprint: fingerprint.into(),
            slots: 1,
            reputation: 0.5,
        };
        let a = s.add_worker(fp("fp1", "a"), true);
        let now = Instant::now();
        assert_eq!(workers_of(&s.assign(now), 0), vec![a]);
        s.on_receipt(0, a, verdict("x"));
        // a comes back upgraded; only fp2 workers are free besides it.
        s.worker_up(a, fp("fp2", "a"));
        let b = s.add_worker(fp("fp2", "b"), true);
        assert!(
            s.assign(now).is_empty(),
            "an fp2 copy must not join an fp1 receipt"
        );
        let c = s.add_worker(fp("fp1", "c"), true);
        assert_eq!(workers_of(&s.assign(now), 0), vec![c]);
        assert_ne!(b, c);
    }

    #[test]
    fn late_receipts_on_an_inconclusive_task_or_timeouts_blame_nobody() {
        let (mut s, _) = grid(rules(3, 2, 3), 1, &["a", "b", "c"]);
        let now = Instant::now();
        let assigned = s.assign(now);
        assert_eq!(assigned.len(), 3);
        s.on_receipt(0, assigned[0].worker, timeout());
        let decisions = s.on_receipt(0, assigned[1].worker, timeout());
        assert!(matches!(decisions[..], [Decision::Inconclusive { .. }]));
        let late = s.on_receipt(0, assigned[2].worker, verdict("x"));
        assert_eq!(
            late,
            vec![Decision::Late {
                task: 0,
                worker: assigned[2].worker,
                agrees: None
            }]
        );
    }

    #[test]
    fn reputation_ranks_liars_below_honest_workers() {
        let honest = Reputation {
            agreements: 10,
            ..Default::default()
        };
        let liar = Reputation {
            agreements: 10,
            disagreements: 1,
            ..Default::default()
        };
        let new = Reputation::default();
        let veteran_liar = Reputation {
            agreements: 1000,
            disagreements: 1,
            ..Default::default()
        };
        let flaky = Reputation {
            agreements: 10,
            lost: 5,
            ..Default::default()
        };
        assert!(honest.score() > new.score());
        assert!(new.score() > liar.score());
        assert!(
            new.score() > veteran_liar.score(),
            "one lie outweighs any record"
        );
        assert!(honest.score() > flaky.score() && flaky.score() > new.score());
    }
}
