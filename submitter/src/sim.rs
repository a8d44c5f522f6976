//! A seeded simulation of the job core: the real [`Scheduler`] driven on a virtual clock by
//! thousands of simulated workers, honest and dishonest (colluding groups that lie always, lie
//! only when paired, or claim many slots and lie at once; free-riders that time out or abort;
//! workers replaying receipts), with churn, lost copies and a submitter restart that rebuilds the
//! scheduler from what a store would hold. Everything is drawn from one seed, so any run can be
//! replayed (`PEERGRID_JOB_SIM_SEED` in `tests/job_sim.rs`). It checks what a user would: how many
//! accepted results are wrong, and what verification cost (copies per task, audits).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use peergrid_proto::ContentHash;
use peergrid_worker::sandbox::Outcome;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::schedule::{
    ArchivedTask, AuditMark, AuditResult, Decision, Loss, PastReceipt, Redundancy, Scheduler,
    TaskIndex, Verdict, WorkerId, WorkerOffer,
};

/// How a simulated worker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Behaviour {
    Honest,
    /// Signs its group's shared wrong answer to every task.
    Lie {
        group: u32,
    },
    /// Signs its group's lie only when another member held a copy of the task at the same time.
    LieWhenPaired {
        group: u32,
    },
    /// Claims 16 slots and signs its group's lie at once, running nothing.
    InstantLie {
        group: u32,
    },
    /// Answers TIMED_OUT at once without running.
    Timeout,
    /// Answers ABORTED at once.
    Abort,
    /// Sends a receipt that does not verify (another worker's, or its own for another task).
    Replay,
}

impl Behaviour {
    /// The name the report uses.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Honest => "honest",
            Self::Lie { .. } => "lie",
            Self::LieWhenPaired { .. } => "lie-when-paired",
            Self::InstantLie { .. } => "instant-lie",
            Self::Timeout => "timeout",
            Self::Abort => "abort",
            Self::Replay => "replay",
        }
    }

    fn is_honest(&self) -> bool {
        *self == Self::Honest
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub workers: u32,
    pub tasks: u32,
    /// Share of the workers that are dishonest, split evenly over the six strategies.
    pub dishonest_share: f64,
    /// Members of each colluding group (the three lying strategies).
    pub group_size: u32,
    /// Networks the honest workers are spread over (each dishonest group spans as many
    /// networks as it has members: the strongest collusion).
    pub honest_networks: u32,
    /// Chance per worker per virtual second of going down for 5–30 s (its copies are lost).
    pub churn_per_s: f64,
    /// Chance that any copy is lost on the way (a crash, a dropped connection).
    pub loss: f64,
    /// Restart the submitter (a new scheduler restored from the store) once this share of the
    /// tasks is settled; `None` for no restart.
    pub restart_at: Option<f64>,
    pub audit_rate: f64,
}

impl SimConfig {
    /// The scenario: 10,000 workers, 20% dishonest, 100,000 tasks, churn, losses and a
    /// restart halfway.
    pub fn large(seed: u64) -> Self {
        Self {
            seed,
            workers: 10_000,
            tasks: 100_000,
            dishonest_share: 0.2,
            group_size: 50,
            honest_networks: 4_000,
            churn_per_s: 0.002,
            loss: 0.01,
            restart_at: Some(0.5),
            audit_rate: crate::limits::DEFAULT_AUDIT_RATE,
        }
    }
}

/// What a run gave.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub seed: u64,
    pub tasks: u32,
    pub accepted: u32,
    pub inconclusive: u32,
    /// Why tasks ended inconclusive (the reason's first words), with how many.
    pub inconclusive_why: HashMap<String, u32>,
    /// Accepted results that are not the truth, by the strategy of the lie's group.
    pub wrong: u32,
    pub wrong_by: HashMap<&'static str, u32>,
    /// Copies sent (every assignment).
    pub copies: u64,
    /// Audits the submitter ran.
    pub audits: u64,
    /// Tasks reopened (a task reopened twice counts twice).
    pub reopened: u64,
    /// Dishonest workers excluded (proven or dropped or refused), by strategy, of how many.
    pub caught_by: HashMap<&'static str, (u32, u32)>,
    /// Honest workers excluded: must stay 0.
    pub honest_excluded: u32,
    /// Times the simulated colluders lied, and how many of those lies were ever accepted.
    pub lies_told: u64,
    pub virtual_time: Duration,
    /// Settled tasks taken out of the scheduler's memory, and archived ones brought back
    /// because a liar proven later had signed them.
    pub archived: u64,
    pub unarchived: u64,
    /// The most tasks the scheduler held in memory at once, and how many it held at the end.
    pub peak_live: usize,
    pub live_at_end: usize,
    pub restarted: bool,
    /// Set when the job could not finish (no worker could take a needed copy).
    pub stalled: Option<String>,
}

impl SimReport {
    pub fn copies_per_task(&self) -> f64 {
        self.copies as f64 / f64::from(self.tasks.max(1))
    }

    pub fn audit_share(&self) -> f64 {
        self.audits as f64 / f64::from(self.tasks.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A copy's answer, if the epoch still matches (a restart or the worker going down voids it).
    Answer {
        task: TaskIndex,
        worker: u32,
        epoch: u64,
    },
    Audit {
        task: TaskIndex,
        epoch: u64,
    },
    Up {
        worker: u32,
    },
}

/// What the store would hold: enough to restore a scheduler after a restart.
#[derive(Default)]
struct StoreModel {
    settled: HashMap<TaskIndex, (Option<Verdict>, AuditMark)>,
    receipts: HashMap<TaskIndex, Vec<PastReceipt>>,
    excluded: HashSet<u32>,
    liars: HashSet<u32>,
    lost: HashMap<TaskIndex, u32>,
    verified: HashMap<u32, u64>,
}

struct World {
    config: SimConfig,
    behaviour: Vec<Behaviour>,
    offers: Vec<WorkerOffer>,
    rng: Xoshiro256PlusPlus,
    base: Instant,
    now_ms: u64,
    events: BinaryHeap<Reverse<(u64, u64, Event)>>,
    seq: u64,
    /// Bumped by a restart: older answers and audits are void.
    epoch: u64,
    /// Per worker: bumped when it goes down, so its copies in flight are void.
    worker_epoch: Vec<u64>,
    down: Vec<bool>,
    /// Copies in flight per worker (the sim's view), to lose them when it goes down.
    flights: Vec<Vec<TaskIndex>>,
    /// Colluders holding each task now, for lie-when-paired.
    holding: HashMap<TaskIndex, Vec<u32>>,
    /// Per (task, group): whether that group lies about the task, once decided.
    pair_decision: HashMap<(TaskIndex, u32), bool>,
    store: StoreModel,
    /// Liars proven by the event being handled: the archived tasks they signed are brought
    /// back from the store, as the driver does.
    proven: Vec<WorkerId>,
    report: SimReport,
}

const FINGERPRINT: &str = "fp-sim";

fn truth(task: TaskIndex) -> Verdict {
    Verdict {
        outcome: Outcome::Exited(0),
        output_hash: ContentHash::of(format!("truth-{task}").as_bytes()),
        stderr_hash: ContentHash::of(b""),
        fuel: 1_000 + u64::from(task),
        fingerprint: FINGERPRINT.into(),
        outputs_hash: None,
    }
}

fn lie(group: u32, task: TaskIndex) -> Verdict {
    Verdict {
        output_hash: ContentHash::of(format!("lie-{group}-{task}").as_bytes()),
        ..truth(task)
    }
}

fn timed_out() -> Verdict {
    Verdict {
        outcome: Outcome::TimedOut,
        output_hash: ContentHash::of(b""),
        stderr_hash: ContentHash::of(b""),
        fuel: 0,
        fingerprint: FINGERPRINT.into(),
        outputs_hash: None,
    }
}

/// Runs one simulation to the end (or a stall) and reports.
pub fn run(config: SimConfig) -> SimReport {
    let mut world = World::new(config);
    let rules = Redundancy {
        replication: 2,
        quorum: 2,
        max_replicas: 5,
        distinct_hosts: true,
        distinct_networks: true,
        audit_rate: world.config.audit_rate,
    };
    let mut scheduler = world.fresh_scheduler(rules);
    // Virtual time advances in ticks; every event within a tick is handled before the next
    // assignment round (as the driver takes a batch of answers per commit).
    const TICK_MS: u64 = 50;
    const MAX_VIRTUAL_MS: u64 = 24 * 3600 * 1000;
    let mut next_churn_ms = 1_000;
    let mut idle_ticks = 0;
    while !scheduler.is_finished() && world.now_ms < MAX_VIRTUAL_MS {
        let now = world.base + Duration::from_millis(world.now_ms);
        let assignments = scheduler.assign(now);
        let assigned = !assignments.is_empty();
        for assignment in assignments {
            world.dispatch(assignment.task, assignment.worker);
        }
        let until = world.now_ms + TICK_MS;
        let mut handled = 0;
        while let Some(Reverse((at, _, event))) = world.events.peek().copied() {
            if at > until {
                break;
            }
            world.events.pop();
            world.now_ms = world.now_ms.max(at);
            handled += 1;
            world.handle(&mut scheduler, event);
            world.committed(&mut scheduler);
        }
        if world.now_ms >= next_churn_ms {
            world.churn(&mut scheduler);
            world.committed(&mut scheduler);
            next_churn_ms += 1_000;
        }
        if let Some(share) = world.config.restart_at
            && !world.report.restarted
            && world.store.settled.len() as f64 >= share * f64::from(world.config.tasks)
        {
            world.report.restarted = true;
            world.epoch += 1;
            scheduler = world.restore(rules);
        }
        world.now_ms = world.now_ms.max(until);
        // Workers coming back up are events too; what counts is whether anything can move.
        let _ = handled;
        if !assigned && scheduler.in_flight() == 0 && scheduler.audits_pending() == 0 {
            idle_ticks += 1;
            // Down workers come back within 30 s; past that, nothing can move.
            if idle_ticks * TICK_MS > 60_000 {
                let now = world.base + Duration::from_millis(world.now_ms);
                world.report.stalled = Some(scheduler.stall_reason(now));
                break;
            }
        } else {
            idle_ticks = 0;
        }
    }
    world.finish(&scheduler)
}

impl World {
    fn new(config: SimConfig) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.seed);
        let dishonest = (f64::from(config.workers) * config.dishonest_share).round() as u32;
        let per_strategy = dishonest / 6;
        let mut behaviour = Vec::with_capacity(config.workers as usize);
        let mut group = 0;
        let mut grouped =
            |make: fn(u32) -> Behaviour, count: u32, behaviour: &mut Vec<Behaviour>| {
                for index in 0..count {
                    if index % config.group_size == 0 {
                        group += 1;
                    }
                    behaviour.push(make(group));
                }
            };
        grouped(
            |group| Behaviour::Lie { group },
            per_strategy,
            &mut behaviour,
        );
        grouped(
            |group| Behaviour::LieWhenPaired { group },
            per_strategy,
            &mut behaviour,
        );
        grouped(
            |group| Behaviour::InstantLie { group },
            per_strategy,
            &mut behaviour,
        );
        for make in [Behaviour::Timeout, Behaviour::Abort, Behaviour::Replay] {
            behaviour.extend(std::iter::repeat_n(make, per_strategy as usize));
        }
        while behaviour.len() < config.workers as usize {
            behaviour.push(Behaviour::Honest);
        }
        // Placement must not depend on the order workers are known in.
        for index in (1..behaviour.len()).rev() {
            let other = rng.random_range(0..=index);
            behaviour.swap(index, other);
        }
        let offers = behaviour
            .iter()
            .enumerate()
            .map(|(index, behaviour)| {
                let network = if behaviour.is_honest() {
                    format!("h{}", rng.random_range(0..config.honest_networks))
                } else {
                    format!("d{index}")
                };
                let claimed = match behaviour {
                    Behaviour::InstantLie { .. } | Behaviour::Timeout | Behaviour::Abort => 16,
                    _ => 1 + rng.random_range(0..4u32),
                };
                WorkerOffer {
                    host: format!("host{index}"),
                    network,
                    fingerprint: FINGERPRINT.into(),
                    claimed_copies: claimed * crate::limits::COPIES_IN_FLIGHT_PER_SLOT,
                    trusted: false,
                    verified: 0,
                }
            })
            .collect();
        let workers = config.workers as usize;
        Self {
            report: SimReport {
                seed: config.seed,
                tasks: config.tasks,
                ..Default::default()
            },
            config,
            behaviour,
            offers,
            rng,
            base: Instant::now(),
            now_ms: 0,
            events: BinaryHeap::new(),
            seq: 0,
            epoch: 0,
            worker_epoch: vec![0; workers],
            down: vec![false; workers],
            flights: vec![Vec::new(); workers],
            holding: HashMap::new(),
            pair_decision: HashMap::new(),
            store: StoreModel::default(),
            proven: Vec::new(),
        }
    }

    fn fresh_scheduler(&mut self, rules: Redundancy) -> Scheduler {
        let mut scheduler = Scheduler::new(rules, self.config.tasks, self.rng.random());
        for offer in &self.offers {
            scheduler.add_worker(offer.clone(), true);
        }
        scheduler
    }

    /// A new scheduler from what the store holds, as `peergrid resume` builds it.
    fn restore(&mut self, rules: Redundancy) -> Scheduler {
        let mut scheduler = Scheduler::new(rules, self.config.tasks, self.rng.random());
        for (index, offer) in self.offers.iter().enumerate() {
            let verified = self
                .store
                .verified
                .get(&(index as u32))
                .copied()
                .unwrap_or(0);
            scheduler.add_worker(
                WorkerOffer {
                    verified,
                    ..offer.clone()
                },
                !self.down[index],
            );
        }
        for (task, (accepted, audit)) in &self.store.settled {
            match (accepted, audit) {
                (Some(_), AuditMark::Pending) => {
                    scheduler.restore_settled(*task, accepted.clone(), *audit);
                }
                _ => scheduler.restore_archived(*task, accepted.is_some()),
            }
        }
        let excluded: Vec<WorkerId> = self.store.excluded.iter().map(|w| WorkerId(*w)).collect();
        let lost: Vec<(TaskIndex, u32)> = self.store.lost.iter().map(|(t, n)| (*t, *n)).collect();
        let receipts = self.store.receipts.values().flatten().cloned().collect();
        scheduler.restore(receipts, &excluded, &lost);
        for liar in &self.store.liars {
            scheduler.restore_liar(WorkerId(*liar));
        }
        for flights in &mut self.flights {
            flights.clear();
        }
        self.holding.clear();
        for task in scheduler.pending_audits() {
            self.schedule_audit(task);
        }
        scheduler
    }

    fn push(&mut self, after_ms: u64, event: Event) {
        self.seq += 1;
        self.events
            .push(Reverse((self.now_ms + after_ms, self.seq, event)));
    }

    fn dispatch(&mut self, task: TaskIndex, worker: WorkerId) {
        self.report.copies += 1;
        let index = worker.0;
        let behaviour = self.behaviour[index as usize];
        self.flights[index as usize].push(task);
        if let Behaviour::LieWhenPaired { group } = behaviour {
            let holders = self.holding.entry(task).or_default();
            let partner = holders
                .iter()
                .any(|other| self.behaviour[*other as usize] == behaviour);
            holders.push(index);
            if partner {
                self.pair_decision.entry((task, group)).or_insert(true);
            }
        }
        let latency_ms = match behaviour {
            Behaviour::InstantLie { .. } | Behaviour::Timeout | Behaviour::Abort => 5,
            // Lie-when-paired members wait a window for a partner before running alone.
            Behaviour::LieWhenPaired { .. } => 1_200 + self.rng.random_range(0..2_000),
            _ => 1_000 + self.rng.random_range(0..2_000),
        };
        let epoch = self.epoch * 1_000_000 + self.worker_epoch[index as usize];
        self.push(
            latency_ms,
            Event::Answer {
                task,
                worker: index,
                epoch,
            },
        );
    }

    fn schedule_audit(&mut self, task: TaskIndex) {
        let epoch = self.epoch * 1_000_000;
        self.push(500, Event::Audit { task, epoch });
    }

    fn handle(&mut self, scheduler: &mut Scheduler, event: Event) {
        let now = self.base + Duration::from_millis(self.now_ms);
        match event {
            Event::Up { worker } => {
                self.down[worker as usize] = false;
                let verified = self.store.verified.get(&worker).copied().unwrap_or(0);
                scheduler.worker_up(
                    WorkerId(worker),
                    WorkerOffer {
                        verified,
                        ..self.offers[worker as usize].clone()
                    },
                );
            }
            Event::Audit { task, epoch } => {
                if epoch / 1_000_000 != self.epoch {
                    return;
                }
                self.report.audits += 1;
                let decisions = scheduler.on_audit(task, AuditResult::Ran(truth(task)));
                self.record(scheduler, decisions);
            }
            Event::Answer {
                task,
                worker,
                epoch,
            } => {
                let current = self.epoch * 1_000_000 + self.worker_epoch[worker as usize];
                if epoch != current {
                    return;
                }
                let flights = &mut self.flights[worker as usize];
                if let Some(at) = flights.iter().position(|t| *t == task) {
                    flights.swap_remove(at);
                }
                self.answer(scheduler, task, worker, now);
                if let Some(holders) = self.holding.get_mut(&task) {
                    holders.retain(|holder| *holder != worker);
                }
            }
        }
    }

    fn answer(&mut self, scheduler: &mut Scheduler, task: TaskIndex, worker: u32, now: Instant) {
        let id = WorkerId(worker);
        if self.rng.random::<f64>() < self.config.loss {
            *self.store.lost.entry(task).or_default() += 1;
            let decisions = scheduler.on_loss(task, id, Loss::Lost, now);
            self.record(scheduler, decisions);
            return;
        }
        let verdict = match self.behaviour[worker as usize] {
            Behaviour::Honest => truth(task),
            Behaviour::Lie { group } | Behaviour::InstantLie { group } => {
                self.report.lies_told += 1;
                lie(group, task)
            }
            Behaviour::LieWhenPaired { group } => {
                if *self.pair_decision.entry((task, group)).or_insert(false) {
                    self.report.lies_told += 1;
                    lie(group, task)
                } else {
                    truth(task)
                }
            }
            Behaviour::Timeout => timed_out(),
            Behaviour::Abort => {
                *self.store.lost.entry(task).or_default() += 1;
                let decisions = scheduler.on_loss(task, id, Loss::Aborted, now);
                self.record(scheduler, decisions);
                return;
            }
            Behaviour::Replay => {
                // The driver: a receipt that does not verify excludes the worker for the job.
                self.store.excluded.insert(worker);
                let mut decisions = scheduler.exclude(id);
                decisions.extend(scheduler.on_loss(task, id, Loss::Busy, now));
                self.record(scheduler, decisions);
                return;
            }
        };
        let decisions = scheduler.on_receipt(task, id, verdict.clone(), now);
        let counted = !matches!(
            decisions.first(),
            Some(Decision::Discarded { task: t, worker: w }) if *t == task && *w == id
        ) && !matches!(decisions.first(), Some(Decision::WrongRuntime { .. }));
        if counted {
            self.store
                .receipts
                .entry(task)
                .or_default()
                .push(PastReceipt {
                    task,
                    worker: id,
                    verdict,
                    superseded: false,
                });
        }
        self.record(scheduler, decisions);
    }

    /// What the driver writes to the store, and the audits it starts.
    fn record(&mut self, scheduler: &Scheduler, decisions: Vec<Decision>) {
        for decision in decisions {
            match decision {
                Decision::Accepted { task, verdict, .. } => {
                    // As the driver does: an audit may already be due.
                    self.store
                        .settled
                        .insert(task, (Some(verdict), scheduler.audit_mark(task)));
                }
                Decision::Inconclusive { task, reason, .. } => {
                    let why: String = reason
                        .split_whitespace()
                        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
                        .take(6)
                        .collect::<Vec<_>>()
                        .join(" ");
                    *self.report.inconclusive_why.entry(why).or_default() += 1;
                    self.store.settled.insert(task, (None, AuditMark::None));
                }
                Decision::Audit { task } => {
                    if let Some(settled) = self.store.settled.get_mut(&task) {
                        settled.1 = AuditMark::Pending;
                    }
                    self.schedule_audit(task);
                }
                Decision::AuditPassed { task } => {
                    if let Some(settled) = self.store.settled.get_mut(&task) {
                        settled.1 = AuditMark::Passed;
                    }
                }
                Decision::AuditUnavailable { task, .. } => {
                    if let Some(settled) = self.store.settled.get_mut(&task) {
                        settled.1 = AuditMark::Unavailable;
                    }
                }
                Decision::Reopened { task, .. } => {
                    self.report.reopened += 1;
                    self.store.settled.remove(&task);
                    for receipt in self.store.receipts.entry(task).or_default() {
                        receipt.superseded = true;
                    }
                }
                Decision::ProvenLiar { worker, .. } => {
                    self.store.liars.insert(worker.0);
                    self.store.excluded.insert(worker.0);
                    self.proven.push(worker);
                }
                Decision::Dropped { worker, .. } => {
                    self.store.excluded.insert(worker.0);
                }
                Decision::Verified { worker, .. } => {
                    *self.store.verified.entry(worker.0).or_default() += 1;
                }
                Decision::Disagreement { .. }
                | Decision::Late { .. }
                | Decision::Discarded { .. }
                | Decision::WrongRuntime { .. } => {}
            }
        }
        debug_assert!(scheduler.open_tasks() <= self.config.tasks);
    }

    /// What the driver does once an event's batch is committed: the archived tasks a newly
    /// proven liar signed come back from the store and are reopened, and settled tasks at rest
    /// leave memory.
    fn committed(&mut self, scheduler: &mut Scheduler) {
        while let Some(liar) = self.proven.pop() {
            let mut signed: Vec<TaskIndex> = self
                .store
                .settled
                .iter()
                .filter(|(task, (accepted, _))| {
                    // The store's question: which accepted tasks did the liar's key agree on.
                    accepted.as_ref().is_some_and(|accepted| {
                        self.store.receipts.get(task).is_some_and(|receipts| {
                            receipts.iter().any(|past| {
                                past.worker == liar && !past.superseded && past.verdict == *accepted
                            })
                        })
                    }) && scheduler.is_archived(**task)
                })
                .map(|(task, _)| *task)
                .collect();
            signed.sort_unstable();
            for task in signed {
                let (accepted, audit) = self.store.settled[&task].clone();
                let archived = ArchivedTask {
                    task,
                    accepted: accepted.expect("filtered on accepted"),
                    receipts: self.store.receipts.get(&task).cloned().unwrap_or_default(),
                    lost: self.store.lost.get(&task).copied().unwrap_or(0),
                    audit,
                };
                let decisions = scheduler.reopen_archived(archived, liar);
                self.report.unarchived += 1;
                self.record(scheduler, decisions);
            }
        }
        self.report.peak_live = self.report.peak_live.max(scheduler.live_tasks());
        self.report.archived += scheduler.archive_idle().len() as u64;
    }

    /// Some workers go down for a while: their copies in flight are lost.
    fn churn(&mut self, scheduler: &mut Scheduler) {
        let now = self.base + Duration::from_millis(self.now_ms);
        let expected = f64::from(self.config.workers) * self.config.churn_per_s;
        let count =
            expected.floor() as u32 + u32::from(self.rng.random::<f64>() < expected.fract());
        for _ in 0..count {
            let worker = self.rng.random_range(0..self.config.workers);
            if self.down[worker as usize] {
                continue;
            }
            self.down[worker as usize] = true;
            self.worker_epoch[worker as usize] += 1;
            scheduler.worker_down(WorkerId(worker));
            for task in std::mem::take(&mut self.flights[worker as usize]) {
                *self.store.lost.entry(task).or_default() += 1;
                let decisions = scheduler.on_loss(task, WorkerId(worker), Loss::Lost, now);
                self.record(scheduler, decisions);
                if let Some(holders) = self.holding.get_mut(&task) {
                    holders.retain(|holder| *holder != worker);
                }
            }
            let back_ms = 5_000 + self.rng.random_range(0..25_000);
            self.push(back_ms, Event::Up { worker });
        }
    }

    fn finish(mut self, scheduler: &Scheduler) -> SimReport {
        let report = &mut self.report;
        report.live_at_end = scheduler.live_tasks();
        report.virtual_time = Duration::from_millis(self.now_ms);
        // What the store holds is what the user gets.
        for task in 0..self.config.tasks {
            let settled = self.store.settled.get(&task);
            match settled.and_then(|(accepted, _)| accepted.as_ref()) {
                Some(verdict) => {
                    report.accepted += 1;
                    if *verdict != truth(task) {
                        report.wrong += 1;
                        let liar = self
                            .behaviour
                            .iter()
                            .find(|b| match b {
                                Behaviour::Lie { group }
                                | Behaviour::LieWhenPaired { group }
                                | Behaviour::InstantLie { group } => *verdict == lie(*group, task),
                                _ => false,
                            })
                            .map_or("unknown", Behaviour::name);
                        *report.wrong_by.entry(liar).or_default() += 1;
                    }
                }
                None if settled.is_some() => report.inconclusive += 1,
                None => {}
            }
        }
        for (index, behaviour) in self.behaviour.iter().enumerate() {
            let excluded = scheduler.is_excluded(WorkerId(index as u32));
            if behaviour.is_honest() {
                report.honest_excluded += u32::from(excluded);
            } else {
                let entry = report.caught_by.entry(behaviour.name()).or_default();
                entry.0 += u32::from(excluded);
                entry.1 += 1;
            }
        }
        self.report
    }
}
