//! The job core: one session of a job as rules without I/O. It holds the [`Scheduler`], the
//! workers the job knows and what the store said of them, and turns each event — a worker
//! connecting or going, a copy's answer, the submitter's own run of an audited task — into
//! [`Actions`]: the store batch to commit, and what to do once it is committed (notes for the
//! user, result files to write or remove, audits to run, manifests no longer needed). The
//! driver (`submit.rs`) owns the connections, signing, the store and the clock; it passes the
//! time in. ARCHITECTURE.md, "Trust model", gives the rules.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use peergrid_proto::{ContentHash, PublicKey};

use crate::client::{CheckedResult, OutputEntry};
use crate::dispatch::Answer;
use crate::progress::Counts;
use crate::schedule::{
    ArchivedTask, AuditMark, AuditResult, Decision, Loss, PastReceipt, Redundancy, Reputation,
    Scheduler, TaskIndex, Verdict, WorkerId, WorkerOffer,
};
use crate::store::{
    ArchivedRecord, Batch, CopyKind, CopyRecord, JobRecord, LiarRecord, OutputFileRecord,
    RestoreState, ResultChange, SettledRecord, Totals,
};
use crate::submit::{network_of, short_key, verdict_of};

/// How many times one session reopens a task whose output files none of its agreeing workers
/// delivered, before it leaves it accepted without them (see [`JobCore::on_outputs_lost`]).
pub const MAX_OUTPUT_REFETCHES: u32 = 2;

/// A worker as the job knows it: its key, where it was reached, and what its `Info` claims.
#[derive(Debug, Clone)]
pub struct WorkerMeta {
    pub key: PublicKey,
    pub key_hex: String,
    pub addr: String,
    pub host: String,
    /// The fingerprint its `Info` claims (a receipt's signed one is what counts).
    pub fingerprint: String,
}

/// The time, passed in: the scheduler's clock and the wall clock records are stamped with.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: Instant,
    pub unix_ms: u64,
}

/// Every task's id, packed: one string and an end offset per task (a few bytes a task, where
/// a `String` each would take 24 plus its heap block).
#[derive(Debug, Default, Clone)]
pub struct TaskIds {
    text: String,
    ends: Vec<u32>,
}

impl TaskIds {
    pub fn push(&mut self, id: &str) {
        self.text.push_str(id);
        self.ends.push(self.text.len() as u32);
    }

    pub fn get(&self, task: TaskIndex) -> &str {
        let end = self.ends[task as usize] as usize;
        let start = match task {
            0 => 0,
            _ => self.ends[task as usize - 1] as usize,
        };
        &self.text[start..end]
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<S: AsRef<str>> FromIterator<S> for TaskIds {
    fn from_iter<I: IntoIterator<Item = S>>(ids: I) -> Self {
        let mut packed = Self::default();
        for id in ids {
            packed.push(id.as_ref());
        }
        packed
    }
}

/// What the store holds of a job, read by the driver when a session starts.
#[derive(Debug, Default)]
pub struct Stored {
    /// Settled tasks (a byte each, whole only those with an audit due) and the copies of the
    /// tasks still in play.
    pub state: RestoreState,
    pub totals: Totals,
    /// (worker key hex, why) excluded from this job.
    pub excluded: Vec<(String, String)>,
    /// Keys proven liars in any job.
    pub liars: HashSet<String>,
    pub reputation: HashMap<String, Reputation>,
}

/// What events leave to do: the batch to commit in one transaction, then, in order, what may
/// be reported only once it is durable.
#[derive(Debug, Default)]
pub struct Actions {
    pub batch: Batch,
    pub notes: Vec<String>,
    /// Result files to write (`Some`) or to remove, for a reopened task (`None`).
    pub outputs: Vec<(TaskIndex, Option<(Bytes, Bytes)>)>,
    /// Tasks to re-run on this machine.
    pub audits: Vec<TaskIndex>,
    /// Settled tasks: their signed manifests are no longer needed.
    pub done: Vec<TaskIndex>,
    /// Output files of accepted tasks to fetch, once the batch is committed.
    pub fetches: Vec<Fetch>,
    /// Credit statements to sign and give the workers that agreed, once the batch is
    /// committed (ARCHITECTURE.md, "Credit").
    pub credits: Vec<CreditDue>,
    /// Keys (hex) proven liars: the archived tasks they agreed on are to be read from the
    /// store and passed to [`JobCore::reopen_archived`] before the batch is committed.
    pub sweeps: Vec<String>,
}

/// Credit a worker earned: its receipt for `task_digest` agreed with the result accepted at
/// `accepted_at_unix_s`, which used `fuel`. The driver signs it as a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditDue {
    pub worker: WorkerId,
    pub worker_key: PublicKey,
    /// The digest of the manifest the worker's own receipt answers.
    pub task_digest: ContentHash,
    pub fuel: u64,
    pub accepted_at_unix_s: u64,
}

/// An accepted task's output files, to fetch from one of the workers that agreed on them.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub task: TaskIndex,
    pub files: Vec<OutputEntry>,
    pub from: Vec<WorkerId>,
}

impl Actions {
    /// Nothing to commit or report.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
            && self.notes.is_empty()
            && self.outputs.is_empty()
            && self.audits.is_empty()
            && self.done.is_empty()
            && self.fetches.is_empty()
            && self.sweeps.is_empty()
            && self.credits.is_empty()
    }
}

/// One session of a job, without I/O.
pub struct JobCore {
    scheduler: Scheduler,
    job_id: String,
    /// The `submit`/`resume` run this is (1, 2, …).
    session: u32,
    task_ids: TaskIds,
    workers: Vec<WorkerMeta>,
    by_key: HashMap<PublicKey, WorkerId>,
    /// Results verified in earlier jobs, by key hex: what lifts a key out of probation.
    verified: HashMap<String, u64>,
    /// Keys the submitter vouches for (`--trusted`).
    trusted: HashSet<String>,
    /// Keys proven to have signed a wrong result, in any job: never used again.
    liars: HashSet<String>,
    /// Workers excluded from this job (key hex), also in earlier sessions.
    excluded_keys: HashSet<String>,
    /// Outputs of receipts of unsettled tasks, one per distinct verdict, until one is accepted:
    /// stdout, stderr and the `/output` files listed.
    outputs: HashMap<TaskIndex, Vec<(Verdict, Bytes, Bytes, Vec<OutputEntry>)>>,
    /// The task digest each receipt of a task in play answers, by worker: what a credit
    /// statement names when the task is accepted (a re-signed task has a digest per manifest).
    receipt_digests: HashMap<TaskIndex, Vec<(WorkerId, ContentHash)>>,
    /// Times each task was reopened because its output files could not be fetched.
    refetched: HashMap<TaskIndex, u32>,
    /// Credit of accepted tasks with output files, held until the files are fetched and
    /// verified ([`Self::on_outputs_fetched`]): dropped for a worker that served altered bytes,
    /// and for all when no one delivered them ([`Self::on_outputs_lost`]). At most one entry
    /// per fetch queued or running.
    held_credits: HashMap<TaskIndex, Vec<CreditDue>>,
    /// The number the next copy of a task in play gets (tasks without an entry have none).
    next_copy: HashMap<TaskIndex, u32>,
    /// Workers already named for signing on another runtime than a task's (noted once each).
    wrong_runtime_noted: HashSet<WorkerId>,
    counts: Counts,
    /// Wall time the workers reported for this session's verified copies.
    copy_wall_time: Duration,
    /// The wall clock of the event being handled, for the records it writes.
    unix_ms: u64,
}

impl JobCore {
    /// The core of session `session` of `job`, rebuilt from what earlier sessions stored;
    /// `seed` drives its random draws (placement, audits).
    pub fn restore(
        job: &JobRecord,
        session: u32,
        task_ids: TaskIds,
        stored: Stored,
        seed: u64,
    ) -> Self {
        let rules = Redundancy {
            replication: job.replication,
            quorum: job.quorum,
            max_replicas: job.max_replicas,
            distinct_hosts: job.distinct_hosts,
            distinct_networks: job.distinct_networks,
            audit_rate: job.audit_rate,
        };
        let task_count = task_ids.len();
        let mut core = Self {
            scheduler: Scheduler::new(rules, task_count as u32, seed),
            job_id: job.id.clone(),
            session,
            task_ids,
            workers: Vec::new(),
            by_key: HashMap::new(),
            verified: stored
                .reputation
                .iter()
                .map(|(key, counts)| (key.clone(), counts.verified))
                .collect(),
            trusted: job.trusted.iter().cloned().collect(),
            liars: stored.liars,
            excluded_keys: HashSet::new(),
            outputs: HashMap::new(),
            receipt_digests: HashMap::new(),
            refetched: HashMap::new(),
            held_credits: HashMap::new(),
            next_copy: HashMap::new(),
            wrong_runtime_noted: HashSet::new(),
            counts: Counts::default(),
            copy_wall_time: Duration::ZERO,
            unix_ms: 0,
        };
        core.counts.total = job.task_count as u64;
        core.counts.disagreements = stored.totals.disputed;
        let RestoreState {
            at_rest,
            audited,
            copies,
        } = stored.state;
        for (task, accepted) in at_rest {
            match accepted {
                true => core.counts.accepted += 1,
                false => core.counts.inconclusive += 1,
            }
            core.scheduler.restore_archived(task, accepted);
        }
        // Stores from before verdicts kept the signed fingerprint: the task's copies say it.
        let fingerprints: HashMap<TaskIndex, &str> = copies
            .iter()
            .map(|((task, _), record)| (*task, record.fingerprint.as_str()))
            .collect();
        for (task, settled) in audited {
            match &settled.accepted {
                Some(_) => core.counts.accepted += 1,
                None => core.counts.inconclusive += 1,
            }
            let accepted = settled.accepted.map(|mut verdict| {
                if verdict.fingerprint.is_empty() {
                    verdict.fingerprint = fingerprints.get(&task).copied().unwrap_or("").to_owned();
                }
                verdict
            });
            core.scheduler
                .restore_settled(task, accepted, settled.audit);
        }
        drop(fingerprints);
        let mut receipts = Vec::new();
        let mut lost: HashMap<TaskIndex, u32> = HashMap::new();
        for ((task, copy), record) in copies {
            let next = core.next_copy.entry(task).or_default();
            *next = (*next).max(copy + 1);
            match record.kind {
                // Late and superseded receipts too: an audit tells who signed what.
                CopyKind::Receipt | CopyKind::Late | CopyKind::Superseded => {
                    let worker = core.known_worker(&record);
                    if let (Some(worker), Some(mut verdict)) = (worker, record.verdict.clone()) {
                        // Stores from before the signed fingerprint was kept in the verdict.
                        if verdict.fingerprint.is_empty() {
                            verdict.fingerprint = record.fingerprint.clone();
                        }
                        if record.kind == CopyKind::Receipt
                            && let Some(digest) = stored_receipt_digest(&record)
                        {
                            core.note_receipt_digest(task, worker, digest);
                        }
                        receipts.push(PastReceipt {
                            task,
                            worker,
                            verdict,
                            superseded: record.kind == CopyKind::Superseded,
                        });
                    }
                }
                CopyKind::Lost => *lost.entry(task).or_default() += 1,
                _ => {}
            }
        }
        // Exclusions hold for workers known from stored receipts now, and for the others when
        // they connect.
        core.excluded_keys = stored.excluded.into_iter().map(|(key, _)| key).collect();
        // Keys proven liars in any job are excluded here too, before their receipts on open
        // tasks could count.
        let excluded: Vec<WorkerId> = core
            .excluded_keys
            .iter()
            .chain(&core.liars)
            .filter_map(|key| core.by_key.get(&key.parse::<PublicKey>().ok()?).copied())
            .collect();
        let lost: Vec<(TaskIndex, u32)> = lost.into_iter().collect();
        core.scheduler.restore(receipts, &excluded, &lost);
        let liars: Vec<WorkerId> = core
            .by_key
            .iter()
            .filter(|(key, _)| core.liars.contains(&key.to_hex()))
            .map(|(_, id)| *id)
            .collect();
        for liar in liars {
            core.scheduler.restore_liar(liar);
        }
        core
    }

    /// A worker answered `Info`: registered (or updated) with `slots` copies it claims to hold;
    /// the id to connect it under, or `None` when it must not be used (a proven liar, or
    /// excluded from this job).
    pub fn connect(&mut self, meta: WorkerMeta, slots: u32) -> Option<WorkerId> {
        let key_hex = meta.key_hex.clone();
        let id = self.register(meta, slots, true);
        if self.liars.contains(&key_hex) {
            self.scheduler.restore_liar(id);
            return None;
        }
        if self.excluded_keys.contains(&key_hex) {
            self.scheduler.exclude(id);
            return None;
        }
        Some(id)
    }

    /// The submitter's own run of `task` (asked for in [`Actions::audits`]) came back.
    pub fn on_audit(
        &mut self,
        task: TaskIndex,
        result: AuditResult,
        clock: Clock,
        actions: &mut Actions,
    ) {
        self.unix_ms = clock.unix_ms;
        self.counts.audits += 1;
        for decision in self.scheduler.on_audit(task, result) {
            self.apply(decision, actions);
        }
    }

    /// A copy assigned to `worker` could not even be sent (its queue is full, or its connection
    /// just ended): no copy ran, nothing to record, the task goes back to the queue.
    pub fn not_sent(&mut self, task: TaskIndex, worker: WorkerId, gone: bool, now: Instant) {
        if gone {
            self.scheduler.worker_down(worker);
        }
        let decisions = self.scheduler.on_loss(task, worker, Loss::Busy, now);
        debug_assert!(decisions.is_empty(), "a busy loss never settles a task");
    }

    /// The batch of the last event is committed: settled tasks at rest leave memory
    /// (ARCHITECTURE.md, "Memory at scale"). Returns how many did.
    pub fn archive(&mut self) -> usize {
        let archived = self.scheduler.archive_idle();
        for task in &archived {
            self.next_copy.remove(task);
            self.outputs.remove(task);
            self.receipt_digests.remove(task);
        }
        archived.len()
    }

    /// The archived tasks a proven liar (`key`, hex, from [`Actions::sweeps`]) agreed on, read
    /// from the store: each is brought back and reopened if its receipt is among those that
    /// accepted it.
    pub fn reopen_archived(
        &mut self,
        key: &str,
        found: Vec<ArchivedRecord>,
        actions: &mut Actions,
    ) {
        // Their workers are registered first: the liar is among them even if it never
        // connected to this session.
        let archived: Vec<ArchivedTask> = found
            .into_iter()
            .filter_map(|record| self.archived_task(record))
            .collect();
        let Some(liar) = key
            .parse::<PublicKey>()
            .ok()
            .and_then(|key| self.by_key.get(&key).copied())
        else {
            return;
        };
        for task in archived {
            for decision in self.scheduler.reopen_archived(task, liar) {
                self.apply(decision, actions);
            }
        }
    }

    /// Brings an archived accepted task back into memory from its record (before
    /// [`Self::on_outputs_lost`] reopens it). False when it was not archived.
    pub fn unarchive(&mut self, record: ArchivedRecord) -> bool {
        match self.archived_task(record) {
            Some(archived) => self.scheduler.unarchive(archived),
            None => false,
        }
    }

    /// What the scheduler needs of an archived task's record; its copies' workers registered.
    fn archived_task(&mut self, record: ArchivedRecord) -> Option<ArchivedTask> {
        let ArchivedRecord {
            task,
            settled,
            copies,
        } = record;
        let accepted = settled.accepted?;
        let mut receipts = Vec::new();
        let mut lost = 0;
        let mut next = 0;
        for (n, copy) in copies {
            next = next.max(n + 1);
            match copy.kind {
                CopyKind::Receipt | CopyKind::Late | CopyKind::Superseded => {
                    if let (Some(worker), Some(verdict)) =
                        (self.known_worker(&copy), copy.verdict.clone())
                    {
                        receipts.push(PastReceipt {
                            task,
                            worker,
                            verdict,
                            superseded: copy.kind == CopyKind::Superseded,
                        });
                    }
                }
                CopyKind::Lost => lost += 1,
                _ => {}
            }
        }
        self.next_copy.insert(task, next);
        Some(ArchivedTask {
            task,
            accepted,
            receipts,
            lost,
            audit: settled.audit,
        })
    }

    /// The id of task `task`.
    pub fn task_id(&self, task: TaskIndex) -> &str {
        self.task_ids.get(task)
    }

    /// The scheduler, to ask it what to assign and how the job stands.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn scheduler_mut(&mut self) -> &mut Scheduler {
        &mut self.scheduler
    }

    /// The job's counts so far (running and workers are the driver's to fill in).
    pub fn counts(&self) -> Counts {
        Counts {
            excluded: self.excluded_keys.len() as u64,
            ..self.counts
        }
    }

    pub fn copy_wall_time(&self) -> Duration {
        self.copy_wall_time
    }

    /// Where `worker` was last reached.
    pub fn worker(&self, worker: WorkerId) -> &WorkerMeta {
        &self.workers[worker.0 as usize]
    }

    /// The id of a worker known from a stored copy (registered unavailable until it connects).
    fn known_worker(&mut self, record: &CopyRecord) -> Option<WorkerId> {
        let key: PublicKey = record.worker.parse().ok()?;
        Some(self.register(
            WorkerMeta {
                key,
                key_hex: record.worker.clone(),
                addr: record.addr.clone(),
                host: record.host.clone(),
                fingerprint: record.fingerprint.clone(),
            },
            0,
            false,
        ))
    }

    /// Registers a worker, or updates what is known of it; returns its id.
    fn register(&mut self, meta: WorkerMeta, slots: u32, available: bool) -> WorkerId {
        let offer = WorkerOffer {
            host: meta.host.clone(),
            network: network_of(&meta.host),
            fingerprint: meta.fingerprint.clone(),
            claimed_copies: slots,
            trusted: self.trusted.contains(&meta.key_hex),
            verified: self.verified.get(&meta.key_hex).copied().unwrap_or(0),
        };
        match self.by_key.get(&meta.key) {
            Some(&id) => {
                if available {
                    self.scheduler.worker_up(id, offer);
                    self.workers[id.0 as usize] = meta;
                }
                id
            }
            None => {
                let id = self.scheduler.add_worker(offer, available);
                self.by_key.insert(meta.key, id);
                self.workers.push(meta);
                id
            }
        }
    }

    /// The connection to `worker` ended (and no newer one replaced it): it takes no copies
    /// until it connects again; its copies in flight come back as lost answers.
    pub fn on_down(&mut self, worker: WorkerId, reason: &str, actions: &mut Actions) {
        self.scheduler.worker_down(worker);
        let meta = &self.workers[worker.0 as usize];
        actions.notes.push(format!(
            "worker {} at {} is gone: {reason}",
            short_key(&meta.key_hex),
            meta.addr
        ));
    }

    /// None of the workers that agreed on accepted `task` delivered its output files (`why`):
    /// the task is opened again, so that fresh copies make them anew, up to
    /// [`MAX_OUTPUT_REFETCHES`] times in a session; after that it stays accepted without its
    /// files, and false is returned (the driver reports it, and `resume` tries again).
    /// The credit held for the task is dropped: no worker earns a result whose files never
    /// came (else withholding them would earn credit at every new acceptance).
    pub fn on_outputs_lost(&mut self, task: TaskIndex, why: &str, actions: &mut Actions) -> bool {
        self.held_credits.remove(&task);
        let task_id = self.task_ids.get(task).to_owned();
        let times = self.refetched.entry(task).or_default();
        if *times >= MAX_OUTPUT_REFETCHES {
            actions.notes.push(format!(
                "task {task_id}: its output files could not be fetched ({why}), again; it stays accepted without them: `peergrid resume {}` runs it again",
                self.job_id
            ));
            return false;
        }
        *times += 1;
        if self.scheduler.reopen_unfetched(task).is_none() {
            return true;
        }
        let reason = format!("no worker that agreed on it delivered its output files: {why}");
        actions
            .notes
            .push(format!("task {task_id} is reopened: {reason}"));
        self.counts.accepted = self.counts.accepted.saturating_sub(1);
        self.counts.reopened += 1;
        actions
            .batch
            .results
            .push(ResultChange::Reopened { task, reason });
        actions.outputs.push((task, None));
        true
    }

    /// The output files of accepted `task` were fetched, each verified against the hashes the
    /// agreeing receipts signed: the credit held for it is due now, to the agreeing workers
    /// that served no altered bytes.
    pub fn on_outputs_fetched(&mut self, task: TaskIndex, actions: &mut Actions) {
        if let Some(credits) = self.held_credits.remove(&task) {
            actions.credits.extend(credits);
        }
    }

    /// `worker` served bytes for an output file of `task` that do not match the hash its
    /// receipt signed (`why`): like a bad receipt, it is excluded from the job, and earns no
    /// credit for the task.
    pub fn on_bad_output(
        &mut self,
        task: TaskIndex,
        worker: WorkerId,
        why: &str,
        actions: &mut Actions,
    ) {
        if let Some(credits) = self.held_credits.get_mut(&task) {
            credits.retain(|due| due.worker != worker);
        }
        let key = self.key_hex(worker);
        actions.batch.reputation(&key).bad_receipts += 1;
        let why = format!("served an output file that does not match its receipt: {why}");
        let decisions = self.exclude(worker, why, &mut actions.batch, &mut actions.notes);
        for decision in decisions {
            self.apply(decision, actions);
        }
    }

    /// A copy of `task` sent to `worker` came back with `answer`.
    pub fn on_answer(
        &mut self,
        worker: WorkerId,
        task: TaskIndex,
        answer: Answer,
        clock: Clock,
        actions: &mut Actions,
    ) {
        let now = clock.now;
        self.unix_ms = clock.unix_ms;
        let batch = &mut actions.batch;
        let key = self.workers[worker.0 as usize].key_hex.clone();
        let aborted = matches!(answer, Answer::Aborted(_));
        let decisions = match answer {
            Answer::Receipt(result) => {
                self.copy_wall_time += result.wall_time;
                let verdict = verdict_of(&result);
                // Only an open task can still be accepted, and equal verdicts sign equal output
                // hashes: one output per distinct verdict is all acceptance can need.
                if self.scheduler.is_open(task) {
                    self.note_receipt_digest(task, worker, result.receipt.task_digest);
                    let seen = self.outputs.entry(task).or_default();
                    if !seen.iter().any(|(other, _, _, _)| *other == verdict) {
                        seen.push((
                            verdict.clone(),
                            result.stdout.clone(),
                            result.stderr.clone(),
                            result.outputs.clone(),
                        ));
                    }
                }
                let decisions = self
                    .scheduler
                    .on_receipt(task, worker, verdict.clone(), now);
                let kind = match decisions.first() {
                    Some(Decision::Discarded { task: t, worker: w })
                        if *t == task && *w == worker =>
                    {
                        CopyKind::Discarded
                    }
                    Some(Decision::WrongRuntime { .. }) => CopyKind::Discarded,
                    _ if decisions.iter().any(|d| matches!(d, Decision::Late { .. })) => {
                        CopyKind::Late
                    }
                    _ => CopyKind::Receipt,
                };
                let mut copy = self.copy_record(worker, kind, Some(verdict), None, Some(&result));
                copy.disputed = decisions
                    .iter()
                    .any(|d| matches!(d, Decision::Disagreement { .. }));
                self.record_copy(batch, task, copy);
                decisions
            }
            Answer::BadReceipt(reason) => {
                batch.reputation(&key).bad_receipts += 1;
                let copy = self.copy_record(
                    worker,
                    CopyKind::BadReceipt,
                    None,
                    Some(reason.clone()),
                    None,
                );
                self.record_copy(batch, task, copy);
                let why = format!("sent a receipt that does not verify: {reason}");
                let mut decisions = self.exclude(worker, why, batch, &mut actions.notes);
                decisions.extend(self.scheduler.on_loss(task, worker, Loss::Busy, now));
                decisions
            }
            Answer::Busy(_) => self.scheduler.on_loss(task, worker, Loss::Busy, now),
            Answer::Aborted(reason) | Answer::Lost(reason) => {
                // Stored alike; only the scheduler tells a free-rider's abort from a crash.
                let loss = if aborted { Loss::Aborted } else { Loss::Lost };
                batch.reputation(&key).lost += 1;
                let copy = self.copy_record(worker, CopyKind::Lost, None, Some(reason), None);
                self.record_copy(batch, task, copy);
                self.scheduler.on_loss(task, worker, loss, now)
            }
            Answer::Refused { code, message } => {
                let why = format!(
                    "refuses this job's tasks ({}): {message}",
                    peergrid_proto::status_code_name(code)
                );
                let mut decisions = self.exclude(worker, why, batch, &mut actions.notes);
                decisions.extend(self.scheduler.on_loss(task, worker, Loss::Busy, now));
                decisions
            }
        };
        for decision in decisions {
            self.apply(decision, actions);
        }
        if !self.scheduler.is_open(task) {
            // Settled (now or before): no output of this task is needed any more.
            self.outputs.remove(&task);
            self.receipt_digests.remove(&task);
        }
    }

    /// What a decision means for the store and the user.
    fn apply(&mut self, decision: Decision, actions: &mut Actions) {
        let batch = &mut actions.batch;
        match decision {
            Decision::Accepted {
                task,
                verdict,
                agreeing,
                disagreeing,
                copies,
            } => {
                let outputs = self.outputs.remove(&task).unwrap_or_default();
                let (_, stdout, stderr, files) = outputs
                    .into_iter()
                    .find(|(seen, _, _, _)| *seen == verdict)
                    .expect("the receipt that completes a quorum has just delivered its output");
                if !files.is_empty() {
                    actions.fetches.push(Fetch {
                        task,
                        files: files.clone(),
                        from: agreeing.clone(),
                    });
                }
                for worker in &agreeing {
                    batch.reputation(&self.key_hex(*worker)).agreements += 1;
                }
                let digests = self.receipt_digests.remove(&task).unwrap_or_default();
                let mut credits = Vec::with_capacity(agreeing.len());
                for worker in &agreeing {
                    // Every agreeing receipt came this session or was restored with its bytes;
                    // a worker whose digest is not known gets no statement rather than a wrong one.
                    let Some((_, digest)) = digests.iter().find(|(w, _)| w == worker) else {
                        continue;
                    };
                    credits.push(CreditDue {
                        worker: *worker,
                        worker_key: self.workers[worker.0 as usize].key,
                        task_digest: *digest,
                        fuel: verdict.fuel,
                        accepted_at_unix_s: self.unix_ms / 1000,
                    });
                }
                if files.is_empty() {
                    actions.credits.extend(credits);
                } else {
                    // The result is whole only with its files: credit waits for them (the
                    // fetch's end calls `on_outputs_fetched` or `on_outputs_lost`).
                    self.held_credits.insert(task, credits);
                }
                self.counts.accepted += 1;
                actions.done.push(task);
                let record = SettledRecord {
                    accepted: Some(verdict),
                    reason: None,
                    agreeing: agreeing.iter().map(|w| self.key_hex(*w)).collect(),
                    disagreeing: disagreeing.iter().map(|w| self.key_hex(*w)).collect(),
                    copies,
                    session: self.session,
                    at_unix_ms: self.unix_ms,
                    // An audit may already be due (one drawn before the task was reopened).
                    audit: self.scheduler.audit_mark(task),
                    files: files
                        .iter()
                        .map(|file| OutputFileRecord {
                            name: file.name.clone(),
                            size: file.size,
                            hash: file.hash.to_hex(),
                        })
                        .collect(),
                };
                batch.results.push(ResultChange::Settled {
                    task,
                    record,
                    output: Some((stdout.clone(), stderr.clone())),
                });
                actions.outputs.push((task, Some((stdout, stderr))));
            }
            Decision::Inconclusive {
                task,
                reason,
                copies,
            } => {
                self.outputs.remove(&task);
                actions.done.push(task);
                self.counts.inconclusive += 1;
                actions.notes.push(format!(
                    "task {} is inconclusive: {reason}",
                    self.task_ids.get(task)
                ));
                let record = SettledRecord {
                    accepted: None,
                    reason: Some(reason),
                    agreeing: Vec::new(),
                    disagreeing: Vec::new(),
                    copies,
                    session: self.session,
                    at_unix_ms: self.unix_ms,
                    audit: AuditMark::None,
                    files: Vec::new(),
                };
                batch.results.push(ResultChange::Settled {
                    task,
                    record,
                    output: None,
                });
            }
            Decision::Audit { task } => {
                batch.results.push(ResultChange::Audited {
                    task,
                    audit: AuditMark::Pending,
                });
                actions.audits.push(task);
            }
            Decision::AuditPassed { task } => batch.results.push(ResultChange::Audited {
                task,
                audit: AuditMark::Passed,
            }),
            Decision::AuditUnavailable { task, reason } => {
                actions.notes.push(format!(
                    "task {}: the audit proves nothing ({reason}); its accepted result stands on its quorum",
                    self.task_ids.get(task)
                ));
                batch.results.push(ResultChange::Audited {
                    task,
                    audit: AuditMark::Unavailable,
                });
            }
            Decision::Disagreement { .. } => self.counts.disagreements += 1,
            Decision::Verified { worker, .. } => {
                batch.reputation(&self.key_hex(worker)).verified += 1;
            }
            Decision::ProvenLiar { worker, task } => {
                self.counts.liars_proven += 1;
                let key = self.key_hex(worker);
                let task_id = self.task_ids.get(task).to_owned();
                let why = format!(
                    "signed a wrong result for task {task_id}: the submitter's own run of it differs"
                );
                batch.reputation(&key).disagreements += 1;
                batch.liars.push((
                    key.clone(),
                    LiarRecord {
                        job: self.job_id.clone(),
                        task: task_id,
                        reason: why.clone(),
                        at_unix_ms: self.unix_ms,
                    },
                ));
                self.liars.insert(key.clone());
                actions.sweeps.push(key);
                self.record_exclusion(worker, why, &mut actions.batch, &mut actions.notes);
            }
            Decision::Reopened { task, old, liar } => {
                // A proven liar signed the accepted answer: whoever agreed with it earns nothing.
                self.held_credits.remove(&task);
                let task_id = self.task_ids.get(task).to_owned();
                let reason = format!(
                    "worker {} signed its accepted answer (output {}) and was proven to have signed a wrong result",
                    short_key(&self.key_hex(liar)),
                    old.output_hash.short()
                );
                actions
                    .notes
                    .push(format!("task {task_id} is reopened: {reason}"));
                self.counts.accepted = self.counts.accepted.saturating_sub(1);
                self.counts.reopened += 1;
                batch.results.push(ResultChange::Reopened { task, reason });
                actions.outputs.push((task, None));
            }
            Decision::Dropped {
                worker,
                strikes,
                delivered,
            } => {
                let why = format!(
                    "is dropped as a free-rider: {strikes} of its copies timed out or were aborted on tasks other workers delivered, against {delivered} receipts"
                );
                self.record_exclusion(worker, why, &mut actions.batch, &mut actions.notes);
            }
            Decision::WrongRuntime {
                task,
                worker,
                signed,
            } => {
                if self.wrong_runtime_noted.insert(worker) {
                    actions.notes.push(format!(
                        "worker {} signed a receipt for task {} on runtime {signed}, not the task's: not counted",
                        short_key(&self.key_hex(worker)),
                        self.task_ids.get(task)
                    ));
                }
            }
            Decision::Late { worker, agrees, .. } => {
                if agrees == Some(true) {
                    batch.reputation(&self.key_hex(worker)).agreements += 1;
                }
            }
            Decision::Discarded { .. } => {}
        }
    }

    /// Excludes `worker` from the rest of the job for a reason other than a contradiction.
    fn exclude(
        &mut self,
        worker: WorkerId,
        why: String,
        batch: &mut Batch,
        notes: &mut Vec<String>,
    ) -> Vec<Decision> {
        // The first reason stands: answers still in flight from an excluded worker (more bad
        // receipts, say) neither repeat the note nor overwrite why it was excluded.
        if self.scheduler.is_excluded(worker) {
            return Vec::new();
        }
        self.record_exclusion(worker, why, batch, notes);
        self.scheduler.exclude(worker)
    }

    /// Stores and reports why `worker` is excluded; it stays excluded if it reconnects.
    fn record_exclusion(
        &mut self,
        worker: WorkerId,
        why: String,
        batch: &mut Batch,
        notes: &mut Vec<String>,
    ) {
        let key = self.key_hex(worker);
        notes.push(format!("worker {} excluded: it {why}", short_key(&key)));
        batch.excluded.push((key.clone(), why));
        self.excluded_keys.insert(key);
    }

    fn key_hex(&self, worker: WorkerId) -> String {
        self.workers[worker.0 as usize].key_hex.clone()
    }

    fn copy_record(
        &self,
        worker: WorkerId,
        kind: CopyKind,
        verdict: Option<Verdict>,
        reason: Option<String>,
        result: Option<&CheckedResult>,
    ) -> CopyRecord {
        let meta = &self.workers[worker.0 as usize];
        CopyRecord {
            worker: meta.key_hex.clone(),
            addr: meta.addr.clone(),
            host: meta.host.clone(),
            fingerprint: meta.fingerprint.clone(),
            session: self.session,
            kind,
            verdict,
            reason,
            receipt_hex: result.map(|r| hex::encode(&r.signed.receipt)),
            signature_hex: result.map(|r| hex::encode(&r.signed.signature)),
            at_unix_ms: self.unix_ms,
            disputed: false,
        }
    }

    /// Remembers which task digest `worker`'s receipt for `task` answers, for its credit.
    fn note_receipt_digest(&mut self, task: TaskIndex, worker: WorkerId, digest: ContentHash) {
        let digests = self.receipt_digests.entry(task).or_default();
        match digests.iter_mut().find(|(w, _)| *w == worker) {
            Some(known) => known.1 = digest,
            None => digests.push((worker, digest)),
        }
    }

    fn record_copy(&mut self, batch: &mut Batch, task: TaskIndex, copy: CopyRecord) {
        let next = self.next_copy.entry(task).or_default();
        let number = *next;
        *next += 1;
        batch.copies.push((task, number, copy));
    }
}

/// The task digest a stored receipt answers, read from its bytes (a verified receipt when it
/// was stored); `None` when the copy kept none.
fn stored_receipt_digest(record: &CopyRecord) -> Option<ContentHash> {
    use prost::Message;
    let bytes = hex::decode(record.receipt_hex.as_deref()?).ok()?;
    let receipt = peergrid_proto::pb::Receipt::decode(bytes.as_slice()).ok()?;
    ContentHash::from_slice(&receipt.task_digest).ok()
}

#[cfg(test)]
mod tests {

    use peergrid_proto::{ContentHash, Identity, pb};
    use peergrid_worker::sandbox::Outcome;

    use super::*;
    use crate::client::CheckedResult;
    use crate::dispatch::Answer;
    use crate::store::ResultChange;

    fn job(tasks: u32, audit_rate: f64) -> JobRecord {
        JobRecord {
            name: "job".into(),
            audit_rate,
            seeds: vec![],
            created_unix_ms: 0,
            sessions: 1,
            ..JobRecord::for_tests("job-1", tasks)
        }
    }

    fn core(tasks: u32, audit_rate: f64, stored: Stored) -> JobCore {
        let ids = (0..tasks).map(|task| format!("t{task}")).collect();
        JobCore::restore(&job(tasks, audit_rate), 1, ids, stored, 5)
    }

    /// A worker with a fresh key on a network of its own.
    fn worker(index: u8) -> WorkerMeta {
        let key = Identity::generate().public_key();
        WorkerMeta {
            key,
            key_hex: key.to_hex(),
            addr: format!("192.0.2.{index}:7000"),
            host: format!("198.51.{index}.1"),
            fingerprint: "fp".into(),
        }
    }

    fn clock() -> Clock {
        Clock {
            now: Instant::now(),
            unix_ms: 1_000,
        }
    }

    /// A verified receipt from `meta` whose stdout is `stdout`.
    fn delivered(meta: &WorkerMeta, stdout: &'static str) -> Answer {
        let stdout = Bytes::from_static(stdout.as_bytes());
        let receipt = pb::Receipt {
            runtime_fingerprint: "fp".into(),
            fuel_used: 7,
            ..Default::default()
        };
        Answer::Receipt(Box::new(CheckedResult {
            receipt: peergrid_proto::signing::VerifiedReceipt {
                receipt,
                task_digest: ContentHash::of(b"task"),
                worker: meta.key,
                stdout_hash: ContentHash::of(&stdout),
                stderr_hash: ContentHash::of(b""),
                outputs_hash: None,
            },
            signed: pb::SignedReceipt {
                receipt: Bytes::from_static(b"receipt"),
                signature: Bytes::from_static(b"signature"),
            },
            outcome: Outcome::Exited(0),
            stdout,
            stderr: Bytes::new(),
            wall_time: Duration::from_millis(3),
            outputs: Vec::new(),
        }))
    }

    /// Sends the one copy of task 0 the next round assigns and answers it with `answer`.
    fn answer_next(
        core: &mut JobCore,
        metas: &[WorkerMeta],
        ids: &[WorkerId],
        answer: impl Fn(&WorkerMeta) -> Answer,
    ) -> (WorkerId, Actions) {
        let assigned = core.scheduler_mut().assign(Instant::now());
        assert_eq!(assigned.len(), 1, "{assigned:?}");
        let to = assigned[0].worker;
        let meta = &metas[ids.iter().position(|id| *id == to).unwrap()];
        let mut actions = Actions::default();
        core.on_answer(to, assigned[0].task, answer(meta), clock(), &mut actions);
        (to, actions)
    }

    fn connect_all(core: &mut JobCore, metas: &[WorkerMeta]) -> Vec<WorkerId> {
        metas
            .iter()
            .map(|meta| core.connect(meta.clone(), 2).expect("usable"))
            .collect()
    }

    #[test]
    fn agreeing_receipts_become_copy_records_a_settled_record_and_a_file_to_write() {
        let mut core = core(1, 0.0, Stored::default());
        let metas = [worker(1), worker(2)];
        let ids = connect_all(&mut core, &metas);
        let (_, first) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "42"));
        assert_eq!(first.batch.copies.len(), 1);
        assert_eq!(first.batch.copies[0].2.kind, CopyKind::Receipt);
        assert_eq!(
            first.batch.copies[0].2.at_unix_ms, 1_000,
            "stamped with the clock passed in"
        );
        assert!(first.batch.results.is_empty() && first.outputs.is_empty());
        let (_, second) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "42"));
        let settled = second
            .batch
            .results
            .iter()
            .find_map(|change| match change {
                ResultChange::Settled { record, output, .. } => Some((record, output)),
                _ => None,
            })
            .expect("settled");
        assert_eq!(settled.0.agreeing.len(), 2);
        assert_eq!(settled.1.as_ref().unwrap().0, Bytes::from_static(b"42"));
        assert!(matches!(&second.outputs[..], [(0, Some(_))]));
        assert_eq!(second.done, vec![0]);
        for meta in &metas {
            assert_eq!(second.batch.reputation[&meta.key_hex].agreements, 1);
        }
        assert_eq!(core.counts().accepted, 1);
    }

    #[test]
    fn a_bad_receipt_excludes_its_worker_for_the_job_even_when_it_reconnects() {
        let mut core = core(1, 0.0, Stored::default());
        let metas = [worker(1), worker(2), worker(3)];
        let ids = connect_all(&mut core, &metas);
        let (bad, actions) = answer_next(&mut core, &metas, &ids, |_| {
            Answer::BadReceipt("signed by someone else".into())
        });
        let meta = &metas[ids.iter().position(|id| *id == bad).unwrap()];
        assert_eq!(actions.batch.excluded.len(), 1);
        assert_eq!(actions.batch.excluded[0].0, meta.key_hex);
        assert!(
            actions.batch.excluded[0]
                .1
                .contains("signed by someone else")
        );
        assert_eq!(actions.batch.reputation[&meta.key_hex].bad_receipts, 1);
        assert_eq!(actions.batch.copies[0].2.kind, CopyKind::BadReceipt);
        assert!(actions.notes.iter().any(|note| note.contains("excluded")));
        assert!(
            core.connect(meta.clone(), 2).is_none(),
            "excluded for the job"
        );
    }

    #[test]
    fn a_failed_audit_records_the_liars_for_good_reopens_the_result_and_removes_its_file() {
        // Fresh keys: their quorum is audited at the probation rate; 1.0 makes it certain.
        let mut core = core(1, 1.0, Stored::default());
        let metas = [worker(1), worker(2), worker(3), worker(4)];
        let ids = connect_all(&mut core, &metas);
        let (first, _) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "wrong"));
        let (second, accepted) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "wrong"));
        assert_eq!(accepted.audits, vec![0]);
        let mut actions = Actions::default();
        let truth = Verdict {
            outcome: Outcome::Exited(0),
            output_hash: ContentHash::of(b"right"),
            stderr_hash: ContentHash::of(b""),
            fuel: 7,
            fingerprint: "fp".into(),
            outputs_hash: None,
        };
        core.on_audit(0, AuditResult::Ran(truth), clock(), &mut actions);
        let liars: HashSet<&str> = actions
            .batch
            .liars
            .iter()
            .map(|(key, _)| key.as_str())
            .collect();
        for liar in [first, second] {
            assert!(liars.contains(core.worker(liar).key_hex.as_str()));
        }
        assert!(
            actions
                .batch
                .results
                .iter()
                .any(|change| matches!(change, ResultChange::Reopened { task: 0, .. }))
        );
        assert!(
            matches!(&actions.outputs[..], [(0, None)]),
            "its file is removed"
        );
        assert!(actions.notes.iter().any(|note| note.contains("reopened")));
        assert_eq!(core.counts().reopened, 1);
        assert_eq!(core.counts().accepted, 0);
        let liar = &metas[ids.iter().position(|id| *id == first).unwrap()];
        assert!(
            core.connect(liar.clone(), 2).is_none(),
            "a proven liar is never used again"
        );
    }

    /// A receipt of `meta` for task 0 saying `stdout`, as the store keeps it.
    fn stored_receipt(meta: &WorkerMeta, stdout: &'static str, kind: CopyKind) -> CopyRecord {
        let verdict = match delivered(meta, stdout) {
            Answer::Receipt(result) => verdict_of(&result),
            _ => unreachable!(),
        };
        CopyRecord {
            worker: meta.key_hex.clone(),
            addr: meta.addr.clone(),
            host: meta.host.clone(),
            fingerprint: "fp".into(),
            session: 1,
            kind,
            verdict: Some(verdict),
            reason: None,
            receipt_hex: None,
            signature_hex: None,
            at_unix_ms: 0,
            disputed: false,
        }
    }

    /// Task 0 as the store holds it once accepted with `stdout` by `signers`.
    fn archived_record(signers: &[&WorkerMeta], stdout: &'static str) -> ArchivedRecord {
        let copies: Vec<(u32, CopyRecord)> = signers
            .iter()
            .enumerate()
            .map(|(n, meta)| (n as u32, stored_receipt(meta, stdout, CopyKind::Receipt)))
            .collect();
        ArchivedRecord {
            task: 0,
            settled: SettledRecord {
                accepted: copies[0].1.verdict.clone(),
                reason: None,
                agreeing: signers.iter().map(|meta| meta.key_hex.clone()).collect(),
                disagreeing: Vec::new(),
                copies: copies.len() as u32,
                session: 1,
                at_unix_ms: 0,
                audit: AuditMark::None,
                files: Vec::new(),
            },
            copies,
        }
    }

    /// A core of one task accepted in an earlier session, at rest in the store.
    fn one_archived_task() -> JobCore {
        let stored = Stored {
            state: crate::store::RestoreState {
                at_rest: vec![(0, true)],
                ..Default::default()
            },
            ..Stored::default()
        };
        core(1, 0.0, stored)
    }

    #[test]
    fn an_archived_task_a_proven_liar_signed_comes_back_reopened_with_its_history() {
        // Its signers never connected to this session.
        let (liar, partner, honest) = (worker(1), worker(2), worker(3));
        let mut core = one_archived_task();
        assert!(core.scheduler().is_archived(0));
        assert!(core.scheduler().is_finished());
        let mut actions = Actions::default();
        let record = archived_record(&[&liar, &partner], "wrong");
        core.reopen_archived(&liar.key_hex, vec![record], &mut actions);
        assert!(
            actions
                .batch
                .results
                .iter()
                .any(|change| matches!(change, ResultChange::Reopened { task: 0, .. })),
            "{:?}",
            actions.batch.results
        );
        assert!(matches!(&actions.outputs[..], [(0, None)]), "its file goes");
        assert_eq!((core.counts().accepted, core.counts().reopened), (0, 1));
        assert!(core.scheduler().is_open(0) && !core.scheduler().is_archived(0));
        // It settles again on fresh workers and, reopened, is audited: the audit sees the old
        // receipts too, so the partner that co-signed the lie is proven as well.
        let metas = [honest.clone(), worker(4)];
        let ids = connect_all(&mut core, &metas);
        answer_next(&mut core, &metas, &ids, |m| delivered(m, "right"));
        let (_, accepted) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "right"));
        assert_eq!(
            accepted.audits,
            vec![0],
            "a reopened task is always audited"
        );
        let truth = match delivered(&honest, "right") {
            Answer::Receipt(result) => verdict_of(&result),
            _ => unreachable!(),
        };
        let mut audited = Actions::default();
        core.on_audit(0, AuditResult::Ran(truth), clock(), &mut audited);
        let proven: Vec<&str> = audited
            .batch
            .liars
            .iter()
            .map(|(key, _)| key.as_str())
            .collect();
        assert!(proven.contains(&partner.key_hex.as_str()), "{proven:?}");
        assert!(
            audited.sweeps.contains(&partner.key_hex),
            "{:?}",
            audited.sweeps
        );
        assert_eq!(core.archive(), 1, "settled and audited: it rests again");
        assert!(core.scheduler().is_archived(0));
    }

    #[test]
    fn an_archived_task_the_liar_did_not_sign_goes_back_to_rest_unchanged() {
        let (liar, a, b) = (worker(1), worker(2), worker(3));
        let mut core = one_archived_task();
        // The liar signed an answer of the task before an earlier reopening (superseded), not
        // the one it is accepted with now.
        let mut record = archived_record(&[&a, &b], "right");
        record
            .copies
            .push((2, stored_receipt(&liar, "right", CopyKind::Superseded)));
        let mut actions = Actions::default();
        core.reopen_archived(&liar.key_hex, vec![record], &mut actions);
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(core.counts().accepted, 1);
        assert_eq!(core.archive(), 1);
        assert!(core.scheduler().is_archived(0) && core.scheduler().is_finished());
    }

    #[test]
    fn a_liar_of_another_job_does_not_vote_on_a_resumed_task() {
        let liar = worker(1);
        let honest = worker(2);
        let wrong = match delivered(&liar, "wrong") {
            Answer::Receipt(result) => verdict_of(&result),
            _ => unreachable!(),
        };
        let copy = CopyRecord {
            worker: liar.key_hex.clone(),
            addr: liar.addr.clone(),
            host: liar.host.clone(),
            fingerprint: "fp".into(),
            session: 1,
            kind: CopyKind::Receipt,
            verdict: Some(wrong),
            reason: None,
            receipt_hex: None,
            signature_hex: None,
            at_unix_ms: 0,
            disputed: false,
        };
        let stored = Stored {
            state: crate::store::RestoreState {
                copies: vec![((0, 0), copy)],
                ..Default::default()
            },
            liars: [liar.key_hex.clone()].into_iter().collect(),
            ..Stored::default()
        };
        let mut core = core(1, 0.0, stored);
        assert!(core.connect(liar.clone(), 2).is_none());
        let metas = [honest];
        let ids = connect_all(&mut core, &metas);
        // The same answer as the liar's stored receipt: with that receipt counted, a quorum.
        let (_, actions) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "wrong"));
        assert!(
            !actions
                .batch
                .results
                .iter()
                .any(|change| matches!(change, ResultChange::Settled { .. })),
            "a proven liar's receipt voted"
        );
        assert!(core.scheduler().is_open(0));
    }

    /// A receipt of `meta` saying `stdout`, answering the manifest whose digest is `digest`.
    fn delivered_for(meta: &WorkerMeta, stdout: &'static str, digest: ContentHash) -> Answer {
        let Answer::Receipt(mut result) = delivered(meta, stdout) else {
            unreachable!()
        };
        result.receipt.task_digest = digest;
        Answer::Receipt(result)
    }

    /// The digest each test worker's receipt names: one per worker, as after a re-signing.
    fn digest_of(meta: &WorkerMeta) -> ContentHash {
        ContentHash::of(meta.key_hex.as_bytes())
    }

    #[test]
    fn an_accepted_result_credits_each_agreeing_worker_with_its_own_digest_and_no_one_else() {
        let mut core = core(1, 0.0, Stored::default());
        let metas = [worker(1), worker(2), worker(3)];
        let ids = connect_all(&mut core, &metas);
        let (honest, first) = answer_next(&mut core, &metas, &ids, |m| {
            delivered_for(m, "42", digest_of(m))
        });
        let (liar, second) = answer_next(&mut core, &metas, &ids, |m| {
            delivered_for(m, "41", digest_of(m))
        });
        assert!(first.credits.is_empty() && second.credits.is_empty());
        // The dispute asks for a third copy; it agrees with the first.
        let (other, accepted) = answer_next(&mut core, &metas, &ids, |m| {
            delivered_for(m, "42", digest_of(m))
        });
        let meta = |id: WorkerId| &metas[ids.iter().position(|i| *i == id).unwrap()];
        let mut credits = accepted.credits.clone();
        credits.sort_by_key(|due| due.worker.0);
        let mut expected: Vec<CreditDue> = [honest, other]
            .into_iter()
            .map(|id| CreditDue {
                worker: id,
                worker_key: meta(id).key,
                task_digest: digest_of(meta(id)),
                fuel: 7,
                accepted_at_unix_s: 1,
            })
            .collect();
        expected.sort_by_key(|due| due.worker.0);
        assert_eq!(credits, expected);
        assert!(
            !credits.iter().any(|due| due.worker == liar),
            "the disagreeing worker earns nothing"
        );
        // A late receipt after acceptance earns nothing either.
        let mut late = Actions::default();
        core.on_answer(
            liar,
            0,
            delivered_for(meta(liar), "42", digest_of(meta(liar))),
            clock(),
            &mut late,
        );
        assert!(late.credits.is_empty());
    }

    #[test]
    fn a_receipt_stored_by_an_earlier_session_is_credited_with_the_digest_it_signed() {
        use prost::Message;
        let (earlier, now) = (worker(1), worker(2));
        let signed_digest = ContentHash::of(b"the manifest of session 1");
        let receipt = pb::Receipt {
            task_digest: signed_digest.to_vec().into(),
            worker_key: earlier.key.to_bytes().to_vec().into(),
            ..Default::default()
        };
        let mut copy = stored_receipt(&earlier, "42", CopyKind::Receipt);
        copy.receipt_hex = Some(hex::encode(receipt.encode_to_vec()));
        copy.signature_hex = Some(hex::encode([0u8; 64]));
        let stored = Stored {
            state: crate::store::RestoreState {
                copies: vec![((0, 0), copy)],
                ..Default::default()
            },
            ..Stored::default()
        };
        let mut core = core(1, 0.0, stored);
        let metas = [now];
        let ids = connect_all(&mut core, &metas);
        let (_, accepted) = answer_next(&mut core, &metas, &ids, |m| {
            delivered_for(m, "42", digest_of(m))
        });
        let credited: HashMap<PublicKey, ContentHash> = accepted
            .credits
            .iter()
            .map(|due| (due.worker_key, due.task_digest))
            .collect();
        assert_eq!(credited.len(), 2, "{:?}", accepted.credits);
        assert_eq!(credited[&earlier.key], signed_digest);
        assert_eq!(credited[&metas[0].key], digest_of(&metas[0]));
    }

    /// A receipt of `meta` saying `stdout` and listing one output file, `out.txt`.
    fn delivered_with_file(meta: &WorkerMeta) -> Answer {
        let Answer::Receipt(mut result) = delivered_for(meta, "42", digest_of(meta)) else {
            unreachable!()
        };
        let file = OutputEntry {
            name: "out.txt".into(),
            size: 3,
            hash: ContentHash::of(b"out"),
        };
        result.receipt.outputs_hash = Some(ContentHash::of(b"the list"));
        result.outputs = vec![file];
        Answer::Receipt(result)
    }

    /// Answers every copy of task 0 assigned now with a receipt listing an output file: the
    /// workers that answered and the actions.
    fn answer_all_with_files(
        core: &mut JobCore,
        metas: &[WorkerMeta],
        ids: &[WorkerId],
    ) -> (Vec<WorkerId>, Actions) {
        let mut actions = Actions::default();
        let mut answered = Vec::new();
        for _ in 0..4 {
            let assigned = core.scheduler_mut().assign(Instant::now());
            for copy in assigned {
                let meta = &metas[ids.iter().position(|id| *id == copy.worker).unwrap()];
                let answer = delivered_with_file(meta);
                core.on_answer(copy.worker, copy.task, answer, clock(), &mut actions);
                answered.push(copy.worker);
            }
            if !core.scheduler().is_open(0) {
                break;
            }
        }
        assert!(!core.scheduler().is_open(0), "task 0 is accepted");
        (answered, actions)
    }

    fn credited(actions: &Actions) -> Vec<WorkerId> {
        let mut workers: Vec<WorkerId> = actions.credits.iter().map(|due| due.worker).collect();
        workers.sort_by_key(|worker| worker.0);
        workers
    }

    #[test]
    fn credit_for_a_task_with_output_files_waits_until_they_are_fetched_and_skips_who_altered_them()
    {
        let mut core = core(1, 0.0, Stored::default());
        let metas = [worker(1), worker(2)];
        let ids = connect_all(&mut core, &metas);
        let (answered, accepted) = answer_all_with_files(&mut core, &metas, &ids);
        assert_eq!(accepted.fetches.len(), 1, "its files are to be fetched");
        assert!(
            accepted.credits.is_empty(),
            "no credit before the files arrive: {:?}",
            accepted.credits
        );
        // The first worker asked served altered bytes; the other delivered them.
        let (cheat, honest) = (answered[0], answered[1]);
        let mut fetched = Actions::default();
        core.on_bad_output(0, cheat, "hash differs", &mut fetched);
        core.on_outputs_fetched(0, &mut fetched);
        assert_eq!(credited(&fetched), vec![honest]);
        // Given once: a second report of the fetch gives nothing.
        let mut again = Actions::default();
        core.on_outputs_fetched(0, &mut again);
        assert!(again.credits.is_empty());
    }

    #[test]
    fn withholding_output_files_earns_nothing_however_often_the_task_is_run_again() {
        let mut core = core(1, 0.0, Stored::default());
        let metas = [worker(1), worker(2), worker(3), worker(4)];
        let ids = connect_all(&mut core, &metas);
        let mut given = Vec::new();
        // Every time: accepted, then no agreeing worker delivers its files.
        for round in 0..MAX_OUTPUT_REFETCHES {
            let (_, accepted) = answer_all_with_files(&mut core, &metas, &ids);
            given.extend(accepted.credits);
            let mut lost = Actions::default();
            assert!(
                core.on_outputs_lost(0, "withheld", &mut lost),
                "round {round}: reopened"
            );
            given.extend(lost.credits);
        }
        assert!(given.is_empty(), "credit for withheld files: {given:?}");
        // Accepted again and left accepted without files: still nothing.
        let (_, accepted) = answer_all_with_files(&mut core, &metas, &ids);
        assert!(accepted.credits.is_empty());
        let mut lost = Actions::default();
        assert!(!core.on_outputs_lost(0, "withheld", &mut lost));
        let mut late = Actions::default();
        core.on_outputs_fetched(0, &mut late);
        assert!(
            lost.credits.is_empty() && late.credits.is_empty(),
            "the held credit went with the files"
        );
    }

    #[test]
    fn a_task_without_output_files_is_credited_at_acceptance() {
        let mut core = core(1, 0.0, Stored::default());
        let metas = [worker(1), worker(2)];
        let ids = connect_all(&mut core, &metas);
        let (first, _) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "42"));
        let (second, accepted) = answer_next(&mut core, &metas, &ids, |m| delivered(m, "42"));
        assert!(accepted.fetches.is_empty());
        let mut expected = vec![first, second];
        expected.sort_by_key(|worker| worker.0);
        assert_eq!(credited(&accepted), expected);
    }
}
